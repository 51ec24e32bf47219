"""Queue, JoinableQueue and SimpleQueue of the dragon context, across real
processes."""
import gc
import os
import pickle
import queue
import time

import pytest

import dragon
from dragon import _native, _wire, errors, queues

import _queue_helpers as h
from conftest import (interrupt_when_ready, run_and_list_leftovers, run_script, wait_until, when_blocked_beside,
                      write_script)

PAYLOADS = [
    b"", b"x" * 8, b"\x80starts like a pickle", b"\x00", b"\x01x", b"\x02y",
    bytearray(b"not bytes"), "text", 12345, ("tuple", [1, 2.5], {"k": {1, 2}}),
    b"z" * (1 << 20), b"q" * (20 << 20),
]


def test_types_and_sizes_round_trip(ctx):
    qa, qb = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=h.echo_queue, args=(qa, qb))
    p.start()
    try:
        for m in PAYLOADS:
            qa.put(m)
            got = qb.get(timeout=60)
            assert type(got) is type(m) and got == m
    finally:
        qa.put(None)
        p.join(60)
    assert p.exitcode == 0


def test_get_timeout_and_nowait(ctx):
    q = ctx.Queue()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(False)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    with pytest.raises(queue.Empty):
        q.get(timeout=-1)
    p = ctx.Process(target=h.put_after, args=(q, 0.2, "late"))
    p.start()
    assert q.get(timeout=30) == "late"
    p.join(30)


def test_bounded_queue(ctx):
    q = ctx.Queue(maxsize=2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, False)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    assert [q.get(), q.get()] == [1, 2]
    assert q.empty()


def test_bounded_put_blocks_until_a_get(ctx):
    q = ctx.Queue(maxsize=1)
    q.put("first")
    c = ctx.Process(target=h.consume, args=(q, 2, out := ctx.Queue()))
    c.start()
    q.put("second", timeout=30)  # waits for the consumer's first get
    assert out.get(timeout=30) == ["first", "second"]
    c.join(30)


def test_large_bound_uses_a_semaphore(ctx):
    n = queues.EXACT_MAX + 5
    q = ctx.Queue(maxsize=n)
    for i in range(n):
        q.put_nowait(i)
    assert q.full() and q.qsize() == n
    with pytest.raises(queue.Full):
        q.put_nowait("too many")
    assert q.get() == 0
    q.put_nowait("fits again")
    assert q.qsize() == n


def test_unbounded_put_never_blocks(ctx):
    q = ctx.Queue()
    n = queues.UNBOUNDED_CAPACITY * 4
    for i in range(n):
        # The ring fills; the rest waits in the feeder's buffer (a put that
        # blocked would hang: the test's timeout).
        q.put(i)
    assert q.qsize() == n
    out = ctx.Queue()
    c = ctx.Process(target=h.consume, args=(q, n, out))
    c.start()
    assert out.get(timeout=60) == list(range(n))
    c.join(60)


def test_order_per_producer(ctx):
    q = ctx.Queue()
    out = ctx.Queue()
    n = 2000
    ps = [ctx.Process(target=h.produce, args=(q, t, n)) for t in "ab"]
    for p in ps:
        p.start()
    c = ctx.Process(target=h.consume, args=(q, 2 * n, out))
    c.start()
    got = out.get(timeout=120)
    for t in "ab":
        assert [i for tag, i in got if tag == t] == list(range(n))
    for p in ps + [c]:
        p.join(60)


def test_joinable_queue(ctx):
    q = ctx.JoinableQueue()
    for i in range(20):
        q.put(i)
    p = ctx.Process(target=h.drain_joinable, args=(q, 20))
    p.start()
    q.join()
    p.join(30)
    assert p.exitcode == 0
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()


def test_joinable_full_put_uncounts_the_task(ctx):
    q = ctx.JoinableQueue(maxsize=1)
    q.put(1)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.05)
    q.get()
    q.task_done()
    q.join()  # would hang if the failed put had stayed counted


