"""``multiprocessing.Pool`` on shared-memory channels.

:class:`Pool` is a subclass of :class:`multiprocessing.pool.Pool`: the
result classes (``AsyncResult``, ``MapResult``, the ``imap`` iterators),
the three handler threads, ``close``/``terminate``/``join`` and every
method's semantics are the standard library's. What changes is the
transport and the worker:

* Tasks travel on one channel shared by the workers, results on another
  (``transport-shm`` rings in the run's shared memory, not pipes).
* A task is a small header (sequence number, job, index, kind) plus the
  pickled function and the pickled arguments. The function is pickled once
  per job, not once per task, and a worker unpickles each distinct
  function once. A result is a header plus the pickled ``(ok, value)``, so
  a result that cannot be unpickled in the parent fails its own task with a
  clear error instead of killing the result thread (the standard pool hangs
  there).
* Workers may start processes: a task can open a Pool of its own (nested
  pools). Inside a worker ``current_process().daemon`` is false for that
  reason; seen from the parent, workers are daemonic as in the standard
  library (terminated at exit). A worker whose pool's owner died exits by
  itself.

Worker loss
-----------

A worker that dies while it runs a task (``SIGKILL``, ``os._exit``, a
crash in C code, the OOM killer) does not hang the pool: that task's result
becomes :class:`~dragon.errors.WorkerLostError` (saying which process and
how it ended), the pool starts a replacement worker, and every other task
runs as usual. The task is *not* run again: a task that kills its worker
deterministically would otherwise kill worker after worker forever, and a
task that died half-way may have had side effects. Callers that want a
retry resubmit on ``WorkerLostError``.

How the pool knows which task was lost, exactly, whatever instruction the
worker died at:

* Workers take tasks one at a time under a shared robust lock (a holder
  that dies releases it to the next taker), and record the sequence number
  of the task they took in their slot of a shared *ledger* before releasing
  the lock; the ledger also holds the next expected sequence number and the
  number of tasks the parent has sent.
* When a worker exits, the parent reads its slot: a recorded task without a
  result is lost. The notice goes through the result channel, behind
  everything the dead worker had sent, so a result that made it is never
  reported lost.
* A worker that dies after taking a task but before recording it (the
  instructions in between) dies holding the lock. The next taker sees that
  the task it receives is not the expected one (or, with nothing left to
  take, that fewer tasks were recorded than sent) and reports the gap.

The ledger, the take, lost-task detection and the message headers are the
Rust ``pool`` crate's (``_native.PoolLedger``, ``_native.pool_take``, the
``_native.pool_*`` codecs; a loom model checks the ledger); this module
keeps what is Python's: the standard ``Pool`` subclass, pickling, the
handler threads and callbacks.
"""
from __future__ import annotations

import functools
import itertools
import os
import pickle
import queue
import signal
import threading
import time

import multiprocessing
from multiprocessing import pool as _mp_pool
from multiprocessing import process as _mp_process
from multiprocessing import util
from multiprocessing.pool import (  # noqa: F401  (re-exported, as the standard module has them)
    CLOSE,
    INIT,
    RUN,
    TERMINATE,
    ApplyResult,
    AsyncResult,
    ExceptionWithTraceback,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
    MaybeEncodingError,
    RemoteTraceback,
    _helper_reraises_exception,
    mapstar,
    starmapstar,
)

from . import _log, _native, _remote, _wire
from .errors import BrokenPoolError, DragonError, InitializerError, MessageTooLargeError, WorkerLostError
from ._block import SharedBlock

__all__ = ["Pool", "WorkerLostError", "RemoteTraceback", "MaybeEncodingError", "AsyncResult"]

#: Bytes per ring slot (messages up to about 230 bytes travel inline).
SLOT_SIZE = 256
#: Ring slots of the task channel (at least; twice the workers if more).
TASK_CAPACITY = 1024
#: Ring slots of the result channel.
RESULT_CAPACITY = 1024
#: Processes that may be attached to a pool's channels at once (the most a
#: channel allows).
MAX_ATTACHMENTS = 1023
#: Most workers per pool (every worker is attached to the pool's channels,
#: and so are the owner and, briefly, replaced workers being swept).
MAX_WORKERS = 1000

