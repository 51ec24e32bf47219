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
What ctypes gives as an object on the memory (an array or Structure field,
an item of an array of Structures) is there a view of the same interface,
so ``v.arr[1] = 7`` or ``a[0].x = 9`` reaches the block as on its node;
plain fields and items read as Python values, as in ctypes.
``get_obj()`` has no memory to return there and raises
:class:`~dragon.errors.NotLocalError`, as do ``RawValue`` and ``RawArray``
(plain memory, no lock): off their node they would silently diverge.
"""
from __future__ import annotations

import ctypes
import operator
import weakref
from typing import Any

from multiprocessing import sharedctypes as _std
from multiprocessing.reduction import ForkingPickler

from . import _remote
from ._block import RemoteBlock, SharedBlock
from .errors import NotLocalError

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

def _views(type_, field=False):
    """Whether ctypes gives a member of ``type_`` (a Structure's or Union's
    field with ``field``, else an array's item) as an object on its
    container's memory, which another node then gets as a view: an array
    (but a ``c_char``/``c_wchar`` array field, which reads as bytes or
    str), a Structure or Union, a subclass of a simple type (which keeps its
    type). Anything else reads as a Python value."""
    if issubclass(type_, (ctypes._Pointer, ctypes._CFuncPtr)):
        raise NotLocalError("a %s field or item holds an address in the memory of a process of its block's node: "
                            "it cannot be used from another node" % type_.__name__)
    if issubclass(type_, ctypes.Array):
        return not (field and type_._type_ in (ctypes.c_char, ctypes.c_wchar))
    if issubclass(type_, (ctypes.Structure, ctypes.Union)):
        return True
    return ctypes._SimpleCData not in type_.__bases__


def _local(value):
    """``value``, or a copy of it if it is a view (to assign it)."""
    if isinstance(value, _RemoteView):
        with value._lock:
            return value._load()
    return value


class _RemoteView:
    """A ctypes object of type ``ctype`` at ``offset`` in ``block``, a block
    of another node, with that object's interface: each access takes
    ``lock`` and reads or writes, whole, the bytes it touches. A member that
    ctypes gives as an object on the memory (see :func:`_views`) is a view
    in its turn, so writes into it reach the block."""

    def __init__(self, block, offset, ctype, lock):
        self._block, self._offset, self._ctype, self._lock = block, offset, ctype, lock

    # The caller holds the lock.
    def _read(self, rel, size):
        return self._block.read(self._offset + rel, size)

    def _write(self, rel, data):
        self._block.write(self._offset + rel, data)

    def _load(self):
        """A copy of the object."""
        return self._ctype.from_buffer_copy(self._read(0, ctypes.sizeof(self._ctype)))

    def _part(self, rel, size):
        """A copy of the object holding only its ``size`` bytes at ``rel``
        (zeros elsewhere)."""
        obj = self._ctype()
        ctypes.memmove(ctypes.addressof(obj) + rel, self._read(rel, size), size)
        return obj

    def __reduce__(self):  # as a ctypes object's: a copy
        with self._lock:
            return self._load().__reduce__()

    def __repr__(self):
        return "<%s of %s at offset %d on node %d>" % (
            type(self).__name__, self._ctype.__name__, self._offset, self._block.node)


def _view(block, offset, type_, lock):
    """The view of the ``type_`` object at ``offset`` in ``block``."""
    if issubclass(type_, ctypes.Array):
        cls = _RemoteString if type_._type_ is ctypes.c_char else _RemoteArray
    elif issubclass(type_, ctypes._SimpleCData):
        cls = _RemoteValue
    else:
        cls = _struct_class(type_)
    return cls(block, offset, type_, lock)


class _RemoteValue(_RemoteView):
    """A simple value: ``value`` reads or writes it."""

    @property
    def value(self):
        with self._lock:
            return self._load().value

    @value.setter
    def value(self, value):
        obj = self._ctype()
        obj.value = value
        with self._lock:
            self._write(0, bytes(obj))


class _RemoteArray(_RemoteView):
    """An array: an index reads or writes one item, a slice the items it
    covers."""

    def __len__(self):
        return self._ctype._length_

    def _item(self, i):
        """The item type and the offset of item ``i``."""
        n, i = self._ctype._length_, operator.index(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("invalid index")
        item = self._ctype._type_
        return item, i * ctypes.sizeof(item)

    def _span(self, i):
        """For slice ``i``: the array type of the items from its lowest to
        its highest index, the offset of the lowest, and ``i`` relative to
        them (``None`` if the slice is empty)."""
        r = range(*i.indices(len(self)))
        if not r:
            return None
        lo, hi = min(r[0], r[-1]), max(r[0], r[-1])
        item = self._ctype._type_
        stop = r[-1] - lo + (1 if r.step > 0 else -1)
        return item * (hi - lo + 1), lo * ctypes.sizeof(item), slice(r[0] - lo, stop if stop >= 0 else None, r.step)

    def __getitem__(self, i):
        if isinstance(i, slice):
            if _views(self._ctype._type_):
                return [self[j] for j in range(*i.indices(len(self)))]
            span = self._span(i)
            if span is None:
                return self._ctype()[i]  # empty, of the type ctypes gives
            part_type, rel, sub = span
            with self._lock:
                return part_type.from_buffer_copy(self._read(rel, ctypes.sizeof(part_type)))[sub]
        item, rel = self._item(i)
        if _views(item):
            return _view(self._block, self._offset + rel, item, self._lock)
        with self._lock:
            return (item * 1).from_buffer_copy(self._read(rel, ctypes.sizeof(item)))[0]

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            if not isinstance(value, (bytes, str)):
                value = [_local(v) for v in value]
            span = self._span(i)
            if span is None:
                self._ctype()[i] = value  # ctypes' checks of an empty slice
                return
            part_type, rel, sub = span
            with self._lock:
                part = part_type.from_buffer_copy(self._read(rel, ctypes.sizeof(part_type)))
                part[sub] = value
                self._write(rel, bytes(part))
            return
        item, rel = self._item(i)
        one = (item * 1)()
        one[0] = _local(value)
        with self._lock:
            self._write(rel, bytes(one))

    def __iter__(self):
        return iter(self[:])


def _whole(name):
    """A property reading and writing attribute ``name`` of the whole
    object: a write reads it, sets the attribute and writes it back."""
    def get(self):
        with self._lock:
            return getattr(self._load(), name)

    def set(self, value):
        with self._lock:
            obj = self._load()
            setattr(obj, name, value)
            self._write(0, bytes(obj))

    return property(get, set)


class _RemoteString(_RemoteArray):
    """A ``c_char`` array, with ``value`` and ``raw``."""

    value = _whole("value")
    raw = _whole("raw")


def _field(type_, name, ftype, bits):
    """The property of field ``name`` (of type ``ftype``, a bit field with
    ``bits``) of a view of Structure or Union ``type_``: a view of it, or a
    Python value read or written, under the lock, from the field's bytes
    (a bit field's from the whole object's, which it shares)."""
    offset, size = getattr(type_, name).offset, ctypes.sizeof(ftype)
    if bits:
        offset, size = 0, ctypes.sizeof(type_)

    def get(self):
        if _views(ftype, field=True):
            return _view(self._block, self._offset + offset, ftype, self._lock)
        with self._lock:
            return getattr(self._part(offset, size), name)

    def set(self, value):
        value, obj = _local(value), self._ctype()
        with self._lock:
            if bits:
                obj = self._part(offset, size)
            setattr(obj, name, value)
            self._write(offset, bytes(obj)[offset:offset + size])

    return property(get, set)


_view_classes = weakref.WeakKeyDictionary()


def _struct_class(type_):
    """The view class of Structure or Union ``type_``: a property per field."""
    try:
        return _view_classes[type_]
    except KeyError:
        fields = {f[0]: _field(type_, f[0], f[1], len(f) > 2) for f in type_._fields_}
        cls = _view_classes[type_] = type("Remote%sView" % type_.__name__, (_RemoteView,), fields)
        return cls


class _RemoteSynchronizedBase(_RemoteView):
    """The synchronized wrapper's interface over a block of another node
    (with a view's of its object, see the subclasses)."""

    def __init__(self, spec, lock):
        type_, block, length = spec
        _RemoteView.__init__(self, block, 0, type_ * length if length is not None else type_, lock)
        self._spec = spec
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

    def __repr__(self):
        return "<%s wrapper for %s on node %d>" % (type(self).__name__, self._ctype.__name__, self._block.node)


class RemoteSynchronized(_RemoteSynchronizedBase, _RemoteValue):
    """A ``Value`` of another node."""


class RemoteSynchronizedArray(_RemoteSynchronizedBase, _RemoteArray):
    """An ``Array`` of another node."""


class RemoteSynchronizedString(_RemoteSynchronizedBase, _RemoteString):
    """A ``c_char`` ``Array`` of another node."""


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
            cls = _remote_class_cache[type_] = type(
                "RemoteSynchronized" + type_.__name__, (_RemoteSynchronizedBase, _struct_class(type_)), {})
    return cls(spec, lock)
