"""DDict: a sharded, memory-bounded dictionary shared by every process of
the run (on one node or many), optionally durable.

::

    from dragon.data.ddict import DDict

    d = DDict(managers_per_node=2, num_nodes=1, total_mem=256 * 1024**2)
    d["x"] = [1, 2, 3]
    with mp.Pool(4, initializer=init, initargs=(d,)) as pool: ...
    d.destroy()

The DDict starts ``managers_per_node * num_nodes`` manager processes through
the dragon runtime; each creates and owns one shard, a shared-memory segment
of ``total_mem // managers`` bytes that every client maps. A client puts and
gets directly in the shard (a lock, a copy, an unlock), so an operation costs
about a microsecond plus pickling, not a round trip to a server. Keys go to
shard ``fnv1a64(pickle.dumps(key, protocol=5)) % managers``. In a run of
several nodes the managers spread over ``num_nodes`` nodes, or where HPE
Dragon's ``policy`` argument puts them; a process reaches another node's
shards through that node's service, and :meth:`DDict.filter` runs code
beside each manager.

Keys are compared by their pickled bytes: ``1``, ``1.0`` and ``True`` are
three different keys (they pickle differently), as are two tuples whose
pickles differ. ``bytes`` values are stored as they are; anything else is
pickled (or encoded with ``value_pickler``).

With ``persist_path=...`` the DDict is durable: every write goes to its
shard's manager, which appends it to a write-ahead log and ``fdatasync``\\s
it (group commit) before applying it and acknowledging; after the whole
program was killed, ``DDict(..., name=same, persist_path=same, restore=True)``
(or :meth:`DDict.open`) brings back every acknowledged write. A damaged
log or snapshot (not just a write torn by the crash) makes the restore fail
with :class:`DDictPersistCorruptError` and changes nothing on disk;
``restore=True, repair=True`` (or ``dragon ddict-repair <persist_path>
<name>``) keeps every valid record and rewrites the files. See
``docs/ddict.md``.

This module is the :class:`DDict` and the names users import: the
exceptions are defined in ``dragon.data._errors``, the checkpoint persister
classes in ``dragon.data._persisters``, the manager processes (placement,
start, body, stop, ``dragon ddict-repair``) in ``dragon.data._managers``
and ``filter``'s processes in ``dragon.data._filter``; the
exceptions and persister classes say ``dragon.data.ddict`` as their
``__module__`` (in tracebacks and pickles), as before.
"""
from __future__ import annotations

import os
import pickle
import time
import warnings
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

from .. import _native
from ._errors import (
    DDictCheckpointSync,
    DDictCheckpointSyncError,
    DDictDestroyedError,
    DDictError,
    DDictFrozenError,
    DDictFullError,
    DDictFutureCheckpoint,
    DDictFutureCheckpointError,
    DDictManagerDied,
    DDictManagerFull,
    DDictPersistCheckpointError,
    DDictPersistCorruptError,
    DDictPersistError,
    DDictRepairWarning,
    DDictTimeoutError,
)
from ._managers import repair_main as repair_main  # `dragon ddict-repair`, importable from here as before
from ._managers import plan_managers, report_lines, start_managers, stop, stop_raw
from ._filter import Filter
from ._persisters import (
    CheckpointPersister,
    DAOSCheckpointPersister,
    NULLCheckpointPersister,
    PosixCheckpointPersister,
    check_persister,
)

__all__ = [
    "DDict",
    "DDictError",
    "DDictFullError",
    "DDictManagerFull",
    "DDictManagerDied",
    "DDictFrozenError",
    "DDictDestroyedError",
    "DDictPersistError",
    "DDictPersistCorruptError",
    "DDictRepairWarning",
    "DDictTimeoutError",
    "DDictCheckpointSync",
    "DDictCheckpointSyncError",
    "DDictFutureCheckpoint",
    "DDictFutureCheckpointError",
    "DDictPersistCheckpointError",
    "DDictManagerStats",
    "CheckpointPersister",
    "NULLCheckpointPersister",
    "PosixCheckpointPersister",
    "DAOSCheckpointPersister",
    "strip_pickled_bytes",
]


