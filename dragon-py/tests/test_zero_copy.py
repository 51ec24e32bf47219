"""Large bytes objects travel as blocks of the run's block store: the
receiver's object maps the block's pages, and sending it on passes the block
(`dragon-py/src/lent.rs`)."""
import gc
import hashlib
import os
import pickle
import queue
import signal
import subprocess
import sys

import pytest

from dragon import _native, _wire, errors, runtime

import _lent_helpers as h
from conftest import clean_env, run_and_list_leftovers, wait_until, write_script

MIN = _native.LENT_MIN_LEN
MiB = 1 << 20


def digest(b):
    return hashlib.sha256(b).hexdigest()


def run_with_helpers(path, **env):
    """Run a script that imports this directory's helpers, in a run of its own."""
    here = os.path.dirname(os.path.abspath(h.__file__))
    return subprocess.run([sys.executable, path], env=clean_env(PYTHONPATH=here, **env),
                          capture_output=True, text=True, timeout=60)


def in_use():
    return _native.lent_stats().get("blocks_in_use", 0)


@pytest.fixture
def echo(ctx):
    qa, qb = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=h.echo_with_stats, args=(qa, qb))
    p.start()
    yield qa, qb
    qa.put(None)
    qb.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0


def test_large_bytes_arrive_as_views_and_intact(echo):
    qa, qb = echo
    sizes = [MIN - 1, MIN, MIN + 1, MiB, 3 * MiB + 5, 17 * MiB]
    payloads = [os.urandom(n) for n in sizes]
    for p in payloads:
        qa.put(p)
        back = qb.get(timeout=60)
        assert type(back) is bytes
        assert len(back) == len(p) and back == p
        live = _native.lent_stats()["live"]
        # Below the threshold the object is an ordinary copy; above, a view.
        assert live == (1 if len(p) >= MIN else 0), (len(p), live)
        del back
    assert _native.lent_stats()["live"] == 0


def test_views_behave_like_bytes(echo):
    qa, qb = echo
    src = bytes(range(256)) * (MiB // 256)
    qa.put(src)
    v = qb.get(timeout=60)
    assert _native.lent_stats()["live"] == 1
    assert v == src and hash(v) == hash(src) and v is bytes(v)
    assert v[:3] == b"\x00\x01\x02" and v[-1] == 255 and v.find(b"\xfe\xff\x00") == 254
    assert v.hex()[:6] == "000102" and v.count(b"\x07") == MiB // 256
    assert pickle.loads(pickle.dumps(v)) == src
    m = memoryview(v)
    assert m.readonly and m.nbytes == MiB and m[10] == 10
    m.release()
    assert {v: 1}[src] == 1
    assert (v + b"!")[-2:] == b"\xff!"
    assert sys.getsizeof(v) == sys.getsizeof(src)
    assert v.decode("latin-1")[:2] == "\x00\x01"
    w = v * 2
    assert len(w) == 2 * MiB
    del v, w
    gc.collect()
    assert _native.lent_stats()["live"] == 0


def test_forwarded_block_stays_intact_while_the_forwarder_keeps_it(ctx):
    qa, qb = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=h.keep_first_then_check, args=(qa, qb))
    p.start()
    x = b"x" * MiB
    qa.put(x)
    back = qb.get(timeout=60)  # the child's x, passed on while it keeps it
    assert back == x
    del back  # frees the block on our side; the child's pin must keep it
    y = b"y" * MiB  # the next block taken must not be the one the child maps
    qa.put(y)
    before, after, dy, lx, ly = qb.get(timeout=60)
    p.join(60)
    assert before == after == digest(x)
    assert dy == digest(y) and lx == ly == MiB


def test_a_view_sent_twice_is_passed_on_once_and_copied_once(echo):
    qa, qb = echo
    base = in_use()
    qa.put(b"t" * MiB)
    v = qb.get(timeout=60)
    qa.put(v)  # the block passes on
    qa.put(v)  # no longer ours: copied into a new block
    a, b = qb.get(timeout=60), qb.get(timeout=60)
    assert a == b == v == b"t" * MiB
    del a, b, v
    gc.collect()
    qa.put(b"small")  # the echo lets go of the last object it holds
    assert qb.get(timeout=60) == b"small"
    assert wait_until(lambda: in_use() == base, timeout=10)


