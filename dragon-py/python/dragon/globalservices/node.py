"""HPE Dragon's ``dragon.globalservices.node``: ``get_list()`` (node ids),
``query(ident)`` (a node's descriptor), ``query_total_cpus()``. Answered from
:mod:`dragon.native.machine`."""
from __future__ import annotations

from ..native import machine as _machine

__all__ = ["get_list", "query", "query_all", "query_total_cpus"]


def get_list() -> list:
    """Ids of the run's nodes."""
    return [d.h_uid for d in _machine.directory()]


def query(ident) -> _machine.NodeDescriptor:
    """The descriptor of a node, by id or host name (``KeyError`` if the run
    has no such node)."""
    return _machine.find_node(ident)


def query_all() -> list:
    return list(_machine.directory())


def query_total_cpus() -> int:
    return _machine.cpu_count()
