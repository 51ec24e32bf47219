"""The ``dragon`` start method for :mod:`multiprocessing`.

Importing :mod:`dragon` registers :class:`DragonContext` under the name
``"dragon"`` (so ``multiprocessing.set_start_method("dragon")`` and
``multiprocessing.get_context("dragon")`` work) and rebinds the top-level
factories of :mod:`multiprocessing` (``Queue``, ``Lock``, ``Pool``, ...) to
functions that ask the *current* context, so that programs using the
``fork``/``spawn``/``forkserver`` methods keep their stock objects while
programs using ``dragon`` get this package's. Classes inside the standard
submodules (``multiprocessing.pool.Pool``, ``multiprocessing.dummy``, the
managers) are never replaced.

In a run of several nodes, ``ProcessPoolExecutor`` and ``Manager`` are
still the standard library's, but three private details of theirs cannot
cross nodes, and :mod:`dragon._crossnode` mends them when this context
starts their processes (only in such a run; on one node they are
untouched):

* the executor's call queue (``concurrent.futures.process._SafeQueue``)
  carries its bytes on an OS pipe: before its first worker starts, its two
  pipe ends are swapped for ends of a channel (its lock, semaphore and
  feeder thread stay the stdlib's), because a pipe cannot reach a worker
  on another node;
* the executor keys its workers by pid, and a worker reports
  ``os.getpid()`` when it exits; pids repeat across nodes, so a worker on
  another node is known by a key unique in the run (its node and pid),
  which its process object gives as ``pid`` and its result queue reports;
* a Manager's server listens on a unix socket of its node by default; it
  listens on TCP on its node's address instead, so that proxies on other
  nodes reach it (with the same authkey handshake).

Executor workers then go round-robin over the nodes like any process;
Manager servers stay on the node that makes them.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing import context as _mp_context
from multiprocessing import process as _mp_process

__all__ = ["DragonProcess", "DragonContext", "register", "FACTORIES"]

START_METHOD = "dragon"


class DragonProcess(_mp_process.BaseProcess):
    """A process started by the run's template (a pre-imported fork server)."""

    _start_method = START_METHOD

    @staticmethod
    def _Popen(process_obj):
        from . import _placement, _remote, _wire

        _wire.install_executor_fallback()  # lambdas for ProcessPoolExecutor (no-op without one)
        node = _placement.node_for(process_obj)
        remote = _remote.RemotePopen
        if _remote.multinode():
            from . import _crossnode

            # Executor workers and Manager servers (see the module docs).
            node, remote = _crossnode.prepare(process_obj, node)
        if node != _remote.this_node():
            if _placement.node_named(process_obj):
                return remote(process_obj, node)
            from .errors import NotLocalError

            try:
                return remote(process_obj, node, free=True)
            except NotLocalError:
                # It holds objects of this node only (_placement): it starts
                # here, as a process of this node.
                if _remote.multinode():
                    from . import _crossnode

                    _crossnode.here_after_all(process_obj)
        from .popen import Popen

        return Popen(process_obj)


