"""The ``dragon`` start method for :mod:`multiprocessing`.

Importing :mod:`dragon` registers :class:`DragonContext` under the name
``"dragon"`` (so ``multiprocessing.set_start_method("dragon")`` and
``multiprocessing.get_context("dragon")`` work) and rebinds the top-level
factories of :mod:`multiprocessing` (``Queue``, ``Lock``, ``Pool``, ...) to
functions that ask the *current* context, so that programs using the
``fork``/``spawn``/``forkserver`` methods keep their stock objects while
programs using ``dragon`` get this package's. Classes inside the standard
submodules (``multiprocessing.pool.Pool``, ``multiprocessing.dummy``, the
managers) are never replaced.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing import context as _mp_context
from multiprocessing import process as _mp_process

__all__ = ["DragonProcess", "DragonContext", "register", "FACTORIES"]

START_METHOD = "dragon"


class DragonProcess(_mp_process.BaseProcess):
    """A process started by the run's template (a pre-imported fork server)."""

    _start_method = START_METHOD

    @staticmethod
    def _Popen(process_obj):
        from .popen import Popen

        return Popen(process_obj)


class DragonContext(_mp_context.BaseContext):
    """Context object of the ``dragon`` start method.

    Factories not overridden here build the standard classes bound to this
    context (so they use :class:`DragonProcess`); channel-backed queues,
    locks and pools replace them as they land.
    """

    _name = START_METHOD
    Process = DragonProcess

    def _check_available(self):
        # Called by get_context("dragon") and set_start_method("dragon"):
        # start the template now, without waiting for it, so that it imports
        # while the program goes on.
        from . import runtime

        runtime.ensure_template()


# Names of multiprocessing's top-level factories that dispatch on the current
# context once dragon is imported.
FACTORIES = (
    "Queue", "JoinableQueue", "SimpleQueue", "Pipe",
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "Value", "Array", "RawValue", "RawArray",
    "Pool", "Manager", "cpu_count",
)


def _make_dispatcher(name: str):
    default = _mp_context._default_context
    stock = getattr(default, name)  # bound method of the default context

    def dispatch(*args, **kwargs):
        return getattr(default.get_context(), name)(*args, **kwargs)

    dispatch.__name__ = name
    dispatch.__qualname__ = name
    dispatch.__module__ = __name__
    dispatch.__doc__ = stock.__doc__
    # inspect.signature() follows __wrapped__: it shows the stock signature
    # (without ``self``, as the stock bound method does).
    dispatch.__wrapped__ = stock
    dispatch._dragon_dispatch = True
    return dispatch


def register() -> DragonContext:
    """Register the ``dragon`` context and the dispatching factories.

    Idempotent: importing :mod:`dragon` twice (or reloading) changes nothing.
    """
    ctx = _mp_context._concrete_contexts.get(START_METHOD)
    if not isinstance(ctx, DragonContext):
        ctx = DragonContext()
        _mp_context._concrete_contexts[START_METHOD] = ctx
    for name in FACTORIES:
        current = getattr(multiprocessing, name, None)
        if getattr(current, "_dragon_dispatch", False):
            continue
        setattr(multiprocessing, name, _make_dispatcher(name))
    return ctx
