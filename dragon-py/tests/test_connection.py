"""Pipe/Connection of the dragon context and the dragon
multiprocessing.connection.wait, across real processes."""
import array
import multiprocessing
import multiprocessing.connection
import os
import pickle
import time

import pytest

import dragon
from dragon import connection

import _queue_helpers as h


def test_pipe_api_and_types(ctx):
    a, b = ctx.Pipe()
    assert isinstance(a, connection.Connection)
    assert a.readable and a.writable and not a.closed
    assert isinstance(a.fileno(), int)
    for m in [b"", b"\x80x", "s", 1, {"d": [1, 2]}, b"y" * (3 << 20)]:
        a.send(m)
        assert b.recv() == m
    a.send_bytes(b"abcdefgh", 2, 3)
    assert b.recv_bytes() == b"cde"
    a.send_bytes(array.array("i", [1, 2, 3]))
    assert b.recv_bytes() == array.array("i", [1, 2, 3]).tobytes()
    for args in [(27,), (22, 5), (26, 1), (-1,), (4, -1)]:
        with pytest.raises(ValueError):
            a.send_bytes(b"x" * 26, *args)
    a.send(b"object")  # recv_bytes gives what the stdlib would: a pickle
    assert pickle.loads(b.recv_bytes()) == b"object"
    a.send_bytes(pickle.dumps([1, 2]))
    assert b.recv() == [1, 2]


def test_poll(ctx):
    a, b = ctx.Pipe()
    assert b.poll() is False and b.poll(-1) is False
    t0 = time.monotonic()
    assert b.poll(0.2) is False
    assert time.monotonic() - t0 >= 0.19
    a.send(1)
    assert b.poll(5) is True and b.poll() is True  # still there
    assert b.recv() == 1


def test_one_way_pipe(ctx):
    r, w = ctx.Pipe(duplex=False)
    assert r.readable and not r.writable and w.writable and not w.readable
    w.send(1)
    assert r.recv() == 1
    with pytest.raises(OSError):
        r.send(2)
    with pytest.raises(OSError):
        w.recv()
    with pytest.raises(OSError):
        w.poll()


def test_recv_bytes_maxlength_keeps_the_message(ctx):
    a, b = ctx.Pipe()
    a.send_bytes(b"x" * 100)
    with pytest.raises(ValueError):
        b.recv_bytes(-1)
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(10)
    assert b.recv_bytes(100) == b"x" * 100  # nothing lost


def test_recv_bytes_into(ctx):
    a, b = ctx.Pipe()
    buf = array.array("i", [0] * 10)
    a.send_bytes(array.array("i", [1, 2, 3, 4]))
    assert b.recv_bytes_into(buf, 3 * buf.itemsize) == 16
    assert list(buf) == [0, 0, 0, 1, 2, 3, 4, 0, 0, 0]
    a.send_bytes(b"y" * 50)
    small = bytearray(10)
    with pytest.raises(multiprocessing.BufferTooShort) as e:
        b.recv_bytes_into(small)
    assert e.value.args == (b"y" * 50,)


def test_closed_connection(ctx):
    a, b = ctx.Pipe()
    a.close()
    a.close()
    assert a.closed
    for call in (a.recv, a.fileno, lambda: a.send(1), a.poll):
        with pytest.raises(OSError):
            call()


def test_eof_after_peer_closes_and_data_is_drained(ctx):
    a, b = ctx.Pipe()
    b.send("last words")
    b.close()
    assert a.poll(5)
    assert a.recv() == "last words"
    with pytest.raises(EOFError):
        a.recv()
    assert a.poll() is True  # EOF is "something to read"


def test_eof_when_the_child_exits(ctx):
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=h.send_then_exit, args=(w, ["a", "b"]))
    p.start()
    w.close()  # the child's copy (still travelling, maybe) keeps the pipe open
    assert [r.recv(), r.recv()] == ["a", "b"]
    with pytest.raises(EOFError):
        r.recv()
    p.join(30)


def test_eof_when_the_child_is_killed(ctx):
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=h.send_then_sleep, args=(w,))
    p.start()
    w.close()
    assert r.recv() == "alive"
    p.kill()
    with pytest.raises(EOFError):  # a wait for EOF that never ends fails by the test's timeout
        r.recv()
    p.join(30)


def test_echo_child_with_parent_copy_closed_at_once(ctx):
    a, b = ctx.Pipe()
    p = ctx.Process(target=h.echo_conn, args=(b,))
    p.start()
    b.close()  # might complete before the child attaches
    for m in ["x", b"y" * 100_000, 3]:
        a.send(m)
        assert a.recv() == m
    a.send(None)
    p.join(30)
    with pytest.raises(EOFError):
        a.recv()


def test_connection_travels_through_a_queue(ctx):
    q = ctx.Queue()
    a, b = ctx.Pipe()
    p = ctx.Process(target=h.echo_conn_from_queue, args=(q,))
    p.start()
    q.put(b)
    b.close()
    a.send("ping")
    assert a.recv() == "ping"
    a.send(None)
    p.join(30)


