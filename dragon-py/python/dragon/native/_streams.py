"""Connections to a process's standard streams (``stdout=PIPE``, ...).

HPE Dragon hands a process's redirected stdout/stderr to the program as a
connection whose ``recv()`` returns text and raises ``EOFError`` once the
process has closed the stream; stdin is a connection whose ``send()`` takes
text. Here they are the two ends of an OS pipe:

* :class:`OutputConnection` (``proc.stdout_conn``, ``proc.stderr_conn``):
  ``recv()`` returns the next line (with its newline); text that does not
  end a line is returned once the writer has paused for
  :data:`PARTIAL_LINE_WAIT` seconds (a prompt, say) or at the end of the
  stream, so a reader never waits for a newline that may not come;
  ``recv_bytes()`` returns raw bytes as they come; ``poll(timeout)``;
  ``read()`` everything up to the end.
* :class:`InputConnection` (``proc.stdin_conn``): ``send(text or bytes)``,
  ``close()`` (the process then reads end of file).

Both pickle (to a process being started, or through a queue) by passing the
descriptor, as standard connections do, so a reader may live in another
process.
"""
import codecs
import os
import select


def wait_readable(fd, timeout):
    """Wait until ``fd`` is readable (or at end of file); ``None`` waits
    without limit."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    ms = None if timeout is None else max(int(timeout * 1000 + 0.999), 0)
    return bool(p.poll(ms))

__all__ = ["OutputConnection", "InputConnection"]

_CHUNK = 65536
# recv() returns text that does not end a line once the writer has paused
# this long (seconds).
PARTIAL_LINE_WAIT = 0.1


class _PipeEnd:
    def __init__(self, fd):
        self._fd = fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        self._check()
        return self._fd

    def _check(self):
        if self._fd < 0:
            raise OSError("the connection is closed")

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _dup_state(self):
        from multiprocessing import reduction

        self._check()
        return reduction.DupFd(self._fd)


def _detach(dup):
    return dup.detach()


class OutputConnection(_PipeEnd):
    """The reading end of a process's redirected stdout or stderr."""

    def __init__(self, fd, encoding="utf-8"):
        super().__init__(fd)
        self._encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._text = ""
        self._eof = False

    def __repr__(self):
        return "<OutputConnection fd=%d>" % self._fd

    def __reduce__(self):
        return (_rebuild_output, (self._dup_state(), self._encoding))

    def _read_some(self, block, timeout=None):
        """Read one chunk into the text buffer; False if nothing came."""
        if self._eof:
            return False
        if not block or timeout is not None:
            if not wait_readable(self._fd, 0 if not block else timeout):
                return False
        data = os.read(self._fd, _CHUNK)
        if not data:
            self._eof = True
            self._text += self._decoder.decode(b"", final=True)
            return bool(self._text)
        self._text += self._decoder.decode(data)
        return True

    def poll(self, timeout=0.0) -> bool:
        """Whether ``recv()`` would return without waiting (text or the end
        of the stream is there); waits up to ``timeout`` seconds (``None``:
        no limit)."""
        self._check()
        if self._text or self._eof:
            return True
        return wait_readable(self._fd, timeout)

    def recv(self) -> str:
        """The next line; or the text available if no whole line comes
        within :data:`PARTIAL_LINE_WAIT` seconds; ``EOFError`` at the end of
        the stream."""
        self._check()
        while True:
            nl = self._text.find("\n")
            if nl >= 0:
                line, self._text = self._text[:nl + 1], self._text[nl + 1:]
                return line
            if self._text and not self._read_some(block=True, timeout=PARTIAL_LINE_WAIT):
                # Text without a newline, and the writer paused: a prompt,
                # say. Return it rather than wait for a newline forever.
                text, self._text = self._text, ""
                return text
            if not self._text and self._eof:
                raise EOFError("the process closed its stream")
            if not self._text:
                self._read_some(block=True)

    def recv_bytes(self) -> bytes:
        """Raw bytes as they come (text already decoded by ``recv`` is
        returned first, encoded); raises ``EOFError`` at the end."""
        self._check()
        if self._text:
            text, self._text = self._text, ""
            return text.encode(self._encoding)
        if self._eof:
            raise EOFError("the process closed its stream")
        data = os.read(self._fd, _CHUNK)
        if not data:
            self._eof = True
            raise EOFError("the process closed its stream")
        return data

    def read(self) -> str:
        """Everything up to the end of the stream."""
        parts = []
        try:
            while True:
                parts.append(self.recv())
        except EOFError:
            pass
        return "".join(parts)


def _rebuild_output(dup, encoding):
    return OutputConnection(_detach(dup), encoding)


class InputConnection(_PipeEnd):
    """The writing end of a process's redirected stdin."""

    def __init__(self, fd, encoding="utf-8"):
        super().__init__(fd)
        self._encoding = encoding

    def __repr__(self):
        return "<InputConnection fd=%d>" % self._fd

    def __reduce__(self):
        return (_rebuild_input, (self._dup_state(), self._encoding))

    def send(self, data) -> None:
        """Write ``data`` (``str`` is encoded) to the process's stdin."""
        self._check()
        if isinstance(data, str):
            data = data.encode(self._encoding)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    send_bytes = send


def _rebuild_input(dup, encoding):
    return InputConnection(_detach(dup), encoding)
