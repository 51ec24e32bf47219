"""Locks, semaphores, conditions, events and barriers in shared memory.

The classes have the API of :mod:`multiprocessing.synchronize` (and of
:class:`threading.Barrier` for :class:`Barrier`), on the Rust objects of
``transport-shm``: every blocking call releases the GIL, spins briefly and
then sleeps on a futex, and Ctrl-C interrupts it.

Differences from the standard library, all in the direction of "more works":

* Every object pickles by handle, at any time and to any process of the
  run (through a :class:`~dragon.queues.Queue`, say), not only when a
  process is started.
* A lock whose holder died is not lost: the next ``acquire`` takes it over
  (``lock._semlock.recovered`` is then true until its release).
* ``Condition`` works on a shared condition variable (notifications go to
  the oldest waiters first; waiters that died are skipped).

The shared object's name (what attaching needs) lives as long as the object
that created it, unless it was ever pickled: then until the run ends.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from multiprocessing import process

from . import _native
from ._lifetime import object_created

__all__ = [
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "SEM_VALUE_MAX",
]

SEM_VALUE_MAX = 2**31 - 1

_T = TypeVar("_T")


class SemLock:
    """Base of the lock and semaphore classes: ``_semlock`` is the native
    object, whose ``acquire``/``release`` are bound directly (no Python
    frame in between)."""

    _native_type: Any = None  # set by subclasses
    _semlock: Any  # the native object (a subclass may say which)

    if TYPE_CHECKING:  # bound per instance to the native object's (_make_methods)
        def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...
        def release(self) -> None: ...

    def __init__(self, semlock: Any) -> None:
        object_created()
        self._semlock = semlock
        self._make_methods()

    def _make_methods(self) -> None:
        self.acquire = self._semlock.acquire  # type: ignore[method-assign]
        self.release = self._semlock.release  # type: ignore[method-assign]

    def __enter__(self) -> bool:
        return self._semlock.__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *args: object) -> None:
        return self._semlock.__exit__(*args)  # type: ignore[no-any-return]

    def __getstate__(self) -> Any:
        return self._semlock.handle

    def __setstate__(self, state: Any) -> None:
        self._semlock = self._native_type.attach(state)
        self._make_methods()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SemLock):
            return self._semlock.name == other._semlock.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._semlock.name)


def _owner_name():
    name = process.current_process().name
    if threading.current_thread().name != "MainThread":
        name += "|" + threading.current_thread().name
    return name


class Semaphore(SemLock):
    """A counting semaphore (``multiprocessing.Semaphore``)."""

    _native_type = _native.Semaphore

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        SemLock.__init__(self, _native.Semaphore(value, None))

    def get_value(self) -> int:
        return self._semlock.get_value()  # type: ignore[no-any-return]

    def __repr__(self):
        try:
            value = self._semlock.get_value()
        except Exception:
            value = "unknown"
        return "<%s(value=%s)>" % (type(self).__name__, value)


class BoundedSemaphore(Semaphore):
    """A semaphore that refuses to be released above its initial value."""

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        SemLock.__init__(self, _native.Semaphore(value, value))

    def __repr__(self):
        try:
            value = self._semlock.get_value()
        except Exception:
            value = "unknown"
        return "<%s(value=%s, maxvalue=%s)>" % (type(self).__name__, value, self._semlock.maxvalue)


class Lock(SemLock):
    """A non-recursive lock; any process or thread may release it."""

    _native_type = _native.Lock

    def __init__(self, *, ctx: Any = None) -> None:
        SemLock.__init__(self, _native.Lock())

    def __repr__(self):
        try:
            if self._semlock._is_mine():
                name = _owner_name()
            elif self._semlock._get_value() == 1:
                name = "None"
            elif self._semlock.holder == _pid():
                name = "SomeOtherThread"
            else:
                name = "SomeOtherProcess"
        except Exception:
            name = "unknown"
        return "<%s(owner=%s)>" % (type(self).__name__, name)


class RLock(SemLock):
    """A recursive lock: its owning thread may acquire it again; only that
    thread may release it."""

    _native_type = _native.RLock

    def __init__(self, *, ctx: Any = None) -> None:
        SemLock.__init__(self, _native.RLock())

    def __repr__(self):
        try:
            if self._semlock._is_mine():
                name, count = _owner_name(), self._semlock._count()
            elif self._semlock._get_value() == 1:
                name, count = "None", 0
            elif self._semlock.holder == _pid():
                name, count = "SomeOtherThread", "nonzero"
            else:
                name, count = "SomeOtherProcess", "nonzero"
        except Exception:
            name, count = "unknown", "unknown"
        return "<%s(%s, %s)>" % (type(self).__name__, name, count)


def _pid():
    import os

    return os.getpid()


class _Count:
    """A read-only counter with a semaphore's ``get_value`` (the standard
    ``Condition`` exposes its bookkeeping as semaphores; tests read them)."""

    def __init__(self, get):
        self._get = get

    def get_value(self):
        return self._get()


class Condition:
    """A condition variable bound to a :class:`Lock` or :class:`RLock`
    (a new ``RLock`` by default)."""

    if TYPE_CHECKING:  # bound per instance to the lock's (_make_methods)
        def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...
        def release(self) -> None: ...

    def __init__(self, lock: Lock | RLock | None = None, *, ctx: Any = None) -> None:
        if lock is None:
            lock = RLock()
        if not isinstance(lock, (Lock, RLock)):
            raise TypeError("a dragon Condition needs a dragon Lock or RLock, not %s" % type(lock).__name__)
        if isinstance(lock._semlock, _native.RemoteSync):
            # The condition's waits release and take back its lock as one
            # operation of its node.
            raise ValueError("a Condition is made on its lock's node: this lock is on node %d; make the Condition "
                             "there (where the lock was made) and pass it to this process"
                             % lock._semlock.node)
        object_created()
        self._lock = lock
        self._cond = _native.Condition()
        self._make_methods()

    def _make_methods(self) -> None:
        self.acquire = self._lock.acquire  # type: ignore[method-assign]
        self.release = self._lock.release  # type: ignore[method-assign]
        cond = self._cond
        # What the standard Condition exposes as semaphores: sleepers (not
        # yet returned) and woken-but-not-returned waiters.
        self._sleeping_count = _Count(lambda: cond.waiting + cond.notified_pending)
        self._woken_count = _Count(lambda: cond.notified_pending)
        self._wait_semaphore = _Count(_not_implemented)

    def __getstate__(self):
        return (self._lock, self._cond.handle)

    def __setstate__(self, state):
        self._lock, handle = state
        self._cond = _native.Condition.attach(handle)
        self._make_methods()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> None:
        return self._lock.__exit__(*args)

    def __repr__(self):
        try:
            num_waiters = self._cond.waiting
        except Exception:
            num_waiters = "unknown"
        return "<%s(%s, %s)>" % (type(self).__name__, self._lock, num_waiters)

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notification (or the timeout), and
        acquire the lock again; returns ``False`` if the timeout elapsed."""
        return self._cond.wait(self._lock._semlock, timeout)

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters (the caller must hold the lock)."""
        assert self._lock._semlock._is_mine(), "lock is not owned"
        self._cond.notify(n)

    def notify_all(self) -> None:
        assert self._lock._semlock._is_mine(), "lock is not owned"
        self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], _T], timeout: float | None = None) -> _T:
        """Wait until ``predicate()`` is true (checked with the lock held);
        returns its last value."""
        result = predicate()
        if result:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = None
        while not result:
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
            self.wait(wait)
            result = predicate()
        return result


def _not_implemented():
    raise NotImplementedError("dragon's Condition has no wait semaphore")


class Event:
    """An event flag (``multiprocessing.Event``)."""

    if TYPE_CHECKING:  # bound per instance to the native event's (_make_methods)
        def is_set(self) -> bool: ...
        def set(self) -> None: ...
        def clear(self) -> None: ...
        def wait(self, timeout: float | None = None) -> bool: ...

    def __init__(self, *, ctx: Any = None) -> None:
        object_created()
        self._event = _native.Event()
        self._make_methods()

    def _make_methods(self) -> None:
        ev = self._event
        self.is_set = ev.is_set  # type: ignore[method-assign]
        self.set = ev.set  # type: ignore[method-assign]
        self.clear = ev.clear  # type: ignore[method-assign]
        self.wait = ev.wait  # type: ignore[method-assign]

    def __getstate__(self):
        return self._event.handle

    def __setstate__(self, state):
        self._event = _native.Event.attach(state)
        self._make_methods()

    def __repr__(self) -> str:
        set_status = "set" if self.is_set() else "unset"
        return f"<{type(self).__qualname__} at {id(self):#x} {set_status}>"


class Barrier:
    """A barrier for ``parties`` processes or threads (the API of
    :class:`threading.Barrier`). The last party to arrive calls ``action``
    (in its own process) before anyone is released."""

    def __init__(self, parties: int, action: Callable[[], object] | None = None,
                 timeout: float | None = None, *, ctx: Any = None) -> None:
        object_created()
        self._barrier = _native.Barrier(parties)
        self._action = action
        self._timeout = timeout

    def __getstate__(self):
        return (self._barrier.handle, self._action, self._timeout)

    def __setstate__(self, state):
        handle, self._action, self._timeout = state
        self._barrier = _native.Barrier.attach(handle)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for every party; returns this caller's arrival index
        (``0 .. parties-1``). Raises :class:`threading.BrokenBarrierError`
        if the barrier is or becomes broken (a timeout breaks it)."""
        if timeout is None:
            timeout = self._timeout
        return self._barrier.wait(timeout, self._action)

    def reset(self) -> None:
        """Back to the initial state; current waiters get
        :class:`threading.BrokenBarrierError`."""
        self._barrier.reset()

    def abort(self) -> None:
        """Break the barrier until :meth:`reset`."""
        self._barrier.abort()

    @property
    def parties(self) -> int:
        return self._barrier.parties

    @property
    def n_waiting(self) -> int:
        return self._barrier.n_waiting

    @property
    def broken(self) -> bool:
        return self._barrier.broken

    def __repr__(self):
        cls = type(self)
        if self.broken:
            return f"<{cls.__module__}.{cls.__qualname__} object at {id(self):#x}: broken>"
        return (f"<{cls.__module__}.{cls.__qualname__} object at {id(self):#x}: "
                f"waiters={self.n_waiting}/{self.parties}>")
