"""The run's template process: a pre-imported fork server and watchdog.

Started by :func:`dragon.runtime.ensure_template` as a fresh interpreter in a
session of its own::

    python <flags> -c "from dragon._template import main; main()" LISTEN_FD ALIVE_FD STARTER_PID

It reads the starter's preparation data from ``ALIVE_FD``, imports the main
module as ``__mp_main__`` once (as ``spawn`` children do, with the
"bootstrapping" flag set), then serves requests on the listening socket
``LISTEN_FD`` (``AF_UNIX``, ``SOCK_SEQPACKET``, abstract name in
``DRAGON_TEMPLATE``). Each request forks one child, which becomes the
requested process. The template is single-threaded and never blocks on a
client: sockets are non-blocking and a request is one datagram.

Protocol, one connection per started process:

* client -> template: ``REQUEST`` with ``SCM_RIGHTS`` file descriptors; the
  first is one end of the client's *exit socket* (a socket pair), which the
  template keeps; the second is the read end of a pipe from which the child
  reads its start data (two pickles, see :class:`dragon.popen.Popen`); the
  start data says what the others are (stdin/stdout/stderr, the resource
  tracker, descriptors the process object refers to).
* template -> client: ``b"P" + pid`` with a pidfd of the child attached,
  or ``b"E" + message`` if the child could not be started;
* template -> exit socket when the child has exited: its exit code, 8 bytes
  (negative signal number if killed), then the template closes its end. The
  client's end is the process's ``sentinel``: readable at the exit (the
  client only peeks, so it stays readable), or at EOF if the template is
  gone.
* client -> template: ``MAIN_ERROR`` (no descriptors); template -> client:
  ``b"M" + text``, the exception that importing the main module raised in
  the template (empty if it did not fail). A pool whose workers all die
  before they start asks, to say why in its own error.
* The child stays a zombie (its pid keeps naming it) until the client
  closes the connection, which it does once it has read the exit code
  (``join``, ``poll``, ``is_alive``), as a child of ``fork`` stays one
  until then; then the template reaps it.

Watchdog: when the starter exits (a pidfd of it becomes readable) or closes
``ALIVE_FD`` (its normal shutdown), or on ``SIGTERM``, the template kills
every process of its session (all processes it forked and their
descendants), removes the run's ``/dev/shm`` files if the starter owns the
run (or is the node service of a secondary node of a multi-node run), and
exits.
"""
import os
import sys

from . import _startproto as proto

# Modules that children commonly need, imported once by the template so that
# children do not import them each: the process machinery, and what Pool
# workers and queues unpickle.
PRELOAD = (
    "dragon.popen",
    "multiprocessing.resource_tracker",
    "multiprocessing.connection",
    "multiprocessing.synchronize",
    "multiprocessing.queues",
    "multiprocessing.pool",
    "dragon.pool",  # and the queues, locks and shared blocks it uses
    "dragon._pool_nodes",  # a pool's workers and agents on other nodes
)


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("the starting process went away before the template was ready")
        buf += chunk
    return bytes(buf)


def _noop_handler(signum, frame):
    pass


