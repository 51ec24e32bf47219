"""The machine: nodes of the run and their hardware (HPE Dragon's
``dragon.native.machine``).

:func:`cpu_count` counts the CPUs of every node of the run; :class:`System`
lists the nodes (``nodes`` are node ids, as in HPE Dragon, to pass to
:class:`Node`); :class:`Node` describes one (``hostname``, ``num_cpus``,
``physical_cpus``, ``cpus``, ``num_gpus``, ``ip_addrs``, ``physical_mem``,
``h_uid``...); :func:`current` is the node this process runs on.

On one machine the run has one node, with node id (``h_uid``) 0; its
``num_cpus`` is ``os.cpu_count()``, or inside a Slurm allocation the CPUs
the job has on this node (``SLURM_JOB_CPUS_PER_NODE``). In a
multi-node run (``dragon --hostlist ...``) the node list is the table the
primary node's service sent every node once all had joined (:func:`directory`):
node ids are the nodes' indexes in the host list (0 is the primary, where
the program runs), ``num_cpus`` is what the run may use on each node (the
node service's CPU affinity), and ``cpu_count()`` adds them up.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..infrastructure.policy import Policy

__all__ = ["cpu_count", "current", "Node", "System"]


@dataclasses.dataclass(frozen=True)
class NodeDescriptor:
    """What the runtime knows of one node."""

    h_uid: int
    name: str
    host_name: str
    ip_addrs: tuple[str, ...]
    num_cpus: int
    physical_cpus: int
    cpu_devices: tuple[int, ...]
    physical_mem: int
    accelerators: tuple[int, ...] = ()
    is_primary: bool = False

    @property
    def index(self) -> int:
        return self.h_uid


def _physical_cores() -> int:
    """Distinct (package, core) pairs among the online CPUs."""
    base = "/sys/devices/system/cpu"
    seen = set()
    try:
        entries = os.listdir(base)
    except OSError:
        return os.cpu_count() or 1
    for e in entries:
        if not (e.startswith("cpu") and e[3:].isdigit()):
            continue
        topo = os.path.join(base, e, "topology")
        try:
            with open(os.path.join(topo, "physical_package_id")) as f:
                pkg = f.read().strip()
            with open(os.path.join(topo, "core_id")) as f:
                core = f.read().strip()
        except OSError:
            continue
        seen.add((pkg, core))
    return len(seen) or (os.cpu_count() or 1)


def _physical_mem() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


def ipv4_addrs() -> tuple[str, ...]:
    """IPv4 addresses of the host's interfaces, loopback last."""
    import fcntl
    import struct

    siocgifaddr = 0x8915
    found: list[str] = []
    loop: list[str] = []
    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), siocgifaddr, req)
            except OSError:
                continue  # no IPv4 address on that interface
            addr = socket.inet_ntoa(res[20:24])
            (loop if addr.startswith("127.") else found).append(addr)
    return tuple(found + loop) or ("127.0.0.1",)


_local_node = None


def _this_node() -> NodeDescriptor:
    global _local_node
    if _local_node is None:
        from .. import slurm

        host = socket.gethostname()
        _local_node = NodeDescriptor(
            h_uid=0,
            name=host,
            host_name=host,
            ip_addrs=ipv4_addrs(),
            num_cpus=slurm.local_cpus() or os.cpu_count() or 1,
            physical_cpus=_physical_cores(),
            cpu_devices=tuple(sorted(os.sched_getaffinity(0))),
            physical_mem=_physical_mem(),
            accelerators=(),
            is_primary=True,
        )
    return _local_node


def directory() -> list[NodeDescriptor]:
    """Every node of the run."""
    from .. import _remote

    table = _remote.nodes() if _remote.multinode() else []
    if not table:
        return [_this_node()]
    here = _remote.this_node()
    out = []
    for n in table:
        local = n["index"] == here
        cpus = tuple(sorted(os.sched_getaffinity(0))) if local else tuple(range(n["cpus"]))
        out.append(NodeDescriptor(
            h_uid=n["index"],
            name=n["host"],
            host_name=n["hostname"],
            ip_addrs=tuple(n["addresses"]) or (n["host"],),
            num_cpus=n["cpus"],
            physical_cpus=_physical_cores() if local else n["cpus"],
            cpu_devices=cpus,
            physical_mem=n["memory"],
            accelerators=(),
            is_primary=n["index"] == 0,
        ))
    return out


