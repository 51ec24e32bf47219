"""dragon.native.process_group.ProcessGroup."""
import os
import pickle
import signal
import time

import pytest

import _native_helpers as nh
from conftest import pid_alive, run_processes, run_script, shm_files, wait_until, write_script
from dragon.infrastructure.policy import Policy
from dragon.native import Queue
from dragon.native.process import PIPE, Process, ProcessTemplate
from dragon.native.process_group import (
    DragonProcessGroupAlreadyInitialized, DragonProcessGroupError, DragonProcessGroupRunningError,
    DragonProcessGroupStartError, DragonUserCodeError, ProcessGroup,
)

pytestmark = pytest.mark.timeout(120)


def _group(*templates, **kw):
    pg = ProcessGroup(**kw)
    for n, t in templates:
        pg.add_process(nproc=n, template=t)
    pg.init()
    return pg


def test_start_join_python_and_executables():
    q = Queue()
    pg = _group((3, ProcessTemplate(nh.report, args=(q, "py"))),
                (2, ProcessTemplate("true")))
    assert pg.nproc == 5 and pg._state == "Idle"
    pg.start()
    puids = pg.puids
    assert len(puids) <= 5
    reports = [q.get(timeout=30) for _ in range(3)]
    pg.join(30)
    assert pg._state == "Idle" and pg.puids == []
    status = dict(pg.inactive_puids)
    assert len(status) == 5 and set(status.values()) == {0}
    assert {r["puid"] for r in reports} <= set(status)
    assert pg.exit_status == pg.inactive_puids
    assert not pg.in_error_state
    # Exit codes of the group's processes are known by puid.
    assert all(Process(None, ident=p).returncode == 0 for p in status)
    pg.close()


def test_exited_processes_keep_their_output():
    # Processes that exit at once: after join, the group still holds them, so
    # Process(None, ident=puid) finds each and its captured output is there.
    pg = _group((4, ProcessTemplate("/bin/sh", args=["-c", "echo out $$"], stdout=PIPE)))
    pg.start()
    pg.join(30)
    outs = []
    for puid, code in pg.inactive_puids:
        assert code == 0
        proc = Process(None, ident=puid)
        assert proc.stdout_conn is not None
        outs.append(proc.stdout_conn.read().strip())
    assert len(outs) == 4 and all(o.startswith("out ") for o in outs)
    pg.close()


def test_group_can_be_started_again():
    pg = _group((2, ProcessTemplate(nh.exit_with, args=(0,))))
    pg.start()
    pg.join(30)
    pg.start()
    pg.join(30)
    assert len(pg.inactive_puids) == 4
    pg.close()
    # After close, init again.
    pg.init()
    pg.start()
    pg.join(30)
    pg.close()


def test_failure_stops_the_group_and_join_raises():
    pg = _group((1, ProcessTemplate(nh.exit_with, args=(3,))),
                (2, ProcessTemplate(nh.sleep, args=(60,))))
    pg.start()
    with pytest.raises(DragonUserCodeError) as info:
        pg.join(60)
    assert info.value.exit_codes == [3]
    assert pg.in_error_state
    codes = sorted(c for _, c in pg.inactive_puids)
    assert 3 in codes and len(codes) == 3  # the sleepers were stopped
    pg.join(30)  # reported once
    pg.close()


def test_ignore_error_on_exit():
    pg = _group((2, ProcessTemplate(nh.exit_with, args=(5,))), (1, ProcessTemplate(nh.raise_error)),
                ignore_error_on_exit=True)
    pg.start()
    pg.join(30)
    assert sorted(c for _, c in pg.inactive_puids) == [1, 5, 5]
    assert not pg.in_error_state
    pg.close()


def test_restart_replaces_exited_processes():
    pg = _group((2, ProcessTemplate(nh.sleep, args=(0.3,))), restart=True)
    pg.start()
    first = set(pg.puids)
    assert wait_until(lambda: len(pg.inactive_puids) >= 4, 30)
    assert len(pg.puids) <= 2 and set(pg.puids) != first
    assert pg._state == "Running"
    pg.join(30)  # stops restarting, waits
    assert pg.puids == [] and pg._state == "Idle"
    assert all(c == 0 for _, c in pg.inactive_puids)
    pg.close()


def test_restart_of_a_failing_process_backs_off():
    pg = _group((1, ProcessTemplate(nh.exit_with, args=(0,))), restart=True)
    t0 = time.monotonic()
    pg.start()
    assert wait_until(lambda: len(pg.inactive_puids) >= 6, 60)
    # Immediate exits: delays of 10, 20, 40, 80, 160 ms between the six, not
    # a restart storm. (A lower bound: a loaded machine only adds to it.)
    assert time.monotonic() - t0 >= 0.31
    pg.stop_restart()
    pg.join(30)
    pg.close()


def test_kill_and_terminate():
    pg = _group((2, ProcessTemplate(nh.sleep, args=(60,))))
    pg.start()
    pg.kill()
    pg.join(30)
    assert [c for _, c in pg.inactive_puids] == [-signal.SIGKILL] * 2
    assert not pg.in_error_state  # the group's own signals are no errors
    pg.start()
    pg.terminate()
    pg.join(30)
    assert [c for _, c in pg.inactive_puids][2:] == [-signal.SIGTERM] * 2
    pg.close()


def test_stop_escalates_to_sigkill():
    # They would outlive the test's timeout: only the escalation ends them.
    ready = Queue()
    pg = _group((2, ProcessTemplate(nh.stubborn, args=(3600, ready))), (1, ProcessTemplate("sleep", args=["3600"])))
    pg.start()
    for _ in range(2):  # the stubborn ones have installed their handlers
        ready.get(timeout=60)
    pg.stop(patience=0.3)
    codes = sorted(c for _, c in pg.inactive_puids)
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, -signal.SIGINT]
    assert pg._state == "Idle"
    pg.close()


