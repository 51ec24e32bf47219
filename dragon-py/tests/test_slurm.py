"""``dragon`` inside a Slurm allocation, on a real Slurm cluster.

The cluster is ``testbed/slurm.py``: ``slurmctld`` and one ``slurmd`` per
node, each node a set of namespaces on this machine (``testbed/cluster.py``),
Debian's Slurm and MUNGE. Every test runs ``salloc`` or ``sbatch`` on node1
as a user would, checks what the script printed and the exit code, and
checks that every node is clean afterwards (no process, no ``/dev/shm``
file) but for Slurm's own daemons.

The first tests need neither root nor Slurm: reading an allocation from the
environment, choosing a run's hosts, and a node service's end on SIGTERM.

The cluster tests need root and the Slurm packages (``.ci/run`` installs
them); without them they fail, unless ``DRAGON_SKIP_NETNS=1`` (no root)
or ``DRAGON_SKIP_SLURM=1`` (no Slurm) says to skip them.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap

import pytest

from conftest import clean_env, shm_files, wait_until, write_script

from _testbed import DRAGON, NODES  # also puts testbed/ on sys.path
# Generous: a loaded 2-core machine runs three nodes' interpreters and Slurm.
RUN_TIMEOUT = 180

pytestmark = pytest.mark.timeout(600)


# ---------------------------------------------------------------- no cluster needed

def test_cpus_per_node_expand_as_slurm_writes_them():
    from dragon.slurm import AllocationError, parse_cpus_per_node

    assert parse_cpus_per_node("2(x3)") == [2, 2, 2]
    assert parse_cpus_per_node("4,2(x2),1") == [4, 2, 2, 1]
    assert parse_cpus_per_node("64") == [64]
    for bad in ("", "2(x)", "x3", "2(x0)", "0", "2,,3", "2(x3", "-1"):
        with pytest.raises(AllocationError):
            parse_cpus_per_node(bad)


def test_an_allocation_is_read_from_the_environment():
    from dragon.slurm import AllocationError, allocation, local_cpus

    assert allocation({}) is None
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "nid[001-003],login", "SLURM_JOB_CPUS_PER_NODE": "4(x2),1(x2)"}
    a = allocation(env)
    assert (a.job_id, a.nodes, a.cpus) == ("42", ["nid001", "nid002", "nid003", "login"], [4, 4, 1, 1])
    assert a.cpus_of("nid003") == 1 and a.cpus_of("elsewhere") is None
    assert local_cpus(dict(env, SLURMD_NODENAME="nid002")) == 4
    assert local_cpus(dict(env, SLURMD_NODENAME="elsewhere")) is None
    for broken, what in ((dict(env, SLURM_JOB_CPUS_PER_NODE="4(x2)"), "counts 2 nodes"),
                         ({"SLURM_JOB_ID": "42"}, "SLURM_JOB_NODELIST"),
                         (dict(env, SLURM_JOB_NODELIST="nid[003-001]"), "SLURM_JOB_NODELIST"),
                         (dict(env, SLURM_JOB_CPUS_PER_NODE=None), "SLURM_JOB_CPUS_PER_NODE")):
        broken = {k: v for k, v in broken.items() if v is not None}
        with pytest.raises(AllocationError, match=what):
            allocation(broken)


def test_the_hosts_of_a_run_inside_and_outside_an_allocation():
    import socket

    from dragon.launcher import LaunchError, plan

    me = socket.gethostname()
    alloc = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_JOB_CPUS_PER_NODE": "2,1(x2)"}
    # Outside an allocation: only a host list makes a run of several nodes.
    assert plan(environ={}) is None
    p = plan("a,b", environ={})
    assert (p.hosts, p.cpus, p.srun) == (["a", "b"], [None, None], False)
    assert plan("a,b,c", nodes=2, environ={}).hosts == ["a", "b"]
    with pytest.raises(LaunchError, match="needs the hosts to run on"):
        plan(nodes=2, environ={})
    # Inside: every node of the job, its CPUs on each, services through srun.
    p = plan(environ=alloc)
    assert (p.hosts, p.cpus, p.srun) == (["n1", "n2", "n3"], [2, 1, 1], True)
    p = plan(nodes=2, environ=alloc)
    assert (p.hosts, p.cpus) == (["n1", "n2"], [2, 1])
    assert plan("n3,n2", environ=alloc).hosts == ["n3", "n2"]
    with pytest.raises(LaunchError, match="-N 4, but Slurm job 7 has 3 hosts"):
        plan(nodes=4, environ=alloc)
    with pytest.raises(LaunchError, match="not node of Slurm job 7"):
        plan("n1,elsewhere", environ=alloc)
    # --remote-exec reaches hosts the way it says, inside an allocation too.
    p = plan("n1,elsewhere", remote_exec="ssh {host}", environ=alloc)
    assert (p.hosts, p.cpus, p.srun) == (["n1", "elsewhere"], [2, None], False)
    # This host, when it is one of the job's nodes, is the primary.
    mine = {"SLURM_JOB_ID": "8", "SLURM_JOB_NODELIST": "n1,%s,n3" % me, "SLURM_JOB_CPUS_PER_NODE": "1,3,1"}
    p = plan(environ=mine)
    assert (p.hosts, p.cpus) == ([me, "n1", "n3"], [3, 1, 1])
    # An allocation of this node alone is a run on this machine.
    assert plan(environ={"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": me, "SLURM_JOB_CPUS_PER_NODE": "3"}) is None
    with pytest.raises(LaunchError, match="SLURM_JOB_CPUS_PER_NODE"):
        plan(environ=dict(alloc, SLURM_JOB_CPUS_PER_NODE="2"))


def test_cpu_count_and_pool_size_on_one_node_of_an_allocation(tmp_path):
    import socket

    script = write_script(tmp_path, """
        import multiprocessing as mp, os
        from dragon.native.machine import Node, System
        with mp.Pool() as p:
            print(mp.cpu_count(), p._processes, Node(System().nodes[0]).num_cpus, flush=True)
    """)
    env = clean_env(SLURM_JOB_ID="5", SLURM_JOB_NODELIST="%s,other" % socket.gethostname(),
                    SLURM_JOB_CPUS_PER_NODE="3,1")
    r = subprocess.run([DRAGON, "-s", script], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "3", "3"], r.stdout


def test_a_node_service_ends_the_run_cleanly_on_sigterm(tmp_path):
    # What Slurm does to every step of a job it cancels or times out: the
    # service cleans its node up, and dragon, whose primary service it
    # is, ends the program.
    script = write_script(tmp_path, """
        import json, os, signal, sys, time
        import multiprocessing as mp
        if __name__ == "__main__":
            q = mp.Queue()
            q.put(b"x" * 100)
            assert q.get(timeout=60)
            table = json.loads(os.environ["DRAGON_NODES"])
            print("run", os.environ["DRAGON_RUN_ID"], flush=True)
            os.kill(table[0]["service_pid"], signal.SIGTERM)
            time.sleep(300)
            sys.exit(3)
    """)
    env = clean_env()
    env.pop("SLURM_JOB_ID", None)
    r = subprocess.run([DRAGON, "--hostlist", "localhost", script], env=env, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    assert r.returncode == -signal.SIGTERM, (r.returncode, r.stdout, r.stderr)
    assert "the service received SIGTERM" in r.stderr and "ending the program" in r.stderr, r.stderr
    run = re.search(r"run (\S+)", r.stdout).group(1)
    assert wait_until(lambda: not shm_files(run), 30), shm_files(run)


# ---------------------------------------------------------------- the Slurm cluster

def _require_cluster():
    try:
        from slurm import missing_requirements
    except ImportError as e:  # pragma: no cover - the harness is in the repository
        pytest.fail("the Slurm test harness (testbed/slurm.py) cannot be imported: %s" % e, pytrace=False)
    if os.geteuid() != 0 and os.environ.get("DRAGON_SKIP_NETNS") == "1":
        pytest.skip("Slurm cluster tests need root (DRAGON_SKIP_NETNS=1)")
    missing = missing_requirements()
    if missing and os.environ.get("DRAGON_SKIP_SLURM") == "1":
        pytest.skip("no Slurm test cluster here (DRAGON_SKIP_SLURM=1): needs " + ", ".join(missing))
    if missing:
        pytest.fail("the Slurm cluster tests need: %s (install slurmctld slurmd slurm-client munge, run as "
                    "root; or set DRAGON_SKIP_SLURM=1 to skip them)" % ", ".join(missing), pytrace=False)


@pytest.fixture(scope="module")
def slurm():
    _require_cluster()
    from slurm import SlurmCluster

    with SlurmCluster(nodes=NODES) as s:
        yield s


def _script(s, name, body):
    path = os.path.join(s.cluster.shared, name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(body))
    return name


def _env():
    """This process's environment without its own run's or job's variables."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DRAGON_", "SLURM_")) or k == "DRAGON_DEBUG"}


