"""Everything a run made is gone after the main program ends, however it ends.

Each case runs a script in a fresh run (its own DRAGON_RUN_ID) that starts a
daemonic child, a Pool, a child that leaves an orphaned grandchild behind, and
creates a file with the run's /dev/shm prefix; then the script exits
normally, raises, gets Ctrl-C, SIGTERM or SIGKILL. Afterwards no process of
the run may be alive and no /dev/shm file of the run may remain.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import clean_env, pid_alive, run_processes, shm_files, wait_until, write_script

SCRIPT = """
import faulthandler, json, os, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's post-mortem on a hang
import multiprocessing as mp
import dragon
from dragon import runtime

def sleeper():
    time.sleep(600)

def leave_orphan(q):
    g = mp.Process(target=sleeper)
    g.start()
    q.put(g.pid)
    q.close()
    q.join_thread()  # the queue's feeder thread must flush before _exit
    os._exit(0)  # skips joining g: g is orphaned

if __name__ == "__main__":
    mode = sys.argv[1]
    mp.set_start_method("dragon")
    run = os.environ["DRAGON_RUN_ID"]
    marker = "/dev/shm/" + runtime.shm_prefix() + "test-marker"
    open(marker, "w").close()
    d = mp.Process(target=sleeper, daemon=True)
    d.start()
    q = mp.Queue()
    c = mp.Process(target=leave_orphan, args=(q,))
    c.start()
    orphan = q.get(timeout=30)
    c.join(30)
    pool = mp.Pool(2)
    pool.map(abs, range(4))
    info = {"run": run, "main": os.getpid(), "template": runtime.template_pid(),
            "pids": [d.pid, c.pid, orphan] + [w.pid for w in pool._pool]}
    print(json.dumps(info), flush=True)
    if mode == "raise":
        raise RuntimeError("uncaught on purpose")
    if mode == "wait":
        time.sleep(600)
"""


def _start(tmp_path, mode):
    path = write_script(tmp_path, SCRIPT)
    # A session of its own, so that a Ctrl-C can be sent the way a terminal
    # does: to the whole foreground process group.
    proc = subprocess.Popen([sys.executable, path, mode], env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        pytest.fail("script failed: " + proc.stderr.read())
    return proc, json.loads(line)


def _check_all_gone(proc, info):
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        # Where it hangs: every thread's traceback, then the end of it.
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
        pytest.fail("the script did not end within 60 s; its stderr:\n" + proc.stderr.read())
    pids = info["pids"] + [info["template"]]
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 15), \
        [p for p in pids if pid_alive(p)]
    assert wait_until(lambda: not run_processes(info["run"]), 15), run_processes(info["run"])
    assert wait_until(lambda: not shm_files(info["run"]), 15), shm_files(info["run"])
    return proc.returncode


def test_normal_exit(tmp_path):
    proc, info = _start(tmp_path, "exit")
    assert _check_all_gone(proc, info) == 0


def test_uncaught_exception(tmp_path):
    proc, info = _start(tmp_path, "raise")
    assert _check_all_gone(proc, info) == 1
    assert "uncaught on purpose" in proc.stderr.read()


def test_ctrl_c(tmp_path):
    proc, info = _start(tmp_path, "wait")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _check_all_gone(proc, info)
    assert "KeyboardInterrupt" in proc.stderr.read()


def test_sigterm(tmp_path):
    proc, info = _start(tmp_path, "wait")
    os.kill(proc.pid, signal.SIGTERM)
    assert _check_all_gone(proc, info) == -signal.SIGTERM


def test_sigkill(tmp_path):
    proc, info = _start(tmp_path, "wait")
    os.kill(proc.pid, signal.SIGKILL)
    assert _check_all_gone(proc, info) == -signal.SIGKILL


def test_template_ignores_terminal_signals(tmp_path):
    proc, info = _start(tmp_path, "wait")
    try:
        assert os.getsid(info["template"]) == info["template"]
        assert os.getsid(info["pids"][0]) == info["template"]
        assert os.getsid(proc.pid) != info["template"]
        os.kill(info["template"], signal.SIGINT)  # ignored
        os.kill(info["template"], signal.SIGHUP)  # ignored
        assert not wait_until(lambda: not pid_alive(info["template"]), 0.5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    _check_all_gone(proc, info)


def test_template_sigterm_cleans_up(tmp_path):
    proc, info = _start(tmp_path, "wait")
    os.kill(info["template"], signal.SIGTERM)
    assert wait_until(lambda: not any(pid_alive(p) for p in info["pids"] + [info["template"]]), 15)
    assert wait_until(lambda: not shm_files(info["run"]), 15)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_a_program_using_another_start_method_leaves_nothing(tmp_path):
    """A program that imports dragon but runs on fork (the standard
    library's semaphores, noted in the run's directory) leaves no file of
    its run in /dev/shm."""
    path = write_script(tmp_path, """
        import multiprocessing as mp
        import dragon
        from dragon import runtime

        def put(q):
            q.put(1)

        if __name__ == "__main__":
            ctx = mp.get_context("fork")
            q = ctx.Queue()
            p = ctx.Process(target=put, args=(q,))
            p.start()
            assert q.get(timeout=60) == 1
            p.join()
            print(runtime.run_id(), flush=True)
        """)
    r = subprocess.run([sys.executable, path], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert shm_files(r.stdout.strip()) == []
