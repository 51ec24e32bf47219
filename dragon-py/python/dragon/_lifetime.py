"""Removal of the run's shared-memory files when no template does it.

The run's template removes every segment of the run when the program ends
(see :mod:`dragon.runtime`). A program that makes shared objects (locks,
values, queues) but never starts a ``dragon`` process has no template; for
it, the process that owns the run removes the run's segments at exit, after
``multiprocessing`` has joined its children (a finalizer of lower priority
than every default one).
"""
import os

_registered_pid = None


def object_created() -> None:
    """Called by every constructor of a shared object (cheap after the
    first call in a process)."""
    global _registered_pid
    pid = os.getpid()
    if _registered_pid == pid:
        return
    _registered_pid = pid
    from . import runtime

    if runtime.run_owner()[0] != pid:
        return  # only the process that owns the run cleans up after it
    from multiprocessing import util

    util.Finalize(None, _remove_run_segments, args=(pid,), exitpriority=-101)


def _remove_run_segments(owner_pid: int) -> None:
    if os.getpid() != owner_pid:
        return
    from . import runtime

    try:
        runtime.remove_run_segments()
    except Exception:
        pass