_last = {}  # the last run's output, for the clean check's message


def _run(s, argv, timeout=RUN_TIMEOUT):
    r = s.run(0, argv, timeout=timeout, cwd=s.cluster.shared, env=_env())
    _last["run"] = r
    return r


def _popen(s, argv):
    return s.popen(0, argv, cwd=s.cluster.shared, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, text=True)


def _assert_clean(s):
    for i in range(NODES):
        left = s.wait_clean(i, timeout=60)
        r = _last.get("run")
        assert not left, "node%d not clean: %r\n(after %s:\n%s)" % (
            i + 1, left, r.args if r else None, r.stderr[-3000:] if r else "")


def _ok(r, code=0):
    assert r.returncode == code, "exit %d\nstdout:\n%s\nstderr:\n%s" % (r.returncode, r.stdout, r.stderr)


def _wait_for_line(p, word, timeout=RUN_TIMEOUT):
    """Lines of ``p``'s output up to the first that starts with ``word``."""
    import threading

    seen = []
    timer = threading.Timer(timeout, p.kill)  # the watchdog: a hung run fails the test, never hangs it
    timer.start()
    try:
        for line in p.stdout:
            seen.append(line)
            if line.startswith(word):
                return seen
    finally:
        timer.cancel()
    raise AssertionError("the run ended before printing %r:\n%s" % (word, "".join(seen)))


