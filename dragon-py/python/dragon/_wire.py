"""What queues, connections and the pool share: object encoding, sending
with retries, polling, and keeping exported channels alive.

Encoding (see ``dragon-py/src/channel.rs`` for the tags): an exact ``bytes``
object travels as itself behind a one-byte tag; anything else is pickled with
:class:`multiprocessing.reduction.ForkingPickler` semantics (its reducers, the
default protocol) by a pickler reused per thread.

Interactive sessions (the REPL, Jupyter, ``python -c``): their ``__main__``
has no file that children could import, so functions and classes defined
there cannot travel by reference. There, and only there, they travel by
value with ``cloudpickle`` (:class:`Pickler`), so ``Pool.map(f, ...)`` and
``Process(target=f)`` work in a notebook.
"""
from __future__ import annotations

import io
import os
import pickle
import threading
import time

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


class _ByValuePickler(ForkingPickler):
    """ForkingPickler that sends ``__main__`` functions and classes by value."""

    def reducer_override(self, obj):
        if getattr(obj, "__module__", None) == "__main__" and isinstance(obj, (type, _FunctionType)):
            try:
                import cloudpickle
            except ImportError:
                raise pickle.PicklingError(
                    "%r is defined in an interactive session, so child processes cannot import it; "
                    "install cloudpickle (pip install cloudpickle) to send it by value, or define it "
                    "in a module" % (obj,)) from None
            return cloudpickle.loads, (cloudpickle.dumps(obj),)
        return NotImplemented


_FunctionType = type(interactive_main)


def Pickler(file):
    """A ForkingPickler for ``file``; in an interactive session one that sends
    ``__main__`` functions and classes by value."""
    return _ByValuePickler(file) if interactive_main() else ForkingPickler(file)


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


def send_blocking(ch, data, prefix, block=True, timeout=None):
    """Send on ``ch``, retrying while shared memory is exhausted; False if
    the channel stayed full (or memory stayed short) until the timeout."""
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    pause = 0.0005
    while True:
        r = ch.send(data, prefix, block, timeout)
        if r == SEND_OK:
            return True
        if r == SEND_FULL:
            return False
        check_fits(data)
        if not block:
            return False
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False
            time.sleep(min(pause, timeout))
        else:
            time.sleep(pause)
        pause = min(pause * 2, 0.05)


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
