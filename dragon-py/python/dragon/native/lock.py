"""HPE Dragon's native lock (``dragon.native.lock.Lock``): a shared-memory
lock of the run (:mod:`dragon.synchronize`), recursive on request.

``Lock()`` may be released by any process or thread; ``Lock(recursive=True)``
only by the thread that holds it, which may take it again. A lock whose
holder died is taken over by the next ``acquire``. ``m_uid`` is accepted and
has no effect. Beyond the standard API, HPE's ``is_recursive()``,
``is_mine()`` and ``count()``.
"""
from __future__ import annotations

from typing import Any

from .. import _native
from .. import synchronize as _sync

__all__ = ["Lock"]


class Lock(_sync.SemLock):
    """A lock shared by the run's processes (see the module docstring)."""

    _semlock: _native.Lock | _native.RLock

    def __init__(self, m_uid: int | None = None, recursive: bool = False) -> None:
        self._recursive = bool(recursive)
        _sync.SemLock.__init__(self, _native.RLock() if self._recursive else _native.Lock())

    def __getstate__(self) -> tuple[bool, bytes]:
        return (self._recursive, self._semlock.handle)

    def __setstate__(self, state: Any) -> None:
        self._recursive, handle = state
        self._semlock = (_native.RLock if self._recursive else _native.Lock).attach(handle)
        self._make_methods()

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:  # replaced per instance
        return self._semlock.acquire(block, timeout)

    def release(self) -> None:  # replaced per instance
        self._semlock.release()

    def is_recursive(self) -> bool:
        return self._recursive

    def is_mine(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._semlock._is_mine()

    def count(self) -> int:
        """How many times the calling thread holds the lock (0 or 1 for a
        lock that is not recursive)."""
        return self._semlock._count()

    def __repr__(self) -> str:
        kind = "recursive " if self._recursive else ""
        try:
            state = "held by this thread" if self.is_mine() else (
                "free" if self._semlock._get_value() else "held")
        except Exception:
            state = "unknown"
        return "<dragon.native.lock.Lock %s%s>" % (kind, state)
