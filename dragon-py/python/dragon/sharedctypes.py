"""``Value``, ``Array``, ``RawValue`` and ``RawArray`` in shared memory.

The API of :mod:`multiprocessing.sharedctypes`: ctypes objects placed in a
shared-memory block of the run, wrapped (``Value``, ``Array``) with a
lock (a dragon ``RLock`` by default) and ``get_lock()`` / ``get_obj()``.
Unlike the standard library's, these objects pickle by handle at any time
(through a queue, say), not only when a process starts; the synchronized
wrappers pickle by handle with any pickler.

Each object lives in a :class:`dragon._block.SharedBlock` (a segment of its
own, attached by a handle that is checked against the block's header; see
that module for the layout).

On another node (in a multi-node run) a ``Value`` or ``Array`` unpickles as
a wrapper of the same interface whose every access, under the object's own
lock, reads or writes the bytes it touches through the block's node (whole
and ordered with every other user's accesses, which take the same lock).
``get_obj()`` has no memory to return there and raises
:class:`~dragon.errors.NotLocalError`, as do ``RawValue`` and ``RawArray``
(plain memory, no lock): off their node they would silently diverge.
"""
from __future__ import annotations

import ctypes
import weakref
from typing import Any

from multiprocessing import sharedctypes as _std
from multiprocessing.reduction import ForkingPickler

from . import _remote
from ._block import RemoteBlock, SharedBlock

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized", "SharedBlock"]

typecode_to_type: dict[str, type[Any]] = _std.typecode_to_type

# --------------------------------------------------------------------------
# ctypes objects in blocks
# --------------------------------------------------------------------------

def _reduce_ctype(obj):
    block = getattr(obj, "_wrapper", None)
    if not isinstance(block, SharedBlock):
        return _std.reduce_ctype(obj)  # a standard-library shared object
    _remote.check_crosses("a RawValue or RawArray")  # plain memory: its process starts here
    if isinstance(obj, ctypes.Array):
        return rebuild_ctype, (obj._type_, block, obj._length_)
    return rebuild_ctype, (type(obj), block, None)


def rebuild_ctype(type_, block, length):
    """The ctypes object of ``type_`` (an array of ``length`` of them if not
    ``None``) in ``block``: a new object's, or an unpickled one's."""
    if length is not None:
        type_ = type_ * length
    ForkingPickler.register(type_, _reduce_ctype)
    obj = type_.from_buffer(block.create_memoryview())
    obj._wrapper = block
    return obj


def _new_value(type_):
    return rebuild_ctype(type_, SharedBlock(ctypes.sizeof(type_)), None)


def RawValue(typecode_or_type, *args):
    """A ctypes object in shared memory."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    obj = _new_value(type_)
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type, size_or_initializer):
    """A ctypes array in shared memory, zero-filled or initialised from a
    sequence."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    if isinstance(size_or_initializer, int):
        return _new_value(type_ * size_or_initializer)
    result = _new_value(type_ * len(size_or_initializer))
    result.__init__(*size_or_initializer)
    return result


def lock_for(lock, ctx):
    """The lock of a synchronized wrapper made with ``lock=lock``: a new
    ``RLock`` (``ctx``'s, or dragon's without one) for ``True`` or
    ``None``, else ``lock`` itself."""
    if lock in (True, None):
        if ctx is None:
            from .synchronize import RLock

            return RLock()
        return ctx.RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return lock


def Value(typecode_or_type, *args, lock=True, ctx=None):
    """A shared ctypes object wrapped with a lock (``get_lock()``)."""
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return synchronized(obj, lock_for(lock, ctx), ctx=ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    """A shared ctypes array wrapped with a lock (``get_lock()``)."""
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, lock_for(lock, ctx), ctx=ctx)


def copy(obj):
    """A new shared object holding a copy of ``obj``."""
    new_obj = _new_value(type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


# --------------------------------------------------------------------------
# Synchronized wrappers: the standard classes, pickled by handle
# --------------------------------------------------------------------------

def _reduce_synchronized(self):
    obj = self._obj
    block = getattr(obj, "_wrapper", None)
    if isinstance(block, SharedBlock):
        if isinstance(obj, ctypes.Array):
            spec = (obj._type_, block, obj._length_)
        else:
            spec = (type(obj), block, None)
        return _rebuild_synchronized, (spec, self._lock)
    return synchronized, (obj, self._lock)


def _rebuild_synchronized(spec, lock):
    if isinstance(spec[1], RemoteBlock):
        return remote_synchronized(spec, lock)
    return synchronized(rebuild_ctype(*spec), lock)


class Synchronized(_std.Synchronized):
    __reduce__ = _reduce_synchronized


class SynchronizedArray(_std.SynchronizedArray):
    __reduce__ = _reduce_synchronized


class SynchronizedString(_std.SynchronizedString):
    __reduce__ = _reduce_synchronized


class SynchronizedBase(_std.SynchronizedBase):
    __reduce__ = _reduce_synchronized


_class_cache = weakref.WeakKeyDictionary()


def synchronized(obj, lock=None, ctx=None):
    """Wrap a shared ctypes object with ``lock`` (a new ``RLock`` if
    ``None``)."""
    assert not isinstance(obj, _std.SynchronizedBase), "object already synchronized"
    if lock is None:
        lock = lock_for(None, ctx)
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock, ctx)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    cls = type(obj)
    try:
        scls = _class_cache[cls]
    except KeyError:
        d = {name: _std.make_property(name) for name, *_ in cls._fields_}
        scls = _class_cache[cls] = type("Synchronized" + cls.__name__, (SynchronizedBase,), d)
    return scls(obj, lock, ctx)


