"""HPE Dragon's ``dragon.mpbridge.synchronize``: the ``dragon`` start
method's locks and friends (:mod:`dragon.synchronize`) under HPE Dragon's
names."""
from __future__ import annotations

from typing import Any, Callable

from .. import synchronize as _sync

__all__ = [
    "DragonLock", "DragonRLock", "DragonSemaphore", "DragonBoundedSemaphore", "DragonCondition",
    "DragonEvent", "DragonBarrier",
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
]

DragonLock = _sync.Lock
DragonRLock = _sync.RLock
DragonSemaphore = _sync.Semaphore
DragonBoundedSemaphore = _sync.BoundedSemaphore
DragonCondition = _sync.Condition
DragonEvent = _sync.Event
DragonBarrier = _sync.Barrier


def Lock(*, ctx: Any = None, use_base_impl: bool = True) -> _sync.Lock:
    return _sync.Lock(ctx=ctx)


def RLock(*, ctx: Any = None, use_base_impl: bool = True) -> _sync.RLock:
    return _sync.RLock(ctx=ctx)


def Semaphore(value: int = 1, *, ctx: Any = None, use_base_impl: bool = True) -> _sync.Semaphore:
    return _sync.Semaphore(value, ctx=ctx)


def BoundedSemaphore(value: int = 1, *, ctx: Any = None, use_base_impl: bool = True) -> _sync.BoundedSemaphore:
    return _sync.BoundedSemaphore(value, ctx=ctx)


def Condition(lock: Any = None, *, ctx: Any = None, use_base_impl: bool = True) -> _sync.Condition:
    return _sync.Condition(lock, ctx=ctx)


def Event(*, ctx: Any = None, use_base_impl: bool = True) -> _sync.Event:
    return _sync.Event(ctx=ctx)


def Barrier(parties: int, action: Callable[[], object] | None = None, timeout: float | None = None, *,
            ctx: Any = None, use_base_impl: bool = True) -> _sync.Barrier:
    return _sync.Barrier(parties, action, timeout, ctx=ctx)
