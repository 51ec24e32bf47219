"""A group of processes managed together (HPE Dragon's
``dragon.native.process_group.ProcessGroup``)::

    from dragon.native.process import ProcessTemplate
    from dragon.native.process_group import ProcessGroup

    pg = ProcessGroup()
    pg.add_process(nproc=4, template=ProcessTemplate(target=work, args=(1,)))
    pg.init()
    pg.start()
    pg.join()      # waits for all four; raises DragonUserCodeError if one failed
    pg.close()

Life cycle: ``add_process`` (any number of templates, each ``nproc``
times), ``init`` (once; the group is then *Idle*), ``start`` (*Running*),
then ``join(timeout)`` / ``stop(patience)`` / ``kill()`` / ``terminate()``
back to *Idle* (a group may be started again), and ``close`` at the end
(after which ``init`` may be called again).

Options, as in HPE Dragon:

* ``restart=True``: a process that exits is replaced by a new one from the
  same template, until ``join()``, ``stop()``, ``kill()``,
  ``terminate()``, ``close()`` or ``stop_restart()``. A process that keeps
  exiting within a second of its start is restarted after a delay that
  doubles up to one second (HPE restarts at once, forever).
* ``ignore_error_on_exit=False`` (the default): a process that exits with a
  non-zero code, or is killed by a signal the group did not send, is an
  error: the next ``join()`` raises :class:`DragonUserCodeError` (with the
  exit codes), ``in_error_state`` turns true, and — unless ``restart`` —
  the rest of the group is stopped (MPI-style: one failed rank ends the
  job), as HPE Dragon does. Exits caused by the group's own signals
  (``stop``, ``kill``, ``terminate``, ``send_signal``, ``walltime``) are
  never errors.
* ``walltime``: seconds after ``start()`` at which the group is stopped.
* ``policy``: applies to every process, refined by each template's policy.

The group is managed by a thread of the process that created it (HPE
Dragon uses a manager process): the group cannot be pickled to another
process, and it is stopped (``SIGTERM``, then ``SIGKILL`` after one second)
when the process that created it exits without closing it. Puids of the
group's processes work with ``Process(None, ident=puid)`` in this process
(exit code, streams), and as views elsewhere; after a process exited, the
group keeps it (the last 1024, until ``close()``) so that its exit code and
captured output can still be read.

Not supported: ``pmi_enabled=True`` (MPI launch through PMI) raises
``NotImplementedError`` in ``init()``; ``hide_stderr`` is accepted and has
no effect.
"""
from __future__ import annotations

import collections
import os
import select
import signal
import threading
import time
from typing import Any, Self

from ..errors import DragonError
from ..infrastructure.policy import Policy
from .process import Process, ProcessTemplate, note_exit

__all__ = [
    "ProcessGroup",
    "DragonProcessGroupError",
    "DragonProcessGroupException",
    "DragonProcessGroupAlreadyInitialized",
    "DragonProcessGroupIdleError",
    "DragonProcessGroupStartError",
    "DragonProcessGroupRunningError",
    "DragonProcessGroupJoinError",
    "DragonProcessGroupSignalError",
    "DragonUserCodeError",
]

_DEFAULT_STOP_PATIENCE = 5.0  # seconds between SIGINT, SIGTERM and SIGKILL
_KEEP_EXITED = 1024  # exited processes a group keeps reachable (with their output)
_EXIT_PATIENCE = 1.0          # the same when the owner exits without close()
_QUICK_EXIT = 1.0             # a process that lives less than this is restarted after a delay
_MAX_BACKOFF = 1.0


class DragonProcessGroupError(DragonError):
    """Base class of the process group's errors."""


class DragonProcessGroupException(DragonProcessGroupError):
    pass


class DragonProcessGroupAlreadyInitialized(DragonProcessGroupError):
    """``init()`` was called twice, or processes were added after it."""


class DragonProcessGroupIdleError(DragonProcessGroupError):
    pass


