"""``Queue``, ``JoinableQueue`` and ``SimpleQueue`` on shared-memory channels.

The API and semantics of :mod:`multiprocessing.queues`, on a channel of
``transport-shm`` (a lock-free ring in a shared-memory segment; messages
that do not fit a slot go to shared blocks and are received without a
second copy):

* ``Queue(maxsize)`` with ``0 < maxsize <= EXACT_MAX`` is a ring of exactly
  ``maxsize`` slots: ``put`` blocks (GIL released) while it is full and
  raises :class:`queue.Full` on timeout or when not blocking.
* ``Queue()`` (``maxsize <= 0``) is unbounded: ``put`` never blocks. It
  writes straight into the ring; only when the ring is full (or shared
  memory for large messages is exhausted) does the message wait in a local
  buffer that a feeder thread flushes, as the standard library's feeder
  does. Larger bounds use an unbounded ring plus a shared semaphore. These
  rules, ``JoinableQueue``'s task counting and the receiving rules are the
  Rust ``queues`` crate's (``_native.Queue``, ``dragon-py/src/queue.rs``),
  over the channel and the ``dragon.synchronize`` objects made here (so
  that they work from any node); the feeder is a thread that takes the
  GIL only to report an error.
* ``get`` tries without releasing the GIL, then waits (GIL released, Ctrl-C
  interrupts it) and raises :class:`queue.Empty` on timeout.
* Exact ``bytes`` objects travel unpickled; everything else is pickled with
  ``ForkingPickler`` semantics, synchronously in ``put``. An object that
  cannot be pickled is reported as the standard feeder thread reports it
  (``_on_queue_feeder_error`` prints the traceback) and dropped; ``put``
  does not raise, as in the standard library.
* A queue pickles by handle at any time, to any process of the run (as a
  process argument or through another queue); ``_reader`` works with
  ``multiprocessing.connection.wait``.

Ordering: messages put by one thread are received in the order put.
"""
from __future__ import annotations

import os
import threading
import weakref
from queue import Empty, Full
from typing import Any

from multiprocessing import util

from . import _native, _registry, _wire
from ._lifetime import object_created

__all__ = ["Queue", "JoinableQueue", "SimpleQueue", "Empty", "Full"]

#: Bytes per ring slot; messages up to ``SLOT_SIZE - 24`` bytes travel inline.
SLOT_SIZE = 256
#: Ring slots of an unbounded queue (and of a SimpleQueue).
UNBOUNDED_CAPACITY = 512
#: Largest ``maxsize`` served by a ring of exactly that many slots.
EXACT_MAX = 8192
#: Processes that may use one queue at a time.
MAX_ATTACHMENTS = 1023

_MODE_UNBOUNDED, _MODE_EXACT, _MODE_SEM = "unbounded", "exact", "semaphore"


class _Reader:
    """The receiving side of a queue, for code that uses a queue's
    ``_reader`` like a connection (``wait``, ``poll``, ``recv``)."""

    def __init__(self, queue):
        self._queue = queue

    def recv(self):
        return self._queue._get_raw(True, None)

    def recv_bytes(self):
        tag, data = self._queue._recv_msg(True, None)
        return data if tag != _wire.TAG_PICKLE else bytes(data)

    def poll(self, timeout=0.0):
        return self._queue._poll(timeout)

    def close(self) -> None:
        self._queue._reader_closed = True

    @property
    def closed(self):
        return self._queue._reader_closed

    def _dragon_wait_channel(self):
        return self._queue._ch

    def _dragon_ready(self):
        return self._queue._ch.readable()

    def __repr__(self):
        return "<queue reader of %r>" % (self._queue,)


class _Writer:
    """The sending side of a queue (``_writer.send``, as ``multiprocessing.pool``
    uses a SimpleQueue's)."""

    def __init__(self, queue):
        self._queue = queue

    def send(self, obj):
        self._queue.put(obj)

    def send_bytes(self, buf):
        self._queue._put_data(bytes(buf), -2)

    def close(self) -> None:
        self._queue._writer_closed = True

    @property
    def closed(self):
        return self._queue._writer_closed


