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
``_native.pool_*`` codecs; a loom model checks the ledger). What is
Python's is this module's (the standard ``Pool`` subclass, the handler
threads and callbacks) and :mod:`dragon._pool_part`'s (the task and result
channels, pickling, the worker).
"""
from __future__ import annotations

import os
import queue
import threading
import time

import multiprocessing
from multiprocessing import pool as _mp_pool
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

from . import _log, _remote
from ._pool_part import MAX_ATTACHMENTS, Results, Tasks, ended_how, fail_tasks, main_import_error, worker
from .errors import WorkerLostError

__all__ = ["Pool", "WorkerLostError", "RemoteTraceback", "MaybeEncodingError", "AsyncResult"]

#: Most workers per pool (every worker is attached to the pool's channels,
#: and so are the owner and, briefly, replaced workers being swept).
MAX_WORKERS = 1000


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
            self._inqueue = Tasks(self._processes)
            self._outqueue = Results(self._inqueue._pending)
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
                slot = inqueue._keeper.take(inqueue._led)
                if slot is None:
                    break
                try:
                    w = Process(ctx, target=worker,
                                args=(inqueue, outqueue, initializer, initargs, maxtasksperchild,
                                      wrap_exception, slot),
                                kwargs={} if not cpus or not cpus[slot] else {"cpus": cpus[slot]})
                    w.name = w.name.replace("Process", "PoolWorker")
                    w.daemon = True
                    w._dragon_slot = slot
                    w.start()
                except BaseException:
                    inqueue._keeper.not_started(slot)
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
                    _log.logger.warning("pool worker process %s %s", w.pid, ended_how(w.exitcode))
                if slot is not None:
                    notice = inqueue._keeper.exited(led, slot, w.pid, w.exitcode)
                    if notice is not None:
                        outqueue._send_notice(notice)
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
        led = inqueue._led
        reason = inqueue._keeper.broken(any(led.started(w._dragon_slot) for w in pool))
        if reason is not None:
            # Workers die before they can run anything (their stderr says
            # why): instead of restarting them forever while the caller
            # waits, fail every task.
            if inqueue._broken is None:
                main_error = main_import_error(ctx)
                if main_error:
                    reason += ". Each of them failed importing the main module: %s" % main_error
                util.info("dragon pool: %s" % reason)
                outqueue._broken_reason = reason
                inqueue._broken = threading.Thread(target=fail_tasks, args=(inqueue, outqueue),
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
