"""dragon.pool.Pool: the standard Pool API on channels, worker loss, nesting."""
import itertools
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import time

import pytest

import _pool_helpers as ph
from conftest import pid_alive, run_processes, run_script, shm_files, wait_until, write_script

import dragon
import dragon.pool
from dragon.errors import BrokenPoolError, InitializerError, WorkerLostError
from dragon.pool import Pool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pool():
    p = multiprocessing.get_context("dragon").Pool(3)
    yield p
    p.terminate()
    p.join()
    assert all(w.exitcode is not None for w in p._pool)


def _all_exited(p):
    return all(w.exitcode is not None for w in p._pool)


# -- the API ----------------------------------------------------------------------

def test_context_builds_the_channel_pool(ctx):
    with ctx.Pool(2) as p:
        assert type(p) is Pool and isinstance(p, multiprocessing.pool.Pool)
        assert len(p._pool) == 2 and all(w.daemon for w in p._pool)
    p.join()
    # The standard classes are untouched.
    assert multiprocessing.pool.Pool.__module__ == "multiprocessing.pool"
    from dragon.native import Pool as NativePool

    assert NativePool is Pool


def test_apply_and_apply_async(pool):
    assert pool.apply(ph.square, (7,)) == 49
    assert pool.apply(ph.add_kw, (1,), {"b": 2, "c": 3}) == 6
    r = pool.apply_async(ph.slow_square, (5, 0.1))
    assert r.get(30) == 25 and r.ready() and r.successful()


def test_map_chunksizes(pool):
    data = list(range(101))
    want = [x * x for x in data]
    for cs in (None, 1, 2, 7, 100, 1000):
        assert pool.map(ph.square, data, cs) == want
    assert pool.map(ph.square, []) == []
    assert pool.map(ph.square, iter(range(5))) == [0, 1, 4, 9, 16]


def test_map_async_and_callbacks(pool):
    got, errs = [], []
    r = pool.map_async(ph.square, range(10), 3, callback=got.append, error_callback=errs.append)
    assert r.get(30) == [x * x for x in range(10)]
    assert got == [[x * x for x in range(10)]] and errs == []
    r = pool.map_async(ph.fail_on, range(10), 1, callback=got.append, error_callback=errs.append)
    with pytest.raises(ValueError, match="bad value 3"):
        r.get(30)
    assert len(got) == 1 and len(errs) == 1 and isinstance(errs[0], ValueError)
    done = threading.Event()
    pool.apply_async(ph.square, (3,), callback=lambda v: (got.append(v), done.set()))
    assert done.wait(30) and got[-1] == 9


def test_a_callback_that_raises_does_not_stop_the_pool(pool, capfd):
    def bad(_):
        raise KeyError("callback broke")

    r = pool.apply_async(ph.square, (2,), callback=bad)
    assert r.get(30) == 4
    r = pool.map_async(ph.fail_on, range(5), 1, error_callback=bad)
    with pytest.raises(ValueError):
        r.get(30)
    assert pool.map(ph.square, range(5)) == [0, 1, 4, 9, 16]
    err = capfd.readouterr().err
    assert err.count("Exception in pool callback") == 2 and "callback broke" in err


def test_imap_and_imap_unordered(pool):
    for cs in (1, 3, 50):
        assert list(pool.imap(ph.square, range(40), cs)) == [x * x for x in range(40)]
        assert sorted(pool.imap_unordered(ph.square, range(40), cs)) == [x * x for x in range(40)]
    it = pool.imap(ph.slow_square, [1, 2, 3])
    assert it.next(30) == 1 and next(it) == 4 and next(it) == 9
    with pytest.raises(StopIteration):
        next(it)


def test_starmap_and_starmap_async(pool):
    pairs = list(zip(range(20), range(20, 0, -1)))
    want = list(itertools.starmap(ph.mul, pairs))
    assert pool.starmap(ph.mul, pairs) == want
    assert pool.starmap(ph.mul, pairs, 6) == want
    got = []
    assert pool.starmap_async(ph.mul, pairs, 4, callback=got.append).get(30) == want
    assert got == [want]


def test_task_exception_carries_the_remote_traceback(pool):
    with pytest.raises(RuntimeError, match="raised in the task") as ei:
        pool.apply(ph.raise_here)
    cause = ei.value.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
    assert "marker: raise_here line" in cause.tb
    # An iterable that raises: the caller's own exception, not a remote one.
    def gen():
        yield 1
        raise IndexError("from the iterable")

    with pytest.raises(IndexError) as ei:
        pool.map(ph.square, gen(), 1)
    assert ei.value.__cause__ is None