def strip_pickled_bytes(byte_str: bytes) -> bytes:
    """HPE Dragon's helper that trims a pickle to its payload, to make key
    bytes "more precise": removes a trailing ``MEMOIZE STOP`` (or ``STOP``)
    and a leading protocol-5 ``PROTO FRAME`` header (the three bytes
    ``80 05 95``; the frame length after them stays). Keys are placed by the
    whole pickle here (``dragon.utils.hash``); this is for programs that
    compute with the stripped bytes themselves."""
    b = bytes(byte_str)
    if b.endswith(b"\x94."):
        b = b[:-2]
    if b.endswith(b"."):
        b = b[:-1]
    if b.startswith(b"\x80\x05\x95"):
        b = b[3:]
    return b


class DDictManagerStats(NamedTuple):
    """Counters of one manager's shard."""

    manager_id: int
    total_bytes: int
    total_used_bytes: int
    heap_bytes: int
    num_keys: int
    clients: int
    frozen: bool
    #: The host name of the manager's node.
    hostname: str = ""


_PICKLED = 0  # value pickled with the handle's value pickler
_RAW = 1  # a bytes value, stored as it is
_INT = 2  # a counter made by fetch_add: 8 bytes, little-endian, signed
_TOMB = _native.DDICT_TOMBSTONE  # a checkpoint version recording a deletion
_VPREFIX = _native.DDICT_CKPT_PREFIX  # versioned keys: prefix, u64 BE, key

#: How long ``DDict()`` waits for its managers to start (seconds).
START_TIMEOUT = 60.0

_PROTOCOL = 5


