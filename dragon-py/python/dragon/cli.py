"""The ``dragon`` command: run a program with the ``dragon`` start method,
on this machine or across several.

    dragon [options] script.py [args...]    run script.py as __main__
    dragon [options] -m module [args...]    run a module as __main__ (like python -m)
    dragon --version
    dragon ddict-repair <persist_path> <name>   repair a durable DDict's files

Options (before the script):

    --hostlist LIST      run across these hosts (node1,node2 or nid[001-004]);
                         the script runs on the first
    --hostfile FILE      the hosts, one per line ('#' comments)
    --remote-exec TMPL   how to run a command on a host (default
                         "ssh -T -x -o BatchMode=yes -o ConnectTimeout=10 {host}")
    --label              prefix the output of processes on other nodes with their host
    -s, --single-node    run on this machine only (the default without a host list)
    -l, --log-level LEVEL
                         log the runtime's events (process starts, lost workers,
                         nodes joining and lost) at LEVEL (DEBUG, INFO, WARNING,
                         ERROR) on standard error, through the "dragon" logger

The program runs in this interpreter (on the first host), exactly as
``python script.py`` would run it, except that ``multiprocessing``'s default
start method is ``dragon`` (the program may still call ``set_start_method``).

Environment: DRAGON_PEER_TIMEOUT (seconds of silence after which a node is
lost, default 5), DRAGON_JOIN_TIMEOUT (seconds every node has to join,
default 60), DRAGON_LOG_LEVEL (what -l sets), DRAGON_DEBUG=1 (say more:
DRAGON_LOG_LEVEL=DEBUG unless that is set).
"""
from __future__ import annotations

import os
import sys

USAGE = """usage: dragon [--version] [-h] [--hostlist LIST | --hostfile FILE] [--remote-exec TMPL]
              [--label] [-s] [-l LEVEL] (script.py | -m module) [args...]
       dragon ddict-repair <persist_path> <name>

Run a Python program with multiprocessing's start method set to "dragon",
on this machine or (with a host list) across several. `dragon -h` says more.
"""


def _usage_error(msg: str) -> int:
    sys.stderr.write("dragon: %s\n%s" % (msg, USAGE))
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ddict-repair"]:
        from .data.ddict import _repair_main

        return _repair_main(argv[1:])
    if not argv:
        sys.stdout.write(USAGE)
        return 2
    hostlist = hostfile = remote_exec = None
    label = single = False
    while argv and argv[0].startswith("-") and argv[0] != "-m":
        opt = argv.pop(0)
        if opt in ("-h", "--help"):
            sys.stdout.write(USAGE + "\n" + (__doc__ or ""))
            return 0
        if opt == "--version":
            import dragon

            print("dragon", dragon.__version__)
            return 0
        if opt == "--label":
            label = True
            continue
        if opt in ("-s", "--single-node"):
            single = True
            continue
        name, eq, value = opt.partition("=")
        if name in ("-l", "--log-level"):
            if not eq:
                if not argv:
                    return _usage_error("%s needs a level" % name)
                value = argv.pop(0)
            from . import _log

            try:
                _log.parse_level(value)
            except ValueError as e:
                return _usage_error(str(e))
            os.environ[_log.LEVEL_ENV] = value  # for every process of the run
            _log.configure(value)
            continue
        if name in ("--hostlist", "--hostfile", "--remote-exec"):
            if not eq:
                if not argv:
                    return _usage_error("%s needs a value" % name)
                value = argv.pop(0)
            if name == "--hostlist":
                hostlist = value
            elif name == "--hostfile":
                hostfile = value
            else:
                remote_exec = value
            continue
        return _usage_error("unknown option %s" % opt)
    if not argv:
        return _usage_error("no program to run")
    if hostlist is not None and hostfile is not None:
        return _usage_error("give --hostlist or --hostfile, not both")
    module = None
    if argv[0] == "-m":
        if len(argv) < 2:
            return _usage_error("-m needs a module name")
        module, args = argv[1], argv[2:]
    else:
        script, args = argv[0], argv[1:]
        if not os.path.exists(script):
            sys.stderr.write("dragon: can't open file %r: No such file or directory\n" % script)
            return 2

    def run_main() -> int:
        return _run_program(module, None if module else script, args)

    if (hostlist is not None or hostfile is not None) and not single:
        from . import launcher

        try:
            hosts = launcher.read_hosts(hostlist, hostfile)
        except launcher.LaunchError as e:
            sys.stderr.write("dragon: %s\n" % e)
            return 2
        program = ["-m", module] if module else [script]
        return launcher.run_script(hosts, program + list(args), remote_exec=remote_exec, label=label,
                                   run_main=run_main)
    return run_main()


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    sys.stderr.write("%s\n" % (e.code,))
    return 1


def _run_program(module, script, args) -> int:
    from multiprocessing import context

    import dragon  # noqa: F401  registers the start method

    from . import runtime

    # "dragon" becomes the default start method (what get_start_method()
    # answers until the program chooses), so that a program which itself
    # calls set_start_method("dragon"), as HPE Dragon programs do, still works.
    context._default_context._default_context = context._concrete_contexts["dragon"]

    try:
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
    except SystemExit as e:
        return _exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
