"""``Value``, ``Array``, ``RawValue`` and ``RawArray`` in shared memory.

The API of :mod:`multiprocessing.sharedctypes`: ctypes objects placed in a
shared-memory block of the run, wrapped (``Value``, ``Array``) with a
lock (a dragon ``RLock`` by default) and ``get_lock()`` / ``get_obj()``.
Unlike the standard library's, these objects pickle by handle at any time
(through a queue, say), not only when a process starts; the synchronized
wrappers pickle by handle with any pickler.

Each block is a segment of its own::

    offset 0   magic "DRGM" · u16 layout version · u8 kind (Memory) · pad
               u64 id · u64 generation · u64 data size        (64 bytes)
    offset 64  the data

Its handle (``channels-core``'s handle format, kind ``Memory``) names the
segment, id and generation; attaching checks them against the header, so a
forged or stale handle is a clear error. The segment's name lives as long
as the block that created it unless the block was pickled, then until the
run ends.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
import weakref

from multiprocessing import sharedctypes as _std
from multiprocessing.reduction import ForkingPickler

from . import _native
from ._lifetime import object_created
from .errors import DestroyedError, InvalidHandleError

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized", "SharedBlock"]

typecode_to_type = _std.typecode_to_type

_MAGIC = b"DRGM"
_LAYOUT_VERSION = 1
_HEADER = struct.Struct("<4sHB9xQQQ")  # 40 bytes, padded to DATA_OFFSET
DATA_OFFSET = 64


def _unlink_unless_exported(name, creator, exported):
    if not exported[0] and os.getpid() == creator:
        try:
            _native.segment_unlink(name)
        except Exception:
            pass


class SharedBlock:
    """``size`` bytes of zero-filled shared memory, attachable by handle."""

    __slots__ = ("_mmap", "name", "id", "size", "_exported", "__weakref__")

    def __init__(self, size):
        size = int(size)
        if size < 0:
            raise ValueError("size must be >= 0")
        object_created()
        name, id_ = _native.memory_create(DATA_OFFSET + size)
        try:
            self._map(name)
            _HEADER.pack_into(self._mmap, 0, _MAGIC, _LAYOUT_VERSION, _native.KIND_MEMORY, id_, 1, size)
        except BaseException:
            _native.segment_unlink(name)
            raise
        self.name, self.id, self.size = name, id_, size
        self._exported = [False]
        weakref.finalize(self, _unlink_unless_exported, name, os.getpid(), self._exported)

    def _map(self, name):
        path = os.path.join(_native.shm_dir(), name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise DestroyedError("shared memory block was destroyed: its segment %s no longer exists" % name) from None
        try:
            length = os.fstat(fd).st_size
            if length < DATA_OFFSET:
                raise InvalidHandleError("segment %s is too small to hold a shared memory block" % name)
            self._mmap = mmap.mmap(fd, length)
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, handle):
        """Attach to the block a handle names."""
        segment, id_, generation, offset = _native.memory_parse(handle)
        self = cls.__new__(cls)
        self._map(segment)
        magic, version, kind, hid, hgen, size = _HEADER.unpack_from(self._mmap, 0)
        if magic != _MAGIC or kind != _native.KIND_MEMORY:
            raise InvalidHandleError("no shared memory block in segment %s: wrong or forged handle" % segment)
        if version != _LAYOUT_VERSION:
            raise InvalidHandleError("shared memory block has layout version %d, this build reads %d"
                                     % (version, _LAYOUT_VERSION))
        if hid != id_:
            raise InvalidHandleError("block id %#x differs from the handle's %#x: stale or forged handle"
                                     % (hid, id_))
        if hgen != generation:
            raise DestroyedError("block generation %d differs from the handle's %d: the block was destroyed"
                                 % (hgen, generation))
        if offset != DATA_OFFSET or DATA_OFFSET + size > len(self._mmap):
            raise InvalidHandleError("shared memory block header is corrupt or the handle is forged")
        self.name, self.id, self.size = segment, id_, size
        self._exported = [True]
        return self

    @property
    def handle(self):
        """The handle (bytes) other processes attach by. Taking it keeps the
        block's name until the run ends."""
        self._exported[0] = True
        return _native.memory_handle(self.name, self.id, DATA_OFFSET)

    def create_memoryview(self):
        """A writable view of the data."""
        return memoryview(self._mmap)[DATA_OFFSET:DATA_OFFSET + self.size]

    def __reduce__(self):
        return _attach_block, (self.handle,)

    def __repr__(self):
        return "<SharedBlock %s size=%d>" % (self.name, self.size)


def _attach_block(handle):
    return SharedBlock.attach(handle)


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