def _current() -> NodeDescriptor:
    from .. import _remote

    here = _remote.this_node()
    for d in directory():
        if d.h_uid == here:
            return d
    return _this_node()


def _local_names(desc: NodeDescriptor) -> set[str]:
    names = {desc.host_name, desc.name, "localhost"}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    short = desc.host_name.split(".")[0]
    names.add(short)
    return names


def find_node(ident: object) -> NodeDescriptor:
    """The descriptor of the node ``ident`` names: a :class:`Node`, a node
    id, or a host name (or another name or address of the host)."""
    nodes = directory()
    if isinstance(ident, Node):
        return ident._descr
    if isinstance(ident, bool) or ident is None:
        raise ValueError("a node is named by its id (int) or host name (str), not %r" % (ident,))
    if isinstance(ident, int):
        for d in nodes:
            if d.h_uid == ident:
                return d
        raise KeyError("no node with id %d in this run (node ids: %s)" % (ident, [d.h_uid for d in nodes]))
    if isinstance(ident, str):
        for d in nodes:
            if ident in (d.host_name, d.name):
                return d
        for d in nodes:
            if ident in _local_names(d) or ident in d.ip_addrs:
                return d
        raise KeyError("no node named %r in this run (nodes: %s)" % (ident, [d.host_name for d in nodes]))
    raise TypeError("a node is named by its id (int) or host name (str), not %s" % type(ident).__name__)


def cpu_count() -> int:
    """Number of CPUs of all nodes of the run (on one node, logical CPUs as
    ``os.cpu_count()`` counts them, or a Slurm allocation's CPUs on it; on
    several, the CPUs the run may use on each)."""
    return sum(d.num_cpus for d in directory())


class Node:
    """One node of the run, named by its id (``h_uid``, as listed by
    :attr:`System.nodes`) or its host name. Raises :class:`KeyError` if
    the run has no such node."""

    def __init__(self, ident: int | str | Node) -> None:
        self._descr = find_node(ident)

    def __repr__(self) -> str:
        return "Node(%r)" % self._descr.host_name

    def __str__(self) -> str:
        d = self._descr
        return "name=%s, h_uid=%s, hostname=%s, ip=%s" % (d.name, d.h_uid, d.host_name, list(d.ip_addrs))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other._descr.h_uid == self._descr.h_uid

    def __hash__(self) -> int:
        return hash(self._descr.h_uid)

    @property
    def name(self) -> str:
        """The runtime's name for the node (its host name here)."""
        return self._descr.name

    @property
    def h_uid(self) -> int:
        """The node id (0 for the only node today)."""
        return self._descr.h_uid

    huid = h_uid

    @property
    def hostname(self) -> str:
        return self._descr.host_name

    @property
    def ip_addrs(self) -> list[str]:
        """IPv4 addresses of the node (loopback last)."""
        return list(self._descr.ip_addrs)

    ip = ip_addrs

    @property
    def num_cpus(self) -> int:
        """Logical CPUs of the node."""
        return self._descr.num_cpus

    @property
    def physical_cpus(self) -> int:
        """Physical cores of the node."""
        return self._descr.physical_cpus

    @property
    def cpus(self) -> list[int]:
        """The CPU ids processes of the run may use on this node (what
        ``Policy.cpu_affinity`` may name)."""
        return list(self._descr.cpu_devices)

    @property
    def num_gpus(self) -> int:
        return len(self._descr.accelerators)

    @property
    def gpus(self) -> list[int] | None:
        """GPU device ids, or ``None`` when the node has none (as HPE
        Dragon reports it)."""
        return list(self._descr.accelerators) or None

    @property
    def gpu_vendor(self) -> str | None:
        """``None``: no GPU detection on this runtime yet."""
        return None

    @property
    def physical_mem(self) -> int:
        """Physical memory in bytes."""
        return self._descr.physical_mem

    @property
    def is_primary(self) -> bool:
        """Whether this is the node the program's main process runs on."""
        return self._descr.is_primary

    @property
    def transport(self) -> str:
        """How this process's node reaches this node: ``"shm"`` for its own
        node; else what its node service settled on when it linked to that
        node, ``"verbs (<port> to <port>)"`` (RDMA) or ``"tcp (<why not
        RDMA>)"``, or ``"not linked yet"`` (services link on first use)."""
        from .. import _remote

        if not _remote.multinode() or self._descr.h_uid == _remote.this_node():
            return "shm"
        peers: dict[str, str] = _remote.transports().get("peers", {})
        return peers.get(str(self._descr.h_uid), "not linked yet")


