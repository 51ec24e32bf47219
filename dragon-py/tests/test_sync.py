"""Locks, semaphores, conditions, events, barriers and shared values of the
dragon context, across real processes."""
import ctypes
import itertools
import os
import pickle
import threading
import time

import pytest

import dragon
from dragon import _native, errors, sharedctypes, synchronize

import _sync_helpers as h
from conftest import (interrupt_when_ready, run_and_list_leftovers, run_script, wait_until, when_blocked_beside,
                      write_script)


def shm_exists(name):
    return os.path.exists(os.path.join("/dev/shm", name))


# ---------------------------------------------------------------------------
# Locks
# ---------------------------------------------------------------------------

def test_lock_api(ctx):
    lock = ctx.Lock()
    assert isinstance(lock, synchronize.Lock)
    assert repr(lock) == "<Lock(owner=None)>"
    assert lock.acquire() is True
    assert lock.acquire(False) is False
    assert lock.acquire(True, 0.05) is False
    assert lock.acquire(timeout=0) is False
    assert repr(lock) == "<Lock(owner=MainProcess)>"
    assert lock._semlock._is_mine() and lock._semlock._count() == 1
    assert lock.release() is None
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()
    with lock:
        assert lock._semlock._get_value() == 0
    assert lock._semlock._get_value() == 1


def test_lock_released_by_another_thread(ctx):
    lock = ctx.Lock()
    lock.acquire()
    seen = []
    t = threading.Thread(target=lambda: seen.append((repr(lock), lock.release())))
    t.start()
    t.join(10)
    assert seen == [("<Lock(owner=SomeOtherThread)>", None)]
    assert lock.acquire(False)


def test_rlock_api(ctx):
    lock = ctx.RLock()
    assert repr(lock) == "<RLock(None, 0)>"
    for _ in range(3):
        assert lock.acquire() is True
    assert repr(lock) == "<RLock(MainProcess, 3)>"
    other = []
    t = threading.Thread(target=lambda: other.append((lock.acquire(timeout=0.05), repr(lock))))
    t.start()
    t.join(10)
    assert other == [(False, "<RLock(SomeOtherThread, nonzero)>")]
    for _ in range(3):
        lock.release()
    with pytest.raises(AssertionError):
        lock.release()


def test_rlock_release_by_non_owner_thread_fails(ctx):
    lock = ctx.RLock()
    lock.acquire()
    errs = []

    def bad():
        try:
            lock.release()
        except AssertionError as e:
            errs.append(e)

    t = threading.Thread(target=bad)
    t.start()
    t.join(10)
    assert len(errs) == 1
    lock.release()


def test_lock_mutual_exclusion_across_processes(ctx):
    lock = ctx.Lock()
    value = ctx.RawValue("i", 0)
    ps = [ctx.Process(target=h.count_up, args=(lock, value, 2000)) for _ in range(3)]
    for p in ps:
        p.start()
    h.count_up(lock, value, 2000)
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    assert value.value == 8000


def test_lock_of_a_killed_holder_is_recovered(ctx):
    lock = ctx.Lock()
    ready = ctx.Event()
    p = ctx.Process(target=h.hold_lock_and_die, args=(lock, ready))
    p.start()
    assert ready.wait(30)
    assert not lock.acquire(timeout=0.1)
    p.kill()
    p.join(30)
    assert lock.acquire(timeout=10)
    assert lock._semlock.recovered
    lock.release()
    assert lock.acquire(False) and not lock._semlock.recovered
    lock.release()


def test_rlock_of_a_killed_holder_is_recovered(ctx):
    lock = ctx.RLock()
    ready = ctx.Event()
    p = ctx.Process(target=h.hold_lock_and_die, args=(lock, ready))
    p.start()
    assert ready.wait(30)
    p.kill()
    p.join(30)
    assert lock.acquire(timeout=10)
    assert lock._semlock._count() == 1
    lock.release()


# ---------------------------------------------------------------------------
# Semaphores
# ---------------------------------------------------------------------------

