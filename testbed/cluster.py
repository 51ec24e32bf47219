#!/usr/bin/env python3
"""A cluster of N nodes on one Linux machine, for multi-node tests and benchmarks.

Each node is a set of namespaces with a real ``sshd`` in it, so that a
program started on node1 reaches node2 exactly as it would on an HPC cluster
with passwordless SSH keys: ``ssh node2 cmd`` with ``BatchMode=yes``.

A node has its own

- network namespace: ``eth0`` (one end of a veth pair whose other end is on
  the cluster's bridge) with the address ``10.A.B.k`` of the cluster's /24
  and a fixed MAC address, loopback up. The host itself has no address on
  the bridge: it reaches the nodes only through :meth:`Cluster.run` /
  :meth:`Cluster.popen`;
- mount namespace: a private tmpfs on ``/dev/shm`` and on ``/tmp`` (so a name
  that leaks from one node to another is caught, not hidden), ``/proc`` of
  its PID namespace, ``/sys`` of its network namespace, a private
  ``/etc/hosts`` naming every node and ``/etc/hostname``, and a private
  ``~/.ssh`` (the home directory of the user, root) holding the cluster's key
  pair, ``authorized_keys``, ``known_hosts`` (every node's host key, by name
  and address) and a ``config``. The host's real ``~/.ssh`` is never read
  or written: the home directory is shown in each node as a tmpfs whose
  entries are bind mounts of the real ones, except ``.ssh`` and the shell's
  start-up files (``.bashrc``, ``.profile``...): those of a node only set
  ``PATH`` to the one of the process that made the cluster, so that
  ``ssh node2 cmd`` finds the same programs, and a node killed mid-way
  through the host's start-up files cannot leave their locks behind;
- UTS namespace: the hostname is the node's name (``node1`` .. ``nodeN``,
  or another prefix);
- PID namespace: pid 1 is this module's init (``cluster.py _init``), which
  reaps orphans; killing it ends every process of the node;
- IPC namespace (System V IPC, POSIX message queues).

Everything else of the host's filesystem is shared, as a cluster's shared
filesystem would be: the repository and its virtualenv are reachable from
every node at the same path (also when they are under ``/tmp``: they are
bound into each node's private one). ``Cluster.shared`` is a directory every node and
the host see (use it, not ``/tmp``, for scripts the nodes must run); it goes
away with the cluster.

Library use (root only; ``testbed/`` on ``sys.path``)::

    from cluster import Cluster
    with Cluster(nodes=3) as c:            # sshd accepting on every node
        c.names                            # ["node1", "node2", "node3"]
        c.hostlist                         # "node1,node2,node3"
        c.address(1)                       # "10.A.B.2", node2 (0-based index)
        c.run(0, ["hostname"], timeout=60) # CompletedProcess (text, captured)
        c.popen(0, [...], **popen_kwargs)  # Popen; .pid is the host pid
        c.cut(1); c.restore(1)             # node2's link down / up
        c.kill_node(1)                     # SIGKILL node2's init: all gone
        c.restart_node(1)                  # node2 again (same name, keys)
        c.shm_files(1)                     # names in node2's /dev/shm
        c.processes(1)                     # [(host pid, cmdline)] but init, sshd
        c.wait_clean(1, timeout=10)        # Leftovers, falsy when clean
        c.shared                           # a directory every node sees
    # gone: processes, namespaces, veths, bridge, state directory

Also: ``c.id``, ``c.subnet``, ``c.bridge``, ``c.veth(i)``, ``c.mac(i)``,
``c.init_pid(i)`` (host pid of node i's pid 1), ``c.alive(i)``,
``c.index("node2")``, ``c.ssh_dir``, ``c.down()`` (what ``with`` calls), and
``Cluster.attach(id)``: a handle on a cluster made by ``up``.
:meth:`Cluster.processes` counts the sshd of an open ssh session as a
process of the node: ``wait_clean`` waits for sessions to end too.

``run`` and ``popen`` take the keyword arguments of ``subprocess.run`` /
``subprocess.Popen`` (``env``, ``cwd``, ``input``, ``stdin``/``stdout``...,
``shell``). ``cwd`` is looked up inside the node; by default it is the
caller's working directory when the node sees it, else ``/``. ``run``
captures text output unless told otherwise. The process is created directly
in the node's PID namespace (the caller's thread enters the node's network,
UTS, IPC and PID namespaces, then ``nsenter --mount`` execs the command in
place), so ``Popen.pid`` is the command's own host pid, and signals sent
through the ``Popen`` reach the command itself. A command that cannot be
executed ends with status 126/127 and nsenter's message, it does not raise.

A cluster's state lives in ``/run/dragon-testbed/<id>/`` (``state.json``,
keys, per-node config and ``log``: the init's and sshd's messages). Every
interface is named ``dtb-<id>`` (bridge) and ``dtb-<id>-<k>`` (host end of
node k's veth). The /24 is derived from the id, skipping any in use by another
cluster or by the host. Two clusters never share an id, a name or a subnet.

A cluster made by the library belongs to its process: each node's init
holds a pipe from it and ends its node when that process dies, however it
dies. What a crash leaves (bridge, state directory) is removed by the next
``Cluster()`` or by ``down --stale``. A cluster made by ``up`` on the command
line is detached: it stays until ``down --id``.

Command line (as root)::

    python3 testbed/cluster.py up --nodes 3 --id demo    # stays up, says how to enter
    python3 testbed/cluster.py exec demo node1 -- bash   # a shell on node1
    python3 testbed/cluster.py status [--id demo]
    python3 testbed/cluster.py down --id demo
    python3 testbed/cluster.py down --stale              # clusters of dead owners
    python3 testbed/cluster.py measure --nodes 3          # bring-up, teardown, ssh round trip

Needs root, ``ip`` (iproute2), ``unshare`` and ``nsenter`` (util-linux),
``/usr/sbin/sshd`` (openssh-server), ``ssh`` and ``ssh-keygen``; without them
:class:`ClusterUnavailable` says what is missing.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import hashlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

__all__ = ["Cluster", "ClusterError", "ClusterUnavailable", "Leftovers", "missing_requirements", "remove_stale"]

BASE_DIR = "/run/dragon-testbed"
PREFIX = "dtb"
SCRIPT = os.path.abspath(__file__)
SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
ID_RE = re.compile(r"^[a-z0-9]{1,7}$")  # "dtb-" + id + "-" + 3 digits <= 15 characters
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
MAX_NODES = 254
# Replaced in a node's home by one that sets PATH (see _setup_mounts).
SHELL_FILES = {".bashrc", ".profile", ".bash_profile", ".bash_login", ".bash_logout",
               ".zshenv", ".zprofile", ".zshrc", ".zlogin", ".zlogout", ".kshrc", ".cshrc", ".tcshrc", ".login"}

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
MNT_DETACH = 2


class ClusterError(RuntimeError):
    """A cluster could not be made, used or removed."""


class ClusterUnavailable(ClusterError):
    """This machine or user cannot run the test bed (root, tools)."""


class Leftovers(collections.namedtuple("Leftovers", "processes shm")):
    """What :meth:`Cluster.wait_clean` found: falsy when the node is clean."""

    def __bool__(self):
        return bool(self.processes or self.shm)


# ---------------------------------------------------------------- system calls

_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s):
    return None if s is None else os.fsencode(s)


def _mount(source, target, fstype=None, flags=0, data=None):
    _check(_c().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount {target}")


def _umount(target, flags=0):
    _check(_c().umount2(_b(target), flags), f"umount {target}")


def _sethostname(name):
    raw = name.encode()
    _check(_c().sethostname(raw, len(raw)), "sethostname")


def _setns(path, nstype):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_c().setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def _start_time(pid):
    """Start time of a live, non-zombie process (clock ticks), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _alive(pid, start):
    """Process `pid`, started at `start`, still runs (not a zombie, not reused)."""
    return pid is not None and start is not None and _start_time(pid) == start


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if not raw:
        try:
            with open(f"/proc/{pid}/comm") as f:
                return f"[{f.read().strip()}]"
        except OSError:
            return None
    return " ".join(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0"))


def _ns_pid(pid):
    """The pid of host process `pid` inside its own PID namespace."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        pass
    return None


def _ns_link(pid, kind):
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _pids():
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _gone(pid, start):
    """Process `pid`, started at `start`, has ended and been reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19]) != start
    except (OSError, IndexError):
        return True


