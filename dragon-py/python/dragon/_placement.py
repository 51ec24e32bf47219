"""Where a process of a multi-node run starts.

* A process with a node chosen for it (``dragon.native.Process`` with a
  :class:`~dragon.infrastructure.policy.Policy` naming a host) starts there.
* Otherwise, inside a ``with Policy(...)`` block that names a host, on that
  host; a block with ``distribution=BLOCK`` fills each node's CPUs before
  the next node.
* Otherwise the processes a program starts go round-robin over the nodes
  (as HPE Dragon places them), starting with the primary node; but a
  process whose arguments hold something that exists only on this node
  (a ``RawValue``/``RawArray``, a standard library ``SharedMemory``
  block, a descriptor other than a ``Pipe`` end's
  socket, such as the standard library's shared heap behind
  ``multiprocessing.heap.BufferWrapper``) starts on this node instead,
  where it can use them (placed on a named node, it fails with
  :class:`~dragon.errors.NotLocalError`).
* A :class:`dragon.pool.Pool` places its workers itself (each process
  object names its node: see :mod:`dragon._pool_nodes`).
* ``ProcessPoolExecutor`` workers are placed as any process (round-robin,
  or by the Policy in force when the executor starts them); see
  :mod:`dragon._crossnode` for what lets them work on another node.
* Processes the runtime starts for itself stay on the node that starts
  them: the standard Pool's workers (the stdlib Pool's queues are OS
  pipes), ``Manager`` servers (their address comes back on an OS pipe; they
  listen on TCP, so proxies reach them from any node) and DDict managers
  (unless the DDict names their node, as it does for each of its nodes).

On one node (no multi-node run) every process starts here, as always.
"""
from __future__ import annotations

import itertools
import threading

from . import _remote

__all__ = ["node_for", "node_named"]

_counter = itertools.count()
_lock = threading.Lock()

# Targets of the runtime's own helper processes: they stay on their node.
_LOCAL_TARGETS = {
    ("dragon._pool_part", "worker"),
    ("multiprocessing.pool", "worker"),
    ("multiprocessing.managers", "BaseManager._run_server"),
    ("dragon.data._managers", "manager_main"),
}


def _is_local_helper(process_obj) -> bool:
    t = getattr(process_obj, "_target", None)
    if t is None:
        return False
    key = (getattr(t, "__module__", None), getattr(t, "__qualname__", None))
    return key in _LOCAL_TARGETS


def _policy_node(nodes) -> int | None:
    from .infrastructure.policy import Policy
    from .native import machine

    policy = Policy.global_policy()
    node = machine.policy_node(policy)
    if node is not None:
        return node
    if policy.distribution == Policy.Distribution.BLOCK:
        total = sum(max(1, n["cpus"]) for n in nodes)
        with _lock:
            k = next(_counter) % total
        for n in nodes:
            k -= max(1, n["cpus"])
            if k < 0:
                return n["index"]
    return None


def node_named(process_obj) -> bool:
    """Whether ``process_obj``'s node was named (by the process itself or
    by a Policy in force that names a host), not chosen freely."""
    if getattr(process_obj, "_dragon_node", None) is not None:
        return True
    from .infrastructure.policy import Policy
    from .native import machine

    return machine.policy_node(Policy.global_policy()) is not None


def node_for(process_obj) -> int:
    """The node ``process_obj`` starts on (this node on a single node)."""
    here = _remote.this_node()
    if not _remote.multinode():
        return here
    explicit = getattr(process_obj, "_dragon_node", None)
    if explicit is not None:
        return int(explicit)
    if _is_local_helper(process_obj):
        return here
    nodes = _remote.nodes()
    if not nodes:
        return here
    chosen = _policy_node(nodes)
    if chosen is not None:
        return chosen
    with _lock:
        return next(_counter) % len(nodes)
