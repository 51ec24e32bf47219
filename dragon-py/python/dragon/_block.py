"""Blocks of shared memory of the run, attachable by handle.

:class:`SharedBlock` is what ``Value``/``Array`` (:mod:`dragon.sharedctypes`)
and the Pool's ledger live in. It lives apart from :mod:`dragon.sharedctypes`
so that importing it does not import :mod:`ctypes` (every Pool process
imports it).

Each block is a segment of its own::

    offset 0   magic "DRGM" · u16 layout version · u8 kind (Memory) · pad
               u64 id · u64 generation · u64 data size        (64 bytes)
    offset 64  the data

Its handle (``shm-primitives``' handle format, kind ``Memory``) names the
segment, id and generation; attaching checks them against the header, so a
forged or stale handle is a clear error. The segment's name lives as long
as the block that created it unless the block was pickled, then until the
run ends.

A block's handle that reaches a process of another node (in a multi-node
run) unpickles as a :class:`RemoteBlock`: its bytes are read and written
through the block's node's service, a range at a time; it has no memory of
its own to view.
"""
from __future__ import annotations

import mmap
import os
import struct
import weakref

from . import _native
from ._lifetime import object_created
from .errors import DestroyedError, InvalidHandleError, NotLocalError

__all__ = ["SharedBlock", "RemoteBlock", "DATA_OFFSET"]

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


class RemoteBlock:
    """A block of another node: ``read``/``write`` through its node's
    service. ``create_memoryview`` raises :class:`NotLocalError`: memory of
    another machine cannot be viewed."""

    __slots__ = ("_remote", "handle")

    def __init__(self, remote, handle):
        self._remote, self.handle = remote, handle

    @property
    def name(self):
        return self._remote.name

    @property
    def node(self):
        return self._remote.node

    @property
    def size(self):
        return self._remote.size

    def read(self, offset, n):
        return self._remote.read(offset, n)

    def write(self, offset, data):
        self._remote.write(offset, bytes(data))

    def create_memoryview(self):
        raise NotLocalError(
            "shared memory block %s lives on node %d: its memory cannot be mapped on this node (a RawValue or "
            "RawArray, which promises plain memory, works only on its own node; a Value or Array made with a "
            "lock works from any node)" % (self.name, self.node))

    def __reduce__(self):
        return _attach_block, (self.handle,)

    def __repr__(self):
        return "<RemoteBlock %s on node %d>" % (self.name, self.node)


def _attach_block(handle):
    remote = _native.remote_memory(handle)
    if remote is not None:
        return RemoteBlock(remote, handle)
    return SharedBlock.attach(handle)