class _Pickle:
    """The default pickler: ``pickle`` with a fixed protocol (so that keys
    hash the same in every process and run)."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=_PROTOCOL)

    loads = staticmethod(pickle.loads)



class DDict:
    """A dictionary shared by every process of the run.

    Args:
        managers_per_node: manager processes (shards) per node.
        num_nodes: nodes with managers (HPE Dragon's ``n_nodes`` is accepted
            too): in a multi-node run, ``managers_per_node`` managers on each
            of ``num_nodes`` nodes, starting with this one (at most the
            run's node count; a durable DDict's on the run's first
            ``num_nodes`` nodes, whichever node creates or restores it); on
            one node, all of them here.
        total_mem: bytes for all shards together, metadata included; each
            shard gets ``total_mem // managers``.
        name: names the DDict (and its persistence files); letters, digits
            and ``_``.
        timeout: default timeout (seconds) of ``wait_for`` and of start-up.
        persist_path: directory of write-ahead logs: makes the DDict durable.
        restore: load the shards from ``persist_path`` (same ``name`` and
            number of managers) instead of starting empty. A damaged file
            raises :class:`DDictPersistCorruptError` and changes nothing;
            so does a shard without files when others have theirs
            (:class:`DDictPersistError`); with no files at all the DDict
            starts empty.
        repair: with ``restore``, first repair the files: keep every valid
            record, skip damaged bytes, rewrite the files clean (the report
            is ``repair_report``; a :class:`DDictRepairWarning` says when
            anything was skipped).
        key_pickler, value_pickler: objects with ``dumps``/``loads`` used
            instead of ``pickle`` (keys must encode deterministically).
        policy: where the managers run, as in HPE Dragon: a
            :class:`~dragon.infrastructure.policy.Policy` places all
            ``managers_per_node * num_nodes`` of them on the host it names
            (by the default placement if it names none) and on its
            ``cpu_affinity``; a list of policies starts
            ``managers_per_policy`` managers for each, placed by it (then
            leave ``num_nodes`` and ``managers_per_node`` out). A host or
            CPUs the run does not have raise ``PolicyError``.
        managers_per_policy: managers per policy of a list of policies.
        persister_class: HPE Dragon's choice of checkpoint persister:
            :class:`PosixCheckpointPersister` makes the DDict durable in
            ``persist_path``; :class:`NULLCheckpointPersister` (or None, the
            default) persists nothing; :class:`DAOSCheckpointPersister`
            raises ``NotImplementedError``.
        working_set_size: checkpoints each manager keeps (see
            ``docs/ddict.md``, Checkpoints).
        wait_for_keys, wait_for_writers, persist_freq, persist_base_name,
        trace: HPE Dragon arguments; accepted (see ``docs/ddict.md`` for
            what each does here).
    """

    _c: _native.DDictClient
    _timeout: float | None
    _batch: list[tuple[bytes, int, bytes]] | None
    _procs: list[BaseProcess]
    _creator: bool
    _finalizer: Callable[[], object] | None
    _chkpt: int
    _pin: int | None
    #: What ``repair=True`` did, one dict per manager (empty without repair).
    repair_report: list[dict[str, Any]]

    def __init__(self, managers_per_node: int | None = 1, num_nodes: int | None = None,
                 total_mem: int = 1024**3, *, n_nodes: int | None = None,
                 name: str | None = None, timeout: float | None = None,
                 persist_path: str | os.PathLike[str] | None = None, restore: bool = False,
                 repair: bool = False, key_pickler: Any = None, value_pickler: Any = None,
                 working_set_size: int = 1, wait_for_keys: bool = False,
                 wait_for_writers: bool = False, policy: Any = None, managers_per_policy: int = 1,
                 persist_freq: int = 0, persist_base_name: str = "",
                 persister_class: type[CheckpointPersister] | None = None,
                 trace: bool = False) -> None:
        if num_nodes is not None and n_nodes is not None and num_nodes != n_nodes:
            raise ValueError("num_nodes=%r and n_nodes=%r disagree" % (num_nodes, n_nodes))
        nodes = num_nodes if num_nodes is not None else n_nodes
        if isinstance(policy, (list, tuple)):
            # HPE Dragon's form: managers_per_policy managers for each policy.
            if not policy:
                raise ValueError("policy is an empty list: give at least one Policy")
            if nodes is not None or managers_per_node not in (None, 1):
                raise ValueError("with a list of policies, managers_per_policy managers start for each "
                                 "policy: leave num_nodes (n_nodes) and managers_per_node out (or None), "
                                 "got %r and %r" % (nodes, managers_per_node))
            managers_per_node, nodes = managers_per_policy, len(policy)
        elif managers_per_node is None:
            raise ValueError("managers_per_node=None is for a list of policies (then managers_per_policy "
                             "managers start for each)")
        if nodes is None:
            nodes = 1
        for what, v in (("managers_per_policy", managers_per_policy), ("managers_per_node", managers_per_node),
                        ("num_nodes", nodes), ("total_mem", total_mem)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError("%s must be a positive int, got %r" % (what, v))
        if working_set_size < 1:
            raise ValueError("working_set_size must be >= 1")
        managers = managers_per_node * nodes
        size = total_mem // managers
        if size < 64 * 1024:
            raise ValueError("total_mem=%d gives %d bytes per manager; each needs at least 65536"
                             % (total_mem, size))
        if persist_path is None and persist_base_name:
            persist_path = persist_base_name
        check_persister(persister_class, persist_path)
        if repair and not (restore and persist_path is not None):
            raise ValueError("repair=True needs persist_path and restore=True")
        if name is None:
            name = "ddict" if persist_path is not None else "dd%s" % os.urandom(4).hex()
        self._setup(None, timeout, key_pickler, value_pickler)
        nodes_of_shards, cpus = plan_managers(managers_per_node, nodes, policy, managers_per_policy,
                                              persist_path is not None)
        desc = _native.ddict_descriptor(name, managers, persist_path is not None,
                                        nodes_of_shards)
        # Each manager repairs its own shard's files, on its node's disk.
        reports: list[dict[str, Any]] | None = [] if repair else None
        self._procs = start_managers(desc, managers, size, timeout or START_TIMEOUT,
                                     None if persist_path is None else os.fspath(persist_path),
                                     restore, working_set_size, nodes_of_shards, name, reports, cpus)
        if reports is not None:
            self.repair_report = reports
            if any(r["skipped"] for r in reports):
                warnings.warn("DDict %r: repair skipped damaged bytes:\n%s"
                              % (name, "\n".join(report_lines(reports))),
                              DDictRepairWarning, stacklevel=2)
        try:
            self._c = _native.DDictClient(desc)
        except BaseException:
            stop_raw(desc, self._procs)
            raise
        self._creator = True
        from .. import _registry

        _registry.note("d", self.serialize(), name)
        from multiprocessing import util

        # Runs at exit (not when this handle is collected: other processes
        # may still use the DDict), before multiprocessing terminates
        # daemonic children.
        self._finalizer = util.Finalize(None, stop, args=(self._c, self._procs), exitpriority=10)

    def _setup(self, client: _native.DDictClient | None, timeout: float | None, key_pickler: Any,
               value_pickler: Any) -> None:
        self._c = client  # type: ignore[assignment]  # None only until __init__ sets it
        self._timeout = timeout
        self._kp = key_pickler
        self._vp = value_pickler
        kp = key_pickler or _Pickle
        vp = value_pickler or _Pickle
        self._kd = kp.dumps
        self._kl = kp.loads
        self._vd = vp.dumps
        self._vl = vp.loads
        self._custom_values = value_pickler is not None
        self._batch = None
        self._procs = []
        self._creator = False
        self._finalizer = None
        self._chkpt = 0
        self._pin = None
        self.repair_report = []

    # ---------------------------------------------------------------- attach

    @classmethod
    def attach(cls, serialized: str, *, timeout: float | None = None,
               key_pickler: Any = None, value_pickler: Any = None) -> "DDict":
        """A handle on the DDict that :meth:`serialize` described."""
        self = cls.__new__(cls)
        self._setup(_native.DDictClient(serialized), timeout, key_pickler, value_pickler)
        return self

    @classmethod
    def open(cls, persist_path: str | os.PathLike[str], *, name: str = "ddict", managers_per_node: int | None = 1,
             num_nodes: int | None = None, total_mem: int = 1024**3, **kw: Any) -> "DDict":
        """Restore a durable DDict from ``persist_path``."""
        return cls(managers_per_node, num_nodes, total_mem, name=name,
                   persist_path=persist_path, restore=True, **kw)

    def serialize(self) -> str:
        """A string another process passes to :meth:`attach`."""
        return self._c.descriptor()

    def __reduce__(self) -> tuple[Any, ...]:
        self._flush()
        return (_rebuild, (self.serialize(), self._timeout, self._kp, self._vp, self._pin))

    def detach(self) -> None:
        """Release this process's hold on the DDict (it stays alive)."""
        if self._c is not None:
            self._c.detach()

    def destroy(self) -> None:
        """Stop the managers and remove every shard (for every process)."""
        self._flush()
        self._c.destroy()
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._c.detach()

    def __enter__(self) -> "DDict":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._creator:
            self.destroy()
        else:
            self.detach()

    # ---------------------------------------------------------------- values

    def _enc(self, value: Any) -> tuple[int, bytes]:
        if type(value) is bytes and not self._custom_values:
            return _RAW, value
        return _PICKLED, self._vd(value)

    def _dec(self, r: tuple[int, bytes]) -> Any:
        tag, data = r
        if tag == _RAW:
            return data
        if tag == _INT:
            return int.from_bytes(data, "little", signed=True)
        return self._vl(data)

    # ---------------------------------------------------------------- mapping

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._chkpt:
            self._flush()
            self._vput(self._kd(key), *self._enc(value))
            return
        if self._batch is not None:
            self._batch.append((self._kd(key), *self._enc(value)))
            return
        tag, data = self._enc(value)
        self._c.put(self._kd(key), tag, data)

    def __getitem__(self, key: Any) -> Any:
        if self._batch:
            self._flush()
        r = self._vget(self._kd(key)) if self._chkpt else self._c.get(self._kd(key))
        if r is None:
            raise KeyError(key)
        tag, data = r
        if tag == _RAW:
            return data
        return self._dec(r)

    def __delitem__(self, key: Any) -> None:
        self._flush()
        kb = self._kd(key)
        if self._chkpt:
            if self._vget(kb) is None:
                raise KeyError(key)
            self._vput(kb, _TOMB, b"")
        elif not self._c.delete(kb):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        self._flush()
        if self._chkpt:
            return self._vget(self._kd(key)) is not None
        return self._c.contains(self._kd(key))

    def __len__(self) -> int:
        self._flush()
        if self._chkpt or self._versions_exist():
            return len(self._visible())
        return self._c.len(self._pin)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Mapping, DDict)):
            return NotImplemented
        if isinstance(other, DDict) and other.serialize() == self.serialize():
            return True
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        try:
            return "DDict(managers=%d, keys=%d)" % (self._c.shards(), len(self))
        except DDictError as e:
            return "DDict(<%s>)" % e

    def keys(self) -> list[Any]:
        """Every key (a snapshot, shard by shard)."""
        self._flush()
        if self._chkpt or self._versions_exist():
            return [self._kl(k) for k in self._visible()]
        return [self._kl(k) for k in self._c.keys(self._pin)]

    def values(self) -> list[Any]:
        """Every value (a snapshot, shard by shard)."""
        return [v for _, v in self.items()]

    def items(self) -> list[tuple[Any, Any]]:
        """Every ``(key, value)`` pair (a snapshot, shard by shard)."""
        self._flush()
        if self._chkpt or self._versions_exist():
            return [(self._kl(k), self._dec(r)) for k, r in self._visible().items()]
        return [(self._kl(k), self._dec((t, d))) for k, t, d in self._c.items(self._pin)]

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    _MISSING = object()

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        self._flush()
        if self._chkpt:
            kb = self._kd(key)
            r = self._vget(kb)
            if r is not None:
                self._vput(kb, _TOMB, b"")
        else:
            r = self._c.pop(self._kd(key))
        if r is None:
            if default is DDict._MISSING:
                raise KeyError(key)
            return default
        return self._dec(r)

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return some ``(key, value)`` pair."""
        self._flush()
        if self._chkpt:
            for kb, seen in self._visible().items():
                self._vput(kb, _TOMB, b"")
                return self._kl(kb), self._dec(seen)
            raise KeyError("popitem(): DDict is empty")
        shards = [self._pin] if self._pin is not None else range(self._c.shards())
        for i in shards:
            for k in self._c.keys(i):
                r = self._c.pop(k)
                if r is not None:
                    return self._kl(k), self._dec(r)
        raise KeyError("popitem(): DDict is empty")

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """``self[key]`` if present, else store and return ``default``
        (atomically: concurrent callers all get the first stored value)."""
        self._flush()
        k = self._kd(key)
        if self._chkpt:
            r = self._vget(k)
            if r is not None:
                return self._dec(r)
            self._vput(k, *self._enc(default))
            return default
        while True:
            r = self._c.get(k)
            if r is not None:
                return self._dec(r)
            if self._c.put_if_absent(k, *self._enc(default)):
                return default

    def update(self, other: Mapping[Any, Any] | DDict | Iterable[tuple[Any, Any]] = (), /, **kw: Any) -> None:
        items = other.items() if isinstance(other, (Mapping, DDict)) else other
        self._flush()
        batch = [(self._kd(k), *self._enc(v)) for k, v in items]
        batch.extend((self._kd(k), *self._enc(v)) for k, v in kw.items())
        if self._chkpt:
            for kb, tag, data in batch:
                self._vput(kb, tag, data)
        else:
            self._c.put_many(batch)

    def clear(self) -> None:
        self._flush()
        if self._pin is None:
            self._c.clear()
        else:
            for k in self._c.keys(self._pin):
                self._c.delete(k)

    def copy(self) -> dict[Any, Any]:
        """A plain ``dict`` snapshot of the contents."""
        return dict(self.items())

    # ---------------------------------------------------------------- extras

    def fetch_add(self, key: Any, delta: int = 1) -> int:
        """Atomically add ``delta`` to the counter at ``key`` (0 if absent
        or not a counter) and return the new value. ``d[key]`` reads it."""
        self._flush()
        if self._chkpt:
            kb = self._kd(key)
            r = self._vget(kb)
            old = int.from_bytes(r[1], "little", signed=True) if r and r[0] == _INT else 0
            new = old + delta
            self._vput(kb, _INT, new.to_bytes(8, "little", signed=True))
            return new
        return self._c.fetch_add(self._kd(key), _INT, delta)

    def wait_for(self, key: Any, timeout: float | None = None) -> Any:
        """Wait until ``key`` is present and return its value. Raises
        ``DDictTimeoutError`` (a ``TimeoutError``) after ``timeout``."""
        self._flush()
        if timeout is None:
            timeout = self._timeout
        k = self._kd(key)
        end = None if timeout is None else time.monotonic() + timeout
        pause = 50e-6
        while True:
            r = self._vget(k) if self._chkpt else self._c.get(k)
            if r is not None:
                return self._dec(r)
            if end is not None and time.monotonic() >= end:
                raise DDictTimeoutError("key %r did not appear within %s s" % (key, timeout))
            time.sleep(pause if end is None else max(0.0, min(pause, end - time.monotonic())))
            pause = min(pause * 2, 0.01)

    def start_batch_put(self, persist: bool = False) -> None:
        """Buffer puts until :meth:`end_batch_put` (any other operation
        flushes the buffer first)."""
        if self._batch is None:
            self._batch = []

    def end_batch_put(self) -> None:
        """Write the buffered puts."""
        self._flush()
        self._batch = None

    def _flush(self) -> None:
        b = self._batch
        if b:
            self._batch = []
            self._c.put_many(b)

    def bput(self, key: Any, value: Any) -> None:
        """Store ``key`` in every manager (read it back with :meth:`bget`)."""
        self._flush()
        self._c.put_all(self._kd(key), *self._enc(value))

    def bget(self, key: Any) -> Any:
        """Read a key stored with :meth:`bput` from this process's nearest
        manager."""
        self._flush()
        r = self._c.get_from(self._local_manager(), self._kd(key))
        if r is None:
            raise KeyError(key)
        return self._dec(r)

    def _local_manager(self) -> int:
        """This process's nearest manager: one on its node if any."""
        if self._pin is not None:
            return self._pin
        here: list[int] = self._c.local_shards()
        if here:
            return here[os.getpid() % len(here)]
        return os.getpid() % self._c.shards()

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> None:
        """Move this handle to the next checkpoint: later writes create new
        versions, older checkpoints keep theirs."""
        self._flush()
        self._chkpt += 1

    def rollback(self) -> None:
        """Move this handle back one checkpoint (not below 0)."""
        self._flush()
        if self._chkpt > 0:
            self._chkpt -= 1

    def sync_to_newest_checkpoint(self) -> None:
        """Move this handle to the newest checkpoint written in any manager."""
        self._flush()
        self._chkpt = max(self._c.checkpoint_state(i)[0] for i in range(self._c.shards()))

    @property
    def checkpoint_id(self) -> int:
        """This handle's checkpoint."""
        return self._chkpt

    current_checkpoint_id = checkpoint_id

    def pput(self, key: Any, value: Any) -> None:
        """Store a persistent key: unversioned, seen at every checkpoint that
        has no version of its own."""
        self._flush()
        kb = self._kd(key)
        self._c.put_in(self._shard(kb), kb, *self._enc(value))

    def _shard(self, kb: bytes) -> int:
        return self._pin if self._pin is not None else self._c.shard_of(kb)

    def _oldest(self, i: int) -> tuple[int, int]:
        newest, oldest, _ = self._c.checkpoint_state(i)
        if 0 < self._chkpt < oldest:
            raise DDictCheckpointSync(
                "checkpoint %d of this handle was merged away (manager %d keeps %d..%d): "
                "call sync_to_newest_checkpoint()" % (self._chkpt, i, oldest, newest))
        return oldest, newest

    def _vget(self, kb: bytes) -> tuple[int, bytes] | None:
        """The value of ``kb`` seen at this handle's checkpoint."""
        i = self._shard(kb)
        oldest, _ = self._oldest(i)
        for c in range(self._chkpt, oldest - 1, -1):
            r = self._c.get_from(i, _VPREFIX + c.to_bytes(8, "big") + kb)
            if r is not None:
                return None if r[0] == _TOMB else r
        return self._c.get_from(i, kb)

    def _vput(self, kb: bytes, tag: int, data: bytes) -> None:
        """Write ``kb`` at this handle's checkpoint."""
        c = self._chkpt
        i = self._shard(kb)
        _, newest = self._oldest(i)
        if c > newest:
            self._c.checkpoint_advance(i, c)
            self._oldest(i)
        vk = _VPREFIX + c.to_bytes(8, "big") + kb
        self._c.put_in(i, vk, tag, data)
        if self._c.checkpoint_state(i)[1] > c:
            # Merged away while we wrote: the version would be lost.
            self._c.delete_in(i, vk)
            self._oldest(i)

    def _versions_exist(self) -> bool:
        shards = [self._pin] if self._pin is not None else range(self._c.shards())
        return any(self._c.checkpoint_state(i)[0] > 0 for i in shards)

    def _visible(self) -> dict[bytes, tuple[int, bytes]]:
        """``{key bytes: (tag, data)}`` as seen at this handle's checkpoint."""
        shards = [self._pin] if self._pin is not None else range(self._c.shards())
        out: dict[bytes, tuple[int, bytes]] = {}
        for i in shards:
            oldest, _ = self._oldest(i)
            best: dict[bytes, tuple[int, tuple[int, bytes]]] = {}
            base: dict[bytes, tuple[int, bytes]] = {}
            plen = len(_VPREFIX)
            for k, t, d in self._c.items(i):
                if k.startswith(_VPREFIX):
                    c = int.from_bytes(k[plen:plen + 8], "big")
                    if oldest <= c <= self._chkpt:
                        kb = k[plen + 8:]
                        if kb not in best or best[kb][0] < c:
                            best[kb] = (c, (t, d))
                else:
                    base[k] = (t, d)
            for kb, (_, r) in best.items():
                base[kb] = r
            out.update((k, r) for k, r in base.items() if r[0] != _TOMB)
        return out

    def freeze(self) -> None:
        """Make the DDict read-only; gets then take no locks."""
        self._flush()
        self._c.freeze()

    def unfreeze(self) -> None:
        """Make the DDict writable again."""
        self._c.unfreeze()

    @property
    def is_frozen(self) -> bool:
        return self._c.is_frozen()

    frozen = is_frozen

    def local_len(self) -> int:
        """How many keys the managers on this node hold."""
        self._flush()
        if self._chkpt or self._versions_exist():
            return len(self.local_keys())
        return sum(self._c.len(i) for i in self._c.local_shards())

    def local_items(self) -> list[tuple[Any, Any]]:
        """The ``(key, value)`` pairs of the managers on this node."""
        self._flush()
        local = self._c.local_shards()
        if self._chkpt or self._versions_exist():
            return [(k, v) for k, v in self.items() if self._c.shard_of(self._kd(k)) in local]
        return [(self._kl(k), self._dec((t, d))) for i in local for k, t, d in self._c.items(i)]

    def local_values(self) -> list[Any]:
        """The values of the managers on this node."""
        return [v for _, v in self.local_items()]

    def local_keys(self) -> list[Any]:
        """Keys held by managers on this node (the keys whose shard lives
        here; in a multi-node run each node's ``local_keys()`` are a part of
        the keys, and all nodes' together are all of them)."""
        self._flush()
        if self._chkpt or self._versions_exist():
            local = set(self._c.local_shards())
            return [k for k in self.keys() if self._c.shard_of(self._kd(k)) in local]
        return [self._kl(k) for k in self._c.local_keys()]

    def which_manager(self, key: Any) -> int:
        """Index of the manager holding ``key``."""
        return self._c.shard_of(self._kd(key)) if self._pin is None else self._pin

    def manager(self, index: int) -> "DDict":
        """A view of this DDict whose operations all go to manager ``index``
        (at this handle's checkpoint)."""
        n = self._c.shards()
        if not 0 <= index < n:
            raise IndexError("manager index %d out of range (%d managers)" % (index, n))
        return self._view(index, self._kp, self._vp)

    def _view(self, pin: int | None, key_pickler: Any, value_pickler: Any) -> "DDict":
        """Another handle of this DDict, at this handle's checkpoint, bound
        to manager ``pin`` (if not ``None``), with these picklers."""
        view = _rebuild(self.serialize(), self._timeout, key_pickler, value_pickler, pin)
        view._chkpt = self._chkpt
        return view

    @property
    def stats(self) -> list[DDictManagerStats]:
        """One :class:`DDictManagerStats` per manager."""
        from ..native.machine import directory

        hosts = {n.h_uid: n.host_name for n in directory()}
        return [DDictManagerStats(i, s["total_bytes"], s["used_bytes"], s["heap_bytes"],
                                  s["entries"], s["clients"], s["frozen"], hosts.get(node, ""))
                for (i, s), node in zip(enumerate(self._c.stats()), self._c.shard_nodes())]

    @property
    def dstats(self) -> dict[int, DDictManagerStats]:
        """:attr:`stats` by manager index."""
        return {s.manager_id: s for s in self.stats}

    @property
    def manager_nodes(self) -> list[Any]:
        """The node of each manager, in manager order: a
        :class:`dragon.native.machine.Node` (``h_uid`` is its index,
        ``hostname`` its host)."""
        from ..native.machine import Node

        return [Node(i) for i in self._c.shard_nodes()]

    @property
    def local_managers(self) -> list[int]:
        """Indexes of the managers on this node."""
        return self._c.local_shards()

    @property
    def local_manager(self) -> int | None:
        """This process's manager on this node (``None`` if this node has none)."""
        return self._local_manager() if self._c.local_shards() else None

    @property
    def main_manager(self) -> int:
        """This process's nearest manager: :attr:`local_manager`, or one of
        another node if this node has none."""
        return self._local_manager()

    def get_name(self) -> str:
        """The DDict's name (``name=``, or the one it was given)."""
        return self._c.descriptor().split(";")[1]

    def pickler(self, key_pickler: Any = None, value_pickler: Any = None) -> "DDict":
        """A view of this DDict (the same manager, if :meth:`manager` chose
        one, at this handle's checkpoint) that encodes keys and values with
        these picklers."""
        return self._view(self._pin, key_pickler, value_pickler)

    def filter(self, mgr_code: Callable[..., Any], mgr_code_args: Iterable[Any] = (),
               comparator: Callable[[Any, Any], bool] | None = None,
               branching_factor: int = 5) -> Filter:
        """Run ``mgr_code(view, out_queue, *mgr_code_args)`` once per
        manager, in a process on the manager's node, ``view`` being this
        DDict bound to that manager (:meth:`manager`); what the calls put
        on ``out_queue`` comes back merged: ``with d.filter(...) as
        results: for x in results: ...``. ``comparator(a, b)`` says
        whether ``a`` comes before ``b``: outputs that each call put in
        that order come out in that order overall (``None``: in no
        particular order). ``branching_factor`` is HPE Dragon's (its merge
        is a tree; this one merges in the caller) and is accepted. Code
        that raises, or a filter process that dies, makes the iteration
        raise :class:`DDictError`; leaving the ``with`` block ends the
        processes still running."""
        if not isinstance(branching_factor, int) or branching_factor < 2:
            raise ValueError("branching_factor must be an int >= 2, got %r" % (branching_factor,))
        self._flush()
        return Filter(self, mgr_code, tuple(mgr_code_args), comparator)

    @property
    def managers(self) -> int:
        """Number of managers."""
        return self._c.shards()

    @property
    def durable(self) -> bool:
        """Whether writes are logged (``persist_path`` was given)."""
        return self._c.durable()

    def check(self) -> None:
        """Raise ``DDictManagerDied``/``DDictDestroyedError`` if the DDict
        cannot be used."""
        self._c.check()

    def __del__(self) -> None:
        c = getattr(self, "_c", None)
        if c is not None and not getattr(self, "_creator", False):
            try:
                c.detach()
            except Exception:  # noqa: BLE001
                pass


MutableMapping.register(DDict)


def _rebuild(serialized: str, timeout: float | None, key_pickler: Any, value_pickler: Any,
             pin: int | None = None) -> DDict:
    d = DDict.attach(serialized, timeout=timeout, key_pickler=key_pickler,
                     value_pickler=value_pickler)
    if pin is not None:
        d._c.set_pin(pin)
        d._pin = pin
    return d