class DragonContext(_mp_context.BaseContext):
    """Context object of the ``dragon`` start method.

    Factories not overridden here build the standard classes bound to this
    context (so they use :class:`DragonProcess`).
    """

    _name = START_METHOD
    Process = DragonProcess

    def cpu_count(self):
        """CPUs of the run: this machine's (``os.cpu_count()``, or a Slurm
        allocation's CPUs on it) on one node; on several, the sum of the CPUs
        the run may use on each."""
        from .native import machine

        return machine.cpu_count()

    # -- queues and pipes (dragon.queues, dragon.connection) ---------------------
    def Queue(self, maxsize=0):
        """A queue on a shared-memory channel."""
        from .queues import Queue

        return Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize=0):
        """A queue with ``task_done``/``join`` on a shared-memory channel."""
        from .queues import JoinableQueue

        return JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self):
        """A simple queue on a shared-memory channel."""
        from .queues import SimpleQueue

        return SimpleQueue(ctx=self.get_context())

    def Pipe(self, duplex=True):
        """Two connection ends on shared-memory channels."""
        from .connection import Pipe

        return Pipe(duplex)

    # -- synchronisation objects and shared values (dragon.synchronize,
    #    dragon.sharedctypes) ---------------------------------------------------
    def Lock(self):
        """A non-recursive lock in shared memory."""
        from .synchronize import Lock

        return Lock(ctx=self.get_context())

    def RLock(self):
        """A recursive lock in shared memory."""
        from .synchronize import RLock

        return RLock(ctx=self.get_context())

    def Semaphore(self, value=1):
        """A semaphore in shared memory."""
        from .synchronize import Semaphore

        return Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value=1):
        """A bounded semaphore in shared memory."""
        from .synchronize import BoundedSemaphore

        return BoundedSemaphore(value, ctx=self.get_context())

    def Condition(self, lock=None):
        """A condition variable in shared memory (with a dragon lock; any
        other lock gets the standard implementation)."""
        from .synchronize import Condition, Lock, RLock

        if lock is None or isinstance(lock, (Lock, RLock)):
            return Condition(lock, ctx=self.get_context())
        from multiprocessing.synchronize import Condition as StdCondition

        return StdCondition(lock, ctx=self.get_context())

    def Event(self):
        """An event in shared memory."""
        from .synchronize import Event

        return Event(ctx=self.get_context())

    def Barrier(self, parties, action=None, timeout=None):
        """A barrier in shared memory."""
        from .synchronize import Barrier

        return Barrier(parties, action, timeout, ctx=self.get_context())

    def RawValue(self, typecode_or_type, *args):
        """A ctypes object in shared memory."""
        from .sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type, size_or_initializer):
        """A ctypes array in shared memory."""
        from .sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    def Value(self, typecode_or_type, *args, lock=True):
        """A ctypes object in shared memory, with a lock."""
        from .sharedctypes import Value

        return Value(typecode_or_type, *args, lock=lock, ctx=self.get_context())

    def Array(self, typecode_or_type, size_or_initializer, *, lock=True):
        """A ctypes array in shared memory, with a lock."""
        from .sharedctypes import Array

        return Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self.get_context())

    # -- pools (dragon.pool) -----------------------------------------------------
    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, *, policy=None,
             processes_per_policy=None):
        """A process pool whose tasks and results travel on shared-memory
        channels (a subclass of the standard Pool); ``policy`` (a Policy or
        a list of them) and ``processes_per_policy`` place its workers, as
        for :class:`dragon.pool.Pool`."""
        from .pool import Pool

        return Pool(processes, initializer, initargs, maxtasksperchild, context=self.get_context(), policy=policy,
                    processes_per_policy=processes_per_policy)

    def _check_available(self):
        # Called by get_context("dragon") and set_start_method("dragon"):
        # start the template now, without waiting for it, so that it imports
        # while the program goes on.
        from . import runtime

        runtime.ensure_template()


# The start-method hook module, installed next to the package (see
# dragon-py/python/hook/purelib/_dragon_hook.py) holds the stand-in context
# and the factories' dispatchers, so that the hook can install them without
# importing dragon. It imports nothing of dragon: the stand-in imports dragon
# on its first use, which turns it into the DragonContext below.
try:
    import _dragon_hook as _hook
except ImportError as e:  # pragma: no cover - a broken install
    raise ImportError("dragon is installed without its _dragon_hook module (the start-method hook); "
                      "reinstall the package") from e

FACTORIES = _hook.FACTORIES


def register() -> DragonContext:
    """Register the ``dragon`` context and the dispatching factories.

    Idempotent: importing :mod:`dragon` twice (or reloading) changes nothing.
    """
    ctx = _mp_context._concrete_contexts.get(START_METHOD)
    if isinstance(ctx, _hook.LazyContext):
        # The hook's stand-in becomes the context itself, so that references
        # taken before this import (the default context keeps one after
        # set_start_method) are the real context.
        ctx.__class__ = DragonContext
    elif not isinstance(ctx, DragonContext):
        ctx = DragonContext()
        _mp_context._concrete_contexts[START_METHOD] = ctx
    _hook.install_dispatchers(multiprocessing)
    from .connection import install_wait

    install_wait()
    return ctx