def test_fd_passing_over_the_connection(ctx, tmp_path):
    from multiprocessing import reduction

    a, b = ctx.Pipe()
    path = tmp_path / "f"
    with open(path, "wb") as f:
        reduction.send_handle(a, f.fileno(), os.getpid())
        fd = reduction.recv_handle(b)
    with open(fd, "wb") as g:
        g.write(b"via fd")
    assert path.read_bytes() == b"via fd"


# ---------------------------------------------------------------------------
# wait
# ---------------------------------------------------------------------------

def test_wait_is_installed():
    import multiprocessing.pool as mp_pool

    assert multiprocessing.connection.wait is connection.wait
    assert mp_pool.wait is connection.wait


def test_wait_mixes_channels_and_descriptors(ctx):
    wait = multiprocessing.connection.wait
    a, b = ctx.Pipe()
    q = ctx.Queue()
    r_fd, w_fd = os.pipe()
    try:
        t0 = time.monotonic()
        assert wait([a, q._reader, r_fd], timeout=0.2) == []
        assert time.monotonic() - t0 >= 0.19
        # each kind wakes it, promptly
        for make_ready, expect in [(lambda: b.send(1), a), (lambda: q.put(2), q._reader),
                                   (lambda: os.write(w_fd, b"!"), r_fd)]:
            import threading

            timer = threading.Timer(0.2, make_ready)
            timer.start()
            ready = wait([a, q._reader, r_fd], timeout=60)  # woken by the event, not the timeout
            assert ready == [expect]
            timer.join()
            if expect is a:
                a.recv()
            elif expect is q._reader:
                q.get()
            else:
                os.read(r_fd, 1)
    finally:
        os.close(r_fd)
        os.close(w_fd)


def test_wait_on_process_sentinels_and_queues(ctx):
    wait = multiprocessing.connection.wait
    q = ctx.Queue()
    p = ctx.Process(target=h.sleep, args=(0.3,))
    p.start()
    ready = wait([q._reader, p.sentinel], timeout=30)
    assert ready == [p.sentinel]
    p2 = ctx.Process(target=h.put_after, args=(q, 0.2, "x"))
    p2.start()
    assert wait([q._reader], timeout=30) == [q._reader]
    assert q.get() == "x"
    p.join(30)
    p2.join(30)


def test_wait_reports_eof(ctx):
    wait = multiprocessing.connection.wait
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=h.sleep, args=(0.2,))
    p.start()
    w.close()
    assert wait([r], timeout=30) == [r]
    with pytest.raises(EOFError):
        r.recv()
    p.join(30)


def test_wait_never_reports_a_sentinel_without_what_was_sent_before_it():
    # A worker sends its result, then exits: if both happen while wait()
    # looks at the queue and then at the sentinel, it must report both
    # (an executor takes a sentinel alone for a worker that died mid-task).
    # Here the "queue" becomes ready, and the "sentinel" with it, right
    # after the queue was first looked at.
    from dragon.connection import wait

    r, w = os.pipe()

    class Result:
        calls = 0

        def _dragon_wait_channel(self):
            return None

        def _dragon_ready(self):
            self.calls += 1
            if self.calls == 1:
                os.write(w, b"x")  # the result arrives, the worker exits
                return False
            return True

    res = Result()
    try:
        ready = wait([res, r], timeout=30)
        assert res in ready and r in ready, ready
    finally:
        os.close(r)
        os.close(w)


def test_wait_falls_back_to_the_stdlib(ctx):
    wait = multiprocessing.connection.wait
    r_fd, w_fd = os.pipe()
    try:
        assert wait([r_fd], timeout=0.05) == []
        os.write(w_fd, b"x")
        assert wait([r_fd], timeout=5) == [r_fd]
    finally:
        os.close(r_fd)
        os.close(w_fd)


def test_unshared_pipe_leaves_no_segment(ctx):
    import gc

    a, b = ctx.Pipe()
    a.send(b"z" * 100_000)
    b.recv()
    names = [a._send_ch.name, a._recv_ch.name]
    del a, b
    gc.collect()
    assert [n for n in os.listdir("/dev/shm") if any(n.startswith(x) for x in names)] == []


def test_repeated_mixed_waits_keep_watching_descriptors(ctx):
    import threading

    wait = multiprocessing.connection.wait
    a, b = ctx.Pipe()
    r_fd, w_fd = os.pipe()
    try:
        for i in range(30):
            # alternately woken by the descriptor and by the channel, so that
            # the helper thread is stopped both ways
            if i % 2:
                timer = threading.Timer(0.01, os.write, (w_fd, b"!"))
            else:
                timer = threading.Timer(0.01, b.send, (i,))
            timer.start()
            ready = wait([a, r_fd], timeout=30)
            timer.join()
            assert ready == ([r_fd] if i % 2 else [a]), i
            if i % 2:
                os.read(r_fd, 1)
            else:
                assert a.recv() == i
    finally:
        os.close(r_fd)
        os.close(w_fd)
