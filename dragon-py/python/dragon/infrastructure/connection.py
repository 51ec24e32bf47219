"""HPE Dragon's ``dragon.infrastructure.connection``: ``Connection`` and
``Pipe`` are this runtime's channel connections
(:class:`dragon.connection.Connection`, :func:`dragon.connection.Pipe`), with
the API of ``multiprocessing.connection``. The stream connections of a
process started with ``stdout=PIPE`` are
:class:`dragon.native._streams.OutputConnection` (``recv()`` returns text).
``ConnectionOptions`` is accepted and has no effect.
"""
from __future__ import annotations

from ..connection import Connection, Pipe

__all__ = ["Connection", "Pipe", "ConnectionOptions"]


class ConnectionOptions:
    """Accepted for HPE compatibility; no option has an effect here."""

    class CreationPolicy:
        EXTERNALLY_MANAGED = 0
        PRE_CREATED = 1
        RECEIVER_CREATES = 2
        SENDER_CREATES = 3

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