def current() -> Node:
    """The node this process runs on."""
    return Node(_current().h_uid)


class System:
    """The nodes of the run."""

    def __init__(self) -> None:
        self._descrs = list(directory())

    @property
    def nodes(self) -> list[int]:
        """Node ids (``h_uid``), one per node: pass them to :class:`Node`."""
        return [d.h_uid for d in self._descrs]

    @property
    def nnodes(self) -> int:
        return len(self._descrs)

    @property
    def hostnames(self) -> list[str]:
        return [d.host_name for d in self._descrs]

    @property
    def primary_node(self) -> Node:
        for d in self._descrs:
            if d.is_primary:
                return Node(d.h_uid)
        return Node(self._descrs[0].h_uid)

    def cpu_count(self) -> int:
        return sum(d.num_cpus for d in self._descrs)


def policy_node(policy: Policy | None) -> int | None:
    """The node id ``policy`` places a process on, if it names one (a
    host that is not part of the run raises ``PolicyError``)."""
    from ..infrastructure.policy import Policy, PolicyError

    if policy is None:
        return None
    nodes = directory()
    node = None
    if policy.placement == Policy.Placement.HOST_NAME or policy.host_name:
        try:
            node = find_node(policy.host_name)
        except KeyError:
            raise PolicyError(
                "Policy names host %r, which is not a node of this run (nodes: %s)"
                % (policy.host_name, [d.host_name for d in nodes])) from None
    if policy.placement == Policy.Placement.HOST_ID or (policy.host_id is not None and policy.host_id >= 0):
        try:
            by_id = find_node(policy.host_id)
        except KeyError:
            raise PolicyError(
                "Policy names host id %r, which is not a node of this run (node ids: %s)"
                % (policy.host_id, [d.h_uid for d in nodes])) from None
        if node is not None and node.h_uid != by_id.h_uid:
            raise PolicyError("Policy names host %r and host id %d, which are different nodes"
                              % (policy.host_name, policy.host_id))
        node = by_id
    return None if node is None else node.h_uid


def check_policy(policy: Policy | None) -> list[int] | None:
    """Check ``policy`` (a merged :class:`~dragon.infrastructure.policy.Policy`)
    against the run's nodes; return the CPU list to apply (``None`` for no
    change). Raises :class:`~dragon.infrastructure.policy.PolicyError`."""
    from ..infrastructure.policy import PolicyError

    if policy is None:
        return None
    nid = policy_node(policy)
    node = None if nid is None else find_node(nid)
    if node is None:
        node = _current()
    if policy.gpu_affinity:
        have = list(node.accelerators)
        bad = [g for g in policy.gpu_affinity if g not in have]
        if bad:
            raise PolicyError("Policy.gpu_affinity names GPU(s) %s, which node %r does not have (GPUs: %s)"
                              % (bad, node.host_name, have or "none"))
    if policy.cpu_affinity:
        offered = set(node.cpu_devices)
        bad = [c for c in policy.cpu_affinity if c not in offered]
        if bad:
            raise PolicyError("Policy.cpu_affinity names CPU(s) %s, which node %r does not offer "
                              "(CPUs: %s)" % (bad, node.host_name, sorted(offered)))
        return list(policy.cpu_affinity)
    return None
