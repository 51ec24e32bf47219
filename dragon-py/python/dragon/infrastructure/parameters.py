"""HPE Dragon's ``dragon.infrastructure.parameters``: ``this_process``.

``this_process.my_puid`` is the calling process's puid (see
:mod:`dragon.native.process`); ``this_process.index`` is the index of the
node it runs on (0: one node). HPE's other runtime parameters (memory pool
ids, channel descriptors of its services) have no counterpart here.
"""
from __future__ import annotations

import os

from .policy import Policy  # noqa: F401  (HPE programs import it from here too)

__all__ = ["this_process", "Policy", "POLICY_USER", "POLICY_INFRASTRUCTURE"]


class _ThisProcess:
    """Facts about the calling process (recomputed after ``fork``)."""

    @property
    def my_puid(self) -> int:
        from ..native.process import my_puid

        return my_puid()

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def index(self) -> int:
        """Index of this process's node."""
        return 0

    @property
    def num_nodes(self) -> int:
        from ..native.machine import System

        return System().nnodes

    def __repr__(self):
        return "<this_process puid=%s pid=%d>" % (self.my_puid, os.getpid())


this_process = _ThisProcess()

# HPE passes these channel-level policies to its queues; accepted here.
POLICY_USER = None
POLICY_INFRASTRUCTURE = None
