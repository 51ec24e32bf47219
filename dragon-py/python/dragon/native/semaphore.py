"""HPE Dragon's native semaphore (``dragon.native.semaphore.Semaphore``): a
shared-memory semaphore of the run (:mod:`dragon.synchronize`).

``Semaphore(value=1, bounded=False)``; ``acquire(blocking=True,
timeout=None)``, ``release(n=1)`` and ``get_value()``. A bounded semaphore
refuses (``ValueError``) a release above its initial value. ``m_uid`` is
accepted and has no effect.
"""
from __future__ import annotations

from typing import Any

from .. import _native
from .. import synchronize as _sync

__all__ = ["Semaphore"]


class Semaphore(_sync.SemLock):
    """A counting semaphore shared by the run's processes."""

    _native_type = _native.Semaphore

    _semlock: _native.Semaphore

    def __init__(self, value: int = 1, *, m_uid: int | None = None, bounded: bool = False) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("semaphore initial value must be an integer >= 0, not %r" % (value,))
        self._bounded = bool(bounded)
        self._initial_value = value
        _sync.SemLock.__init__(self, _native.Semaphore(value, value if bounded else None))

    def _make_methods(self) -> None:
        pass  # acquire/release below take HPE's arguments

    def __getstate__(self) -> tuple[bool, int, bytes]:
        return (self._bounded, self._initial_value, self._semlock.handle)

    def __setstate__(self, state: Any) -> None:
        self._bounded, self._initial_value, handle = state
        self._semlock = _native.Semaphore.attach(handle)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one unit, waiting (at most ``timeout`` seconds) while there
        is none; ``False`` if none came."""
        return self._semlock.acquire(blocking, timeout)

    def release(self, n: int = 1) -> None:
        """Give back ``n`` units."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError("n must be a positive integer, not %r" % (n,))
        if self._bounded and self._semlock.get_value() + n > self._initial_value:
            raise ValueError("BoundedSemaphore value would exceed its initial value of %d"
                             % self._initial_value)
        for _ in range(n):
            self._semlock.release()

    def get_value(self) -> int:
        return self._semlock.get_value()

    def __repr__(self) -> str:
        value: int | str
        try:
            value = self.get_value()
        except Exception:
            value = "unknown"
        return "<dragon.native.semaphore.Semaphore value=%s%s>" % (
            value, " bounded=%d" % self._initial_value if self._bounded else "")