MACHINE = """
    import multiprocessing as mp, os, socket, sys
    from dragon.native.machine import Node, System

    def where(q, i, lines, primary):
        # Output of processes on the other nodes, on standard error: the
        # launcher is its only writer there (with --label, line by line),
        # while the program's own report goes to standard output.
        if socket.gethostname() != primary:
            for k in range(lines):
                print("out %d %d %s" % (i, k, "x" * 50), file=sys.stderr)
            sys.stderr.flush()
        with open("/proc/self/status") as f:
            blocked = [line.split()[1] for line in f if line.startswith("SigBlk:")][0]
        q.put((i, socket.gethostname(), os.environ.get("SLURM_JOB_ID"), int(blocked, 16)))

    def checkin(here, go):
        here.put(socket.gethostname())
        go.get(timeout=300)
        return socket.gethostname()

    def workers_ran_on(pool):
        # The hosts whose workers ran tasks. Every node of the run has
        # workers; a node gets tasks once its workers have started, so each
        # task holds its worker until every node has checked in (the first
        # node to start cannot take them all).
        want = {Node(n).hostname for n in System().nodes}
        here, go = mp.Queue(), mp.Queue()
        n = pool._processes + 48
        rs = [pool.apply_async(checkin, (here, go)) for _ in range(n)]
        seen = set()
        while seen != want:
            seen.add(here.get(timeout=300))
        for _ in range(n):
            go.put(None)
        return sorted(set(r.get(300) for r in rs))

    if __name__ == "__main__":
        s = System()
        print("nodes", [Node(n).hostname for n in s.nodes], [Node(n).num_cpus for n in s.nodes])
        with mp.Pool() as pool:
            print("cpus", mp.cpu_count(), pool._processes, os.cpu_count())
            print("workers", workers_ran_on(pool))
        q = mp.Queue()
        lines = int(sys.argv[2]) if len(sys.argv) > 2 else 0
        ps = [mp.Process(target=where, args=(q, i, lines, socket.gethostname())) for i in range(2 * s.nnodes)]
        for p in ps:
            p.start()
        got = sorted(q.get(timeout=60) for _ in ps)
        for p in ps:
            p.join(60)
        print("hosts", sorted({h for _, h, _, _ in got}), "jobs", sorted({j for _, _, j, _ in got}))
        print("blocked", sorted({b for _, _, _, b in got}))
        if "steps" in sys.argv[3:]:
            import json, re, subprocess
            out = subprocess.run(["squeue", "-h", "-s", "-j", os.environ["SLURM_JOB_ID"], "-o", "%N"],
                                 capture_output=True, text=True).stdout
            print("steps", sorted(out.split()))
            # The run's secret reached each service on its standard input:
            # no variable of this node's service (a job step) holds one.
            service = json.loads(os.environ["DRAGON_NODES"])[0]["service_pid"]
            with open("/proc/%d/environ" % service, "rb") as f:
                env = f.read().split(b"\\0")
            print("secret-like", [v.split(b"=")[0] for v in env if re.fullmatch(rb"[^=]*=[0-9a-fA-F]{64}", v)])
        print("job", os.environ.get("SLURM_JOB_ID"), flush=True)
        sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    """


