"""HPE Dragon's native queue (``dragon.native.queue.Queue``) on a channel
queue (:class:`dragon.queues.Queue`)::

    q = Queue()                     # 100 slots, as HPE Dragon's default
    q = Queue(maxsize=0)            # unbounded
    q = Queue(joinable=True)        # task_done() / join()

One class covers HPE's variants: ``joinable=True`` adds ``task_done`` and
``join(timeout)``. Everything else of :class:`dragon.queues.Queue` applies
(pickles by handle to any process of the run, ``queue.Empty``/``queue.Full``
on timeouts, Ctrl-C interrupts a blocked call).

Differences from HPE Dragon:

* ``maxsize <= 0`` means unbounded (as in ``multiprocessing``); HPE Dragon
  silently turns it into 100, so a program that puts more than 100 items
  before anyone gets them blocks there and not here.
* ``m_uid``, ``pool``, ``block_size``, ``policy`` are accepted and have no
  effect (messages of any size go through; memory comes from the run's
  shared-memory segments).
* ``pickler``: as in HPE Dragon, an object with ``dump(obj, file)`` and
  ``load(file)`` (``cloudpickle``, ``pickle``, or a class of your own, say
  for numpy arrays) encodes every item instead of ``multiprocessing``'s
  pickling; it travels with the queue to every process that gets a handle.
* ``buffered=False, num_streams=N``: HPE Dragon streams an unbuffered
  queue's items through ``N`` stream channels. Here every item is one
  channel message whatever its size (a large one lies in a shared block
  that the receiver reads in place), so there is nothing to stream: the
  queue works as a buffered one and keeps ``num_streams`` for the program
  to read. As in HPE Dragon, ``num_streams`` with ``buffered=True`` is a
  ``ValueError``.
* Channels made outside the queue (``main_channel``, ``mgr_channel``,
  ``sem_channel``, ``strm_channels``, ``stream_channel=`` of ``put`` and
  ``get``) do not exist in this runtime: they raise ``NotImplementedError``
  saying so (a queue makes its own channel; share it by pickling it or with
  ``serialize()``/``Queue.attach()``).
* :meth:`Queue.serialize` returns a text descriptor that :meth:`Queue.attach`
  turns back into a handle in any Python process of the run; HPE's C and
  C++ clients cannot attach to it.
"""
from __future__ import annotations

import queue as _stdqueue
import threading
import time
import types
from typing import IO, Any, Protocol

from .. import queues as _queues
from ..errors import DragonError

__all__ = ["Queue", "QueueError"]

DEFAULT_MAXSIZE = 100


_EXTERNAL_CHANNELS = ("%s: this runtime has no channel objects made outside a queue (HPE Dragon's "
                      "main, manager, semaphore and stream channels); a queue makes its own. Drop the "
                      "argument, and share the queue by pickling it or with serialize() and Queue.attach()")


class Pickler(Protocol):
    """What ``Queue(pickler=...)`` takes: ``cloudpickle``, ``pickle`` or an
    object of your own with these two functions."""

    def dump(self, obj: Any, file: IO[bytes], /) -> None: ...

    def load(self, file: IO[bytes], /) -> Any: ...


def _dump_pickler(pickler: object) -> bytes | None:
    if pickler is None:
        return None
    import cloudpickle

    return cloudpickle.dumps(pickler)


def _load_pickler(data: bytes) -> Any:
    import cloudpickle

    return cloudpickle.loads(data)


class QueueError(DragonError):
    """A queue operation that makes no sense for this queue (``task_done``
    on a queue that is not joinable, ...)."""


class _TooManyTaskDone(QueueError, ValueError):
    """``task_done()`` called more times than items were put."""


