"""What queues, connections and the pool share: object encoding, sending
with retries, polling, and keeping exported channels alive.

Encoding (see ``dragon-py/src/channel.rs`` for the tags): an exact ``bytes``
object travels as itself behind a one-byte tag; anything else is pickled with
:class:`multiprocessing.reduction.ForkingPickler` semantics (its reducers, the
default protocol) by a pickler reused per thread.

Functions travel by reference (module and name), as with the standard
library, except where that cannot work:

* Interactive sessions (the REPL, Jupyter, ``python -c``): their
  ``__main__`` has no file that children could import, so functions and
  classes defined there travel by value with ``cloudpickle``
  (:class:`Pickler`), so ``Pool.map(f, ...)`` and ``Process(target=f)``
  work in a notebook.
* Functions that cannot be found by name (lambdas, functions defined inside
  another function): when pickling the function of a ``Pool`` method
  (:func:`dumps_function`), a process object (``Process(target=...)``,
  :func:`dump_fallback`) or a ``ProcessPoolExecutor`` call
  (:func:`install_executor_fallback`) fails, it is pickled again with such
  functions by value. By reference stays the first try, so the common case
  pays nothing.
"""
from __future__ import annotations

import io
import os
import pickle
import threading

from multiprocessing import context as _mp_context
from multiprocessing.reduction import ForkingPickler

from . import _native
from .errors import MessageTooLargeError

TAG_PICKLE = _native.TAG_PICKLE
TAG_BYTES = _native.TAG_BYTES
TAG_CONTROL = _native.TAG_CONTROL
TAG_RAW = _native.TAG_RAW
SEND_OK = _native.SEND_OK
SEND_FULL = _native.SEND_FULL
SEND_NO_MEMORY = _native.SEND_NO_MEMORY

loads = pickle.loads

# Large bytes objects received without a copy map shared blocks; a child
# forked with os.fork gets private copies of those alive at the fork.
os.register_at_fork(before=_native.lent_before_fork, after_in_parent=_native.lent_after_fork_parent,
                    after_in_child=_native.lent_after_fork)


def interactive_main() -> bool:
    """Whether ``__main__`` is an interactive session (nothing a child could
    import: no file, not a module run with ``-m``)."""
    import sys

    main = sys.modules.get("__main__")
    if main is None:
        return False
    path = getattr(main, "__file__", None)
    if path and os.path.isfile(path):
        return False  # a script ("<stdin>" is not one)
    spec = getattr(main, "__spec__", None)
    return not (spec is not None and spec.name)


def _cloudpickle(obj, why):
    try:
        import cloudpickle
    except ImportError:
        raise pickle.PicklingError(
            "%r %s; install cloudpickle (pip install cloudpickle) to send it by value, or define it "
            "at the top level of a module" % (obj, why)) from None
    return cloudpickle


def findable(func) -> bool:
    """Whether pickle can find ``func`` by its module and qualified name
    (false for lambdas and functions defined inside functions)."""
    import sys

    qualname = getattr(func, "__qualname__", None)
    module = sys.modules.get(getattr(func, "__module__", None) or "")
    if not qualname or module is None or "<" in qualname:
        return False
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return obj is func


class _ByValuePickler(ForkingPickler):
    """ForkingPickler that sends some functions by value (cloudpickle):
    those of ``__main__`` (and its classes) in an interactive session, and,
    with ``unfindable``, functions pickle cannot find by name."""

    def __init__(self, file, protocol=None, *, main=True, unfindable=False):
        super().__init__(file, protocol)
        self._main = main
        self._unfindable = unfindable

    def reducer_override(self, obj):
        if self._main and getattr(obj, "__module__", None) == "__main__" and isinstance(obj, (type, _FunctionType)):
            cp = _cloudpickle(obj, "is defined in an interactive session, so child processes cannot import it")
            return cp.loads, (cp.dumps(obj),)
        if self._unfindable and type(obj) is _FunctionType and not findable(obj):
            cp = _cloudpickle(obj, "cannot be pickled by reference (a lambda or a nested function)")
            return cp.loads, (cp.dumps(obj),)
        return NotImplemented