class _ChannelQueue:
    """What :class:`Queue` and :class:`SimpleQueue` share: receiving (for
    ``get`` and the ``_reader`` view), polling, ``repr``."""

    def _recv_msg(self, block, timeout):
        # Control messages skipped, a semaphore's unit given back (queues
        # crate).
        return self._q.get(block, timeout)

    def _get_raw(self, block=True, timeout=None):
        tag, data = self._recv_msg(block, timeout)
        if tag == _wire.TAG_PICKLE:
            return _wire.loads(data)
        return data

    def _poll(self, timeout=0.0):
        return _wire.poll(self._ch, timeout)

    def __repr__(self):
        return "<%s.%s object at %#x (%s)>" % (type(self).__module__, type(self).__qualname__, id(self),
                                              self._ch.name)


class Queue(_ChannelQueue):
    """A multi-producer, multi-consumer FIFO queue shared by processes."""

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        object_created()
        if maxsize <= 0:
            from .synchronize import SEM_VALUE_MAX

            maxsize, mode, capacity = SEM_VALUE_MAX, _MODE_UNBOUNDED, UNBOUNDED_CAPACITY
        elif maxsize <= EXACT_MAX:
            mode, capacity = _MODE_EXACT, maxsize
        else:
            mode, capacity = _MODE_SEM, UNBOUNDED_CAPACITY
        self._maxsize = maxsize
        self._mode = mode
        self._ch = _native.Channel.create(capacity, SLOT_SIZE, 0, MAX_ATTACHMENTS)
        _registry.note("q", bytes(self._ch.handle).hex())
        if mode == _MODE_SEM:
            from .synchronize import BoundedSemaphore

            self._sem = BoundedSemaphore(maxsize)
        else:
            self._sem = None
        self._ignore_epipe = False
        self._tasks = None
        self._reset()
        util.register_after_fork(self, Queue._after_fork)

    # -- pickling ---------------------------------------------------------------
    def __getstate__(self):
        _wire.keep_alive(self._ch)
        return (self._ch.handle, self._maxsize, self._mode, self._sem, self._ignore_epipe)

    def __setstate__(self, state):
        handle, self._maxsize, self._mode, self._sem, self._ignore_epipe = state
        self._ch = _native.Channel.attach(handle)
        self._tasks = None
        self._reset()
        util.register_after_fork(self, Queue._after_fork)

    def _after_fork(self):
        self._reset()

    def _reset(self):
        # The queue's rules (bounds, task counting, the local buffer and its
        # feeder thread) are the queues crate's: a fresh one in a child
        # process.
        bound = 0 if self._mode == _MODE_UNBOUNDED else self._maxsize
        sem = None if self._sem is None else self._sem._semlock
        self._q = _native.Queue(self._ch, _feeder_error(weakref.ref(self)), bound, sem, self._tasks)
        self._jointhread = None
        self._joincancelled = False
        self._closed = False
        self._close = None
        self._used = False  # put() called: close() then closes the reader
        self._reader_closed = False
        self._writer_closed = False
        self._reader = _Reader(self)
        self._writer = _Writer(self)
        # A channel of another node: puts do not wait for the round trip
        # (deferred sends); _flusher waits for them at exit or join_thread.
        self._remote = isinstance(self._ch, _native.RemoteChannel)
        self._flusher = None

    # -- putting ----------------------------------------------------------------
    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj`` on the queue; raise :class:`queue.Full` if a bounded
        queue stays full (``block`` false, or ``timeout`` elapsed)."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        self._used = True
        if type(obj) is bytes:
            data, prefix = obj, _wire.TAG_BYTES
        else:
            try:
                data, prefix = _wire.dumps(obj), -1
            except Exception as e:
                # As the standard feeder thread does: report, drop, go on.
                self._on_queue_feeder_error(e, obj)
                return
        self._put_data(data, prefix, block, timeout)

    def _put_data(self, data: Any, prefix: int, block: bool = True, timeout: float | None = None) -> None:
        if self._remote and self._mode != _MODE_EXACT:
            # A channel of another node: the put does not wait for the
            # round trip (as the standard feeder thread's puts, it is on its
            # way, in order, when put() returns).
            self._flush_at_exit()
        # Counted (JoinableQueue), bounded (queue.Full), then into the ring,
        # or (full; across nodes: as much as may be is in flight) into the
        # local buffer that the feeder thread sends, in order; true when
        # this put started the feeder.
        if self._q.put(data, prefix, block, timeout):
            self._start_thread()

    def put_nowait(self, obj: Any) -> None:
        return self.put(obj, False)

    def _flush_at_exit(self):
        # This process waits at exit (unless cancel_join_thread) and in
        # join_thread until its deferred puts are all in the channel: after
        # the feeder thread has ended (a lower priority runs later).
        if self._flusher is None and not self._joincancelled:
            self._flusher = util.Finalize(self, _wire.flush_quietly, [self._ch], exitpriority=-6)

    def _start_thread(self):
        # The feeder thread runs: wait for it at exit (after it is told to
        # end), as for the standard feeder thread.
        feeder = self._q.feeder()
        if not self._joincancelled:
            self._jointhread = util.Finalize(None, feeder.join, exitpriority=-5)
            _exit_joins.note(feeder, self._jointhread)
        self._close = util.Finalize(self, feeder.close, exitpriority=10)

    @staticmethod
    def _on_queue_feeder_error(e, obj):
        """Called when ``obj`` cannot be pickled (in ``put``) or sent (by the
        feeder thread); prints the traceback. Subclasses may override it."""
        import traceback

        traceback.print_exc()

    # -- getting ----------------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return an item; raise :class:`queue.Empty` if none
        comes (``block`` false, or ``timeout`` elapsed)."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        tag, data = self._q.get(block, timeout)
        if tag == _wire.TAG_PICKLE:  # as _get_raw, without a call more
            return _wire.loads(data)
        return data

    def get_nowait(self) -> Any:
        return self.get(False)

    # -- state ------------------------------------------------------------------
    def qsize(self) -> int:
        """Approximate number of items in the queue (those this process has
        not yet flushed from its local buffer included)."""
        if self._mode == _MODE_SEM:
            return self._maxsize - self._sem.get_value()
        return len(self._ch) + self._q.buffered()

    def empty(self) -> bool:
        if self._reader_closed:
            raise OSError("handle is closed")
        return self._ch.is_empty() and not self._q.buffered()

    def full(self) -> bool:
        if self._mode == _MODE_EXACT:
            return self._ch.is_full()
        if self._mode == _MODE_SEM:
            return self._sem.get_value() == 0
        return False

    def close(self) -> None:
        """This process will put no more items: the feeder flushes what is
        buffered and exits. Other processes are not affected. As with the
        standard queue, a queue this process has put on can no longer be
        read here either (:meth:`empty` raises ``OSError``)."""
        self._closed = True
        if self._used:
            self._reader_closed = self._writer_closed = True
        close = self._close
        if close:
            self._close = None
            close()

    def join_thread(self) -> None:
        """Wait until the feeder thread has flushed the buffer (after
        :meth:`close`)."""
        assert self._closed, "Queue {0!r} not closed".format(self)
        if self._jointhread:
            self._jointhread()
        flusher, self._flusher = self._flusher, None
        if flusher:
            flusher()

    def cancel_join_thread(self) -> None:
        """Do not wait for the feeder thread at exit (buffered items may be
        lost)."""
        self._joincancelled = True
        for f in (self._jointhread, self._flusher):
            if f is not None:
                f.cancel()


