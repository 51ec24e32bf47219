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
"""
from __future__ import annotations

import ctypes
import weakref

from multiprocessing import sharedctypes as _std
from multiprocessing.reduction import ForkingPickler

from ._block import SharedBlock

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized", "SharedBlock"]

typecode_to_type = _std.typecode_to_type

# --------------------------------------------------------------------------
# ctypes objects in blocks
# --------------------------------------------------------------------------

def _reduce_ctype(obj):
    block = getattr(obj, "_wrapper", None)
    if not isinstance(block, SharedBlock):
        return _std.reduce_ctype(obj)  # a standard-library shared object
    if isinstance(obj, ctypes.Array):
        return _rebuild_ctype, (obj._type_, block, obj._length_)
    return _rebuild_ctype, (type(obj), block, None)


def _rebuild_ctype(type_, block, length):
    if length is not None:
        type_ = type_ * length
    ForkingPickler.register(type_, _reduce_ctype)
    obj = type_.from_buffer(block.create_memoryview())
    obj._wrapper = block
    return obj


def _new_value(type_):
    return _rebuild_ctype(type_, SharedBlock(ctypes.sizeof(type_)), None)


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


def _lock_for(lock, ctx):
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
    return synchronized(obj, _lock_for(lock, ctx), ctx=ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    """A shared ctypes array wrapped with a lock (``get_lock()``)."""
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock, ctx), ctx=ctx)


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
    return synchronized(_rebuild_ctype(*spec), lock)


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
        lock = _lock_for(None, ctx)
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
