"""A Pool across the test bed's three nodes (see test_multinode.py for the
test bed): workers on every node, every Pool method, worker loss on a
secondary node, a node cut off mid-map, nested pools, several pools,
placement by policy, balancing by demand. Each test runs a script with
``dragon --hostlist`` from node1, checks what it printed, and checks that
every reachable node is clean afterwards.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from _testbed import DRAGON, RUN_TIMEOUT, namespaced_nodes
from _testbed import assert_clean as _assert_clean
from _testbed import ok as _ok
from _testbed import run as _run
from _testbed import run_env as _env
from _testbed import script as _script

pytestmark = pytest.mark.timeout(600)

# What every script starts with: the node's name, a marker directory.
PRELUDE = """
import multiprocessing as mp, os, socket, sys, time
H = socket.gethostname()
D = os.path.dirname(os.path.abspath(__file__))

def wait_for(name, limit=120):
    path = os.path.join(D, name)
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError("no %s after %d s" % (name, limit))
        time.sleep(0.01)

def mark(name):
    open(os.path.join(D, name), "w").close()

def unmark(*names):
    for name in names:
        try:
            os.unlink(os.path.join(D, name))
        except FileNotFoundError:
            pass

def _checkin(here, go):
    here.put(H)
    go.get(timeout=300)
    return H

def everywhere(p, extra=3):
    # Wait until every node with workers of pool p runs tasks (a node gets
    # tasks once its workers start); the hosts that ran them. Each check-in
    # task holds its worker until every node has checked in, so the first
    # node to start cannot take them all.
    want = {"node%d" % (getattr(w, "_dragon_node", 0) + 1) for w in p._pool}
    here, go = mp.Queue(), mp.Queue()
    n = len(p._pool) + extra * 16
    rs = [p.apply_async(_checkin, (here, go)) for _ in range(n)]
    seen = set()
    while seen != want:
        seen.add(here.get(timeout=300))
    for _ in range(n):
        go.put(None)
    return sorted(set(r.get(300) for r in rs))
"""


@pytest.fixture(scope="module")
def cluster():
    with namespaced_nodes() as c:
        yield c


def _pool_script(cluster, name, body):
    return _script(cluster, name, PRELUDE + body)


def _lines(out, prefix):
    return [line[len(prefix):].strip() for line in out.splitlines() if line.startswith(prefix)]


def test_workers_on_every_node_and_every_method(cluster):
    script = _pool_script(cluster, "pool_methods.py", """
import threading
from multiprocessing.pool import RemoteTraceback

G = None

def init(v):
    global G
    G = (v, H)

def read_global(_):
    return G

def host(x):
    return (x, H)

def square(x):
    return x * x

def mul(a, b):
    return a * b

def add_kw(a, b=0, *, c=0):
    return a + b + c

def fail_on(x):
    if x == 3:
        raise ValueError("bad value %d on %s" % (x, H))
    return x

def pid(_):
    return (os.getpid(), H)

if __name__ == "__main__":
    with mp.Pool() as p:
        print("size", len(p._pool), mp.cpu_count())
        print("nodes", sorted(w._dragon_node for w in p._pool))
        print("ran on", everywhere(p))
        # Every node takes tasks: the first ones go to each in turn.
        print("first", sorted(h for _, h in p.map(host, range(3), 1)))
        r = p.map(host, range(300), 1)
        print("hosts", sorted(set(h for _, h in r)), [x for x, _ in r] == list(range(300)))
        want = [x * x for x in range(1000)]
        print("map1", p.map(square, range(1000), 1) == want)
        print("map64", p.map(square, range(1000), 64) == want)
        print("mapdefault", p.map(square, range(1000)) == want)
        print("imap", list(p.imap(square, range(500))) == want[:500],
              list(p.imap(square, range(500), 16)) == want[:500])
        print("imap_unordered", sorted(p.imap_unordered(square, range(500), 1)) == want[:500],
              sorted(p.imap_unordered(square, range(500), 7)) == want[:500])
        pairs = [(i, i + 1) for i in range(300)]
        print("starmap", p.starmap(mul, pairs) == [a * b for a, b in pairs],
              p.starmap(mul, pairs, 1) == [a * b for a, b in pairs])
        got, errs, done = [], [], threading.Event()
        rs = [p.apply_async(square, (i,), callback=got.append) for i in range(100)]
        print("apply_async", [r.get(60) for r in rs] == want[:100])
        bad = p.apply_async(fail_on, (3,), error_callback=lambda e: (errs.append(e), done.set()))
        done.wait(60)
        print("callbacks", sorted(got) == want[:100], [type(e).__name__ for e in errs])
        mr = p.map_async(square, range(200), 5, callback=lambda v: got.append(len(v)))
        print("map_async", mr.get(60) == want[:200], got[-1])
        print("apply", p.apply(add_kw, (1,), {"b": 2, "c": 3}))
        try:
            p.map(fail_on, range(10), 1)
        except ValueError as e:
            print("raised", e, isinstance(e.__cause__, RemoteTraceback), "fail_on" in e.__cause__.tb)
    p.join()
    with mp.Pool(6, initializer=init, initargs=("from-init",)) as p:
        everywhere(p)
        r = p.map(read_global, range(300), 1)
        print("init", sorted(set(r)))
    p.join()
    with mp.Pool(6, maxtasksperchild=2) as p:
        everywhere(p)
        r = p.map(pid, range(120), 1)
        print("maxtasks", len(set(r)) >= 60, sorted(set(h for _, h in r)))
        ok = p.map(square, range(50), 1) == want[:50]
        deadline = time.monotonic() + 120
        while len(p._pool) != 6 and time.monotonic() < deadline:  # replacements on their way
            time.sleep(0.01)
        print("after", ok, len(p._pool))
    p.join()
