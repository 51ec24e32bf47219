"""The run: its id, its template process, and what is cleaned up when it ends.

A *run* is one program and every process it starts. The main process
creates the run id (``DRAGON_RUN_ID``, ``<pid>-<starttime>-<8 hex>``, the
format ``transport-shm`` uses for its segment names) when ``dragon`` is
imported, so every process started afterwards inherits it; all shared-memory
files of the run are named ``/dev/shm/dragon-<run id>-*``.

On first use of the ``dragon`` start method the process starts the run's
*template*: a fresh interpreter that pre-imports ``dragon`` and the main
module, listens on an abstract unix socket (its name is exported as
``DRAGON_TEMPLATE`` so that every later process of the run, nested ones
included, asks the same template) and forks the run's processes on request
(see ``dragon._template``). The template is also the run's watchdog: when
the process that started it ends, however it ends, the template kills every
process of the run still alive, removes the run's shared-memory files, and
exits. On a normal exit the starting process asks it to do so and waits.

Signals: the template runs in a session of its own, and so do the processes
it forks. A Ctrl-C in the terminal therefore reaches only the main program
(and any process it started with ``fork`` or ``spawn``); the main program
handles it as usual (``KeyboardInterrupt``, ``Pool.terminate`` in ``with``
blocks, daemonic children terminated at exit), and whatever of the run is
left when it exits is killed by the template. Workers are never interrupted
halfway through a task by a Ctrl-C meant for the main program.
"""
from __future__ import annotations

import os
import sys
import threading

__all__ = [
    "RUN_ENV",
    "TEMPLATE_ENV",
    "run_id",
    "shm_prefix",
    "template_address",
    "ensure_template",
    "shutdown",
]

RUN_ENV = "DRAGON_RUN_ID"
TEMPLATE_ENV = "DRAGON_TEMPLATE"

# How long the process that owns the template waits for it to clean up at exit.
SHUTDOWN_WAIT = 5.0


def _native():
    from dragon import _native as n

    return n


def run_id() -> str:
    """This process's run id, created (and exported to children) if missing."""
    rid = os.environ.get(RUN_ENV, "")
    if not (rid and _native().valid_run_id(rid)):
        rid = _native().new_run_id()
        os.environ[RUN_ENV] = rid
    return rid


def run_owner(rid: str | None = None) -> tuple[int, int]:
    """``(pid, start time)`` of the process that created the run."""
    pid, start, _ = (rid or run_id()).split("-")
    return int(pid), int(start)


def owner_alive(rid: str | None = None) -> bool:
    """Whether the process that created the run still runs on this node."""
    return _native().process_alive(*run_owner(rid))


def shm_prefix(rid: str | None = None) -> str:
    """File-name prefix of every shared-memory segment of the run."""
    return _native().run_prefix(rid or run_id())


def template_address() -> str | None:
    """Abstract socket name of the run's template, if one was started."""
    return os.environ.get(TEMPLATE_ENV) or None


# --------------------------------------------------------------------------
# The template, seen from the process that starts it.
# --------------------------------------------------------------------------

_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Owned:
    """The template this process started (at most one per process)."""

    pid: int | None = None
    owner_pid: int | None = None  # os.getpid() of the starter (fork-safety)
    alive_w: int | None = None  # write end of the pipe the template watches
    address: str | None = None
    finalizer = None


_owned = _Owned()


def interpreter_flags() -> list[str]:
    """Command-line flags that reproduce this interpreter's settings."""
    fl = sys.flags
    args = []
    if fl.optimize:
        args.append("-" + "O" * fl.optimize)
    if fl.isolated:
        args.append("-I")
    else:
        if fl.ignore_environment:
            args.append("-E")
        if fl.no_user_site:
            args.append("-s")
        if getattr(fl, "safe_path", False):
            args.append("-P")
    if fl.no_site:
        args.append("-S")
    if fl.dont_write_bytecode:
        args.append("-B")
    if fl.bytes_warning:
        args.append("-" + "b" * fl.bytes_warning)
    if fl.verbose:
        args.append("-" + "v" * fl.verbose)
    for w in sys.warnoptions:
        args.append("-W" + w)
    for k, v in getattr(sys, "_xoptions", {}).items():
        args.append("-X" + (k if v is True else "%s=%s" % (k, v)))
    return args


