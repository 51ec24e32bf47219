"""One node's part of a :class:`dragon.pool.Pool`: what its workers take
their tasks from and send their results to, and the workers themselves.

* :class:`Tasks`: the task channel, the robust lock tasks are taken under
  and the ledger that records them (see :mod:`dragon.pool`, "Worker
  loss").
* :class:`Results`: the result channel, read by the pool's result handler
  thread.
* :func:`worker`: the body of a worker process.
* The messages between them: the Rust ``pool`` crate's formats.

A pool on one node is one part (:mod:`dragon.pool`); a pool across nodes
is one part per node, each made and used on its node
(:mod:`dragon._pool_nodes`).
"""
from __future__ import annotations

import functools
import itertools
import os
import pickle
import threading

from multiprocessing import process as _mp_process
from multiprocessing import util
from multiprocessing.pool import (
    ExceptionWithTraceback,
    MaybeEncodingError,
    _helper_reraises_exception,
    mapstar,
    starmapstar,
)

from . import _native, _wire
from ._block import SharedBlock
from .errors import BrokenPoolError, DragonError, InitializerError, MessageTooLargeError, WorkerLostError

__all__ = ["Tasks", "Results", "TaskSplitter", "worker", "fail_tasks"]

#: Bytes per ring slot (messages up to about 230 bytes travel inline).
SLOT_SIZE = 256
#: Ring slots of the task channel (at least; twice the workers if more).
TASK_CAPACITY = 1024
#: Ring slots of the result channel.
RESULT_CAPACITY = 1024
#: Processes that may be attached to a pool's channels at once (the most a
#: channel allows).
MAX_ATTACHMENTS = 1023

# The ledger (``_native.PoolLedger``): int64 words in a shared block: the
# next task to be taken, the tasks sent, and per slot the task its worker
# runs (or idle) and whether it started. Its size for ``slots`` workers:
ledger_size = _native.pool_ledger_size



def decode_result(data):
    """``(seq, job, index, result)`` of a result message; a result that
    cannot be unpickled here becomes the task's failure."""
    seq, job, i = _native.pool_decode_result(data)
    try:
        obj = pickle.loads(memoryview(data)[_RESULT_HEADER:])
    except Exception as e:
        obj = (False, MaybeEncodingError(e, "<the task's result: it could not be unpickled here>"))
    return seq, job, i, obj


# Messages (the pool crate's formats, byte for byte those of the struct
# formats in brackets). Task: header (b"T", seq, job, index, kind,
# len(function bytes): "<cqqqBI"), pickled function, pickled payload.
task_header = _native.pool_task_header
# Result: header (b"R", seq, job, index: "<cqqq"), then the pickled (ok, value).
result_header = _native.pool_result_header
_RESULT_HEADER = _native.POOL_RESULT_HEADER
# Lost tasks: seq .. seq+count-1 died with a worker (pid -1: not known):
# b"L", seq, count, pid, exit code ("<cqqqq").
_lost_notice = _native.pool_lost
# End of results (the standard handlers' None).
_END = _native.POOL_END

# Task kinds.
_CALL, _CALL_KW, _MAP, _STARMAP = _native.POOL_CALL, _native.POOL_CALL_KW, _native.POOL_MAP, _native.POOL_STARMAP
STOP = _native.POOL_STOP

# "pid" of a lost-task message for tasks failed because the pool is broken.
NOT_RUN = _native.POOL_NOT_RUN_PID

# Returned by the result getter for a message that concerns no live job:
# the standard result handler looks the job up, finds nothing, moves on.
NOTHING = (-1, -1, None)


# How a process with exit code ``exitcode`` ended, for messages ("was
# killed by SIGKILL", "exited with code 1"; None: "ended").
ended_how = _native.pool_ended_how


def main_import_error(ctx):
    """What importing the main module raised in the run's template, if it
    failed there (its workers then fail the same way): a text, or ''."""
    if getattr(ctx, "_name", None) != "dragon":
        return ""
    from . import runtime

    try:
        return runtime.main_import_error()
    except Exception:
        return ""


class TaskSplitter:
    """What a pool's task side sends of a standard pool task, the function
    pickled once per job (for :class:`Tasks` and, across nodes,
    :class:`dragon._pool_nodes.NodeTasks`)."""

    _fkey = None  # (job, id(function)) of the cached function bytes
    _fbytes = b""

    def split(self, task):
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


class Tasks(TaskSplitter):
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
        self._block = SharedBlock(ledger_size(slots))
        self._map()
        self._led.init(base)
        # Parent only.
        self._pending = {}  # seq -> (job, index), or None for a stop message
        self._sent = base
        self._slot_cpus = None  # slot -> the CPUs its worker runs on (a Policy's cpu_affinity)
        self._mutex = threading.Lock()  # the worker list and slots
        self._keeper = _native.PoolSlots(slots)  # free slots, workers that died before starting
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
    def put(self, task):
        """Send a task (the standard pool's ``(job, i, func, args, kwds)``) or
        a stop message (``None``). Called by the task handler thread only."""
        if task is None:
            self._send(None, task_header(self._sent, -1, -1, STOP, 0))
            return
        job, i, kind, fb, payload = self.split(task)
        head = task_header(self._sent, job, i, kind, len(fb)) + fb
        self._send((job, i), _wire.dumps(payload, head))

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


class Results:
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
            seq, job, i, obj = decode_result(data)
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
                if pid == NOT_RUN:
                    err = BrokenPoolError(self._broken_reason)
                    self._extra.append((task[0], task[1], (False, err)))
                    continue
                if pid < 0:
                    why = "a pool worker process died while taking this task from the pool's queue"
                else:
                    why = "pool worker process %d %s while running this task" % (pid, ended_how(code))
                err = WorkerLostError(why + " (the task is not run again)")
                self._extra.append((task[0], task[1], (False, err)))
            return self._extra.pop() if self._extra else NOTHING
        return NOTHING


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


def fail_tasks(tasks, results):
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
        if kind != STOP:
            results._report_lost(seq, 1, NOT_RUN, 0)


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


def worker(tasks, results, initializer=None, initargs=(), maxtasks=None, wrap_exception=False, slot=0,
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
    header = result_header
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
            if kind == STOP:
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
            head = header(seq, job, i)
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
