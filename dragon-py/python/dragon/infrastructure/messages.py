"""``PIPE``, ``STDOUT`` and ``DEVNULL`` as HPE Dragon's
``dragon.infrastructure.messages`` exports them (the values of
:mod:`subprocess`). HPE's message protocol itself has no counterpart here."""
from __future__ import annotations

from subprocess import DEVNULL, PIPE, STDOUT

__all__ = ["PIPE", "STDOUT", "DEVNULL"]