def preparation_data(name: str) -> dict:
    """``spawn.get_preparation_data``, minus a main "file" that does not
    exist (``python - < script``, some notebook kernels): children of an
    interactive session do not import their parent's main module (its
    functions travel by value instead, see ``dragon._wire``)."""
    from multiprocessing import spawn

    prep = spawn.get_preparation_data(name)
    path = prep.get("init_main_from_path")
    if path is not None and not os.path.isfile(path):
        del prep["init_main_from_path"]
    return prep


def template_prep() -> dict:
    """What the template needs to import the main module as children would."""
    from multiprocessing import context

    # get_preparation_data() asks for the start method, which fixes it if
    # the program has not chosen one yet: starting the template must not.
    default = context._default_context
    actual = default._actual_context
    try:
        prep = preparation_data("dragon-template")
    finally:
        default._actual_context = actual
    # The template never unpickles a process object itself: the key stays
    # with the processes it starts (each request carries its own).
    for k in ("authkey", "name", "log_to_stderr", "log_level"):
        prep.pop(k, None)
    prep["start_method"] = "dragon"
    return prep


def ensure_template() -> str:
    """Return the run's template address, starting the template if needed.

    Does not wait for the template to be ready: requests queue on its
    socket, which exists before this returns.
    """
    addr = template_address()
    if addr is not None:
        return addr
    with _lock:
        addr = template_address()
        if addr is None:
            addr = _start_template()
    return addr


def _above_stdio(fd: int) -> int:
    if fd > 2:
        return fd
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return new


def _start_template() -> str:
    import pickle
    import socket

    rid = run_id()
    me = os.getpid()
    name = "dragon-%s-%d-%s-template" % (rid, me, os.urandom(4).hex())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.settimeout(None)  # no O_NONBLOCK from socket.setdefaulttimeout(); the template sets its own
    alive_r = alive_w = -1
    try:
        listener.bind("\0" + name)
        listener.listen(socket.SOMAXCONN)
        alive_r, alive_w = os.pipe()
        # The template's stdin/stdout are /dev/null: keep what it inherits
        # above 2 even if this process runs with closed stdio.
        listener = socket.socket(fileno=_above_stdio(listener.detach()))
        alive_r = _above_stdio(alive_r)
        prep = pickle.dumps(template_prep(), protocol=pickle.HIGHEST_PROTOCOL)
        env = dict(os.environ)
        env[TEMPLATE_ENV] = name
        env[RUN_ENV] = rid
        lfd = listener.fileno()
        os.set_inheritable(lfd, True)
        os.set_inheritable(alive_r, True)
        argv = [sys.executable, *interpreter_flags(), "-c",
                "from dragon._template import main; main()",
                str(lfd), str(alive_r), str(me)]
        try:
            pid = os.posix_spawn(
                sys.executable, argv, env,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
                setsid=True,
            )
        finally:
            os.set_inheritable(lfd, False)
            os.set_inheritable(alive_r, False)
        # The template's first read is the preparation data; it closes the
        # pipe's read end only when it exits, so this cannot block for long
        # (and a pipe holds 64 KiB anyway).
        os.write(alive_w, len(prep).to_bytes(8, "little"))
        view = memoryview(prep)
        while view:
            view = view[os.write(alive_w, view):]
    except BaseException:
        if alive_w >= 0:
            os.close(alive_w)
        raise
    finally:
        listener.close()
        if alive_r >= 0:
            os.close(alive_r)
    os.environ[TEMPLATE_ENV] = name
    _owned.pid = pid
    _owned.owner_pid = me
    _owned.alive_w = alive_w
    _owned.address = name
    from multiprocessing import util

    # Runs at exit after multiprocessing has terminated daemonic children and
    # joined the others (negative priority: after every default finalizer).
    _owned.finalizer = util.Finalize(None, shutdown, exitpriority=-100)
    return name


