"""``Popen`` of the ``dragon`` start method: ask the run's template for a child.

The parent pickles what a ``spawn`` child would receive (preparation data,
then the process object) plus its current environment and the descriptors
of its stdin/stdout/stderr, connects to the template (one connection per
process), and sends the descriptors with ``SCM_RIGHTS``; the forked child
reads the pickles from a pipe and runs ``process._bootstrap``. The template
replies with the child's pid and a pidfd (signals go through the pidfd, so a
reused pid is never signalled), and writes the exit code into an *exit
pipe* whose write end came with the request. The pipe's read end is the
process's ``sentinel``: it becomes readable when the exit code is there (or
at EOF if the template is gone).

Inside :func:`batch_starts` a start does not wait for the template's reply:
the pid is read when first needed, so a Pool sends all its start requests
back to back while the template forks.
"""
import contextlib
import io
import os
import signal
import threading

from multiprocessing import util
from multiprocessing.context import set_spawning_popen

from . import _startproto as proto
from . import _log, _registry, _wire
from ._exitstatus import ExitStatus
from . import runtime

__all__ = ["Popen", "TemplateError"]


class TemplateError(OSError):
    """The run's template process could not start a process."""


_batch = threading.local()


@contextlib.contextmanager
def batch_starts():
    """Start processes without waiting for each one's pid.

    Every ``Popen`` made in the block (by this thread) sends its request and
    returns at once; the replies are collected when the block ends, where a
    start that failed raises :class:`TemplateError`.
    """
    outer = getattr(_batch, "pending", None)
    _batch.pending = pending = [] if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _batch.pending = None
            errors = []
            for popen in pending:
                try:
                    popen._await_pid()
                except TemplateError as e:
                    errors.append(e)
            if errors:
                raise errors[0]


class InheritedFd:
    """A descriptor sent to the child with its start request."""

    def __init__(self, ind):
        self.ind = ind

    def detach(self):
        return proto.inherited_fds[self.ind]


