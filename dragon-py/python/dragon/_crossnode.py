"""The standard library's own helper processes in a multi-node run:
``ProcessPoolExecutor`` workers and ``Manager`` servers.

Both are the standard library's code, unchanged; what they are built from
crosses nodes already (the ``dragon`` context's queues, locks and
processes). Three private details of theirs do not, and
:func:`prepare` (called by :class:`dragon.context.DragonProcess` when it
starts a process of a multi-node run) mends each, for that run only:

* **The executor's call queue** (``concurrent.futures.process._SafeQueue``,
  a ``multiprocessing.queues.Queue``) carries its messages on an OS pipe,
  which cannot reach another node. When the first worker of an executor
  starts (before anything is put into the queue: the executor starts its
  first worker before the thread that fills the queue), the queue's two
  pipe ends are replaced by a :func:`dragon.connection.Pipe`-style pair on
  a channel: the queue keeps its own lock, semaphore, feeder thread and
  error handling, only the bytes travel differently. The channel holds more
  messages than the queue's semaphore ever lets in, so a put never waits on
  the channel (the stdlib's feeder thread must not block once the workers
  are gone).
* **The executor's worker table** is keyed by pid (``_processes[p.pid]``),
  and a worker reports ``os.getpid()`` when it exits (after
  ``max_tasks_per_child`` tasks, or at shutdown). Pids are per node: two
  nodes can give the same pid, which would corrupt the table. A worker
  started on another node is therefore known to the executor by
  ``worker_key(node, pid)`` (``(node + 1) << 32 | pid``, above every pid
  Linux gives): its process object's ``pid`` is that key, and the worker
  reports it through :class:`KeyedResults`, which wraps its result queue.
  Workers on the executor's own node keep their pids.
* **A Manager's server** listens, by default, on a unix socket in this
  node's temporary directory. A server started without an address listens
  on TCP instead, on this node's address (:func:`node_address`), any free
  port, authenticated with the manager's authkey as always; proxies
  pickled to any node connect back to it. The server stays on the node that
  makes the manager (it reports its address through an OS pipe).

On one node none of this happens: executors and managers are exactly the
standard library's (but for what :mod:`dragon._executor` changes on any
number of nodes).
"""
from __future__ import annotations

import os
import socket
import sys

from . import _remote

__all__ = ["prepare", "here_after_all", "worker_key", "node_address", "KeyedResults"]

#: The channel of a call queue holds at least this many messages more than
#: the queue's size (the end-of-process messages of closing pipe ends).
_SPARE_SLOTS = 64
_SLOT_SIZE = 256
_MAX_ATTACHMENTS = 1023


_EXECUTOR_WORKER = ("concurrent.futures.process", "_process_worker")


def _target(process_obj):
    t = getattr(process_obj, "_target", None)
    return getattr(t, "__module__", None), getattr(t, "__qualname__", None)


def prepare(process_obj, node: int):
    """What to start ``process_obj`` with in a multi-node run: ``(node,
    popen_class)`` for a process placed on ``node`` by
    :func:`dragon._placement.node_for` (the class is used when the node is
    not this one). Adjusts executor workers' and Manager servers' arguments
    (see the module docs)."""
    target = _target(process_obj)
    if target == _EXECUTOR_WORKER:
        return _prepare_worker(process_obj, node)
    if target == ("multiprocessing.managers", "BaseManager._run_server"):
        _prepare_server(process_obj)
    return node, _remote.RemotePopen


# -- executor workers ---------------------------------------------------------

def worker_key(node: int, pid: int) -> int:
    """The executor's name of worker ``pid`` of ``node`` (another node than
    the executor's): unique in the run, and never a pid of this node."""
    return ((node + 1) << 32) | pid


class WorkerPopen(_remote.RemotePopen):
    """``Popen`` of an executor worker on another node: ``pid`` is the
    worker's :func:`worker_key` (the pid on its node is ``node_pid``)."""

    @property
    def pid(self):
        return None if self._pid is None else worker_key(self.node, self._pid)

    @property
    def node_pid(self):
        return self._pid


