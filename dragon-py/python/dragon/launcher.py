"""The multi-node launcher: ``dragon --hostlist h1,h2,h3 script.py``.

It starts one node service (``python -m dragon._node``, the ``runtime``
crate's service) on every host, through one *launch back end*:

* this host itself: a plain child process;
* ``ssh`` (``ssh -T -x -o BatchMode=yes host``: passwordless keys, never a
  password prompt);
* a ``--remote-exec`` template, for sites where ``ssh host`` is not how a
  node is reached (``"ssh -p 2222 {host}"``, a container's exec command).
  ``{host}`` is replaced by the host; ``{cmd}``, if present, by the shell
  command to run (otherwise it is appended as the last argument, as ssh
  expects);
* ``srun``, inside a Slurm allocation (:mod:`dragon.slurm`): one job step
  of one task per node, ``--overlap`` (the job's own steps are not held
  back), with no CPU binding, and ``--unbuffered`` (the step's output is
  passed on as written, not held until a newline: the service's records
  are binary). Slurm accounts for the services, signals them and kills
  them with the job; a service cleans its node up on SIGTERM.

Each service reads the run's bootstrap (run id, secret, its index, every
host) on its standard input (never a command line, a file or the
environment), and keeps that input as its lifeline: when the launcher ends,
or its ssh connection does, the node tears itself down. Services join the
primary (the first host); once every node has joined, the script runs on
the primary, in this process if this host is the primary (as ``python
script.py`` would run it), else through ``dragon`` re-run there.

Output of processes on other nodes comes back through their service and
is written to this process's standard output and error (prefixed with the
host's name with ``--label``). ``dragon`` exits with the script's exit code.
"""
from __future__ import annotations

import io
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from . import _log

__all__ = ["Launch", "LaunchError", "Plan", "is_local_host", "plan", "read_hosts"]

# Records a node service writes for its launcher (runtime::proto::out).
LISTENING, READY, ERROR, OUTPUT, LOG, STOPPED, LOST = 1, 2, 3, 4, 5, 6, 7

SSH = "ssh -T -x -o BatchMode=yes -o ConnectTimeout=10 {host}"
#: One task on one node of the allocation, sharing the job's CPUs with its
#: other steps, unbound, with no MPI set-up, output passed on as written.
SRUN = ["srun", "--overlap", "--nodes=1", "--ntasks=1", "--cpu-bind=none", "--mpi=none", "--quiet"]

#: Seconds a node's services have to join (DRAGON_JOIN_TIMEOUT).
JOIN_TIMEOUT = float(os.environ.get("DRAGON_JOIN_TIMEOUT", "60"))
#: Silence after which a node is lost (DRAGON_PEER_TIMEOUT, at most 15 s by default).
PEER_TIMEOUT = float(os.environ.get("DRAGON_PEER_TIMEOUT", "5"))
#: How long the services have to clean up at the end.
STOP_WAIT = 15.0


class LaunchError(RuntimeError):
    """The run could not be brought up on its nodes."""