def _wait_exit(pids, timeout, poll=None):
    """Wait until every (pid, start) in `pids` has ended and been reaped.

    Returns those left. `poll` is called between waits: the caller reaps
    there the processes it created in a node's PID namespace, whose init
    cannot finish exiting while they are unreaped zombies of the caller.
    """
    deadline = time.monotonic() + timeout
    waiting = []  # [pid, start, pidfd until it has exited]
    for pid, start in pids:
        if not _gone(pid, start):
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                fd = None
            waiting.append([pid, start, fd])
    try:
        delay = 0.002
        while True:
            for w in waiting[:]:
                if w[2] is not None and not _alive(w[0], w[1]):
                    os.close(w[2])  # exited: a zombie until its parent reaps it
                    w[2] = None
                if _gone(w[0], w[1]):
                    waiting.remove(w)
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                return [(pid, start) for pid, start, _ in waiting]
            if poll:
                poll()
            fds = [w[2] for w in waiting if w[2] is not None]
            if len(fds) == len(waiting):
                select.select(fds, [], [], min(0.05, remaining))
            else:
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.05)
    finally:
        for _, _, fd in waiting:
            if fd is not None:
                os.close(fd)


# ---------------------------------------------------------------- requirements

def missing_requirements():
    """What this machine or user lacks to run the test bed; empty when ready."""
    missing = []
    if os.geteuid() != 0:
        missing.append(f"root (network, mount, PID and UTS namespaces and a bridge need it; "
                       f"running as uid {os.geteuid()})")
    tools = [("ip", "iproute2"), ("unshare", "util-linux"), ("nsenter", "util-linux"),
             ("ssh", "openssh-client"), ("ssh-keygen", "openssh-client")]
    for tool, package in tools:
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    if not os.access(SSHD, os.X_OK):
        missing.append(f"{SSHD} (apt-get install openssh-server)")
    for kind in ("net", "mnt", "pid", "uts", "ipc"):
        if not os.path.exists(f"/proc/self/ns/{kind}"):
            missing.append(f"kernel support for {kind} namespaces")
    return missing


def _require():
    missing = missing_requirements()
    if missing:
        raise ClusterUnavailable("the multi-node test bed cannot run here; missing: " + "; ".join(missing))


# ---------------------------------------------------------------- state

def _state_dir(cid):
    return os.path.join(BASE_DIR, cid)


