"""HPE Dragon's ``dragon.mpbridge.queues``: the ``dragon`` start method's
queues (:mod:`dragon.queues`) under HPE Dragon's names."""
from __future__ import annotations

from typing import Any

from .. import queues as _queues

__all__ = ["DragonQueue", "DragonJoinableQueue", "DragonSimpleQueue", "Queue", "JoinableQueue", "SimpleQueue"]

#: A channel queue (``multiprocessing.Queue`` under ``dragon``).
DragonQueue = _queues.Queue
#: A channel queue with ``task_done``/``join``.
DragonJoinableQueue = _queues.JoinableQueue
#: A simple channel queue.
DragonSimpleQueue = _queues.SimpleQueue


def Queue(maxsize: int = 0, *, ctx: Any = None, use_base_impl: bool = True) -> _queues.Queue:
    """A queue (``maxsize <= 0``: unbounded, as in ``multiprocessing``)."""
    return _queues.Queue(maxsize, ctx=ctx)


def JoinableQueue(maxsize: int = 0, *, ctx: Any = None, use_base_impl: bool = True) -> _queues.JoinableQueue:
    """A joinable queue."""
    return _queues.JoinableQueue(maxsize, ctx=ctx)


def SimpleQueue(*, ctx: Any = None, use_base_impl: bool = True) -> _queues.SimpleQueue:
    """A simple queue."""
    return _queues.SimpleQueue(ctx=ctx)