class DragonProcessGroupStartError(DragonProcessGroupError):
    """A process of the group could not be started (nothing of the group
    is left running)."""


class DragonProcessGroupRunningError(DragonProcessGroupError):
    """The operation needs another state (``init()`` first, or the group is
    already running)."""


class DragonProcessGroupJoinError(DragonProcessGroupError):
    pass


class DragonProcessGroupSignalError(DragonProcessGroupError):
    pass


class DragonUserCodeError(DragonProcessGroupError):
    """Processes of the group exited with errors (their exit codes are in
    ``exit_codes``)."""

    def __init__(self, message: str, exit_codes: Any = ()) -> None:
        super().__init__(message)
        self.exit_codes = list(exit_codes)


class _Slot:
    """One process position of the group (restarts reuse it)."""

    __slots__ = ("template", "proc", "started_at", "backoff", "restart_at")

    def __init__(self, template: ProcessTemplate) -> None:
        self.template = template
        self.proc: Process | None = None
        self.started_at = 0.0
        self.backoff = 0.0
        self.restart_at: float | None = None


class _Manager:
    """The group's state and the thread that watches its processes."""

    def __init__(self, templates: list[tuple[int, ProcessTemplate]], restart: bool, ignore_error_on_exit: bool,
                 walltime: float | None, policy: Policy | None, name: str | None) -> None:
        self.templates = templates
        self.restart_default = restart
        self.ignore_error = ignore_error_on_exit
        self.walltime = walltime
        self.policy = policy
        self.name = name
        self.cv = threading.Condition()
        self.slots: list[_Slot] = []
        self.inactive: list[tuple[int, int | None]] = []  # (puid, exit code) of every process that exited
        # The last exited processes themselves, so that Process(None, ident=puid)
        # still finds them and their captured output stays readable.
        self.exited_procs: collections.OrderedDict[int, Process] = collections.OrderedDict()
        self.restart = False
        self.running = False
        self.signalled: set[int | None] = set()  # puids the group signalled: their exits are not errors
        self.stopping: list[Any] | None = None  # [stage, deadline, patience] while stopping
        self.error_codes: list[int | None] = []  # exit codes not yet reported by join()
        self.error_seen = False
        self.deadline: float | None = None  # walltime
        self.start_error: Exception | None = None  # a restart that failed
        self.base_policy: Policy | None = None  # the caller's policy when start() was called
        self.closed = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.thread = threading.Thread(target=self._run, name="ProcessGroup-%s" % (name or id(self)),
                                       daemon=True)
        self.thread.start()

    # -- helpers (called with cv held) ------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def live(self) -> list[Process]:
        return [s.proc for s in self.slots if s.proc is not None]

    def busy(self) -> bool:
        return any(s.proc is not None or s.restart_at is not None for s in self.slots)

    def _policy_for(self, template: ProcessTemplate) -> Policy:
        # The policy in force where start() was called (restarts happen in
        # the watching thread, whose own policy stack is the default), then
        # the group's, then the template's.
        return Policy.merge(Policy.merge(self.base_policy, self.policy), template.policy)

    def _start_slot(self, slot: _Slot) -> None:
        t = slot.template
        proc = Process.from_template(t)
        proc.policy = self._policy_for(t)
        proc.start()
        slot.proc = proc
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def signal_all(self, sig: int) -> None:
        for p in self.live():
            self.signalled.add(p.puid)
            try:
                p.send_signal(sig)
            except Exception:
                pass

    def begin_stop(self, patience: float) -> None:
        self.restart = False
        for s in self.slots:
            s.restart_at = None
        if self.stopping is None and self.live():
            self.stopping = [0, time.monotonic() + patience, patience]
            self.signal_all(signal.SIGINT)
        self._wake()

    # -- the watching thread ----------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cv:
                if self.closed:
                    break
                # A fresh poll set each round: sentinels of exited processes
                # are closed (and their numbers reused) once they are dropped.
                poller = select.poll()
                poller.register(self.wake_r, select.POLLIN)
                by_fd: dict[int, _Slot] = {}
                for slot in self.slots:
                    if slot.proc is not None:
                        fd: int = slot.proc._sentinel()  # type: ignore[assignment]  # a started process's
                        by_fd[fd] = slot
                        poller.register(fd, select.POLLIN)
                timeout = self._next_deadline()
            events = poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
            with self.cv:
                for fd, _ in events:
                    if fd == self.wake_r:
                        try:
                            os.read(self.wake_r, 4096)
                        except OSError:
                            pass
                        continue
                    hit = by_fd.get(fd)
                    if hit is not None and hit.proc is not None and hit.proc._sentinel() == fd:
                        self._exited(hit)
                self._deadlines()
                if self.running and not self.busy():
                    self.running = False
                    self.stopping = None
                self.cv.notify_all()

    def _next_deadline(self) -> float | None:
        now = time.monotonic()
        times = [s.restart_at for s in self.slots if s.restart_at is not None]
        if self.stopping is not None and self.stopping[1] is not None:
            times.append(self.stopping[1])
        if self.deadline is not None and self.running:
            times.append(self.deadline)
        return None if not times else max(0.0, min(times) - now)

    def _deadlines(self) -> None:
        now = time.monotonic()
        if self.deadline is not None and self.running and now >= self.deadline:
            self.deadline = None
            self.begin_stop(_DEFAULT_STOP_PATIENCE)
        if self.stopping is not None and self.stopping[1] is not None and now >= self.stopping[1]:
            stage, _, patience = self.stopping
            if stage == 0:
                self.stopping = [1, now + patience, patience]
                self.signal_all(signal.SIGTERM)
            else:
                self.stopping = [2, None, patience]
                self.signal_all(signal.SIGKILL)
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                if not self.restart or self.stopping is not None:
                    slot.restart_at = None
                    continue
                try:
                    self._start_slot(slot)
                except Exception as e:
                    slot.restart_at = None
                    self.error_codes.append(None)
                    self.error_seen = True
                    self.start_error = e

    def _exited(self, slot: _Slot) -> None:
        proc, slot.proc = slot.proc, None
        assert proc is not None and proc.puid is not None  # a started process
        proc.join(0)
        code = proc.returncode
        note_exit(proc.puid, code)
        self.inactive.append((proc.puid, code))
        self.exited_procs[proc.puid] = proc
        while len(self.exited_procs) > _KEEP_EXITED:
            self.exited_procs.popitem(last=False)
        ours = proc.puid in self.signalled or self.stopping is not None
        self.signalled.discard(proc.puid)
        if code != 0 and not ours and not self.ignore_error:
            self.error_codes.append(code)
            self.error_seen = True
            if not self.restart:
                self.begin_stop(_DEFAULT_STOP_PATIENCE)
        if self.restart and self.stopping is None:
            lived = time.monotonic() - slot.started_at
            if lived < _QUICK_EXIT:
                slot.backoff = min(max(slot.backoff * 2, 0.01), _MAX_BACKOFF)
            else:
                slot.backoff = 0.0
            slot.restart_at = time.monotonic() + slot.backoff

    # -- operations from the group's owner ---------------------------------------
    def start(self) -> None:
        with self.cv:
            if self.running:
                raise DragonProcessGroupRunningError("the group is already running; join() or stop() it first")
            self.slots = [_Slot(t) for n, t in self.templates for _ in range(n)]
            self.base_policy = Policy.global_policy()
            self.restart = self.restart_default
            self.stopping = None
            self.signalled.clear()
            self.error_codes = []
            self.error_seen = False
            self.start_error = None
            try:
                for slot in self.slots:
                    self._start_slot(slot)
            except BaseException as e:
                self.restart = False
                for p in self.live():
                    self.signalled.add(p.puid)
                    p.kill()
                for p in self.live():
                    p.join(5)
                for s in self.slots:
                    s.proc = None
                self.slots = []
                if isinstance(e, Exception):
                    raise DragonProcessGroupStartError("could not start the group's processes: %s" % e) from e
                raise
            self.running = True
            self.deadline = time.monotonic() + self.walltime if self.walltime else None
            self._wake()

    def wait_idle(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while self.busy() or self.running:
                if self.closed:
                    break
                if deadline is None:
                    self.cv.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.cv.wait(left)
        return True

    def take_error(self) -> None:
        with self.cv:
            codes, self.error_codes = self.error_codes, []
            err = self.start_error
            self.start_error = None
        if err is not None:
            raise DragonProcessGroupStartError("a process of the group could not be restarted: %s" % err) from err
        if codes:
            raise DragonUserCodeError("Error(s) in user-provided code resulted in exit codes: %s" % codes, codes)

    def shutdown(self, patience: float) -> None:
        """Stop every process (escalating), stop the thread."""
        with self.cv:
            if self.closed:
                return
            self.begin_stop(patience)
        self.wait_idle(None)
        with self.cv:
            self.closed = True
            self._wake()
        if self.thread is not threading.current_thread():
            self.thread.join()
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _shutdown_at_exit(mgr: _Manager) -> None:
    try:
        mgr.shutdown(_EXIT_PATIENCE)
    except Exception:
        pass


class ProcessGroup:
    """Processes started, watched and stopped together (see the module
    docstring)."""

    def __init__(self, restart: bool = False, ignore_error_on_exit: bool = False, pmi_enabled: bool = False,
                 walltime: float | None = None, policy: Policy | None = None, critical: bool = False,
                 name: str | None = None) -> None:
        if walltime is not None:
            if isinstance(walltime, bool) or not isinstance(walltime, (int, float)) or walltime <= 0:
                raise ValueError("walltime must be a positive number of seconds, not %r" % (walltime,))
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError("policy must be a dragon.infrastructure.policy.Policy, not %s" % type(policy).__name__)
        self.restart = bool(restart)
        self.ignore_error_on_exit = bool(ignore_error_on_exit)
        self.pmi_enabled = bool(pmi_enabled)
        self.walltime = walltime
        self.policy = policy
        self.critical = bool(critical)
        self.name = name
        self._templates: list[tuple[int, ProcessTemplate]] = []
        self._mgr: _Manager | None = None
        self._finalizer: Any = None  # a multiprocessing.util.Finalize while initialized

    # -- set-up -------------------------------------------------------------------
    def add_process(self, nproc: int, template: ProcessTemplate) -> None:
        """Have the group run ``nproc`` processes from ``template``."""
        if self._mgr is not None:
            raise DragonProcessGroupAlreadyInitialized("cannot add processes to an initialized ProcessGroup")
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise ValueError("nproc must be a positive integer, not %r" % (nproc,))
        if not isinstance(template, ProcessTemplate):
            raise TypeError("template must be a dragon.native.process.ProcessTemplate, not %s"
                            % type(template).__name__)
        self._templates.append((nproc, template))

    @property
    def templates(self) -> list[tuple[int, ProcessTemplate]]:
        return list(self._templates)

    @property
    def nproc(self) -> int:
        return sum(n for n, _ in self._templates)

    def init(self) -> None:
        """Set up the group's manager (once, before ``start``)."""
        if self._mgr is not None:
            raise DragonProcessGroupAlreadyInitialized("the ProcessGroup is already initialized")
        if self.pmi_enabled:
            raise NotImplementedError("pmi_enabled=True: MPI launch through PMI is not supported by this runtime")
        if not self._templates:
            raise DragonProcessGroupError("the ProcessGroup has no processes: call add_process() first")
        from multiprocessing import util

        self._mgr = _Manager(list(self._templates), self.restart, self.ignore_error_on_exit, self.walltime,
                             self.policy, self.name)
        # Before multiprocessing joins the children at exit (priority 0).
        self._finalizer = util.Finalize(self, _shutdown_at_exit, args=(self._mgr,), exitpriority=10)

    def _manager(self) -> _Manager:
        if self._mgr is None:
            raise DragonProcessGroupRunningError("Cannot execute a ProcessGroup without Manager initialization "
                                                 "(call init() first)")
        return self._mgr

    # -- running ------------------------------------------------------------------
    def start(self) -> None:
        """Start every process of the group."""
        self._manager().start()

    def join(self, timeout: float | None = None) -> None:
        """Stop restarting processes and wait until every process has exited
        (at most ``timeout`` seconds: ``TimeoutError``). Raises
        :class:`DragonUserCodeError` if processes failed (see the module
        docstring)."""
        self.stop_restart()
        mgr = self._manager()
        if not mgr.wait_idle(timeout):
            raise TimeoutError("Timeout waiting for status Idle")
        mgr.take_error()

    def stop_restart(self) -> None:
        """Stop replacing processes that exit (``restart=True`` groups)."""
        mgr = self._manager()
        with mgr.cv:
            mgr.restart = False
            for s in mgr.slots:
                s.restart_at = None
            mgr._wake()

    def send_signal(self, sig: int, hide_stderr: bool = False) -> None:
        """Send ``sig`` to every running process of the group."""
        mgr = self._manager()
        with mgr.cv:
            mgr.signal_all(sig)

    def terminate(self, hide_stderr: bool = False) -> None:
        """Stop restarting and send ``SIGTERM`` to every process."""
        self.stop_restart()
        self.send_signal(signal.SIGTERM)

    def kill(self, hide_stderr: bool = False) -> None:
        """Stop restarting and send ``SIGKILL`` to every process."""
        self.stop_restart()
        self.send_signal(signal.SIGKILL)

    def stop(self, patience: float = _DEFAULT_STOP_PATIENCE) -> None:
        """Bring every process down: ``SIGINT``, then ``SIGTERM`` after
        ``patience`` seconds, then ``SIGKILL`` after ``patience`` more;
        returns when all have exited. The group is then Idle (it may be
        started again)."""
        mgr = self._manager()
        with mgr.cv:
            mgr.begin_stop(patience)
        mgr.wait_idle(None)

    def close(self, patience: float = _DEFAULT_STOP_PATIENCE) -> None:
        """``stop(patience)`` if needed, then release the manager; ``init()``
        may be called again."""
        mgr, self._mgr = self._mgr, None
        if mgr is None:
            return
        if self._finalizer is not None:
            self._finalizer.cancel()
            self._finalizer = None
        mgr.shutdown(patience)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> Any:
        raise TypeError("a ProcessGroup is managed by the process that created it and cannot be pickled; "
                        "send its puids instead")

    # -- state --------------------------------------------------------------------
    @property
    def puids(self) -> list[int]:
        """Puids of the group's running processes."""
        mgr = self._manager()
        with mgr.cv:
            return [p.puid for p in mgr.live()]  # type: ignore[misc]  # started: puids are set

    @property
    def inactive_puids(self) -> list[tuple[int, int | None]]:
        """``(puid, exit code)`` of every process of the group that exited
        (restarted ones included)."""
        mgr = self._manager()
        with mgr.cv:
            return list(mgr.inactive)

    @property
    def exit_status(self) -> list[tuple[int, int | None]]:
        return self.inactive_puids

    @property
    def in_error_state(self) -> bool:
        """Whether a process of the group failed since the last ``start()``."""
        mgr = self._mgr
        return bool(mgr is not None and mgr.error_seen)

    @property
    def _state(self) -> str:
        mgr = self._manager()
        with mgr.cv:
            return "Running" if (mgr.running or mgr.busy()) else "Idle"

    status = _state

    def __repr__(self) -> str:
        state = self._state if self._mgr is not None else "uninitialized"
        return "<ProcessGroup %s nproc=%d %s>" % (self.name or hex(id(self)), self.nproc, state)
