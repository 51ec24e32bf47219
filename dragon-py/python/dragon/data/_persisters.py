"""HPE Dragon's checkpoint persister classes (``DDict(persister_class=...)``)
and the check of a DDict's choice of one. Users import the classes from
:mod:`dragon.data.ddict`, which is also their ``__module__``."""
from __future__ import annotations

from typing import Any

from ._errors import USER_MODULE

__all__ = [
    "CheckpointPersister",
    "NULLCheckpointPersister",
    "PosixCheckpointPersister",
    "DAOSCheckpointPersister",
    "check_persister",
]


class CheckpointPersister:
    """HPE Dragon's base of the classes given as ``DDict(persister_class=...)``,
    which say where checkpoints are persisted. Here persistence is the
    DDict's own write-ahead log (``persist_path``: every acknowledged write,
    checkpoint versions included, survives the program being killed), and a
    persister class only selects it: :class:`NULLCheckpointPersister` (no
    persistence, the default), :class:`PosixCheckpointPersister` (the log,
    in files under ``persist_path``). Not meant to be instantiated."""

    __module__ = USER_MODULE

    #: Whether a DDict with this persister is durable.
    durable = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("%s is given to DDict(persister_class=...) as a class, not instantiated"
                        % type(self).__name__)


class NULLCheckpointPersister(CheckpointPersister):
    """No persistence: the DDict lives in memory only (the default)."""

    __module__ = USER_MODULE


class PosixCheckpointPersister(CheckpointPersister):
    """Persistence in files on a POSIX file system, under ``persist_path``:
    the DDict's write-ahead log and snapshots (``docs/ddict.md``,
    "Persistence"); restore with ``restore=True`` (or :meth:`DDict.open`)."""

    __module__ = USER_MODULE

    durable = True


_DAOS_MISSING = ("DAOSCheckpointPersister is not available: this runtime has no DAOS client. Use "
                 "persister_class=PosixCheckpointPersister with persist_path=<a directory> (a write-ahead log "
                 "on any POSIX file system, a DAOS one mounted through dfuse included)")


class DAOSCheckpointPersister(CheckpointPersister):
    """Not available here (no DAOS client): a DDict given it raises
    ``NotImplementedError`` saying to use :class:`PosixCheckpointPersister`."""

    __module__ = USER_MODULE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(_DAOS_MISSING)


def check_persister(persister_class: object, persist_path: object) -> None:
    """Check ``DDict(persister_class=..., persist_path=...)``: raises what
    is wrong with the pair."""
    if persister_class is None:
        return
    if persister_class is DAOSCheckpointPersister:
        raise NotImplementedError(_DAOS_MISSING)
    if not (isinstance(persister_class, type) and issubclass(persister_class, CheckpointPersister)):
        raise TypeError("persister_class must be NULLCheckpointPersister or PosixCheckpointPersister, not %r"
                        % (persister_class,))
    if persister_class.durable and persist_path is None:
        raise ValueError("persister_class=%s needs persist_path=<a directory> for its files"
                         % persister_class.__name__)
    if not persister_class.durable and persist_path is not None:
        raise ValueError("persister_class=%s persists nothing, but persist_path=%r was given: use "
                         "PosixCheckpointPersister, or drop persist_path" % (persister_class.__name__, persist_path))
