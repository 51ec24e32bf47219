"""Runs across real nodes: the test bed's namespaced nodes (own network,
``/dev/shm``, hostname and pids; a real sshd each), with ``dragon
--hostlist`` started from the first node exactly as a user starts it.

Each test writes a script into the cluster's shared directory, runs it,
checks what it printed and its exit code, and checks that every reachable
node is clean afterwards (no process, no ``/dev/shm`` file of the run).
Root is needed (CI runs as root); without it these tests fail, unless
``DRAGON_SKIP_NETNS=1`` says to skip them.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from _testbed import DRAGON, NODES, ON_NODE, REPO, RUN_TIMEOUT, namespaced_nodes
from _testbed import assert_clean as _assert_clean
from _testbed import kill_service as _kill_service
from _testbed import ok as _ok
from _testbed import run as _run
from _testbed import run_env as _env
from _testbed import script as _script
from _testbed import strike_when_ready as _strike_when_ready

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster():
    with namespaced_nodes() as c:
        yield c


def test_processes_everywhere_output_exit_codes_system(cluster):
    script = _script(cluster, "everywhere.py", """
        import multiprocessing as mp, os, socket, sys

        def where(q, i):
            q.put((i, socket.gethostname(), int(os.environ["DRAGON_NODE_INDEX"])))
            print("child %d says hello from %s" % (i, socket.gethostname()), flush=True)
            sys.exit(10 + i)

        if __name__ == "__main__":
            from dragon.native.machine import System, Node
            s = System()
            print("nodes", s.nnodes, [Node(n).hostname for n in s.nodes])
            print("cpu_count", mp.cpu_count(), sum(Node(n).num_cpus for n in s.nodes))
            q = mp.Queue()
            ps = [mp.Process(target=where, args=(q, i)) for i in range(6)]
            for p in ps:
                p.start()
            got = sorted(q.get(timeout=60) for _ in ps)
            for p in ps:
                p.join(60)
            print("placed", [(i, h) for i, h, _ in got])
            print("codes", [p.exitcode for p in ps])
            print("pids", all(isinstance(p.pid, int) and p.pid > 0 for p in ps))
            sys.exit(5)
        """)
    r = _run(cluster, script, extra=["--label"])
    assert r.returncode == 5, r.stderr
    out = r.stdout
    assert "nodes 3 ['node1', 'node2', 'node3']" in out, out
    n, total = re.search(r"cpu_count (\d+) (\d+)", out).groups()
    assert n == total and int(n) >= 3, out
    placed = eval(re.search(r"placed (.*)", out).group(1))
    # Round-robin from the primary: every node gets two of the six.
    assert placed == [(0, "node1"), (1, "node2"), (2, "node3"), (3, "node1"), (4, "node2"), (5, "node3")], out
    assert "codes [10, 11, 12, 13, 14, 15]" in out, out
    assert "pids True" in out
    # Output of processes on other nodes reaches the terminal, labelled.
    assert "[node2] child 1 says hello from node2" in out, out
    assert "[node3] child 5 says hello from node3" in out, out
    assert "child 0 says hello from node1" in out, out
    _assert_clean(cluster)


def test_policy_places_processes(cluster):
    script = _script(cluster, "policy.py", """
        import multiprocessing as mp, socket
        from dragon.infrastructure.policy import Policy
        from dragon.native.process import Process as NativeProcess

        def host(q):
            q.put(socket.gethostname())

        if __name__ == "__main__":
            q = mp.Queue()
            with Policy(placement=Policy.Placement.HOST_NAME, host_name="node3"):
                ps = [mp.Process(target=host, args=(q,)) for _ in range(3)]
                for p in ps:
                    p.start()
            print("block", sorted(q.get(timeout=60) for _ in ps))
            for p in ps:
                p.join()
            p = NativeProcess(host, args=(q,), policy=Policy(placement=Policy.Placement.HOST_ID, host_id=1))
            p.start()
            print("native", q.get(timeout=60))
            p.join()
            try:
                with Policy(host_name="node9"):
                    mp.Process(target=host, args=(q,)).start()
            except Exception as e:
                print("bad host:", type(e).__name__, e)
        """)
    r = _run(cluster, script)
    _ok(r)
    assert "block ['node3', 'node3', 'node3']" in r.stdout, r.stdout
    assert "native node2" in r.stdout, r.stdout
    assert "bad host: PolicyError" in r.stdout and "node9" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_signals_and_liveness_across_nodes(cluster):
    script = _script(cluster, "signals.py", """
        import multiprocessing as mp, time
        from multiprocessing.connection import wait

        def sleeper(ready):
            ready.put(1)
            time.sleep(600)

        if __name__ == "__main__":
            ready = mp.Queue()
            ps = [mp.Process(target=sleeper, args=(ready,)) for _ in range(3)]
            for p in ps:
                p.start()
            for _ in ps:
                ready.get(timeout=60)
            remote = ps[1:]
            print("alive", [p.is_alive() for p in ps])
            remote[0].terminate()
            remote[1].kill()
            # Sentinels of processes on other nodes work with wait().
            done = []
            while len(done) < 2:
                done += [s for s in wait([p.sentinel for p in remote], 60) if s not in done]
            for p in remote:
                p.join(60)
            print("codes", [p.exitcode for p in remote], [p.is_alive() for p in remote])
            ps[0].terminate()
            ps[0].join(60)
        """)
    r = _run(cluster, script)
    _ok(r)
    assert "alive [True, True, True]" in r.stdout, r.stdout
    assert "codes [-15, -9] [False, False]" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_queue_fed_from_every_node_keeps_per_producer_order(cluster):
    script = _script(cluster, "producers.py", """
        import multiprocessing as mp, os

        N = 200
        BIG = 3 * 1024 * 1024 + 7

        def produce(q, me):
            node = int(os.environ["DRAGON_NODE_INDEX"])
            for k in range(N):
                if k % 50 == 7:
                    q.put((me, node, k, bytes([k % 256]) * BIG))
                else:
                    q.put((me, node, k, b"x" * (k % 300)))
            # What the transport registry of this process holds by now.
            from dragon import _native
            q.put((me, node, None, _native.transports()))

        if __name__ == "__main__":
            q = mp.Queue()
            ps = [mp.Process(target=produce, args=(q, i)) for i in range(6)]
            for p in ps:
                p.start()
            seen = {i: -1 for i in range(6)}
            nodes, done, big = set(), 0, 0
            while done < 6:
                me, node, k, data = q.get(timeout=120)
                nodes.add(node)
                if k is None:
                    done += 1
                    names = {name: (linked, path) for name, linked, path in data}
                    assert names["shm"] == (True, ""), data
                    if node != 0:
                        # Off its node through the plugin file, resolved once.
                        linked, path = names["tcp"]
                        assert not linked and path.endswith("libdragon_transport_tcp.so"), data
                    continue
                assert k == seen[me] + 1, (me, k, seen[me])
                seen[me] = k
                if k % 50 == 7:
                    assert data == bytes([k % 256]) * BIG
                    big += 1
                else:
                    assert data == b"x" * (k % 300)
            for p in ps:
                p.join(60)
            print("ok", sorted(nodes), big, [p.exitcode for p in ps])
        """)
    r = _run(cluster, script)
    _ok(r)
    assert "ok [0, 1, 2] 24 [0, 0, 0, 0, 0, 0]" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_puts_across_nodes_do_not_wait_and_are_never_lost_or_silent(cluster):
    # A put to a queue of another node does not wait for the round trip
    # (deferred sends); the process waits for its puts at exit, and a put
    # that fails on the queue's node is reported, not dropped in silence.
    script = _script(cluster, "deferred_puts.py", ON_NODE + """
        N = 3000   # more than may be in flight at once, and than the ring holds

        def produce(q):
            assert q._remote
            for k in range(N):
                q.put(k)
            # Returns at once: the exit waits until every put is in.

        def produce_big(q, done):
            for k in range(40):          # five times what may be in flight
                q.put(bytes([k]) * (1 << 20))
            done.set()                   # every put returned, none taken yet

        def send_then_close(w):
            for k in range(N):
                w.send(k)
            # The peer gets them all, in order, then EOF. (close() also waits
            # for sends still in flight; whether it had to here is not seen.)
            w.close()

        def put_after_destroy(q, ready, go):
            q.put("first")
            q.close()
            q.join_thread()              # "first" is in the channel
            ready.set()
            go.wait(60)                  # meanwhile the primary destroys the channel
            q._closed = False
            q.put("second")              # taken at once; fails on node1
            q.close()
            q.join_thread()              # the failure is reported here
            print("join_thread returned", flush=True)

        if __name__ == "__main__":
            q = mp.Queue()
            p = on(1, produce, q)
            got = [q.get(timeout=120) for _ in range(N)]
            p.join(60)
            print("in order", got == list(range(N)), "exit", p.exitcode, flush=True)

            # Nobody takes: the puts still return (the rest wait in the
            # producer's feeder), and every one arrives, in order.
            q3, done = mp.Queue(), mp.Event()
            p = on(1, produce_big, q3, done)
            print("puts returned", done.wait(120), flush=True)
            got = [q3.get(timeout=120) for _ in range(40)]
            p.join(60)
            print("big in order", [g == bytes([k]) * (1 << 20) for k, g in enumerate(got)] == [True] * 40,
                  "exit", p.exitcode, flush=True)

            r, w = mp.Pipe(duplex=False)
            p = on(2, send_then_close, w)
            w.close()
            got = [r.recv() for _ in range(N)]
            try:
                r.recv()
            except EOFError:
                print("pipe in order", got == list(range(N)), "then EOF", flush=True)
            p.join(60)

            q2, ready, go = mp.Queue(), mp.Event(), mp.Event()
            p = on(2, put_after_destroy, q2, ready, go)
            assert ready.wait(60)
            print("primary got", q2.get(timeout=60), flush=True)
            q2._ch.destroy()
            go.set()
            p.join(60)
            print("exit", p.exitcode)
        """)
    r = _run(cluster, script)
    _ok(r)
    assert "in order True exit 0" in r.stdout, r.stdout + r.stderr
    assert "puts returned True" in r.stdout and "big in order True exit 0" in r.stdout, r.stdout + r.stderr
    assert "pipe in order True then EOF" in r.stdout, r.stdout + r.stderr
    assert "primary got first" in r.stdout, r.stdout
    assert "join_thread returned" in r.stdout and "exit 0" in r.stdout, r.stdout + r.stderr
    assert "DestroyedError" in r.stderr or "destroyed" in r.stderr.lower(), r.stderr
    _assert_clean(cluster)


def test_many_threads_of_one_process_use_another_nodes_objects_at_once(cluster):
    # One connection to the node's service serves every thread: whichever
    # waits reads the replies for all (no reader thread).
    script = _script(cluster, "threads.py", ON_NODE + """
        import threading

        N, T = 100, 8

        def work(q, lock, v):
            def one(t):
                for k in range(N):
                    with v.get_lock():
                        v.value += 1
                    with lock:
                        pass
                    q.put((t, k))
            ts = [threading.Thread(target=one, args=(t,)) for t in range(T)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        if __name__ == "__main__":
            q, lock, v = mp.Queue(), mp.Lock(), mp.Value("i", 0)
            p = on(1, work, q, lock, v)
            seen = {}
            for _ in range(N * T):
                t, k = q.get(timeout=120)
                assert k == seen.get(t, -1) + 1, (t, k, seen.get(t))
                seen[t] = k
            p.join(120)
            print("total", v.value, "exit", p.exitcode)
        """)
    r = _run(cluster, script)
    _ok(r)
    assert "total 800 exit 0" in r.stdout, r.stdout + r.stderr
    _assert_clean(cluster)


def test_output_of_the_primary_and_other_nodes_comes_in_whole_lines(cluster):
    # Unbuffered (as CI often runs), print() writes its pieces one by one;
    # lines forwarded from another node at the same time must not land
    # between them.
    script = _script(cluster, "lines.py", ON_NODE + """
        N = 1500

        def talk(n):
            for k in range(N):
                print("remote", n, "line", k, "end")

        if __name__ == "__main__":
            ps = [on(1, talk, 1), on(2, talk, 2)]
            for k in range(N):
                print("primary", "line", k, "end")
            for p in ps:
                p.join(120)
        """)
    r = _run(cluster, script, env={"PYTHONUNBUFFERED": "1"})
    _ok(r)
    lines = [ln for ln in r.stdout.splitlines() if ln]
    bad = [ln for ln in lines if not re.fullmatch(r"(primary|remote [12]) line \d+ end", ln)]
    assert not bad, bad[:5]
    assert len(lines) == 3 * 1500, len(lines)
    _assert_clean(cluster)


def test_queue_made_on_a_secondary_node_is_used_from_the_primary(cluster):
    script = _script(cluster, "secondary_queue.py", """
        import multiprocessing as mp, os, queue

        def owner(back):
            q = mp.Queue()                      # a channel on this node (node3)
            q.put(("from", int(os.environ["DRAGON_NODE_INDEX"])))
            done = mp.Queue()
            back.put(q)                         # its handle travels to node1
            back.put(done)
            done.get(timeout=60)                # the primary took ours and put its own
            print("owner got", q.get(timeout=60), flush=True)

        if __name__ == "__main__":
            from dragon.infrastructure.policy import Policy
            back = mp.Queue()
            with Policy(host_name="node3"):
                p = mp.Process(target=owner, args=(back,))
                p.start()
            q = back.get(timeout=60)
            done = back.get(timeout=60)
            print("primary got", q.get(timeout=60))
            try:
                q.get(timeout=0.2)
            except queue.Empty:
                print("empty raised")
            q.put("hello from the primary")
            done.put(1)
            p.join(60)
            # One write: the owner's line, forwarded from node3, may come
            # at the same moment (this process's stdout may be unbuffered,
            # and print() writes its pieces one by one).
            print("exit %s" % p.exitcode)
        """)
    r = _run(cluster, script)
    _ok(r)
    assert "primary got ('from', 2)" in r.stdout, r.stdout
    assert "empty raised" in r.stdout, r.stdout
    assert "owner got hello from the primary" in r.stdout, r.stdout
    assert "exit 0" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_a_cut_link_is_an_error_naming_the_node_and_nodes_end_clean(cluster):
    marker = os.path.join(cluster.shared, "cut-waiting")
    script = _script(cluster, "cut.py", """
        import multiprocessing as mp, os, sys, time

        def holder(back):
            q = mp.Queue()
            back.put(q)
            time.sleep(600)

        if __name__ == "__main__":
            from dragon.infrastructure.policy import Policy
            back = mp.Queue()
            with Policy(host_name="node2"):
                p = mp.Process(target=holder, args=(back,))
                p.start()
            q = back.get(timeout=60)
            open(sys.argv[1], "w").close()     # the test cuts node2 now
            t0 = time.monotonic()
            try:
                q.get(timeout=120)
            except Exception as e:
                print("error:", type(e).__name__, e, flush=True)
            p.join(60)
            print("exit code of the process on the lost node:", p.exitcode, flush=True)
        """)
    try:
        rc, out, err = _strike_when_ready(cluster, script, marker, lambda: cluster.cut(1),
                                          env={"DRAGON_PEER_TIMEOUT": "3"})
    finally:
        cluster.restore(1)
    assert rc == 0, (out, err)
    assert "error: ConnectionError" in out and "node2" in out and "lost" in out, (out, err)
    assert "exit code of the process on the lost node: -9" in out, (out, err)
    # node2 lost its primary and cleaned itself up; the others ended the run.
    _assert_clean(cluster)


def test_a_killed_node_service_fails_what_uses_it(cluster):
    marker = os.path.join(cluster.shared, "svc-waiting")
    script = _script(cluster, "killsvc.py", """
        import multiprocessing as mp, sys, time

        def holder(back):
            q = mp.Queue()
            back.put(q)
            time.sleep(600)

        if __name__ == "__main__":
            from dragon.infrastructure.policy import Policy
            back = mp.Queue()
            with Policy(host_name="node3"):
                p = mp.Process(target=holder, args=(back,))
                p.start()
            q = back.get(timeout=60)
            open(sys.argv[1], "w").close()
            try:
                q.get(timeout=120)
            except Exception as e:
                print("error:", type(e).__name__, e, flush=True)
            p.join(60)
            print("exit", p.exitcode, flush=True)
        """)
    rc, out, err = _strike_when_ready(cluster, script, marker, lambda: _kill_service(cluster, 2))
    assert rc == 0, (out, err)
    assert "error: ConnectionError" in out and "node3" in out, (out, err)
    assert "exit -9" in out, (out, err)
    _assert_clean(cluster)


def test_kill_9_of_dragon_leaves_every_node_clean(cluster):
    marker = os.path.join(cluster.shared, "k9-running")
    if os.path.exists(marker):
        os.unlink(marker)
    script = _script(cluster, "k9.py", """
        import multiprocessing as mp, sys, time

        def sleeper(ready):
            q = mp.Queue()
            q.put(1)
            ready.put(1)
            time.sleep(600)

        if __name__ == "__main__":
            ready = mp.Queue()
            ps = [mp.Process(target=sleeper, args=(ready,)) for _ in range(3)]
            for p in ps:
                p.start()
            for _ in ps:
                ready.get(timeout=60)
            open(sys.argv[1], "w").close()
            time.sleep(600)
        """)
    argv = [DRAGON, "--hostlist", cluster.hostlist, script, marker]
    proc = cluster.popen(0, argv, cwd=cluster.shared, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Every node has processes and files of the run now.
        for i in range(NODES):
            assert cluster.processes(i), "node%d has nothing running" % (i + 1)
            assert cluster.shm_files(i), "node%d has no /dev/shm file" % (i + 1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_clean(cluster)


def test_bad_host_lists_and_unreachable_hosts_are_clear_errors(cluster):
    script = _script(cluster, "nothing.py", "print('never')\n")
    r = cluster.run(0, [DRAGON, "--hostlist", "node[2-1]", script], timeout=60, cwd=cluster.shared, env=_env())
    assert r.returncode == 2 and "ends below its start" in r.stderr, r.stderr
    r = cluster.run(0, [DRAGON, "--hostlist", "node1,nosuchnode", script], timeout=120, cwd=cluster.shared,
                    env=_env(DRAGON_JOIN_TIMEOUT="20"))
    assert r.returncode != 0, r.stdout
    assert "never" not in r.stdout
    assert "nosuchnode" in r.stderr, r.stderr
    _assert_clean(cluster)


def test_pipe_across_nodes_sees_eof_when_the_other_end_closes_or_dies(cluster):
    script = _script(cluster, "pipes.py", """
        import multiprocessing as mp, os, time
        from dragon.infrastructure.policy import Policy

        def echo(conn):
            # On node2: answer until the primary closes its end.
            try:
                while True:
                    m = conn.recv()
                    if m == "raw":
                        conn.send_bytes(conn.recv_bytes())
                        continue
                    conn.send(("echo", m, int(os.environ["DRAGON_NODE_INDEX"])))
            except EOFError:
                print("child saw EOF", flush=True)

        def dies(conn):
            conn.send("about to die")
            os._exit(3)

        if __name__ == "__main__":
            a, b = mp.Pipe()
            with Policy(host_name="node2"):
                p = mp.Process(target=echo, args=(b,))
                p.start()
            b.close()
            for i in range(3):
                a.send(i)
                print(a.recv())
            big = b"z" * (5 << 20)             # leaves this node as a block, arrives as a copy
            a.send(big)
            # One string per print: the children print at the same time,
            # and only whole writes keep lines apart.
            print("big back %s" % (a.recv()[1] == big))
            # Raw bytes whose first byte reads as one of the format's tags.
            raws = [b"", b"\\x00", b"\\x01x", b"\\x02y", b"\\x03z", b"\\x80\\x04not a pickle", b"plain"]
            back = []
            for x in raws:
                a.send("raw")
                a.send_bytes(x)
                back.append(a.recv_bytes())
            print("raw back %s" % (back == raws))
            a.close()
            p.join(60)
            print("exit %s" % p.exitcode)

            r, w = mp.Pipe(duplex=False)
            with Policy(host_name="node3"):
                p = mp.Process(target=dies, args=(w,))
                p.start()
            w.close()
            print(r.recv())
            try:
                r.recv()
            except EOFError:
                print("parent saw EOF")
            p.join(60)
            print("exit %s" % p.exitcode)
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "('echo', 0, 1)" in out and "('echo', 2, 1)" in out, out
    assert "big back True" in out and "raw back True" in out, out
    assert "child saw EOF" in out and "exit 0" in out, out
    assert "about to die" in out and "parent saw EOF" in out and "exit 3" in out, out
    _assert_clean(cluster)


def test_the_seed_tour_runs_on_three_nodes(cluster):
    r = cluster.run(0, [DRAGON, "--hostlist", cluster.hostlist, os.path.join(REPO, "examples", "seed_tour.py")],
                    timeout=RUN_TIMEOUT, cwd=REPO, env=_env())
    _ok(r)
    for step in ("1. Pool.map", "2. Process + Queue", "3. DDict", "4. nested Pools"):
        assert step in r.stdout, r.stdout
    _assert_clean(cluster)


def test_synchronisation_objects_across_nodes(cluster):
    script = _script(cluster, "sync.py", ON_NODE + """
        import multiprocessing as mp, os, queue, sys, time
        from dragon.infrastructure.policy import Policy

        COUNTER = sys.argv[1]

        def bump(lock, n):
            # A read-modify-write of a file on the shared file system: only
            # the lock keeps the increments from being lost.
            for _ in range(n):
                with lock:
                    with open(COUNTER) as f:
                        v = int(f.read())
                    with open(COUNTER, "w") as f:
                        f.write(str(v + 1))

        def recursive(rl, inside, leave):
            with rl:
                with rl:
                    inside.set()
                    leave.wait(60)

        def waiter(ev, arrived, q):
            arrived.release()
            q.put((int(os.environ["DRAGON_NODE_INDEX"]), ev.wait(60)))

        def party(b, q):
            q.put(b.wait(60))

        def cond_waiter(cond, q):
            with cond:
                q.put("waiting")
                ok = cond.wait_for(lambda: os.path.exists(COUNTER + ".go"), 60)
                q.put(("woken", ok))

        def holder(lock, q):
            lock.acquire()
            q.put("held")
            time.sleep(600)

        def worker(jq):
            while True:
                item = jq.get()
                jq.task_done()
                if item is None:
                    return

        def remote_side(jq, bq, eq, q):
            # Counted and bounded from another node: puts count through the
            # queue's node, a get gives the bound's unit back there, join
            # waits there; a full exact queue is full from here too.
            for i in range(5):
                jq.put(i)
            got = bq.get(timeout=60)
            bq.put("b3")
            eq.put("e1")
            try:
                eq.put_nowait("e2")
                full = "not full"
            except queue.Full:
                full = "full"
            q.put(("remote", got, bq.qsize(), full))
            jq.join()
            q.put("producer joined")

        if __name__ == "__main__":
            with open(COUNTER, "w") as f:
                f.write("0")
            lock = mp.Lock()
            ps = [on(n, bump, lock, 40) for n in (0, 1, 2, 1, 2)]
            for p in ps:
                p.join(120)
            print("counter", open(COUNTER).read(), [p.exitcode for p in ps])

            rl, inside, leave = mp.RLock(), mp.Event(), mp.Event()
            p = on(1, recursive, rl, inside, leave)
            inside.wait(60)
            print("rlock taken elsewhere", rl.acquire(timeout=0.2))
            leave.set()
            p.join(60)
            print("rlock after", rl.acquire(timeout=60))
            rl.release()

            ev, arrived, q = mp.Event(), mp.Semaphore(0), mp.Queue()
            ws = [on(n, waiter, ev, arrived, q) for n in (1, 2)]
            for _ in ws:
                arrived.acquire(timeout=60)
            ev.set()
            print("event", sorted(q.get(timeout=60) for _ in ws))

            b = mp.Barrier(3)
            parts = [on(n, party, b, q) for n in (1, 2)]
            mine = b.wait(60)
            print("barrier", sorted([mine] + [q.get(timeout=60) for _ in parts]))

            cond = mp.Condition()
            cw = on(2, cond_waiter, cond, q)
            print(q.get(timeout=60))
            with cond:
                open(COUNTER + ".go", "w").close()
                cond.notify_all()
            print(q.get(timeout=60))
            cw.join(60)

            jq = mp.JoinableQueue()
            jw = on(1, worker, jq)
            for i in range(20):
                jq.put(i)
            jq.put(None)
            jq.join()
            print("joined")
            jw.join(60)

            jq2, bq, eq = mp.JoinableQueue(), mp.Queue(9000), mp.Queue(1)  # bounded by a semaphore, exact
            bq.put("b1")
            bq.put("b2")
            pp = on(1, remote_side, jq2, bq, eq, q)
            got = sorted(jq2.get(timeout=60) for _ in range(5))
            print(q.get(timeout=60))
            for _ in got:
                jq2.task_done()
            print(q.get(timeout=60), got, bq.qsize())
            pp.join(60)
            print("exact", eq.get(timeout=60), eq.empty())

            dead = mp.Lock()
            h = on(2, holder, dead, q)
            print(q.get(timeout=60))
            print("held elsewhere", dead.acquire(timeout=0.2))
            h.kill()
            h.join(60)
            print("taken over", dead.acquire(timeout=60))
        """)
    counter = os.path.join(cluster.shared, "sync-counter")
    r = _run(cluster, script, counter)
    _ok(r)
    out = r.stdout
    assert "counter 200 [0, 0, 0, 0, 0]" in out, out
    assert "rlock taken elsewhere False" in out and "rlock after True" in out, out
    assert "event [(1, True), (2, True)]" in out, out
    assert "barrier [0, 1, 2]" in out, out
    assert "waiting" in out and "('woken', True)" in out, out
    assert "joined" in out, out
    assert "('remote', 'b1', 2, 'full')" in out, out
    assert "exact e1 True" in out, out
    assert "producer joined [0, 1, 2, 3, 4] 2" in out, out
    assert "held\nheld elsewhere False\ntaken over True" in out, out
    _assert_clean(cluster)


def test_lock_releases_and_dead_waiters_across_nodes_as_on_one_node(cluster):
    # What one node does, from another node: a held Lock released by a
    # process that does not hold it (a Lock is a semaphore of one), a free
    # one released is ValueError, an RLock released by a non-owner is
    # AssertionError; a waiter killed on another node takes nothing (it is
    # no longer counted by a condition before its exit is known, no
    # notification, no semaphore unit); a Condition made on
    # another node than its lock's is a clear error.
    script = _script(cluster, "lock_rules.py", ON_NODE + """
        import multiprocessing as mp, time

        def release_it(lock, q):
            try:
                lock.release()
                q.put("released")
            except BaseException as e:
                q.put("%s: %s" % (type(e).__name__, e))

        def sem_waiter(sem, q):
            q.put("waiting")
            sem.acquire()
            q.put("unreachable: a killed waiter took a unit")

        def cond_waiter(cond, q, tag, t):
            with cond:
                q.put(("waiting", tag))
                q.put(("woken", tag, cond.wait(t)))

        def cond_here(lock, q):
            try:
                mp.Condition(lock)
                q.put("made")
            except Exception as e:
                q.put("%s: %s" % (type(e).__name__, e))

        def until(what, check):
            deadline = time.monotonic() + 120
            while not check():
                assert time.monotonic() < deadline, "never: " + what
                time.sleep(0.01)

        if __name__ == "__main__":
            q = mp.Queue()
            lock = mp.Lock()
            lock.acquire()
            on(1, release_it, lock, q).join(60)
            print("held lock released from node2:", q.get(timeout=60), "free:", lock.acquire(False))
            lock.release()
            on(2, release_it, lock, q).join(60)
            print("free lock released from node3:", q.get(timeout=60).split(":")[0])
            on(1, release_it, mp.RLock(), q).join(60)
            print("rlock released from node2:", q.get(timeout=60).split(":")[0])

            cond = mp.Condition()
            dead = on(1, cond_waiter, cond, q, "dead", None)
            q.get(timeout=60)
            until("the waiter on node2 waits", lambda: cond._sleeping_count.get_value() == 1)
            dead.kill()
            dead.join(60)
            until("the killed waiter is no longer counted", lambda: cond._sleeping_count.get_value() == 0)
            live = on(0, cond_waiter, cond, q, "live", 120)
            q.get(timeout=60)
            until("the live waiter waits", lambda: cond._sleeping_count.get_value() == 1)
            with cond:
                cond.notify()
            print("live waiter:", q.get(timeout=60))
            live.join(60)

            # A waiter's exit is told only once its waits have ended.
            sem = mp.Semaphore(0)
            p = on(2, sem_waiter, sem, q)
            q.get(timeout=60)
            p.kill()
            p.join(60)
            sem.release()
            print("unit left for the living:", sem.acquire(timeout=120))

            on(1, cond_here, mp.Lock(), q).join(60)
            print("condition of a lock of node1 made on node2:", q.get(timeout=60))
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "held lock released from node2: released free: True" in out, out
    assert "free lock released from node3: ValueError" in out, out
    assert "rlock released from node2: AssertionError" in out, out
    assert "live waiter: ('woken', 'live', True)" in out, out
    assert "unit left for the living: True" in out and "unreachable" not in out, out
    assert ("condition of a lock of node1 made on node2: ValueError: a Condition is made on its lock's node: "
            "this lock is on node 0") in out, out
    _assert_clean(cluster)

def test_a_barrier_action_runs_in_the_last_party_on_any_node(cluster):
    script = _script(cluster, "barrier_action.py", ON_NODE + """
        import os, sys, threading

        MARK = sys.argv[1]

        def action():
            with open(MARK, "a") as f:
                f.write("ran on %s\\n" % os.environ["DRAGON_NODE_INDEX"])

        def failing():
            raise ValueError("the action failed")

        def last(b, q):
            # Arrive once both others wait: this party, on node3, is last.
            while b.n_waiting < 2:
                os.sched_yield()
            try:
                q.put(("last", b.wait(60)))
            except ValueError as e:
                q.put(("last raised", str(e)))

        def early(b, q):
            try:
                q.put(("early", b.wait(60)))
            except threading.BrokenBarrierError:
                q.put(("early", "broken"))

        if __name__ == "__main__":
            for act in (action, failing):
                b, q = mp.Barrier(3, action=act), mp.Queue()
                ps = [on(1, early, b, q), on(2, last, b, q)]
                try:
                    mine = b.wait(60)
                except threading.BrokenBarrierError:
                    mine = "broken"
                got = dict(q.get(timeout=60) for _ in ps)
                print(act.__name__, sorted(str(v) for v in [mine, *got.values()]), sorted(got),
                      [p.join(60) or p.exitcode for p in ps], flush=True)
            print(open(MARK).read().strip())
        """)
    mark = os.path.join(cluster.shared, "barrier-action")
    r = _run(cluster, script, mark)
    _ok(r)
    out = r.stdout
    # Every party released with its index, the last (node3's) with 2.
    assert "action ['0', '1', '2'] ['early', 'last'] [0, 0]" in out, out
    assert "ran on 2" in out and out.count("ran on") == 1, out
    # The action raised in node3's party: it gets the exception, the others a broken barrier.
    assert "failing ['broken', 'broken', 'the action failed'] ['early', 'last raised'] [0, 0]" in out, out
    _assert_clean(cluster)


def test_value_and_array_across_nodes(cluster):
    script = _script(cluster, "values.py", ON_NODE + """
        import ctypes, multiprocessing as mp
        from dragon.infrastructure.policy import Policy

        class Point(ctypes.Structure):
            _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]

        def add(v, a, n):
            for _ in range(n):
                with v.get_lock():
                    v.value += 1
            with a.get_lock():
                for i in range(len(a)):
                    a[i] += i

        def edit(a, s, p, q):
            a[-1] = -5.5
            a[0:2] = [7.0, 8.0]
            s.value = b"from afar"
            p.x, p.y = 3, 4.5
            q.put((list(a), a[1:3], a[-1], len(a), s.value, s.raw[:3], p.x, p.y, type(a).__name__))

        def raw(r):
            print("unreachable: a RawValue was used off its node", r.value)

        def obj(v, q):
            try:
                v.get_obj()
            except Exception as e:
                q.put(type(e).__name__)

        if __name__ == "__main__":
            v = mp.Value("i", 0)
            a = mp.Array("d", 6)
            ps = [on(n, add, v, a, 50) for n in (0, 1, 2, 2)]
            for p in ps:
                p.join(120)
            print("value", v.value, "array", list(a), [p.exitcode for p in ps])

            q = mp.Queue()
            s = mp.Array("c", 12)
            pt = mp.Value(Point)
            v = mp.Value("i", 0)
            on(1, edit, a, s, pt, q).join(60)
            print("edited", q.get(timeout=60))
            print("here", list(a), s.value, pt.x, pt.y)

            # Plain memory cannot cross: the child fails as it unpickles it.
            p = on(2, raw, mp.RawValue("i", 1))
            p.join(60)
            print("raw exit", p.exitcode)
            on(2, obj, mp.Value("i"), q).join(60)
            print("get_obj", q.get(timeout=60))

            # HPE Dragon's native forms, the same way.
            from dragon.native.array import Array as NativeArray
            from dragon.native.value import Value as NativeValue
            nv, na = NativeValue("i", 0), NativeArray("d", 6)
            ps = [on(n, add, nv, na, 50) for n in (0, 1, 2)]
            for p in ps:
                p.join(120)
            print("native", nv.value, list(na), [p.exitcode for p in ps])
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    # 4 processes x 50 increments, and each adds i to a[i]: no update lost.
    assert "value 200 array [0.0, 4.0, 8.0, 12.0, 16.0, 20.0] [0, 0, 0, 0]" in out, out
    assert ("edited ([7.0, 8.0, 8.0, 12.0, 16.0, -5.5], [8.0, 8.0], -5.5, 6, b'from afar', b'fro', 3, 4.5, "
            "'RemoteSynchronizedArray')") in out, out
    assert "here [7.0, 8.0, 8.0, 12.0, 16.0, -5.5] b'from afar' 3 4.5" in out, out
    assert "raw exit 1" in out and "unreachable" not in out, out
    assert "NotLocalError: shared memory block" in r.stderr and "RawValue" in r.stderr, r.stderr
    assert "get_obj NotLocalError" in out, out
    assert "native 150 [0.0, 3.0, 6.0, 9.0, 12.0, 15.0] [0, 0, 0]" in out, out
    _assert_clean(cluster)


def test_nested_fields_and_items_across_nodes(cluster):
    # A Structure Value's array and struct fields and an Array of
    # Structures' items, written from node2 (and node3, the wrappers passed
    # on by node2): every write reaches node1's memory, as on one node.
    script = _script(cluster, "nested.py", ON_NODE + """
        import ctypes

        class Inner(ctypes.Structure):
            _fields_ = [("y", ctypes.c_int), ("z", ctypes.c_double)]

        class Rec(ctypes.Structure):
            _fields_ = [("arr", ctypes.c_int * 4), ("inner", Inner), ("x", ctypes.c_int),
                        ("grid", (ctypes.c_int * 2) * 2), ("name", ctypes.c_char * 8), ("bits", ctypes.c_uint, 3)]

        class Point(ctypes.Structure):
            _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]

        def edit(v, a, q, fwd):
            v.arr[1] = 7
            v.arr[2:4] = [8, 9]
            v.inner.y = 3
            v.inner.z = 2.5
            v.grid[1][0] = 6
            v.x, v.name, v.bits = 5, b"far", 5
            a[0].x = 9
            a[-1].y = 1.5
            for p in a:
                p.x += 10
            a[1:][0].y = 4.5
            with v.get_lock():
                v.arr[0] += 1
            fwd.put((v, a))
            q.put((list(v.arr), v.arr[1:3], v.inner.y, v.inner.z, [list(r) for r in v.grid], v.x, v.name,
                   v.bits, [(p.x, p.y) for p in a], len(v.arr), len(a)))

        def third(fwd, q):
            v, a = fwd.get(timeout=60)
            v.grid[0][1] = 4
            a[2].y = 6.5
            q.put((type(v).__name__, v.grid[0][1], a[2].y))

        if __name__ == "__main__":
            q, fwd = mp.Queue(), mp.Queue()
            v, a = mp.Value(Rec), mp.Array(Point, 3)
            on(1, edit, v, a, q, fwd).join(60)
            print("node2", q.get(timeout=60))
            on(2, third, fwd, q).join(60)
            print("node3", q.get(timeout=60))
            print("node1", list(v.arr), v.inner.y, v.inner.z, [list(r) for r in v.grid], v.x, v.name, v.bits,
                  [(p.x, p.y) for p in a])
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    seen = "([1, 7, 8, 9], [7, 8], 3, 2.5, [[0, 0], [6, 0]], 5, b'far', 5, [(19, 0.0), (10, 4.5), (10, 1.5)], 4, 3)"
    assert "node2 " + seen in out, out
    assert "node3 ('RemoteSynchronizedRec', 4, 6.5)" in out, out
    assert ("node1 [1, 7, 8, 9] 3 2.5 [[0, 4], [6, 0]] 5 b'far' 5 [(19, 0.0), (10, 4.5), (10, 6.5)]") in out, out
    _assert_clean(cluster)


def test_hpe_native_synchronisation_objects_and_queue_across_nodes(cluster):
    # dragon.native's Lock, Semaphore, Event, Barrier and joinable Queue,
    # made on node1, used from processes on all three nodes.
    script = _script(cluster, "native_sync.py", ON_NODE + """
        import os
        from dragon.native.barrier import Barrier
        from dragon.native.event import Event
        from dragon.native.lock import Lock
        from dragon.native.queue import Queue
        from dragon.native.semaphore import Semaphore
        from dragon.native.value import Value

        def work(lock, sem, ev, bar, q, total, n):
            me = int(os.environ["DRAGON_NODE_INDEX"])
            for _ in range(n):
                with lock:
                    total.value += 1
            sem.release()
            ev.wait(120)
            bar.wait(120)
            q.put(me)

        if __name__ == "__main__":
            lock, sem, ev, bar = Lock(), Semaphore(0), Event(), Barrier(3)
            q, total = Queue(joinable=True), Value("i", 0)
            ps = [on(n, work, lock, sem, ev, bar, q, total, 40) for n in (0, 1, 2)]
            for _ in ps:
                sem.acquire(timeout=120)
            ev.set()
            nodes = sorted(q.get(timeout=120) for _ in ps)
            for _ in ps:
                q.task_done()
            q.join()
            for p in ps:
                p.join(120)
            print("native", total.value, nodes, [p.exitcode for p in ps])
        """)
    r = _run(cluster, script)
    _ok(r)
    assert "native 120 [0, 1, 2] [0, 0, 0]" in r.stdout, r.stdout
    _assert_clean(cluster)

def test_a_process_group_spread_over_nodes_by_policies(cluster):
    # HPE Dragon's ProcessGroup: templates placed by policy on node2 and
    # node3 report where they ran; a failing rank on node3 is the group's
    # error (exit codes in DragonUserCodeError), and a restarted group's
    # processes are killed across nodes by kill().
    script = _script(cluster, "group.py", """
        import os, socket, time
        import multiprocessing as mp
        from dragon.infrastructure.policy import Policy
        from dragon.native.process import ProcessTemplate
        from dragon.native.process_group import DragonUserCodeError, ProcessGroup

        def report(q):
            q.put(socket.gethostname())

        def fail():
            raise SystemExit(7)

        def forever(q):
            q.put(socket.gethostname())
            time.sleep(600)

        if __name__ == "__main__":
            q = mp.Queue()
            pg = ProcessGroup()
            pg.add_process(2, ProcessTemplate(target=report, args=(q,), policy=Policy(host_name="node2")))
            pg.add_process(2, ProcessTemplate(target=report, args=(q,), policy=Policy(host_name="node3")))
            pg.init()
            pg.start()
            pg.join(120)
            print("hosts", sorted(q.get(timeout=60) for _ in range(4)))
            pg.close()

            pg = ProcessGroup()
            pg.add_process(1, ProcessTemplate(target=fail, policy=Policy(host_name="node3")))
            pg.init()
            pg.start()
            try:
                pg.join(120)
            except DragonUserCodeError as e:
                print("error", e.exit_codes if hasattr(e, "exit_codes") else e)
            pg.close()

            pg = ProcessGroup(restart=True)
            pg.add_process(2, ProcessTemplate(target=forever, args=(q,), policy=Policy(host_name="node2")))
            pg.init()
            pg.start()
            print("running on", sorted(q.get(timeout=60) for _ in range(2)))
            pg.kill()
            pg.join(120)
            print("killed", sorted(code for _, code in pg.inactive_puids), "running", len(pg.puids))
            pg.close()
            print("done")
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "hosts ['node2', 'node2', 'node3', 'node3']" in out, out
    assert re.search(r"^error .*7", out, re.M), out
    assert "running on ['node2', 'node2']" in out and "killed [-9, -9] running 0" in out and "done" in out, out
    _assert_clean(cluster)

def test_ddict_across_nodes(cluster):
    script = _script(cluster, "ddict.py", ON_NODE + """
        import multiprocessing as mp, os
        from dragon.data.ddict import DDict, DDictFullError
        from dragon.infrastructure.policy import Policy

        def writer(d, node, q):
            for i in range(50):
                d[(node, i)] = {"node": node, "i": i, "blob": b"x" * i}
            d.fetch_add("hits", 1)
            big = os.urandom(3 << 20)
            d[("big", node)] = big
            out = [d[("big", node)] == big, d.get(("missing", node), "absent")]
            try:
                d[("missing", node)]
            except KeyError:
                out.append("KeyError")
            out.append(d.pop((node, 0))["i"])
            out.append((node, 0) in d)
            out.append(len(d.stats))
            q.put((node, out))

        def local(d, q):
            q.put((int(os.environ["DRAGON_NODE_INDEX"]), sorted(map(repr, d.local_keys()))))

        def filler(d, q):
            try:
                for i in range(10000):
                    d[i] = b"y" * 4096
                q.put("never full")
            except DDictFullError as e:
                q.put(("full", i > 0, "full" in str(e)))

        if __name__ == "__main__":
            # One manager on each of the three nodes.
            d = DDict(1, 3, 96 << 20)
            q = mp.Queue()
            ps = [on(n, writer, d, n, q) for n in (1, 2)]
            got = dict(q.get(timeout=120) for _ in ps)
            for p in ps:
                p.join(60)
            print("writers", got[1], got[2], [p.exitcode for p in ps])
            print("here", len(d), d[(1, 7)], d[(2, 49)]["i"], d["hits"], len(d.keys()))
            print("stats", sum(s.num_keys for s in d.stats), len(d.stats))
            print("managers", sorted(d.which_manager((1, i)) for i in range(1, 50))[::48])

            # Each node's local keys: a partition of the keys.
            ps = [on(n, local, d, q) for n in (0, 1, 2)]
            parts = dict(q.get(timeout=120) for _ in ps)
            for p in ps:
                p.join(60)
            union = sorted(k for part in parts.values() for k in part)
            print("partition", union == sorted(map(repr, d.keys())), all(parts.values()),
                  sorted(map(repr, d.local_keys())) == parts[0])

            d.freeze()
            p = on(2, writer, d, 2, q)
            p.join(60)
            print("frozen writer exit", p.exitcode, d.is_frozen)
            d.unfreeze()
            d.clear()
            print("cleared", len(d))

            small = DDict(1, 1, 256 << 10)
            p = on(2, filler, small, q)
            print("small", q.get(timeout=120))
            p.join(60)
            small.destroy()
            d.destroy()
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "writers [True, 'absent', 'KeyError', 0, False, 3] [True, 'absent', 'KeyError', 0, False, 3] [0, 0]" \
        in out, out
    # 2 x 50 entries, minus the two popped, plus the two big ones and the counter.
    assert "here 101 {'node': 1, 'i': 7, 'blob': b'xxxxxxx'} 49 2 101" in out, out
    assert "stats 101 3" in out, out
    assert "managers [0, 2]" in out, out
    assert "partition True True True" in out, out
    assert "frozen writer exit 1 True" in out and "DDictFrozenError" in r.stderr, out
    assert "cleared 0" in out, out
    assert "small ('full', True, True)" in out, out
    _assert_clean(cluster)


def test_ddict_managers_placed_by_policy(cluster):
    """HPE Dragon's policy argument across nodes: a list of policies puts
    managers_per_policy managers on each named host, in the list's order
    (none on the creator's node here); one Policy puts them all on its
    host; a host the run does not have is a PolicyError."""
    script = _script(cluster, "ddict_policy.py", ON_NODE + """
        import socket
        from dragon.data.ddict import DDict
        from dragon.infrastructure.policy import PolicyError

        def local(d, q):
            q.put((socket.gethostname(), sorted(d.local_keys())))

        if __name__ == "__main__":
            d = DDict(None, None, 24 << 20, policy=[Policy(host_name="node3"), Policy(host_name="node2")],
                      managers_per_policy=2)
            nodes = [n.h_uid for n in d.manager_nodes]
            print("placed", d.managers, nodes, [s.hostname for s in d.stats])
            for i in range(60):
                d[i] = i * i
            print("here", sum(d[i] for i in range(60)), len(d), d.local_keys())
            q = mp.Queue()
            ps = [on(n, local, d, q) for n in (1, 2)]
            parts = dict(q.get(timeout=120) for _ in ps)
            for p in ps:
                p.join(60)
            by_shard = {h: sorted(i for i in range(60) if nodes[d.which_manager(i)] == n)
                        for h, n in (("node2", 1), ("node3", 2))}
            print("parts", parts == by_shard, sorted(parts["node2"] + parts["node3"]) == list(range(60)))

            def top(view, out, k):
                for key in sorted(view.keys(), reverse=True)[:k]:  # its manager's keys
                    out.put((key, socket.gethostname()))

            hosts = [s.hostname for s in d.stats]
            with d.filter(top, (3,), lambda a, b: a[0] > b[0]) as found:
                res = list(found)
            print("filter", len(res), [k for k, _ in res[:5]],
                  all(h == hosts[d.which_manager(k)] for k, h in res))
            d.destroy()
            one = DDict(2, 1, 8 << 20, policy=Policy(host_name="node2"))
            one["k"] = "v"
            print("one", [n.h_uid for n in one.manager_nodes], one["k"])
            one.destroy()
            loc = DDict(1, 2, 8 << 20, policy=Policy(placement=Policy.Placement.LOCAL))
            print("local", [n.h_uid for n in loc.manager_nodes])
            loc.destroy()
            try:
                DDict(1, 1, 1 << 20, policy=Policy(host_name="node9"))
            except PolicyError as e:
                print("refused", "node9" in str(e))
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "placed 4 [2, 2, 1, 1] ['node3', 'node3', 'node2', 'node2']" in out, out
    assert "here %d 60 []" % sum(i * i for i in range(60)) in out, out
    assert "parts True True" in out, out
    # Each manager's code ran on its node, on its shard: 3 keys from each of 4.
    assert "filter 12 [59, 58, 57, 56, 55] True" in out, out
    assert "one [1, 1] v" in out, out
    assert "local [0, 0]" in out, out  # without the policy: [0, 1]
    assert "refused True" in out, out
    _assert_clean(cluster)


def test_ddict_shards_of_a_lost_node_fail_clearly_and_the_rest_work(cluster):
    marker = os.path.join(cluster.shared, "ddict-lost")
    script = _script(cluster, "ddictlost.py", """
        import sys, time
        from dragon.data.ddict import DDict

        if __name__ == "__main__":
            d = DDict(1, 3, 48 << 20)
            for i in range(90):
                d[i] = i * i
            on3 = [i for i in range(90) if d.which_manager(i) == 2]
            rest = [i for i in range(90) if d.which_manager(i) != 2]
            open(sys.argv[1], "w").close()
            deadline = time.monotonic() + 120
            while True:
                try:
                    d[on3[0]]
                except ConnectionError as e:
                    print("lost:", type(e).__name__, "node 2" in str(e), flush=True)
                    break
                assert time.monotonic() < deadline, "the loss was never seen"
                time.sleep(0.05)
            print("rest", all(d[i] == i * i for i in rest), len(rest) > 0, flush=True)
            d[rest[0]] = "still writable"
            print("write", d[rest[0]], flush=True)
            d.destroy()
            print("destroyed", flush=True)
        """)
    rc, out, err = _strike_when_ready(cluster, script, marker, lambda: _kill_service(cluster, 2))
    assert rc == 0, (out, err)
    assert "lost: ConnectionError True" in out, (out, err)
    assert "rest True True" in out and "write still writable" in out and "destroyed" in out, (out, err)
    _assert_clean(cluster)


def test_a_durable_ddict_of_a_lost_node_comes_back_on_the_others(cluster):
    """A durable DDict in a directory every node sees: node3 is killed
    whole (its manager with it), the DDict is destroyed and restored with
    policies that put node3's shard on node2: every acknowledged write
    comes back, node3's shard's too."""
    marker = os.path.join(cluster.shared, "ddict-recover")
    store = os.path.join(cluster.shared, "recover-store")
    shutil.rmtree(store, ignore_errors=True)
    script = _script(cluster, "ddictrecover.py", """
        import os, sys, time
        from dragon.data.ddict import DDict
        from dragon.infrastructure.policy import Policy

        if __name__ == "__main__":
            marker = sys.argv[1]
            path = os.path.join(os.path.dirname(marker), "recover-store")
            d = DDict(1, 3, 48 << 20, name="rec", persist_path=path)
            d.update({i: i * i for i in range(90)})
            on3 = [i for i in range(90) if d.which_manager(i) == 2]
            open(marker, "w").close()
            deadline = time.monotonic() + 120
            while True:
                try:
                    d[on3[0]]
                except ConnectionError:
                    break
                assert time.monotonic() < deadline, "the loss was never seen"
                time.sleep(0.05)
            d.destroy()
            survivors = [Policy(host_name="node1"), Policy(host_name="node2"), Policy(host_name="node2")]
            back = DDict(None, None, 48 << 20, name="rec", persist_path=path, restore=True, policy=survivors)
            print("back", [n.h_uid for n in back.manager_nodes], len(back), len(on3) > 0,
                  all(back[i] == i * i for i in range(90)), flush=True)
            back.destroy()
        """)
    try:
        rc, out, err = _strike_when_ready(cluster, script, marker, lambda: cluster.kill_node(2),
                                          env={"DRAGON_PEER_TIMEOUT": "3"})
    finally:
        cluster.restart_node(2)
    assert rc == 0, (out, err)
    assert "back [0, 1, 1] 90 True True" in out, (out, err)
    _assert_clean(cluster)


def test_durable_ddict_on_three_nodes_comes_back(cluster):
    store = os.path.join(cluster.shared, "ddict-durable")
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(store)
    script = _script(cluster, "ddictdurable.py", """
        import multiprocessing as mp, sys
        from dragon.data.ddict import DDict
        from dragon.infrastructure.policy import Policy

        def fill(d, node):
            for i in range(40):
                d[(node, i)] = i * node
            d.fetch_add("count", 40)

        if __name__ == "__main__":
            path, mode = sys.argv[1], sys.argv[2]
            if mode == "write":
                d = DDict(1, 3, 48 << 20, name="durable", persist_path=path)
                ps = []
                for node in (1, 2):
                    with Policy(host_name="node%d" % (node + 1)):
                        p = mp.Process(target=fill, args=(d, node))
                        p.start()
                    ps.append(p)
                for p in ps:
                    p.join(60)
                print("wrote", len(d), [p.exitcode for p in ps], sorted(s.num_keys > 0 for s in d.stats))
            else:
                d = DDict.open(path, name="durable", managers_per_node=1, num_nodes=3, total_mem=48 << 20)
                ok = all(d[(n, i)] == i * n for n in (1, 2) for i in range(40))
                print("restored", len(d), ok, d["count"])
                d.destroy()
        """)
    r = _run(cluster, script, store, "write")
    _ok(r)
    assert "wrote 81 [0, 0] [True, True, True]" in r.stdout, r.stdout
    # Each manager logged to the store from its own node.
    assert sorted(f for f in os.listdir(store) if f.endswith(".wal")) == \
        ["durable.0.wal", "durable.1.wal", "durable.2.wal"], os.listdir(store)
    r = _run(cluster, script, store, "read")
    _ok(r)
    assert "restored 81 True 80" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_durable_ddict_on_node_local_disks_comes_back_from_any_node(cluster):
    # /tmp is each node's own: a shard's files are only on the node whose
    # manager logged them, so a restore must put every shard on that node
    # whichever node restores (or made) the DDict, and must refuse to start
    # a shard empty when its files are not there but its peers' are.
    script = _script(cluster, "ddictnodelocal.py", ON_NODE + """
        import os, shutil, socket, warnings
        from dragon.data.ddict import DDict, DDictPersistCorruptError, DDictPersistError

        PATH = "/tmp/ddict-nodelocal"

        def make(q, name, mpn, nn, n):
            d = DDict(mpn, nn, 48 << 20, name=name, persist_path=PATH)
            for i in range(n):
                d[i] = i * i
            q.put(("made", name, socket.gethostname(), len(d)))
            d.destroy()

        def restore(q, name, mpn, nn, n, extra=0):
            try:
                d = DDict(mpn, nn, 48 << 20, name=name, persist_path=PATH, restore=True)
            except DDictPersistError as e:
                q.put(("refused", name, socket.gethostname(), e.shards, str(e)))
                return
            q.put(("restored", name, socket.gethostname(), len(d), all(d.get(i) == i * i for i in range(n))))
            for i in range(n, n + extra):
                d[i] = i * i
            d.destroy()

        def files(q, prefix):
            # The data files (not the shards' lock files, which a manager holds while it serves).
            names = sorted(f for f in os.listdir(PATH) if f.startswith(prefix + ".") and not f.endswith(".lock")) \\
                if os.path.isdir(PATH) else []
            q.put((socket.gethostname(), [(f, os.stat(os.path.join(PATH, f)).st_mtime_ns) for f in names]))

        def remove(q, prefix):
            for f in os.listdir(PATH):
                if f.startswith(prefix + "."):
                    os.unlink(os.path.join(PATH, f))
            q.put("removed")

        def clear(q):
            shutil.rmtree(PATH, ignore_errors=True)
            q.put("cleared")

        def damage(q, prefix):
            # Three bytes in the middle of shard 1's log, on its node.
            path = os.path.join(PATH, prefix + ".1.wal")
            with open(path, "r+b") as f:
                data = f.read()
                f.seek(len(data) // 2)
                f.write(bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 3]))
            q.put("damaged")

        def restore_damaged(q, name, n, repair):
            try:
                with warnings.catch_warnings(record=True):
                    warnings.simplefilter("always")
                    d = DDict(1, 3, 48 << 20, name=name, persist_path=PATH, restore=True, repair=repair)
            except DDictPersistCorruptError as e:
                q.put(("corrupt", os.path.basename(e.path)))
                return
            report = [(os.path.basename(r["path"]), bool(r["skipped"])) for r in d.repair_report]
            q.put(("repaired", len(d) >= n - 3, all(d[k] == k * k for k in d.keys()), sorted(report)))
            d.destroy()

        def at(node, f, *args):
            q = mp.Queue()
            p = on(node, f, q, *args)
            p.join(120)
            assert p.exitcode == 0, (f.__name__, node, p.exitcode)
            return q.get(timeout=30)

        def everywhere(prefix):
            return [[f for f, _ in at(n, files, prefix)[1]] for n in range(3)]

        if __name__ == "__main__":
            for n in range(3):
                at(n, clear)
            print(at(0, make, "nodelocal", 1, 3, 30))
            print("files", everywhere("nodelocal"))
            print(at(1, restore, "nodelocal", 1, 3, 30, 10))
            print(at(2, restore, "nodelocal", 1, 3, 40))
            # Made on node3, two managers on each of two nodes: still the
            # run's first two nodes.
            print(at(2, make, "spread", 2, 2, 50))
            print("files", everywhere("spread"))
            print(at(1, restore, "spread", 2, 2, 50))
            # Restored on one node (2 shards, not 4): its node has the files
            # of shards 0 and 1 only, and the record of 4 there refuses it.
            kind, name, host, shards, msg = at(1, restore, "spread", 2, 1, 50)
            print(kind, name, "written with 4" in msg)
            # Shard 1's files lost: the restore is refused, nothing changed.
            before = at(0, files, "nodelocal")
            print(at(1, remove, "nodelocal"))
            kind, name, host, shards, msg = at(0, restore, "nodelocal", 1, 3, 40)
            print(kind, name, host, shards)
            print("names", "shard 1 " in msg, "node 1 (node2)" in msg, PATH in msg)
            print("unchanged", at(0, files, "nodelocal") == before, everywhere("nodelocal"))
            # No shard has files: a restore starts empty.
            print(at(2, restore, "fresh", 1, 3, 0))
            print("files", everywhere("fresh"))
            # A log damaged on node2's disk: refused, then repaired there by
            # its own manager when asked, whichever node restores.
            print(at(0, make, "dmg", 1, 3, 300))
            print(at(1, damage, "dmg"))
            print(at(2, restore_damaged, "dmg", 300, False))
            print(at(2, restore_damaged, "dmg", 300, True))
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "('made', 'nodelocal', 'node1', 30)" in out, out
    assert "files [['nodelocal.0.wal', 'nodelocal.shards'], ['nodelocal.1.wal'], ['nodelocal.2.wal']]" in out, out
    assert "('restored', 'nodelocal', 'node2', 30, True)" in out, out
    assert "('restored', 'nodelocal', 'node3', 40, True)" in out, out
    assert "('made', 'spread', 'node3', 50)" in out, out
    assert "files [['spread.0.wal', 'spread.1.wal', 'spread.shards'], ['spread.2.wal', 'spread.3.wal'], []]" in out, out
    assert "('restored', 'spread', 'node2', 50, True)" in out, out
    assert "refused spread True" in out, out
    assert "refused nodelocal node1 [1]" in out, out
    assert "names True True True" in out, out
    assert "unchanged True [['nodelocal.0.wal', 'nodelocal.shards'], [], ['nodelocal.2.wal']]" in out, out
    assert "('restored', 'fresh', 'node3', 0, True)" in out, out
    assert "files [['fresh.0.wal', 'fresh.shards'], ['fresh.1.wal'], ['fresh.2.wal']]" in out, out
    assert "('corrupt', 'dmg.1.wal')" in out, out
    assert "('repaired', True, True, [('dmg.0.wal', False), ('dmg.1.wal', True), ('dmg.2.wal', False)])" in out, out
    _assert_clean(cluster)


def test_a_destroyed_ddict_frees_its_memory_on_every_node(cluster):
    # Used from a node without a shard (so that the shards' nodes' services
    # map them for it), then destroyed: every node's /dev/shm gets its
    # memory back, DDict after DDict (it was held until the run ended).
    script = _script(cluster, "ddictfree.py", ON_NODE + """
        import os, time
        from dragon.data.ddict import DDict

        def used(q):
            st = os.statvfs("/dev/shm")
            q.put((st.f_blocks - st.f_bfree) * st.f_frsize >> 20)

        def fill(d, q):
            v = os.urandom(4 << 20)
            for i in range(20):
                d[i] = v
            q.put("filled")

        def at(node, f, *args):
            q = mp.Queue()
            p = on(node, f, *args, q)
            got = q.get(timeout=120)
            p.join(120)
            return got

        def shm(nodes):
            return [at(n, used) for n in nodes]

        if __name__ == "__main__":
            before = shm((0, 1))
            for _ in range(3):
                d = DDict(1, 2, 256 << 20)
                at(2, fill, d)
                d.destroy()
            deadline = time.monotonic() + 120
            while True:
                now = shm((0, 1))
                if all(b + 48 > n for b, n in zip(before, now)) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            print("MiB before", before, "after", now, "back", all(b + 48 > n for b, n in zip(before, now)))
        """)
    r = _run(cluster, script)
    _ok(r)
    assert re.search(r"back True", r.stdout), r.stdout
    _assert_clean(cluster)

def test_ddict_filled_by_pool_workers_on_every_node(cluster):
    script = _script(cluster, "ddictpool.py", """
        import multiprocessing as mp, os, socket
        from dragon.data.ddict import DDict
        from dragon.infrastructure.policy import Policy

        d = None

        def init(dd):
            global d
            d = dd

        def fill(i):
            d[i] = (i, socket.gethostname())
            return d.bget("config")

        def local(dd, q):
            q.put((socket.gethostname(), sorted(k for k in dd.local_keys() if k != "config")))

        if __name__ == "__main__":
            dd = DDict(2, 3, 96 << 20)
            dd.bput("config", {"alpha": 1})
            with mp.Pool(6, initializer=init, initargs=(dd,)) as pool:
                got = pool.map(fill, range(300), chunksize=5)
                hosts = {h for i in range(300) for h in [dd[i][1]]}
                print("bget", all(g == {"alpha": 1} for g in got))
                print("keys", all(dd[i][0] == i for i in range(300)), len(dd), "hosts", len(hosts))
            # Each node's local keys (a process on each node says).
            q, ps = mp.Queue(), []
            for n in (1, 2, 3):
                with Policy(host_name="node%d" % n):
                    ps.append(mp.Process(target=local, args=(dd, q)))
                    ps[-1].start()
            parts = dict(q.get(timeout=120) for _ in ps)
            for p in ps:
                p.join(60)
            union = sorted(k for p in parts.values() for k in p if k != "config")
            print("partition", union == list(range(300)), len(parts))

            dd.checkpoint()
            dd[0] = "new"
            dd.rollback()
            print("checkpoint", dd[0][0], dd.checkpoint_id)
            dd.destroy()
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "bget True" in out, out
    # 300 keys and the bput key (stored once per manager, counted once per shard).
    # (Which nodes' workers took tasks depends on how fast each started.)
    assert re.search(r"keys True \d+ hosts [123]\b", out), out
    assert "partition True 3" in out, out
    assert "checkpoint 0 0" in out, out
    _assert_clean(cluster)


def test_a_message_beyond_256_mib_crosses_nodes(cluster):
    script = _script(cluster, "huge.py", """
        import hashlib, multiprocessing as mp
        from dragon.infrastructure.policy import Policy

        def echo(q_in, q_out):
            data = q_in.get(timeout=300)
            q_out.put((len(data), hashlib.sha256(data).hexdigest()))
            q_out.put(data)

        if __name__ == "__main__":
            q_in, q_out = mp.Queue(), mp.Queue()
            with Policy(host_name="node2"):
                p = mp.Process(target=echo, args=(q_in, q_out))
                p.start()
            big = bytes(range(256)) * ((260 << 20) // 256)     # 260 MiB
            q_in.put(big)
            n, digest = q_out.get(timeout=300)
            back = q_out.get(timeout=300)
            print("there", n == len(big), digest == hashlib.sha256(big).hexdigest())
            print("back", back == big)
            p.join(60)
            print("exit %s" % p.exitcode)
        """)
    r = _run(cluster, script)
    _ok(r)
    assert "there True True" in r.stdout and "back True" in r.stdout and "exit 0" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_dragon_top_shows_every_node_and_a_lost_one(cluster):
    marker = os.path.join(cluster.shared, "top-ready")
    go = os.path.join(cluster.shared, "top-go")
    for f in (marker, go):
        if os.path.exists(f):
            os.unlink(f)
    script = _script(cluster, "topped.py", """
        import multiprocessing as mp, os, sys, time
        from dragon.infrastructure.policy import Policy

        def sleeper(go):
            while not os.path.exists(go):
                time.sleep(0.05)

        if __name__ == "__main__":
            marker, go = sys.argv[1], sys.argv[2]
            ps = []
            for n in (2, 3):
                with Policy(host_name="node%d" % n):
                    ps.append(mp.Process(target=sleeper, args=(go,), name="sleeper-on-node%d" % n))
                    ps[-1].start()
            with open(marker + ".tmp", "w") as f:
                f.write(os.environ["DRAGON_RUN_ID"])
            os.rename(marker + ".tmp", marker)
            sleeper(go)
            for p in ps:
                p.join(60)
        """)
    argv = [DRAGON, "--hostlist", cluster.hostlist, script, marker, go]
    proc = cluster.popen(0, argv, cwd=cluster.shared, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(DRAGON_PEER_TIMEOUT="2"))
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        run = open(marker).read().strip()
        top = cluster.run(0, [DRAGON, "top", run, "--once"], timeout=60, env=_env())
        assert top.returncode == 0, (top.stdout, top.stderr)
        screen = top.stdout
        assert "on 3 nodes" in screen, screen
        for host in ("node2", "node3"):
            assert re.search(r"^%s\s+\d+.*sleeper-on-%s" % (host, host), screen, re.M), screen
            assert re.search(r"^%s\s+\d+.*node service" % host, screen, re.M), screen
        # node3's service dies: top says the node is lost, and why.
        _kill_service(cluster, 2)
        deadline = time.monotonic() + 120
        while True:
            top = cluster.run(0, [DRAGON, "top", run, "--once"], timeout=60, env=_env())
            if "node3 LOST" in top.stdout:
                break
            assert time.monotonic() < deadline, top.stdout
            time.sleep(0.2)
        assert "cannot be asked" in top.stdout and "sleeper-on-node2" in top.stdout, top.stdout
        open(go, "w").close()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (out, err)
    _assert_clean(cluster)


DIRECT = ON_NODE + """
        import os

        def tcp_sockets():
            # This process's sockets, and the TCP connections among them.
            mine = set()
            for fd in os.listdir("/proc/self/fd"):
                try:
                    link = os.readlink("/proc/self/fd/" + fd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    mine.add(link[8:-1])
            n = 0
            for line in open("/proc/self/net/tcp").readlines()[1:]:
                f = line.split()
                n += f[9] in mine and f[3] == "01"  # ESTABLISHED
            return n

        def echo(a, b, n):
            for _ in range(n):
                b.put(a.get())
            b.put(("tcp", tcp_sockets()))

        if __name__ == "__main__":
            a, b = mp.Queue(), mp.Queue()
            p = on(1, echo, a, b, 300)
            items = [i if i % 3 else os.urandom(300000 + i) for i in range(300)]
            for x in items:
                a.put(x)
            got = [b.get(timeout=120) for _ in items]
            print("in order", got == items)
            print("tcp", b.get(timeout=120)[1])
            p.join(60)
            print("exit", p.exitcode)
"""


@pytest.mark.parametrize("direct", ["1", "0"])
def test_a_process_reaches_another_nodes_channels_directly_unless_told_not_to(cluster, direct):
    # A process on node2 receives from and sends to queues of node1: on a
    # TCP connection of its own to node1's service, or (DRAGON_DIRECT=0)
    # through its node's service only. Small and large items, in order.
    script = _script(cluster, "direct.py", DIRECT)
    r = _run(cluster, script, env={"DRAGON_DIRECT": direct})
    _ok(r)
    assert "in order True" in r.stdout, r.stdout
    tcp = int(re.search(r"^tcp (\d+)$", r.stdout, re.M).group(1))
    assert (tcp == 1) if direct == "1" else (tcp == 0), r.stdout
    assert "exit 0" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_large_sends_and_ddict_values_go_through_the_block_store_not_the_connection(cluster):
    # A process's bytes written (wchar counts every write, to sockets too):
    # ten 1 MiB queue puts and ten 1 MiB DDict values for another node's
    # shard leave as block messages; the node service sends the blocks'
    # bytes on. Everything arrives whole.
    script = _script(cluster, "blockpath.py", ON_NODE + """
        import os
        from dragon.data.ddict import DDict

        def written():
            for line in open("/proc/self/io"):
                if line.startswith("wchar"):
                    return int(line.split()[1])

        def sender(d, q, out):
            v = os.urandom(1 << 20)
            keys = [k for k in range(400) if d.which_manager(k) == 0][:10]
            d[keys[0]] = v
            q.put(v)
            out.get(timeout=120)
            w0 = written()
            for k in keys:
                d[k] = v
            for _ in range(10):
                q.put(v)
            w = written() - w0
            out.put((len(keys), w, all(d[k] == v for k in keys), v))

        if __name__ == "__main__":
            d = DDict(1, 2, 64 << 20)
            q, out = mp.Queue(), mp.Queue()
            p = on(1, sender, d, q, out)
            first = q.get(timeout=120)
            out.put("go")
            got = [q.get(timeout=120) for _ in range(10)]
            n, w, same, v = out.get(timeout=120)
            print("keys", n, "whole", same, all(g == v for g in got), first == v)
            print("written under 1 MiB", w < (1 << 20), w)
            p.join(60)
            d.destroy()
            print("exit", p.exitcode)
        """)
    # Through this node's service (DRAGON_DIRECT=0): with a direct
    # connection to the channel's node the process sends the bytes itself.
    r = _run(cluster, script, env={"DRAGON_DIRECT": "0"})
    _ok(r)
    assert "keys 10 whole True True True" in r.stdout, r.stdout
    assert "written under 1 MiB True" in r.stdout, r.stdout
    assert "exit 0" in r.stdout, r.stdout
    _assert_clean(cluster)


def test_the_off_node_transport_is_found_through_dragon_transport_path(cluster):
    # The tcp transport is resolved as any plugin is: a folder of
    # DRAGON_TRANSPORT_PATH first. A file there that is not a loadable
    # plugin is a clear error naming it, on the first use of another
    # node's channel (never another plugin silently); an empty folder falls
    # through to the one the package ships.
    bogus = os.path.join(cluster.shared, "bogus-transports")
    empty = os.path.join(cluster.shared, "no-transports")
    os.makedirs(bogus, exist_ok=True)
    os.makedirs(empty, exist_ok=True)
    with open(os.path.join(bogus, "libdragon_transport_tcp.so"), "wb") as f:
        f.write(b"not a shared library")
    script = _script(cluster, "transport_path.py", """
        import multiprocessing as mp
        from dragon.infrastructure.policy import Policy

        def put(q):
            q.put("from node2")

        if __name__ == "__main__":
            q = mp.Queue()
            with Policy(host_name="node2"):
                p = mp.Process(target=put, args=(q,))
                p.start()
            p.join(120)
            print("exit", p.exitcode)
            if p.exitcode == 0:
                print("got", q.get(timeout=60))
        """)
    r = _run(cluster, script, env={"DRAGON_TRANSPORT_PATH": bogus})
    assert "exit 1" in r.stdout, r.stdout + r.stderr
    assert "off-node transport" in r.stderr and os.path.join(bogus, "libdragon_transport_tcp.so") in r.stderr, r.stderr
    r = _run(cluster, script, env={"DRAGON_TRANSPORT_PATH": empty})
    _ok(r)
    assert "exit 0" in r.stdout and "got from node2" in r.stdout, r.stdout
    _assert_clean(cluster)
