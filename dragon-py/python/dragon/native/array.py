"""HPE Dragon's native array (``dragon.native.array.Array``): a ctypes array
in the run's shared memory with a lock (:func:`dragon.sharedctypes.Array`).

``Array(typecode_or_type, size_or_initializer, lock=True)``: indexing,
slices, ``len()``, ``acquire()``/``release()``, ``get_lock()``,
``get_obj()`` and ``with a:``; ``lock=False`` returns the bare shared ctypes
array, as ``multiprocessing`` does; a lock object may be given. Elements
keep their ctypes type (HPE Dragon stores every element in 8 bytes);
``a.get_obj()`` is the shared ctypes array itself (HPE Dragon returns the
element type there). ``m_uid`` is accepted and has no effect.
"""
from __future__ import annotations

from typing import Any, Sequence

from .. import sharedctypes as _shared
from .._block import RemoteBlock
from .value import resolve_type

__all__ = ["Array"]


class Array(_shared.SynchronizedArray):
    """A shared ctypes array with a lock."""

    _obj: Any  # the shared ctypes array

    def __new__(cls, typecode_or_type: str | type[Any], size_or_initializer: int | Sequence[Any],
                lock: Any = True, m_uid: int | None = None) -> Any:
        if lock is False:
            return _shared.RawArray(resolve_type(typecode_or_type), size_or_initializer)
        return super().__new__(cls)

    def __init__(self, typecode_or_type: str | type[Any], size_or_initializer: int | Sequence[Any],
                 lock: Any = True, m_uid: int | None = None) -> None:
        if isinstance(size_or_initializer, bool):
            raise TypeError("size_or_initializer must be a size or a sequence")
        raw = _shared.RawArray(resolve_type(typecode_or_type), size_or_initializer)
        _shared.SynchronizedArray.__init__(self, raw, _shared.lock_for(lock, None))

    def __reduce__(self) -> tuple[Any, ...]:
        spec, lock = super().__reduce__()[1]
        return (_rebuild, (spec, lock))

    @property
    def value(self) -> bytes:
        """The contents of a ``"c"`` (char) array as bytes, up to the first
        zero byte."""
        with self:
            value: bytes = self._obj.value
            return value

    @value.setter
    def value(self, v: bytes) -> None:
        with self:
            self._obj.value = v

    def __repr__(self) -> str:
        return "<dragon.native.array.Array %s[%d]>" % (self._obj._type_.__name__, len(self._obj))


def _rebuild(spec: Any, lock: Any) -> Any:
    # Unpickled on another node than its memory's: every access goes there.
    if isinstance(spec[1], RemoteBlock):
        return _shared.remote_synchronized(spec, lock)
    obj = object.__new__(Array)
    _shared.SynchronizedArray.__init__(obj, _shared.rebuild_ctype(*spec), lock)
    return obj
