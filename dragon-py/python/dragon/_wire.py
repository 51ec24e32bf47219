"""What queues and connections share: object encoding and keeping exported
channels alive.

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

from multiprocessing import context as _mp_context
from multiprocessing.reduction import ForkingPickler

from . import _native

TAG_PICKLE = _native.TAG_PICKLE
TAG_BYTES = _native.TAG_BYTES
TAG_CONTROL = _native.TAG_CONTROL
TAG_RAW = _native.TAG_RAW
SEND_OK = _native.SEND_OK
SEND_FULL = _native.SEND_FULL
SEND_NO_MEMORY = _native.SEND_NO_MEMORY

loads = pickle.loads


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


def encode(obj):
    """``(data, prefix)`` for :meth:`dragon._native.Channel.send`."""
    if type(obj) is bytes:
        return obj, TAG_BYTES
    return dumps(obj), -1


def decode(tag, data):
    """The object a received ``(tag, payload)`` carries (raw bytes stay
    bytes)."""
    if tag == TAG_PICKLE:
        return loads(data)
    return data


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
