"""Processes on other nodes of a multi-node run, through this node's
service (the ``runtime`` crate's node service; its requests are described
in ``runtime/src/proto.rs``).

:class:`RemotePopen` is the ``Popen`` of a process placed on another node.
It asks this node's service to start the process there (the service
carries the request to that node's service, which starts it through its
node's template, exactly as a local start does here), and keeps two
connections to the service:

* the *control* connection: the start request and its reply (pid), then
  signals; closing it lets go of the process (as closing a local start's
  template connection does);
* the *exit* connection (``WATCH``): it receives, once, the 8-byte exit
  code (negative signal number if killed; that of ``SIGKILL`` if the node
  was lost), and is the process's ``sentinel``, usable with
  ``multiprocessing.connection.wait``, exactly like a local process's.

The process's standard output and error go to the launcher's terminal
(the node's service forwards them); its standard input is ``/dev/null``.

Descriptors the process object refers to must be sockets (the lifetime
sockets of ``Pipe`` ends): each becomes a *tether* (see
``runtime/src/service.rs``): this node's service keeps the socket, the
process gets one end of a socket pair on its node, and end of file on
either side crosses to the other, so a ``Pipe`` end on another node sees
``EOFError`` when the other end closes or dies, as on one node. Other
descriptors (a shared heap arena of the standard library, say) cannot cross
nodes and are a clear error (:class:`~dragon.errors.NotLocalError`), as is a
``RawValue``/``RawArray`` or a ``multiprocessing.shared_memory.SharedMemory``
among the arguments of a process placed freely
(``free=True``: the caller then starts it on this node instead; see
:mod:`dragon._placement`).
"""
from __future__ import annotations

import io
import os
import socket
import struct
import sys
import threading

from multiprocessing import process, util
from multiprocessing.context import set_spawning_popen
from multiprocessing.reduction import ForkingPickler

from . import _wire, runtime
from ._exitstatus import ExitStatus

__all__ = ["RemotePopen", "ServiceError", "multinode", "nodes", "this_node", "service_address"]

# Request kinds (transport_tcp::proto, runtime::proto).
OK, ERROR = 0x80, 0x81
LAUNCH, SIGNAL, RELEASE, WATCH, PARENT, NODES, TRANSPORTS = 0x20, 0x21, 0x22, 0x24, 0x26, 0x30, 0x31
# The top bit of a LAUNCH's tether count: the first tether is the lifeline.
LIFELINE = 0x8000
SERVICE_ENV = "DRAGON_SERVICE"
NODES_ENV = "DRAGON_NODES"
NODE_ENV = "DRAGON_NODE_INDEX"
_HEAD = struct.Struct("<IBQ")


#: Set while a process placed freely (round-robin) is pickled for another
#: node: objects that live only on this node refuse to be pickled then.
_free = threading.local()


def pickling_free_placement() -> bool:
    """Whether the process being pickled on this thread was placed freely
    on another node (see :func:`check_crosses`)."""
    return getattr(_free, "on", False)


def check_crosses(what: str) -> None:
    """Raise :class:`~dragon.errors.NotLocalError` if ``what`` (an object
    of this node only) is being pickled into a process placed freely on
    another node: that process starts on this node instead."""
    if pickling_free_placement():
        from .errors import NotLocalError

        raise NotLocalError("%s lives only on this node" % what)


def _reduce_shared_memory(shm):
    check_crosses("a multiprocessing.shared_memory.SharedMemory block")  # in this node's /dev/shm
    return shm.__reduce__()


_shared_memory_checked = False


def _check_shared_memory_blocks() -> None:
    """Make ``SharedMemory`` blocks refuse to cross nodes from now on, if
    the program has them: called before a process for another node is
    pickled. Not done at import: ``multiprocessing.shared_memory`` loads
    OpenSSL for its names, most of this module's import time, and a
    program that never imported it has no block to refuse."""
    global _shared_memory_checked
    if not _shared_memory_checked:
        module = sys.modules.get("multiprocessing.shared_memory")
        if module is not None:
            ForkingPickler.register(module.SharedMemory, _reduce_shared_memory)
            _shared_memory_checked = True

_life = None  # (pid, kept end, given end): this process's lifeline
_life_lock = threading.Lock()


def _lifeline_fd() -> int:
    """This process's lifeline, which a process it starts on another node
    has as its parent's sentinel (``parent_process()``): one end of a
    socket pair whose other end this process holds until it ends. It goes
    as a tether (the first of a start, ``LIFELINE``), so its end of file
    crosses to that node when this process ends, where the process asks
    for it when it first needs it (:class:`ParentElsewhere`)."""
    global _life
    with _life_lock:
        if _life is None or _life[0] != os.getpid():
            keep, give = socket.socketpair()
            _life = (os.getpid(), keep, give)
        return _life[2].fileno()


