"""Processes with HPE Dragon's API (``dragon.native.process``).

:class:`Process` runs a Python callable or an executable::

    from dragon.native.process import Process, ProcessTemplate, Popen

    p = Process(target=work, args=(1, 2))          # a Python callable
    p.start(); p.join()

    ls = Process("/bin/ls", args=["-l"], stdout=Popen.PIPE)   # an executable
    ls.start()
    print(ls.stdout_conn.read()); ls.join()

Every process is a process of the run, started by the run's template (see
``docs/python-runtime.md``): a Python target runs in a pre-imported child
exactly as with ``multiprocessing``'s ``dragon`` start method (pickled by
reference, ``__main__`` re-imported), and an executable replaces such a
child (``execve``), so it gets the same pid, pidfd, sentinel, exit code and
end-of-run cleanup as any other process of the run.

Identity: ``puid`` is an integer unique on the machine for as long as it is
up (it combines the pid and the process's start time, so a reused pid never
matches an old puid). ``Process(None, ident=puid_or_name)`` finds a
process again: the same object for processes this process started (their
exit code, streams and all), or a view of any other live process of the
machine (``is_alive``, ``join``, signals; its exit code is known only to the
process that started it).

Standard streams (``stdin``/``stdout``/``stderr``): ``None`` inherits the
parent's, ``Popen.PIPE`` gives the parent a connection
(``stdout_conn.recv()`` returns text, see :mod:`dragon.native._streams`),
``Popen.DEVNULL`` discards, ``Popen.STDOUT`` (for stderr) merges into
stdout, a path (``str``) appends to that file (created if needed, relative
to the process's ``cwd``), and an ``int`` is a descriptor of the parent's.

Differences from HPE Dragon, all deliberate: an executable that does not
exist raises :class:`FileNotFoundError` (HPE: ``AttributeError``); one that
cannot be executed raises in ``start()`` (``PermissionError``...), as
``subprocess`` does; a Python target is pickled by reference like every
``multiprocessing`` target (lambdas and closures need ``cloudpickle``
installed, which is then used for them only); ``join()`` returns the exit
code, negative for a signal (``-9`` for ``SIGKILL``).
"""
from __future__ import annotations

import errno
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import weakref
from typing import Any, Callable, Protocol, Self, Sequence, TypeAlias

from .. import _native
from ..errors import DragonError
from ..infrastructure.policy import Policy
from . import _child
from ._streams import InputConnection, OutputConnection, wait_readable

__all__ = [
    "Process", "ProcessTemplate", "Popen", "ProcessError", "current",
    "PIPE", "STDOUT", "DEVNULL", "MSG_PIPE", "MSG_STDOUT", "MSG_DEVNULL",
]

PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL
# HPE Dragon's names for the same values (dragon.infrastructure.messages).
MSG_PIPE = PIPE
MSG_STDOUT = STDOUT
MSG_DEVNULL = DEVNULL


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


#: A process's target: a Python callable, or the path (or name on ``PATH``)
#: of an executable.
Target: TypeAlias = "Callable[..., object] | str | bytes | os.PathLike[str] | os.PathLike[bytes]"
#: What a standard stream of a process may be: ``None`` (inherited),
#: ``PIPE``, ``DEVNULL``, ``STDOUT`` (stderr only), a file path, a descriptor,
#: or an object with ``fileno()``.
Stream: TypeAlias = "int | str | bytes | os.PathLike[str] | os.PathLike[bytes] | _HasFileno | None"


class ProcessError(DragonError):
    """A process could not be found, started or managed."""


# ---------------------------------------------------------------------------
# Identity: puids
# ---------------------------------------------------------------------------

#: The process's start time (clock ticks after boot), or ``None`` if there
#: is no such process.
_start_ticks = _native.process_start


def make_puid(pid: int, ticks: int) -> int:
    """The puid of the process ``pid`` started at ``ticks``."""
    return (ticks << 32) | pid


def split_puid(puid: int) -> tuple[int, int]:
    """``(pid, start ticks)`` of a puid."""
    return puid & 0xFFFFFFFF, puid >> 32


def _puid_of(pid: int) -> int | None:
    ticks = _start_ticks(pid)
    return None if ticks is None else make_puid(pid, ticks)


_self_puid: tuple[int | None, int | None] = (None, None)  # (pid, puid), recomputed after fork


