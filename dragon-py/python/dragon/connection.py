"""``Pipe``/``Connection`` on shared-memory channels, and a ``wait`` that
mixes them with file descriptors.

A pipe is one channel per direction (two for a duplex pipe) plus a
``socketpair`` whose two ends travel with the two connection ends. The
channels carry the messages; the socket pair carries nothing but the
*ends' lifetime*: each process that holds an end holds a descriptor of its
socket (a pickled end carries one, ``DupFd`` style, exactly as the standard
library's connections do), and the kernel closes them when a process closes
the end or dies. So the standard rule holds: a receiver sees ``EOFError``
once every copy of the other end is closed -- including a copy that is
still travelling to a process that has not unpickled it, and including
processes killed with ``SIGKILL`` -- and nothing is left to read. A closed
end also sends a control message, so a blocked receiver notices an
explicit ``close()`` at once; a death is noticed within 100 ms.

``fileno()`` is the socket's descriptor: it works with
``multiprocessing.reduction.send_handle``/``recv_handle`` (descriptors are
passed over the socket) and becomes readable when the peer is gone, but
not when a message arrives: wait for messages with :func:`wait` (which
``import dragon`` installs as ``multiprocessing.connection.wait``).

``recv_bytes(maxlength)`` on a message that is too long raises ``OSError``
and keeps the message for the next receive (the standard library drops it
and disables the connection).
"""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time

from multiprocessing import BufferTooShort, reduction, util
from multiprocessing import connection as _mp_connection

from . import _native, _wire
from ._lifetime import object_created

__all__ = ["Connection", "Pipe", "wait"]

#: Ring slots per direction.
PIPE_CAPACITY = 256
#: Bytes per slot.
SLOT_SIZE = 256

_stdlib_wait = _mp_connection.wait


