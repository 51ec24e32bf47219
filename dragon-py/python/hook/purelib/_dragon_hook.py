"""Make the ``"dragon"`` start method known to every interpreter of this environment.

Installed with the ``dragon`` package together with ``dragon_hook.pth``,
which imports this module at interpreter start-up. It waits for
``multiprocessing`` to be imported and then, without importing ``dragon``
(which costs about 10 ms), registers a stand-in context under the name
``"dragon"`` and rebinds the top-level factories of ``multiprocessing``
(``Queue``, ``Lock``, ``Pool``, ...) to functions that ask the current
context. The stand-in imports ``dragon`` the first time it is used, and
``dragon`` then makes it its real context. So
``multiprocessing.set_start_method("dragon")`` works without an explicit
``import dragon``, and so does a ``spawn`` child of a program whose default
start method is ``dragon``, while a program that never asks for ``dragon``
(or the resource tracker every ``spawn`` program starts) does not pay for
it. Set ``DRAGON_NO_AUTOREGISTER=1`` to turn it off.

This module is the one home of the stand-in context and the dispatchers:
:mod:`dragon.context` imports it (so a program that imports ``dragon``
directly gets the same dispatchers), and it imports nothing of ``dragon``
itself; only the stand-in's first use imports ``dragon``, which is what the
stand-in is for.
"""
import os
import sys

START_METHOD = "dragon"

# Names of multiprocessing's top-level factories that dispatch on the current
# context.
FACTORIES = (
    "Queue", "JoinableQueue", "SimpleQueue", "Pipe",
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "Value", "Array", "RawValue", "RawArray",
    "Pool", "Manager", "cpu_count",
)


def make_dispatcher(name):
    """A stand-in for ``multiprocessing.<name>`` that calls ``<name>`` of the
    current context (the stock one binds the default context once)."""
    from multiprocessing import context

    default = context._default_context
    stock = getattr(default, name)  # bound method of the default context

    def dispatch(*args, **kwargs):
        return getattr(default.get_context(), name)(*args, **kwargs)

    dispatch.__name__ = name
    dispatch.__qualname__ = name
    dispatch.__module__ = "multiprocessing"
    dispatch.__doc__ = stock.__doc__
    # inspect.signature() follows __wrapped__: it shows the stock signature
    # (without ``self``, as the stock bound method does).
    dispatch.__wrapped__ = stock
    dispatch._dragon_dispatch = True
    return dispatch


def install_dispatchers(multiprocessing):
    """Rebind the factories of ``multiprocessing`` (idempotent)."""
    for name in FACTORIES:
        current = getattr(multiprocessing, name, None)
        if current is None or getattr(current, "_dragon_dispatch", False):
            continue
        setattr(multiprocessing, name, make_dispatcher(name))


class LazyContext:
    """Registered as the ``dragon`` context until ``dragon`` is imported:
    the first use imports it, and ``dragon`` turns this very object into its
    context (it changes the object's class), so whoever kept a reference to
    it (``set_start_method`` does) holds the real context from then on."""

    _name = START_METHOD

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        import dragon  # noqa: F401  (turns this object into the real context)

        if isinstance(self, LazyContext):
            raise RuntimeError("importing dragon did not register its start method")
        return getattr(self, name)

    def __repr__(self):
        return "<dragon start method, not yet imported>"


def _register(multiprocessing):
    from multiprocessing import context

    context._concrete_contexts.setdefault(START_METHOD, LazyContext())
    install_dispatchers(multiprocessing)


class _RegisterAfterMultiprocessing:
    """Meta-path finder that registers the start method right after ``multiprocessing`` loads."""

    busy = False

    def find_spec(self, name, path=None, target=None):
        if name != "multiprocessing" or self.busy:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        # Ask the finders after this one (importlib.util would cost a few
        # milliseconds of imports in every interpreter).
        spec = None
        self.busy = True
        try:
            for finder in list(sys.meta_path):
                find = getattr(finder, "find_spec", None)
                if find is not None:
                    spec = find(name, path, target)
                    if spec is not None:
                        break
        finally:
            self.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            try:
                _register(module)
            except Exception:
                pass  # a broken install must not break multiprocessing itself

        spec.loader.exec_module = exec_module
        return spec


def install():
    if os.environ.get("DRAGON_NO_AUTOREGISTER") or "multiprocessing" in sys.modules:
        return
    sys.meta_path.insert(0, _RegisterAfterMultiprocessing())


install()