# The ledger (``_native.PoolLedger``): int64 words in a shared block,
# ``2 + 2 * slots`` of them: the next task to be taken, the tasks sent, and
# per slot the task its worker runs (or idle) and whether it started.
def _ledger_size(slots):
    """Bytes of the ledger of ``slots`` workers."""
    return 8 * (2 + 2 * slots)


#: Workers that die before running the worker loop (their arguments could
#: not be unpickled, say), in a row, none started, that break the pool.
MAX_START_FAILURES = _native.POOL_MAX_START_FAILURES


def _decode_result(data):
    """``(seq, job, index, result)`` of a result message; a result that
    cannot be unpickled here becomes the task's failure."""
    seq, job, i = _native.pool_decode_result(data)
    try:
        obj = pickle.loads(memoryview(data)[_RESULT_HEADER:])
    except Exception as e:
        obj = (False, MaybeEncodingError(e, "<the task's result: it could not be unpickled here>"))
    return seq, job, i, obj


def _failed_to_start(exitcode):
    """Whether a worker that ended before running the worker loop failed
    by itself (an error, a crash) rather than being killed from outside
    (SIGKILL, SIGTERM, SIGINT: an operator, the OOM killer), which says
    nothing about the next worker."""
    if exitcode is None:
        return False
    return _native.pool_failed_to_start(exitcode)

# Messages (the pool crate's formats, byte for byte those of the struct
# formats in brackets). Task: header (b"T", seq, job, index, kind,
# len(function bytes): "<cqqqBI"), pickled function, pickled payload.
_task_header = _native.pool_task_header
# Result: header (b"R", seq, job, index: "<cqqq"), then the pickled (ok, value).
_result_header = _native.pool_result_header
_RESULT_HEADER = _native.POOL_RESULT_HEADER
# Lost tasks: seq .. seq+count-1 died with a worker (pid -1: not known):
# b"L", seq, count, pid, exit code ("<cqqqq").
_lost_notice = _native.pool_lost
# End of results (the standard handlers' None).
_END = b"N"

# Task kinds.
_CALL, _CALL_KW, _MAP, _STARMAP, _STOP = range(5)

# "pid" of a lost-task message for tasks failed because the pool is broken.
_NOT_RUN = _native.POOL_NOT_RUN_PID

# Returned by the result getter for a message that concerns no live job:
# the standard result handler looks the job up, finds nothing, moves on.
_NOTHING = (-1, -1, None)


def _guarded(callback):
    """A callback whose exceptions are printed, not raised: callbacks run in
    the result thread, which must not die (the standard pool hangs then)."""
    if callback is None:
        return None

    def call(value):
        try:
            callback(value)
        except Exception:
            import sys
            import traceback

            print("Exception in pool callback %r:" % (callback,), file=sys.stderr)
            traceback.print_exc()

    return call


def _ended_how(exitcode):
    if exitcode is None:
        return "ended"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "signal %d" % -exitcode
        return "was killed by %s" % name
    return "exited with code %d" % exitcode


