"""The ``dragon`` command: run a program with the ``dragon`` start method,
on this machine or across several.

    dragon [options] script.py [args...]    run script.py as __main__
    dragon [options] -m module [args...]    run a module as __main__ (like python -m)
    python -m dragon [options] ...          the same
    dragon --version
    dragon top [RUN_ID] [-n SECONDS] [--once]   a live view of a run on this node
    dragon ddict-repair <persist_path> <name>   repair a durable DDict's files

Options (before the script):

    --hostlist LIST      run across these hosts (node1,node2 or nid[001-004]);
                         the script runs on the first
    --hostfile FILE      the hosts, one per line ('#' comments)
    -N, --nodes N        run on the first N hosts of the host list, or of the Slurm
                         allocation (without either, N must be 1: this machine)
    --remote-exec TMPL   how to run a command on a host (default
                         "ssh -T -x -o BatchMode=yes -o ConnectTimeout=10 {host}")
    --label              prefix the output of processes on other nodes with their
                         host (HPE Dragon's --basic-label and --verbose-label do the
                         same; --no-label is the default)
    -s, --single-node    run on this machine only (the default without a host list
                         outside a Slurm allocation; HPE Dragon's
                         --single-node-override too)
    --metrics [HOST:]PORT
                         serve the run's figures (those of dragon top) at
                         http://HOST:PORT/metrics in Prometheus' text format, from
                         the program's process (HOST: 127.0.0.1 unless given)
    -l, --log-level LEVEL
                         log the runtime's events (process starts, lost workers,
                         nodes joining and lost) at LEVEL (DEBUG, INFO, WARNING,
                         ERROR, CRITICAL, or NONE) on standard error, through the
                         "dragon" logger; HPE Dragon's stderr=LEVEL means the same

Inside a Slurm allocation (salloc, sbatch) the run goes on every node of the
job unless -s: the node services start with srun, and each node's CPUs are
the job's there (what cpu_count() and Pool() use). See docs/multinode.md.

HPE Dragon's --wlm, --transport, -p/--port, --network-prefix,
--network-config and --multi-node-override have no meaning here: each is
refused with a message that says what to use instead.

The program runs in this interpreter (on the first host), exactly as
``python script.py`` would run it, except that ``multiprocessing``'s default
start method is ``dragon`` (the program may still call ``set_start_method``).

Environment (read by the runtime in every process of a run):

    DRAGON_LOG_LEVEL        the "dragon" logger's level (what -l sets); unset:
                            silent unless the program configures logging
    DRAGON_DEBUG=1          DRAGON_LOG_LEVEL=DEBUG unless that is set
    DRAGON_PEER_TIMEOUT     seconds of silence after which a node is lost
                            (default 5)
    DRAGON_JOIN_TIMEOUT     seconds every node has to join the run (default 60)
    DRAGON_ZERO_COPY=0      large bytes received are copies, not views of
                            shared memory
    DRAGON_NO_AUTOREGISTER=1  multiprocessing does not learn the "dragon"
                            start method until the program imports dragon
    DRAGON_TRANSPORT_PATH   folders (colon-separated) searched first for the
                            off-node transport plugin, libdragon_transport_tcp.so
    DRAGON_TRANSPORT_CONFIG the transport plugins' configuration file (plugin
                            guide; default ~/.config/dragon/transports.conf)
    DRAGON_FABRIC           between nodes: auto (RDMA where both nodes have an
                            active port on a common network, else TCP; the
                            default), tcp, or verbs (RDMA, else an error)
    DRAGON_DIRECT=0         processes reach other nodes only through their own
                            node's service (default: a connection of their own
                            to the other node's service, made on first use)
    DRAGON_DIRECT_MAX       most such connections a node's service takes (default
                            half its file descriptors); past it, relayed
    DRAGON_REPLY_SPIN_US    microseconds a process waiting for a node service's
                            reply polls for it before sleeping (default 60; 0:
                            sleep at once)

Set by the runtime for the processes of a run (not to be set by hand):
DRAGON_RUN_ID (the run), DRAGON_TEMPLATE (its template process on this
node), DRAGON_SERVICE, DRAGON_NODES and DRAGON_NODE_INDEX (this node's
service, the run's nodes, this node's place among them), DRAGON_RUN_SECRET
(of the off-node agent).
"""
from __future__ import annotations

import os
import sys

USAGE = """usage: dragon [--version] [-h] [--hostlist LIST | --hostfile FILE] [-N N] [--remote-exec TMPL]
              [--label] [-s] [-l LEVEL] [--metrics [HOST:]PORT] (script.py | -m module) [args...]
       dragon top [RUN_ID] [-n SECONDS] [--once]
       dragon ddict-repair <persist_path> <name>

Run a Python program with multiprocessing's start method set to "dragon",
on this machine or (with a host list) across several. `dragon -h` says more.
"""


