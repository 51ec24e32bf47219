"""Multi-node behaviours that CPython's multiprocessing suite runs into
when it runs across the nodes of the test bed (``scripts/oracle
--cluster``): each test here pins one of them down on three real nodes.
The cluster and the helpers are those of ``_testbed.py``.
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


def test_node_bound_arguments_keep_a_freely_placed_process_here(cluster):
    """Round-robin placement is a default, not a promise: a process whose
    arguments exist only on this node (a RawValue, a SharedMemory block,
    the standard library's shared heap behind BufferWrapper) starts on this
    node and uses them; the next processes go on round-robin; a process
    placed on a named node with such a descriptor fails at start() with
    NotLocalError."""
    script = _script(cluster, "node_bound.py", """
        import multiprocessing as mp, socket
        from multiprocessing import heap, shared_memory
        from dragon.errors import NotLocalError
        from dragon.infrastructure.policy import Policy

        def raw(r, lock, q):
            with lock:
                r.value += 41
            q.put(("raw", socket.gethostname()))

        def arena(w, i, q):
            w.create_memoryview().cast("i")[i] = 10 + i
            q.put(("arena", socket.gethostname()))

        def shm(block, i, q):
            block.buf[i] = 20 + i
            block.close()
            q.put(("shm", socket.gethostname()))

        def plain(q):
            q.put(("plain", socket.gethostname()))

        if __name__ == "__main__":
            q = mp.Queue()
            r, lock = mp.RawValue("i", 1), mp.Lock()
            w = heap.BufferWrapper(3 * 4)
            ps = [mp.Process(target=raw, args=(r, lock, q)) for _ in range(3)]
            ps += [mp.Process(target=arena, args=(w, i, q)) for i in range(3)]
            block = shared_memory.SharedMemory(create=True, size=3)
            ps += [mp.Process(target=shm, args=(block, i, q)) for i in range(3)]
            ps += [mp.Process(target=plain, args=(q,)) for _ in range(3)]
            for p in ps:
                p.start()
            got = [q.get(timeout=120) for _ in ps]
            for p in ps:
                p.join(120)
            for tag in ("raw", "arena", "shm", "plain"):
                print(tag, sorted(h for t, h in got if t == tag))
            print("codes", [p.exitcode for p in ps])
            print("value", r.value, "arena", list(w.create_memoryview().cast("i")), "shm", list(block.buf))
            block.close()
            block.unlink()
            with Policy(host_name="node2"):
                p = mp.Process(target=arena, args=(w, 0, q))
                try:
                    p.start()
                    print("named: started", p.join(60), p.exitcode)
                except NotLocalError as e:
                    print("named: NotLocalError", e)
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "raw ['node1', 'node1', 'node1']" in out, out
    assert "arena ['node1', 'node1', 'node1']" in out, out
    assert "plain ['node1', 'node2', 'node3']" in out, out
    assert "shm ['node1', 'node1', 'node1']" in out, out
    assert "codes [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" in out, out
    assert "value 124 arena [10, 11, 12] shm [20, 21, 22]" in out, out
    assert "named: NotLocalError this object holds a file descriptor" in out, out
    assert "(node 1)" in out, out
    _assert_clean(cluster)


def test_bytes_written_to_a_pipe_socket_across_nodes_end_the_connection(cluster):
    """A Pipe end's fileno() is its lifetime socket; across nodes it carries
    no bytes (nor descriptors: reduction.send_handle). Writing to it, from
    either side, ends the connection on both nodes with end of file and a
    note on stderr, so that neither reader waits forever for what cannot
    come, even while the parent still holds the child's end."""
    script = _script(cluster, "pipe_socket.py", ON_NODE + """
        import multiprocessing as mp, os
        from multiprocessing import reduction

        def receive_fd(conn):
            try:
                fd = reduction.recv_handle(conn)
                print("child: got", fd)
            except (EOFError, OSError, RuntimeError) as e:
                print("child: recv_handle", type(e).__name__, flush=True)

        def write_byte(conn):
            os.write(conn.fileno(), b"\\0")
            conn.recv_bytes()  # until the connection ends

        if __name__ == "__main__":
            conn, child_conn = mp.Pipe()
            p = on(1, receive_fd, child_conn)
            with open("fd.txt", "wb") as f:
                reduction.send_handle(conn, f.fileno(), p.pid)
            p.join(120)
            print("fd sent: child exit", p.exitcode)
            try:
                conn.recv()
            except EOFError:
                print("fd sent: parent EOFError")

            conn, child_conn = mp.Pipe()
            p = on(1, write_byte, child_conn)
            try:
                reduction.recv_handle(conn)
            except (EOFError, RuntimeError) as e:
                print("byte written: parent recv_handle", type(e).__name__)
            p.join(120)
            print("byte written: child exit", p.exitcode)
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "child: recv_handle EOFError" in out, out
    assert "fd sent: child exit 0" in out, out
    assert "fd sent: parent EOFError" in out, out
    assert "byte written: parent recv_handle EOFError" in out, out
    assert "byte written: child exit 1" in out, out  # its recv_bytes() saw the end: EOFError
    assert r.stderr.count("they cannot cross nodes; the connection is closed on both nodes") == 2, r.stderr
    _assert_clean(cluster)


def test_a_process_on_another_node_has_a_temp_dir_of_its_own(cluster):
    """multiprocessing's temporary folder (util.get_temp_dir(): where
    Listener() and Manager() put their sockets) is in a node's own /tmp: a
    process started on another node makes its own there instead of
    inheriting a path that does not exist on its node."""
    script = _script(cluster, "tempdir.py", """
        import multiprocessing as mp, os
        from multiprocessing import connection, util
        from dragon.infrastructure.policy import Policy

        def child(q):
            d = util.get_temp_dir()
            with connection.Listener() as l:
                q.put((d, os.path.isdir(d), os.path.dirname(l.address) == d))

        if __name__ == "__main__":
            mine = util.get_temp_dir()
            q = mp.Queue()
            for host in ("node2", "node1"):
                with Policy(host_name=host):
                    p = mp.Process(target=child, args=(q,))
                    p.start()
                d, exists, inside = q.get(timeout=120)
                p.join(120)
                print(host, "own" if d != mine else "parent's", exists, inside, p.exitcode)
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "node2 own True True 0" in out, out
    # On its own node a process shares its parent's folder, as always.
    assert "node1 parent's True True 0" in out, out
    _assert_clean(cluster)


def test_parent_process_on_another_node(cluster):
    """parent_process() of a process whose parent is on another node is
    alive while the parent runs and is seen ending when the parent is
    killed (a pid names a process of one node only: the sentinel is a
    tether from the parent)."""
    script = _script(cluster, "parent.py", """
        import multiprocessing as mp, time
        from multiprocessing.process import parent_process
        from dragon.infrastructure.policy import Policy

        def leaf(q):
            pp = parent_process()
            q.put(("leaf sees its parent", pp.is_alive()))
            pp.join(120)
            q.put(("after the kill", pp.is_alive()))

        def middle(q):
            q.put(("middle sees its parent", parent_process().is_alive()))
            with Policy(host_name="node3"):
                mp.Process(target=leaf, args=(q,)).start()
            time.sleep(600)

        if __name__ == "__main__":
            q = mp.Queue()
            with Policy(host_name="node2"):
                p = mp.Process(target=middle, args=(q,))
                p.start()
            print(*q.get(timeout=120))
            print(*q.get(timeout=120))
            p.terminate()
            p.join(120)
            print(*q.get(timeout=120))
        """)
    r = _run(cluster, script)
    _ok(r)
    out = r.stdout
    assert "middle sees its parent True" in out, out
    assert "leaf sees its parent True" in out, out
    assert "after the kill False" in out, out
    _assert_clean(cluster)


@pytest.mark.parametrize("direct", ["1", "0"])
def test_a_process_on_another_node_holds_as_many_descriptors(cluster, direct):
    """CPython's test_child_fd_inflation across nodes: a process started on
    another node holds as many descriptors as one started on its parent's
    node, with the same arguments (a Queue and an Event of the parent's
    node), when it starts: its parent's sentinel, which a process here
    holds as a pidfd, it asks its node's service for on first use, and it
    holds no connection to its node's service while it reaches the
    parent's node straight (DRAGON_DIRECT=1; with 0, that connection is
    its way there). Each child imports a module that makes a semaphore at
    import, as the suite's children import its test module: each holds a
    resource tracker."""
    _script(cluster, "fdchild.py", """
        import os, socket
        from multiprocessing import synchronize

        synchronize.Lock(ctx=None)

        def held():
            out = []
            for fd in sorted(os.listdir("/proc/self/fd"), key=int):
                try:
                    out.append("%s:%s" % (fd, os.readlink("/proc/self/fd/" + fd)))
                except OSError:
                    pass  # the listing's own, closed by now
            return out

        def child(evt, q):
            q.put((socket.gethostname(), held()))
            evt.wait()
        """)
    script = _script(cluster, "fdcount.py", ON_NODE + """
        if __name__ == "__main__":
            from fdchild import child
            evt, q = mp.Event(), mp.Queue()
            ps = [on(i, child, evt, q) for i in range(3)]
            got = sorted(q.get(timeout=120) for _ in ps)
            evt.set()
            for p in ps:
                p.join(120)
            for host, fds in got:
                print(host, len(fds), " ".join(fds))
            print("codes", [p.exitcode for p in ps])
        """)
    r = _run(cluster, script, env={"DRAGON_DIRECT": direct})
    _ok(r)
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(node\d) (\d+) ", r.stdout, re.M)}
    assert sorted(counts) == ["node1", "node2", "node3"], r.stdout
    assert counts["node2"] == counts["node1"] and counts["node3"] == counts["node1"], r.stdout
    assert "codes [0, 0, 0]" in r.stdout, r.stdout
    _assert_clean(cluster)