def test_a_hoarding_receiver_keeps_every_object(ctx):
    n = 40
    qa, qb = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=h.hoard, args=(qa, qb, n))
    p.start()
    sent = [bytes([i]) * (300 << 10) for i in range(n)]
    for s in sent:
        qa.put(s)
    assert qb.get(timeout=60) == [digest(s) for s in sent]
    p.join(60)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_os_fork_child_gets_a_private_copy(echo):
    qa, qb = echo
    qa.put(b"a" * MiB)
    v = qb.get(timeout=60)
    assert _native.lent_stats()["live"] == 1
    assert v == b"a" * MiB
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its status
        os.close(w)
        os.read(r, 1)
        same = v == b"a" * MiB
        orphaned = _native.lent_stats()["orphans"]
        del v
        os._exit(10 * same + orphaned + 20 * _native.lent_stats()["orphans"])
    os.close(r)
    try:
        del v
        # Reuse the block the child's object mapped, with other bytes.
        for c in b"bcd":
            qa.put(bytes([c]) * MiB)
            assert qb.get(timeout=60) == bytes([c]) * MiB
    finally:
        os.write(w, b"x")
        os.close(w)
        _, status = os.waitpid(pid, 0)
    # The bytes are intact (10), the view was made private (1), and it is
    # gone once freed (no 20).
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 11


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_from_c_forgets_the_parents_views(echo):
    # libc's fork() straight from C runs none of Python's at-fork handlers:
    # the child cannot get private copies, but it must not act on the
    # parent's attachment, and freeing the inherited object must work.
    import ctypes

    qa, qb = echo
    qa.put(b"c" * MiB)
    v = qb.get(timeout=60)
    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.fork()
    if pid == 0:  # pragma: no cover - the child reports through its status
        try:
            code = 1 if v == b"c" * MiB else 0
            stats = _native.lent_stats()  # the first call notices the fork
            code |= 2 if stats["live"] == 0 and stats["orphans"] == 1 else 0
            del v
            code |= 4 if _native.lent_stats()["orphans"] == 0 else 0
        except BaseException:
            code = 100
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7
    assert v == b"c" * MiB and _native.lent_stats()["live"] == 1


def test_a_killed_holder_gives_its_blocks_back(ctx):
    base = in_use()
    qa, qb = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=h.hold, args=(qa, qb))
    p.start()
    for i in range(3):
        qa.put(bytes([i]) * MiB)
        assert qb.get(timeout=60) == i + 1
    assert in_use() >= base + 3
    os.kill(p.pid, signal.SIGKILL)
    p.join(60)
    _native.lent_sweep()  # (a miss may have swept it already)
    assert in_use() == base


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_a_message_outlives_its_dead_sender(ctx, how):
    q = ctx.Queue()
    p = ctx.Process(target=h.put_and_die, args=(q, how))
    p.start()
    p.join(60)
    _native.lent_sweep()  # sweeping the dead sender must not free the block
    assert q.get(timeout=60) == b"k" * MiB


def test_large_pickles_travel_as_blocks(ctx):
    q = ctx.Queue()
    base = in_use()
    obj = {"a": bytearray(os.urandom(MiB)), "b": list(range(50_000))}
    q.put(obj)
    assert in_use() == base + 1  # the pickle waits in a block
    assert q.get(timeout=60) == obj
    assert in_use() == base  # unpickled from the view, which is gone
    small = list(range(10))
    q.put(small)
    assert in_use() == base and q.get(timeout=60) == small


def test_pool_results_and_arguments_travel_as_blocks(ctx):
    base = in_use()
    received, sent = _native.lent_stats()["received"], _native.lent_stats()["sent"]
    with ctx.Pool(2) as pool:
        out = pool.map(h.big_result, range(12), chunksize=1)
        assert _native.lent_stats()["received"] >= received + 12  # each result a block
        assert out == [(bytes([i]) * (600 << 10), i) for i in range(12)]
        # Large arguments too (each task's pickle is over the threshold).
        args = [os.urandom(300 << 10) for _ in range(6)]
        assert pool.map(len, args, chunksize=1) == [300 << 10] * 6
        assert _native.lent_stats()["sent"] >= sent + 6  # each task a block
    del out
    gc.collect()
    _native.lent_sweep()  # the workers are gone
    assert wait_until(lambda: in_use() == base, timeout=10)