def test_semaphore_api(ctx):
    sem = ctx.Semaphore(2)
    assert repr(sem) == "<Semaphore(value=2)>"
    assert sem.acquire() and sem.acquire()
    assert sem.get_value() == 0
    assert sem.acquire(False) is False
    t0 = time.monotonic()
    assert sem.acquire(timeout=0.1) is False
    assert time.monotonic() - t0 >= 0.09
    sem.release()
    sem.release()
    sem.release()
    assert sem.get_value() == 3
    with pytest.raises(ValueError):
        ctx.Semaphore(-1)


def test_bounded_semaphore(ctx):
    sem = ctx.BoundedSemaphore(2)
    assert repr(sem) == "<BoundedSemaphore(value=2, maxvalue=2)>"
    with pytest.raises(ValueError):
        sem.release()
    assert sem.get_value() == 2
    sem.acquire()
    sem.release()


def test_semaphore_across_processes(ctx):
    sem = ctx.Semaphore(0)
    p = ctx.Process(target=h.post, args=(sem, 50))
    p.start()
    for _ in range(50):
        assert sem.acquire(timeout=30)
    p.join(30)
    assert sem.get_value() == 0


# ---------------------------------------------------------------------------
# Event, Condition, Barrier
# ---------------------------------------------------------------------------

def test_event(ctx):
    ev = ctx.Event()
    assert not ev.is_set() and ev.wait(0) is False and ev.wait(0.05) is False
    assert "unset" in repr(ev)
    p = ctx.Process(target=h.set_after, args=(ev, 0.2))
    p.start()
    assert ev.wait(30) is True
    p.join(30)
    assert ev.is_set() and "set>" in repr(ev)
    ev.clear()
    assert not ev.is_set()


def test_condition_notify_across_processes(ctx):
    cond = ctx.Condition()
    started = ctx.Semaphore(0)
    q = ctx.SimpleQueue()
    ps = [ctx.Process(target=h.cond_waiter, args=(cond, started, q)) for _ in range(3)]
    for p in ps:
        p.start()
    for _ in ps:
        assert started.acquire(timeout=30)
    assert wait_until(lambda: cond._cond.waiting == 3)
    with cond:
        cond.notify()
    assert q.get() is True
    with cond:
        cond.notify_all()
    assert [q.get(), q.get()] == [True, True]
    for p in ps:
        p.join(30)


def test_condition_wait_needs_the_lock(ctx):
    cond = ctx.Condition(ctx.Lock())
    with pytest.raises(AssertionError):
        cond.wait(0)
    with pytest.raises(AssertionError):
        cond.notify()
    with cond:
        assert cond.wait(0.01) is False
        assert cond._lock._semlock._is_mine()
        assert cond.wait_for(lambda: 7) == 7
        assert cond.wait_for(lambda: 0, timeout=0.05) == 0


def test_condition_with_a_foreign_lock_uses_the_stdlib(ctx):
    import multiprocessing.synchronize as std

    cond = ctx.Condition(threading.Lock())
    assert isinstance(cond, std.Condition)


def test_barrier(ctx):
    b = ctx.Barrier(3, timeout=30)
    q = ctx.SimpleQueue()
    ps = [ctx.Process(target=h.barrier_party, args=(b, q)) for _ in range(2)]
    for p in ps:
        p.start()
    mine = b.wait()
    got = sorted([mine, q.get(), q.get()])
    assert got == [0, 1, 2]
    for p in ps:
        p.join(30)
    assert b.parties == 3 and b.n_waiting == 0 and not b.broken


def test_barrier_timeout_breaks_it(ctx):
    b = ctx.Barrier(2)
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(0.05)
    assert b.broken
    b.reset()
    assert not b.broken


def test_barrier_action_error_propagates(ctx):
    def bad():
        raise KeyError("from the action")

    b = ctx.Barrier(1, action=bad)
    with pytest.raises(KeyError):
        b.wait()
    assert b.broken


# ---------------------------------------------------------------------------
# Values and arrays
# ---------------------------------------------------------------------------