_FunctionType = type(interactive_main)

#: What pickling a function that pickle cannot find by name raises
#: (PicklingError, or AttributeError for a nested function on CPython < 3.14).
PICKLING_ERRORS = (pickle.PicklingError, AttributeError, TypeError)


def Pickler(file):
    """A ForkingPickler for ``file``; in an interactive session one that sends
    ``__main__`` functions and classes by value."""
    return _ByValuePickler(file) if interactive_main() else ForkingPickler(file)


def FallbackPickler(file):
    """A ForkingPickler for ``file`` that also sends functions pickle cannot
    find by name (lambdas, nested functions) by value: the second try."""
    return _ByValuePickler(file, main=interactive_main(), unfindable=True)


def dumps_function(func, head=b""):
    """:func:`dumps` for a function to be called in another process: by
    reference, or else, if that fails, with what cannot go by reference by
    value (a lambda, a closure). Raises the first error if both fail."""
    try:
        return dumps(func, head)
    except PICKLING_ERRORS as first:
        buf = io.BytesIO()
        buf.write(head)
        try:
            FallbackPickler(buf).dump(func)
        except Exception:
            raise first from None
        return buf.getvalue()


class _ByValue:
    """A callable pickled by value (cloudpickle) ahead of time: unpickles as
    the callable itself."""

    __slots__ = ("payload",)

    def __init__(self, func):
        self.payload = _cloudpickle(func, "cannot be pickled by reference").dumps(func)

    def __reduce__(self):
        import cloudpickle

        return cloudpickle.loads, (self.payload,)


def install_executor_fallback():
    """Let a ``ProcessPoolExecutor`` on the ``dragon`` start method send
    functions that cannot go by reference (lambdas, closures) by value.

    Its call queue (a standard ``multiprocessing`` queue) pickles each call
    in a feeder thread and reports a failure to the queue's
    ``_on_queue_feeder_error``, which fails the call's future. For a queue
    of the ``dragon`` context (its semaphore is dragon's), that failure
    puts the call back with its function pickled by value instead; if that
    cannot be done either, the future fails as before. Installed once, when
    a process of the ``dragon`` start method starts for an executor."""
    import sys

    cfp = sys.modules.get("concurrent.futures.process")
    if cfp is None:
        return
    queue_cls = getattr(cfp, "_SafeQueue", None)
    call_item = getattr(cfp, "_CallItem", None)
    if queue_cls is None or call_item is None:
        return
    stock = queue_cls._on_queue_feeder_error
    if getattr(stock, "_dragon_fallback", False):
        return
    from .synchronize import BoundedSemaphore

    def _on_queue_feeder_error(self, e, obj):
        if (isinstance(obj, call_item) and isinstance(getattr(self, "_sem", None), BoundedSemaphore)
                and isinstance(e, PICKLING_ERRORS) and not isinstance(obj.fn, _ByValue)):
            try:
                fn = _ByValue(obj.fn)
                self.put(call_item(obj.work_id, fn, obj.args, obj.kwargs))
                return
            except Exception:
                pass
        stock(self, e, obj)

    _on_queue_feeder_error._dragon_fallback = True
    queue_cls._on_queue_feeder_error = _on_queue_feeder_error


class _ThreadPickler(threading.local):
    def __init__(self):
        self.buf = io.BytesIO()
        self.pickler = None
        self.reducers = -1
        self.busy = False


_tls = _ThreadPickler()


