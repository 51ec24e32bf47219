"""The ``dragon`` command: run a program with the ``dragon`` start method.

    dragon script.py [args...]      run script.py as __main__
    dragon -m module [args...]      run a module as __main__ (like python -m)
    dragon --version
    dragon ddict-repair <persist_path> <name>   repair a durable DDict's files

The program runs in this interpreter, exactly as ``python script.py`` would
run it, except that ``multiprocessing``'s default start method is
``dragon`` (the program may still call ``set_start_method``). (Multi-node
options come later.)
"""
from __future__ import annotations

import os
import sys

USAGE = """usage: dragon [--version] [-h] (script.py | -m module) [args...]
       dragon ddict-repair <persist_path> <name>

Run a Python program with multiprocessing's start method set to "dragon".
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ddict-repair"]:
        from .data.ddict import _repair_main

        return _repair_main(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        import dragon

        print("dragon", dragon.__version__)
        return 0
    module = None
    if argv[0] == "-m":
        if len(argv) < 2:
            sys.stderr.write("dragon: -m needs a module name\n" + USAGE)
            return 2
        module, args = argv[1], argv[2:]
    elif argv[0].startswith("-"):
        sys.stderr.write("dragon: unknown option %s\n%s" % (argv[0], USAGE))
        return 2
    else:
        script, args = argv[0], argv[1:]
        if not os.path.exists(script):
            sys.stderr.write("dragon: can't open file %r: No such file or directory\n" % script)
            return 2

    from multiprocessing import context

    import dragon  # noqa: F401  registers the start method

    from . import runtime

    # "dragon" becomes the default start method (what get_start_method()
    # answers until the program chooses), so that a program which itself
    # calls set_start_method("dragon"), as HPE Dragon programs do, still works.
    context._default_context._default_context = context._concrete_contexts["dragon"]

    if module is not None:
        import runpy

        sys.argv = [module, *args]
        sys.path[0] = os.getcwd()
        # The template starts on first use, once the module is __main__.
        runpy._run_module_as_main(module, alter_argv=False)
        return 0

    import io
    import types

    path = os.path.abspath(script)
    with io.open_code(path) as f:
        source = f.read()
    code = compile(source, script, "exec", dont_inherit=True)
    main_module = types.ModuleType("__main__")
    main_module.__file__ = script
    main_module.__cached__ = None
    main_module.__builtins__ = __builtins__
    sys.modules["__main__"] = main_module
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(path)
    # As `python script.py` would, with the template already importing the
    # script (as __mp_main__) while the script starts.
    runtime.ensure_template()
    exec(code, main_module.__dict__)
    return 0

if __name__ == "__main__":
    sys.exit(main())