def test_join_timeout():
    pg = _group((1, ProcessTemplate(nh.sleep, args=(60,))))
    pg.start()
    with pytest.raises(TimeoutError):
        pg.join(0.2)
    pg.stop(patience=1)
    pg.close()


def test_walltime():
    pg = _group((2, ProcessTemplate(nh.sleep, args=(3600,))), walltime=0.3)
    pg.start()
    pg.join(60)  # ended by the walltime, or a TimeoutError
    assert [c for _, c in pg.inactive_puids] == [-signal.SIGINT] * 2
    assert not pg.in_error_state
    pg.close()


def test_group_policy_and_template_policy():
    cpus = sorted(os.sched_getaffinity(0))
    q = Queue()
    pg = _group((2, ProcessTemplate(nh.report, args=(q,))), policy=Policy(cpu_affinity=[cpus[0]]))
    pg.start()
    assert [q.get(timeout=30)["cpus"] for _ in range(2)] == [[cpus[0]]] * 2
    pg.join(30)
    pg.close()
    pg = _group((1, ProcessTemplate(nh.report, args=(q,), policy=Policy(cpu_affinity=[cpus[-1]]))),
                policy=Policy(cpu_affinity=[cpus[0]]))
    pg.start()
    assert q.get(timeout=30)["cpus"] == [cpus[-1]]  # the template refines the group
    pg.join(30)
    pg.close()


def test_restarted_processes_keep_the_callers_policy():
    cpus = sorted(os.sched_getaffinity(0))
    q = Queue()
    pg = _group((1, ProcessTemplate(nh.report, args=(q,))), restart=True)
    with Policy(cpu_affinity=[cpus[-1]]):
        pg.start()
    # The first one and its replacements (started by the group's thread).
    assert [q.get(timeout=30)["cpus"] for _ in range(3)] == [[cpus[-1]]] * 3
    pg.stop(patience=1)
    pg.close()


def test_start_failure_leaves_nothing_running():
    pg = _group((2, ProcessTemplate(nh.sleep, args=(60,))),
                (1, ProcessTemplate(nh.sleep, args=(60,), policy=Policy(cpu_affinity=[4096]))))
    with pytest.raises(DragonProcessGroupStartError):
        pg.start()
    assert pg.puids == [] and pg._state == "Idle"
    pg.close()


def test_lifecycle_errors():
    pg = ProcessGroup()
    with pytest.raises(DragonProcessGroupRunningError):
        pg.start()
    with pytest.raises(DragonProcessGroupError):
        pg.init()  # no processes
    with pytest.raises(ValueError):
        pg.add_process(0, ProcessTemplate("true"))
    with pytest.raises(TypeError):
        pg.add_process(1, nh.sleep)
    pg.add_process(1, ProcessTemplate(nh.sleep, args=(60,)))
    pg.init()
    with pytest.raises(DragonProcessGroupAlreadyInitialized):
        pg.init()
    with pytest.raises(DragonProcessGroupAlreadyInitialized):
        pg.add_process(1, ProcessTemplate("true"))
    pg.start()
    with pytest.raises(DragonProcessGroupRunningError):
        pg.start()
    with pytest.raises(TypeError):
        pickle.dumps(pg)
    pg.close(patience=1)
    with pytest.raises(NotImplementedError):
        _pmi()
    with pytest.raises(ValueError):
        ProcessGroup(walltime=-1)


def _pmi():
    pg = ProcessGroup(pmi_enabled=True)
    pg.add_process(1, ProcessTemplate("true"))
    pg.init()


def test_stdout_of_group_members_by_puid():
    pg = _group((2, ProcessTemplate("/bin/sh", args=["-c", "echo rank-output"], stdout=PIPE)))
    pg.start()
    # Once they have exited (they may well have before start() returned),
    # the group still knows them and their output is still there.
    pg.join(30)
    outs = []
    for puid, _ in pg.inactive_puids:
        proc = Process(None, ident=puid)
        if proc.stdout_conn:
            outs.append(proc.stdout_conn.read())
    pg.close()
    assert outs == ["rank-output\n"] * 2


def test_context_manager_closes():
    with _group((2, ProcessTemplate(nh.sleep, args=(60,)))) as pg:
        pg.start()
        pids = [Process(None, ident=p).pid for p in pg.puids]
    assert all(not pid_alive(p) for p in pids)


def test_owner_exit_without_close_stops_the_group(tmp_path):
    script = write_script(tmp_path, """
        import os, sys, time
        sys.path.insert(0, %r)
        import _native_helpers as nh
        from dragon.native.process import Process, ProcessTemplate
        from dragon.native.process_group import ProcessGroup

        if __name__ == "__main__":
            pg = ProcessGroup(restart=True)
            pg.add_process(2, ProcessTemplate(nh.stubborn, args=(3600,)))
            pg.init()
            pg.start()
            print(os.environ["DRAGON_RUN_ID"], *[Process(None, ident=p).pid for p in pg.puids], flush=True)
            # no close(): the group is stopped when this process exits
    """ % os.path.dirname(os.path.abspath(__file__)))
    r = run_script(script, timeout=90)  # the children would outlive it: only stopping them lets it end
    assert r.returncode == 0, r.stderr
    run_id, *pids = r.stdout.split()
    assert len(pids) == 2
    assert wait_until(lambda: not any(pid_alive(int(p)) for p in pids), 10)
    assert wait_until(lambda: not run_processes(run_id), 10)
    assert shm_files(run_id) == []
