"""HPE Dragon's ``dragon.mpbridge.sharedctypes``: the ``dragon`` start
method's shared ctypes objects (:mod:`dragon.sharedctypes`) under HPE
Dragon's names. ``RawValue``/``RawArray`` are ctypes objects in shared
memory; ``Value``/``Array`` wrap them with a lock (``get_lock()``)."""
from __future__ import annotations

from typing import Any

from .. import sharedctypes as _sc

__all__ = ["DragonRawValue", "DragonRawArray", "DragonValue", "DragonArray", "RawValue", "RawArray", "Value",
           "Array", "synchronized", "copy"]


def RawValue(typecode_or_type: Any, *args: Any, use_base_impl: bool = True) -> Any:
    return _sc.RawValue(typecode_or_type, *args)


def RawArray(typecode_or_type: Any, size_or_initializer: Any, use_base_impl: bool = True) -> Any:
    return _sc.RawArray(typecode_or_type, size_or_initializer)


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None,
          use_base_impl: bool = True) -> Any:
    return _sc.Value(typecode_or_type, *args, lock=lock, ctx=ctx)


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None,
          use_base_impl: bool = True) -> Any:
    return _sc.Array(typecode_or_type, size_or_initializer, lock=lock, ctx=ctx)


# HPE Dragon's classes of these objects are the factories' results here
# (ctypes objects in shared memory, and their synchronized wrappers).
DragonRawValue = RawValue
DragonRawArray = RawArray
DragonValue = Value
DragonArray = Array
synchronized = _sc.synchronized
copy = _sc.copy