class _Tasks:
    """The pool's task side: the channel, the lock tasks are taken under,
    and the ledger. Pickles (to the workers) by handles.

    ``base`` is the number of the first task (a pool across nodes gives
    each node's tasks numbers of their own: see :mod:`dragon._pool_nodes`);
    ``capacity`` the ring's slots (default: enough for ``slots`` workers)."""

    _multinode = False

    def __init__(self, slots, base=0, capacity=None):
        self._slots = slots
        if capacity is None:
            capacity = max(TASK_CAPACITY, 2 * slots + 8)
        self._ch = _native.Channel.create(capacity, SLOT_SIZE, 0, MAX_ATTACHMENTS)
        self._lock = _native.Lock()
        self._block = SharedBlock(_ledger_size(slots))
        self._map()
        self._led.init(base)
        # Parent only.
        self._pending = {}  # seq -> (job, index), or None for a stop message
        self._sent = base
        self._slot_cpus = None  # slot -> the CPUs its worker runs on (a Policy's cpu_affinity)
        self._fkey = None  # (job, id(function)) of the cached function bytes
        self._fbytes = b""
        self._free = list(range(slots))
        self._mutex = threading.Lock()  # the worker list and slots
        self._failures = _native.PoolStartFailures()  # workers in a row that died before starting
        self._broken = None  # the thread failing every task, once the pool is broken
        self._done = False

    def _map(self):
        self._led = _native.PoolLedger(self._block.handle, self._slots)

    def __getstate__(self):
        _wire.keep_alive(self._ch)
        return (self._ch.handle, self._lock.handle, self._block, self._slots)

    def __setstate__(self, state):
        handle, lock, self._block, self._slots = state
        self._ch = _native.Channel.attach(handle)
        self._lock = _native.Lock.attach(lock)
        self._map()

    # -- parent ---------------------------------------------------------------
    def _take_slot(self):
        slot = self._free.pop(0)
        self._led.reset_slot(slot)
        return slot

    def _free_slot(self, slot):
        self._led.finish(slot)
        self._free.append(slot)

    def put(self, task):
        """Send a task (the standard pool's ``(job, i, func, args, kwds)``) or
        a stop message (``None``). Called by the task handler thread only."""
        if task is None:
            self._send(None, _task_header(self._sent, -1, -1, _STOP, 0))
            return
        job, i, kind, fb, payload = self._split(task)
        head = _task_header(self._sent, job, i, kind, len(fb)) + fb
        self._send((job, i), _wire.dumps(payload, head))

    def _split(self, task):
        """``(job, index, kind, function bytes, payload)`` of a standard
        pool task."""
        job, i, func, args, kwds = task
        if func is mapstar:
            kind = _MAP
            func, payload = args[0]
        elif func is starmapstar:
            kind = _STARMAP
            func, payload = args[0]
        elif kwds:
            kind, payload = _CALL_KW, (args, kwds)
        else:
            kind, payload = _CALL, args
        # The function is pickled once per job. (A job's functions live as
        # long as the job: the same id means the same function.)
        key = (job, id(func))
        if key != self._fkey:
            self._fkey = None
            self._fbytes = bytes(_wire.dumps_function(func))
            self._fkey = key
        return job, i, kind, self._fbytes, payload

    def _send(self, entry, data):
        seq = self._sent
        self._pending[seq] = entry
        try:
            _wire.send_blocking(self._ch, data, -2)
        except BaseException:
            del self._pending[seq]
            raise
        self._sent = seq + 1
        # After the message is in the ring: a taker that reads this count
        # and then finds the ring empty knows every task below it was taken.
        self._led.publish_sent(seq + 1)

    def _drain(self):
        """Take one message without recording it (terminate only)."""
        return self._ch.recv(False) is not None

    def _release_names(self):
        """Remove the lock's and ledger's names: no worker attaches any more."""
        self._done = True
        for f in (self._lock._destroy, lambda: _native.segment_unlink(self._block.name)):
            try:
                f()
            except Exception:
                pass


class _ResultReader:
    """``outqueue._reader`` as the standard result handler uses it."""

    def __init__(self, results):
        self._results = results

    def poll(self, timeout=0.0):
        return _wire.poll(self._results._ch, timeout)


class _Results:
    """The pool's result channel. Pickles (to the workers) by handle."""

    def __init__(self, pending):
        self._ch = _native.Channel.create(RESULT_CAPACITY, SLOT_SIZE, 0, MAX_ATTACHMENTS)
        self._pending = pending
        self._extra = []
        self._reader = _ResultReader(self)
        self._broken_reason = None

    def __getstate__(self):
        _wire.keep_alive(self._ch)
        return self._ch.handle

    def __setstate__(self, handle):
        self._ch = _native.Channel.attach(handle)
        self._pending = None
        self._extra = []
        self._reader = _ResultReader(self)

    def put(self, obj):
        """The standard handlers' end-of-results sentinel (``None``)."""
        if obj is not None:
            raise TypeError("a pool's result queue carries only its end marker")
        _wire.send_blocking(self._ch, _END, -2)

    def _report_lost(self, seq, count, pid, exitcode):
        self._send_notice(_lost_notice(seq, count, pid, exitcode))

    def _send_notice(self, notice):
        _wire.send_blocking(self._ch, notice, -2)

    def get(self):
        """The next ``(job, index, (ok, value))`` for the standard result
        handler, ``None`` at the end. Called by the result handler only."""
        if self._extra:
            return self._extra.pop()
        try:
            _, data = self._ch.recv(True, None)
        except DragonError as e:
            raise EOFError(str(e)) from None
        kind = data[:1]
        if kind == b"R":
            seq, job, i, obj = _decode_result(data)
            self._pending.pop(seq, None)
            return job, i, obj
        if kind == _END:
            return None
        if kind == b"L":
            seq, count, pid, code = _native.pool_decode_lost(data)
            pending = self._pending
            for s in range(seq + count - 1, seq - 1, -1):
                task = pending.pop(s, None)
                if task is None:
                    continue
                if pid == _NOT_RUN:
                    err = BrokenPoolError(self._broken_reason)
                    self._extra.append((task[0], task[1], (False, err)))
                    continue
                if pid < 0:
                    why = "a pool worker process died while taking this task from the pool's queue"
                else:
                    why = "pool worker process %d %s while running this task" % (pid, _ended_how(code))
                err = WorkerLostError(why + " (the task is not run again)")
                self._extra.append((task[0], task[1], (False, err)))
            return self._extra.pop() if self._extra else _NOTHING
        return _NOTHING