def test_value_and_array(ctx):
    v = ctx.Value("i", 7)
    assert v.value == 7 and isinstance(v.get_lock(), synchronize.RLock)
    a = ctx.Array("d", [1.5, 2.5])
    assert a[:] == [1.5, 2.5] and len(a) == 2
    s = ctx.Array("c", b"hello")
    assert s.value == b"hello"
    raw = ctx.RawArray(ctypes.c_int, 5)
    assert list(raw) == [0] * 5
    assert not hasattr(ctx.Value("i", 1, lock=False), "get_lock")
    lock = ctx.Lock()
    assert ctx.Value("i", 1, lock=lock).get_lock() is lock
    with pytest.raises(AttributeError):
        ctx.Value("i", 1, lock="nolock")


def test_value_shared_with_children(ctx):
    v = ctx.Value("q", 0)
    ps = [ctx.Process(target=h.add_unlocked, args=(v, 500)) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
    assert v.value == 1000
    arr = ctx.RawArray("i", 10)
    p = ctx.Process(target=h.fill_array, args=(arr, 100))
    p.start()
    p.join(30)
    assert list(arr) == list(range(100, 110))


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double)]


def test_structure_value_pickles_by_handle(ctx):
    v = ctx.Value(Point, 1.0, 2.0)
    # Plain pickle (not only ForkingPickler) shares the memory.
    w = pickle.loads(pickle.dumps(v))
    w.x = 5.0
    assert v.x == 5.0
    assert w.get_lock() == v.get_lock()


class _Inner(ctypes.Structure):
    _fields_ = [("y", ctypes.c_int), ("z", ctypes.c_double)]


class _MyInt(ctypes.c_int):
    pass


class _Rec(ctypes.Structure):
    _fields_ = [("arr", ctypes.c_int * 4), ("inner", _Inner), ("x", ctypes.c_int), ("grid", (ctypes.c_int * 2) * 2),
                ("name", ctypes.c_char * 6), ("words", (ctypes.c_char * 3) * 2), ("mine", _MyInt),
                ("lo", ctypes.c_uint, 3), ("hi", ctypes.c_uint, 5)]


class _Across:
    """A local block read and written as a block of another node is (a
    RemoteBlock's read/write), checking that the wrapper's lock is held."""

    node = 2

    def __init__(self, block, lock):
        self.mem, self.lock, self.calls = block.create_memoryview(), lock, 0

    def read(self, offset, n):
        assert self.lock._is_owned()
        self.calls += 1
        return bytes(self.mem[offset:offset + n])

    def write(self, offset, data):
        assert self.lock._is_owned()
        self.calls += 1
        self.mem[offset:offset + len(data)] = bytes(data)

    def create_memoryview(self):
        raise errors.NotLocalError("elsewhere")


def _edit_nested(v, a):
    """Writes into nested fields and items; what they read back."""
    v.arr[1] = 7
    v.arr[2:4] = [8, 9]
    v.arr[-4] += 1
    v.inner.y = 3
    v.inner.z = 2.5
    v.grid[1][0] = 6
    v.grid[0][:] = [4, 5]
    v.x, v.name, v.lo, v.hi = 5, b"far", 5, 17
    v.words[1].value = b"ab"
    v.mine.value = 12
    v.inner = _Inner(v.inner.y + 1, v.inner.z)  # a view assigned: its copy
    a[0].x = 9
    a[-1].y = 1.5
    for p in a:
        p.x += 10
    a[1:][0].y = 4.5
    a[2] = a[1]
    return (list(v.arr), v.arr[1:3], v.inner.y, v.inner.z, [list(r) for r in v.grid], v.x, v.name, v.lo, v.hi,
            v.words[1].value, v.words[0][:], v.mine.value, [(p.x, p.y) for p in a], len(v.arr), len(a))


