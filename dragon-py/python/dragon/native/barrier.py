"""HPE Dragon's native barrier (``dragon.native.barrier.Barrier``): a
shared-memory barrier of the run (:class:`dragon.synchronize.Barrier`, the
API of :class:`threading.Barrier` across processes).

``Barrier(parties=2, action=None, timeout=None)``; ``wait(timeout=None)``
returns the caller's arrival index, ``reset()``, ``abort()``, ``parties``,
``n_waiting``, ``broken``. A broken barrier raises
:class:`BrokenBarrierError` (``threading.BrokenBarrierError``). ``m_uid`` is
accepted and has no effect.
"""
from __future__ import annotations

from typing import Callable

import threading

from .. import synchronize as _sync

__all__ = ["Barrier", "BrokenBarrierError"]

BrokenBarrierError = threading.BrokenBarrierError


class Barrier(_sync.Barrier):
    """A barrier for ``parties`` processes or threads."""

    def __init__(self, parties: int = 2, action: Callable[[], object] | None = None,
                 timeout: float | None = None, m_uid: int | None = None) -> None:
        if isinstance(parties, bool) or not isinstance(parties, int):
            raise ValueError("The parties value must be an integer.")
        if parties < 1:
            raise ValueError("The number of parties must be at least 1.")
        if action is not None and not callable(action):
            raise ValueError("The action argument must be callable or None.")
        if timeout is not None and timeout < 0:
            raise ValueError("The timeout must not be negative.")
        _sync.Barrier.__init__(self, parties, action, timeout)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None and timeout < 0:
            raise ValueError("The timeout must not be negative.")
        return _sync.Barrier.wait(self, timeout)