def main_import_error(timeout: float = 10.0) -> str:
    """What importing the main module raised in the run's template (the
    exception's last line(s), as a traceback ends), or ``""`` if it did not
    fail or there is no template. The processes the template starts import
    it again and fail the same way."""
    import socket

    from . import _startproto as proto

    addr = template_address()
    if addr is None:
        return ""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(timeout)
        sock.connect("\0" + addr)
        sock.send(proto.MAIN_ERROR)
        reply = sock.recv(65536)
    except OSError:
        return ""
    finally:
        sock.close()
    if reply[:1] != proto.REPLY_MAIN_ERROR:
        return ""
    return reply[1:].decode(errors="replace")


def template_pid() -> int | None:
    """Pid of the template this process started, if any."""
    return _owned.pid if _owned.owner_pid == os.getpid() else None


def template_status() -> str:
    """Human-readable state of the template this process started."""
    pid = template_pid()
    if pid is None:
        return "the run's template process is gone (the program that started it has ended?)"
    import select

    try:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid == 0:
            # Callers ask when a connection or pipe of the template has just
            # closed; a killed process closes its descriptors a moment before
            # the kernel marks it exited, so give it that moment.
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    select.select([fd], [], [], 0.5)
                finally:
                    os.close(fd)
            wpid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "the run's template process %d is gone" % pid
    if wpid == 0:
        return "the run's template process %d is alive" % pid
    _owned.pid = None
    return "the run's template process %d exited (exit code %d)" % (
        pid, os.waitstatus_to_exitcode(status))


def shutdown(wait: float = SHUTDOWN_WAIT) -> None:
    """Stop the template this process started: it kills every process of the
    run still alive, removes the run's shared-memory files and exits.

    Called at exit; harmless to call twice or in a process that started no
    template.
    """
    with _lock:
        if _owned.owner_pid != os.getpid() or _owned.alive_w is None:
            return
        pid, alive_w = _owned.pid, _owned.alive_w
        _owned.alive_w = None
        if os.environ.get(TEMPLATE_ENV) == _owned.address:
            del os.environ[TEMPLATE_ENV]
    os.close(alive_w)  # EOF: the template's signal to clean up and exit
    if pid is None:
        return
    if not _wait_exit(pid, wait):
        # It did not finish in time: finish for it.
        import signal

        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        kill_session(pid)
        if run_owner()[0] == os.getpid():
            remove_run_segments()
    _owned.pid = None


def _wait_exit(pid: int, timeout: float) -> bool:
    """Reap child ``pid``, waiting at most ``timeout`` seconds."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = -1
    try:
        if fd >= 0:
            select.select([fd], [], [], timeout)
        wpid, _ = os.waitpid(pid, os.WNOHANG)
        return wpid != 0
    except ChildProcessError:
        return True
    finally:
        if fd >= 0:
            os.close(fd)


# --------------------------------------------------------------------------
# Cleanup helpers (used by the template, and by tests).
# --------------------------------------------------------------------------

def remove_run_segments(rid: str | None = None) -> int:
    """Remove every ``/dev/shm/dragon-<run>-*`` file. Returns how many."""
    return _native().cleanup_run(rid or run_id())


def remove_dead_runs_segments() -> int:
    """Remove the segments of every run whose owner process is dead."""
    return _native().cleanup_dead_runs()


def session_members(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (the session leader included)."""
    out = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % e, "rb") as f:
                data = f.read()
            # After the ')' closing the command name: state ppid pgrp session
            fields = data[data.rindex(b")") + 2 :].split()
            if int(fields[3]) == sid:
                out.append(int(e))
        except (OSError, ValueError, IndexError):
            continue
    return out


def kill_session(sid: int, spare: int | None = None) -> None:
    """SIGKILL every process of session ``sid`` except ``spare``."""
    import signal

    for pid in session_members(sid):
        if pid != spare:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