def _valid_fd(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _connect(addr):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(None)  # never socket.setdefaulttimeout()'s: replies may take a while
    try:
        sock.connect("\0" + addr)
    except OSError as e:
        sock.close()
        raise TemplateError(
            e.errno,
            "cannot reach the dragon runtime's template process (%s): %s"
            % (e.strerror, runtime.template_status()),
        ) from None
    return sock


class Popen(ExitStatus):
    method = "dragon"
    DupFd = InheritedFd

    def __init__(self, process_obj):
        util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        self._pid = None
        self._fds = []
        self._sock = None
        self._pidfd = -1
        self._exit_sock = None
        self._lock = threading.Lock()
        self._name = process_obj.name
        self._launch(process_obj)
        pending = getattr(_batch, "pending", None)
        if pending is None:
            self._await_pid()
        else:
            pending.append(self)

    @property
    def pid(self):
        """The child's OS pid (waits for the template's reply if needed)."""
        if self._pid is None:
            self._await_pid()
        return self._pid

    def duplicate_for_child(self, fd):
        self._fds.append(fd)
        return len(self._fds) - 1

    # -- start ----------------------------------------------------------------
    def _launch(self, process_obj):
        from multiprocessing import resource_tracker

        # First, so that the environment the child gets names the template.
        addr = runtime.ensure_template()
        tracker_fd = resource_tracker.getfd()
        prep = runtime.preparation_data(process_obj._name)
        # Descriptors sent with the request: [data pipe, stdio..., tracker, extra...]
        stdio, n = [], 1
        for fd in (0, 1, 2):
            if _valid_fd(fd):
                stdio.append(n)
                n += 1
            else:
                stdio.append(None)
        tracker = None
        if tracker_fd is not None and _valid_fd(tracker_fd):
            tracker = n
            n += 1
        head = {"prep": prep, "env": dict(os.environ), "stdio": stdio,
                "tracker": tracker, "extra": n}
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            pickler = _wire.Pickler(buf)
            pickler.dump(head)
            pickler.clear_memo()
            start, nfds = buf.tell(), len(self._fds)
            try:
                pickler.dump(process_obj)
            except _wire.PICKLING_ERRORS as first:
                # A target (or argument) that cannot go by reference: a
                # lambda, a nested function. Again, with those by value.
                buf.seek(start)
                buf.truncate()
                del self._fds[nfds:]
                try:
                    _wire.FallbackPickler(buf).dump(process_obj)
                except Exception:
                    raise first from None
        finally:
            set_spawning_popen(None)
        if n + 1 + len(self._fds) > proto.MAX_FDS:  # + the exit socket
            raise ValueError("too many file descriptors to pass to one process (%d, at most %d)"
                             % (len(self._fds), proto.MAX_FDS - n))

        sock = _connect(addr)
        # A socket pair rather than a pipe: the exit code is read with
        # MSG_PEEK, so it stays and the sentinel stays ready after exit.
        import socket

        exit_sock, exit_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        exit_sock.settimeout(None)  # blocking, whatever socket.setdefaulttimeout() says
        exit_w.settimeout(None)
        exit_w = exit_w.detach()
        data_r, data_w = os.pipe()
        try:
            fds = [exit_w, data_r] + [i for i in (0, 1, 2) if stdio[i] is not None]
            if tracker is not None:
                fds.append(tracker_fd)
            fds += self._fds
            sock.sendmsg([proto.REQUEST],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, proto.fd_array(fds))])
            try:
                with open(data_w, "wb", closefd=False) as f:
                    f.write(buf.getbuffer())
            except BrokenPipeError:
                pass  # the reply says why (fork failed, template gone)
        except (ConnectionError, BrokenPipeError) as e:
            sock.close()
            exit_sock.close()
            # The template died between accepting and answering.
            raise TemplateError(
                e.errno,
                "the dragon runtime's template process went away while starting a process "
                "(%s): %s" % (e.strerror, runtime.template_status()),
            ) from None
        except BaseException:
            sock.close()
            exit_sock.close()
            raise
        finally:
            proto.close_all([exit_w, data_r, data_w])
        self._sock = sock
        self._exit_sock = exit_sock
        self.sentinel = exit_sock.fileno()
        # Descriptors the finalizer closes (the pidfd joins when it arrives).
        self._owned_fds = []
        self.finalizer = util.Finalize(self, _close, (sock, exit_sock, self._owned_fds))

    def _await_pid(self):
        """Read the template's reply to the start request."""
        import socket

        with self._lock:
            if self._pid is not None:
                return
            try:
                msg, anc, _, _ = self._sock.recvmsg(256, socket.CMSG_SPACE(4))
            except OSError:
                msg, anc = b"", []
            pidfds = proto.fds_from_ancillary(anc)
            if msg[:1] != proto.REPLY_PID or len(msg) != 1 + proto.INT64:
                proto.close_all(pidfds)
                self._pid = 0  # never started; poll() reports the failure
                if msg[:1] == proto.REPLY_ERROR:
                    raise TemplateError("the dragon template could not start the process: "
                                        + msg[1:].decode(errors="replace"))
                raise TemplateError("the dragon runtime's template process went away while starting "
                                    "a process: " + runtime.template_status())
            self._pid = int.from_bytes(msg[1:], "little", signed=True)
            _log.logger.info("started process %d (%s)", self._pid, self._name)
            _registry.note("p", self._pid, self._name)
            self._pidfd = pidfds[0] if pidfds else -1
            if self._pidfd >= 0:
                self._owned_fds.append(self._pidfd)
            proto.close_all(pidfds[1:])
            if self.returncode is not None:
                self._let_go()

    def _let_go(self):
        """The exit status is known: close the start connection, so that the
        template reaps the child, as ``waitpid`` in a ``fork`` child's
        ``poll`` does (the sentinel stays open until :meth:`close`). Called
        with ``_lock`` held."""
        if self._pid is not None:
            self._sock.close()

    # -- state ----------------------------------------------------------------
    def _read_status(self):
        with self._lock:
            if self.returncode is not None:
                return
            import socket

            try:
                # Peek: the code stays, so the sentinel stays ready.
                data = self._exit_sock.recv(proto.INT64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if len(data) == proto.INT64:
                self.returncode = int.from_bytes(data, "little", signed=True)
                self._let_go()
            elif data:
                return  # the rest of the 8 bytes is on its way
            else:
                # The template is gone without telling: the run is ending (it
                # kills the run's processes on its way out) or it was killed.
                util.info("dragon: exit status of process %s unknown: %s",
                          self._pid, runtime.template_status())
                self.returncode = 255

    # -- signals --------------------------------------------------------------
    def _send_signal(self, sig):
        if self.returncode is not None:
            return
        try:
            self._await_pid()
        except TemplateError:
            return  # never started: nothing to signal
        try:
            if self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        except OSError:
            if self.wait(timeout=0.1) is None:
                raise


def _close(sock, exit_sock, fds):
    """Finalizer: let go of the child (the template then reaps it)."""
    sock.close()
    exit_sock.close()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