""")
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    size = _lines(out, "size")[0].split()
    assert size[0] == size[1] and int(size[0]) >= 3, out
    n = int(size[0])
    assert _lines(out, "nodes")[0] == str(sorted([k % 3 for k in range(n)])), out
    assert "ran on ['node1', 'node2', 'node3']" in out, out
    assert "first ['node1', 'node2', 'node3']" in out, out
    assert "hosts ['node1', 'node2', 'node3'] True" in out, out
    for line in ("map1 True", "map64 True", "mapdefault True", "imap True True", "imap_unordered True True",
                 "starmap True True", "apply_async True", "callbacks True ['ValueError']", "map_async True 200",
                 "apply 6", "init [('from-init', 'node1'), ('from-init', 'node2'), ('from-init', 'node3')]",
                 "maxtasks True ['node1', 'node2', 'node3']", "after True 6"):
        assert line in out, (line, out)
    raised = _lines(out, "raised")[0]
    assert raised.startswith("bad value 3 on node") and raised.endswith("True True"), out
    _assert_clean(cluster)


def test_worker_killed_on_a_secondary_node(cluster):
    script = _pool_script(cluster, "pool_kill.py", """
from dragon.errors import WorkerLostError

def held(i, q):
    q.put((i, H, os.getpid()))
    wait_for("kill-go")
    return i * i

def square(x):
    return x * x

if __name__ == "__main__":
    unmark("kill-go")
    q = mp.Queue()
    with mp.Pool(6) as p:
        rs = [p.apply_async(held, (i, q)) for i in range(30)]
        while True:
            i, h, pid = q.get(timeout=120)
            if h == "node2":
                break
        victim = [w for w in p._pool if w._dragon_node == 1 and w.pid == pid]
        print("victim", len(victim))
        victim[0].kill()
        try:
            rs[i].get(120)
        except WorkerLostError as e:
            print("lost:", e)
        mark("kill-go")
        failed = []
        for k, r in enumerate(rs):
            try:
                assert r.get(120) == k * k
            except WorkerLostError:
                failed.append(k)
        print("failed", failed == [i])
        print("after", p.map(square, range(100), 1) == [x * x for x in range(100)], len(p._pool),
              sorted(w._dragon_node for w in p._pool))
""")
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "victim 1" in out, out
    lost = _lines(out, "lost:")[0]
    assert "on node 1 (node2) was killed by SIGKILL while running this task" in lost, out
    assert "failed True" in out, out
    assert "after True 6 [0, 0, 1, 1, 2, 2]" in out, out
    _assert_clean(cluster)


@pytest.mark.parametrize("how", ["cut", "killed"])
def test_a_node_lost_mid_map_fails_its_tasks_and_the_pool_goes_on(cluster, how):
    """node2's link cut, or node3 killed whole (its init, so every process
    there: service, agent, workers), while each node holds tasks."""
    victim = 1 if how == "cut" else 2
    name, kept = "node%d" % (victim + 1), [n for n in range(3) if n != victim]
    script = _pool_script(cluster, "pool_lost.py", """