def test_nested_fields_of_a_value_of_another_node(ctx):
    # Off its node a Value's nested fields and an Array's items are views:
    # writes into them reach the block, every access under the lock, and
    # the results match the same edits made on the node.
    here_v, here_a = ctx.Value(_Rec), ctx.Array(Point, 3)
    expected = _edit_nested(here_v, here_a)

    lock = threading.RLock()
    v, a = ctx.Value(_Rec, lock=lock), ctx.Array(Point, 3, lock=lock)
    bv, ba = _Across(v.get_obj()._wrapper, lock), _Across(a.get_obj()._wrapper, lock)
    rv = sharedctypes.remote_synchronized((_Rec, bv, None), lock)
    ra = sharedctypes.remote_synchronized((Point, ba, 3), lock)
    assert type(rv).__name__ == "RemoteSynchronized_Rec" and type(rv.inner).__name__ == "Remote_InnerView"
    assert _edit_nested(rv, ra) == expected
    assert bytes(v.get_obj()) == bytes(here_v.get_obj()) and bytes(a.get_obj()) == bytes(here_a.get_obj())
    assert bv.calls and ba.calls

    # A view pickles as the ctypes object does (a copy); a pointer field
    # cannot be used off its node.
    assert pickle.loads(pickle.dumps(rv.inner)).y == v.inner.y
    class P(ctypes.Structure):
        _fields_ = [("p", ctypes.POINTER(ctypes.c_int))]
    rp = sharedctypes.remote_synchronized((P, _Across(ctx.Value(P).get_obj()._wrapper, lock), None), lock)
    with pytest.raises(errors.NotLocalError, match="address"):
        _ = rp.p
    with pytest.raises(IndexError):
        ra[3]


def test_slices_of_an_array_of_another_node_as_ctypes_gives_them(ctx):
    # Off its node an Array's slices read and write what ctypes' do (every
    # start, stop and step, the errors of a wrong length included), and
    # only the bytes between their first and last item.
    lock = threading.RLock()
    for typecode, vals in (("i", list(range(10))), ("d", [i / 2 for i in range(10)]), ("c", b"abcdefghij")):
        for a, b, step in itertools.product((None, -12, -3, 0, 2, 9, 12), (None, -12, -3, 0, 5, 12),
                                            (None, 1, 2, -1, -3)):
            s = slice(a, b, step)
            here, there = ctx.Array(typecode, vals, lock=lock), ctx.Array(typecode, vals, lock=lock)
            far = _Across(there.get_obj()._wrapper, lock)
            ra = sharedctypes.remote_synchronized((there.get_obj()._type_, far, 10), lock)
            assert ra[s] == here[s], s
            n = len(here[s])
            new = vals[:n][::-1]
            here[s] = new
            ra[s] = new
            assert bytes(there.get_obj()) == bytes(here.get_obj()), s
            if n < len(vals):
                with pytest.raises(ValueError):
                    here[s] = vals[:n + 1]
                with pytest.raises(ValueError):
                    ra[s] = vals[:n + 1]
    big = ctx.Array("i", 100_000, lock=lock)
    far = _Across(big.get_obj()._wrapper, lock)
    read = far.read
    seen = []
    far.read = lambda offset, n: seen.append(n) or read(offset, n)
    ra = sharedctypes.remote_synchronized((ctypes.c_int, far, 100_000), lock)
    ra[10:20] = range(10)
    assert ra[10:20:3] == [0, 3, 6, 9] and seen == [40, 40]


def test_raw_values_pickle_through_the_forking_pickler(ctx):
    from multiprocessing.reduction import ForkingPickler

    raw = ctx.RawValue("i", 3)
    other = pickle.loads(ForkingPickler.dumps(raw))
    other.value = 11
    assert raw.value == 11


def test_stdlib_shared_memory_still_works(ctx):
    from multiprocessing import shared_memory

    sm = shared_memory.SharedMemory(create=True, size=16)
    try:
        sm.buf[:3] = b"abc"
        other = shared_memory.SharedMemory(name=sm.name)
        assert bytes(other.buf[:3]) == b"abc"
        other.close()
        sl = shared_memory.ShareableList([1, "two", 3.0])
        assert list(sl) == [1, "two", 3.0]
        sl.shm.close()
        sl.shm.unlink()
    finally:
        sm.close()
        sm.unlink()


