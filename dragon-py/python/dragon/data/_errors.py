"""The DDict's exceptions and warning (users import them from
:mod:`dragon.data.ddict`, which is also their ``__module__``: the name
tracebacks and pickles give them)."""
from __future__ import annotations

__all__ = [
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
    "error_class",
]

#: The module users import these classes from.
USER_MODULE = "dragon.data.ddict"


class DDictError(Exception):
    """Base of every DDict error."""

    __module__ = USER_MODULE


class DDictFullError(DDictError):
    """A put did not fit in its shard; the previous value is intact."""

    __module__ = USER_MODULE


#: HPE Dragon's name for :class:`DDictFullError`.
DDictManagerFull = DDictFullError


class DDictManagerDied(DDictError):
    """A manager process died; the DDict cannot be used any more."""

    __module__ = USER_MODULE


class DDictFrozenError(DDictError):
    """A write to a frozen DDict."""

    __module__ = USER_MODULE


class DDictDestroyedError(DDictError):
    """The DDict was destroyed."""

    __module__ = USER_MODULE


class DDictPersistError(DDictError):
    """A durable write could not be logged, or a log could not be read."""

    __module__ = USER_MODULE


class DDictPersistCorruptError(DDictPersistError):
    """A log or snapshot is damaged (more than a write torn by a crash):
    the restore was refused and nothing on disk was changed. Restore with
    ``repair=True`` (or run ``dragon ddict-repair <persist_path> <name>``)
    to keep every valid record.

    Attributes: ``path`` (the file), ``offset`` (byte where the damage
    begins), ``what`` (what was found there), ``records_after`` (valid
    records after it), ``bytes_after`` (bytes from ``offset`` to the end of
    the file), ``spans`` (damaged spans in the file).
    """

    __module__ = USER_MODULE

    path = None
    offset = None
    what = None
    records_after = None
    bytes_after = None
    spans = None


class DDictRepairWarning(UserWarning):
    """A repair skipped damaged bytes (``DDict(..., repair=True)``); the
    details are in ``DDict.repair_report``."""

    __module__ = USER_MODULE


class DDictTimeoutError(DDictError, TimeoutError):
    """A wait (``wait_for``, manager start-up) timed out."""

    __module__ = USER_MODULE


class DDictCheckpointSync(DDictError):
    """The handle's checkpoint fell out of the working set (it was merged
    into the unversioned state): ``sync_to_newest_checkpoint()``."""

    __module__ = USER_MODULE


#: HPE Dragon's newer name for :class:`DDictCheckpointSync`.
DDictCheckpointSyncError = DDictCheckpointSync

#: HPE Dragon's name for a failure to persist or restore a checkpoint: here
#: every write of a durable DDict is persisted, and :class:`DDictPersistError`
#: is that failure.
DDictPersistCheckpointError = DDictPersistError


class DDictFutureCheckpointError(DDictError):
    """HPE Dragon raises this for a batch put at a checkpoint no manager has
    reached yet. This DDict never raises it: a handle may move to any
    checkpoint, and its writes there create it (``bput`` is unversioned). It
    exists so that programs that catch it import it."""

    __module__ = USER_MODULE


#: HPE Dragon's older name for :class:`DDictFutureCheckpointError`.
DDictFutureCheckpoint = DDictFutureCheckpointError


def error_class(name: str) -> type[DDictError] | None:
    """The DDict error class named ``name`` (its ``__name__``), or None: how
    a manager's error crosses to its creator by name."""
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, DDictError):
        return cls
    return None