def dumps(obj, head=b""):
    """Pickle ``obj`` as ``ForkingPickler.dumps`` would, after the bytes
    ``head`` (a message header, say: one buffer, no second copy). Returns a
    bytes-like object valid until the next call in this thread."""
    st = _tls
    if st.busy:  # a reducer that pickles (re-entrant use): a fresh pickler
        buf = io.BytesIO()
        buf.write(head)
        Pickler(buf).dump(obj)
        return buf.getvalue()
    n = len(ForkingPickler._extra_reducers)
    if st.pickler is None or st.reducers != n:
        st.buf = io.BytesIO()
        st.pickler = Pickler(st.buf)
        st.reducers = n
    buf = st.buf
    buf.seek(0)
    buf.truncate()
    if head:
        buf.write(head)
    st.busy = True
    try:
        st.pickler.dump(obj)
    except BaseException:
        st.pickler = None  # its state is unknown: start afresh next time
        raise
    finally:
        st.busy = False
    st.pickler.clear_memo()
    return buf.getvalue()


# --------------------------------------------------------------------------
# Sending and polling
# --------------------------------------------------------------------------

def _shm_total():
    try:
        st = os.statvfs(_native.shm_dir())
        return st.f_blocks * st.f_frsize
    except OSError:
        return None


def check_fits(data):
    """Shared memory for a large message is exhausted: raise if it can never
    fit, else let the caller retry."""
    total = _shm_total()
    if total is not None and len(data) > total:
        raise MessageTooLargeError(
            "message of %d bytes is larger than all shared memory (%s holds %d bytes); nothing was sent"
            % (len(data), _native.shm_dir(), total))


#: ``send_blocking(ch, data, prefix, block=True, timeout=None)``: send on
#: ``ch``, retrying while shared memory is exhausted for now
#: (:class:`~dragon.errors.MessageTooLargeError` if the message can never
#: fit); False if the channel stayed full (or memory stayed short) until the
#: timeout. The queues' own (``dragon-py/src/queue.rs``).
send_blocking = _native.send_blocking


def send_in_order(ch, data, prefix, timeout=None):
    """Send on ``ch`` as :func:`send_blocking` does; to a channel of another
    node without waiting for the round trip (the transport's deferred
    sends: in order with this attachment's other sends, a failure raised by
    a later one). False if, after ``timeout`` seconds (``None``: no limit),
    the channel is still full (across nodes: as much as may be is still in
    flight)."""
    if not isinstance(ch, _native.RemoteChannel):
        return send_blocking(ch, data, prefix, True, timeout)
    while not ch.send_deferred(data, prefix, 0.25 if timeout is None else timeout):
        if timeout is not None:
            return False
    return True


def flush_quietly(ch):
    """Wait until the deferred sends on ``ch`` are all in; a failure among
    them is printed (as the standard feeder thread prints its errors), not
    raised: for exit and close."""
    try:
        ch.flush()
    except Exception:
        import traceback

        traceback.print_exc()


def poll(ch, timeout=0.0):
    """Whether ``ch`` has a message (or an error) to receive, waiting at most
    ``timeout`` seconds (``None``: no limit)."""
    if ch.readable():
        return True
    if timeout is not None and timeout <= 0:
        return False
    return _native.select([ch], timeout) is not None


# --------------------------------------------------------------------------
# Keeping exported channels alive
# --------------------------------------------------------------------------

_exported = {}
_exported_pid = os.getpid()


def keep_alive(*natives) -> None:
    """A handle of these channels is being pickled: keep this process's
    attachments (so the channels cannot be destroyed) while the handle may
    still be unpickled. While a process is being started, its ``Popen``
    keeps them (as long as the process object lives); otherwise this
    process keeps them until it exits."""
    popen = _mp_context.get_spawning_popen()
    if popen is not None:
        keep = popen.__dict__.setdefault("_dragon_keepalive", {})
    else:
        global _exported_pid, _exported
        if _exported_pid != os.getpid():
            _exported_pid, _exported = os.getpid(), {}
        keep = _exported
    for n in natives:
        if n is not None:
            keep[id(n)] = n
