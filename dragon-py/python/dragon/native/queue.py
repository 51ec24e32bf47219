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
* ``m_uid``, ``pool``, ``block_size``, ``buffered``, ``policy`` are accepted
  and have no effect (messages of any size go through; memory comes from
  the run's shared-memory segments). The stream-channel options
  (``num_streams``, ``main_channel``, ``mgr_channel``, ``sem_channel``,
  ``strm_channels``), a custom ``pickler`` and :meth:`Queue.serialize` (for
  HPE's C++ clients) are not supported and raise ``NotImplementedError``.
"""
from __future__ import annotations

import queue as _stdqueue
import time

from .. import queues as _queues
from ..errors import DragonError

__all__ = ["Queue", "QueueError"]

DEFAULT_MAXSIZE = 100


class QueueError(DragonError):
    """A queue operation that makes no sense for this queue (``task_done``
    on a queue that is not joinable, ...)."""


class _TooManyTaskDone(QueueError, ValueError):
    """``task_done()`` called more times than items were put."""


class Queue(_queues.JoinableQueue):
    """A queue of pickled objects shared by the run's processes."""

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE, *, m_uid=None, pool=None, block_size=None,
                 joinable: bool = False, buffered: bool = True, policy=None, num_streams: int = 0,
                 main_channel=None, mgr_channel=None, sem_channel=None, strm_channels=None, pickler=None,
                 _ext_channel=None):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError("maxsize must be an integer, not %r" % (maxsize,))
        for name, value in (("num_streams", num_streams or None), ("main_channel", main_channel),
                            ("mgr_channel", mgr_channel), ("sem_channel", sem_channel),
                            ("strm_channels", strm_channels), ("pickler", pickler),
                            ("_ext_channel", _ext_channel)):
            if value is not None:
                raise NotImplementedError("Queue(%s=...) is not supported by this runtime" % name)
        _queues.Queue.__init__(self, maxsize)
        self._joinable = bool(joinable)
        if self._joinable:
            from ..synchronize import Condition, Lock, Semaphore

            self._unfinished_tasks = Semaphore(0)
            self._cond = Condition(Lock())

    # -- pickling -----------------------------------------------------------------
    def __getstate__(self):
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        state = _queues.Queue.__getstate__(self)
        if self._joinable:
            return state + (True, self._cond, self._unfinished_tasks)
        return state + (False,)

    def __setstate__(self, state):
        if state[-1] is False:
            _queues.Queue.__setstate__(self, state[:-1])
            self._joinable = False
        else:
            _queues.Queue.__setstate__(self, state[:-3])
            self._joinable = True
            self._cond, self._unfinished_tasks = state[-2:]

    # -- HPE spellings ------------------------------------------------------------
    def _put_item(self, data, prefix, block, timeout):
        # Only a joinable queue counts its tasks.
        if self._joinable:
            _queues.JoinableQueue._put_item(self, data, prefix, block, timeout)
        else:
            _queues.Queue._put_data(self, data, prefix, block, timeout)

    def put_nowait(self, obj) -> None:
        self.put(obj, False)

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

    def join(self, *args, timeout: float | None = None, **kwargs) -> None:
        """Wait until every item put on a joinable queue has been marked done
        (``TimeoutError`` after ``timeout`` seconds)."""
        if not self._joinable:
            raise QueueError("Queue is not joinable.")
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        if timeout is None and args:
            timeout = args[0]
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        with self._cond:
            while self._unfinished_tasks.get_value() != 0:
                if deadline is None:
                    self._cond.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("items of the queue are still not done after %s s" % timeout)
                    self._cond.wait(left)

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

    def serialize(self):
        raise NotImplementedError("Queue.serialize() (attaching from HPE's C++ API) is not supported; "
                                  "pickle the queue instead")

    def thread_wait(self, timeout, done_ev, ready) -> None:
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

    def __repr__(self):
        return "<dragon.native.queue.Queue %s maxsize=%s%s>" % (
            self._ch.name, self._maxsize if self._maxsize < 2**31 - 1 else "unbounded",
            " joinable" if self._joinable else "")


# Names HPE programs catch.
Empty = _stdqueue.Empty
Full = _stdqueue.Full
