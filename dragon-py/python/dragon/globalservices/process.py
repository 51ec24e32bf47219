"""HPE Dragon's ``dragon.globalservices.process`` calls that user programs
make on processes they know by puid: ``query``, ``join``, ``multi_join``,
``kill``, on :mod:`dragon.native.process`. Creating processes through this
module (``create``, ``create_with_argdata``) is not supported: use
:class:`dragon.native.process.Process`."""
from __future__ import annotations

import select
import signal as _signal
import time

from ..native.process import Process, ProcessError

__all__ = ["ProcessError", "query", "join", "multi_join", "kill", "create", "create_with_argdata"]


def query(ident) -> Process:
    """The process with that puid or name (see ``Process(None, ident=...)``)."""
    return Process(None, ident=ident)


def join(puid, timeout=None):
    """Wait for the process to exit (at most ``timeout`` seconds); its exit
    code, ``None`` on timeout or when unknown."""
    return Process(None, ident=puid).join(timeout)


def kill(puid, sig=_signal.SIGKILL, hide_stderr=False) -> None:
    Process(None, ident=puid).send_signal(sig)


def _exit_fd(proc):
    fd = proc._sentinel()
    if fd is None and proc._foreign is not None:
        fd = proc._foreign._pidfd
    return fd


def multi_join(puids, timeout=None, join_all=False, return_on_bad_exit=False):
    """Wait for any (``join_all=False``) or all of ``puids`` to exit, at most
    ``timeout`` seconds. Returns ``(exited, status)``: ``exited`` is the list
    of ``(puid, exit code)`` of those that exited (``None`` if none did),
    ``status`` a dict puid -> ``[exited, exit code]``. With
    ``return_on_bad_exit``, returns as soon as one exits with a non-zero
    code."""
    procs = {p: Process(None, ident=p) for p in puids}
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done = [(p, proc.returncode) for p, proc in procs.items() if not proc.is_alive]
        bad = any(code not in (0, None) for _, code in done)
        if (done and not join_all) or len(done) == len(procs) or (bad and return_on_bad_exit):
            break
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        poller = select.poll()
        for proc in procs.values():
            fd = _exit_fd(proc)
            if fd is not None and proc.is_alive:
                poller.register(fd, select.POLLIN)
        poller.poll(None if left is None else max(1, int(left * 1000)))
    status = {p: [not procs[p].is_alive, procs[p].returncode] for p in procs}
    return (done or None), status


def create(*args, **kwargs):
    raise NotImplementedError("dragon.globalservices.process.create is not supported by this runtime; "
                              "use dragon.native.process.Process")


create_with_argdata = create