def _machine(out):
    nodes, cpus = re.search(r"^nodes (\[.*?\]) (\[.*?\])$", out, re.M).groups()
    n, pool, machine = map(int, re.search(r"^cpus (\d+) (\d+) (\d+)$", out, re.M).groups())
    hosts = eval(re.search(r"^hosts (\[.*?\])", out, re.M).group(1))
    jobs = eval(re.search(r" jobs (\[.*?\])$", out, re.M).group(1))
    return eval(nodes), eval(cpus), n, pool, machine, hosts, jobs


def test_salloc_runs_on_every_node_with_the_allocations_cpus(slurm):
    # One CPU per node, on nodes of the machine's CPUs: cpu_count() and
    # Pool() must be the allocation's (3), not the hardware's.
    script = _script(slurm, "machine.py", MACHINE)
    r = _run(slurm, ["salloc", "-N", "3", "--ntasks-per-node=1", DRAGON, "--label", script, "7", "1000", "steps"])
    _ok(r, 7)
    # Output of processes on the other nodes, through their services' srun
    # steps, arrives whole (round-robin placement: processes 1, 2, 4, 5).
    out = [line for line in r.stderr.splitlines() if "] out " in line]
    bad = [line for line in out if not re.fullmatch(r"\[node[23]\] out \d \d+ x{50}", line)]
    assert not bad, bad[:20]
    assert sorted(tuple(map(int, line.split()[2:4])) for line in out) == [(i, k) for i in (1, 2, 4, 5)
                                                                           for k in range(1000)], r.stderr[-2000:]
    nodes, cpus, n, pool, machine, hosts, jobs = _machine(r.stdout)
    assert nodes == ["node1", "node2", "node3"] and cpus == [1, 1, 1], r.stdout
    assert (n, pool) == (3, 3), r.stdout
    assert machine == slurm.cpus  # what the hardware says, and what a pool must not take
    assert hosts == ["node1", "node2", "node3"], r.stdout
    assert "workers ['node1', 'node2', 'node3']" in r.stdout, r.stdout  # the pool's, one on each node
    job = re.search(r"^job (\d+)$", r.stdout, re.M).group(1)
    assert jobs == [job], r.stdout  # every process is part of the job
    # No signal the services take for themselves stays blocked in the
    # processes they start.
    assert "blocked [0]" in r.stdout, r.stdout
    # The node services are steps of the job, one on each node.
    assert "steps ['node1', 'node2', 'node3']" in r.stdout, r.stdout
    assert "secret-like []" in r.stdout, r.stdout
    _assert_clean(slurm)