class KeyedResults:
    """An executor worker's result queue, for a worker on another node than
    the executor: what the worker reports as its pid (``os.getpid()``, alone
    or as a result's ``exit_pid``) becomes its :func:`worker_key`."""

    __slots__ = ("_queue", "_node")

    def __init__(self, queue, node):
        self._queue = queue
        self._node = node

    def put(self, obj):
        me = os.getpid()
        if type(obj) is int and obj == me:
            obj = worker_key(self._node, me)
        elif getattr(obj, "exit_pid", None) == me:
            obj.exit_pid = worker_key(self._node, me)
        self._queue.put(obj)

    def __getattr__(self, name):
        return getattr(self._queue, name)

    def __reduce__(self):
        return KeyedResults, (self._queue, self._node)


def _call_queue_pipe(capacity):
    """``(reader, writer)`` on a new channel of ``capacity`` slots (as
    :func:`dragon.connection.Pipe` makes them, with room for a queue)."""
    from . import _native
    from ._lifetime import object_created
    from .connection import Connection

    object_created()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        a.settimeout(None)
        b.settimeout(None)
        ch = _native.Channel.create(capacity, _SLOT_SIZE, 0, _MAX_ATTACHMENTS)
        return Connection(None, ch, a, True, False), Connection(ch, None, b, False, True)
    except BaseException:
        a.close()
        b.close()
        raise


def _ensure_channel(call_queue) -> bool:
    """Give ``call_queue`` a channel instead of its OS pipe (once, before it
    is used); whether it now has one."""
    from . import connection

    if isinstance(call_queue._reader, connection.Connection):
        return True
    if call_queue._thread is not None or call_queue._buffer or call_queue._closed:
        return False  # already in use: it stays as it is
    if call_queue._reader.poll():
        return False
    reader, writer = _call_queue_pipe(max(256, call_queue._maxsize + _SPARE_SLOTS))
    old = (call_queue._reader, call_queue._writer)
    call_queue._reader, call_queue._writer = reader, writer
    call_queue._send_bytes = writer.send_bytes
    call_queue._recv_bytes = reader.recv_bytes
    call_queue._poll = reader.poll
    for end in old:
        end.close()
    return True


def here_after_all(process_obj) -> None:
    """``process_obj``, prepared for another node, starts on this one after
    all: an executor worker reports its own pid again (its table key
    here), not the key of the node it was meant for."""
    args = tuple(getattr(process_obj, "_args", ()))
    if len(args) >= 2 and isinstance(args[1], KeyedResults):
        process_obj._args = (args[0], args[1]._queue) + args[2:]


def _prepare_worker(process_obj, node):
    here = _remote.this_node()
    cfp = sys.modules.get("concurrent.futures.process")
    args = tuple(process_obj._args)
    call_queue = args[0] if args else None
    if cfp is None or not isinstance(call_queue, cfp._SafeQueue) or len(args) < 2:
        return here, _remote.RemotePopen  # not the executor this module knows: keep it here
    if not _ensure_channel(call_queue):
        return here, _remote.RemotePopen
    if node != here and not isinstance(args[1], KeyedResults):
        process_obj._args = (args[0], KeyedResults(args[1], node)) + args[2:]
    return node, WorkerPopen


# -- Manager servers ----------------------------------------------------------

def node_address() -> str:
    """This node's IPv4 address that the other nodes reach: the address
    its host name (as the run names it) resolves to here, if it is one of
    the node's own; else the node's first address."""
    table = _remote.nodes()
    me = _remote.this_node()
    info = next((n for n in table if n.get("index") == me), None)
    if info is None:
        return socket.gethostname()
    addrs = list(info.get("addresses") or [])
    host = info.get("host") or info.get("hostname")
    try:
        ip = socket.gethostbyname(host) if host else None
    except OSError:
        ip = None
    if ip is not None and ip in addrs:
        return ip
    if addrs:
        return addrs[0]
    return ip or host or socket.gethostname()


def _prepare_server(process_obj):
    args = list(process_obj._args)
    # _run_server(registry, address, authkey, serializer, writer, ...)
    if len(args) >= 4 and args[1] is None:
        from multiprocessing.managers import listener_client

        if args[3] in listener_client:
            args[1] = (node_address(), 0)
            process_obj._args = tuple(args)