# ---------------------------------------------------------------------------
# Handles and lifetime
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("native", [_native.Lock, _native.RLock, _native.Semaphore, _native.Event,
                                    _native.Condition, _native.Barrier])
def test_forged_handles_are_clear_errors(native):
    obj = native() if native is not _native.Barrier else native(2)
    good = obj.handle
    for bad in (b"", b"garbage", good[:-1], good[:-4] + b"\0\0\0\0", good + b"x"):
        with pytest.raises(errors.InvalidHandleError):
            native.attach(bad)
    other = _native.Lock if native is not _native.Lock else _native.RLock
    with pytest.raises(errors.InvalidHandleError):
        other.attach(good)
    assert native.attach(good).name == obj.name


def test_destroyed_object_handle_is_a_clear_error():
    lock = _native.Lock()
    handle = lock.handle
    lock._destroy()
    with pytest.raises(errors.DestroyedError):
        _native.Lock.attach(handle)
    # The creator's mapping still works.
    assert lock.acquire()
    lock.release()


def test_forged_memory_handles():
    block = sharedctypes.SharedBlock(8)
    good = block.handle
    for bad in (b"", b"junk", good[:-2]):
        with pytest.raises(errors.InvalidHandleError):
            sharedctypes.SharedBlock.attach(bad)
    with pytest.raises(errors.InvalidHandleError):
        _native.Lock.attach(good)  # a memory handle is not a lock's
    lock = _native.Lock()
    with pytest.raises(errors.InvalidHandleError):
        sharedctypes.SharedBlock.attach(lock.handle)


def test_unshared_objects_leave_no_segment_behind(ctx):
    lock = ctx.Lock()
    v = ctx.Value("i", 1)
    names = [lock._semlock.name, v.get_lock()._semlock.name, v.get_obj()._wrapper.name]
    assert all(shm_exists(n) for n in names)
    del lock, v
    import gc

    gc.collect()
    assert not any(shm_exists(n) for n in names)


def test_pickled_objects_outlive_their_creator_object(ctx):
    ev = ctx.Event()
    data = pickle.dumps(ev)
    name = ev._event.name
    del ev
    assert shm_exists(name)
    again = pickle.loads(data)
    again.set()
    assert again.is_set()


# ---------------------------------------------------------------------------
# Ctrl-C interrupts every blocking call
# ---------------------------------------------------------------------------

INTERRUPT_SCRIPT = """
import sys, time
import multiprocessing as mp
import dragon

if __name__ == "__main__":
    ctx = mp.get_context("dragon")
    kind = sys.argv[1]
    if kind == "lock":
        obj = ctx.Lock(); obj.acquire(); call = obj.acquire
    elif kind == "rlock":
        import threading
        obj = ctx.RLock()
        t = threading.Thread(target=obj.acquire); t.start(); t.join()
        call = obj.acquire
    elif kind == "semaphore":
        obj = ctx.Semaphore(0); call = obj.acquire
    elif kind == "event":
        obj = ctx.Event(); call = obj.wait
    elif kind == "condition":
        obj = ctx.Condition(); obj.acquire(); call = obj.wait
    elif kind == "barrier":
        obj = ctx.Barrier(2); call = obj.wait
    try:
        # Inside the try: a SIGINT that comes before the call is under way
        # still ends here (the test cannot see when the call blocks).
        print("ready", flush=True)
        call()
    except KeyboardInterrupt:
        extra = ""
        if kind == "condition":
            extra = " relocked=%s" % obj._lock._semlock._is_mine()
        print("interrupted%s" % extra, flush=True)
    else:
        print("returned", flush=True)
"""


@pytest.mark.parametrize("kind", ["lock", "rlock", "semaphore", "event", "condition", "barrier"])
def test_ctrl_c_interrupts_blocking_calls(tmp_path, kind):
    out, err = interrupt_when_ready(write_script(tmp_path, INTERRUPT_SCRIPT), kind)
    assert out.startswith("interrupted"), (out, err)
    if kind == "condition":
        assert "relocked=True" in out