def _load_state(cid):
    try:
        with open(os.path.join(_state_dir(cid), "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _save_state(state):
    path = os.path.join(_state_dir(state["id"]), "state.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)


class _Lock:
    """The machine-wide lock held while clusters are named and swept."""

    def __enter__(self):
        os.makedirs(BASE_DIR, mode=0o755, exist_ok=True)
        self.fd = os.open(os.path.join(BASE_DIR, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _owner_alive(state):
    owner = state.get("owner")
    if owner is None:  # detached: alive while any node is
        return any(n and _alive(n["pid"], n["start"]) for n in state.get("inits", []))
    return _alive(owner["pid"], owner["start"])


def _links():
    """Names of the host's interfaces."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def _cluster_links(cid, links=None):
    links = _links() if links is None else links
    pat = re.compile(rf"^{PREFIX}-{re.escape(cid)}(-\d+)?$")
    return [n for n in links if pat.match(n)]


def _ip_batch(commands, force=False):
    if not commands:
        return subprocess.CompletedProcess([], 0, "", "")
    args = ["ip"] + (["-force"] if force else []) + ["-batch", "-"]
    r = subprocess.run(args, input="\n".join(commands) + "\n", capture_output=True, text=True)
    if r.returncode != 0 and not force:
        raise ClusterError(f"ip failed: {r.stderr.strip()}")
    return r


def _init_processes():
    """(host pid, cluster id) of every test bed init running on this machine."""
    found = []
    for pid in _pids():
        cmd = _cmdline(pid)
        # The init is pid 1 of its namespace; `unshare`, its parent, has the
        # same arguments but must live to reap it.
        if cmd and f"{os.path.basename(SCRIPT)} _init " in cmd and _ns_pid(pid) == 1:
            parts = cmd.split()
            try:
                state_dir = parts[parts.index("_init") + 1]
            except (ValueError, IndexError):
                continue
            found.append((pid, os.path.basename(state_dir)))
    return found


def _teardown(state, poll=None, timeout=30.0):
    """Remove everything of a cluster named in `state`; raise if some is left."""
    cid = state["id"]
    inits = [(n["pid"], n["start"]) for n in state.get("inits", []) if n]
    inits += [(pid, _start_time(pid)) for pid, c in _init_processes() if c == cid]
    inits = [(pid, start) for pid, start in set(inits) if start is not None and not _gone(pid, start)]
    for pid, start in inits:
        if _alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stuck = _wait_exit(inits, timeout, poll)
    links = _cluster_links(cid)
    # The host ends of the veths (each takes its pair with it), then the bridge.
    _ip_batch([f"link del {n}" for n in sorted(links, key=len, reverse=True)], force=True)
    left_links = _cluster_links(cid)
    problems = []
    if stuck:
        problems.append(f"processes {[p for p, _ in stuck]} did not end within {timeout:.0f} s")
    if left_links:
        problems.append(f"interfaces {left_links} could not be removed")
    if problems:
        raise ClusterError(f"cluster {cid}: " + "; ".join(problems))
    shutil.rmtree(_state_dir(cid), ignore_errors=True)


def remove_stale():
    """Remove every cluster whose owner is gone; return their ids.

    A cluster is stale when the process that made it has died (library use),
    or when it was detached and none of its nodes runs any more; also swept:
    state directories without a state file, test bed interfaces and inits of
    no known cluster.
    """
    removed = []
    if not os.path.isdir(BASE_DIR):
        return removed
    with _Lock():
        ids = [n for n in os.listdir(BASE_DIR) if ID_RE.match(n)]
        for cid in ids:
            state = _load_state(cid)
            if state is None:
                state = {"id": cid, "inits": []}
            elif _owner_alive(state):
                continue
            _teardown(state)
            removed.append(cid)
        known = {n for n in os.listdir(BASE_DIR) if ID_RE.match(n)}
        orphans = {}
        for pid, cid in _init_processes():
            if cid not in known:
                orphans.setdefault(cid, {"id": cid, "inits": []})
        for name in _links():
            m = re.match(rf"^{PREFIX}-([a-z0-9]{{1,7}})(-\d+)?$", name)
            if m and m.group(1) not in known:
                orphans.setdefault(m.group(1), {"id": m.group(1), "inits": []})
        for cid, state in orphans.items():
            _teardown(state)
            removed.append(cid)
    return sorted(set(removed))


def _host_networks():
    nets = []
    for args in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        out = subprocess.run(args, capture_output=True, text=True).stdout
        for token in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", out):
            try:
                net = ipaddress.ip_network(token, strict=False)
            except ValueError:
                continue
            if net.prefixlen > 0:
                nets.append(net)
    return nets


def _pick_subnet(cid):
    """A 10.A.B.0/24 derived from the id, free on this host and among clusters."""
    used = set()
    for other in os.listdir(BASE_DIR):
        st = _load_state(other) if ID_RE.match(other) else None
        if st and st.get("subnet"):
            used.add(st["subnet"])
    host = _host_networks()
    space = 50 * 256
    start = int.from_bytes(hashlib.sha256(cid.encode()).digest()[:4], "big") % space
    for k in range(space):
        n = (start + k) % space
        subnet = f"10.{150 + n // 256}.{n % 256}"
        net = ipaddress.ip_network(f"{subnet}.0/24")
        if subnet not in used and not any(net.overlaps(h) for h in host):
            return subnet
    raise ClusterError("no free /24 left in 10.150.0.0-10.199.255.0")


# ---------------------------------------------------------------- the cluster

class Cluster:
    """N nodes on this machine; see the module docstring.

    ``Cluster(nodes=3, id=None, prefix="node", private_tmp=True,
    timeout=60)``: ``id`` (1-7 of ``[a-z0-9]``) names the cluster, a random
    one by default; ``detach=True`` keeps it running after this process
    ends (the command line's ``up``).
    """

    def __init__(self, nodes=3, *, id=None, prefix="node", private_tmp=True, timeout=60.0, detach=False):
        _require()
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be between 1 and {MAX_NODES}, not {nodes}")
        if id is not None and not ID_RE.match(id):
            raise ValueError(f"cluster id {id!r}: 1 to 7 characters of [a-z0-9]")
        if not NAME_RE.match(prefix):
            raise ValueError(f"host name prefix {prefix!r}: a lowercase letter, then [a-z0-9-]")
        self._popens = []
        self._unshares = {}
        self._control = {}
        self._closed = False
        remove_stale()
        with _Lock():
            if id is None:
                while True:
                    id = "t" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(5))
                    if not os.path.exists(_state_dir(id)):
                        break
            elif os.path.exists(_state_dir(id)):
                other = _load_state(id) or {}
                raise ClusterError(f"a cluster {id!r} exists already (owner {other.get('owner') or 'detached'}); "
                                   f"remove it with: python3 {SCRIPT} down --id {id}")
            me = os.getpid()
            self._state = {
                "id": id, "nodes": nodes, "prefix": prefix, "subnet": _pick_subnet(id),
                "owner": None if detach else {"pid": me, "start": _start_time(me)},
                "private_tmp": bool(private_tmp), "created": time.time(),
                "inits": [None] * nodes, "sshd": [None] * nodes,
            }
            os.makedirs(self.state_dir, mode=0o755)
            _save_state(self._state)
        self._finalizer = weakref.finalize(self, Cluster._finalize, self._state, self._popens, self._unshares,
                                           self._control, os.getpid())
        try:
            self._prepare_files()
            self._start(list(range(nodes)), timeout, new_bridge=True)
            if detach:
                self._detach()
        except BaseException as e:
            try:
                self.down()
            except ClusterError as cleanup:
                e.add_note(f"and removing the half-made cluster failed: {cleanup}")
            raise

    # -- identity

    @property
    def id(self):
        return self._state["id"]

    @property
    def state_dir(self):
        return _state_dir(self.id)

    @property
    def shared(self):
        """A directory every node and the host see; gone with the cluster."""
        return os.path.join(self.state_dir, "shared")

    @property
    def ssh_dir(self):
        """The cluster's ``~/.ssh`` as every node sees it."""
        return os.path.join(self.state_dir, "ssh")

    @property
    def names(self):
        return [f"{self._state['prefix']}{k + 1}" for k in range(self._state["nodes"])]

    @property
    def hostlist(self):
        return ",".join(self.names)

    @property
    def subnet(self):
        return f"{self._state['subnet']}.0/24"

    @property
    def bridge(self):
        return f"{PREFIX}-{self.id}"

    def __len__(self):
        return self._state["nodes"]

    def index(self, name):
        """The 0-based index of a node name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ClusterError(f"cluster {self.id} has no node {name!r} (nodes: {self.hostlist})") from None

    def address(self, i):
        self._node(i)
        return f"{self._state['subnet']}.{i + 1}"

    def veth(self, i):
        """The host end of node i's link (on the bridge)."""
        self._node(i)
        return f"{PREFIX}-{self.id}-{i + 1}"

    def mac(self, i):
        """Node i's MAC address: fixed, like a machine's, so that a restarted
        node is found again at once by its peers' ARP caches."""
        a, b, k = (int(x) for x in self.address(i).split(".")[1:])
        return f"02:64:74:{a:02x}:{b:02x}:{k:02x}"

    def init_pid(self, i):
        """The host pid of node i's init (its pid 1)."""
        return self._live(i)["pid"]

    def alive(self, i):
        n = self._state["inits"][self._node(i)]
        return bool(n) and _alive(n["pid"], n["start"])

    def _node(self, i):
        if not isinstance(i, int) or not 0 <= i < len(self):
            raise IndexError(f"node index {i!r} out of range 0..{len(self) - 1}")
        return i

    def _live(self, i):
        if self._closed:
            raise ClusterError(f"cluster {self.id} is down")
        n = self._state["inits"][self._node(i)]
        if not n or not _alive(n["pid"], n["start"]):
            raise ClusterError(f"{self.names[i]} of cluster {self.id} is not running")
        return n

    # -- bring-up

    def _prepare_files(self):
        st = self._state
        os.makedirs(self.shared, mode=0o1777)
        os.chmod(self.shared, 0o1777)
        os.makedirs(self.ssh_dir, mode=0o700)
        keygens = [subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"dragon-testbed-{self.id}",
                                     "-f", os.path.join(self.ssh_dir, "id_ed25519")],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
        for k, name in enumerate(self.names):
            d = os.path.join(self.state_dir, name)
            os.makedirs(os.path.join(d, "sys"))
            keygens.append(subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                                             "-f", os.path.join(d, "ssh_host_ed25519_key")],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for p in keygens:
            out = p.communicate()[0]
            if p.returncode != 0:
                raise ClusterError(f"ssh-keygen failed: {out.decode(errors='replace').strip()}")
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        known = []
        for k, name in enumerate(self.names):
            addr = self.address(k)
            hosts.append(f"{addr}\t{name}")
            with open(os.path.join(self.state_dir, name, "ssh_host_ed25519_key.pub")) as f:
                key = " ".join(f.read().split()[:2])
            known.append(f"{name},{addr} {key}")
        with open(os.path.join(self.ssh_dir, "id_ed25519.pub")) as f:
            pub = f.read()

        def write(path, text, mode=0o644):
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, mode)

        write(os.path.join(self.ssh_dir, "authorized_keys"), pub, 0o600)
        write(os.path.join(self.ssh_dir, "known_hosts"), "\n".join(known) + "\n", 0o600)
        write(os.path.join(self.ssh_dir, "config"),
              "# Written by the dragon test bed for this cluster only.\n"
              "Host *\n"
              "    StrictHostKeyChecking accept-new\n"
              "    NoHostAuthenticationForLocalhost yes\n"
              "    LogLevel ERROR\n", 0o600)
        home = pwd.getpwuid(os.getuid()).pw_dir
        keep = []
        for p in sorted({os.path.dirname(os.path.dirname(SCRIPT)), sys.prefix, sys.base_prefix,
                         os.path.dirname(os.path.realpath(sys.executable))}, key=len):
            p = os.path.realpath(p)
            if p.startswith("/tmp/") and not any(p == k or p.startswith(k + "/") for k in keep):
                keep.append(p)
        for k, name in enumerate(self.names):
            d = os.path.join(self.state_dir, name)
            write(os.path.join(d, "hosts"), "\n".join(hosts) + "\n")
            write(os.path.join(d, "hostname"), name + "\n")
            write(os.path.join(d, "sshd_config"), "\n".join([
                "# sshd of one test bed node: key authentication only.",
                f"Port {SSH_PORT}",  # on every address of the node, its loopback too
                "ListenAddress 0.0.0.0",
                "ListenAddress ::",
                f"HostKey {d}/ssh_host_ed25519_key",
                f"PidFile {d}/sshd.pid",
                "AuthenticationMethods publickey",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "X11Forwarding no",
                "MaxStartups 256",
                "MaxSessions 256",
                "ClientAliveInterval 5",
                "ClientAliveCountMax 3",
                "LogLevel INFO",
                "Subsystem sftp internal-sftp",
            ]) + "\n")
            with open(os.path.join(d, "node.json"), "w") as f:
                json.dump({"name": name, "address": self.address(k), "prefixlen": 24, "path": os.environ.get(
                    "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
                           "private_tmp": st["private_tmp"], "keep": keep, "home": home, "ssh_dir": self.ssh_dir,
                           "lifeline": st["owner"] is not None}, f)
        if not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def _start(self, indices, timeout, new_bridge):
        """Start the inits of `indices`, link them to the bridge, wait for sshd."""
        deadline = time.monotonic() + timeout
        reports = {}
        for i in indices:
            name = self.names[i]
            ctl_r, ctl_w = os.pipe()
            rep_r, rep_w = os.pipe()
            log = open(os.path.join(self.state_dir, name, "log"), "ab")
            try:
                cmd = ["unshare", "--net", "--mount", "--uts", "--ipc", "--pid", "--kill-child",
                       "--propagation", "private",
                       sys.executable, "-I", "-S", SCRIPT, "_init", self.state_dir, name, str(ctl_r), str(rep_w)]
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     pass_fds=(ctl_r, rep_w), start_new_session=True)
            finally:
                log.close()
                os.close(ctl_r)
                os.close(rep_w)
            self._unshares[i] = p
            self._control[i] = ctl_w
            reports[i] = _Reader(rep_r)
        try:
            got = self._collect(reports, "pid", deadline)
            for i, words in got.items():
                self._state["inits"][i] = {"pid": int(words[0]), "start": int(words[1])}
            _save_state(self._state)
            cmds = []
            if new_bridge:
                cmds += [f"link add {self.bridge} type bridge", f"link set {self.bridge} up"]
            for i in indices:
                cmds += [f"link add {self.veth(i)} type veth peer name eth0 address {self.mac(i)} "
                         f"netns {self._state['inits'][i]['pid']}",
                         f"link set {self.veth(i)} master {self.bridge} up"]
            _ip_batch(cmds)
            for i in indices:
                os.write(self._control[i], b"go\n")
            got = self._collect(reports, "ready", deadline)
            for i, words in got.items():
                self._state["sshd"][i] = int(words[0])
            _save_state(self._state)
        finally:
            for r in reports.values():
                r.close()
        self._check_links(indices, deadline)

    def _collect(self, reports, word, deadline):
        """Wait for every node's `word ...` report line; raise on error or EOF."""
        got = {}
        while len(got) < len(reports):
            pending = {r.fd: i for i, r in reports.items() if i not in got}
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(self.names[i] for i in pending.values())
                raise ClusterError(f"cluster {self.id}: no '{word}' from {names} in time{self._logs(pending.values())}")
            ready, _, _ = select.select(list(pending), [], [], left)
            for fd in ready:
                i = pending[fd]
                line = reports[i].line()
                if line is None:
                    continue
                parts = line.split()
                if not parts:
                    raise ClusterError(f"{self.names[i]} of cluster {self.id} ended during start-up"
                                       f"{self._logs([i])}")
                if parts[0] == "error":
                    raise ClusterError(f"{self.names[i]} of cluster {self.id}: {line[6:]}{self._logs([i])}")
                if parts[0] == word:
                    got[i] = parts[1:]
        return got

    def _logs(self, indices):
        text = []
        for i in indices:
            try:
                with open(os.path.join(self.state_dir, self.names[i], "log"), errors="replace") as f:
                    tail = f.read()[-2000:].strip()
            except OSError:
                tail = ""
            if tail:
                text.append(f"\n--- {self.names[i]} log:\n{tail}")
        return "".join(text)

    def _check_links(self, indices, deadline):
        """Every node's sshd is reached from another node over the bridge."""
        others = [k for k in range(len(self)) if k not in indices and self.alive(k)]
        src = others[0] if others else indices[0]
        targets = [self.address(i) for i in indices]

        def probe():
            failed = []
            for addr in targets:
                while True:
                    try:
                        with socket.create_connection((addr, SSH_PORT), timeout=max(0.1, deadline - time.monotonic())):
                            break
                    except OSError as e:
                        if time.monotonic() >= deadline:
                            failed.append(f"{addr}: {e}")
                            break
                        time.sleep(0.05)
            return failed

        failed = self._in_namespaces(src, probe, CLONE_NEWNET)
        if failed:
            raise ClusterError(
                f"cluster {self.id}: {self.names[src]} cannot reach sshd of {failed} over the bridge "
                f"{self.bridge}. If br_netfilter is loaded with host firewall rules, bridged traffic may be "
                f"dropped (sysctl net.bridge.bridge-nf-call-iptables=0).")

    def _detach(self):
        """Let the nodes outlive this process (command line `up`)."""
        for fd in self._control.values():
            os.close(fd)
        self._control.clear()
        self._unshares.clear()
        self._finalizer.detach()
        self._finalizer = None

    @classmethod
    def attach(cls, cid):
        """A handle on a running cluster made elsewhere (``up`` on the command line)."""
        _require()
        state = _load_state(cid)
        if state is None:
            raise ClusterError(f"no cluster {cid!r} on this machine (status lists them)")
        self = cls.__new__(cls)
        self._state = state
        self._popens, self._unshares, self._control = [], {}, {}
        self._closed = False
        self._finalizer = None
        return self

    # -- running things in nodes

    def _in_namespaces(self, i, fn, kinds=CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID):
        """Call fn() on a fresh thread that has entered node i's namespaces.

        Entering the PID namespace sets it for the thread's children only; the
        mount namespace cannot be entered by one thread of a process (nsenter
        does it in the child).
        """
        pid = self._live(i)["pid"]
        box = {}

        def body():
            try:
                for flag, kind in ((CLONE_NEWNET, "net"), (CLONE_NEWUTS, "uts"), (CLONE_NEWIPC, "ipc"),
                                   (CLONE_NEWPID, "pid")):
                    if kinds & flag:
                        _setns(f"/proc/{pid}/ns/{kind}", flag)
                box["value"] = fn()
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e

        t = threading.Thread(target=body, name=f"testbed-{self.names[i]}")
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def popen(self, i, args, **kwargs):
        """subprocess.Popen of `args` inside node i (see the module docstring)."""
        init = self._live(i)["pid"]
        if kwargs.pop("shell", False):
            args = ["/bin/sh", "-c", args if isinstance(args, str) else " ".join(args)]
        elif isinstance(args, (str, bytes, os.PathLike)):
            args = [args]
        cwd = kwargs.pop("cwd", None)
        if cwd is None:
            here = os.getcwd()
            cwd = here if os.path.isdir(f"/proc/{init}/root{here}") else "/"
        cmd = ["nsenter", f"--mount=/proc/{init}/ns/mnt", f"--wdns={os.fspath(cwd)}", "--", *map(os.fspath, args)]
        self._reap()
        p = self._in_namespaces(i, lambda: subprocess.Popen(cmd, **kwargs))
        self._popens.append(p)
        return p

    def run(self, i, args, *, input=None, timeout=None, check=False, **kwargs):
        """subprocess.run of `args` inside node i; text output captured by default."""
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        if kwargs.pop("capture_output", False):
            kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
        if not any(k in kwargs for k in ("text", "universal_newlines", "encoding", "errors")):
            kwargs["text"] = True
        if input is not None:
            kwargs["stdin"] = subprocess.PIPE
        elif "stdin" not in kwargs:
            kwargs["stdin"] = subprocess.DEVNULL
        with self.popen(i, args, **kwargs) as p:
            try:
                out, err = p.communicate(input, timeout=timeout)
            except BaseException:
                p.kill()
                p.wait()
                raise
        r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        if check:
            r.check_returncode()
        return r

    def _reap(self):
        self._popens[:] = [p for p in self._popens if p.poll() is None]

    # -- observing nodes

    def shm_files(self, i):
        """Names in node i's /dev/shm (empty when the node is not running)."""
        n = self._state["inits"][self._node(i)]
        if not n or not _alive(n["pid"], n["start"]):
            return []
        try:
            return sorted(os.listdir(f"/proc/{n['pid']}/root/dev/shm"))
        except FileNotFoundError:
            return []

    def processes(self, i):
        """(host pid, cmdline) of node i's processes but its init and listening sshd."""
        n = self._state["inits"][self._node(i)]
        if not n or not _alive(n["pid"], n["start"]):
            return []
        ns = _ns_link(n["pid"], "pid")
        sshd = self._state["sshd"][i]
        found = []
        for pid in _pids():
            if pid == n["pid"] or _ns_link(pid, "pid") != ns:
                continue
            if sshd is not None and _ns_pid(pid) == sshd:
                continue
            cmd = _cmdline(pid)
            if cmd is not None:
                found.append((pid, cmd))
        return found

    def wait_clean(self, i, timeout=10.0):
        """Wait until node i has no processes (but init, sshd) and no /dev/shm files.

        Returns the :class:`Leftovers` seen last: falsy when the node is clean.
        """
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            self._reap()
            left = Leftovers(self.processes(i), self.shm_files(i))
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)

    # -- faults

    def cut(self, i):
        """Take node i's link down (the host end of its veth, on the bridge)."""
        self._live(i)
        _ip_batch([f"link set {self.veth(i)} down"])

    def restore(self, i):
        """Bring node i's link back up."""
        self._live(i)
        _ip_batch([f"link set {self.veth(i)} up"])

    def kill_node(self, i, timeout=30.0):
        """SIGKILL node i's init: every process of the node ends with it."""
        n = self._live(i)
        try:
            os.kill(n["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        stuck = _wait_exit([(n["pid"], n["start"])], timeout, self._reap)
        if stuck:
            raise ClusterError(f"{self.names[i]} (init {n['pid']}) did not end within {timeout:.0f} s")
        p = self._unshares.pop(i, None)
        if p is not None:
            p.wait()
        fd = self._control.pop(i, None)
        if fd is not None:
            os.close(fd)
        self._state["inits"][i] = None
        self._state["sshd"][i] = None
        _save_state(self._state)
        _ip_batch([f"link del {self.veth(i)}"], force=True)

    def restart_node(self, i, timeout=60.0):
        """Start node i again after kill_node: same name, address and keys."""
        if self._closed:
            raise ClusterError(f"cluster {self.id} is down")
        if self.alive(i):
            raise ClusterError(f"{self.names[i]} of cluster {self.id} is running")
        self._start([i], timeout, new_bridge=False)

    # -- teardown

    @staticmethod
    def _finalize(state, popens, unshares, control, owner):
        if os.getpid() != owner:  # a forked child: the cluster is not its own
            return

        def reap():
            popens[:] = [p for p in popens if p.poll() is None]
            for p in unshares.values():
                p.poll()

        for fd in control.values():
            os.close(fd)
        control.clear()
        try:
            _teardown(state, poll=reap)
        finally:
            for p in unshares.values():
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            unshares.clear()

    def down(self):
        """Remove the cluster: processes, namespaces, links, bridge, state."""
        if self._closed:
            return
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()
        else:  # detached or attached: tear down what the state names
            _teardown(self._state, poll=self._reap)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()

    def __repr__(self):
        return f"<Cluster {self.id}: {self.hostlist} on {self.subnet}>"


class _Reader:
    """Line reader over a pipe, for select loops."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""
        self.eof = False

    def line(self):
        """A complete line if one is buffered after one read, '' at EOF, else None."""
        if b"\n" not in self.buf and not self.eof:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.eof = True
            self.buf += chunk
        if b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            return line.decode(errors="replace")
        return "" if self.eof else None

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------- node init

def _node_init(state_dir, name, ctl_fd, rep_fd):
    """pid 1 of a node: set the node up, run sshd, reap orphans."""
    # As pid 1 of its namespace the init gets no signal from inside the node
    # that it does not handle; SIGINT is set back to its default so that it
    # does not raise KeyboardInterrupt here. (Ignoring signals would pass
    # the ignoring on to every process of the node.)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    def report(text):
        os.write(rep_fd, (text + "\n").encode())

    def log(text):
        print(f"[{time.strftime('%H:%M:%S')} {name} init] {text}", file=sys.stderr, flush=True)

    try:
        node_dir = os.path.join(state_dir, name)
        with open(os.path.join(node_dir, "node.json")) as f:
            cfg = json.load(f)
        with open("/proc/self/status") as f:  # the host's /proc still: host pid first
            host_pid = int(next(line for line in f if line.startswith("NSpid:")).split()[1])
        report(f"pid {host_pid} {_start_time(host_pid)}")
        _setup_mounts(cfg, node_dir)
        _sethostname(name)
        if os.read(ctl_fd, 16) != b"go\n":
            log("the cluster's owner went away during start-up")
            os._exit(1)
        r = subprocess.run(["ip", "-batch", "-"], capture_output=True, text=True, input="\n".join([
            "link set lo up",
            f"addr add {cfg['address']}/{cfg['prefixlen']} dev eth0",
            "link set eth0 up",
        ]) + "\n")
        if r.returncode != 0:
            raise RuntimeError(f"network set-up failed: {r.stderr.strip()}")
        sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", os.path.join(node_dir, "sshd_config")],
                                stdin=subprocess.DEVNULL)
        delay, deadline = 0.002, time.monotonic() + 300
        while True:
            try:
                with socket.create_connection((cfg["address"], SSH_PORT), timeout=5):
                    break
            except OSError as e:
                if sshd.poll() is not None:
                    raise RuntimeError(f"sshd ended with status {sshd.returncode} before accepting connections")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd accepts no connection: {e}")
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        report(f"ready {sshd.pid}")
        os.close(rep_fd)
        log(f"up: {cfg['address']}, sshd pid {sshd.pid}")
    except BaseException as e:
        import traceback
        traceback.print_exc()
        try:
            report(f"error {e}".replace("\n", " "))
        except OSError:
            pass
        os._exit(1)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    watch = [wake_r]
    if cfg["lifeline"]:
        watch.append(ctl_fd)
    else:
        os.close(ctl_fd)
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == sshd.pid:
                log(f"sshd ended ({status:#x})")
        ready, _, _ = select.select(watch, [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        if ctl_fd in ready and not os.read(ctl_fd, 64):
            log("the cluster's owner ended: ending the node")
            os._exit(0)


def _setup_mounts(cfg, node_dir):
    """The node's private view of the filesystem (its own mount namespace)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    if cfg["private_tmp"]:
        # What lives under /tmp and every node must see (the repository and
        # its Python when a checkout is there) is bound back in.
        keep = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in cfg["keep"] if os.path.isdir(p)]
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        for path, fd in keep:
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            os.close(fd)
    _mount(os.path.join(node_dir, "hosts"), "/etc/hosts", None, MS_BIND)
    if os.path.isfile("/etc/hostname"):
        _mount(os.path.join(node_dir, "hostname"), "/etc/hostname", None, MS_BIND)
    # The home directory: a tmpfs showing every entry of the real one through
    # a bind mount, except .ssh, which is the cluster's, and the shell's
    # start-up files, which only set PATH (a node killed while the host's
    # start-up ran could leave its locks or half-written files in the real
    # home). Nothing is written to the real home, whether it has a .ssh or not.
    home = cfg["home"]
    st = os.stat(home)
    real = os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    entries = [(e.name, e.is_symlink(), e.is_dir(follow_symlinks=False)) for e in os.scandir(home)]
    _mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV,
           f"mode={st.st_mode & 0o7777:o},uid={st.st_uid},gid={st.st_gid}")
    for entry, is_link, is_dir in entries:
        if entry == ".ssh" or entry in SHELL_FILES:
            continue
        src, dst = f"/proc/self/fd/{real}/{entry}", os.path.join(home, entry)
        if is_link:
            os.symlink(os.readlink(src), dst)
            continue
        if is_dir:
            os.mkdir(dst)
        else:
            os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o600))
        _mount(src, dst, None, MS_BIND | MS_REC)
    for entry, text in (
            (".bashrc", f"# This node's shell start-up (the host's is not run in the test bed).\n"
                        f"export PATH={shlex.quote(cfg['path'])}\n"),
            (".profile", "[ -f ~/.bashrc ] && . ~/.bashrc\n")):
        with open(os.path.join(home, entry), "w") as f:
            f.write(text)
    os.mkdir(os.path.join(home, ".ssh"), 0o700)
    _mount(cfg["ssh_dir"], os.path.join(home, ".ssh"), None, MS_BIND)
    os.close(real)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # /sys of this network namespace, the cgroup hierarchy moved over from the old one.
    new_sys = os.path.join(node_dir, "sys")
    _mount("sysfs", new_sys, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if os.path.ismount("/sys/fs/cgroup"):
        _mount("/sys/fs/cgroup", os.path.join(new_sys, "fs/cgroup"), None, MS_MOVE)
    _umount("/sys", MNT_DETACH)
    _mount(new_sys, "/sys", None, MS_MOVE)


# ---------------------------------------------------------------- command line

def _status(cid=None):
    if not os.path.isdir(BASE_DIR):
        return []
    rows = []
    for c in sorted(os.listdir(BASE_DIR)):
        if not ID_RE.match(c) or (cid and c != cid):
            continue
        st = _load_state(c)
        if st is None:
            rows.append(f"{c}: no state file (stale)")
            continue
        owner = st.get("owner")
        who = "detached" if owner is None else f"owner pid {owner['pid']}"
        who += "" if _owner_alive(st) else " (gone: stale)"
        rows.append(f"{c}: {st['nodes']} nodes on {st['subnet']}.0/24, bridge {PREFIX}-{c}, {who}")
        for k, n in enumerate(st["inits"]):
            up = "up" if n and _alive(n["pid"], n["start"]) else "down"
            pid = f", init pid {n['pid']}" if n else ""
            rows.append(f"  {st['prefix']}{k + 1}\t{st['subnet']}.{k + 1}\t{up}{pid}")
    return rows


def _measure(nodes, rounds):
    t0 = time.perf_counter()
    c = Cluster(nodes=nodes)
    up = time.perf_counter() - t0
    try:
        script = ("import subprocess, sys, time\n"
                  "ts = []\n"
                  f"for _ in range({rounds}):\n"
                  "    t = time.perf_counter()\n"
                  f"    subprocess.run(['ssh', '-o', 'BatchMode=yes', '{c.names[1 % nodes]}', 'true'], check=True)\n"
                  "    ts.append(time.perf_counter() - t)\n"
                  "ts.sort()\n"
                  "print(ts[len(ts) // 2], ts[0])\n")
        r = c.run(0, [sys.executable, "-c", script], timeout=300, check=True)
        median, best = map(float, r.stdout.split())
        t0 = time.perf_counter()
        c.run(0, ["true"], timeout=60, check=True)
        run_once = time.perf_counter() - t0
    finally:
        t0 = time.perf_counter()
        c.down()
        down = time.perf_counter() - t0
    return {"nodes": nodes, "up_s": round(up, 3), "down_s": round(down, 3),
            "ssh_true_median_ms": round(median * 1e3, 1), "ssh_true_best_ms": round(best * 1e3, 1),
            "run_true_ms": round(run_once * 1e3, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="cluster.py", description="A cluster of namespaced nodes on this machine.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="make a cluster that stays up until `down --id`")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--id", required=True)
    p.add_argument("--prefix", default="node")
    p.add_argument("--shared-tmp", action="store_true", help="nodes share the host's /tmp")
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("down", help="remove a cluster, or every stale one")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--id")
    g.add_argument("--stale", action="store_true")
    p = sub.add_parser("exec", help="run a command on a node: exec ID NODE -- CMD...")
    p.add_argument("id")
    p.add_argument("node")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("status", help="list the clusters of this machine")
    p.add_argument("--id")
    p = sub.add_parser("measure", help="time bring-up, teardown and an ssh round trip")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=20)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["_init"]:
        _node_init(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return 0
    a = ap.parse_args(argv)
    try:
        if a.cmd == "up":
            c = Cluster(a.nodes, id=a.id, prefix=a.prefix, private_tmp=not a.shared_tmp,
                        timeout=a.timeout, detach=True)
            me = os.path.relpath(SCRIPT)
            print(f"cluster {c.id}: {len(c)} nodes on {c.subnet}, bridge {c.bridge}")
            for k, name in enumerate(c.names):
                print(f"  {name}\t{c.address(k)}")
            print(f"enter a node:  python3 {me} exec {c.id} {c.names[0]} -- bash")
            print(f"shared dir:    {c.shared}")
            print(f"remove it:     python3 {me} down --id {c.id}")
        elif a.cmd == "down":
            if a.stale:
                removed = remove_stale()
                print("removed: " + (" ".join(removed) if removed else "nothing"))
            else:
                _require()
                if _load_state(a.id) is None and not _cluster_links(a.id) and not os.path.isdir(_state_dir(a.id)):
                    print(f"no cluster {a.id!r}", file=sys.stderr)
                    return 1
                _teardown(_load_state(a.id) or {"id": a.id, "inits": []})
        elif a.cmd == "exec":
            c = Cluster.attach(a.id)
            i = c.index(a.node)
            init = c._live(i)["pid"]
            cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
            cmd = cmd or ["bash", "-l"]
            wd = os.getcwd() if os.path.isdir(f"/proc/{init}/root{os.getcwd()}") else "/"
            os.execvp("nsenter", ["nsenter", "-t", str(init), "--mount", "--uts", "--ipc", "--net", "--pid",
                                  f"--wdns={wd}", "--", *cmd])
        elif a.cmd == "status":
            rows = _status(a.id)
            print("\n".join(rows) if rows else "no clusters")
        elif a.cmd == "measure":
            print(json.dumps(_measure(a.nodes, a.rounds)))
    except (ClusterError, ValueError) as e:
        print(f"cluster.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