# --------------------------------------------------------------------------
# Value and Array of another node
# --------------------------------------------------------------------------

class _RemoteSynchronizedBase:
    """The synchronized wrapper's interface over a block of another node:
    each access takes the lock, then reads (and for a store writes back)
    the bytes it touches."""

    def __init__(self, spec, lock):
        type_, block, length = spec
        self._spec, self._lock, self._block = spec, lock, block
        self._ctype = type_ * length if length is not None else type_
        self.acquire = lock.acquire
        self.release = lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __reduce__(self):
        return _rebuild_synchronized, (self._spec, self._lock)

    def get_lock(self):
        return self._lock

    def get_obj(self):
        self._block.create_memoryview()  # raises NotLocalError, saying why

    def _load(self):
        return self._ctype.from_buffer_copy(self._block.read(0, ctypes.sizeof(self._ctype)))

    def _store(self, obj):
        self._block.write(0, memoryview(obj).cast("B"))

    def _update(self, change):
        with self._lock:
            obj = self._load()
            change(obj)
            self._store(obj)

    def __repr__(self):
        return "<%s wrapper for %s on node %d>" % (type(self).__name__, self._ctype.__name__, self._block.node)


def _remote_field(name, whole=False):
    """A property reading and writing attribute ``name`` of the remote
    object under its lock: a write reads the object, sets the attribute and
    writes it back, or with ``whole`` (the attribute is the whole object, a
    simple value's ``value``) just writes a new one."""
    def get(self):
        with self._lock:
            return getattr(self._load(), name)

    def set(self, value):
        if whole:
            obj = self._ctype()
            setattr(obj, name, value)
            with self._lock:
                self._store(obj)
        else:
            self._update(lambda obj: setattr(obj, name, value))

    return property(get, set)


class RemoteSynchronized(_RemoteSynchronizedBase):
    """A ``Value`` of another node."""

    value = _remote_field("value", whole=True)


class RemoteSynchronizedArray(_RemoteSynchronizedBase):
    """An ``Array`` of another node: an index reads or writes one item, a
    slice the items it covers."""

    def __len__(self):
        return self._spec[2]

    def _item_range(self, i):
        n = self._spec[2]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("invalid index")
        size = ctypes.sizeof(self._spec[0])
        return i * size, size

    def __getitem__(self, i):
        if isinstance(i, slice):
            with self._lock:
                return self._load()[i]
        offset, size = self._item_range(i.__index__())
        with self._lock:
            return (self._spec[0] * 1).from_buffer_copy(self._block.read(offset, size))[0]

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            def change(obj):
                obj[i] = value
            return self._update(change)
        offset, size = self._item_range(i.__index__())
        one = (self._spec[0] * 1)()
        one[0] = value
        with self._lock:
            self._block.write(offset, memoryview(one).cast("B"))

    def __iter__(self):
        with self._lock:
            return iter(self._load()[:])


class RemoteSynchronizedString(RemoteSynchronizedArray):
    """A ``c_char`` ``Array`` of another node."""

    value = _remote_field("value")
    raw = _remote_field("raw")


_remote_class_cache = weakref.WeakKeyDictionary()


def remote_synchronized(spec, lock):
    """The synchronized wrapper of ``spec`` (``(type, block, length)``,
    as pickled) whose block is on another node: every access goes through
    ``lock`` to that node."""
    type_, _block, length = spec
    if length is not None:
        cls = RemoteSynchronizedString if type_ is ctypes.c_char else RemoteSynchronizedArray
    elif issubclass(type_, ctypes._SimpleCData):
        cls = RemoteSynchronized
    else:
        try:
            cls = _remote_class_cache[type_]
        except KeyError:
            fields = {name: _remote_field(name) for name, *_ in type_._fields_}
            cls = _remote_class_cache[type_] = type(
                "RemoteSynchronized" + type_.__name__, (_RemoteSynchronizedBase,), fields)
    return cls(spec, lock)