def read_hosts(hostlist: str | None = None, hostfile: str | None = None) -> list[str]:
    """The hosts of a ``--hostlist`` expression or a ``--hostfile``."""
    from . import _native

    if hostfile is not None:
        try:
            with open(hostfile, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise LaunchError("cannot read host file %s: %s" % (hostfile, e.strerror)) from None
        try:
            return _native.parse_hostfile(text)
        except ValueError as e:
            raise LaunchError("%s: %s" % (hostfile, e)) from None
    try:
        return _native.expand_hostlist(hostlist or "")
    except ValueError as e:
        raise LaunchError(str(e)) from None


def _local_names() -> set:
    names = {"localhost", "127.0.0.1", "::1"}
    for n in (socket.gethostname(), socket.getfqdn()):
        if n:
            names.add(n)
            names.add(n.split(".")[0])
    return names


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine."""
    if host in _local_names():
        return True
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None, socket.AF_INET)}
    except OSError:
        return False
    if any(a.startswith("127.") for a in addrs):
        return True
    from .native import machine

    return bool(addrs & set(machine.ipv4_addrs()))


def srun_command(host: str, argv: list, unbuffered: bool = True) -> list[str]:
    """The argv that runs ``argv`` on node ``host`` of this Slurm allocation."""
    return SRUN + (["--unbuffered"] if unbuffered else []) + ["--nodelist=" + host] + list(argv)


class Plan:
    """Where a run goes: its hosts (the primary first), the CPUs the run
    may use on each (an allocation's, else None: each service's affinity),
    and whether their services start with ``srun``."""

    def __init__(self, hosts, cpus=None, srun=False):
        self.hosts = list(hosts)
        self.cpus = list(cpus) if cpus is not None else [None] * len(self.hosts)
        self.srun = srun

    def __repr__(self):
        return "Plan(%r, cpus=%r, srun=%r)" % (self.hosts, self.cpus, self.srun)


def plan(hostlist=None, hostfile=None, nodes=None, remote_exec=None, environ=None):
    """The hosts of a run from the command line and the Slurm allocation
    the command runs in, if any; None: run on this machine alone.

    Inside an allocation the run goes on its nodes (``--hostlist`` or
    ``--hostfile`` choose among them), their services started with
    ``srun`` (unless ``--remote-exec`` says how to reach them); ``nodes``
    keeps the first ``nodes`` hosts. This host, if it is one of them, is the
    primary. An allocation of this one node is a run on this machine."""
    from . import slurm

    try:
        alloc = slurm.allocation(environ)
    except slurm.AllocationError as e:
        raise LaunchError(str(e)) from None
    given = hostlist is not None or hostfile is not None
    if nodes is not None and (not isinstance(nodes, int) or nodes < 1):
        raise LaunchError("-N needs a number of nodes, at least 1, not %r" % (nodes,))
    if given:
        hosts = read_hosts(hostlist, hostfile)
        where = "the host list"
    elif alloc is not None:
        hosts = list(alloc.nodes)
        where = "Slurm job %s" % alloc.job_id
    elif nodes is not None and nodes > 1:
        raise LaunchError("-N %d needs the hosts to run on: --hostlist or --hostfile, or a Slurm allocation"
                          % nodes)
    else:
        return None
    if nodes is not None:
        if nodes > len(hosts):
            raise LaunchError("-N %d, but %s has %d host%s (%s)" % (
                nodes, where, len(hosts), "" if len(hosts) == 1 else "s", ",".join(hosts)))
        hosts = hosts[:nodes]
    srun = alloc is not None and remote_exec is None
    if srun:
        outside = [h for h in hosts if h not in alloc.nodes]
        if outside:
            raise LaunchError("%s: not node%s of Slurm job %s (%s); give --remote-exec to reach hosts "
                              "outside the allocation" % (",".join(outside), "" if len(outside) == 1 else "s",
                                                          alloc.job_id, ",".join(alloc.nodes)))
    names = _local_names()
    here = next((i for i, h in enumerate(hosts) if h in names), None)
    if here is None and is_local_host(hosts[0]):
        here = 0
    if here:
        hosts.insert(0, hosts.pop(here))
    cpus = [alloc.cpus_of(h) for h in hosts] if alloc is not None else None
    if alloc is not None and not given and len(hosts) == 1 and here is not None:
        return None
    return Plan(hosts, cpus, srun)


def remote_command(template: str | None, host: str, command: str) -> list[str]:
    """The argv that runs shell ``command`` on ``host``."""
    argv = shlex.split(template or SSH)
    if not any("{host}" in a for a in argv):
        raise LaunchError("--remote-exec %r has no {host}" % template)
    out = [a.replace("{host}", host) for a in argv]
    if any("{cmd}" in a for a in out):
        return [a.replace("{cmd}", command) for a in out]
    return out + [command]


class _Node:
    """One node's service, seen from the launcher."""

    def __init__(self, launch, index, host, argv):
        self.launch = launch
        self.index = index
        self.host = host
        self.address = None
        self.table = None
        self.error = None
        self.stopped = None
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                     start_new_session=True, env=_launcher_env())
        self.reader = threading.Thread(target=self._read, name="dragon-node-%d" % index, daemon=True)
        self.reader.start()

    def write(self, text: str) -> None:
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # its death is reported by the reader

    def _read(self):
        f = self.proc.stdout
        while True:
            head = _read_exact(f, 5)
            if head is None:
                break
            kind, n = head[0], struct.unpack("<I", head[1:])[0]
            body = _read_exact(f, n)
            if body is None:
                break
            self.launch._record(self, kind, body)
        code = self.proc.wait()
        with self.cond:
            if self.error is None and self.stopped is None:
                self.error = "its service ended (exit code %d) before the run did" % code
            self.stopped = self.stopped or ""
            self.cond.notify_all()
        self.launch._node_ended(self)

    def wait_for(self, what, deadline):
        with self.cond:
            while getattr(self, what) is None and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return self.error is None