def test_simple_queue(ctx):
    q = ctx.SimpleQueue()
    assert q.empty()
    q.put(("x", 1))
    q.put(b"raw")
    assert not q.empty()
    assert q.get() == ("x", 1) and q.get() == b"raw"
    q._writer.send(5)
    assert q._reader.poll(1) and q._reader.recv() == 5
    q.close()
    assert q._reader.closed and q._writer.closed


def test_stock_pool_runs_on_dragon_queues(ctx):
    # ctx.Pool is dragon.pool.Pool; the standard class must work too.
    import multiprocessing.pool

    with multiprocessing.pool.Pool(2, context=ctx) as pool:
        assert isinstance(pool._inqueue, queues.SimpleQueue)
        assert pool.map(h.square, range(50)) == [x * x for x in range(50)]
        assert sorted(pool.imap_unordered(h.square, range(20))) == [x * x for x in range(20)]


def test_queue_travels_through_a_queue(ctx):
    carrier, out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=h.use_queue_from_queue, args=(carrier, out))
    p.start()
    inner = ctx.Queue()
    carrier.put(inner)  # after the process started: by handle
    assert inner.get(timeout=60)[1] == p.pid
    assert out.get(timeout=60) == "done"
    p.join(30)


def test_repeated_unpickling_shares_one_attachment(ctx):
    q = ctx.Queue()
    copies = [pickle.loads(pickle.dumps(q)) for _ in range(300)]
    assert q._ch.attachment_count() == 1  # one per process, not per copy
    copies[-1].put("via a copy")
    assert q.get(timeout=5) == "via a copy"


def test_closed_queue_raises(ctx):
    q = ctx.Queue()
    q.put(1)
    q.close()
    q.join_thread()
    with pytest.raises(ValueError, match="is closed"):
        q.put(2)
    with pytest.raises(ValueError, match="is closed"):
        q.get()
    q2 = ctx.Queue()
    q2.cancel_join_thread()
    q2.close()


def test_unpicklable_object_is_reported_and_dropped(ctx, capfd):
    class Bad:
        def __reduce__(self):
            raise AttributeError("no pickling for you")

    q = ctx.Queue()
    q.put(Bad())
    q.put("next")
    assert q.get(timeout=5) == "next"
    assert "no pickling for you" in capfd.readouterr().err


def test_feeder_reports_a_message_it_cannot_send(ctx, capfd):
    # The ring (512 slots) fills and nobody receives: the rest waits in the
    # local buffer. Once the channel is destroyed, the feeder thread reports
    # each message it cannot send (as the standard feeder prints its
    # errors) and drops it; join_thread returns.
    q = ctx.Queue()
    for i in range(600):
        q.put(i)
    assert q.qsize() >= 600
    q._ch.destroy()
    q.close()
    q.join_thread()
    assert "DestroyedError" in capfd.readouterr().err


def test_feeder_drops_what_nobody_can_receive_at_exit(tmp_path):
    # A queue whose ring is full and whose buffer holds more, in a process
    # that nobody else is attached to: the process ends (the feeder gives
    # up) instead of waiting for ever at exit.
    r = run_script(write_script(tmp_path, """
        import multiprocessing as mp, dragon
        mp.set_start_method("dragon")
        q = mp.Queue()
        for i in range(2000):
            q.put(i)
        print("put all", q.qsize() >= 2000)
    """))
    assert r.returncode == 0, r.stderr
    assert "put all True" in r.stdout


def test_too_large_for_shared_memory_is_a_clear_error(monkeypatch):
    # The channel carries up to 16 GiB per message, so a message too large
    # for /dev/shm cannot be built here; the decision is checked with a
    # pretend size of /dev/shm.
    monkeypatch.setattr(_wire, "_shm_total", lambda: 100)
    with pytest.raises(errors.MessageTooLargeError):
        _wire.check_fits(b"x" * 101)
    _wire.check_fits(b"x" * 100)  # fits: the caller waits and retries


