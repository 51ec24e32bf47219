"""ProcessPoolExecutor, Manager and Listener/Client across the test bed's
three nodes (see test_multinode.py for the test bed): executor workers on
every node, results and exceptions, ``max_tasks_per_child``,
``initializer``, ``shutdown(cancel_futures=True)``, a worker killed on
node2; Manager proxies used from processes on node2 and node3; a Listener
on node1 and Clients on node3. Each test runs a script with ``dragon
--hostlist`` from node1, checks what it printed, and checks that every
node is clean afterwards.
"""
from __future__ import annotations

import re

import pytest

from _testbed import assert_clean as _assert_clean
from _testbed import ok as _ok
from _testbed import run as _run
from _testbed import script as _script
from _testbed import ON_NODE, namespaced_nodes

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster():
    with namespaced_nodes() as c:
        yield c


def _value(out, name):
    m = re.search(r"^%s (.*)$" % re.escape(name), out, re.M)
    assert m, "no %r line in:\n%s" % (name, out)
    return eval(m.group(1))


def test_executor_across_nodes(cluster):
    script = _script(cluster, "executor.py", """
        import concurrent.futures as cf, multiprocessing as mp, os, socket, threading, time

        H = socket.gethostname()
        _shared = {}

        def init(tag, barrier, gate):
            _shared.update(tag=tag + "@" + H, barrier=barrier, gate=gate)

        def meet(i):
            # Returns once three workers hold a task each: three workers.
            _shared["barrier"].wait(120)
            return i, H, os.getpid()

        def meet_and_fail(i):
            _shared["barrier"].wait(120)
            raise ValueError("task %d failed on %s" % (i, H))

        def square(x):
            return x * x

        def tagged(i):
            return i, _shared["tag"], H, os.getpid()

        def gated(i):
            _shared["gate"].wait(120)
            return i

        if __name__ == "__main__":
            ctx = mp.get_context("dragon")
            barrier, gate = ctx.Barrier(3), ctx.Event()
            with cf.ProcessPoolExecutor(3, mp_context=ctx, initializer=init, initargs=("t", barrier, gate)) as ex:
                met = [f.result(120) for f in [ex.submit(meet, i) for i in range(3)]]
                print("hosts", sorted(h for _, h, _ in met))
                keys = list(ex._processes)
                print("workers", len(keys), len(set(keys)))
                print("map", list(ex.map(square, range(300), chunksize=7)) == [x * x for x in range(300)])
                print("submit", [ex.submit(square, x).result(120) for x in (3, 4, 5)])
                errors = []
                for f in [ex.submit(meet_and_fail, i) for i in range(3)]:
                    e = f.exception(120)
                    errors.append((type(e).__name__, str(e).split(" on ")[1],
                                   "raise ValueError" in str(e.__cause__)))
                print("errors", sorted(errors))
                print("tags", sorted(set(t == "t@" + h for _, t, h, _ in ex.map(tagged, range(30)))))

            # max_tasks_per_child: each worker ends after its task and is
            # replaced; three at a time meet at the barrier, so each round
            # runs on three new workers (one per node, in turn). Rounds, not
            # one big map: CPython 3.11-3.13's executor can stall when many
            # queued tasks meet ending workers (its idle count then skips a
            # replacement), on one node as well.
            with cf.ProcessPoolExecutor(3, mp_context=ctx, max_tasks_per_child=1, initializer=init,
                                        initargs=("m", barrier, gate)) as ex:
                rounds = [[f.result(120) for f in [ex.submit(meet, i) for i in range(3)]] for _ in range(3)]
                workers = {(h, pid) for r in rounds for _, h, pid in r}
                print("max_tasks", [sorted(h for _, h, _ in r) for r in rounds] == [["node1", "node2", "node3"]] * 3,
                      len(workers), all(t == "m@" + h for _, t, h, _ in ex.map(tagged, range(6))))

            # shutdown(cancel_futures=True) while every worker is busy.
            ex = cf.ProcessPoolExecutor(3, mp_context=ctx, initializer=init, initargs=("c", barrier, gate))
            fs = [ex.submit(gated, i) for i in range(23)]
            t = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
            t.start()
            deadline = time.monotonic() + 120
            while not fs[-1].cancelled() and time.monotonic() < deadline:
                time.sleep(0.01)
            gate.set()
            t.join(120)
            done = [f for f in fs if not f.cancelled()]
            print("cancelled", not t.is_alive(), len(fs) - len(done) >= 16,
                  [f.result(0) for f in done] == list(range(len(done))))
            try:
                ex.submit(square, 1)
            except RuntimeError as e:
                print("after shutdown", e)
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    # Three workers, one per node, each known to the executor by its own key.
    assert _value(out, "hosts") == ["node1", "node2", "node3"], out
    assert "workers 3 3" in out, out
    assert "map True" in out, out
    assert "submit [9, 16, 25]" in out, out
    # Exceptions raised on every node, with the remote traceback as cause.
    assert _value(out, "errors") == [("ValueError", "node1", True), ("ValueError", "node2", True),
                                     ("ValueError", "node3", True)], out
    assert "tags [True]" in out, out
    # Nine workers, each ended after its task (by its key: pids repeat
    # across the test bed's nodes), and replaced on the next node.
    assert "max_tasks True 9 True" in out, out
    assert "cancelled True True True" in out, out
    assert "after shutdown cannot schedule new futures after shutdown" in out, out
    _assert_clean(cluster)


def test_executor_worker_killed_on_node2_breaks_the_executor(cluster):
    script = _script(cluster, "executor_broken.py", """
        import concurrent.futures as cf, multiprocessing as mp, os, signal, socket
        from concurrent.futures.process import BrokenProcessPool

        H = socket.gethostname()
        _shared = {}

        def init(go, ev):
            _shared.update(go=go, ev=ev)

        def die_on_node2(i):
            # Every worker holds one task (it waits while holding it); once
            # the executor knows all three, node2's dies with its task.
            _shared["go"].wait(300)
            if H == "node2":
                os.kill(os.getpid(), signal.SIGKILL)
            _shared["ev"].wait(300)
            return i

        def one():
            return 1

        def double(x):
            return 2 * x

        if __name__ == "__main__":
            ctx = mp.get_context("dragon")
            go, ev = ctx.Event(), ctx.Event()
            ex = cf.ProcessPoolExecutor(3, mp_context=ctx, initializer=init, initargs=(go, ev))
            fs = [ex.submit(die_on_node2, i) for i in range(3)]
            # Three workers, one per node (no task can end before go).
            print("workers", sorted("node%d" % (getattr(p._popen, "node", 0) + 1) for p in ex._processes.values()))
            go.set()
            print("futures", [type(f.exception(300)).__name__ for f in fs])
            print("message", fs[0].exception(0))
            try:
                ex.submit(one)
            except BrokenProcessPool as e:
                print("submit after", type(e).__name__)
            ex.shutdown(wait=True)
            # A new executor works after the broken one.
            with cf.ProcessPoolExecutor(3, mp_context=ctx) as ex2:
                print("next", list(ex2.map(double, range(30))) == [2 * x for x in range(30)])
            # Without max_workers: the run's CPUs (every node's), not this node's.
            with cf.ProcessPoolExecutor(mp_context=ctx) as ex3:
                print("default size", ex3._max_workers == ctx.cpu_count() > os.cpu_count(),
                      sum(ex3.map(double, range(100))) == 9900)
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "workers ['node1', 'node2', 'node3']" in out, out
    assert "futures ['BrokenProcessPool', 'BrokenProcessPool', 'BrokenProcessPool']" in out, out + r.stderr
    assert "terminated abruptly" in out, out
    assert "submit after BrokenProcessPool" in out, out
    assert "next True" in out, out
    assert "default size True True" in out, out
    _assert_clean(cluster)


def test_processes_of_a_node_share_one_resource_tracker(cluster):
    # The standard library's resource tracker (SharedMemory, semaphores):
    # processes started from another node share their node's, as a parent's
    # children share its tracker on one node; before, each started its own.
    _assert_clean(cluster)  # no tracker of an earlier run still ending
    script = _script(cluster, "trackers.py", """
        import multiprocessing as mp, os, socket
        from multiprocessing import shared_memory

        def trackers():
            n = 0
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open("/proc/%s/cmdline" % pid, "rb") as f:
                            n += b"resource_tracker import main" in f.read()
                    except OSError:
                        pass
            return n

        def use(i, met, done, q):
            m = shared_memory.SharedMemory(create=True, size=4096)
            m.buf[0] = i
            met.wait(120)  # every process holds its memory, and its tracker if it has one
            q.put((socket.gethostname(), m.buf[0] == i, trackers()))
            done.wait(120)
            m.close()
            m.unlink()

        if __name__ == "__main__":
            mp.set_start_method("dragon")
            met, done, q = mp.Barrier(6), mp.Barrier(6), mp.Queue()
            ps = [mp.Process(target=use, args=(i, met, done, q)) for i in range(6)]
            for p in ps:
                p.start()
            seen = sorted(q.get(timeout=120) for _ in ps)
            for p in ps:
                p.join(120)
            print("seen", seen)
            print("exit", [p.exitcode for p in ps])
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert _value(out, "exit") == [0] * 6, out
    # Two processes per node, each with its memory intact, and one tracker
    # on every node.
    assert _value(out, "seen") == [(h, True, 1) for h in ("node1", "node1", "node2", "node2", "node3",
                                                           "node3")], out
    _assert_clean(cluster)


def test_a_process_on_another_node_is_reaped_once_its_exit_is_seen(cluster):
    # As on one node: the exited child stays a zombie on its node until its
    # parent has seen the exit, then its node's template reaps it, while the
    # Process object lives on.
    script = _script(cluster, "reaped.py", ON_NODE + """
        import os, time
        from multiprocessing.connection import wait

        def state(ask, q):
            pid = ask.get(timeout=120)
            try:
                with open("/proc/%d/stat" % pid) as f:
                    q.put(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                q.put("gone")

        def reaped(pid, q):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    open("/proc/%d/stat" % pid).close()
                except FileNotFoundError:
                    q.put("gone")
                    return
                time.sleep(0.01)
            q.put("still there")

        if __name__ == "__main__":
            mp.set_start_method("dragon")
            q, ask = mp.Queue(), mp.Queue()
            # Started first: starting a process looks at the exits of the
            # others (multiprocessing's _cleanup), as with fork.
            c = on(1, state, ask, q)
            p = on(1, time.sleep, 0)
            wait([p.sentinel], 120)  # exited; not yet seen
            ask.put(p.pid)
            print("before", q.get(timeout=120))
            c.join(120)
            p.join(120)
            c = on(1, reaped, p.pid, q)
            print("after", q.get(timeout=150), p.exitcode)
            c.join(120)
        """)
    r = _run(cluster, script)
    _ok(r)
    assert "before Z" in r.stdout, r.stdout
    assert "after gone 0" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_manager_and_listener_across_nodes(cluster):
    script = _script(cluster, "manager.py", ON_NODE + """
        import multiprocessing as mp, os, socket
        from multiprocessing.connection import Client, Listener
        from multiprocessing import AuthenticationError

        H = socket.gethostname()

        def use(d, l, q, lock, n):
            for _ in range(n):
                with lock:  # the manager's lock makes the read-modify-write whole
                    d["count"] = d.get("count", 0) + 1
            l.append(H)
            d[H] = int(os.environ.get("DRAGON_NODE_INDEX", "0"))
            q.put(("from", H))

        def via_queue(box):
            # A proxy pickled through a queue (not as a process argument).
            l, q = box.get(timeout=120)
            l.append("queued@" + H)
            q.put(("queued", H))

        def client(address, key, out):
            try:
                c = Client(address, authkey=key)
            except AuthenticationError as e:
                out.put(("client refused", H))
                return
            c.send(("hello from", H))
            out.put(("client got", c.recv()))
            c.close()

        if __name__ == "__main__":
            with mp.Manager() as m:
                print("address", m.address)
                d, l, q, lock = m.dict(), m.list(), m.Queue(), m.Lock()
                ps = [on(n, use, d, l, q, lock, 25) for n in (1, 2, 1, 2)]
                use(d, l, q, lock, 25)
                got = sorted(q.get(timeout=120) for _ in range(5))
                for p in ps:
                    p.join(120)
                print("codes", [p.exitcode for p in ps])
                print("count", d["count"])
                print("list", sorted(l))
                print("nodes", sorted((k, v) for k, v in d.items() if k != "count"))
                print("queue", got)
                box = mp.Queue()
                p = on(2, via_queue, box)
                box.put((l, q))
                print("via queue", q.get(timeout=120), "queued@node3" in l)
                p.join(120)

            out = mp.Queue()
            with Listener((H, 0), authkey=b"sesame") as server:
                print("listener", server.address[0] != "127.0.0.1")
                p = on(2, client, server.address, b"sesame", out)
                with server.accept() as c:
                    print("accepted", c.recv())
                    c.send("welcome " + H)
                print(out.get(timeout=120))
                p.join(120)
                p = on(2, client, server.address, b"wrong", out)
                try:
                    server.accept()
                except AuthenticationError as e:
                    print("server refused", e)
                print(out.get(timeout=120))
                p.join(120)
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    host, port = _value(out, "address")
    # TCP on node1's address on the test bed's bridge, not a unix socket.
    assert host.startswith("10.") and port > 0, out
    assert "codes [0, 0, 0, 0]" in out, out
    assert "count 125" in out, out
    assert _value(out, "list") == ["node1"] + ["node2"] * 2 + ["node3"] * 2, out
    assert _value(out, "nodes") == [("node1", 0), ("node2", 1), ("node3", 2)], out
    assert "queue [('from', 'node1'), ('from', 'node2'), ('from', 'node2'), ('from', 'node3'), " \
           "('from', 'node3')]" in out, out
    assert "via queue ('queued', 'node3') True" in out, out
    assert "listener True" in out, out
    assert "accepted ('hello from', 'node3')" in out, out
    assert "('client got', 'welcome node1')" in out, out
    assert "server refused" in out and "('client refused', 'node3')" in out, out
    _assert_clean(cluster)


def test_a_worker_meant_for_another_node_that_starts_here_reports_its_own_pid():
    # A process placed on another node starts here when it holds objects of
    # this node only; an executor worker prepared for that node must then
    # report its pid as this node's (its key in the executor's table), not
    # as the other node's key (the executor's result thread died on that
    # KeyError).
    import types

    from dragon import _crossnode

    results = object()
    proc = types.SimpleNamespace(_args=("calls", _crossnode.KeyedResults(results, 2), "init"))
    _crossnode.here_after_all(proc)
    assert proc._args == ("calls", results, "init")
    _crossnode.here_after_all(proc)  # nothing to undo: unchanged
    assert proc._args == ("calls", results, "init")