def test_nodes_and_single_node_inside_an_allocation(slurm):
    _script(slurm, "machine.py", MACHINE)
    r = _run(slurm, ["salloc", "-N", "3", "--ntasks-per-node=1", "sh", "-c",
                     "%s --nodes 2 machine.py 4; echo exit=$?; %s -s machine.py 5; echo exit=$?; "
                     "%s --nodes 4 machine.py; echo exit=$?" % (DRAGON, DRAGON, DRAGON)])
    _ok(r)
    runs = r.stdout.split("exit=")
    assert [x.split()[0] for x in runs[1:]] == ["4", "5", "2"], r.stdout
    nodes, cpus, n, pool, _, hosts, _ = _machine(runs[0])
    assert (nodes, cpus, n, pool, hosts) == (["node1", "node2"], [1, 1], 2, 2, ["node1", "node2"]), runs[0]
    nodes, cpus, n, pool, _, hosts, _ = _machine(runs[1])
    assert (nodes, cpus, n, pool, hosts) == (["node1"], [1], 1, 1, ["node1"]), runs[1]
    assert "-N 4, but Slurm job" in r.stderr and "has 3 hosts" in r.stderr, r.stderr
    _assert_clean(slurm)


def test_sbatch_runs_the_script_on_the_allocation_with_its_exit_code(slurm):
    _script(slurm, "machine.py", MACHINE)
    job = _script(slurm, "job.sh", """\
        #!/bin/sh
        #SBATCH -N 3
        #SBATCH --ntasks-per-node=2
        #SBATCH -o job.out
        exec %s machine.py 6
        """ % DRAGON)
    r = _run(slurm, ["sbatch", "--wait", job])
    with open(os.path.join(slurm.cluster.shared, "job.out")) as f:
        out = f.read()
    assert r.returncode == 6, (r.stdout, r.stderr, out)
    nodes, cpus, n, pool, _, hosts, _ = _machine(out)
    assert nodes == ["node1", "node2", "node3"] and cpus == [2, 2, 2] and (n, pool) == (6, 6), out
    assert hosts == ["node1", "node2", "node3"], out
    assert "workers ['node1', 'node2', 'node3']" in out, out
    _assert_clean(slurm)


def test_a_primary_outside_this_host_runs_dragon_there(slurm):
    # salloc runs its command where it was typed (node1, as on a login
    # node), the allocation is node2 and node3: the script runs on node2.
    _script(slurm, "machine.py", MACHINE)
    r = _run(slurm, ["salloc", "-N", "2", "-w", "node2,node3", DRAGON, "machine.py", "9"])
    _ok(r, 9)
    nodes, cpus, n, pool, _, hosts, _ = _machine(r.stdout)
    assert nodes == ["node2", "node3"] and hosts == ["node2", "node3"], r.stdout
    _assert_clean(slurm)


HOLD = """
    import multiprocessing as mp, os, socket, sys, time

    def hold(q):
        q.put(socket.gethostname())
        time.sleep(600)

    def slow(i):
        time.sleep(600)

    if __name__ == "__main__":
        q = mp.Queue()
        ps = [mp.Process(target=hold, args=(q,)) for _ in range(3)]
        for p in ps:
            p.start()
        print("holding", sorted(q.get(timeout=60) for _ in ps), flush=True)
        with mp.Pool(2) as pool:
            r = pool.map_async(slow, range(8))
            print("mapping", os.environ["SLURM_JOB_ID"], os.getpid(), flush=True)
            r.get()
        sys.exit(0)
    """


def _job_of(lines):
    return lines[-1].split()[1]