def test_forged_and_stale_channel_handles():
    ch = _native.Channel.create(4, 128)
    good = ch.handle
    for bad in (b"", b"garbage", good[:-1], good[:-4] + b"\0\0\0\0"):
        with pytest.raises(errors.InvalidHandleError):
            _native.Channel.attach(bad)
    with pytest.raises(errors.InvalidHandleError):
        _native.Channel.attach(_native.Lock().handle)
    ch.destroy()
    with pytest.raises(errors.DestroyedError):
        _native.Channel.attach(good)


def test_unshared_queue_leaves_no_segment(ctx):
    names = []
    for _ in range(5):
        q = ctx.Queue()
        q.put(b"y" * 100_000)  # a block in an extension segment
        assert q.get() == b"y" * 100_000
        names.append(q._ch.name)
        del q
    gc.collect()
    left = [n for n in os.listdir("/dev/shm") if any(n.startswith(x) for x in names)]
    assert left == []


def test_queue_survives_a_killed_consumer(ctx):
    q = ctx.Queue()
    out = ctx.Queue()
    p = ctx.Process(target=h.get_and_report, args=(q, out))
    p.start()
    time.sleep(0.2)  # p is blocked in get
    p.kill()
    p.join(30)
    for i in range(100):
        q.put(i)
    assert [q.get(timeout=10) for _ in range(100)] == list(range(100))


def test_fork_inherited_queue_attaches_anew(ctx):
    fork = __import__("multiprocessing").get_context("fork")
    q = ctx.Queue()
    q.put("before fork")
    p = fork.Process(target=h.echo_queue, args=(q, out := ctx.Queue()))
    # echo_queue reads q: it gets "before fork" and echoes it to out
    p.start()
    assert out.get(timeout=30) == "before fork"
    q.put(None)
    p.join(30)
    assert p.exitcode == 0
    q.put("parent still works")
    assert q.get(timeout=5) == "parent still works"


def _feeder_threads():
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return [n for n in names if n.startswith("QueueFeeder")]


def test_fork_after_a_feeder_ended(ctx):
    # A queue's feeder ran and ended after the queue went; a child forked
    # now inherits the exit hook's handle on that (parent's) thread and must
    # neither join nor detach it.
    q = ctx.Queue()
    for i in range(600):  # the ring fills: the feeder starts
        q.put(i)
    for i in range(600):
        assert q.get(timeout=30) == i
    del q
    gc.collect()
    assert wait_until(lambda: not _feeder_threads(), timeout=30)
    fork = __import__("multiprocessing").get_context("fork")
    out = ctx.Queue()
    p = fork.Process(target=h.put_one, args=(out, "child ran"))
    p.start()
    assert out.get(timeout=30) == "child ran"
    p.join(30)
    assert p.exitcode == 0


def test_exit_hooks_of_ended_feeders_do_not_pile_up(ctx):
    from multiprocessing import util

    def feeder_hooks():
        return sum(1 for f in list(util._finalizer_registry.values())
                   if type(getattr(f._callback, "__self__", None)) is _native.Feeder)

    before = feeder_hooks()
    for _ in range(5):
        q = ctx.Queue()
        for i in range(600):  # the ring fills: a feeder starts
            q.put(i)
        for i in range(600):
            assert q.get(timeout=30) == i
        del q
        gc.collect()
        assert wait_until(lambda: not _feeder_threads(), timeout=30)
    # Each start dropped the hooks of the feeders that had ended.
    assert feeder_hooks() - before <= 1


def test_blocking_get_releases_the_gil(ctx):
    q = ctx.Queue()
    t = when_blocked_beside(lambda: q.put("from beside"))
    assert q.get(timeout=60) == "from beside"
    t.join()