from dragon.errors import NodeLostError, WorkerLostError

def held(i, q):
    q.put((i, H))
    wait_for("lost-go", 300)
    return (i * i, H)

def square(x):
    return (x * x, H)

if __name__ == "__main__":
    q = mp.Queue()
    with mp.Pool(6) as p:
        rs = [p.apply_async(held, (i, q)) for i in range(60)]
        seen = set()
        while len(seen) < 3:
            seen.add(q.get(timeout=120)[1])
        mark("lost-ready")                       # the test cuts or kills the node now
        wait_for("lost-done", 300)
        mark("lost-go")
        ok, lost, hosts = 0, [], set()
        for k, r in enumerate(rs):
            try:
                v, h = r.get(300)
                assert v == k * k
                ok += 1
                hosts.add(h)
            except NodeLostError as e:
                assert isinstance(e, WorkerLostError) and isinstance(e, ConnectionError)
                lost.append(str(e))
        print("ok", ok, "lost", len(lost), sorted(hosts))
        print("named", all("sent to node %d (%s), which was lost" % (int(sys.argv[1]), sys.argv[2]) in e
                           for e in lost), lost[:1])
        r = p.map(square, range(300), 1)
        print("after", [v for v, _ in r] == [x * x for x in range(300)], sorted(set(h for _, h in r)),
              sorted(w._dragon_node for w in p._pool))
""")
    for marker in ("lost-ready", "lost-done", "lost-go"):
        path = os.path.join(cluster.shared, marker)
        if os.path.exists(path):
            os.unlink(path)
    argv = [DRAGON, "--hostlist", cluster.hostlist, script, str(victim), name]
    proc = cluster.popen(0, argv, cwd=cluster.shared, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(DRAGON_PEER_TIMEOUT="3"))
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(cluster.shared, "lost-ready")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the script never had tasks on every node"
            time.sleep(0.05)
        if how == "cut":
            cluster.cut(victim)
        else:
            cluster.kill_node(victim)
        open(os.path.join(cluster.shared, "lost-done"), "w").close()
        out, err = proc.communicate(timeout=RUN_TIMEOUT * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if how == "cut":
            cluster.restore(victim)
        else:
            cluster.restart_node(victim)
    assert proc.returncode == 0, (out, err)
    ok, lost = (int(x) for x in _lines(out, "ok")[0].split()[:3:2])
    hosts = str(["node%d" % (n + 1) for n in kept])
    assert ok + lost == 60 and lost >= 1, out
    assert _lines(out, "ok")[0].endswith(hosts), out
    assert "named True" in out, out
    assert "after True %s %s" % (hosts, sorted(kept * 2)) in out, (out, err)
    assert "node %d (%s) is lost" % (victim, name) in err, err
    _assert_clean(cluster)


def test_nested_pools_and_two_pools_at_once_across_nodes(cluster):
    script = _pool_script(cluster, "pool_nested.py", """
import threading

def host(x):
    return H

def square(x):
    return x * x

def nested(n):
    with mp.Pool(3) as inner:
        hosts = everywhere(inner, 1)
        return (H, sum(inner.map(square, range(n), 1)), hosts)

