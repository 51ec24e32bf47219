"""HPE Dragon's native value (``dragon.native.value.Value``): a ctypes
value in the run's shared memory with a lock
(:func:`dragon.sharedctypes.Value`).

``Value(typecode_or_type, value=0)``; ``v.value`` reads and writes it,
``get_lock()``/``get_obj()`` and ``with v:`` as in ``multiprocessing``.
Typecodes are those of :mod:`array` (``"i"``, ``"d"``, ``"c"``, ...) or a
ctypes type (any ctypes type works here, HPE Dragon takes 14). ``m_uid`` is
accepted and has no effect.
"""
from __future__ import annotations

import ctypes
from typing import Any

from .. import sharedctypes as _shared
from .._block import RemoteBlock

__all__ = ["Value"]


def resolve_type(typecode_or_type: str | type[Any]) -> type[Any]:
    """The ctypes type of a native ``Value``'s or ``Array``'s
    ``typecode_or_type`` (``AttributeError`` for anything else, as HPE
    Dragon raises)."""
    if isinstance(typecode_or_type, str):
        try:
            return _shared.typecode_to_type[typecode_or_type]
        except KeyError:
            raise AttributeError("typecode %r not found, has to be one of %s"
                                 % (typecode_or_type, sorted(_shared.typecode_to_type))) from None
    if isinstance(typecode_or_type, type) and issubclass(typecode_or_type, ctypes._SimpleCData):
        return typecode_or_type
    if isinstance(typecode_or_type, type) and issubclass(typecode_or_type, (ctypes.Structure, ctypes.Union)):
        return typecode_or_type
    raise AttributeError("type %r is neither a typecode nor a ctypes type" % (typecode_or_type,))


class Value(_shared.Synchronized):
    """A shared ctypes value with a lock."""

    _obj: Any  # the shared ctypes object

    def __init__(self, typecode_or_type: str | type[Any], value: Any = 0, m_uid: int | None = None, *,
                 lock: Any = True) -> None:
        type_ = resolve_type(typecode_or_type)
        if issubclass(type_, (ctypes.Structure, ctypes.Union)):
            raw = _shared.RawValue(type_) if value == 0 else _shared.RawValue(type_, *value)
        else:
            raw = _shared.RawValue(type_, value)
        _shared.Synchronized.__init__(self, raw, _shared.lock_for(lock, None))

    def __reduce__(self) -> tuple[Any, ...]:
        spec, lock = super().__reduce__()[1]
        return (_rebuild, (spec, lock))

    def __repr__(self) -> str:
        return "<dragon.native.value.Value %s(%r)>" % (type(self._obj).__name__, self._obj.value)


def _rebuild(spec: Any, lock: Any) -> Any:
    # Unpickled on another node than its memory's: every access goes there.
    if isinstance(spec[1], RemoteBlock):
        return _shared.remote_synchronized(spec, lock)
    obj = Value.__new__(Value)
    _shared.Synchronized.__init__(obj, _shared.rebuild_ctype(*spec), lock)
    return obj