#: Variables that make a process part of a run (and so a process the
#: run's cleanup on its node kills).
_RUN_VARS = ("DRAGON_RUN_ID", "DRAGON_TEMPLATE", "DRAGON_SERVICE", "DRAGON_NODES", "DRAGON_NODE_INDEX")


def _launcher_env():
    """The environment of the launcher's own helpers (ssh, srun, a local
    service): not of the run, whose end on this node kills the run's
    processes; each service starts its run's processes with the run's."""
    return {k: v for k, v in os.environ.items() if k not in _RUN_VARS}


def _end_program():
    """End this process as SIGTERM does (a program that handles SIGTERM
    gets to; one that ignores it is ended after ``STOP_WAIT``)."""
    os.kill(os.getpid(), signal.SIGTERM)

    def last_resort():
        time.sleep(STOP_WAIT)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=last_resort, name="dragon-end", daemon=True).start()


def _read_exact(f, n):
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = f.read(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class Launch:
    """A multi-node run being brought up, served and torn down."""

    def __init__(self, hosts, remote_exec=None, label=False, python=None, cpus=None, srun=False):
        if not hosts:
            raise LaunchError("no hosts")
        self.hosts = list(hosts)
        self.cpus = list(cpus) if cpus is not None else [None] * len(self.hosts)
        self.srun = srun
        self.remote_exec = remote_exec
        self.label = label
        self.python = python or sys.executable
        self.nodes = []
        self.table = None
        self._out_lock = threading.Lock()
        self._partial = {}  # (index, pid, stream) -> bytes of an unfinished line
        self._ending = False
        self.lost = set()  # nodes the primary called lost: they cleaned up on their own

    # -- output -----------------------------------------------------------------
    def _write(self, fd, data):
        with self._out_lock:
            while data:
                try:
                    n = os.write(fd, data)
                except InterruptedError:
                    continue
                except OSError:
                    return
                data = data[n:]

    def _output(self, node, body):
        stream, pid = body[0], struct.unpack("<I", body[1:5])[0]
        data = body[5:]
        fd = 1 if stream == 1 else 2
        # Whole lines only (ended by a newline, or unlabelled by a carriage
        # return as progress bars write), so that the lines of processes
        # printing at the same time never cut into each other; the rest
        # waits for its end, or for the run's.
        key = (node.index, pid, stream)
        data = self._partial.pop(key, b"") + data
        cut = data.rfind(b"\n") + 1 if self.label else max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if cut < len(data):
            self._partial[key] = data[cut:]
        if not cut:
            return
        whole = data[:cut]
        if self.label:
            prefix = ("[%s] " % node.host).encode()
            whole = b"".join(prefix + ln + b"\n" for ln in whole[:-1].split(b"\n"))
        self._write(fd, whole)

    def _record(self, node, kind, body):
        if kind == OUTPUT:
            return self._output(node, body)
        if kind == LOST:
            index = struct.unpack("<I", body[:4])[0]
            self.lost.add(index)
            _log.logger.error("lost node %d: %s", index, body[4:].decode(errors="replace"))
            if not self._ending:
                self._write(2, ("dragon: %s\n" % body[4:].decode(errors="replace")).encode())
            return
        text = body.decode(errors="replace")
        with node.cond:
            if kind == LISTENING:
                node.address = text
            elif kind == READY:
                node.table = text
                _log.logger.info("node %d (%s) joined the run", node.index, node.host)
            elif kind == ERROR:
                node.error = text
            elif kind == STOPPED:
                node.stopped = text
            node.cond.notify_all()
        if kind == ERROR and not self._ending:
            self._write(2, ("dragon: %s: %s\n" % (node.host, text)).encode())
        elif kind == LOG and not self._ending:
            self._write(2, ("dragon: %s\n" % text).encode())
        elif kind == STOPPED and os.environ.get("DRAGON_DEBUG"):
            self._write(2, ("dragon: %s\n" % text).encode())

    def _node_ended(self, node):
        if self._ending or self.table is None:
            return
        if node.error:
            self._write(2, ("dragon: node %s: %s\n" % (node.host, node.error)).encode())
        if node.index == 0:
            # The primary's service is the hub of the run: without it the
            # run is over (a batch system ended the job: Slurm's scancel or
            # time limit sends every step SIGTERM, and salloc waits for its
            # command for ever). The program ends as a SIGTERM ends it.
            why = node.stopped or node.error or "it ended"
            self._write(2, ("dragon: the run's service on %s is gone (%s): ending the program\n"
                            % (node.host, why)).encode())
            _end_program()

    # -- bring-up -----------------------------------------------------------------
    def _argv(self, index, host):
        node_cmd = [self.python, "-m", "dragon._node"]
        if self.srun:
            # Every node's service, this one's too, is a step of the job:
            # Slurm signals and kills it with the job.
            return srun_command(host, node_cmd)
        if index == 0 and is_local_host(host):
            return node_cmd
        cwd = os.getcwd()
        # RDMA or TCP between nodes (runtime/src/fabric.rs): the same on
        # every node, which ssh would not pass on.
        if os.environ.get("DRAGON_FABRIC"):
            node_cmd = ["env", "DRAGON_FABRIC=" + os.environ["DRAGON_FABRIC"]] + node_cmd
        command = "cd %s 2>/dev/null; exec %s" % (shlex.quote(cwd), " ".join(shlex.quote(a) for a in node_cmd))
        return remote_command(self.remote_exec, host, command)

    def start(self, run_id, secret) -> str:
        """Start every node's service and wait until all have joined; the
        node table (JSON)."""
        from . import _native

        deadline = time.monotonic() + JOIN_TIMEOUT + 30
        try:
            for i, host in enumerate(self.hosts):
                node = _Node(self, i, host, self._argv(i, host))
                self.nodes.append(node)
                node.write(_native.bootstrap_text(run_id, secret, i, self.hosts, PEER_TIMEOUT, JOIN_TIMEOUT,
                                                  self.cpus[i]))
        except OSError as e:
            raise LaunchError("cannot start the node services: %s" % e) from None
        primary = self.nodes[0]
        if not primary.wait_for("address", deadline):
            raise LaunchError("the primary node %s did not start: %s" % (primary.host, primary.error or "timed out"))
        for node in self.nodes[1:]:
            node.write("primary=%s\n" % primary.address)
        if not primary.wait_for("table", deadline):
            failed = [n for n in self.nodes if n.error]
            why = "; ".join("%s: %s" % (n.host, n.error) for n in failed) or "timed out"
            raise LaunchError("the run did not come up: %s" % why)
        self.table = primary.table
        return self.table

    def stop(self, wait=STOP_WAIT) -> None:
        """End the run on every node: each service cleans its node and exits."""
        self._ending = True
        for node in self.nodes:
            try:
                node.proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + wait
        for node in self.nodes:
            if node.index in self.lost and node.proc.poll() is None and not self.srun:
                # It tore itself down when it lost the primary; its ssh
                # connection may be over a link that is gone. (An srun is
                # not killed: Slurm would kill its step, the service in the
                # middle of cleaning its node up; it ends with the service.)
                node.proc.kill()
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
            node.reader.join(max(0.0, deadline - time.monotonic()))
        with self._out_lock:
            for (index, pid, stream), rest in self._partial.items():
                prefix = ("[%s] " % self.hosts[index]).encode() if self.label else b""
                os.write(1 if stream == 1 else 2, prefix + rest + (b"\n" if self.label else b""))
            self._partial.clear()


def _whole_lines():
    """The script's own output in whole lines, as the output of every other
    process of the run reaches the same terminal (forwarded line by line):
    with an unbuffered stdout or stderr (``python -u``,
    ``PYTHONUNBUFFERED``) ``print()`` writes its pieces one by one, and a
    line forwarded from another node could land between them. Such a
    stream that is not a terminal (a pipe, a file: logs, CI) is made line
    buffered instead, on the same descriptor; a terminal is left as it is
    (a progress line without a newline shows at once there)."""
    for name in ("stdout", "stderr"):
        s = getattr(sys, name)
        if not isinstance(getattr(s, "buffer", None), io.FileIO) or not getattr(s, "write_through", False):
            continue
        try:
            fd = s.fileno()
            if os.isatty(fd):
                continue
            raw = io.FileIO(fd, "w", closefd=False)
            setattr(sys, name, io.TextIOWrapper(io.BufferedWriter(raw), encoding=s.encoding, errors=s.errors,
                                                line_buffering=True))
        except (OSError, ValueError, AttributeError):
            pass


def run_script(hosts, script_args, remote_exec=None, label=False, run_main=None, cpus=None, srun=False) -> int:
    """Bring the run up on ``hosts``, run the program with ``run_main()`` on
    this host (the primary), tear the run down; the program's exit code.
    ``cpus`` and ``srun`` as in :class:`Plan`."""
    from . import _native, runtime

    if not is_local_host(hosts[0]):
        # The script runs on the primary: run dragon there.
        dragon = [sys.executable, "-m", "dragon", "--hostlist", ",".join(hosts)] + (
            ["--remote-exec", remote_exec] if remote_exec else []) + (["--label"] if label else [])
        if srun:
            # A step of the job on the primary (its standard input and
            # output are srun's, line by line as Slurm passes them on).
            return subprocess.call(srun_command(hosts[0], dragon + list(script_args), unbuffered=False))
        command = " ".join(shlex.quote(a) for a in
                           ["cd", os.getcwd()]) + " 2>/dev/null; exec " + " ".join(
            shlex.quote(a) for a in dragon + list(script_args))
        argv = remote_command(remote_exec, hosts[0], command)
        return subprocess.call(argv)
    # A multi-node launch starts a run of its own, whatever run the
    # environment it was started from belongs to.
    for var in (runtime.RUN_ENV, runtime.TEMPLATE_ENV, "DRAGON_SERVICE", "DRAGON_NODES", "DRAGON_NODE_INDEX"):
        os.environ.pop(var, None)
    run_id = runtime.run_id()
    secret = _native.new_secret()
    launch = Launch(hosts, remote_exec=remote_exec, label=label, cpus=cpus, srun=srun)
    try:
        table = launch.start(run_id, secret)
    except LaunchError as e:
        launch.stop(wait=5.0)
        sys.stderr.write("dragon: %s\n" % e)
        return 1
    os.environ["DRAGON_NODE_INDEX"] = "0"
    os.environ["DRAGON_SERVICE"] = _native.service_name(run_id, 0)
    os.environ["DRAGON_NODES"] = table
    _whole_lines()
    try:
        return run_main()
    finally:
        # As at the interpreter's exit: daemonic children are terminated and
        # the others joined (on any node); then this node's template ends
        # what is left here, and every node cleans up.
        from multiprocessing import util

        util._exit_function()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # a last line without its newline
            except (OSError, ValueError, AttributeError):
                pass
        runtime.shutdown()
        launch.stop()