class ServiceError(OSError):
    """This node's service could not do what was asked (the message says why:
    a node lost, a start that failed on the other node...)."""


def service_address() -> str | None:
    """This node's service socket, in a multi-node run."""
    return os.environ.get(SERVICE_ENV) or None


def multinode() -> bool:
    """Whether this process belongs to a run of several nodes."""
    return service_address() is not None


def this_node() -> int:
    try:
        return int(os.environ.get(NODE_ENV, "0"))
    except ValueError:
        return 0


_nodes_cache = None


def nodes() -> list[dict]:
    """The run's node table (index, host, hostname, addresses, cpus, memory)."""
    global _nodes_cache
    text = os.environ.get(NODES_ENV)
    if _nodes_cache is not None and _nodes_cache[0] == text:
        return _nodes_cache[1]
    if text is None:
        if not multinode():
            return []
        with _Connection() as c:
            text = c.call(NODES, b"", node=None).decode()
    import json

    table = json.loads(text)
    _nodes_cache = (os.environ.get(NODES_ENV), table)
    return table


def transports() -> dict:
    """What this node's service uses to reach each other node so far
    (``runtime/src/fabric.rs``): ``{"node": i, "rdma": port or None,
    "why_not": why there is no RDMA here or None, "peers": {"j": "verbs
    (...)" or "tcp (...)"}, "carried": {...}}``."""
    import json

    with _Connection() as c:
        return json.loads(c.call(TRANSPORTS, b"", node=None).decode())


class _Connection:
    """One connection to this node's service, one request at a time."""

    def __init__(self):
        addr = service_address()
        if addr is None:
            raise ServiceError("this process is not part of a multi-node run (no %s)" % SERVICE_ENV)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(None)  # never socket.setdefaulttimeout()'s
        try:
            self.sock.connect("\0" + addr)
        except OSError as e:
            self.sock.close()
            raise ServiceError(e.errno, "cannot reach this node's dragon service: %s" % e.strerror) from None
        self.next_id = 1
        self.buf = bytearray()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send(self, kind, payload, node, fds=()):
        rid = self.next_id
        self.next_id += 1
        head = b"" if node is None else struct.pack("<I", node)
        body = head + payload
        data = _HEAD.pack(9 + len(body), kind, rid) + body
        if fds:
            # The descriptors travel with the request's first bytes.
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))
            n = self.sock.sendmsg([data[:1]], [rights])
            data = data[n:]
        self.sock.sendall(data)
        return rid

    def _recv_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ServiceError("this node's dragon service closed the connection (the run is ending?)")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def reply(self):
        ln, kind, rid = _HEAD.unpack(self._recv_exact(13))
        return kind, rid, self._recv_exact(ln - 9)

    def call(self, kind, payload, node, fds=()):
        rid = self.send(kind, payload, node, fds)
        while True:
            k, got, body = self.reply()
            if got != rid:
                continue
            if k == OK:
                return body
            if k == ERROR:
                code = struct.unpack("<i", body[:4])[0] if len(body) >= 4 else 0
                raise ServiceError(-code if code < 0 else code, body[4:].decode(errors="replace"))
            raise ServiceError("unexpected reply kind %d from this node's dragon service" % k)


def _template_prep() -> bytes:
    import pickle

    return pickle.dumps(runtime.template_prep(), protocol=pickle.HIGHEST_PROTOCOL)


def _launch_payload(prep: bytes, flags: list, tethers: int, data: bytes) -> bytes:
    """A LAUNCH whose ``tethers`` descriptors are the lifeline, then the
    lifetime sockets the process refers to."""
    out = [struct.pack("<I", len(prep)), prep, struct.pack("<H", len(flags))]
    for f in flags:
        b = f.encode()
        out += [struct.pack("<H", len(b)), b]
    # The service gives the tethers their ids.
    out += [struct.pack("<H", tethers | LIFELINE), bytes(8 * tethers), data]
    return b"".join(out)


def parent_sentinel(pid: int) -> int:
    """The parent's sentinel of process ``pid``, started on this node for a
    process of another node: a connection to this node's service that
    carries nothing and is closed when the parent's lifeline ends (see
    ``PARENT`` in ``runtime/src/proto.rs``). If the service cannot be
    asked (the run is ending), a descriptor that reads end of file."""
    try:
        c = _Connection()
    except ServiceError:
        c = None
    if c is not None:
        try:
            c.call(PARENT, struct.pack("<I", pid), node=this_node())
            if not c.buf:
                return c.sock.detach()
        except (ServiceError, OSError):
            pass
        c.close()
    r, w = os.pipe()
    os.close(w)
    return r