def test_blocking_calls_release_the_gil(ctx):
    lock = ctx.Lock()
    lock.acquire()
    t = when_blocked_beside(lock.release)  # any thread may release a Lock
    assert lock.acquire(timeout=60) is True
    t.join()


# ---------------------------------------------------------------------------
# Nothing is left behind
# ---------------------------------------------------------------------------

LEAK_SCRIPT = """
import pickle
import multiprocessing as mp
import dragon
from dragon import runtime

def child(*objs):
    pass

if __name__ == "__main__":
    mp.set_start_method("dragon")
    objs = [mp.Lock(), mp.RLock(), mp.Semaphore(), mp.BoundedSemaphore(), mp.Event(),
            mp.Condition(), mp.Barrier(2), mp.Value("i"), mp.Array("d", 3), mp.RawArray("b", 9)]
    p = mp.Process(target=child, args=objs)
    p.start(); p.join()
    keep = pickle.dumps(objs[0])
    print(runtime.shm_prefix(), flush=True)
"""


def test_nothing_left_in_dev_shm(tmp_path):
    assert run_and_list_leftovers(tmp_path, LEAK_SCRIPT) == []


STDLIB_SEM_KILLED_SCRIPT = """
import os, signal, sys, time
import multiprocessing as mp
import multiprocessing.synchronize as std
from multiprocessing import resource_tracker
import dragon

def child(path):
    # The standard library makes the semaphore, then registers it with the
    # resource tracker (where a fresh process starts one: the slow part);
    # this child dies there, before SemLock's constructor returns.
    def register(name, rtype):
        with open(path + ".tmp", "w") as f:
            f.write(name)
        os.rename(path + ".tmp", path)
        while True:
            time.sleep(60)

    resource_tracker.register = register
    std.Lock(ctx=mp.get_context("spawn"))

if __name__ == "__main__":
    mp.set_start_method("dragon")
    path = sys.argv[1]
    p = mp.Process(target=child, args=(path,))
    p.start()
    while not os.path.exists(path):
        if not p.is_alive():
            sys.exit("the child ended with %s" % p.exitcode)
        time.sleep(0.01)
    name = open(path).read()
    assert os.path.exists("/dev/shm/sem." + name.lstrip("/")), name
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    print(name, flush=True)
"""


def test_a_stdlib_semaphore_of_a_process_killed_while_making_it_goes_with_the_run(tmp_path):
    # CPython's test suite makes a standard-library semaphore in every process
    # that imports it, and kills processes: the run removes what they left.
    path = str(tmp_path / "name")
    r = run_script(write_script(tmp_path, STDLIB_SEM_KILLED_SCRIPT), path)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip().splitlines()[-1]
    assert name.startswith("/mp-")
    assert not shm_exists("sem." + name[1:])


NO_TEMPLATE_SCRIPT = """
import pickle
import multiprocessing as mp
import dragon
from dragon import runtime

from dragon import synchronize, sharedctypes

if __name__ == "__main__":
    # No start method chosen: no template is started.
    objs = [synchronize.Lock(), synchronize.Event(), sharedctypes.Value("i"), synchronize.Condition()]
    kept = pickle.dumps(objs)  # exported: their names stay until the run ends
    assert runtime.template_pid() is None
    print(runtime.shm_prefix(), flush=True)
"""


def test_nothing_left_without_a_template(tmp_path):
    assert run_and_list_leftovers(tmp_path, NO_TEMPLATE_SCRIPT) == []


def test_objects_travel_through_a_queue_to_a_running_process(ctx):
    q, out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=h.use_objects_from_queue, args=(q, out))
    p.start()
    lock, ev, value, arr = ctx.Lock(), ctx.Event(), ctx.Value("i", 1), ctx.RawArray("i", 3)
    q.put((lock, ev, value, arr))  # after the start: by handle
    assert out.get(timeout=60) == "done"
    assert ev.wait(5) and value.value == 2 and arr[0] == 99
    p.join(30)