def test_scancel_during_a_pool_map_leaves_every_node_clean(slurm):
    _script(slurm, "hold.py", HOLD)
    p = _popen(slurm, ["salloc", "-N", "3", DRAGON, "hold.py"])
    try:
        lines = _wait_for_line(p, "mapping")
        assert "holding ['node1', 'node2', 'node3']" in "".join(lines)
        job = _job_of(lines)
        _ok(_run(slurm, ["scancel", job]))
        rest = p.communicate(timeout=RUN_TIMEOUT)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # Nothing of the job outlives it: dragon ended (salloc waits for its
    # command for ever), either as the program failed on the lost nodes (a
    # node lost, or the pool's agent there ended by its node's teardown
    # first: Slurm stops every node's step at once) or ended by dragon once
    # its own node's service was gone, and every node is clean.
    failed_on_a_node = "NodeLostError" in rest or ("WorkerLostError" in rest and "exited with code" in rest)
    assert "ending the program" in rest or failed_on_a_node, rest
    assert p.returncode != 0
    assert slurm.wait_job_state(job, ("CANCELLED",)) == "CANCELLED"
    _assert_clean(slurm)


def test_a_job_past_its_time_limit_leaves_every_node_clean(slurm):
    _script(slurm, "hold.py", HOLD)
    job_sh = _script(slurm, "limited.sh", """\
        #!/bin/sh
        #SBATCH -N 3
        #SBATCH -t 5
        #SBATCH -o limited.out
        exec %s hold.py
        """ % DRAGON)
    out = os.path.join(slurm.cluster.shared, "limited.out")
    if os.path.exists(out):
        os.unlink(out)
    r = _run(slurm, ["sbatch", "--parsable", job_sh])
    _ok(r)
    job = r.stdout.strip().split(";")[0]

    def mapping():
        try:
            with open(out) as f:
                return "mapping" in f.read()
        except FileNotFoundError:
            return False

    try:
        assert wait_until(mapping, RUN_TIMEOUT, 0.1), "the job did not start its pool"
        with open(out) as f:
            assert "holding ['node1', 'node2', 'node3']" in f.read()
        # Slurm's smallest limit is a minute, checked every 30 s or so: the
        # job's end is brought forward to now instead, and slurmctld ends it
        # at its next check as at any time limit (state TIMEOUT, SIGTERM to
        # every step, SIGKILL after KillWait). scontrol turns "now" into a
        # time on its side and slurmctld refuses an end already in its past,
        # so a second that ticks in between is answered "Invalid time
        # specified": asked again, the next answer is the real one.
        update = ["scontrol", "update", "JobId=%s" % job, "EndTime=now"]
        results = []

        def ended_now():
            results.append(_run(slurm, update))
            return results[-1].returncode == 0 or "Invalid time" not in results[-1].stderr

        assert wait_until(ended_now, RUN_TIMEOUT, 0.1), results[-1].stderr
        _ok(results[-1])
        assert slurm.wait_job_state(job, ("TIMEOUT",), timeout=RUN_TIMEOUT) == "TIMEOUT"
    finally:
        # A failure above leaves no job behind for the tests that follow.
        _run(slurm, ["scancel", job])
    _assert_clean(slurm)


def test_kill_9_of_dragon_inside_an_allocation_leaves_every_node_clean(slurm):
    _script(slurm, "hold.py", HOLD)
    p = _popen(slurm, ["salloc", "-N", "3", DRAGON, "hold.py"])
    try:
        _wait_for_line(p, "mapping")
        dragon = [pid for pid, cmd in slurm.processes(0) if cmd.endswith("dragon hold.py") and "salloc" not in cmd]
        assert len(dragon) == 1, slurm.processes(0)
        os.kill(dragon[0], signal.SIGKILL)
        p.communicate(timeout=RUN_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    _assert_clean(slurm)


def test_slurm_commands_agree_with_our_host_list_parser(slurm):
    from dragon import _native

    for expr in ("node[1-3]", "node[1,3]", "node1,node[2-3]"):
        r = _run(slurm, ["scontrol", "show", "hostnames", expr])
        _ok(r)
        assert r.stdout.split() == _native.expand_hostlist(expr), (expr, r.stdout)
