"""The run's directory of what it made, for ``dragon top`` and the metrics
endpoint (:mod:`dragon._top`).

One file per run and node, ``/dev/shm/dragon-<run id>-reg``, removed with
the run's other files. Each process of the run appends a line when it
starts a process (``p <pid> <name>``; on another node ``r <pid> <node>
<pid there> <name>``), makes a queue (``q <pid> <channel
handle, hex>``) or a DDict (``d <pid> <name> <descriptor>``). Lines are
short single writes to a file opened with ``O_APPEND``, so processes never
interleave them; readers skip a line they cannot parse.

The directory is for looking at a run, never for running it: a line that
cannot be written (``/dev/shm`` full, say) is left out without failing the
program, and a process stops writing once the file has reached
:data:`MAX_BYTES` (a program making millions of queues), so the view then
shows the objects made first.
"""
from __future__ import annotations

import os

from ._lifetime import object_created

__all__ = ["note", "path", "read", "parse", "note_stdlib_semaphores", "MAX_BYTES"]

#: Size after which processes stop appending (the view is then partial).
MAX_BYTES = 8 << 20

_full_pid = 0  # the pid of a process that found the file full


def path(run_id: str | None = None) -> str:
    from . import runtime

    return "/dev/shm/" + runtime.shm_prefix(run_id) + "reg"


def note(kind: str, *fields: object) -> None:
    """Append one record (best effort: never raises)."""
    global _full_pid
    pid = os.getpid()
    if _full_pid == pid:
        return
    line = " ".join([kind, str(pid), *(str(f).replace("\n", " ") for f in fields)]) + "\n"
    # The file is one of the run's: removed by the run's template, or, in a
    # program that never starts a dragon process (one that imports dragon
    # and uses another start method, say), at exit by the run's owner.
    object_created()
    try:
        fd = os.open(path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line.encode(errors="replace"))
        if os.lseek(fd, 0, os.SEEK_END) >= MAX_BYTES:
            _full_pid = pid
    except OSError:
        pass
    finally:
        os.close(fd)


def note_stdlib_semaphores() -> None:
    """Note every named semaphore the standard library makes in this
    process (``s <pid> /mp-<name>``), so that the run's cleanup removes it
    if the process dies before unlinking it (CPython's test suite makes one
    in every process that imports it, and kills some of those processes).

    The name is noted when it is chosen, before the semaphore exists: the
    standard library's ``SemLock`` does slow work between making the
    semaphore and returning (on a node whose processes have no resource
    tracker yet, it starts one), and a process killed in that window left
    ``/dev/shm/sem.mp-*`` behind when the name was noted afterwards. A name
    noted for a semaphore that was never made costs the cleanup one failed
    unlink."""
    try:
        from multiprocessing import synchronize
    except ImportError:  # no sem_open on this system: nothing to note
        return
    stock = synchronize.SemLock.__dict__.get("_make_name")
    make_name = stock.__func__ if isinstance(stock, staticmethod) else stock
    if make_name is None or getattr(make_name, "_dragon_noted", False):
        return

    def _make_name():
        name = make_name()
        note("s", name)
        return name

    _make_name._dragon_noted = True  # type: ignore[attr-defined]
    synchronize.SemLock._make_name = staticmethod(_make_name)  # type: ignore[method-assign]


def read(run_id: str) -> list[tuple[str, int, list[str]]]:
    """The records of a run on this node: ``(kind, pid, fields)``."""
    try:
        with open(path(run_id), "rb") as f:
            data = f.read()
    except OSError:
        return []
    return parse(data.decode(errors="replace"))


def parse(text: str) -> list[tuple[str, int, list[str]]]:
    """The records in a registry file's text (another node's, say)."""
    out = []
    for raw in text.splitlines():
        parts = raw.split(" ")
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        out.append((parts[0], int(parts[1]), parts[2:]))
    return out