class Pool(_mp_pool.Pool):
    """A process pool whose tasks and results travel on shared-memory
    channels; the API of :class:`multiprocessing.pool.Pool`.

    ``context`` defaults to the ``dragon`` context. See the module docs for
    nested pools and for what happens when a worker dies.

    In a run of several nodes the workers spread over every node (``policy``,
    a :class:`~dragon.infrastructure.policy.Policy` or a list of them, with
    ``processes_per_policy`` workers each, restricts or shapes that); see
    :mod:`dragon._pool_nodes`.
    """

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None,
                 policy=None, processes_per_policy=None):
        # The standard __init__ cannot be reused: it starts the worker
        # handler as the *standard* class's method, which would start
        # standard workers. Same attributes, same threads, this class.
        self._pool = []  # first: __del__ looks at them if we raise
        self._state = INIT
        self._ctx = context or multiprocessing.get_context("dragon")
        # Where the workers go: None on one node without a policy (every
        # worker here, as always); else one (node, cpus) per worker.
        self._plan = None
        dragon_ctx = getattr(self._ctx, "_name", None) == "dragon"
        if (policy is not None or processes_per_policy is not None) and not dragon_ctx:
            raise ValueError("policy and processes_per_policy place dragon processes: the pool's context must be "
                             "the dragon one, not %r" % (self._ctx,))
        if dragon_ctx and (policy is not None or processes_per_policy is not None or _remote.multinode()):
            from . import _pool_nodes

            self._plan = _pool_nodes.plan(processes, policy, processes_per_policy)
            processes = len(self._plan)
        if processes is None:
            # The run's CPUs (a Slurm allocation's, every node's), not the machine's.
            count = getattr(self._ctx, "cpu_count", None)
            processes = (count() if count is not None else os.cpu_count()) or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if processes > MAX_WORKERS:
            raise ValueError("a dragon Pool has at most %d workers, not %d (its channels take at most %d "
                             "attached processes)" % (MAX_WORKERS, processes, MAX_ATTACHMENTS))
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        self._maxtasksperchild = maxtasksperchild
        self._initializer = initializer
        self._initargs = initargs
        self._setup_queues()
        self._taskqueue = queue.SimpleQueue()
        # Wakes the worker handler when the cache empties or the state changes.
        self._change_notifier = self._ctx.SimpleQueue()
        if self._inqueue._multinode:
            self._inqueue._notifier = self._change_notifier
        self._cache = _mp_pool._PoolCache(notifier=self._change_notifier)
        try:
            self._repopulate_pool()
        except Exception:
            for w in self._pool:
                if w.exitcode is None:
                    w.terminate()
            for w in self._pool:
                w.join()
            self._inqueue._release_names()
            raise

        cls = type(self)
        self._worker_handler = self._start_handler(
            cls._handle_workers,
            (self._cache, self._taskqueue, self._ctx, self.Process, self._processes, self._pool,
             self._inqueue, self._outqueue, self._initializer, self._initargs, self._maxtasksperchild,
             self._wrap_exception, self._get_sentinels(), self._change_notifier))
        self._task_handler = self._start_handler(
            cls._handle_tasks, (self._taskqueue, self._quick_put, self._outqueue, self._pool, self._cache))
        self._result_handler = self._start_handler(
            cls._handle_results, (self._outqueue, self._quick_get, self._cache))
        self._terminate = util.Finalize(
            self, cls._terminate_pool,
            args=(self._taskqueue, self._inqueue, self._outqueue, self._pool, self._change_notifier,
                  self._worker_handler, self._task_handler, self._result_handler, self._cache),
            exitpriority=15)
        self._state = RUN

    @staticmethod
    def _start_handler(target, args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t._state = RUN
        t.start()
        return t

    # -- transport ---------------------------------------------------------------
    def _setup_queues(self):
        plan = self._plan
        if plan is not None and any(node != _remote.this_node() for node, _ in plan):
            from . import _pool_nodes

            self._inqueue = _pool_nodes.NodeTasks(self._ctx, plan)
            self._outqueue = self._inqueue.results
        else:
            self._inqueue = _Tasks(self._processes)
            self._outqueue = _Results(self._inqueue._pending)
            if plan is not None and any(cpus for _, cpus in plan):
                self._inqueue._slot_cpus = [cpus for _, cpus in plan]
        self._quick_put = self._inqueue.put
        self._quick_get = self._outqueue.get

    def _get_sentinels(self):
        # Worker sentinels and the change notifier; not the result queue (the
        # result handler reads it; waking the worker handler on every result
        # would only make it spin until then). Across nodes, also each node's
        # agent (see dragon._pool_nodes), whose end is that node's end.
        sentinels = [self._change_notifier._reader]
        if self._inqueue._multinode:
            sentinels += self._inqueue.agent_sentinels()
            self._inqueue._sentinels = sentinels
        return sentinels

    @staticmethod
    def _help_stuff_finish(inqueue, task_handler, size):
        if inqueue._multinode:
            inqueue.abort()
            return
        # Make room for a task handler blocked on a full task channel.
        while task_handler.is_alive() and inqueue._drain():
            time.sleep(0)

    # -- workers -----------------------------------------------------------------
    @staticmethod
    def _repopulate_pool_static(ctx, Process, processes, pool, inqueue, outqueue, initializer, initargs,
                                maxtasksperchild, wrap_exception):
        """Bring the number of workers up to ``processes`` (each in a free
        ledger slot)."""
        if inqueue._multinode:
            inqueue.repopulate(ctx, Process, pool, initializer, initargs, maxtasksperchild, wrap_exception)
            return
        from .popen import batch_starts

        cpus = inqueue._slot_cpus
        # batch_starts: the template forks while the next requests are sent.
        with inqueue._mutex, batch_starts():
            for _ in range(processes - len(pool)):
                if not inqueue._free:
                    break
                slot = inqueue._take_slot()
                try:
                    w = Process(ctx, target=_worker,
                                args=(inqueue, outqueue, initializer, initargs, maxtasksperchild,
                                      wrap_exception, slot),
                                kwargs={} if not cpus or not cpus[slot] else {"cpus": cpus[slot]})
                    w.name = w.name.replace("Process", "PoolWorker")
                    w.daemon = True
                    w._dragon_slot = slot
                    w.start()
                except BaseException:
                    inqueue._free_slot(slot)
                    raise
                pool.append(w)
                util.debug("added worker")

    @staticmethod
    def _reap_workers(pool, inqueue, outqueue):
        """Join exited workers; report the task each was running, if any, as
        lost. Returns whether any worker was removed."""
        cleaned = False
        with inqueue._mutex:
            led = inqueue._led
            for i in reversed(range(len(pool))):
                w = pool[i]
                if w.exitcode is None:
                    continue
                util.debug("cleaning up worker %d" % i)
                w.join()
                slot = getattr(w, "_dragon_slot", None)
                if w.exitcode != 0 and not inqueue._done:
                    _log.logger.warning("pool worker process %s %s", w.pid, _ended_how(w.exitcode))
                if slot is not None:
                    notice = led.lost(slot, w.pid, w.exitcode)
                    if notice is not None:
                        outqueue._send_notice(notice)
                    inqueue._failures.worker_exited(led.started(slot), w.exitcode)
                    inqueue._free_slot(slot)
                del pool[i]
                cleaned = True
        return cleaned

    @staticmethod
    def _maintain_pool(ctx, Process, processes, pool, inqueue, outqueue, initializer, initargs,
                       maxtasksperchild, wrap_exception):
        if inqueue._multinode:
            inqueue.maintain(ctx, Process, pool, initializer, initargs, maxtasksperchild, wrap_exception)
            return
        if not Pool._reap_workers(pool, inqueue, outqueue):
            return
        led, failures = inqueue._led, inqueue._failures
        if failures.broken(any(led.started(w._dragon_slot) for w in pool)):
            # Workers die before they can run anything (their stderr says
            # why): instead of restarting them forever while the caller
            # waits, fail every task.
            if inqueue._broken is None:
                reason = ("the pool's worker processes die before they start (%d in a row, the last %s; "
                          "their stderr says why): the task was not run"
                          % (failures.in_a_row, _ended_how(failures.last)))
                main_error = _main_import_error(ctx)
                if main_error:
                    reason += ". Each of them failed importing the main module: %s" % main_error
                util.info("dragon pool: %s" % reason)
                outqueue._broken_reason = reason
                inqueue._broken = threading.Thread(target=_fail_tasks, args=(inqueue, outqueue),
                                                   name="dragon-pool-broken", daemon=True)
                inqueue._broken.start()
            return
        Pool._repopulate_pool_static(ctx, Process, processes, pool, inqueue, outqueue, initializer,
                                     initargs, maxtasksperchild, wrap_exception)

    # -- callbacks -------------------------------------------------------------------
    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        return super().apply_async(func, args, kwds, _guarded(callback), _guarded(error_callback))

    def _map_async(self, func, iterable, mapper, chunksize=None, callback=None, error_callback=None):
        self._check_running()
        if chunksize is None:
            # As the standard pool computes it, from the number of workers
            # the pool keeps rather than of those alive right now (none,
            # for a moment, when workers die as they start: the standard
            # computation then divides by zero).
            if not hasattr(iterable, "__len__"):
                iterable = list(iterable)
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            if extra:
                chunksize += 1
        return super()._map_async(func, iterable, mapper, chunksize, _guarded(callback), _guarded(error_callback))

    # -- end -----------------------------------------------------------------------
    def terminate(self):
        super().terminate()
        self._inqueue._release_names()

    def join(self):
        super().join()
        self._inqueue._release_names()


# ---------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------

def _report_gap(rch, first, count):
    """Tasks ``first .. first+count-1`` were taken by a worker that died
    before recording them."""
    _wire.send_blocking(rch, _lost_notice(first, count, -1, 0), -2)


# Take the next task under the pool's lock and record it in a ledger slot:
# ``_take(ledger, ch, lock, report, slot, check=None, timeout=None)``
# returns ``(data, seq, job, index, kind, function length)``, or None when
# ``check()`` said to stop or the timeout elapsed; ``report(first, count)``
# reports tasks taken by a worker that died before recording them.
_take = _native.pool_take


def _main_import_error(ctx):
    """What importing the main module raised in the run's template, if it
    failed there (its workers then fail the same way): a text, or ''."""
    if getattr(ctx, "_name", None) != "dragon":
        return ""
    from . import runtime

    try:
        return runtime.main_import_error()
    except Exception:
        return ""


def _fail_tasks(tasks, results):
    """Thread of a broken pool (no worker can start): take every task as a
    worker would and fail it."""
    ch, lock, led = tasks._ch, tasks._lock, tasks._led
    report = functools.partial(_report_gap, results._ch)
    while not tasks._done:
        try:
            taken = _take(led, ch, lock, report, None, None, 0.2)
        except Exception:
            return
        if taken is None:
            continue
        seq, kind = taken[1], taken[4]
        if kind != _STOP:
            results._report_lost(seq, 1, _NOT_RUN, 0)


class _InitializerFailed(Exception):
    """Internal: this worker's initializer failed (the task is not run)."""


def _watch(pid):
    """A ``check()`` that says whether process ``pid`` (of this node) has
    ended."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return lambda: True  # already gone
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return lambda: bool(poller.poll(0))


def _worker(tasks, results, initializer=None, initargs=(), maxtasks=None, wrap_exception=False, slot=0,
            owner=None, cpus=None, started=None):
    """Body of a pool worker: take a task, run it, send its result.

    ``owner``: the pid of the process whose end ends this worker (on this
    node); by default the parent (a worker on another node than its pool's
    owner watches its node's agent instead). ``cpus``: the CPUs to run on.
    ``started``: a message to send to the result channel once started (a
    pool across nodes gives a node tasks once its workers start)."""
    if (maxtasks is not None) and not (isinstance(maxtasks, int) and maxtasks >= 1):
        raise AssertionError("Maxtasks {!r} is not valid".format(maxtasks))
    # May start processes (nested pools); the pool still terminates it.
    _mp_process.current_process()._config["daemon"] = False
    if cpus:
        os.sched_setaffinity(0, cpus)
    check = None
    if owner is not None:
        check = _watch(owner)
    else:
        parent = _mp_process.parent_process()
        if parent is not None:
            def check():
                return not parent.is_alive()

    init_failed = None
    if initializer is not None:
        try:
            initializer(*initargs)
        except Exception as e:
            # Fail the next task with it (not a silent crash and respawn
            # loop), then leave: a successor tries the initializer again.
            err = InitializerError("the pool's initializer %s raised %s: %s (in worker process %d); the task "
                                   "was not run" % (getattr(initializer, "__qualname__", initializer),
                                                    type(e).__name__, e, os.getpid()))
            init_failed = ExceptionWithTraceback(err, e.__traceback__) if wrap_exception else err
            maxtasks = 1

    ch, lock, led, rch = tasks._ch, tasks._lock, tasks._led, results._ch
    # Started (an initializer that kills the process counts as a failed start).
    led.mark_started(slot)
    if started is not None:
        _wire.send_blocking(rch, started, -2)
    loads = pickle.loads
    dumps = _wire.dumps
    take = _take
    report = functools.partial(_report_gap, rch)
    result_header = _result_header
    finish = led.finish
    hsize = _native.POOL_TASK_HEADER
    funcs = {}
    completed = 0
    try:
        while maxtasks is None or completed < maxtasks:
            taken = take(led, ch, lock, report, slot, check)
            if taken is None:
                util.debug("pool worker: the pool's owner is gone -- exiting")
                break
            data, seq, job, i, kind, flen = taken
            if kind == _STOP:
                finish(slot)
                util.debug("worker got sentinel -- exiting")
                break

            func = None
            try:
                if init_failed is not None:
                    raise _InitializerFailed
                fb = data[hsize:hsize + flen]
                func = funcs.get(fb)
                if func is None:
                    func = loads(fb)
                    if len(funcs) >= 64:
                        funcs.clear()
                    funcs[fb] = func
                payload = loads(memoryview(data)[hsize + flen:])
                if kind == _MAP:
                    result = (True, list(map(func, payload)))
                elif kind == _STARMAP:
                    result = (True, list(itertools.starmap(func, payload)))
                elif kind == _CALL:
                    result = (True, func(*payload))
                else:
                    args, kwds = payload
                    result = (True, func(*args, **kwds))
            except _InitializerFailed:
                result = (False, init_failed)
            except Exception as e:
                if wrap_exception and func is not _helper_reraises_exception:
                    e = ExceptionWithTraceback(e, e.__traceback__)
                result = (False, e)
            head = result_header(seq, job, i)
            try:
                out = dumps(result, head)
            except Exception as e:
                wrapped = MaybeEncodingError(e, result[1])
                util.debug("Possible encoding error while sending result: %s" % wrapped)
                out = dumps((False, wrapped), head)
            try:
                _wire.send_blocking(rch, out, -2)
            except MessageTooLargeError as e:
                _wire.send_blocking(rch, dumps((False, MaybeEncodingError(e, "<result of %d bytes>" % len(out))), head),
                                    -2)
            finish(slot)
            data = taken = out = result = func = payload = fb = None
            completed += 1
    except (EOFError, OSError, DragonError) as e:
        util.debug("pool worker: %r -- exiting" % (e,))
    util.debug("worker exiting after %d tasks" % completed)