class Queue(_queues.JoinableQueue):
    """A queue of pickled objects shared by the run's processes."""

    _pickler: Any  # a Pickler, or None (multiprocessing's pickling)

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE, *, m_uid: int | None = None, pool: object = None,
                 block_size: int | None = None, joinable: bool = False, buffered: bool = True,
                 policy: object = None, num_streams: int = 0, main_channel: object = None,
                 mgr_channel: object = None, sem_channel: object = None, strm_channels: object = None,
                 pickler: Pickler | types.ModuleType | None = None, _ext_channel: object = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError("maxsize must be an integer, not %r" % (maxsize,))
        if isinstance(num_streams, bool) or not isinstance(num_streams, int) or num_streams < 0:
            raise ValueError("num_streams must be an integer >= 0, not %r" % (num_streams,))
        if buffered and num_streams:
            raise ValueError("a buffered queue has no stream channels: give buffered=False with num_streams=%d"
                             % num_streams)
        for name, value in (("main_channel", main_channel), ("mgr_channel", mgr_channel),
                            ("sem_channel", sem_channel), ("strm_channels", strm_channels),
                            ("_ext_channel", _ext_channel)):
            if value is not None:
                raise NotImplementedError(_EXTERNAL_CHANNELS % ("Queue(%s=...)" % name))
        if pickler is not None and not (callable(getattr(pickler, "dump", None))
                                        and callable(getattr(pickler, "load", None))):
            raise TypeError("pickler must have dump(obj, file) and load(file) (as cloudpickle and pickle do), "
                            "not %r" % (pickler,))
        self._joinable = bool(joinable)
        if self._joinable:
            from ..synchronize import Condition, Lock, Semaphore

            self._unfinished_tasks = Semaphore(0)
            self._cond = Condition(Lock())
        _queues.Queue.__init__(self, maxsize)
        self._pickler = pickler
        self._num_streams = num_streams
        self._buffered = bool(buffered)

    def _reset(self) -> None:
        # Only a joinable queue counts its tasks.
        if self._joinable:
            _queues.JoinableQueue._reset(self)
        else:
            _queues.Queue._reset(self)

    # -- pickling -----------------------------------------------------------------
    def __getstate__(self) -> tuple[Any, ...]:
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        state = _queues.Queue.__getstate__(self)
        extra = (_dump_pickler(self._pickler), self._num_streams, self._buffered)
        if self._joinable:
            return state + extra + (True, self._cond, self._unfinished_tasks)
        return state + extra + (False,)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if state[-1] is False:
            base, extra = state[:-4], state[-4:-1]
            self._joinable = False
        else:
            base, extra = state[:-6], state[-6:-3]
            self._joinable = True
            self._cond, self._unfinished_tasks = state[-2:]
        _queues.Queue.__setstate__(self, base)
        pickler, self._num_streams, self._buffered = extra
        self._pickler = None if pickler is None else _load_pickler(pickler)

    def serialize(self) -> str:
        """A text descriptor of this queue: :meth:`attach` makes a handle of
        it in any Python process of the run (this process keeps the queue
        alive meanwhile, as when it pickles the queue)."""
        import base64

        from .. import _wire

        return base64.urlsafe_b64encode(bytes(_wire.dumps(self))).decode("ascii")

    @classmethod
    def attach(cls, serialized: str) -> "Queue":
        """A handle of the queue :meth:`serialize` described."""
        import base64
        import binascii
        import pickle

        try:
            data = base64.urlsafe_b64decode(serialized.encode("ascii") if isinstance(serialized, str)
                                            else bytes(serialized))
            q = pickle.loads(data)
        except (binascii.Error, ValueError, TypeError, pickle.UnpicklingError, EOFError) as e:
            raise ValueError("not a serialized queue: %s" % e) from None
        if not isinstance(q, Queue):
            raise ValueError("not a serialized queue (it describes a %s)" % type(q).__name__)
        return q

    # -- items, with a custom pickler ---------------------------------------------
    def put(self, obj: Any, block: bool = True, timeout: float | None = None, *,
            stream_channel: object = None) -> None:
        """Put ``obj`` on the queue (``queue.Full`` if a bounded queue stays
        full)."""
        if stream_channel is not None:
            raise NotImplementedError(_EXTERNAL_CHANNELS % "put(stream_channel=...)")
        if self._pickler is None:
            return _queues.Queue.put(self, obj, block, timeout)
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        import io

        from .. import _wire

        buf = io.BytesIO()
        self._pickler.dump(obj, buf)
        self._used = True
        self._put_data(buf.getbuffer(), _wire.TAG_RAW, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None, *, stream_channel: object = None) -> Any:
        """Remove and return an item (``queue.Empty`` if none comes)."""
        if stream_channel is not None:
            raise NotImplementedError(_EXTERNAL_CHANNELS % "get(stream_channel=...)")
        if self._pickler is None:
            return _queues.Queue.get(self, block, timeout)
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        import io

        from .. import _wire

        tag, data = self._recv_msg(block, timeout)
        if tag == _wire.TAG_RAW:
            return self._pickler.load(io.BytesIO(data))
        if tag == _wire.TAG_PICKLE:
            return _wire.loads(data)
        return data

    def get_nowait(self, *, stream_channel: object = None) -> Any:
        return self.get(False, stream_channel=stream_channel)

    @property
    def num_streams(self) -> int:
        """The ``num_streams`` the queue was made with (nothing streams here:
        see the module's docs)."""
        return self._num_streams

    @property
    def buffered(self) -> bool:
        return self._buffered

    # -- HPE spellings ------------------------------------------------------------
    def put_nowait(self, obj: Any, *, stream_channel: object = None) -> None:
        self.put(obj, False, stream_channel=stream_channel)

    @property
    def joinable(self) -> bool:
        return self._joinable

    def task_done(self, timeout: float | None = None) -> None:
        """One item taken from a joinable queue has been processed."""
        if not self._joinable:
            raise QueueError("Queue is not joinable.")
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        try:
            _queues.JoinableQueue.task_done(self)
        except ValueError:
            raise _TooManyTaskDone("task_done() called more times than items were put") from None

    def join(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Wait until every item put on a joinable queue has been marked done
        (``TimeoutError`` after ``timeout`` seconds)."""
        if not self._joinable:
            raise QueueError("Queue is not joinable.")
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        if timeout is None and args:
            timeout = args[0]
        if not self._q.join(None if timeout is None else max(timeout, 0)):
            raise TimeoutError("items of the queue are still not done after %s s" % timeout)

    def size(self) -> int:
        """Approximate number of items in the queue (``qsize()``)."""
        return self.qsize()

    def poll(self, timeout: float | None = 0) -> bool:
        """Whether an item is there, waiting up to ``timeout`` seconds
        (``None``: until one is)."""
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        return self._poll(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def destroy(self) -> None:
        """Close this handle and destroy the queue for every process: items
        still in it are lost, other processes' operations fail with
        :class:`~dragon.errors.DestroyedError`."""
        self.close()
        self.cancel_join_thread()
        try:
            self._ch.destroy()
        except DragonError:
            pass

    def thread_wait(self, timeout: float | None, done_ev: threading.Event, ready: list[Queue]) -> None:
        """Wait (in a helper thread of HPE's ``wait``) until an item is there
        or ``done_ev`` is set; append this queue to ``ready`` if an item
        came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done_ev.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if self._poll(0.01 if left is None else min(0.01, left)):
                if not done_ev.is_set():
                    ready.append(self)
                    done_ev.set()
                return
        done_ev.set()

    def __repr__(self) -> str:
        return "<dragon.native.queue.Queue %s maxsize=%s%s>" % (
            self._ch.name, self._maxsize if self._maxsize < 2**31 - 1 else "unbounded",
            " joinable" if self._joinable else "")


# Names HPE programs catch.
Empty = _stdqueue.Empty
Full = _stdqueue.Full
