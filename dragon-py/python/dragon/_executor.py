"""``concurrent.futures.ProcessPoolExecutor`` sized for the run.

Without ``max_workers``, the standard executor starts ``os.cpu_count()``
workers: this node's CPUs. On the ``dragon`` start method its workers go
to every node of the run, so there it starts as many as the run has CPUs
(``cpu_count()`` of the context: every node's, or a Slurm allocation's),
as ``Pool()`` does. On one node that is the same number. Nothing else of
the executor changes.

The executor's module is patched when it is imported (or at once, if it
already is), by a finder that steps aside for every other module.
"""
from __future__ import annotations

import functools
import importlib.util
import sys

_MODULE = "concurrent.futures.process"


def _sized(init):
    @functools.wraps(init)
    def __init__(self, max_workers=None, mp_context=None, *args, **kwargs):
        if max_workers is None:
            ctx = mp_context
            if ctx is None and kwargs.get("max_tasks_per_child") is None:
                # The executor's own choice without a context (with
                # max_tasks_per_child it takes "spawn").
                import multiprocessing

                ctx = multiprocessing.get_context()
            if getattr(ctx, "_name", None) == "dragon":
                max_workers = ctx.cpu_count()
        init(self, max_workers, mp_context, *args, **kwargs)

    __init__._dragon_sized = True
    return __init__


def _patch(module) -> None:
    cls = getattr(module, "ProcessPoolExecutor", None)
    if cls is not None and not getattr(cls.__init__, "_dragon_sized", False):
        cls.__init__ = _sized(cls.__init__)


class _Finder:
    """Patches the executor's module right after it is executed (a meta
    path finder: ``find_spec`` is all the import system asks of one; not
    derived from ``importlib.abc.MetaPathFinder``, whose module costs every
    ``import dragon`` about 18 ms)."""

    def find_spec(self, name, path=None, target=None):
        if name != _MODULE:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Size executors on the dragon start method for the run (once)."""
    module = sys.modules.get(_MODULE)
    if module is not None:
        _patch(module)
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