class _ExitJoins:
    """The exit hooks that wait for feeder threads: those of feeders that
    have ended are dropped whenever another starts, so that a program that
    makes many queues does not pile them up (the standard library's hook
    goes with its thread object)."""

    def __init__(self):
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        # In a child process: the parent's feeders are not this process's.
        self._lock = threading.Lock()
        self._hooks = []

    def note(self, feeder, hook):
        with self._lock:
            live = []
            for f, h in self._hooks:
                if f.finished():
                    h.cancel()
                else:
                    live.append((f, h))
            live.append((feeder, hook))
            self._hooks = live


_exit_joins = _ExitJoins()


def _feeder_error(qref):
    """What the feeder thread calls with a message it could not send (and
    drops): print the error as the standard feeder does
    (``Queue._on_queue_feeder_error``), unless the queue ignores broken
    pipes."""

    def report(e, data):
        q = qref()
        if q is not None and q._ignore_epipe and isinstance(e, BrokenPipeError):
            return
        del q
        try:
            raise e
        except Exception as exc:  # so that print_exc() shows it
            Queue._on_queue_feeder_error(exc, data)

    return report


class JoinableQueue(Queue):
    """A :class:`Queue` with ``task_done`` and ``join``."""

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        from .synchronize import Condition, Lock, Semaphore

        self._unfinished_tasks = Semaphore(0)
        self._cond = Condition(Lock())
        Queue.__init__(self, maxsize, ctx=ctx)

    def __getstate__(self):
        return Queue.__getstate__(self) + (self._cond, self._unfinished_tasks)

    def __setstate__(self, state):
        self._cond, self._unfinished_tasks = state[-2:]
        Queue.__setstate__(self, state[:-2])

    def _reset(self):
        # The task count, its lock and condition, counted by the queues
        # crate (an item is counted before it can be taken, uncounted if
        # its put fails).
        self._tasks = (self._unfinished_tasks._semlock, self._cond._lock._semlock, self._cond._cond)
        Queue._reset(self)

    def task_done(self) -> None:
        """One item taken from the queue has been processed."""
        self._q.task_done()

    def join(self) -> None:
        """Wait until every item put has been marked done."""
        self._q.join()


