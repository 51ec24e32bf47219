"""Exceptions raised by dragon's shared objects.

Where the standard library has a type for a failure, dragon raises that
type (``queue.Empty``, ``queue.Full``, ``EOFError``, ``ValueError`` for a
closed queue, ``threading.BrokenBarrierError``, ...). Failures that have no
standard counterpart derive from :class:`DragonError`:

* :class:`InvalidHandleError` (also a ``ValueError``): the bytes given as a
  handle are not one (garbage, truncated, damaged or forged), or name an
  object of another kind.
* :class:`DestroyedError`: the object the handle names no longer exists (it
  was destroyed, or the run that made it has ended).
* :class:`NotLocalError`: the handle names an object on another node.
* :class:`SharedMemoryError` (also an ``OSError``): shared memory could not
  be created or mapped (``/dev/shm`` full, say).
* :class:`MessageTooLargeError` (also a ``ValueError``): a message is larger
  than a channel can carry; nothing was sent.
"""

__all__ = [
    "DragonError",
    "InvalidHandleError",
    "DestroyedError",
    "NotLocalError",
    "SharedMemoryError",
    "MessageTooLargeError",
]


class DragonError(Exception):
    """Base class of dragon's own exceptions."""


class InvalidHandleError(DragonError, ValueError):
    """Not a valid handle for this kind of object."""


class DestroyedError(DragonError):
    """The object a handle names was destroyed (or its run has ended)."""


class NotLocalError(DragonError):
    """The handle names an object that lives on another node."""


class SharedMemoryError(DragonError, OSError):
    """Shared memory could not be created or mapped."""


class MessageTooLargeError(DragonError, ValueError):
    """A message is larger than a channel can carry; nothing was sent."""
