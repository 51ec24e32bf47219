"""HPE Dragon's native event (``dragon.native.event.Event``): a
shared-memory event of the run (:class:`dragon.synchronize.Event`).

``set()``, ``clear()``, ``is_set()``, ``wait(timeout=None)`` (a negative
timeout does not wait). As in HPE Dragon, ``with event:`` sets the event on
entry and clears it on exit. ``m_uid`` is accepted and has no effect.
"""
from __future__ import annotations

from typing import Self

from .. import synchronize as _sync

__all__ = ["Event"]


class Event(_sync.Event):
    """An event flag shared by the run's processes."""

    def __init__(self, m_uid: int | None = None) -> None:
        _sync.Event.__init__(self)

    def __enter__(self) -> Self:
        self.set()
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
