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
* :class:`WorkerLostError`: a pool worker process died (killed, or exited)
  while it ran a task, or while taking it from the pool's queue; the task's
  result is this error (see :mod:`dragon.pool`).
* :class:`NodeLostError` (a :class:`WorkerLostError`, also a
  ``ConnectionError``): the node a pool had sent a task to was lost before
  the task's result came back; the message names the node.
* :class:`InitializerError`: a pool worker's initializer raised; the task
  that worker took fails with this error (its cause is the initializer's
  traceback) and the worker is replaced.
* :class:`BrokenPoolError`: a pool's workers die before they can run
  anything (say their arguments cannot be unpickled in the child), several
  in a row; every task of that pool fails with this error instead of
  waiting forever.
"""

__all__ = [
    "DragonError",
    "InvalidHandleError",
    "DestroyedError",
    "NotLocalError",
    "SharedMemoryError",
    "MessageTooLargeError",
    "WorkerLostError",
    "NodeLostError",
    "InitializerError",
    "BrokenPoolError",
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


class WorkerLostError(DragonError):
    """A pool worker died while running (or taking) a task; the task's
    result. The task is not run again."""


class NodeLostError(WorkerLostError, ConnectionError):
    """The node a pool task was sent to was lost (its link cut, its service
    gone) before the task's result came back; the task's result. The
    message names the node; the task is not run again."""


class InitializerError(DragonError):
    """A pool worker's initializer raised: the task the worker took was not
    run. The worker is replaced; its successor runs the initializer again."""


class BrokenPoolError(DragonError):
    """A pool's worker processes die before they start, several in a row:
    the pool fails its tasks with this error instead of restarting workers
    forever (the workers' stderr says why they died)."""
