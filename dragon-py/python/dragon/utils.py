"""The helpers of HPE Dragon's ``dragon.utils`` that user programs call:
``B64`` and ``b64encode``/``b64decode`` (URL-safe base64 text of bytes, to
put binary descriptors in text), ``host_id()`` (this node's id, see
:mod:`dragon.native.machine`) and ``hash()`` (the hash the DDict places keys
with)."""
from __future__ import annotations

import base64

__all__ = ["B64", "b64encode", "b64decode", "host_id", "hash"]


def b64encode(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.b64decode(text)


class B64:
    """Bytes carried as base64 text."""

    def __init__(self, data: bytes):
        self._data = bytes(data)

    def __str__(self) -> str:
        return b64encode(self._data)

    def decode(self) -> bytes:
        return self._data

    @classmethod
    def from_str(cls, text: str) -> "B64":
        return cls(b64decode(text))

    @staticmethod
    def bytes_to_str(data: bytes) -> str:
        return b64encode(data)

    @staticmethod
    def str_to_bytes(text: str) -> bytes:
        return b64decode(text)


def host_id() -> int:
    """The id (``h_uid``) of the node this process runs on."""
    from .native.machine import current

    return current().h_uid


def hash(data: bytes | bytearray | memoryview) -> int:  # noqa: A001  (HPE Dragon's name)
    """A stable 64-bit hash of ``data`` (FNV-1a): the same in every process,
    run and machine, whatever ``PYTHONHASHSEED`` says. It is the hash the
    DDict places keys with: ``hash(pickle.dumps(key, protocol=5)) %
    d.managers == d.which_manager(key)``."""
    from . import _native

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("hash() takes bytes, not %s" % type(data).__name__)
    return _native.ddict_key_hash(bytes(data))