def my_puid() -> int:
    """The puid of the calling process."""
    global _self_puid
    pid = os.getpid()
    if _self_puid[0] != pid:
        _self_puid = (pid, _puid_of(pid))
    return _self_puid[1]  # type: ignore[return-value]  # this process runs: it has start ticks


# Processes started by this process, by puid and by name (weak: a process
# nobody refers to any more is forgotten, its descriptors released), and the
# exit codes seen of processes this process started.
_lock = threading.Lock()
_by_puid: "weakref.WeakValueDictionary[int, Process]" = weakref.WeakValueDictionary()
_by_name: "weakref.WeakValueDictionary[str, Process]" = weakref.WeakValueDictionary()
_exit_codes: dict[int, int] = {}
_names = itertools.count(1)


def _registered(ident: object) -> Process | None:
    with _lock:
        if isinstance(ident, str):
            return _by_name.get(ident)
        if isinstance(ident, int) and not isinstance(ident, bool):
            return _by_puid.get(ident)
    return None


def note_exit(puid: int | None, code: int | None) -> None:
    """Remember the exit code of process ``puid`` (once known), for the
    processes looked up by its puid after it has exited."""
    if puid is not None and code is not None:
        _exit_codes[puid] = code


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------

def _find_executable(target: str, cwd: str) -> str:
    """As HPE Dragon looks for it: the path as given, then ``PATH``, then
    relative to the process's working directory."""
    if os.path.isfile(target):
        return os.path.abspath(target)
    if os.sep not in target:
        found = shutil.which(target)
        if found:
            return os.path.abspath(found)
    candidate = os.path.join(cwd, target)
    if os.path.isfile(candidate):
        return os.path.abspath(candidate)
    raise FileNotFoundError(
        errno.ENOENT,
        "Cannot find executable %r directly, in PATH or in working directory %r" % (target, cwd),
        target)


def _exec_args(args: object) -> list[str]:
    if args is None:
        return []
    if isinstance(args, (str, bytes)):
        raise TypeError("args of an executable must be a list of arguments, not one string: %r" % (args,))
    out = []
    for a in args:  # type: ignore[attr-defined]
        if isinstance(a, (str, bytes, os.PathLike)):
            out.append(os.fsdecode(a))
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            out.append(str(a))
        else:
            raise TypeError("an executable's arguments are strings; %r is a %s" % (a, type(a).__name__))
    return out


def _check_env(env: object) -> dict[str, str] | None:
    if env is None:
        return None
    if not isinstance(env, dict):
        raise TypeError("env must be a dict of strings, not %s" % type(env).__name__)
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("env must map strings to strings; %r: %r is not" % (k, v))
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ValueError("invalid environment variable %r" % (k,))
    return dict(env)