def test_send_bytes_travels_as_a_block(ctx):
    a, b = ctx.Pipe()
    base = in_use()
    raw = os.urandom(MiB)
    a.send_bytes(raw)
    assert in_use() == base + 1
    got = b.recv_bytes()
    assert got == raw and _native.lent_stats()["live"] == 1
    a.send_bytes(b"\x03" + raw)  # starts with the block tag: still raw bytes
    assert b.recv_bytes() == b"\x03" + raw
    buf = bytearray(MiB + 10)
    a.send_bytes(memoryview(raw)[: MiB // 2 + 7])
    assert b.recv_bytes_into(buf) == MiB // 2 + 7 and bytes(buf[: MiB // 2 + 7]) == raw[: MiB // 2 + 7]
    del got
    gc.collect()
    assert in_use() == base


def test_full_bounded_queue_returns_the_block(ctx):
    q = ctx.Queue(maxsize=1)
    q.put(b"1" * MiB)
    base = in_use()
    with pytest.raises(queue.Full):
        q.put(b"2" * MiB, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_nowait(b"3" * MiB)
    assert in_use() == base
    assert q.get(timeout=10) == b"1" * MiB


def test_drained_channel_returns_its_blocks():
    ch = _native.Channel.create()
    base = in_use()
    for i in range(3):
        assert ch.send(bytes([i]) * MiB, _wire.TAG_BYTES) == _wire.SEND_OK
    assert in_use() == base + 3
    assert ch.drain() == 3
    assert in_use() == base


def test_forged_and_malformed_block_messages_are_clear_errors():
    ch = _native.Channel.create()
    name = runtime.shm_prefix() + "blk"
    gen = (0xDEAD).to_bytes(4, "little")
    forged = bytes([_wire.TAG_BYTES, 0, 0]) + gen + MiB.to_bytes(8, "little") + name.encode()
    ch.send(forged, _native.TAG_LENT)
    with pytest.raises(errors.DragonError, match="does not hold"):
        ch.recv(timeout=5)
    ch.send(b"\x00\x00short", _native.TAG_LENT)
    with pytest.raises(errors.DragonError, match="malformed"):
        ch.recv(timeout=5)
    ch.send(bytes([_wire.TAG_BYTES, 0, 0]) + gen + MiB.to_bytes(8, "little") + b"dragon-nosuchrun-blk",
            _native.TAG_LENT)
    with pytest.raises(errors.DragonError, match="cannot open"):
        ch.recv(timeout=5)
    # Raw bytes that happen to start with the tag are not mistaken for one.
    raw = b"\x03" + b"r" * 100
    ch.send(raw, -2)
    assert ch.recv(timeout=5)[1] == raw


def test_zero_copy_can_be_turned_off(tmp_path):
    src = write_script(tmp_path, """
        import multiprocessing as mp
        import dragon
        from dragon import _native
        import _lent_helpers as h
        if __name__ == "__main__":
            mp.set_start_method("dragon")
            qa, qb = mp.Queue(), mp.Queue()
            p = mp.Process(target=h.echo_with_stats, args=(qa, qb))
            p.start()
            qa.put(b"z" * (1 << 20))
            back = qb.get()
            assert back == b"z" * (1 << 20)
            print(_native.lent_stats()["live"], _native.lent_stats()["enabled"])
            qa.put(None); qb.get(); p.join()
    """)
    r = run_with_helpers(src, DRAGON_ZERO_COPY="0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "False"]


def test_tracemalloc_tracing_makes_receives_copy(tmp_path):
    src = write_script(tmp_path, """
        import gc, tracemalloc
        import multiprocessing as mp
        import dragon
        from dragon import _native
        import _lent_helpers as h
        if __name__ == "__main__":
            mp.set_start_method("dragon")
            qa, qb = mp.Queue(), mp.Queue()
            p = mp.Process(target=h.echo_with_stats, args=(qa, qb))
            p.start()
            def rt(c):
                qa.put(bytes([c]) * (1 << 20))
                b = qb.get()
                assert b == bytes([c]) * (1 << 20)
                return b
            tracemalloc.start()
            a = rt(1)                      # tracing before the hook: a copy
            live = [_native.lent_stats()["live"]]
            tracemalloc.stop()
            b = rt(2)                      # now a view (the hook goes in)
            live.append(_native.lent_stats()["live"])
            tracemalloc.start()            # wraps our hook
            c = rt(3)                      # a copy while tracing
            live.append(_native.lent_stats()["live"])
            del b                          # freed through tracemalloc, then us
            tracemalloc.stop()             # puts our hook back
            d = rt(4)
            live.append(_native.lent_stats()["live"])
            del a, c, d
            gc.collect()
            live.append(_native.lent_stats()["live"])
            print(*live)
            qa.put(None); qb.get(); p.join()
    """)
    r = run_with_helpers(src)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "1", "1", "1", "0"]


def test_block_store_files_go_with_the_run(tmp_path):
    left = run_and_list_leftovers(tmp_path, """
        import multiprocessing as mp
        import dragon
        from dragon import runtime
        import sys
        sys.path.insert(0, %r)
        import _lent_helpers as h
        if __name__ == "__main__":
            mp.set_start_method("dragon")
            qa, qb = mp.Queue(), mp.Queue()
            p = mp.Process(target=h.echo_with_stats, args=(qa, qb))
            p.start()
            for i in range(5):
                qa.put(bytes([i]) * (1 << 20)); qb.get()
            qa.put(None); qb.get(); p.join()
            print(runtime.shm_prefix())
    """ % os.path.dirname(os.path.abspath(h.__file__)))
    assert left == []
