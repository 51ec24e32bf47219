#!/usr/bin/env python3
"""A real Slurm cluster on the test bed's nodes (``testbed/cluster.py``).

Each node of a :class:`cluster.Cluster` (its own network, mount, UTS, IPC
and PID namespaces) runs a real ``slurmd``; the first node also runs
``slurmctld`` and ``munged``, so that ``salloc``, ``sbatch``, ``srun``,
``squeue`` and ``scancel`` work in any node as on a small HPC cluster whose
first node is both the login node and a compute node. Slurm and MUNGE are
Debian's (``slurmctld``, ``slurmd``, ``slurm-client``, ``munge``); nothing
of the host's own configuration is read or written:

- the cluster's ``slurm.conf`` is in ``<state dir>/slurm/etc/`` and is bound
  over ``/etc/slurm`` inside every node (each node's mount namespace is its
  own), so every Slurm command run in a node finds it, as on a cluster;
  :meth:`SlurmCluster.run` also sets ``SLURM_CONF`` to it;
- MUNGE's key is made for the cluster and its ``munged`` listens on a socket
  in the state directory (every node sees the directory; a unix socket
  does not belong to a network namespace, so one ``munged`` serves all
  nodes, as one shared key would on a real cluster);
- the node names are the test bed's (``node1`` ..), each ``NodeAddr`` the
  node's address; the daemons' logs are ``<state dir>/slurm/log/``.

What a namespaced node cannot have, and how the configuration goes round
it: a node has no cgroup hierarchy of its own (the host's, if any, is shared
by every node and by the host), so ``proctrack/linuxproc`` (a step's
processes are found by parentage in the node's own ``/proc``) replaces
``proctrack/cgroup``, ``task/affinity`` (CPU binding with
``sched_setaffinity``, no cgroup needed) replaces ``task/cgroup``, and no
accounting is gathered (``jobacct_gather/none``, ``accounting_storage/none``:
no database). Every daemon runs as root. A consequence for tests: a process
of a step whose parent died first is re-parented out of the step's tree and
escapes ``linuxproc``, so a program that leaves processes behind for
Slurm's kill to catch is caught by the tests' clean checks instead.

Library use (root; ``testbed/`` on ``sys.path``)::

    from slurm import SlurmCluster
    with SlurmCluster(nodes=3) as s:       # every slurmd registered, nodes idle
        s.cluster                          # the test bed's Cluster (names, addresses, shared...)
        s.run(0, ["salloc", "-N", "3", "srun", "hostname"], timeout=120)
        s.popen(0, ["sbatch", "--wait", "job.sh"], stdout=...)
        s.jobs()                           # [(job id, state)] from squeue
        s.wait_clean(1, timeout=30)        # as Cluster.wait_clean, the daemons excepted
        s.conf                             # path of slurm.conf
        s.kill_wait                        # KillWait of the configuration (seconds)

Command line (as root)::

    python3 testbed/slurm.py up --nodes 3 --id demo      # stays up; prints how to use it
    python3 testbed/cluster.py exec demo node1 -- salloc -N 3 .venv/bin/dragon examples/seed_tour.py
    python3 testbed/slurm.py down --id demo

Needs everything ``testbed/cluster.py`` needs, plus ``slurmctld``,
``slurmd``, ``salloc``/``srun``/``sinfo`` and ``munged``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import Cluster, ClusterError, ClusterUnavailable, Leftovers, _alive, _start_time  # noqa: E402

__all__ = ["SlurmCluster", "missing_requirements"]

PROGRAMS = {
    "slurmctld": "slurmctld", "slurmd": "slurmd", "srun": "slurm-client", "salloc": "slurm-client",
    "sbatch": "slurm-client", "sinfo": "slurm-client", "squeue": "slurm-client", "scancel": "slurm-client",
    "scontrol": "slurm-client", "munged": "munge",
}
#: Seconds between a job's SIGTERM and SIGKILL (Slurm's KillWait).
KILL_WAIT = 10


def _which(prog):
    return shutil.which(prog) or next(
        (p for p in (f"/usr/sbin/{prog}", f"/usr/bin/{prog}") if os.access(p, os.X_OK)), None)


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def missing_requirements():
    """What this machine lacks for a Slurm test cluster (empty: nothing)."""
    missing = sorted({f"{prog} (Debian package {pkg})" for prog, pkg in PROGRAMS.items() if _which(prog) is None})
    if os.geteuid() != 0:
        missing.append("root")
    return missing


class SlurmCluster:
    """Slurm on ``nodes`` test bed nodes; see the module docstring.

    ``cpus``: CPUs each node declares (default: the machine's); ``id`` and
    ``detach`` as for :class:`cluster.Cluster`.
    """

    def __init__(self, nodes=3, *, cpus=None, id=None, detach=False, timeout=120.0):
        missing = missing_requirements()
        if missing:
            raise ClusterUnavailable("a Slurm test cluster needs: " + ", ".join(missing))
        self.cpus = int(cpus or os.cpu_count() or 1)
        self.kill_wait = KILL_WAIT
        self.cluster = Cluster(nodes=nodes, id=id, detach=detach)
        self._daemons = {}  # node index -> [(host pid, start time)]
        try:
            self._configure()
            self._start(timeout)
            if detach:
                with open(os.path.join(self.dir, "daemons.json"), "w") as f:
                    json.dump({str(k): v for k, v in self._daemons.items()}, f)
        except BaseException:
            self.cluster.down()
            raise

    @classmethod
    def attach(cls, cid):
        """A handle on a cluster made by ``up``."""
        self = cls.__new__(cls)
        self.cluster = Cluster.attach(cid)
        self.kill_wait = KILL_WAIT
        with open(os.path.join(self.cluster.state_dir, "slurm", "daemons.json")) as f:
            self._daemons = {int(k): [tuple(d) for d in v] for k, v in json.load(f).items()}
        self.cpus = None
        return self

    # -- files

    @property
    def dir(self):
        return os.path.join(self.cluster.state_dir, "slurm")

    @property
    def conf(self):
        return os.path.join(self.dir, "etc", "slurm.conf")

    @property
    def munge_socket(self):
        return os.path.join(self.dir, "munge", "munge.socket")

    def _configure(self):
        c = self.cluster
        for sub in ("etc", "log", "ctld", "munge"):
            os.makedirs(os.path.join(self.dir, sub), mode=0o755, exist_ok=True)
        for name in c.names:
            os.makedirs(os.path.join(self.dir, "spool", name), mode=0o755, exist_ok=True)
        key = os.path.join(self.dir, "munge", "munge.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        try:
            os.write(fd, os.urandom(1024))
        finally:
            os.close(fd)
        d = self.dir
        lines = [
            "# A test cluster made by testbed/slurm.py: every node a set of namespaces on one machine.",
            f"ClusterName=dtb{c.id}",
            f"SlurmctldHost={c.names[0]}({c.address(0)})",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            # No cgroup hierarchy per node (see the module docstring).
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/affinity",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            f"KillWait={self.kill_wait}",
            "InactiveLimit=0",
            "MinJobAge=600",
            # A loaded 2-core machine runs every daemon of the cluster.
            "MessageTimeout=60",
            "SlurmdTimeout=600",
            "SlurmctldTimeout=600",
            f"StateSaveLocation={d}/ctld",
            f"SlurmdSpoolDir={d}/spool/%n",
            f"SlurmctldPidFile={d}/ctld/slurmctld.pid",
            f"SlurmdPidFile={d}/spool/%n/slurmd.pid",
            f"SlurmctldLogFile={d}/log/slurmctld.log",
            f"SlurmdLogFile={d}/log/slurmd.%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "MailProg=/bin/true",
        ]
        for k, name in enumerate(c.names):
            lines.append(f"NodeName={name} NodeAddr={c.address(k)} CPUs={self.cpus} State=UNKNOWN")
        lines.append(f"PartitionName=test Nodes={','.join(c.names)} Default=YES MaxTime=INFINITE State=UP")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    # -- daemons

    def _env(self, env=None):
        e = dict(os.environ if env is None else env)
        e["SLURM_CONF"] = self.conf
        return e

    def _daemon(self, i, argv, log):
        with open(os.path.join(self.dir, "log", log), "ab") as out:
            p = self.cluster.popen(i, argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env=self._env(), start_new_session=True, cwd="/")
        self._daemons.setdefault(i, []).append((p.pid, _start_time(p.pid)))
        return p

    def _start(self, timeout):
        c = self.cluster
        deadline = time.monotonic() + timeout
        etc = os.path.join(self.dir, "etc")
        if os.path.isdir("/etc/slurm"):
            for i in range(len(c)):
                c.run(i, ["mount", "--bind", etc, "/etc/slurm"], timeout=60, check=True)
        munged = self._daemon(0, [_which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                                  f"--key-file={self.dir}/munge/munge.key",
                                  f"--pid-file={self.dir}/munge/munged.pid",
                                  f"--seed-file={self.dir}/munge/munged.seed",
                                  f"--log-file={self.dir}/log/munged.log"], "munged.out")
        self._wait(lambda: os.path.exists(self.munge_socket), munged, "munged", deadline, "munged.log")
        ctld = self._daemon(0, [_which("slurmctld"), "-D", "-c", "-f", self.conf], "slurmctld.out")
        self._wait(lambda: self.run(0, ["scontrol", "ping"], timeout=60).stdout.count("UP") > 0, ctld,
                   "slurmctld", deadline)
        slurmds = [self._daemon(i, [_which("slurmd"), "-D", "-f", self.conf, "-N", name], f"slurmd.{name}.out")
                   for i, name in enumerate(c.names)]

        def idle():
            for p, name in zip(slurmds, c.names):
                if p.poll() is not None:
                    raise ClusterError(f"slurmd of {name} ended (status {p.returncode}): "
                                       f"{self._tail('slurmd.%s.log' % name)}")
            states = self.node_states()
            return len(states) == len(c) and all(s == "idle" for s in states.values())

        self._wait(idle, ctld, "the nodes to register", deadline)

    def _tail(self, log, n=20):
        try:
            with open(os.path.join(self.dir, "log", log), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError as e:
            return f"(no log: {e.strerror})"

    def _wait(self, ready, proc, what, deadline, log="slurmctld.log"):
        delay = 0.02
        while not ready():
            if proc.poll() is not None:
                raise ClusterError(f"waiting for {what}: its daemon ended (status {proc.returncode})\n"
                                   f"{self._tail(log)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}\n{self._tail(log)}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- using it

    @property
    def names(self):
        return self.cluster.names

    def run(self, i, args, **kwargs):
        """``Cluster.run`` in node i, with ``SLURM_CONF`` set."""
        kwargs["env"] = self._env(kwargs.get("env"))
        return self.cluster.run(i, args, **kwargs)

    def popen(self, i, args, **kwargs):
        """``Cluster.popen`` in node i, with ``SLURM_CONF`` set."""
        kwargs["env"] = self._env(kwargs.get("env"))
        return self.cluster.popen(i, args, **kwargs)

    def node_states(self):
        """{node name: Slurm state} (``idle``, ``allocated``, ``mixed``, ``down``...)."""
        r = self.run(0, ["sinfo", "-h", "-N", "-o", "%N %T"], timeout=60)
        out = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1].rstrip("*~#$@+^-").lower()
        return out

    def jobs(self):
        """[(job id, state)] of the jobs slurmctld knows (finished ones too)."""
        r = self.run(0, ["squeue", "-h", "-t", "all", "-o", "%i %T"], timeout=60, check=True)
        return [tuple(line.split()) for line in r.stdout.splitlines() if line.strip()]

    def job_state(self, job):
        r = self.run(0, ["scontrol", "-o", "show", "job", str(job)], timeout=60)
        for field in r.stdout.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return None

    def wait_job_state(self, job, states, timeout=60.0):
        """Wait until job ``job`` is in one of ``states``; its state then."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.job_state(job)
            if s in states or time.monotonic() > deadline:
                return s
            time.sleep(0.2)

    def _daemon_pids(self, i):
        return {pid for pid, start in self._daemons.get(i, ()) if _alive(pid, start)}

    def processes(self, i):
        """Node i's processes but its init, sshd and Slurm's (and MUNGE's)
        daemons, ``slurmctld``'s helper (``slurmscriptd``) with them."""
        daemons = self._daemon_pids(i)
        return [(pid, cmd) for pid, cmd in self.cluster.processes(i)
                if pid not in daemons and not (_ppid(pid) in daemons and cmd.startswith("slurmctld"))]

    def wait_clean(self, i, timeout=10.0):
        """As ``Cluster.wait_clean``, Slurm's daemons excepted (a job step's
        ``slurmstepd`` is not: it must end with its step)."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            left = Leftovers(self.processes(i), self.cluster.shm_files(i))
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)

    def down(self):
        """Stop the daemons (each node's end ends them too) and the nodes."""
        for i in list(self._daemons):
            for pid in self._daemon_pids(i):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.cluster.down()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()

    def __repr__(self):
        return f"SlurmCluster({self.cluster!r})"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="slurm.py", description="A Slurm cluster on test bed nodes (root).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="bring a cluster up and leave it running")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--cpus", type=int, default=None, help="CPUs each node declares (default: the machine's)")
    up.add_argument("--id", default=None)
    down = sub.add_parser("down", help="stop a cluster made by up")
    down.add_argument("--id", required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            s = SlurmCluster(nodes=args.nodes, cpus=args.cpus, id=args.id, detach=True)
            cid = s.cluster.id
            print(f"Slurm cluster {cid} is up: nodes {s.cluster.hostlist}, controller on {s.names[0]}.")
            print(f"  a shell on {s.names[0]}:  python3 {os.path.join(os.path.dirname(__file__), 'cluster.py')} "
                  f"exec {cid} {s.names[0]} -- bash")
            print(f"  then:                salloc -N {len(s.cluster)} dragon script.py")
            print(f"  configuration:       {s.conf} (bound over /etc/slurm in every node)")
            print(f"  logs:                {s.dir}/log/")
            print(f"  stop it:             python3 {os.path.abspath(__file__)} down --id {cid}")
        else:
            SlurmCluster.attach(args.id).down()
    except (ClusterError, OSError) as e:
        print(f"slurm.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