class _Template:
    def __init__(self, listener_fd, alive_fd, starter, starter_fd, main_error=""):
        import selectors
        import signal
        import socket

        from . import runtime

        self.socket = socket
        self.signal = signal
        self.runtime = runtime
        self.starter = starter
        self.main_error = main_error
        self.run_id = runtime.run_id()
        # The run's files on this node are this template's to remove at the
        # end if its starter owns the run, or if it serves a secondary node
        # of a multi-node run (started by that node's service: if the
        # service dies, nobody else of the run is left on the node).
        secondary = os.environ.get("DRAGON_NODE_INDEX", "0") not in ("", "0")
        self.owns_run = runtime.run_owner(self.run_id)[0] == starter or secondary
        # On a secondary node, the node's processes share one resource
        # tracker, the template's (started at the first start): their
        # parents' are on another node.
        self.node_tracker = secondary
        self.alive_fd = alive_fd
        self.listener = socket.socket(fileno=listener_fd)
        self.listener.setblocking(False)
        self.clients = {}  # fd -> connection socket
        self.children = {}  # pid -> [connection socket or None once the client left, exit socket fd]
        self.zombies = {}  # connection socket -> pid of an exited child not yet reaped
        self.stopping = False

        self.starter_fd = starter_fd
        if os.getppid() != starter:
            self.stopping = True  # the starter is already gone

        # One connection per process not yet let go by its client: allow as
        # many as the hard limit does.
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass

        self.sig_r, self.sig_w = os.pipe()
        os.set_blocking(self.sig_r, False)
        os.set_blocking(self.sig_w, False)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        self.old_handlers = {
            signal.SIGCHLD: signal.signal(signal.SIGCHLD, _noop_handler),
            signal.SIGTERM: signal.signal(signal.SIGTERM, _noop_handler),
            signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
            signal.SIGHUP: signal.signal(signal.SIGHUP, signal.SIG_IGN),
        }

        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, self._on_listener)
        self.sel.register(self.alive_fd, selectors.EVENT_READ, self._on_alive)
        if self.starter_fd >= 0:
            self.sel.register(self.starter_fd, selectors.EVENT_READ, self._on_starter)
        self.sel.register(self.sig_r, selectors.EVENT_READ, self._on_signal)

    # -- event loop -----------------------------------------------------------
    def serve(self):
        while not self.stopping:
            for key, _ in self.sel.select():
                key.data(key.fileobj)
                if self.stopping:
                    break
        self._shutdown()

    @staticmethod
    def _freeze():
        """Keep children from copying the template's pages: a garbage
        collection in a child walks every object (writing their headers);
        frozen objects are left alone."""
        import gc

        gc.freeze()

    def _on_alive(self, fd):
        try:
            data = os.read(self.alive_fd, 4096)
        except OSError:
            data = b""
        if not data:
            self.stopping = True

    def _on_starter(self, fd):
        self.stopping = True

    def _on_signal(self, fd):
        try:
            sigs = os.read(self.sig_r, 4096)
        except BlockingIOError:
            sigs = b""
        if self.signal.SIGTERM in sigs:
            self.stopping = True
        self._reap()

    def _reap(self, final=False):
        """Report exited children to their clients.

        An exited child stays a zombie until its client lets go of the
        connection (once it has seen the exit, or at ``close()``, or when it
        exits), as a child of ``fork`` stays one until it is joined: its pid
        keeps naming it, so ``os.kill(p.pid, ...)`` right after it exited
        neither fails nor hits a process that reused the pid. ``final``
        reaps everything (the run is ending).
        """
        for pid, (conn, exit_w) in list(self.children.items()):
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
                code = 255
            else:
                if info is None:
                    continue
                code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            del self.children[pid]
            try:
                # 8 bytes into an empty pipe never block.
                os.write(exit_w, code.to_bytes(proto.INT64, "little", signed=True))
            except OSError:
                pass  # the client closed the sentinel: nobody to tell
            os.close(exit_w)
            if info is None:
                continue
            if conn is not None and not final:
                self.zombies[conn] = pid
            else:
                _waitpid(pid)
        if final:
            for pid in self.zombies.values():
                _waitpid(pid)
            self.zombies.clear()

    def _on_listener(self, listener):
        socket = self.socket
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ECONNABORTED, EMFILE: the client sees an error
            conn.setblocking(False)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            uid = int.from_bytes(creds[4:8], sys.byteorder)
            if uid != os.getuid() and uid != 0:
                conn.close()  # only the run's own user may start processes
                continue
            self.clients[conn.fileno()] = conn
            self.sel.register(conn, 1, self._on_client)

    def _drop(self, conn):
        fd = conn.fileno()
        if self.clients.pop(fd, None) is not None:
            self.sel.unregister(conn)
        zombie = self.zombies.pop(conn, None)
        if zombie is not None:
            _waitpid(zombie)
        for entry in self.children.values():
            if entry[0] is conn:
                entry[0] = None
                break
        conn.close()

    def _send(self, conn, msg, fds=()):
        socket = self.socket
        try:
            if fds:
                conn.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, proto.fd_array(fds))],
                               socket.MSG_DONTWAIT)
            else:
                conn.send(msg, socket.MSG_DONTWAIT)
            return True
        except OSError:
            return False

    def _on_client(self, conn):
        socket = self.socket
        try:
            msg, anc, flags, _ = conn.recvmsg(
                256, socket.CMSG_SPACE(proto.MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg, anc, flags = b"", [], 0
        fds = proto.fds_from_ancillary(anc)
        if not msg:  # the client closed its end
            proto.close_all(fds)
            self._drop(conn)
            return
        if msg == proto.MAIN_ERROR:
            proto.close_all(fds)
            self._send(conn, proto.REPLY_MAIN_ERROR + self.main_error.encode(errors="replace")[:60000])
            self._drop(conn)
            return
        if conn in self.zombies or any(entry[0] is conn for entry in self.children.values()):
            error = "one process per connection"
        elif msg != proto.REQUEST:
            error = "unknown request (a client of another dragon version?)"
        elif flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            error = "too many file descriptors for one process start (at most %d)" % (proto.MAX_FDS - 5)
        elif len(fds) < 2:
            error = "request without its exit and data pipes"
        else:
            error = None
        if error is not None:
            proto.close_all(fds)
            self._send(conn, proto.REPLY_ERROR + error.encode())
            self._drop(conn)
            return
        self._start(conn, fds)

    def _start(self, conn, fds):
        exit_w, fds = fds[0], fds[1:]
        # Signals stay blocked across fork until the child has dropped the
        # template's handlers and wakeup fd: a SIGTERM sent to a brand-new
        # child must kill it (delivered on unblocking), not be mistaken for
        # one sent to the template.
        if self.node_tracker:
            self.node_tracker = False
            _start_tracker()
        signal = self.signal
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            proto.close_all(fds + [exit_w])
            self._send(conn, proto.REPLY_ERROR + ("fork failed: %s" % e).encode())
            self._drop(conn)
            return
        if pid == 0:
            code = 1
            try:
                self._become_child()
                os.close(exit_w)  # the template's, not the child's
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                code = _child_main(fds)
            except BaseException:
                try:
                    sys.excepthook(*sys.exc_info())
                    sys.stderr.flush()
                except BaseException:
                    pass
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        proto.close_all(fds)
        try:
            pidfd = [os.pidfd_open(pid)]
        except OSError:
            pidfd = []
        self.children[pid] = [conn, exit_w]
        self._send(conn, proto.REPLY_PID + pid.to_bytes(proto.INT64, "little", signed=True), pidfd)
        proto.close_all(pidfd)

    def _become_child(self):
        """In a freshly forked child: drop everything that is the template's."""
        signal = self.signal
        signal.set_wakeup_fd(-1)
        for sig, old in self.old_handlers.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self.sel.close()
        self.listener.close()
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        proto.close_all([entry[1] for entry in self.children.values()])
        self.children.clear()
        self.zombies.clear()
        proto.close_all([self.alive_fd, self.sig_r, self.sig_w, self.starter_fd])

    # -- the end of the run ---------------------------------------------------
    def _shutdown(self):
        """Kill every process of the run, remove its files, exit."""
        import time

        signal = self.signal
        try:
            self.listener.close()
        except OSError:
            pass
        me = os.getpid()
        deadline = time.monotonic() + 5.0
        delay = 0.001
        while True:
            self._reap(final=True)
            alive = [p for p in self.runtime.session_members(me) if p != me]
            if not alive or time.monotonic() > deadline:
                break
            for p in alive:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        if self.owns_run:
            try:
                self.runtime.remove_run_segments(self.run_id)
                # and leftovers of earlier runs whose watchdog died too
                self.runtime.remove_dead_runs_segments()
            except Exception:
                pass
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(0)


def _start_tracker():
    """Start this process's resource tracker (the standard library's), which
    the children it forks then share. Without one they work as before:
    each starts its own when it first needs one."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except Exception:
        pass


def _waitpid(pid):
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _apply_environ(env):
    """Make os.environ equal to ``env``, touching only what differs."""
    cur = os.environ
    for k in [k for k in cur if k not in env]:
        del cur[k]
    for k, v in env.items():
        if cur.get(k) != v:
            cur[k] = v


def _guard_set_start_method():
    """While a process of the run imports the main module (``spawn``'s
    "bootstrapping phase"), ``set_start_method`` without ``force`` raises
    the standard library's bootstrapping error: the call can only come from
    module-level code that is not under ``if __name__ == "__main__":``, and
    that message (not "context has already been set") says what is wrong
    and how to fix it, as ``spawn`` says it for a process started there."""
    import multiprocessing
    from multiprocessing import context, process, spawn

    default = context._default_context
    stock = type(default).set_start_method

    def set_start_method(method, force=False):
        if not force and getattr(process.current_process(), "_inheriting", False):
            spawn._check_not_importing_main()
        return stock(default, method, force)

    set_start_method.__doc__ = stock.__doc__
    multiprocessing.set_start_method = set_start_method
    default.set_start_method = set_start_method


def _child_main(fds):
    """Become the requested process (in a child forked by the template)."""
    import pickle

    from multiprocessing import process, resource_tracker, spawn

    with os.fdopen(fds[0], "rb", closefd=True) as from_parent:
        try:
            head = pickle.load(from_parent)
        except EOFError:
            return 1  # the client went away before sending anything
        stdio = head["stdio"]
        for target, idx in enumerate(stdio):
            if idx is None:
                fd = os.open(os.devnull, os.O_RDWR)
                os.dup2(fd, target)
                os.close(fd)
            else:
                os.dup2(fds[idx], target)
        proto.close_all([fds[i] for i in stdio if i is not None])
        if sys.stdout is not None and os.isatty(1):
            try:
                sys.stdout.reconfigure(line_buffering=True)
            except Exception:
                pass
        _apply_environ(head["env"])
        tracker = head["tracker"]
        if tracker is not None:
            resource_tracker._resource_tracker._fd = fds[tracker]
        elif not head.get("parent_lifeline"):
            resource_tracker._resource_tracker._fd = None
        # else: a process whose parent is on another node keeps its node's
        # tracker, the template's (None if it has none).
        resource_tracker._resource_tracker._pid = None  # the tracker is not its child
        proto.inherited_fds = fds[head["extra"]:]
        process.current_process()._inheriting = True
        try:
            spawn.prepare(head["prep"])
            process_obj = pickle.load(from_parent)
        finally:
            del process.current_process()._inheriting
    try:
        if head.get("parent_lifeline"):
            # Started for a process of another node: its parent's sentinel
            # is that process's lifeline, asked of this node's service on
            # first use.
            from . import _remote

            process._ParentProcess = _remote.ParentElsewhere
            parent_sentinel = None
        else:
            parent_sentinel = os.pidfd_open(process_obj._parent_pid)
    except (OSError, TypeError):
        # The parent is already gone: a descriptor that reads EOF at once.
        parent_sentinel, w = os.pipe()
        os.close(w)
    code = process_obj._bootstrap(parent_sentinel=parent_sentinel)
    # As in a spawned interpreter's exit: atexit handlers (the main module may
    # have registered some), then flush.
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    return code


def main():
    """Entry point of the template process (see the module docstring)."""
    listener_fd, alive_fd, starter = (int(a) for a in sys.argv[1:4])
    del sys.argv[1:]
    import pickle

    from multiprocessing import process, spawn

    # The starter sends its preparation data first.
    try:
        n = int.from_bytes(_read_exact(alive_fd, proto.INT64), "little")
        prep = pickle.loads(_read_exact(alive_fd, n))
    except EOFError:
        os._exit(0)
    # Watch the starter: a pidfd is readable at its exit (EOF on the alive
    # pipe is not enough: processes it forks may inherit the write end).
    starter_fd = -1
    if os.getppid() == starter:
        try:
            starter_fd = os.pidfd_open(starter)
        except OSError:
            starter_fd = -1
    # Import the main module as spawn's children do. If that fails, each child
    # repeats it and reports the error as a spawned child would; the
    # template keeps what it was, for the parent's errors (proto.MAIN_ERROR).
    _guard_set_start_method()
    main_error = ""
    process.current_process()._inheriting = True
    try:
        spawn.prepare(prep)
    except BaseException as e:
        import traceback

        main_error = "".join(traceback.format_exception_only(type(e), e)).strip()
        from . import _log

        _log.logger.debug("the template could not import the main module: %s", main_error)
    finally:
        del process.current_process()._inheriting
    # Signal handlers are installed after the main module's import, so that
    # children get back whatever that import installed.
    template = _Template(listener_fd, alive_fd, starter, starter_fd, main_error)
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:
            pass
    template._freeze()
    template.serve()
