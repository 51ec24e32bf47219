"""``wait``: multiprocessing.connection.wait's replacement, which waits
for dragon objects (:class:`dragon.connection.Connection` ends, queue
readers) mixed with anything the standard one accepts (descriptors,
objects with ``fileno()``), and ``install_wait``, which puts it in
``multiprocessing.connection``. Importable from :mod:`dragon.connection`.

A dragon object takes part through three methods: ``_dragon_wait_channel()``
(the channel whose messages make it ready, or None), ``_dragon_ready()``
(whether it is ready now) and, optionally, ``_dragon_peer_closed()``
(whether its peer is gone: looked at while waiting, so that a peer's death
wakes the wait). Descriptors are watched by a helper thread that rings a
doorbell channel, so that one select over channels sees both kinds.
"""
from __future__ import annotations

import os
import select
import threading
import time

from multiprocessing import connection as _mp_connection

from . import _native

__all__ = ["wait", "install_wait"]

_stdlib_wait = _mp_connection.wait


class _FdWatcher:
    """A daemon thread that waits for descriptors on behalf of one
    :func:`wait` at a time and rings its doorbell channel when one is ready."""

    def __init__(self):
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._cv = threading.Condition()
        self._job = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="dragon-wait-fds", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            with self._cv:
                while self._job is None:
                    self._cv.wait()
                fds, bell = self._job
            p = select.poll()
            for fd in fds:
                p.register(fd, select.POLLIN)
            p.register(self._r, select.POLLIN)
            while True:
                try:
                    events = p.poll()
                except OSError:
                    events = [(-1, 0)]
                fired = any(fd != self._r for fd, _ in events)
                if fired:
                    bell.ring()
                try:
                    while os.read(self._r, 64):
                        pass
                except BlockingIOError:
                    pass
                with self._cv:
                    # A byte left by an earlier stop() is no reason to end.
                    if fired or self._stop:
                        self._job = None
                        self._stop = False
                        self._cv.notify_all()
                        break

    def active(self):
        """Whether a job is being watched (it ends when a descriptor fires)."""
        with self._cv:
            return self._job is not None

    def start(self, fds, bell):
        with self._cv:
            self._job = (fds, bell)
            self._stop = False
            self._cv.notify_all()

    def stop(self):
        with self._cv:
            if self._job is None:
                return
            self._stop = True
            try:
                os.write(self._w, b"x")
            except BlockingIOError:
                pass
            while self._job is not None:
                self._cv.wait()


_watchers = []
_watchers_lock = threading.Lock()
_watchers_pid = os.getpid()


def _take_watcher():
    global _watchers, _watchers_pid, _watchers_lock
    if _watchers_pid != os.getpid():  # threads do not survive fork
        _watchers, _watchers_pid, _watchers_lock = [], os.getpid(), threading.Lock()
    with _watchers_lock:
        if _watchers:
            return _watchers.pop()
    return _FdWatcher(), _native.Channel.doorbell()


def _give_watcher(w):
    with _watchers_lock:
        if len(_watchers) < 4:
            _watchers.append(w)


def _eof_check(objs):
    checks = [c for c in (getattr(o, "_dragon_peer_closed", None) for o in objs) if c is not None]
    if not checks:
        return None
    return lambda: any(c() for c in checks)


def wait(object_list, timeout=None):
    """Wait until one or more of ``object_list`` is ready; return the ready
    ones (``[]`` on timeout).

    Accepts dragon connections and queue readers (ready: a message, or EOF)
    mixed with anything the standard ``multiprocessing.connection.wait``
    accepts (descriptors, objects with ``fileno()`` such as process
    sentinels and standard connections). Both kinds wake it at once.
    """
    dragon, other = [], []
    for o in object_list:
        (dragon if hasattr(o, "_dragon_wait_channel") else other).append(o)
    if not dragon:
        return _stdlib_wait(object_list, timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    watcher = None
    try:
        while True:
            # The descriptors first, then the dragon objects: a process that
            # sends a result and then exits must never be seen exited
            # without its result (a sentinel that became ready after the
            # queue was looked at would be), as an executor or a pool takes
            # that for a worker that died mid-task.
            ready_other = _stdlib_wait(other, 0) if other else []
            ready = [o for o in dragon if o._dragon_ready()] + ready_other
            remaining = None if deadline is None else deadline - time.monotonic()
            if ready or (remaining is not None and remaining <= 0):
                return ready
            chans = [ch for ch in (o._dragon_wait_channel() for o in dragon) if ch is not None]
            if other:
                if watcher is None:
                    watcher = _take_watcher()
                    fds = [o if isinstance(o, int) else o.fileno() for o in other]
                if not watcher[0].active():
                    # (Re)arm: a descriptor that fired may have been read by
                    # someone else meanwhile.
                    watcher[1].drain()
                    watcher[0].start(fds, watcher[1])
                chans.append(watcher[1])
            _native.select(chans, remaining, _eof_check(dragon))
    finally:
        if watcher is not None:
            watcher[0].stop()
            watcher[1].drain()
            _give_watcher(watcher)


def install_wait():
    """Make ``multiprocessing.connection.wait`` (and the copy
    ``multiprocessing.pool`` imported, if it is loaded) this module's
    :func:`wait`, which hands anything that is not a dragon object to the
    standard one."""
    import sys

    if _mp_connection.wait is not wait:
        _mp_connection.wait = wait
    pool = sys.modules.get("multiprocessing.pool")
    if pool is not None and getattr(pool, "wait", None) is _stdlib_wait:
        pool.wait = wait
