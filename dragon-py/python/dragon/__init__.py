"""dragon: Python multiprocessing on shared-memory channels.

``import dragon`` registers the ``dragon`` start method::

    import multiprocessing as mp
    import dragon

    if __name__ == "__main__":
        mp.set_start_method("dragon")
        with mp.Pool(4) as pool:
            print(pool.map(abs, [-1, -2, 3]))

Importing is cheap: the run's template process starts on first use of the
start method (see :mod:`dragon.runtime`).
"""
from . import _executor
from . import _log  # noqa: F401  (the "dragon" logger, at DRAGON_LOG_LEVEL)
from . import _native
from . import _registry
from . import runtime as _runtime
from .context import DragonContext, DragonProcess, register as _register

__version__: str = _native.__version__
__all__ = ["DragonContext", "DragonProcess", "__version__"]

_runtime.run_id()  # created here so that every process started later inherits it
_register()
_registry.note_stdlib_semaphores()
_executor.install()  # ProcessPoolExecutor() on the dragon start method: the run's CPUs
