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

from ..pool import Pool  # the template preloads dragon.pool: free in children

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


def __getattr__(name):
    if name == "Policy":
        from ..infrastructure.policy import Policy

        return Policy
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError("module 'dragon.native' has no attribute %r" % name)
    value = getattr(importlib.import_module("." + mod, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