class Connection:
    """One end of a :func:`Pipe`."""

    def __init__(self, send_ch, recv_ch, sock, readable=True, writable=True):
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        self._send_ch = send_ch if writable else None
        self._recv_ch = recv_ch if readable else None
        self._sock = sock
        self._readable = readable
        self._writable = writable
        self._pending = None  # a message kept by recv_bytes(maxlength) or poll()
        self._flusher = None  # waits for sends across nodes (close, exit)

    # -- state ------------------------------------------------------------------
    def _check_closed(self):
        if self._sock is None:
            raise OSError("handle is closed")

    def _check_readable(self):
        if not self._readable:
            raise OSError("connection is write-only")

    def _check_writable(self):
        if not self._writable:
            raise OSError("connection is read-only")

    @property
    def closed(self):
        """True if the connection is closed"""
        return self._sock is None

    @property
    def readable(self):
        """True if the connection is readable"""
        return self._readable

    @property
    def writable(self):
        """True if the connection is writable"""
        return self._writable

    def fileno(self):
        """The descriptor of the end's lifetime socket (see the module
        docs: it is readable when the peer is gone, not on messages)."""
        self._check_closed()
        return self._sock.fileno()

    def close(self):
        """Close this end in this process."""
        sock = self._sock
        if sock is None:
            return
        send = self._send_ch
        # Sends across nodes still on their way arrive before the peer
        # sees this end close.
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher()
        self._sock = None
        self._send_ch = self._recv_ch = None
        self._pending = None
        try:
            sock.close()
        finally:
            if send is not None:
                try:
                    # Wake a blocked receiver: it looks for EOF.
                    send.send(b"", _wire.TAG_CONTROL, False)
                except Exception:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()

    def __del__(self):
        try:
            if self._sock is not None:
                self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self._sock is None else "r" * self._readable + "w" * self._writable
        return "<dragon.connection.Connection %s at %#x>" % (state, id(self))

    # -- sending ------------------------------------------------------------------
    def _send(self, data, prefix):
        ch = self._send_ch
        if isinstance(ch, _native.RemoteChannel):
            # Across nodes, a send does not wait for the round trip (as a
            # write to a pipe returns once the kernel has the bytes); close()
            # and the process's exit wait until they are all in.
            _wire.send_in_order(ch, data, prefix)
            if self._flusher is None:
                self._flusher = util.Finalize(self, _wire.flush_quietly, [ch], exitpriority=-6)
            return
        _wire.send_blocking(ch, data, prefix)

    def send(self, obj):
        """Send a (picklable) object."""
        self._check_closed()
        self._check_writable()
        if type(obj) is bytes:
            self._send(obj, _wire.TAG_BYTES)
        else:
            self._send(_wire.dumps(obj), -1)

    def send_bytes(self, buf, offset=0, size=None):
        """Send the bytes of a bytes-like object (from ``offset``, ``size``
        bytes)."""
        self._check_closed()
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        if offset or size != n:
            m = m[offset:offset + size]
        self._send(buf if m.obj is buf and type(buf) is bytes and size == n else m, -2)

    # -- receiving ----------------------------------------------------------------
    def _peer_closed(self):
        """Whether every copy of the other end is closed."""
        sock = self._sock
        if sock is None:
            return True
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError, TimeoutError):
            return False
        except OSError:
            return True

    def _recv_msg(self, block=True, timeout=None):
        """The next ``(tag, payload)``; ``None`` on timeout; ``EOFError`` when
        the peer is gone and nothing is left."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            return pending
        ch = self._recv_ch
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            r = ch.recv(block, timeout, self._peer_closed)
            if r is not None and r[0] != _wire.TAG_CONTROL:
                return r
            # Nothing came (timeout, or the peer looks gone), or a control
            # message. The peer's close is looked at before the ring: what
            # it sent before closing is then visible.
            if self._peer_closed() and not ch.readable():
                raise EOFError
            if r is None and not block:
                return None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return None

    def _recv_checked(self):
        self._check_closed()
        self._check_readable()
        return self._recv_msg()

    def recv(self):
        """Receive a (picklable) object."""
        tag, data = self._recv_checked()
        if tag == _wire.TAG_BYTES:
            return data
        return _wire.loads(data)

    def _as_raw(self, tag, data):
        if tag == _wire.TAG_BYTES:
            # Sent as an object: what the standard library would have sent.
            return bytes(reduction.ForkingPickler.dumps(data))
        return data

    def recv_bytes(self, maxlength=None):
        """Receive bytes data as a bytes object. A message longer than
        ``maxlength`` raises ``OSError`` and stays for the next receive."""
        self._check_closed()
        self._check_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        tag, data = self._recv_msg()
        data = self._as_raw(tag, data)
        if maxlength is not None and len(data) > maxlength:
            self._pending = (_wire.TAG_RAW, data)
            raise OSError(errno.EMSGSIZE, "bad message length: %d bytes, maxlength %d (the message is kept)"
                          % (len(data), maxlength))
        return data

    def recv_bytes_into(self, buf, offset=0):
        """Receive bytes data into a writable bytes-like object; returns the
        number of bytes. ``BufferTooShort`` (holding the message) if it does
        not fit."""
        self._check_closed()
        self._check_readable()
        with memoryview(buf) as m:
            itemsize = m.itemsize
            bytesize = itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            elif offset > bytesize:
                raise ValueError("offset too large")
            tag, data = self._recv_msg()
            data = self._as_raw(tag, data)
            size = len(data)
            if bytesize < offset + size:
                raise BufferTooShort(data)
            m.cast("B")[offset:offset + size] = data
            return size

    def poll(self, timeout=0.0):
        """Whether there is anything to read (a message, or EOF), waiting at
        most ``timeout`` seconds (``None``: no limit)."""
        self._check_closed()
        self._check_readable()
        if timeout is None:
            return self._peek(True, None)
        t = max(timeout, 0.0)
        return self._peek(t > 0, t)

    def _peek(self, block, timeout=None):
        """Whether a message (or the end) is there to receive, keeping a
        message taken to find out for the next receive."""
        if self._pending is not None:
            return True
        try:
            r = self._recv_msg(block, timeout)
        except EOFError:
            return True
        if r is None:
            return False
        self._pending = r
        return True

    # -- waiting ------------------------------------------------------------------
    def _dragon_wait_channel(self):
        if self._sock is None or not self._readable:
            return None
        return self._recv_ch

    def _dragon_ready(self):
        if self._sock is None or not self._readable:
            return True  # stdlib: a closed connection is reported ready
        return self._peek(False)

    # -- pickling -----------------------------------------------------------------
    def __reduce__(self):
        self._check_closed()
        _wire.keep_alive(self._send_ch, self._recv_ch)
        df = reduction.DupFd(self._sock.fileno())
        return _rebuild_connection, (df, _handle(self._send_ch), _handle(self._recv_ch),
                                     self._readable, self._writable)


def _handle(ch):
    return None if ch is None else ch.handle


def _rebuild_connection(df, send_handle, recv_handle, readable, writable):
    fd = df.detach()
    sock = socket.socket(fileno=fd)
    sock.settimeout(None)  # never socket.setdefaulttimeout()'s
    send = None if send_handle is None else _native.Channel.attach(send_handle)
    recv = None if recv_handle is None else _native.Channel.attach(recv_handle)
    return Connection(send, recv, sock, readable, writable)


def Pipe(duplex=True):
    """Two connection ends; with ``duplex`` false, ``(reader, writer)``."""
    object_created()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        a.settimeout(None)  # never socket.setdefaulttimeout()'s
        b.settimeout(None)
        c1 = _native.Channel.create(PIPE_CAPACITY, SLOT_SIZE, 0, 64)
        if duplex:
            c2 = _native.Channel.create(PIPE_CAPACITY, SLOT_SIZE, 0, 64)
            return Connection(c1, c2, a), Connection(c2, c1, b)
        return Connection(None, c1, a, True, False), Connection(c1, None, b, False, True)
    except BaseException:
        a.close()
        b.close()
        raise


# ---------------------------------------------------------------------------
# wait
# ---------------------------------------------------------------------------

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
    conns = [o for o in objs if isinstance(o, Connection)]
    if not conns:
        return None
    return lambda: any(c._peer_closed() for c in conns)


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
            ready = [o for o in dragon if o._dragon_ready()]
            if other:
                ready += _stdlib_wait(other, 0)
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