class SimpleQueue(_ChannelQueue):
    """An unbounded-looking FIFO queue without a feeder thread: ``put`` blocks
    while the ring is full (as the standard one blocks on a full pipe)."""

    def __init__(self, *, ctx: Any = None) -> None:
        object_created()
        self._ch = _native.Channel.create(UNBOUNDED_CAPACITY, SLOT_SIZE, 0, MAX_ATTACHMENTS)
        _registry.note("q", bytes(self._ch.handle).hex())
        self._reset()

    def __getstate__(self):
        _wire.keep_alive(self._ch)
        return self._ch.handle

    def __setstate__(self, state):
        self._ch = _native.Channel.attach(state)
        self._reset()

    def _reset(self):
        # A put waits for room, a get skips control messages (queues crate).
        self._q = _native.Queue.simple(self._ch)
        self._closed = False
        self._reader_closed = False
        self._writer_closed = False
        self._reader = _Reader(self)
        self._writer = _Writer(self)
        self._rlock = threading.Lock()
        self._wlock = None

    def close(self) -> None:
        self._closed = True
        self._reader_closed = True
        self._writer_closed = True

    def empty(self) -> bool:
        if self._reader_closed:
            raise OSError("handle is closed")
        return self._ch.is_empty()

    def put(self, obj: Any) -> None:
        if type(obj) is bytes:
            data, prefix = obj, _wire.TAG_BYTES
        else:
            data, prefix = _wire.dumps(obj), -1
        self._q.put(data, prefix)

    def _put_data(self, data: Any, prefix: int, block: bool = True, timeout: float | None = None) -> None:
        self._q.put(data, prefix)

    def get(self) -> Any:
        tag, data = self._q.get(True, None)
        if tag == _wire.TAG_PICKLE:  # as _get_raw, without a call more
            return _wire.loads(data)
        return data
