"""HPE Dragon's ``dragon.mpbridge``: its ``multiprocessing`` objects, by the
names HPE Dragon's programs import, mapped to this package's.

HPE Dragon builds the ``multiprocessing`` API of its start method in
``dragon.mpbridge``; programs sometimes import from there directly
(``from dragon.mpbridge.queues import DragonQueue``), or check types
against those classes. Here each name is the class (or factory) of this
package that the ``dragon`` start method gives for the same call, so such
imports, constructors and ``isinstance`` checks work:

=============================  =============================================
HPE Dragon                     here
=============================  =============================================
``mpbridge.queues``            :class:`dragon.queues.Queue`, ``JoinableQueue``,
                               ``SimpleQueue`` (``DragonQueue``, ...)
``mpbridge.synchronize``       :mod:`dragon.synchronize`'s ``Lock``, ``RLock``,
                               ``Semaphore``, ``BoundedSemaphore``,
                               ``Condition``, ``Event``, ``Barrier``
``mpbridge.sharedctypes``      :mod:`dragon.sharedctypes`'s ``RawValue``,
                               ``RawArray``, ``Value``, ``Array``
``mpbridge.context``           :class:`dragon.context.DragonContext`
``mpbridge.process``           :class:`dragon.context.DragonProcess`
``mpbridge.pool``              :class:`dragon.pool.Pool` (``DragonPool``)
=============================  =============================================

The factories accept HPE Dragon's keyword ``use_base_impl`` (it chose
between two implementations there; here there is one, so it changes
nothing) and ``ctx``.
"""
from ..context import DragonContext, DragonProcess

__all__ = ["DragonContext", "DragonProcess", "context", "pool", "process", "queues", "sharedctypes",
           "synchronize"]


def __getattr__(name: str):  # the submodules, imported when first named
    if name in ("context", "pool", "process", "queues", "sharedctypes", "synchronize"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
