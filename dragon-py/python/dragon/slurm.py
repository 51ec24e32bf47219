"""What ``dragon`` takes from a Slurm allocation.

Inside an allocation (``salloc``, ``sbatch``, or a job step of either)
Slurm describes the job in the environment: ``SLURM_JOB_ID``, the nodes in
``SLURM_JOB_NODELIST`` (a host list expression, expanded by the project's
own parser: no ``scontrol`` is run) and the CPUs the job has on each node in
``SLURM_JOB_CPUS_PER_NODE`` (``2(x3)``, ``4,2(x2)``: a count, repeated).
:func:`allocation` reads them; the launcher runs on the allocation's nodes,
starting their services with ``srun``, and tells each node its CPUs, which
are what ``cpu_count()``, ``Pool()`` and ``Node.num_cpus`` report.
"""
from __future__ import annotations

import os
import re
import socket
from typing import NamedTuple

__all__ = ["Allocation", "AllocationError", "allocation", "parse_cpus_per_node", "local_cpus"]


class AllocationError(ValueError):
    """The environment names a Slurm job but does not describe it usably."""


class Allocation(NamedTuple):
    """A Slurm job's nodes, in Slurm's order, and its CPUs on each."""

    job_id: str
    nodes: list
    cpus: list

    def cpus_of(self, host):
        """The job's CPUs on ``host`` (a node name), or None."""
        try:
            return self.cpus[self.nodes.index(host)]
        except ValueError:
            return None


_GROUP = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def parse_cpus_per_node(spec: str) -> list:
    """``SLURM_JOB_CPUS_PER_NODE`` as one count per node: ``"2(x3),1"`` is
    ``[2, 2, 2, 1]``."""
    out = []
    for part in spec.strip().split(","):
        m = _GROUP.match(part.strip())
        if not m:
            raise AllocationError("SLURM_JOB_CPUS_PER_NODE=%r: expected counts like 2(x3),1" % spec)
        n, times = int(m.group(1)), int(m.group(2) or 1)
        if n < 1 or times < 1:
            raise AllocationError("SLURM_JOB_CPUS_PER_NODE=%r: counts must be at least 1" % spec)
        out.extend([n] * times)
    return out


def allocation(environ=None):
    """The Slurm allocation this process runs in, or None outside one.

    Raises :class:`AllocationError` when ``SLURM_JOB_ID`` is set but the
    node list or the CPU counts are missing or do not agree."""
    from . import _native

    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise AllocationError("SLURM_JOB_ID=%s is set but SLURM_JOB_NODELIST is not" % job)
    try:
        nodes = _native.expand_hostlist(nodelist)
    except ValueError as e:
        raise AllocationError("SLURM_JOB_NODELIST=%r: %s" % (nodelist, e)) from None
    spec = env.get("SLURM_JOB_CPUS_PER_NODE")
    if spec is None:
        raise AllocationError("SLURM_JOB_ID=%s is set but SLURM_JOB_CPUS_PER_NODE is not" % job)
    cpus = parse_cpus_per_node(spec)
    if len(cpus) != len(nodes):
        raise AllocationError("SLURM_JOB_CPUS_PER_NODE=%r counts %d nodes, SLURM_JOB_NODELIST=%r has %d"
                              % (spec, len(cpus), nodelist, len(nodes)))
    return Allocation(job, nodes, cpus)


def _this_node_name(env):
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def local_cpus(environ=None):
    """The CPUs the Slurm job this process runs in has on this node, or
    None (not in a job, or this node is not one of the job's)."""
    env = os.environ if environ is None else environ
    try:
        alloc = allocation(env)
    except AllocationError:
        alloc = None
    if alloc is None:
        return None
    name = _this_node_name(env)
    for candidate in (name, name.split(".")[0]):
        n = alloc.cpus_of(candidate)
        if n is not None:
            return n
    return None