def test_unpicklable_argument_is_a_clear_error(pool):
    with pytest.raises(TypeError, match="refuses to be pickled"):
        pool.map(ph.identity, [1, ph.Unpicklable(), 3], 1)
    with pytest.raises(TypeError, match="refuses to be pickled"):
        pool.apply(ph.identity, (ph.Unpicklable(),))
    # A lambda cannot be pickled by reference: it goes by value (test_by_value.py).
    assert pool.apply(lambda: 1) == 1
    assert pool.map(ph.square, range(5)) == [0, 1, 4, 9, 16]


def test_unpicklable_results_are_clear_errors(pool):
    with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="refuses to be pickled"):
        pool.apply(ph.unpicklable_result)
    # Pickles in the worker but cannot be rebuilt in the parent: the standard
    # pool's result thread dies there and the pool hangs.
    with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="refusing to be rebuilt"):
        pool.apply(ph.bad_unpickle_result)
    assert pool.map(ph.square, range(5), 1) == [0, 1, 4, 9, 16]


def test_large_arguments_and_results(pool):
    blob = os.urandom(3 << 20)
    assert pool.apply(ph.identity, (blob,)) == blob
    assert pool.map(len, [blob] * 4, 1) == [len(blob)] * 4


def test_release_task_refs(pool):
    import gc
    import weakref

    objs = [ph.Plain() for _ in range(5)]
    refs = [weakref.ref(o) for o in objs]
    assert pool.map(ph.identity, objs, 1)
    del objs
    gc.collect()
    assert wait_until(lambda: all(r() is None for r in refs), 5)


# -- lifetime ------------------------------------------------------------------------

def test_initializer_globals(ctx):
    with ctx.Pool(2, initializer=ph.init_global, initargs=("from-init",)) as p:
        assert p.map(ph.read_global, range(6), 1) == ["from-init"] * 6


def test_initializer_that_raises_fails_tasks_instead_of_hanging(ctx):
    with ctx.Pool(2, initializer=ph.init_fail) as p:
        with pytest.raises(InitializerError, match="initializer broke") as ei:
            p.map(ph.square, range(4), 1)
        assert "init_fail" in ei.value.__cause__.tb
        with pytest.raises(InitializerError):
            p.apply(ph.square, (2,))
    p.join()


def test_workers_that_cannot_start_break_the_pool_instead_of_hanging(ctx):
    # An initializer that kills its process: every worker dies at start.
    with ctx.Pool(2, initializer=ph.exit_now, initargs=(4,)) as p:
        with pytest.raises(BrokenPoolError, match="die before they start .* exited with code 4"):
            p.map(ph.square, range(10), 1)
        with pytest.raises(BrokenPoolError):
            p.apply(ph.square, (1,))
    p.join()


BROKEN_SCRIPT = """
    import multiprocessing as mp
    import dragon
    from dragon.errors import BrokenPoolError

    def square(x):
        return x * x

    if __name__ == "__main__":
        mp.set_start_method("dragon")

        def init():  # under the guard: workers cannot unpickle it
            pass

        with mp.Pool(2, initializer=init) as p:
            try:
                p.map(square, range(10))
            except BrokenPoolError as e:
                print("BROKEN", e)
"""


