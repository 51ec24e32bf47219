"""What a ``dragon.native`` process runs first, in the child.

:class:`dragon.native.process.Process` starts a ``dragon`` start-method
process (forked by the run's template) whose target is :func:`main` with a
*spec*: standard stream redirections, working directory, environment
additions, CPU affinity, and either a Python call or an executable to run.
``main`` applies the spec and then calls the target, or replaces the
process with the executable (``execve``), so executables get the template's
cleanup rules (same session, killed at the end of the run) and a pid, pidfd,
sentinel and exit code like any other process of the run.

For an executable, the parent waits on a close-on-exec *status pipe*: end of
file means ``execve`` succeeded; otherwise the child writes why it failed
(errno and message) and exits with code 127.
"""
import os
import struct
import sys

# Redirection kinds in a spec's "stdio" entries.
FD = "fd"            # ("fd", SentFd): dup2 that descriptor
DEVNULL = "devnull"  # ("devnull",): /dev/null
TO_STDOUT = "stdout"  # ("stdout",): stderr goes where stdout goes

_STATUS = struct.Struct("<i")


class SentFd:
    """A descriptor sent to the child with its start request (pickled only
    while the process is being started)."""

    __slots__ = ("fd",)

    def __init__(self, fd):
        self.fd = fd

    def __reduce__(self):
        from multiprocessing import reduction

        return (_rebuild_fd, (reduction.DupFd(self.fd),))


def _rebuild_fd(dup):
    return SentFd(dup.detach())


class CloudCall:
    """A target sent by value (``cloudpickle``), for callables that cannot
    be pickled by reference (lambdas, closures, functions of an interactive
    ``__main__``)."""

    __slots__ = ("payload",)

    def __init__(self, payload):
        self.payload = payload

    def load(self):
        import cloudpickle

        return cloudpickle.loads(self.payload)


def _fail(status_fd, err):
    """Report why the executable could not be started, then exit 127."""
    if isinstance(err, OSError) and err.errno:
        code, msg = err.errno, err.strerror or os.strerror(err.errno)
    else:
        code, msg = 0, "%s: %s" % (type(err).__name__, err)
    msg = msg.encode(errors="replace")[:4000]
    try:
        os.write(status_fd, _STATUS.pack(code) + msg)
    except OSError:
        pass
    os._exit(127)


def _apply_stdio(stdio):
    for target in (0, 1, 2):
        how = stdio.get(target)
        if how is None:
            continue
        if how[0] == FD:
            fd = how[1].fd
            os.dup2(fd, target)
            if fd > 2:
                os.close(fd)
        elif how[0] == DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            os.dup2(fd, target)
            os.close(fd)
        elif how[0] == TO_STDOUT:
            os.dup2(1, target)


def _cloexec_all():
    """Every descriptor but the standard streams closes on exec."""
    try:
        fds = [int(e) for e in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def _prepare_exec_signals():
    import signal

    # As subprocess does: Python ignores SIGPIPE and SIGXFSZ; an executable
    # expects the defaults. Signals blocked here would stay blocked.
    for name in ("SIGPIPE", "SIGXFSZ"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def main(spec):
    """Apply ``spec`` and run its target (see the module docstring)."""
    status = spec.get("status")
    status_fd = status.fd if status is not None else -1
    if status_fd >= 0:
        os.set_inheritable(status_fd, False)
    try:
        if spec.get("umask") is not None:
            os.umask(spec["umask"])
        _apply_stdio(spec.get("stdio") or {})
        if spec.get("cwd"):
            os.chdir(spec["cwd"])
        if spec.get("env"):
            os.environ.update(spec["env"])
        if spec.get("cpus"):
            os.sched_setaffinity(0, spec["cpus"])
    except BaseException as e:
        if status_fd >= 0:
            _fail(status_fd, e)
        raise
    if spec["kind"] == "exec":
        try:
            _prepare_exec_signals()
            _cloexec_all()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os.execve(spec["path"], spec["argv"], os.environ)
        except BaseException as e:
            _fail(status_fd, e)
    try:
        if 0 in (spec.get("stdio") or {}):
            # The stdin multiprocessing gave the child is /dev/null; the
            # target asked for its own.
            sys.stdin = open(0, closefd=False, errors="replace")
        call = spec["call"]
        if isinstance(call, CloudCall):
            call = call.load()
        target, args, kwargs = call
        return target(*args, **kwargs)
    except KeyboardInterrupt:
        _die_of_sigint()


def _die_of_sigint():
    """End as a process killed by SIGINT (exit code -2), without a
    traceback: a native process gets SIGINT only when asked to stop
    (``ProcessGroup.stop``, ``send_signal``), never from the terminal."""
    import signal

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    os.kill(os.getpid(), signal.SIGINT)
    os._exit(130)  # not reached unless SIGINT cannot be delivered