INTERRUPT_SCRIPT = """
import sys, time
import multiprocessing as mp
import dragon

if __name__ == "__main__":
    ctx = mp.get_context("dragon")
    kind = sys.argv[1]
    if kind == "get":
        q = ctx.Queue(); call = q.get
    elif kind == "put":
        q = ctx.Queue(1); q.put(1); call = lambda: q.put(2)
    elif kind == "put-bounded":  # waits on the bound's semaphore
        q = ctx.Queue(8193)
        for i in range(8193):
            q.put(i)
        call = lambda: q.put(-1)
    elif kind == "join":
        q = ctx.JoinableQueue(); q.put(1); call = q.join
    elif kind == "simple":
        q = ctx.SimpleQueue(); call = q.get
    elif kind == "recv":
        a, b = ctx.Pipe(); call = a.recv
    elif kind == "wait":
        from multiprocessing.connection import wait
        a, b = ctx.Pipe(); q = ctx.Queue(); call = lambda: wait([a, q._reader])
    try:
        # Inside the try: a SIGINT that comes before the call is under way
        # still ends here (the test cannot see when the call blocks).
        print("ready", flush=True)
        call()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    else:
        print("returned", flush=True)
"""


@pytest.mark.parametrize("kind", ["get", "put", "put-bounded", "join", "simple", "recv", "wait"])
def test_ctrl_c_interrupts(tmp_path, kind):
    out, err = interrupt_when_ready(write_script(tmp_path, INTERRUPT_SCRIPT), kind)
    assert out.startswith("interrupted"), (out, err)


LEAK_SCRIPT = """
import multiprocessing as mp
import dragon
from dragon import runtime

def child(q, c, j):
    q.put(b"x" * 200_000)
    c.send("hi")
    j.put(1)

if __name__ == "__main__":
    mp.set_start_method("dragon")
    q, j = mp.Queue(), mp.JoinableQueue()
    a, b = mp.Pipe()
    p = mp.Process(target=child, args=(q, b, j))
    p.start()
    assert len(q.get(timeout=30)) == 200_000 and a.recv() == "hi" and j.get(timeout=30) == 1
    p.join()
    print(runtime.shm_prefix(), flush=True)
"""


def test_nothing_left_in_dev_shm(tmp_path):
    assert run_and_list_leftovers(tmp_path, LEAK_SCRIPT) == []


def test_queue_survives_killed_producers(ctx):
    q = ctx.Queue(maxsize=16)
    ps = [ctx.Process(target=h.produce_forever, args=(q, size)) for size in (100, 50_000, 300_000)]
    for p in ps:
        p.start()
    for _ in range(200):
        q.get(timeout=60)
    for p in ps:  # killed wherever they are: maybe halfway through a put
        p.kill()
    for p in ps:
        p.join(30)
    while True:  # drain what they managed to send
        try:
            i, data = q.get(timeout=0.5)
        except queue.Empty:
            break
    for i in range(40):  # the queue still works, in both directions
        q.put((i, b"after"))
        assert q.get(timeout=10) == (i, b"after")


def test_process_pool_executor(ctx):
    import concurrent.futures as cf

    with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(h.square, range(20))) == [x * x for x in range(20)]
        with pytest.raises(ZeroDivisionError):
            ex.submit(divmod, 1, 0).result(timeout=60)


def test_exception_in_wait_check_is_raised_not_swallowed():
    # The check callback of a wait runs Python code; a KeyboardInterrupt
    # that a signal handler raises while it runs (here: any exception it
    # raises) must end the wait and propagate, not be dropped (the Ctrl-C
    # would be lost and the wait go on forever).
    from dragon import _native

    ch = _native.Channel.create(4, 128)
    calls = []

    def check():
        calls.append(1)
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            _native.select([ch], None, check)
        assert calls == [1]
        with pytest.raises(KeyboardInterrupt):
            ch.recv(True, None, check)
    finally:
        ch.destroy()


def test_empty_after_close_as_the_standard_queues(ctx):
    # Queue/JoinableQueue: close() of an unused queue changes nothing; once
    # this process has put on it, close() also closes its reading end.
    for make in (ctx.Queue, ctx.JoinableQueue):
        q = make()
        q.close()
        q.join_thread()
        assert q.empty()
        q = make()
        q.put("foo")
        q.close()
        q.join_thread()
        with pytest.raises(OSError, match="is closed"):
            q.empty()
        with pytest.raises(ValueError, match="is closed"):
            q.get()
    # SimpleQueue: close() closes both ends at once.
    sq = ctx.SimpleQueue()
    sq.close()
    with pytest.raises(OSError, match="is closed"):
        sq.empty()