def test_unimportable_initializer_is_a_clear_error(tmp_path):
    out = run_script(write_script(tmp_path, BROKEN_SCRIPT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("BROKEN the pool's worker processes die before they start")
    assert "Can't get attribute 'init'" in out.stderr


def test_maxtasksperchild_replaces_workers(ctx):
    with ctx.Pool(2, maxtasksperchild=3) as p:
        first = {w.pid for w in p._pool}
        pids = p.map(ph.pid, range(30), 1)
        assert len(set(pids)) >= 10  # 30 tasks, at most 3 per worker
        assert wait_until(lambda: len(p._pool) == 2 and {w.pid for w in p._pool} != first, 10)
        assert p.map(ph.square, range(10), 1) == [x * x for x in range(10)]
    with pytest.raises(ValueError):
        ctx.Pool(1, maxtasksperchild=0)
    with pytest.raises(ValueError):
        ctx.Pool(0)
    with pytest.raises(ValueError, match="at most 1000 workers"):
        ctx.Pool(5000)


def test_close_join_waits_for_the_work(ctx):
    p = ctx.Pool(2)
    rs = [p.apply_async(ph.slow_square, (i, 0.05)) for i in range(8)]
    p.close()
    with pytest.raises(ValueError):
        p.apply_async(ph.square, (1,))
    p.join()
    assert [r.get(0) for r in rs] == [i * i for i in range(8)]
    assert _all_exited(p) and all(w.exitcode == 0 for w in p._pool)


def test_terminate_while_busy(ctx):
    p = ctx.Pool(3)
    r = p.map_async(time.sleep, [3600] * 1000, 1)  # only terminate ends them within the test's timeout
    time.sleep(0.3)
    workers = list(p._pool)
    p.terminate()
    p.join()
    assert all(w.exitcode is not None for w in workers)
    assert not r.ready()


def test_with_block_terminates(ctx):
    with ctx.Pool(2) as p:
        assert p.map(ph.square, range(3)) == [0, 1, 4]
        workers = list(p._pool)
    p.join()
    assert all(w.exitcode is not None for w in workers)
    with pytest.raises(ValueError):
        p.map(ph.square, [1])


def test_unclosed_pool_is_collected(ctx):
    import gc

    p = ctx.Pool(2)
    workers = list(p._pool)
    assert p.map(ph.square, [2]) == [4]
    with pytest.warns(ResourceWarning):
        del p
        gc.collect()
    assert wait_until(lambda: all(not pid_alive(w.pid) for w in workers), 10)


def test_pool_cannot_be_pickled(ctx):
    import pickle

    with ctx.Pool(1) as p:
        with pytest.raises(NotImplementedError):
            pickle.dumps(p)


# -- many pools, nested pools -----------------------------------------------------------

def test_two_pools_of_different_sizes_at_once(ctx):
    with ctx.Pool(2) as a, ctx.Pool(5) as b:
        ra = a.map_async(ph.slow_square, range(20), 1)
        rb = b.map_async(ph.square, range(500), 7)
        rc = a.starmap_async(ph.mul, [(i, 2) for i in range(50)])
        assert rb.get(60) == [x * x for x in range(500)]
        assert ra.get(60) == [x * x for x in range(20)]
        assert rc.get(60) == [2 * i for i in range(50)]
        assert not {w.pid for w in a._pool} & {w.pid for w in b._pool}


def test_many_pools_alive_at_once_from_threads(ctx):
    pools = [ctx.Pool(n) for n in (1, 2, 3, 1, 2, 4)]
    try:
        out = [None] * len(pools)

        def run(k):
            out[k] = pools[k].map(ph.add_kw, range(200), 7)

        ts = [threading.Thread(target=run, args=(k,)) for k in range(len(pools))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert out == [list(range(200))] * len(pools)
    finally:
        for p in pools:
            p.terminate()
            p.join()


def test_nested_pools(ctx):
    with ctx.Pool(2) as p:
        assert p.map(ph.nested_map, [3, 4, 5], 1) == [5, 14, 30]
        # Seen from the parent the workers are daemonic; inside, they may
        # start processes.
        assert p.map(ph.is_daemon, range(2)) == [False, False]


def test_workers_leave_when_the_pool_owner_dies(ctx):
    q = ctx.Queue()
    owner = ctx.Process(target=ph.nested_workers, args=(q,))
    owner.start()
    workers = q.get(timeout=60)
    assert all(pid_alive(w) for w in workers)
    owner.kill()
    owner.join(30)
    assert wait_until(lambda: not any(pid_alive(w) for w in workers), 20)


# -- worker loss -------------------------------------------------------------------------

def _busy_worker(p, result=None, timeout=10):
    """The worker whose ledger slot records a running task (the task of
    ``result``, if given)."""
    def find():
        tasks = p._inqueue
        want = None
        if result is not None:
            want = [s for s, t in list(tasks._pending.items()) if t == (result._job, 0)]
            if not want:
                return None
        for w in p._pool:
            seq = tasks._led.recorded(w._dragon_slot)
            if seq is not None and (want is None or seq == want[0]):
                return w
        return None

    return wait_until(find, timeout)


def test_worker_killed_mid_task_fails_that_task(ctx):
    with ctx.Pool(2) as p:
        r = p.apply_async(ph.sleep_pid, (60,))
        others = p.map_async(ph.slow_square, range(10), 1)
        w = _busy_worker(p, r)
        assert w is not None
        os.kill(w.pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match=r"process %d was killed by SIGKILL" % w.pid):
            r.get(30)
        assert others.get(30) == [x * x for x in range(10)]
        assert wait_until(lambda: len(p._pool) == 2 and all(x.exitcode is None for x in p._pool), 10)
        assert p.map(ph.square, range(20), 1) == [x * x for x in range(20)]


def test_task_that_exits_its_worker(ctx):
    with ctx.Pool(2) as p:
        with pytest.raises(WorkerLostError, match="exited with code 7"):
            p.apply(ph.exit_now, (7,))
        assert p.apply(ph.square, (4,)) == 16


def test_task_that_always_kills_its_worker_runs_once(ctx):
    runs = ctx.Value("i", 0)
    with ctx.Pool(2) as p:
        with pytest.raises(WorkerLostError, match="SIGKILL"):
            p.starmap(ph.count_and_kill, [(runs, i, 5) for i in range(10)], 1)
        assert runs.value == 1  # not run again: no kill loop
        assert p.map(ph.square, range(10)) == [x * x for x in range(10)]


def test_one_deterministic_killer_among_many(ctx):
    with ctx.Pool(2) as p:
        rs = [p.apply_async(ph.kill_self_on, (i, 5)) for i in range(12)]
        for i, r in enumerate(rs):
            if i == 5:
                with pytest.raises(WorkerLostError):
                    r.get(60)
            else:
                assert r.get(60) == i


def _rogue_holds_lock(p, rogue):
    return wait_until(lambda: p._inqueue._lock.holder == rogue.pid, 10)


@pytest.mark.parametrize("more_tasks", [False, True])
def test_worker_killed_between_taking_and_recording(ctx, more_tasks):
    """A taker that dies holding the lock with a task taken but not
    recorded: the next taker reports the gap (from the next task's number,
    or, with nothing left, from the count of tasks sent)."""
    with ctx.Pool(1) as p:
        hold = p.apply_async(ph.sleep_pid, (1.0,))  # keep the only worker busy
        assert _busy_worker(p, hold) is not None
        rogue = ctx.Process(target=ph.rogue_take, args=(p._inqueue,))
        rogue.start()
        assert _rogue_holds_lock(p, rogue)
        victim = p.apply_async(ph.square, (9,))
        after = p.apply_async(ph.square, (3,)) if more_tasks else None
        rogue.join(30)
        assert rogue.exitcode == 0  # it did take a task
        with pytest.raises(WorkerLostError, match="while taking this task"):
            victim.get(30)
        assert hold.get(30) > 0
        if after is not None:
            assert after.get(30) == 9
        assert p.map(ph.square, range(10), 1) == [x * x for x in range(10)]


def test_random_kills_never_hang_and_lose_only_killed_tasks(ctx):
    """Workers SIGKILLed at random instants (inside a task, while taking
    one, while sending a result): every task ends with its result or with
    WorkerLostError, and no more tasks are lost than workers were killed."""
    import random

    rng = random.Random(1234)
    kills = 0
    with ctx.Pool(3) as p:
        rs = [p.apply_async(ph.slow_square, (i, rng.choice((0, 0, 0.001, 0.003)))) for i in range(1500)]
        deadline = time.monotonic() + 60
        while not all(r.ready() for r in rs) and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.002, 0.03))
            victims = [w for w in list(p._pool) if w.exitcode is None and w.pid]
            if victims and kills < 60:
                try:
                    os.kill(rng.choice(victims).pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        lost = 0
        for i, r in enumerate(rs):
            try:
                assert r.get(60) == i * i
            except WorkerLostError:
                lost += 1
        assert kills > 10 and lost <= kills
        assert p.map(ph.square, range(50), 1) == [x * x for x in range(50)]


# -- scripts: __main__ functions, cleanup --------------------------------------------------

SCRIPT = """
    import multiprocessing as mp, os, sys
    import dragon

    VALUE = None

    def init(v):
        global VALUE
        VALUE = v

    def task(x):
        return (VALUE, x * x)

    def inner(n):
        with mp.Pool(2) as p:
            return sum(p.map(task_sq, range(n)))

    def task_sq(x):
        return x * x

    if __name__ == "__main__":
        mp.set_start_method("dragon")
        print("RUN", os.environ["DRAGON_RUN_ID"], flush=True)
        with mp.Pool(2, initializer=init, initargs=("set-by-init",)) as p:
            print(p.map(task, range(4)))
            print(p.map(inner, [3, 4], 1))
        p2 = mp.Pool(3)   # never closed: the run still ends clean
        print(p2.apply(task_sq, (5,)))
"""


def test_main_module_functions_and_clean_end(tmp_path):
    path = write_script(tmp_path, SCRIPT)
    out = run_script(path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    run_id = lines[0].split()[1]
    assert lines[1] == str([("set-by-init", x * x) for x in range(4)])
    assert lines[2] == "[5, 14]" and lines[3] == "25"
    assert wait_until(lambda: not run_processes(run_id), 10)
    assert wait_until(lambda: not shm_files(run_id), 10)


KILLED_SCRIPT = """
    import multiprocessing as mp, os, sys, time
    import dragon

    def slow(x):
        time.sleep(60)

    if __name__ == "__main__":
        mp.set_start_method("dragon")
        p = mp.Pool(2)
        r = p.map_async(slow, range(4), 1)
        time.sleep(0.5)
        print("RUN", os.environ["DRAGON_RUN_ID"], flush=True)
        os.kill(os.getpid(), 9)
"""


def test_killed_program_leaves_nothing(tmp_path):
    path = write_script(tmp_path, KILLED_SCRIPT)
    out = run_script(path)
    assert out.returncode == -9
    run_id = out.stdout.split()[1]
    assert wait_until(lambda: not run_processes(run_id), 15)
    assert wait_until(lambda: not shm_files(run_id), 15)


def test_many_pools_in_a_row_leave_no_segments(ctx):
    before = set(shm_files(os.environ["DRAGON_RUN_ID"]))
    for _ in range(5):
        with ctx.Pool(2) as p:
            assert p.map(ph.square, range(10)) == [x * x for x in range(10)]
        p.join()
        del p
    import gc

    gc.collect()
    assert wait_until(lambda: set(shm_files(os.environ["DRAGON_RUN_ID"])) <= before, 5), \
        sorted(set(shm_files(os.environ["DRAGON_RUN_ID"])) - before)


# -- the standard classes keep working ------------------------------------------------------

def test_thread_pool_and_stock_pool_still_work(ctx):
    from multiprocessing.pool import ThreadPool

    with ThreadPool(2) as tp:
        assert tp.map(ph.square, range(5)) == [0, 1, 4, 9, 16]
    with multiprocessing.pool.Pool(2, context=ctx) as sp:
        assert type(sp) is multiprocessing.pool.Pool
        assert sp.map(ph.square, range(5)) == [0, 1, 4, 9, 16]


# -- concurrent.futures -------------------------------------------------------------------------

def test_process_pool_executor(ctx):
    import concurrent.futures as cf

    with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        fs = [ex.submit(ph.square, i) for i in range(20)]
        assert [f.result(60) for f in fs] == [i * i for i in range(20)]
        assert list(ex.map(ph.mul, range(10), range(10), chunksize=3)) == [i * i for i in range(10)]
        with pytest.raises(ValueError, match="bad value"):
            ex.submit(ph.fail_on, 3).result(60)
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        ex.submit(ph.square, 1)


def test_process_pool_executor_worker_death(ctx):
    import concurrent.futures as cf
    from concurrent.futures.process import BrokenProcessPool

    ex = cf.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        assert ex.submit(ph.square, 3).result(60) == 9
        f = ex.submit(ph.kill_self)
        with pytest.raises(BrokenProcessPool):
            f.result(60)
        with pytest.raises(BrokenProcessPool):
            ex.submit(ph.square, 2).result(60)
    finally:
        ex.shutdown(wait=True)


def test_process_pool_executor_initializer_and_cancel(ctx):
    import concurrent.futures as cf

    with cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=ph.init_global, initargs=(5,)) as ex:
        assert ex.submit(ph.read_global).result(60) == 5
        slow = [ex.submit(ph.slow_square, i, 0.2) for i in range(6)]
        ex.shutdown(wait=True, cancel_futures=True)
        assert any(f.cancelled() for f in slow)
        assert all(f.result() == i * i for i, f in enumerate(slow) if not f.cancelled())


def test_process_pool_executor_worker_ending_before_it_is_recorded(ctx, monkeypatch):
    """A max_tasks_per_child worker can run its task and report its end
    before the executor has recorded it (its start not yet returned, as on a
    loaded machine): the executor waits for the record instead of losing its
    manager thread to a KeyError (which left every future unresolved)."""
    import concurrent.futures as cf
    import sys
    import threading

    from dragon.context import DragonProcess

    ended_first = []
    real_pid = DragonProcess.pid

    def pid_after_the_worker_ended(self):
        caller = sys._getframe(1)
        if (caller.f_code.co_name == "_spawn_process" and not ended_first
                and threading.current_thread() is threading.main_thread()):
            executor = caller.f_locals["self"]
            if executor._executor_manager_thread is not None:
                # The worker takes the queued task, reports its end and
                # exits, all before _spawn_process records it.
                self.join(120)
                ended_first.append(self.exitcode)
        return real_pid.fget(self)

    monkeypatch.setattr(DragonProcess, "pid", property(pid_after_the_worker_ended), raising=False)
    gate, started = ctx.Event(), ctx.Event()
    ex = cf.ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=1)
    try:
        # The first worker, started before the manager thread, holds the
        # first task (so the second worker is the only one to take the next).
        busy = ex.submit(ph.wait_event, gate, 120, started)
        assert started.wait(120)
        quick = ex.submit(ph.square, 7)  # the second, started while the manager thread runs
        assert quick.result(120) == 49
        assert ended_first == [0]
        gate.set()
        assert busy.result(120) is True
        assert ex.submit(ph.square, 3).result(120) == 9
    finally:
        gate.set()
        ex.shutdown(wait=True)


def test_pool_messages_are_the_struct_formats_byte_for_byte():
    """The pool crate's message headers are those the struct formats of
    the Python pool used ("<cqqqBI", "<cqqq", "<cqqqq"), both ways."""
    import struct

    from dragon import _native

    assert _native.pool_task_header(5, -1, 7, 2, 300) == struct.pack("<cqqqBI", b"T", 5, -1, 7, 2, 300)
    assert _native.pool_result_header(1 << 48, 3, 4) == struct.pack("<cqqq", b"R", 1 << 48, 3, 4)
    assert _native.pool_lost(9, 2, -1, -9) == struct.pack("<cqqqq", b"L", 9, 2, -1, -9)
    task = struct.pack("<cqqqBI", b"T", 5, 6, 7, 4, 1) + b"f"
    assert _native.pool_decode_task(memoryview(task)) == (5, 6, 7, 4, 1)
    assert _native.pool_decode_result(struct.pack("<cqqq", b"R", 1, 2, 3) + b"pickle") == (1, 2, 3)
    assert _native.pool_decode_lost(struct.pack("<cqqqq", b"L", 9, 2, 123, 7)) == (9, 2, 123, 7)
    assert _native.POOL_TASK_HEADER == struct.calcsize("<cqqqBI")
    assert _native.POOL_RESULT_HEADER == struct.calcsize("<cqqq")


def test_pool_take_records_and_reports_gaps_in_the_shared_ledger():
    """_native.pool_take as a worker uses it, one process: a task taken
    and never recorded (by a taker that died) is reported as a gap by the
    next take, before the task it returns, and at an empty ring."""
    import struct

    from dragon import _native
    from dragon._block import SharedBlock

    ch = _native.Channel.create(8, 256)
    lock = _native.Lock()
    block = SharedBlock(8 * 4)
    try:
        led = _native.PoolLedger(block.handle, 1)
        led.init(0)
        view = block.create_memoryview().cast("q")  # the same words, as Python sees them
        for seq in range(4):
            ch.send(struct.pack("<cqqqBI", b"T", seq, 0, seq, 0, 0), -2)
            led.publish_sent(seq + 1)
        gaps = []
        got = _native.pool_take(led, ch, lock, lambda first, count: gaps.append((first, count)), 0)
        assert got[1:] == (0, 0, 0, 0, 0) and led.recorded(0) == 0 and view[2] == 0
        assert ch.recv(False) is not None  # task 1: taken by a taker that dies
        got = _native.pool_take(led, ch, lock, lambda first, count: gaps.append((first, count)), 0)
        assert got[1] == 2 and gaps == [(1, 1)] and view[0] == 3  # NEXT
        assert ch.recv(False) is not None  # task 3, the same
        assert _native.pool_take(led, ch, lock, lambda f, c: gaps.append((f, c)), None, None, 0) is None
        assert gaps == [(1, 1), (3, 1)] and led.next() == 4 and not lock._is_zero()
        led.finish(0)
        assert led.lost(0, 1, -9) is None and view[2] == -1
    finally:
        ch.destroy()
        lock._destroy()
        _native.segment_unlink(block.name)