class ParentElsewhere(process._ParentProcess):
    """``parent_process()`` of a process started here for a process of
    another node: its sentinel is asked of this node's service when it is
    first used (``is_alive``, ``join``, ``sentinel``), so that a process
    that never looks at its parent holds no descriptor for it (a process
    started by its parent on its parent's node holds its parent's pidfd)."""

    _lock = threading.Lock()

    @property
    def _sentinel(self):
        with self._lock:
            if self._fd is None:
                self._fd = parent_sentinel(self._asker)
            return self._fd

    @_sentinel.setter
    def _sentinel(self, fd):
        # None from the template's start: asked for on first use.
        self._fd = fd
        self._asker = os.getpid()

    @_sentinel.deleter
    def _sentinel(self):
        self._fd = None


class RemotePopen(ExitStatus):
    """``Popen`` of a process on another node (see the module docs)."""

    method = "dragon"

    @staticmethod
    def DupFd(ind):
        from .popen import InheritedFd

        return InheritedFd(ind)

    def __init__(self, process_obj, node: int, free: bool = False):
        util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        self.node = node
        self._pid = None
        self._launch_id = None
        self._lock = threading.Lock()
        # The lifetime sockets the process refers to (Pipe ends).
        self._tethers = []
        self._free = free
        self._launch(process_obj)

    def duplicate_for_child(self, fd):
        import stat

        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            from .errors import NotLocalError

            raise NotLocalError(
                "this object holds a file descriptor that is not a socket (an OS pipe, say, as "
                "multiprocessing.connection.Pipe(duplex=False) makes, or the shared heap behind the standard "
                "library's BufferWrapper), which cannot be passed to a process on another node (node %d); use "
                "the context's Pipe, a Queue or a Value/Array instead"
                % self.node)
        self._tethers.append(fd)
        # Its index among the descriptors after the data pipe and stdio.
        return len(self._tethers) - 1

    @property
    def pid(self):
        return self._pid

    def _launch(self, process_obj):
        from . import _native

        run = runtime.run_id()
        prep = runtime.preparation_data(process_obj._name)
        env = dict(os.environ)
        env[NODE_ENV] = str(self.node)
        env[SERVICE_ENV] = _native.service_name(run, self.node)
        env[runtime.TEMPLATE_ENV] = _native.template_name(run, self.node)
        env[runtime.RUN_ENV] = run
        # Descriptors the node's service sends with the start: the data
        # pipe (0), then stdin, stdout and stderr.
        head = {"prep": prep, "env": env, "stdio": [1, 2, 3], "tracker": None, "extra": 4}
        # The process inherits this process's multiprocessing configuration,
        # but not its temporary folder (util.get_temp_dir(), where Listener()
        # and Manager() put their sockets): that is in this node's /tmp.
        # The process makes its own on its node when it needs one.
        process_obj._config.pop("tempdir", None)
        # Its parent's sentinel: this process's lifeline, the first tether
        # (a pid names a process of this node only), which it asks its
        # node's service for when it needs it.
        head["parent_lifeline"] = True
        buf = io.BytesIO()
        _check_shared_memory_blocks()
        set_spawning_popen(self)
        _free.on = self._free
        try:
            pickler = _wire.Pickler(buf)
            pickler.dump(head)
            pickler.clear_memo()
            pickler.dump(process_obj)
        finally:
            _free.on = False
            set_spawning_popen(None)
        fds = [_lifeline_fd(), *self._tethers]
        payload = _launch_payload(_template_prep(), runtime.interpreter_flags(), len(fds), buf.getvalue())
        ctl = _Connection()
        try:
            body = ctl.call(LAUNCH, payload, self.node, fds)
            self._pid, self._launch_id = struct.unpack("<qQ", body[:16])
            from . import _registry

            # Its name, for `dragon top` (pids are per node: the node is said).
            _registry.note("r", self.node, self._pid, process_obj._name)
            watch = _Connection()
        except BaseException:
            ctl.close()
            raise
        watch.send(WATCH, struct.pack("<Q", self._launch_id), self.node)
        self._ctl = ctl
        self._watch = watch
        self.sentinel = watch.sock.fileno()
        self.finalizer = util.Finalize(self, _close, (ctl, watch))

    def _read_status(self):
        with self._lock:
            if self.returncode is not None:
                return
            try:
                data = self._watch.sock.recv(8, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if len(data) == 8:
                self.returncode = struct.unpack("<q", data)[0]
                # Let go of the process (RELEASE), so that its node's
                # template reaps it, as on this node (dragon.popen); the
                # sentinel stays open until close().
                self._ctl.close()
            elif not data:
                # The service is gone without telling: the run is ending.
                self.returncode = 255

    def _send_signal(self, sig):
        if self.returncode is not None:
            return
        try:
            self._ctl.call(SIGNAL, struct.pack("<Qi", self._launch_id, int(sig)), self.node)
        except ServiceError:
            if self.wait(timeout=0.1) is None:
                raise
        except OSError:
            # Another thread saw the exit meanwhile and let go (closed the
            # connection): nothing left to signal.
            if self.returncode is None:
                raise


def _close(ctl, watch):
    ctl.close()
    watch.close()
