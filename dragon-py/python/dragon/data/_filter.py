"""``DDict.filter``: a function run beside each manager, on the manager's
node and on a view of the DDict bound to that manager, whose outputs come
back merged best first (HPE Dragon's ``filter``).

Each manager gets one process and one queue. The process calls
``mgr_code(view, queue, *mgr_code_args)``, then puts an end mark (or, if
the code raised, what it raised) on the queue. The caller's iterator keeps
one item of each queue in a heap ordered by ``comparator`` and hands out
the best, so outputs that each manager put best first come out best first
overall. A filter process that dies without its end mark makes the
iterator raise instead of waiting for output that will never come."""
from __future__ import annotations

import heapq
import itertools
import queue as _queue
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ._errors import DDictError

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

__all__ = ["Filter"]


class _End:
    """What a filter process puts after its code's last output."""


class _Failed:
    """What a filter process puts when its code raised."""

    def __init__(self, what: str) -> None:
        self.what = what


def _run(dd: Any, index: int, code: bytes, args: bytes, out: Any) -> None:
    """Body of the filter process of manager ``index``."""
    import cloudpickle

    try:
        cloudpickle.loads(code)(dd.manager(index), out, *cloudpickle.loads(args))
    except BaseException as e:
        out.put(_Failed("%s: %s" % (type(e).__name__, e)))
        raise
    out.put(_End())


class _Entry:
    """A heap entry: ``comparator(a, b)`` says whether ``a`` is better."""

    __slots__ = ("value", "index", "seq", "better")

    def __init__(self, value: Any, index: int, seq: int, better: Callable[[Any, Any], bool] | None) -> None:
        self.value, self.index, self.seq, self.better = value, index, seq, better

    def __lt__(self, other: "_Entry") -> bool:
        if self.better is None:
            return self.seq < other.seq
        return bool(self.better(self.value, other.value))


_DONE = object()


class Filter:
    """The processes of one ``DDict.filter`` call: a context manager whose
    ``__enter__`` gives the iterator over the merged outputs, and whose
    ``__exit__`` (or :meth:`close`) ends processes still running."""

    #: Seconds between looks at a filter process while its queue is empty.
    POLL = 0.2

    def __init__(self, dd: Any, mgr_code: Callable[..., Any], mgr_code_args: tuple[Any, ...],
                 comparator: Callable[[Any, Any], bool] | None) -> None:
        import multiprocessing

        import cloudpickle

        from .. import _remote

        if not callable(mgr_code):
            raise TypeError("mgr_code must be callable, not %r" % (mgr_code,))
        if comparator is not None and not callable(comparator):
            raise TypeError("comparator must be callable (or None), not %r" % (comparator,))
        self._better = comparator
        code, args = cloudpickle.dumps(mgr_code), cloudpickle.dumps(tuple(mgr_code_args))
        ctx: Any = multiprocessing.get_context("dragon")
        nodes = dd._c.shard_nodes()
        self._queues: list[Any] = []
        self._procs: list[BaseProcess] = []
        try:
            for i, node in enumerate(nodes):
                q = ctx.Queue()
                p = ctx.Process(target=_run, args=(dd, i, code, args, q), name="ddict-filter-%d" % i)
                if _remote.multinode():
                    p._dragon_node = node  # beside the manager
                p.start()
                self._queues.append(q)
                self._procs.append(p)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Iterator[Any]:
        return iter(self)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        seq = itertools.count()
        heap: list[_Entry] = []
        for i in range(len(self._queues)):
            item = self._next(i)
            if item is not _DONE:
                heapq.heappush(heap, _Entry(item, i, next(seq), self._better))
        while heap:
            e = heapq.heappop(heap)
            yield e.value
            item = self._next(e.index)
            if item is not _DONE:
                heapq.heappush(heap, _Entry(item, e.index, next(seq), self._better))

    def _next(self, i: int) -> Any:
        """The next output of manager ``i``'s code, or ``_DONE``."""
        q, p = self._queues[i], self._procs[i]
        while True:
            try:
                item = q.get(timeout=self.POLL)
                break
            except _queue.Empty:
                if p.exitcode is None:
                    continue
            # It has ended: what it put before it ended is in the queue.
            try:
                item = q.get_nowait()
                break
            except _queue.Empty:
                raise DDictError("the filter process of manager %d ended (exit code %s) before its "
                                 "output did" % (i, p.exitcode)) from None
        if isinstance(item, _End):
            return _DONE
        if isinstance(item, _Failed):
            raise DDictError("the filter code of manager %d raised %s" % (i, item.what))
        return item

    def close(self) -> None:
        """End the filter processes still running and release the queues."""
        for p in self._procs:
            if p.exitcode is None:
                p.terminate()
        for p in self._procs:
            p.join()
        for q in self._queues:
            q.close()
            q.cancel_join_thread()