#: HPE Dragon's options that have no meaning here, and what to do instead.
_HPE_ONLY = {
    "--wlm": "hosts come from --hostlist or --hostfile, or from the Slurm allocation dragon runs in",
    "--transport": ("off-node traffic goes through the run's node services: over RDMA where "
                    "both nodes have it, else over TCP (DRAGON_FABRIC=tcp or verbs forces either)"),
    "-p": "the node services pick free ports themselves",
    "--port": "the node services pick free ports themselves",
    "--network-prefix": "nodes are reached by the names or addresses of the host list",
    "--network-config": "nodes are reached by the names or addresses of the host list",
    "--multi-node-override": "a run spans several nodes when given a host list (--hostlist, --hostfile)",
}
# HPE Dragon's labels of output lines; here there is one kind.
_LABELS = ("--label", "--basic-label", "--verbose-label")


def _log_level(value: str) -> str:
    """The level of ``-l VALUE``: a level name or number, ``NONE``, or HPE
    Dragon's ``stderr=LEVEL``; ``ValueError`` for anything else."""
    from . import _log

    dest, eq, level = value.partition("=")
    if eq:
        if dest.strip().lower() != "stderr":
            raise ValueError("-l %s: this runtime writes no log files (HPE Dragon's dragon_file and actor_file); "
                             "its log goes to standard error (-l LEVEL or -l stderr=LEVEL), or configure the "
                             "\"dragon\" logger with logging" % value)
        value = level
    _log.parse_level(value)
    return value


def _usage_error(msg: str) -> int:
    sys.stderr.write("dragon: %s\n%s" % (msg, USAGE))
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["top"]:
        from . import _top

        return _top.main(argv[1:])
    if argv[:1] == ["ddict-repair"]:
        from .data._managers import repair_main

        return repair_main(argv[1:])
    if not argv:
        sys.stdout.write(USAGE)
        return 2
    hostlist = hostfile = remote_exec = metrics = None
    nodes: int | None = None
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
        if opt in _LABELS:
            label = True
            continue
        if opt == "--no-label":
            label = False
            continue
        if opt in ("-s", "--single-node", "--single-node-override"):
            single = True
            continue
        if opt[:2] in ("-N", "-l") and len(opt) > 2 and not opt.startswith("--"):
            opt = opt[:2] + "=" + opt[2:]  # -N4, -lDEBUG
        name, eq, value = opt.partition("=")
        if name in _HPE_ONLY:
            return _usage_error("%s is an HPE Dragon option with no meaning here: %s" % (name, _HPE_ONLY[name]))
        if name in ("-l", "--log-level"):
            if not eq:
                if not argv:
                    return _usage_error("%s needs a level" % name)
                value = argv.pop(0)
            from . import _log

            try:
                value = _log_level(value)
            except ValueError as e:
                return _usage_error(str(e))
            os.environ[_log.LEVEL_ENV] = value  # for every process of the run
            _log.configure(value)
            continue
        if name == "--metrics":
            if not eq:
                if not argv:
                    return _usage_error("--metrics needs [HOST:]PORT")
                value = argv.pop(0)
            if not value.rpartition(":")[2].isdigit() or int(value.rpartition(":")[2]) > 65535:
                return _usage_error("--metrics needs [HOST:]PORT, not %r" % value)
            metrics = value
            continue
        if name in ("-N", "--nodes"):
            if not eq:
                if not argv:
                    return _usage_error("%s needs a number of nodes" % name)
                value = argv.pop(0)
            if not value.isdigit() or int(value) < 1:
                return _usage_error("%s needs a number of nodes, at least 1, not %r" % (name, value))
            nodes = int(value)
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
    if single and nodes is not None and nodes > 1:
        return _usage_error("give -N %d or -s, not both" % nodes)
    if (nodes is not None and nodes > 1 and hostlist is None and hostfile is None
            and not os.environ.get("SLURM_JOB_ID")):
        return _usage_error("-N %d needs the hosts to run on: --hostlist or --hostfile, or a Slurm allocation" % nodes)
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
        if metrics is not None:
            from . import _top, runtime

            try:
                server = _top.serve_metrics(metrics, runtime.run_id())
            except OSError as e:
                sys.stderr.write("dragon: --metrics %s: %s\n" % (metrics, e))
                return 2
            from . import _log

            _log.logger.info("metrics at http://%s:%d/metrics", *server.server_address[:2])
        return _run_program(module, None if module else script, args)

    if not single and (hostlist is not None or hostfile is not None or os.environ.get("SLURM_JOB_ID")):
        from . import launcher

        try:
            where = launcher.plan(hostlist, hostfile, nodes, remote_exec)
        except launcher.LaunchError as e:
            sys.stderr.write("dragon: %s\n" % e)
            return 2
        if where is not None:
            program = ["-m", module] if module else [script]
            return launcher.run_script(where.hosts, program + list(args), remote_exec=remote_exec, label=label,
                                       run_main=run_main, cpus=where.cpus, srun=where.srun)
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
        # What multiprocessing calls the main module (it took this process's
        # __main__, the dragon command, when it was imported): children
        # import the script under this name, so the classes they pickle
        # (results, exceptions) are found here by it.
        sys.modules["__mp_main__"] = main_module
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
