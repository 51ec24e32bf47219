"""HPE Dragon's ``dragon.native`` API on this runtime, so that programs
written for HPE Dragon run here.

====================  ==========================================================
name                  what it is here
====================  ==========================================================
``Process``           :class:`dragon.native.process.Process` (callables and executables)
``ProcessTemplate``   :class:`dragon.native.process.ProcessTemplate`
``Popen``             :class:`dragon.native.process.Popen` (``PIPE``/``STDOUT``/``DEVNULL``)
``ProcessGroup``      :class:`dragon.native.process_group.ProcessGroup`
``Queue``             :class:`dragon.native.queue.Queue` (a channel queue, joinable on request)
``Lock``              :class:`dragon.native.lock.Lock` (``recursive=True`` for an RLock)
``Semaphore``         :class:`dragon.native.semaphore.Semaphore` (``bounded=True``)
``Event``             :class:`dragon.native.event.Event`
``Barrier``           :class:`dragon.native.barrier.Barrier`
``Value``, ``Array``  :mod:`dragon.native.value`, :mod:`dragon.native.array` (shared ctypes)
``Pool``              :class:`dragon.pool.Pool` (the channel pool)
``cpu_count``         :func:`dragon.native.machine.cpu_count` (all nodes of the run)
``Policy``            :class:`dragon.infrastructure.policy.Policy`
====================  ==========================================================

Names other than ``Pool`` are imported on first use, so importing one
submodule (a child process does, to run its target) does not import the
others.
"""
import importlib
from typing import TYPE_CHECKING, Any

from ..pool import Pool as Pool  # the template preloads dragon.pool: free in children

if TYPE_CHECKING:  # what __getattr__ imports on first use, named for type checkers
    from ..infrastructure.policy import Policy as Policy
    from .array import Array as Array
    from .barrier import Barrier as Barrier
    from .event import Event as Event
    from .lock import Lock as Lock
    from .machine import cpu_count as cpu_count
    from .process import Popen as Popen
    from .process import Process as Process
    from .process import ProcessError as ProcessError
    from .process import ProcessTemplate as ProcessTemplate
    from .process import current as current
    from .process_group import ProcessGroup as ProcessGroup
    from .queue import Queue as Queue
    from .semaphore import Semaphore as Semaphore
    from .value import Value as Value

_WHERE = {
    "Process": "process",
    "ProcessTemplate": "process",
    "Popen": "process",
    "ProcessError": "process",
    "current": "process",
    "ProcessGroup": "process_group",
    "Queue": "queue",
    "Lock": "lock",
    "Semaphore": "semaphore",
    "Event": "event",
    "Barrier": "barrier",
    "Value": "value",
    "Array": "array",
    "cpu_count": "machine",
}

__all__ = sorted(_WHERE) + ["Policy", "Pool"]


def __getattr__(name: str) -> Any:
    if name == "Policy":
        from ..infrastructure.policy import Policy

        return Policy
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError("module 'dragon.native' has no attribute %r" % name)
    value = getattr(importlib.import_module("." + mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
