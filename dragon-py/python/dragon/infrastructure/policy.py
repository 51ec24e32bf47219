"""Placement and resources of processes: :class:`Policy` (HPE Dragon's
``dragon.infrastructure.policy.Policy``).

A policy says where a process runs (``placement`` with ``host_name`` or
``host_id``), on which CPUs (``cpu_affinity``) and GPUs (``gpu_affinity``),
and how a group spreads over nodes (``distribution``). Policies nest: a
``with Policy(...):`` block makes that policy the default of the current
thread for every process started inside it, and a process's own policy
(``Process(..., policy=)``, a template's, a ``ProcessGroup``'s) refines the
enclosing one (:meth:`Policy.merge`).

What is applied, today on one node:

* ``placement``/``host_name``/``host_id``: checked against the run's nodes
  when the process starts; a host that is not part of the run is a clear
  :class:`PolicyError`, never a silent fallback. With one node every
  process runs on it.
* ``cpu_affinity``: the child's CPU mask (``os.sched_setaffinity``) is set
  before its target runs (or the executable is executed). CPUs that the
  node does not have are a :class:`PolicyError`.
* ``gpu_affinity``: checked against the node's GPUs (none are detected
  here, so a non-empty list is a :class:`PolicyError`).
* ``distribution``, ``wait_mode``, ``refcounted``, ``gpu_env_str``:
  accepted and validated, no effect with one node.
"""
from __future__ import annotations

import dataclasses
import enum
import threading
from dataclasses import dataclass, field
from typing import Any, TypeVar

_E = TypeVar("_E", bound=enum.IntEnum)

__all__ = ["Policy", "PolicyError", "GS_DEFAULT_POLICY"]


class PolicyError(ValueError):
    """A policy that cannot be satisfied (a host or CPU the run does not
    have) or that is malformed."""


def _int_list(name: str, value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise PolicyError("Policy.%s must be a list of integers, not %r" % (name, value))
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            raise PolicyError("Policy.%s must be a list of integers; %r is not one" % (name, v))
        if v < 0:
            raise PolicyError("Policy.%s: %d is negative" % (name, v))
        out.append(int(v))
    if len(set(out)) != len(out):
        raise PolicyError("Policy.%s lists a device twice: %r" % (name, out))
    return out


@dataclass
class Policy:
    """Where and on what a process runs. Every field is optional; unset
    fields come from the enclosing policy (see the module docstring)."""

    class Placement(enum.IntEnum):
        """Which node: ``HOST_NAME`` and ``HOST_ID`` name one (with
        ``host_name``/``host_id``); ``ANYWHERE`` and ``LOCAL`` let the runtime
        choose; ``DEFAULT`` is ``ANYWHERE``."""

        LOCAL = -5
        ANYWHERE = -4
        HOST_NAME = -3
        HOST_ID = -2
        DEFAULT = -1

    class Distribution(enum.IntEnum):
        """How a group of processes spreads over nodes (``DEFAULT`` is
        ``ROUNDROBIN``)."""

        ROUNDROBIN = 1
        BLOCK = 2
        DEFAULT = 3

    class WaitMode(enum.IntEnum):
        """How channel operations wait (accepted; this runtime always spins
        briefly and then sleeps on a futex)."""

        IDLE = 1
        SPIN = 2
        DEFAULT = 3

    placement: Placement = Placement.DEFAULT
    host_name: str = ""
    host_id: int = -1
    distribution: Distribution = Distribution.DEFAULT
    cpu_affinity: list[int] = field(default_factory=list)
    gpu_env_str: str = ""
    gpu_affinity: list[int] = field(default_factory=list)
    wait_mode: WaitMode = WaitMode.DEFAULT
    refcounted: bool = True

    def __post_init__(self) -> None:
        self.placement = _enum(Policy.Placement, "placement", self.placement)
        self.distribution = _enum(Policy.Distribution, "distribution", self.distribution)
        self.wait_mode = _enum(Policy.WaitMode, "wait_mode", self.wait_mode)
        if self.host_name is None:
            self.host_name = ""
        if not isinstance(self.host_name, str):
            raise PolicyError("Policy.host_name must be a string, not %r" % (self.host_name,))
        if isinstance(self.host_id, bool) or not isinstance(self.host_id, int):
            raise PolicyError("Policy.host_id must be an integer, not %r" % (self.host_id,))
        if not isinstance(self.gpu_env_str, str):
            raise PolicyError("Policy.gpu_env_str must be a string, not %r" % (self.gpu_env_str,))
        self.cpu_affinity = _int_list("cpu_affinity", self.cpu_affinity)
        self.gpu_affinity = _int_list("gpu_affinity", self.gpu_affinity)
        self.refcounted = bool(self.refcounted)
        if self.placement == Policy.Placement.HOST_NAME and not self.host_name:
            raise PolicyError("Policy(placement=HOST_NAME) needs host_name")
        if self.placement == Policy.Placement.HOST_ID and self.host_id < 0:
            raise PolicyError("Policy(placement=HOST_ID) needs host_id")

    # -- serialisation (HPE's spelling) ------------------------------------------
    @property
    def sdesc(self) -> dict[str, Any]:
        return self.get_sdict()

    def get_sdict(self) -> dict[str, Any]:
        """The fields as a plain dict (lists copied)."""
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_sdict(cls, sdict: dict[str, Any]) -> "Policy":
        return cls(**sdict)

    # -- nesting -----------------------------------------------------------------
    @classmethod
    def merge(cls, low: "Policy | None", high: "Policy | None") -> "Policy":
        """``high`` refined over ``low``: each field ``high`` sets (differs
        from the default) wins, the others come from ``low``."""
        if low is None and high is None:
            return cls()
        if low is None:
            assert high is not None
            return cls.from_sdict(high.get_sdict())
        if high is None:
            return cls.from_sdict(low.get_sdict())
        merged = low.get_sdict()
        defaults = _DEFAULTS.get_sdict()
        for name, value in high.get_sdict().items():
            if value != defaults[name]:
                merged[name] = value
        # A placement chosen by the higher policy comes with its own host.
        if high.placement != Policy.Placement.DEFAULT and high.placement != low.placement:
            if high.placement != Policy.Placement.HOST_NAME:
                merged["host_name"] = high.host_name
            if high.placement != Policy.Placement.HOST_ID:
                merged["host_id"] = high.host_id
        return cls.from_sdict(merged)

    @classmethod
    def global_policy(cls) -> "Policy":
        """A copy of the policy in force in this thread: the innermost
        ``with Policy(...)`` block's (merged over the enclosing ones), or
        :data:`GS_DEFAULT_POLICY`."""
        stack = _stack()
        return cls.from_sdict(stack[-1].get_sdict())

    def __enter__(self) -> "Policy":
        stack = _stack()
        stack.append(Policy.merge(stack[-1], self))
        return self

    def __exit__(self, *exc: object) -> None:
        stack = _stack()
        if len(stack) > 1:
            stack.pop()


def _enum(cls: type[_E], name: str, value: Any) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise PolicyError("Policy.%s: %r is not one of %s" % (name, value, [m.name for m in cls])) from None


def _copy(v: object) -> object:
    return list(v) if isinstance(v, list) else v


_DEFAULTS = Policy()

#: The policy in force outside every ``with Policy(...)`` block.
GS_DEFAULT_POLICY = Policy(
    placement=Policy.Placement.ANYWHERE,
    distribution=Policy.Distribution.ROUNDROBIN,
    wait_mode=Policy.WaitMode.IDLE,
)

_local = threading.local()


def _stack() -> list[Policy]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = [GS_DEFAULT_POLICY]
    return stack