def _check_stream(name: str, value: object) -> int | str | None:
    if isinstance(value, bool):
        raise TypeError("%s: %r is not a stream" % (name, value))
    if value is None or value in (PIPE, DEVNULL):
        return value
    if value == STDOUT:
        if name != "stderr":
            raise ValueError("%s=STDOUT is only meaningful for stderr" % name)
        return value
    if isinstance(value, (str, bytes, os.PathLike)):
        return os.fsdecode(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("%s: %d is neither a descriptor nor PIPE/STDOUT/DEVNULL" % (name, value))
        return value
    if hasattr(value, "fileno"):
        fileno: int = value.fileno()
        return fileno
    raise TypeError("%s must be None, PIPE, DEVNULL%s, a path or a descriptor, not %r"
                    % (name, ", STDOUT" if name == "stderr" else "", value))


class _AliveFlag:
    """``is_alive`` is a property in HPE Dragon and a method in
    ``multiprocessing``: this value works as both (``if p.is_alive:`` and
    ``p.is_alive()``)."""

    __slots__ = ("_v",)

    def __init__(self, v: object) -> None:
        self._v = bool(v)

    def __bool__(self) -> bool:
        return self._v

    def __call__(self) -> bool:
        return self._v

    def __eq__(self, other: object) -> bool:
        return bool(self) == other

    def __hash__(self) -> int:
        return hash(self._v)

    def __repr__(self) -> str:
        return repr(self._v)


# ---------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------

class ProcessTemplate:
    """The blueprint of a process: target (a Python callable or the path of
    an executable), arguments, working directory, environment additions,
    standard streams and policy. Not startable itself: make processes with
    :meth:`Process.from_template` or give it to a
    :class:`~dragon.native.process_group.ProcessGroup`."""

    PIPE = PIPE
    STDOUT = STDOUT
    DEVNULL = DEVNULL

    target: Any  # Callable[..., object] for a Python target, else the executable's path (str)
    args: Sequence[Any]  # a tuple for a Python target, a list of strings for an executable
    kwargs: dict[str, Any] | None  # None for an executable
    cwd: str
    env: dict[str, str] | None
    stdin: int | str | None
    stdout: int | str | None
    stderr: int | str | None
    policy: Policy | None
    options: Any

    def __init__(self, target: Target, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
                 cwd: str | os.PathLike[str] | None = ".", env: dict[str, str] | None = None,
                 stdin: Stream = None, stdout: Stream = None, stderr: Stream = None,
                 policy: Policy | None = None, options: Any = None) -> None:
        if cwd is None or cwd == ".":
            cwd = os.getcwd()
        cwd = os.path.abspath(os.fsdecode(cwd))
        self.is_python = callable(target)
        if self.is_python:
            self.target = target
            self.args = tuple(args) if args is not None else ()
            self.kwargs = dict(kwargs) if kwargs is not None else {}
        else:
            if not isinstance(target, (str, bytes, os.PathLike)):
                raise TypeError("target must be a Python callable or the path of an executable, not %r"
                                % (target,))
            if kwargs:
                raise TypeError("kwargs are for Python targets; an executable takes args only")
            self.target = _find_executable(os.fsdecode(target), cwd)
            self.args = _exec_args(args)
            self.kwargs = None
        self.cwd = cwd
        self.env = _check_env(env)
        self.stdin = _check_stream("stdin", stdin)
        self.stdout = _check_stream("stdout", stdout)
        self.stderr = _check_stream("stderr", stderr)
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError("policy must be a dragon.infrastructure.policy.Policy, not %s"
                            % type(policy).__name__)
        self.policy = policy
        self.options = options

    def get_original_python_parameters(self) -> tuple[Callable[..., Any], Sequence[Any], dict[str, Any]]:
        """``(target, args, kwargs)`` of a Python template."""
        if not self.is_python:
            raise ProcessError("this template runs an executable, not a Python callable")
        assert self.kwargs is not None  # a Python target's are a dict
        return self.target, self.args, self.kwargs

    def start(self) -> None:
        raise NotImplementedError("You need to create a Process object from this template to start it.")

    def __repr__(self) -> str:
        return "%s(%r, args=%r)" % (type(self).__name__, self.target, self.args)


# ---------------------------------------------------------------------------
# Views of processes this process did not start
# ---------------------------------------------------------------------------

class _Foreign:
    """A live process of the machine found by puid: liveness, waiting and
    signals through a pidfd (a reused pid is never signalled)."""

    def __init__(self, puid: int) -> None:
        pid, ticks = split_puid(puid)
        self.pid, self.puid = pid, puid
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            raise ProcessLookupError(pid) from None
        if _start_ticks(pid) != ticks:
            os.close(self._pidfd)
            self._pidfd = -1
            raise ProcessLookupError(pid)

    def __del__(self) -> None:
        fd, self._pidfd = getattr(self, "_pidfd", -1), -1
        if fd >= 0:
            os.close(fd)

    def exited(self, timeout: float | None = 0.0) -> bool:
        return bool(wait_readable(self._pidfd, timeout))

    @property
    def exitcode(self) -> int | None:
        return _exit_codes.get(self.puid) if self.exited() else None

    def send_signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

class Process(ProcessTemplate):
    """A process of the run: a Python callable or an executable.

    ``Process(None, ident=x)`` finds an existing process by puid or name
    (see the module docstring). ``ident`` names a new process (unique among
    the live processes this process started).
    """

    started: bool
    ident: str | int | None
    stdin_conn: InputConnection | None
    stdout_conn: OutputConnection | None
    stderr_conn: OutputConnection | None
    _mp: Any  # the multiprocessing process (a DragonProcess), once started
    _view: str | None
    _foreign: Any  # a _Foreign for a process found by puid
    _known_code: int | None
    _puid: int | None
    _pid: int | None
    _argv0: str | None
    _umask: int | None

    def __new__(cls, target: Target | None = None, *args: Any, **kwargs: Any) -> Self:
        if target is None and kwargs.get("ident") is not None:
            found = _registered(kwargs["ident"])
            if found is not None:
                return found  # type: ignore[return-value]  # a process of this class, or of a base
        return super().__new__(cls)

    def __init__(self, target: Target | None, args: Sequence[Any] | None = None,
                 kwargs: dict[str, Any] | None = None, cwd: str | os.PathLike[str] | None = ".",
                 env: dict[str, str] | None = None, ident: str | int | None = None, _pmi_enabled: bool = False,
                 stdin: Stream = None, stdout: Stream = None, stderr: Stream = None,
                 policy: Policy | None = None, options: Any = None) -> None:
        if getattr(self, "_ready", False):
            return  # an existing process, returned by __new__
        self.started = False
        self.ident = ident
        self._mp = None          # the multiprocessing process, once started
        self._view = None        # "self", "foreign" or "exited" for looked-up processes
        self._foreign = None
        self._known_code = None
        self._puid = None
        self._pid = None
        self._argv0 = None
        self._umask = None
        self.stdin_conn = self.stdout_conn = self.stderr_conn = None
        if target is None:
            if ident is None:
                raise ProcessError("Process(None, ident=...) looks a process up: give its puid or name")
            self._init_view(ident)
            self._ready = True
            return
        if _pmi_enabled:
            raise NotImplementedError("PMI (MPI process launch) is not supported by this runtime")
        if ident is not None:
            if isinstance(ident, bool) or not isinstance(ident, (str, int)):
                raise TypeError("ident is a name (str), not %r" % (ident,))
            if not isinstance(ident, str):
                raise ProcessError("a new process is named by a string; puids are given by the runtime")
            other = _registered(ident)
            if other is not None and other.is_alive:
                raise ProcessError("A process %r already exists (puid %s)" % (ident, other.puid))
        super().__init__(target, args, kwargs, cwd, env, stdin, stdout, stderr, policy, options)
        self._ready = True

    # -- lookup -------------------------------------------------------------------
    def _init_view(self, ident: object) -> None:
        if isinstance(ident, str):
            raise ProcessError("no process named %r was started by this process" % ident)
        if isinstance(ident, bool) or not isinstance(ident, int):
            raise TypeError("ident is a puid (int) or a name (str), not %r" % (ident,))
        self.started = True
        self._puid = ident
        self._pid = split_puid(ident)[0]
        if ident == my_puid():
            self._view = "self"
            return
        try:
            self._foreign = _Foreign(ident)
            self._view = "foreign"
        except ProcessLookupError:
            if ident in _exit_codes:
                self._view = "exited"
                self._known_code = _exit_codes[ident]
            else:
                raise ProcessError("no process with puid %d is running (and this process did not start "
                                   "it, so its exit code is unknown)" % ident) from None

    @classmethod
    def from_template(cls, template: ProcessTemplate, ident: str | None = None,
                      _pmi_enabled: bool = False) -> Self:
        """A new (unstarted) process from ``template``."""
        if ident is not None and _registered(ident) is not None:
            raise ProcessError("A process %r already exists" % (ident,))
        if template.is_python:
            target, args, kwargs = template.target, template.args, template.kwargs
        else:
            target, args, kwargs = template.target, template.args, None
        return cls(target, args, kwargs, template.cwd, template.env, ident=ident, _pmi_enabled=_pmi_enabled,
                   stdin=template.stdin, stdout=template.stdout, stderr=template.stderr,
                   policy=template.policy, options=template.options)

    # -- starting -----------------------------------------------------------------
    def start(self) -> None:
        """Start the process. For an executable, returns once it has been
        executed (errors such as a file that is not executable are raised
        here, as ``subprocess`` raises them)."""
        if self._view is not None:
            raise ProcessError("this object is a view of an existing process; it cannot be started")
        if self.started:
            raise RuntimeError("This Process has already been started with puid %s" % self.puid)
        from . import machine

        self.policy = Policy.merge(Policy.global_policy(), self.policy)
        cpus = machine.check_policy(self.policy)
        node = machine.policy_node(self.policy)
        if not os.path.isdir(self.cwd):
            raise FileNotFoundError(errno.ENOENT, "working directory does not exist", self.cwd)
        spec: dict[str, Any] = {"kind": "python" if self.is_python else "exec", "cwd": self.cwd, "env": self.env,
                "cpus": cpus, "umask": self._umask, "stdio": {}}
        child_fds: list[int] = []
        conns: dict[int, Any] = {}
        status_r = -1
        try:
            self._redirect(spec, child_fds, conns)
            if self.is_python:
                spec["call"] = self._python_call()
            else:
                spec["path"] = self.target
                spec["argv"] = [self._argv0 or self.target] + list(self.args)
                status_r, status_w = os.pipe()
                child_fds.append(status_w)
                spec["status"] = _child.SentFd(status_w)
            proc = self._new_mp_process(spec)
            if node is not None:
                proc._dragon_node = node
            proc.start()
        except BaseException:
            for c in conns.values():
                c.close()
            _close_fds([status_r])
            raise
        finally:
            _close_fds(child_fds)
        self._mp = proc
        self._pid = proc.pid
        ticks = _start_ticks(proc.pid)
        self._puid = make_puid(proc.pid, ticks if ticks is not None else 0)
        self.stdin_conn = conns.get(0)
        self.stdout_conn = conns.get(1)
        self.stderr_conn = conns.get(2)
        self.started = True
        with _lock:
            _by_puid[self._puid] = self
            if isinstance(self.ident, str):
                _by_name[self.ident] = self
        if status_r >= 0:
            self._wait_exec(status_r)

    def _python_call(self) -> object:
        from multiprocessing.reduction import ForkingPickler

        call = (self.target, self.args, self.kwargs)
        try:
            ForkingPickler.dumps(self.target)
            return call
        except Exception as e:
            reason = e
        try:
            import cloudpickle
        except ImportError:
            raise ProcessError(
                "the target %r cannot be pickled by reference (%s): define it at the top level of a "
                "module, or install cloudpickle to send lambdas and closures by value"
                % (self.target, reason)) from None
        return _child.CloudCall(cloudpickle.dumps(call))

    def _new_mp_process(self, spec: dict[str, Any]) -> Any:
        from ..context import DragonProcess

        name = self.ident if isinstance(self.ident, str) else "NativeProcess-%d" % next(_names)
        return DragonProcess(target=_child.main, args=(spec,), name=name)

    def _redirect(self, spec: dict[str, Any], child_fds: list[int], conns: dict[int, Any]) -> None:
        stdio = spec["stdio"]
        for fd, how in ((0, self.stdin), (1, self.stdout), (2, self.stderr)):
            if how is None:
                continue
            if how == DEVNULL:
                stdio[fd] = (_child.DEVNULL,)
            elif how == STDOUT:
                stdio[fd] = (_child.TO_STDOUT,)
            elif how == PIPE:
                r, w = os.pipe()
                if fd == 0:
                    child_fds.append(r)
                    conns[fd] = InputConnection(w)
                    stdio[fd] = (_child.FD, _child.SentFd(r))
                else:
                    child_fds.append(w)
                    conns[fd] = OutputConnection(r)
                    stdio[fd] = (_child.FD, _child.SentFd(w))
            elif isinstance(how, str):
                path = os.path.join(self.cwd, how)
                flags = os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_APPEND
                f = os.open(path, flags | os.O_CLOEXEC, 0o600)  # private, like every file the runtime creates
                child_fds.append(f)
                stdio[fd] = (_child.FD, _child.SentFd(f))
            else:  # a descriptor of ours
                f = os.dup(how)
                child_fds.append(f)
                stdio[fd] = (_child.FD, _child.SentFd(f))

    def _wait_exec(self, status_r: int) -> None:
        import struct

        try:
            data = b""
            while True:
                chunk = os.read(status_r, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(status_r)
        if not data:
            return  # end of file: the executable is running
        self._mp.join(5)
        note_exit(self._puid, self._mp.exitcode)
        code = struct.unpack("<i", data[:4])[0] if len(data) >= 4 else 0
        msg = data[4:].decode(errors="replace")
        if code:
            raise OSError(code, msg, self.target)
        raise ProcessError("cannot start %s: %s" % (self.target, msg))

    # -- state ------------------------------------------------------------------
    def _check_started(self) -> None:
        if not self.started:
            raise ProcessError("the process has not been started")

    @property
    def puid(self) -> int | None:
        """The process's puid (``None`` before ``start()``)."""
        return self._puid

    @property
    def pid(self) -> int | None:
        """The OS process id (``None`` before ``start()``)."""
        return self._pid

    @property
    def name(self) -> str | None:
        if isinstance(self.ident, str):
            return self.ident
        if self._mp is not None:
            return self._mp.name
        if self._view == "self":
            import multiprocessing

            return multiprocessing.current_process().name
        return None

    @property
    def node(self) -> int:
        """Index of the node the process runs on (0: one node)."""
        return 0

    @property
    def h_uid(self) -> int:
        """Id of the node the process runs on (see :mod:`dragon.native.machine`)."""
        from .machine import current as current_node

        return current_node().h_uid

    @property
    def is_alive(self) -> _AliveFlag:
        """Whether the process runs (usable as ``p.is_alive`` and as
        ``p.is_alive()``)."""
        if self._mp is not None:
            alive = self._mp.is_alive()
            if not alive:
                note_exit(self._puid, self._mp.exitcode)
            return _AliveFlag(alive)
        if self._view == "self":
            return _AliveFlag(True)
        if self._view == "foreign":
            return _AliveFlag(not self._foreign.exited())
        return _AliveFlag(False)

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited (negative: killed by
        that signal), ``None`` while it runs or if unknown."""
        if self._mp is not None:
            code = self._mp.exitcode
            note_exit(self._puid, code)
            return code
        if self._view == "foreign":
            return self._foreign.exitcode
        return self._known_code

    exitcode = returncode

    def join(self, timeout: float | None = None) -> int | None:
        """Wait until the process exits, at most ``timeout`` seconds; return
        its exit code (``None`` on timeout)."""
        self._check_started()
        if timeout is not None and timeout < 0:
            timeout = 0
        if self._mp is not None:
            self._mp.join(timeout)
            return self.returncode
        if self._view == "self":
            raise ProcessError("a process cannot join itself")
        if self._view == "foreign":
            self._foreign.exited(timeout)
            return self._foreign.exitcode
        return self._known_code

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (nothing happens if it has exited)."""
        self._check_started()
        if self._mp is not None:
            self._mp._popen._send_signal(sig)
        elif self._view == "self":
            os.kill(os.getpid(), sig)
        elif self._view == "foreign":
            self._foreign.send_signal(sig)

    def terminate(self) -> None:
        """Send ``SIGTERM``."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send ``SIGKILL``."""
        self.send_signal(signal.SIGKILL)

    def _sentinel(self) -> int | None:
        return self._mp.sentinel if self._mp is not None else None

    def children(self) -> list[Process]:
        """The live processes this process started (known for
        :func:`current` only)."""
        if self._view != "self":
            raise ProcessError("the children of a process are known to that process only (use current())")
        with _lock:
            procs = list(_by_puid.values())
        return [p for p in procs if p.is_alive]

    def parent(self) -> "Process":
        """The process that started this one."""
        if self._mp is not None:
            return current()
        if self._view == "self":
            import multiprocessing

            parent = multiprocessing.parent_process()
            if parent is None or parent.pid is None:
                raise ProcessError("this is the run's first process: it has no parent in the run")
            puid = _puid_of(parent.pid)
            if puid is None:
                raise ProcessError("the parent process (pid %d) has exited" % parent.pid)
            return Process(None, ident=puid)
        raise ProcessError("the parent of a process is known to that process and its parent only")

    def __reduce__(self) -> tuple[Any, ...]:
        if self.started:
            return (_attach, (self._puid,))
        return (_rebuild_unstarted, (type(self), self.__dict__.copy()))

    def __repr__(self) -> str:
        if self.started:
            return "<%s %s puid=%s pid=%s%s>" % (
                type(self).__name__, self.name, self._puid, self._pid,
                "" if self.returncode is None else " returncode=%s" % self.returncode)
        return "<%s %r (not started)>" % (type(self).__name__, self.target)


def _attach(puid: int) -> Process:
    return Process(None, ident=puid)


def _rebuild_unstarted(cls: type[Process], state: dict[str, Any]) -> Process:
    obj = object.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _close_fds(fds: Sequence[int | None]) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def current() -> Process:
    """The calling process."""
    return Process(None, ident=my_puid())


# ---------------------------------------------------------------------------
# subprocess-style Popen
# ---------------------------------------------------------------------------

class Popen:
    """``subprocess.Popen``'s interface for an executable run as a process
    of the run. ``stdin``/``stdout``/``stderr`` are text connections (see
    :mod:`dragon.native._streams`) when ``PIPE`` is asked for.

    Not supported (raise ``NotImplementedError``): ``preexec_fn``,
    ``group``, ``user``. ``pipesize`` is ignored.
    """

    PIPE = PIPE
    STDOUT = STDOUT
    DEVNULL = DEVNULL

    stdin: InputConnection | None
    stdout: OutputConnection | None
    stderr: OutputConnection | None

    def __init__(self, args: str | bytes | os.PathLike[str] | os.PathLike[bytes] | Sequence[Any],
                 executable: str | bytes | os.PathLike[str] | None = None, stdin: Stream = None,
                 stdout: Stream = None, stderr: Stream = None, preexec_fn: Callable[[], object] | None = None,
                 shell: bool = False, cwd: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
                 group: str | int | None = None, user: str | int | None = None, proc_name: str | None = None,
                 umask: int = -1, pipesize: int = -1) -> None:
        for name, value in (("preexec_fn", preexec_fn), ("group", group), ("user", user)):
            if value is not None:
                raise NotImplementedError("Popen(%s=...) is not supported by this runtime" % name)
        self.args = args
        argv: list[Any]
        if shell:
            argv = ["/bin/sh", "-c", args if isinstance(args, str) else " ".join(map(str, args))]  # type: ignore[arg-type]
            exe = executable or "/bin/sh"
        else:
            argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
            if not argv:
                raise ValueError("Popen needs at least the program to run")
            argv = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else a for a in argv]
            exe = executable or argv[0]
        exe = os.fsdecode(exe)
        if exe.strip().endswith(".py"):
            script = _find_executable(exe, os.path.abspath(cwd or os.getcwd()))
            argv = [sys.executable, script] + argv[1:]
            exe = sys.executable
        self._proc = Process(exe, args=argv[1:], cwd=cwd or ".", env=env, ident=proc_name,
                             stdin=stdin, stdout=stdout, stderr=stderr)
        self._proc._argv0 = argv[0]
        if umask is not None and umask >= 0:
            self._proc._umask = umask
        self._proc.start()
        self.stdin = self._proc.stdin_conn
        self.stdout = self._proc.stdout_conn
        self.stderr = self._proc.stderr_conn

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for c in (self.stdin, self.stdout, self.stderr):
            if c is not None:
                c.close()
        self.wait()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def puid(self) -> int | None:
        return self._proc.puid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def poll(self) -> int | None:
        """The exit code if the process has exited, else ``None``."""
        return self._proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code; ``subprocess.TimeoutExpired`` on timeout."""
        code = self._proc.join(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        return code

    def communicate(self, input: str | None = None,
                    timeout: float | None = None) -> tuple[str | None, str | None]:
        """Send ``input`` to stdin, read stdout and stderr to their ends,
        wait for the exit; returns ``(stdout, stderr)`` (text, ``None`` for
        a stream that is not a pipe)."""
        out: list[str] = []
        err: list[str] = []
        threads = []
        stdin = self.stdin
        if stdin is not None:
            def feed() -> None:
                try:
                    if input:
                        stdin.send(input)
                except BrokenPipeError:
                    pass
                finally:
                    stdin.close()

            threads.append(threading.Thread(target=feed, daemon=True))
        for conn, sink in ((self.stdout, out), (self.stderr, err)):
            if conn is not None:
                threads.append(threading.Thread(target=lambda c=conn, s=sink: s.append(c.read()),
                                                daemon=True))
        for t in threads:
            t.start()
        code = self._proc.join(timeout)
        for t in threads:
            t.join(timeout)
        if code is None or any(t.is_alive() for t in threads):
            raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        return (out[0] if self.stdout is not None else None,
                err[0] if self.stderr is not None else None)

    def send_signal(self, sig: int) -> None:
        self._proc.send_signal(sig)

    def terminate(self) -> None:
        self._proc.terminate()

    def kill(self) -> None:
        self._proc.kill()