if __name__ == "__main__":
    with mp.Pool(3) as p:
        everywhere(p)
        for outer, total, hosts in sorted(p.map(nested, [10, 20, 30], 1)):
            print("nested", outer, total, hosts)
    p.join()
    with mp.Pool(3) as a, mp.Pool(6) as b:
        out = {}
        def run(name, pool, n, cs):
            out[name] = pool.map(square, range(n), cs)
        ts = [threading.Thread(target=run, args=("a", a, 2000, 1)),
              threading.Thread(target=run, args=("b", b, 5000, 64))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        print("two", out["a"] == [x * x for x in range(2000)], out["b"] == [x * x for x in range(5000)])
        print("placed", sorted(w._dragon_node for w in a._pool), sorted(w._dragon_node for w in b._pool))
        print("disjoint", not {(w._dragon_node, w.pid) for w in a._pool} & {(w._dragon_node, w.pid) for w in b._pool})
""")
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    nested = _lines(out, "nested")
    assert [n.split()[0] for n in nested] == ["node1", "node2", "node3"], out
    totals = sorted(int(n.split()[1]) for n in nested)
    assert totals == sorted(sum(x * x for x in range(n)) for n in (10, 20, 30)), out
    assert all(n.endswith("['node1', 'node2', 'node3']") for n in nested), out
    assert "two True True" in out, out
    assert "placed [0, 1, 2] [0, 0, 1, 1, 2, 2]" in out, out
    assert "disjoint True" in out, out
    _assert_clean(cluster)


def test_policies_place_the_workers(cluster):
    script = _pool_script(cluster, "pool_policy.py", """
import dragon.native
from dragon.infrastructure.policy import Policy, PolicyError

def host(x):
    return H

def where(p):
    hosts = sorted(set(p.map(host, range(60), 1)) | set(everywhere(p)))
    return sorted(getattr(w, "_dragon_node", 0) for w in p._pool), hosts

if __name__ == "__main__":
    with dragon.native.Pool(2, policy=Policy(host_name="node3")) as p:
        print("one host", *where(p))
    with dragon.native.Pool(policy=[Policy(host_name="node2"), Policy(host_id=2)], processes_per_policy=2) as p:
        print("list", *where(p))
    with Policy(placement=Policy.Placement.HOST_NAME, host_name="node2"):
        with mp.Pool(3) as p:
            print("block", *where(p))
    with mp.Pool(2, policy=Policy(host_name="node3")) as p:      # the multiprocessing form takes them too
        print("mp one host", *where(p))
    from dragon.native.machine import Node
    cpus = [Node(i).num_cpus for i in range(3)]
    n = cpus[0] + 1                              # fills node1, then one on node2
    with dragon.native.Pool(n, policy=Policy(distribution=Policy.Distribution.BLOCK)) as p:
        print("fill", sorted(w._dragon_node for w in p._pool) == [0] * cpus[0] + [1])
    with dragon.native.Pool(2, policy=Policy(host_name="node1")) as p:
        print("local", type(p._inqueue).__name__, *where(p))
    for bad in (dict(policy=Policy(host_name="node9")), dict(policy=[]), dict(policy=[Policy()], processes=3,
                processes_per_policy=2), dict(policy="node2")):
        try:
            dragon.native.Pool(**bad)
        except (PolicyError, ValueError, TypeError) as e:
            print("refused", type(e).__name__)
""")
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "one host [2, 2] ['node3']" in out, out
    assert "list [1, 1, 2, 2] ['node2', 'node3']" in out, out
    assert "block [1, 1, 1] ['node2']" in out, out
    assert "mp one host [2, 2] ['node3']" in out, out
    assert "fill True" in out, out
    assert "local Tasks [0, 0] ['node1']" in out, out
    assert _lines(out, "refused") == ["PolicyError", "ValueError", "ValueError", "TypeError"], out
    _assert_clean(cluster)


def test_tasks_given_out_as_the_pool_starts_reach_every_node(cluster):
    """Six tasks that can only finish together (a barrier of six), mapped as
    soon as a pool of six workers (two per node) exists: the nodes whose
    workers start first must not take more than a task per worker while
    the others start, or the tasks queued behind them never run."""
    script = _pool_script(cluster, "pool_start.py", """
B = None

def init(b):
    global B
    B = b

def task(i):
    B.wait(120)
    return H

if __name__ == "__main__":
    with mp.Pool(6, initializer=init, initargs=(mp.Barrier(6),)) as p:
        print("hosts", sorted(p.map(task, range(6), 1)))
""")
    r = _run(cluster, script)
    _ok(r)
    assert "hosts ['node1', 'node1', 'node2', 'node2', 'node3', 'node3']" in r.stdout, r.stdout
    _assert_clean(cluster)

def test_a_slow_node_gets_fewer_tasks(cluster):
    """node3's tasks hold until most of the map is done: the pool must give
    the other nodes the rest (a node holds at most its window), or the map
    would never get there."""
    script = _pool_script(cluster, "pool_slow.py", """
N = 400

def task(i):
    if H == "node3":
        wait_for("slow-go", 300)
    return (i, H)

if __name__ == "__main__":
    unmark("slow-go")
    with mp.Pool(6) as p:
        everywhere(p)                            # node3 takes tasks too
        got, hosts = set(), {}
        for i, h in p.imap_unordered(task, range(N), 1):
            got.add(i)
            hosts[h] = hosts.get(h, 0) + 1
            if len(got) == N // 2:
                mark("slow-go")                  # node3 was held all along
        print("all", got == set(range(N)))
        print("node3", hosts.get("node3", 0), "others", hosts.get("node1", 0) + hosts.get("node2", 0))
""")
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "all True" in out, out
    node3, others = (int(x) for x in _lines(out, "node3")[0].split()[::2])
    assert 1 <= node3 < 200 <= others, out
    _assert_clean(cluster)


def test_process_pool_executor_in_a_multinode_run(cluster):
    script = _pool_script(cluster, "pool_executor.py", """
import concurrent.futures as cf

def host(x):
    return (x * x, H)

if __name__ == "__main__":
    with cf.ProcessPoolExecutor(4, mp_context=mp.get_context("dragon")) as ex:
        r = list(ex.map(host, range(100), chunksize=3))
        print("executor", [v for v, _ in r] == [x * x for x in range(100)], sorted(set(h for _, h in r)))
""")
    r = _run(cluster, script)
    _ok(r)
    # Its workers go round-robin over the nodes (where each task ran
    # depends on which worker is free: test_multinode_exec.py checks the
    # placement).
    assert "executor True [" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_workers_that_cannot_start_on_one_node(cluster):
    script = _pool_script(cluster, "pool_broken.py", """
from dragon.errors import BrokenPoolError

def init():
    if H == "node3":
        os._exit(4)

def square(x):
    return (x * x, H)

if __name__ == "__main__":
    with mp.Pool(6, initializer=init) as p:
        ok, broken = 0, []
        for k, r in enumerate([p.apply_async(square, (i,)) for i in range(100)]):
            try:
                assert r.get(300)[0] == k * k
                ok += 1
            except BrokenPoolError as e:
                broken.append(str(e))
        print("first", ok, broken)
        # node3's workers keep dying before they start: it is left out
        # (its part ends, its workers go).
        node3 = p._inqueue.parts[2]
        deadline = time.monotonic() + 120
        while node3.dead is None and time.monotonic() < deadline:
            time.sleep(0.01)
        r = p.map(square, range(200), 1)
        print("after", [v for v, _ in r] == [x * x for x in range(200)], sorted(set(h for _, h in r)),
              sorted(w._dragon_node for w in p._pool))
    with mp.Pool(3, initializer=os._exit, initargs=(5,)) as p:
        try:
            p.map(square, range(10), 1)
        except BrokenPoolError as e:
            print("none start:", e)
""")
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    # node3 never took a task: a node gets tasks once one of its workers starts.
    assert "first 100 []" in out, out
    none = _lines(out, "none start:")[0]
    assert none.startswith("every node of this pool is gone"), out
    assert all("node %d (node%d)" % (k, k + 1) in none for k in range(3)), out
    assert "after True ['node1', 'node2'] [0, 0, 1, 1]" in out, out
    _assert_clean(cluster)


def test_pools_in_a_row_leave_nothing_behind_on_any_node(cluster):
    script = _pool_script(cluster, "pool_leaks.py", """
import gc
from dragon.infrastructure.policy import Policy

def square(x):
    return x * x

def listing(q):
    q.put((H, sorted(os.listdir("/dev/shm"))))

def shm(q):
    out = {}
    for h in ("node2", "node3"):
        with Policy(host_name=h):
            p = mp.Process(target=listing, args=(q,))
            p.start()
            p.join()
        k, v = q.get(timeout=120)
        out[k] = v
    return out

if __name__ == "__main__":
    q = mp.Queue()
    before = shm(q)
    here = []
    for _ in range(4):
        with mp.Pool(6) as p:
            assert p.map(square, range(300), 1) == [x * x for x in range(300)]
            local = p._inqueue.parts[0].tasks
            mine = [p._outqueue._ch.name, local._ch.name, local._lock.name, local._block.name]
            assert all(os.path.exists(os.path.join("/dev/shm", n)) for n in mine), mine
            during = shm(q)
            assert all(len(during[h]) > len(before[h]) for h in during), (before, during)
            here += mine
        p.join()
        del p, local
    gc.collect()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = shm(q)
        if after == before and not any(os.path.exists(os.path.join("/dev/shm", n)) for n in here):
            break
        time.sleep(0.1)
    print("others", {h: sorted(set(after[h]) - set(before[h])) for h in after})
    print("here", [n for n in here if os.path.exists(os.path.join("/dev/shm", n))])
""")
    r = _run(cluster, script)
    _ok(r)
    assert "others {'node2': [], 'node3': []}" in r.stdout, r.stdout
    assert "here []" in r.stdout, r.stdout
    _assert_clean(cluster)
