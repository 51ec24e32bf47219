"""Make the ``"dragon"`` start method known to every interpreter of this environment.

Installed with the ``dragon`` package together with ``dragon_hook.pth``,
which imports this module at interpreter start-up. It costs next to nothing:
it only waits for ``multiprocessing`` to be imported and then imports
``dragon``, which registers the start method. So
``multiprocessing.set_start_method("dragon")`` works without an explicit
``import dragon``, and so does a ``spawn`` child of a program whose default
start method is ``dragon`` (the child sets its parent's default method before
anything else runs). Set ``DRAGON_NO_AUTOREGISTER=1`` to turn it off.
"""
import os
import sys


class _RegisterAfterMultiprocessing:
    """Meta-path finder that runs ``import dragon`` right after ``multiprocessing`` loads."""

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
                import dragon  # noqa: F401  (registers the start method)
            except Exception:
                pass  # a broken install must not break multiprocessing itself

        spec.loader.exec_module = exec_module
        return spec


def install():
    if os.environ.get("DRAGON_NO_AUTOREGISTER") or "multiprocessing" in sys.modules:
        return
    sys.meta_path.insert(0, _RegisterAfterMultiprocessing())


install()
