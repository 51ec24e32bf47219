"""``concurrent.futures.ProcessPoolExecutor`` on the ``dragon`` start method.

Two things change, and only for executors whose context is ``dragon``:

* **Size.** Without ``max_workers``, the standard executor starts
  ``os.cpu_count()`` workers: this node's CPUs. On the ``dragon`` start
  method its workers go to every node of the run, so there it starts as
  many as the run has CPUs (``cpu_count()`` of the context: every node's,
  or a Slurm allocation's), as ``Pool()`` does. On one node that is the
  same number.
* **A worker that reports before it is recorded.** ``_spawn_process``
  records a worker (``_processes[p.pid] = p``) after ``p.start()``
  returns, and the manager thread takes an ending worker out of that table
  by the pid the worker reports. A start through the template or another
  node's service returns once it has heard back, and on a loaded machine
  a ``max_tasks_per_child`` worker can run its task and report its end
  before that (a ``KeyError`` in the manager thread, which then dies and
  leaves every future unresolved). The executor's table is a
  :class:`WorkerTable`, whose ``pop`` of a worker not recorded yet waits
  for the record.

The executor's module is patched when it is imported (or at once, if it
already is), by a finder that steps aside for every other module.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import threading

_MODULE = "concurrent.futures.process"


#: How long ``WorkerTable.pop`` waits for a worker to be recorded (seconds):
#: the recording follows its start's return; past this, the ``KeyError`` of
#: the standard table.
_RECORD_WAIT = 120.0


class WorkerTable(dict):
    """An executor's worker table (``ProcessPoolExecutor._processes``):
    a ``dict`` whose ``pop`` of a key not in it yet waits, up to
    ``_RECORD_WAIT`` seconds, for the key to be set (see the module docs)."""

    __slots__ = ("_changed",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._changed = threading.Condition(threading.Lock())

    def __setitem__(self, key, value):
        with self._changed:
            super().__setitem__(key, value)
            self._changed.notify_all()

    def pop(self, key, *default):
        if key not in self and not default:
            with self._changed:
                self._changed.wait_for(lambda: key in self, _RECORD_WAIT)
        return super().pop(key, *default)

    def __reduce__(self):
        return dict, (dict(self),)


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
        # No worker started yet, no manager thread: nothing else holds the table.
        if getattr(getattr(self, "_mp_context", None), "_name", None) == "dragon" and type(self._processes) is dict:
            self._processes = WorkerTable(self._processes)

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
