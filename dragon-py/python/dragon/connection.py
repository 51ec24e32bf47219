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
``import dragon`` installs as ``multiprocessing.connection.wait``; it is
defined in ``dragon._wait``, and a connection takes part in it through its
``_dragon_*`` methods).

``recv_bytes(maxlength)`` on a message that is too long raises ``OSError``
and keeps the message for the next receive (the standard library drops it
and disables the connection).

The receiving rules (a kept message first, control messages skipped, the
end of file) are the Rust ``queues`` crate's pipe inbox
(``_native.PipeInbox``); sending is ``_wire.send_blocking`` (the queues'
own) or, across nodes, a deferred send.
"""
from __future__ import annotations

import errno
import socket

from multiprocessing import BufferTooShort, reduction, util

from . import _native, _wire
from ._lifetime import object_created
from ._wait import install_wait as install_wait  # `import dragon` installs it (dragon.context)
from ._wait import wait

__all__ = ["Connection", "Pipe", "wait"]

#: Ring slots per direction.
PIPE_CAPACITY = 256
#: Bytes per slot.
SLOT_SIZE = 256


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
        # The receiving rules (queues crate): a message kept by
        # recv_bytes(maxlength) or poll() first, control messages skipped,
        # EOFError once the peer's socket is closed everywhere and nothing
        # is left.
        self._inbox = _native.PipeInbox(self._recv_ch, sock)
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
        self._inbox.clear()
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
        return self._sock is None or self._inbox.peer_closed()

    def _recv_msg(self, block=True, timeout=None):
        """The next ``(tag, payload)``; ``None`` on timeout; ``EOFError`` when
        the peer is gone and nothing is left."""
        return self._inbox.recv(block, timeout)

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
            self._inbox.keep(_wire.TAG_RAW, data)
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
        return self._inbox.poll(block, timeout)

    # -- waiting ------------------------------------------------------------------
    def _dragon_wait_channel(self):
        if self._sock is None or not self._readable:
            return None
        return self._recv_ch

    def _dragon_ready(self):
        if self._sock is None or not self._readable:
            return True  # stdlib: a closed connection is reported ready
        return self._peek(False)

    def _dragon_peer_closed(self):
        return self._peer_closed()

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
