"""The multi-node test bed (testbed/cluster.py): namespaced nodes with sshd.

Needs root. As another user these tests fail, naming what is missing,
unless DRAGON_SKIP_NETNS=1 is set: then they skip.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cluster as tb  # noqa: E402
from cluster import Cluster, ClusterError  # noqa: E402

pytestmark = pytest.mark.timeout(300)

NS_KINDS = ("net", "mnt", "pid", "uts", "ipc")
SSH = ["ssh", "-o", "BatchMode=yes"]


def require_testbed():
    missing = tb.missing_requirements()
    if missing:
        msg = "the multi-node test bed cannot run here; missing: " + "; ".join(missing)
        if os.environ.get("DRAGON_SKIP_NETNS") == "1":
            pytest.skip(msg)
        pytest.fail(msg + " (run as root, or set DRAGON_SKIP_NETNS=1 to skip these tests)", pytrace=False)


def wait_for(pred, what, timeout=60.0):
    """Poll pred() until it is true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def snapshot(c):
    """What a cluster holds on the host, to check after it is down."""
    inits = [(c.init_pid(i), tb._start_time(c.init_pid(i))) for i in range(len(c)) if c.alive(i)]
    ns = {tb._ns_link(pid, kind) for pid, _ in inits for kind in NS_KINDS}
    links = tb._cluster_links(c.id)
    assert links, "a running cluster has a bridge and veths"
    return {"id": c.id, "inits": inits, "ns": ns - {None}, "links": links, "dir": c.state_dir}


def host_leftovers(snap):
    """Everything of the snapshot's cluster that still exists on the host."""
    left = []
    for pid in tb._pids():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            for kind in NS_KINDS:
                try:
                    link = os.readlink(f"/proc/{pid}/task/{tid}/ns/{kind}")
                except OSError:
                    continue
                if link in snap["ns"]:
                    left.append(f"task {tid} of pid {pid} ({tb._cmdline(pid)}) in {link}")
        cmd = tb._cmdline(pid) or ""
        if snap["dir"] in cmd:
            left.append(f"process {pid}: {cmd}")
    left += [f"init {pid}" for pid, start in snap["inits"] if tb._alive(pid, start)]
    left += [f"interface {n}" for n in tb._cluster_links(snap["id"])]
    if os.path.exists(snap["dir"]):
        left.append(f"directory {snap['dir']}")
    return left


@pytest.fixture(scope="module")
def c():
    require_testbed()
    with Cluster(nodes=3) as cl:
        yield cl
        snap = snapshot(cl)
    assert host_leftovers(snap) == []


def test_three_nodes_come_up(c):
    assert c.names == ["node1", "node2", "node3"]
    assert c.hostlist == "node1,node2,node3"
    addrs = [c.address(i) for i in range(3)]
    assert len(set(addrs)) == 3
    assert all(a.startswith(c.subnet.split(".0/")[0] + ".") for a in addrs)
    assert all(c.alive(i) for i in range(3))
    for i in range(3):
        out = c.run(i, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], timeout=60).stdout
        assert f"inet {addrs[i]}/24" in out


def test_hostname_is_the_node_name(c):
    for i, name in enumerate(c.names):
        r = c.run(i, ["sh", "-c", "hostname; uname -n; cat /etc/hostname"], timeout=60)
        assert r.stdout.split() == [name, name, name], r


def test_ssh_from_every_node_to_every_node(c):
    home_ssh = os.path.expanduser("~root/.ssh")
    before = sorted(os.listdir(home_ssh)) if os.path.isdir(home_ssh) else os.path.lexists(home_ssh)
    loop = "for h in " + " ".join(c.names) + "; do ssh -o BatchMode=yes $h hostname || exit 1; done"
    for i in range(3):
        r = c.run(i, ["sh", "-c", loop], timeout=120)
        assert r.returncode == 0, r
        assert r.stdout.split() == c.names, r
    # By address too (known_hosts names both), to itself, and no password is ever asked.
    r = c.run(0, SSH + [c.address(2), "hostname"], timeout=60)
    assert r.stdout.strip() == "node3", r
    for i in (1, 2):
        r = c.run(i, SSH + ["localhost", "hostname"], timeout=60)
        assert r.stdout.strip() == c.names[i], r
    r = c.run(0, SSH + ["-o", "PubkeyAuthentication=no", "node2", "true"], timeout=60)
    assert r.returncode == 255 and "Permission denied" in r.stderr, r
    # The host's own ~/.ssh is untouched.
    after = sorted(os.listdir(home_ssh)) if os.path.isdir(home_ssh) else os.path.lexists(home_ssh)
    assert after == before


def test_shm_and_tmp_are_private_the_shared_dir_is_not(c):
    name = f"dtb-test-{secrets.token_hex(4)}"
    host_file = f"/dev/shm/{name}-host"
    open(host_file, "w").close()
    try:
        c.run(0, ["sh", "-c", f"echo x > /dev/shm/{name}; echo y > /tmp/{name}"], timeout=60, check=True)
        assert name in c.shm_files(0)
        assert name not in c.shm_files(1) and name not in c.shm_files(2)
        assert not os.path.exists(f"/dev/shm/{name}") and not os.path.exists(f"/tmp/{name}")
        for i in (1, 2):
            r = c.run(i, ["sh", "-c", f"test -e /dev/shm/{name} || test -e /tmp/{name} || "
                                      f"test -e {host_file} || echo absent"], timeout=60)
            assert r.stdout.strip() == "absent", r
        with open(os.path.join(c.shared, name), "w") as f:
            f.write("shared")
        for i in range(3):
            assert c.run(i, ["cat", os.path.join(c.shared, name)], timeout=60).stdout == "shared"
        os.unlink(os.path.join(c.shared, name))
        c.run(0, ["rm", f"/dev/shm/{name}", f"/tmp/{name}"], timeout=60, check=True)
        assert not c.wait_clean(0, timeout=30)
    finally:
        os.unlink(host_file)


def test_pid_1_is_the_init_and_pids_coincide(c):
    inits = [c.init_pid(i) for i in range(3)]
    assert len(set(inits)) == 3
    for i, name in enumerate(c.names):
        assert tb._ns_pid(inits[i]) == 1  # pid 1 in every node: three processes
        cmd = c.run(i, ["cat", "/proc/1/cmdline"], timeout=60).stdout.split("\0")
        assert "_init" in cmd and name in cmd and cmd[cmd.index("_init") - 1] == tb.SCRIPT
    marker = str(900000 + secrets.randbelow(99999))
    p = c.popen(1, ["sleep", marker])
    try:
        # Popen.pid is the command's own host pid (nsenter execs it in place).
        wait_for(lambda: tb._cmdline(p.pid) == f"sleep {marker}", "nsenter to exec sleep")
        nspid = tb._ns_pid(p.pid)
        assert nspid != p.pid
        assert (p.pid, f"sleep {marker}") in c.processes(1)
        listing = "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"
        assert f"sleep {marker}" in c.run(1, ["sh", "-c", listing], timeout=60).stdout
        assert f"sleep {marker}" not in c.run(0, ["sh", "-c", listing], timeout=60).stdout
        assert all(pid != p.pid for pid, _ in c.processes(0))
        p.terminate()  # reaches sleep itself
        assert p.wait(timeout=60) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()
    assert not c.wait_clean(1, timeout=30)


def test_run_options(c):
    env = {"PATH": os.environ["PATH"], "FOO": "bar"}
    r = c.run(2, ["sh", "-c", "echo $FOO; pwd; cat; echo err >&2; exit 3"], env=env, cwd="/etc",
              input="data\n", timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (3, "bar\n/etc\ndata\n", "err\n")
    with pytest.raises(subprocess.CalledProcessError):
        c.run(2, ["false"], timeout=60, check=True)
    assert c.run(2, "echo $((6 * 7))", shell=True, timeout=60).stdout == "42\n"
    r = c.run(2, ["no-such-command-here"], timeout=60)
    assert r.returncode == 127 and "no-such-command-here" in r.stderr
    with pytest.raises(IndexError):
        c.run(3, ["true"])


SERVER = """
import socket, sys, threading
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    threading.Thread(target=echo, args=(srv.accept()[0],), daemon=True).start()
"""

CLIENT = """
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
kept = None
for line in sys.stdin:
    cmd, *arg = line.split()
    try:
        if cmd == "probe":  # a new connection and one echo, within arg[0] seconds
            with socket.create_connection((addr, port), timeout=float(arg[0])) as s:
                s.sendall(b"ping")
                print("ok" if s.recv(4) == b"ping" else "bad")
        elif cmd == "open":
            kept = socket.create_connection((addr, port), timeout=30)
            print("ok")
        elif cmd == "send":
            kept.sendall(arg[0].encode())
            print("ok")
        elif cmd == "recv":  # arg[0] bytes within arg[1] seconds
            kept.settimeout(float(arg[1]))
            data = b""
            while len(data) < int(arg[0]):
                chunk = kept.recv(65536)
                if not chunk:
                    raise EOFError("closed")
                data += chunk
            print("got", data.decode())
    except (OSError, EOFError) as e:
        print("fail", type(e).__name__, e)
    sys.stdout.flush()
"""


def test_tcp_between_nodes_and_cut(c):
    for name, text in (("server.py", SERVER), ("client.py", CLIENT)):
        with open(os.path.join(c.shared, name), "w") as f:
            f.write(text)
    server = c.popen(1, [sys.executable, os.path.join(c.shared, "server.py"), c.address(1)],
                     stdout=subprocess.PIPE, text=True)
    client = None
    try:
        port = server.stdout.readline().strip()
        assert port.isdigit(), port
        client = c.popen(0, [sys.executable, os.path.join(c.shared, "client.py"), c.address(1), port],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

        def ask(line):
            client.stdin.write(line + "\n")
            client.stdin.flush()
            return client.stdout.readline().strip()

        assert ask("probe 30") == "ok"
        assert ask("open") == "ok"
        assert ask("send hello") == "ok"
        assert ask("recv 5 30") == "got hello"
        c.cut(1)
        assert ask("probe 2").startswith("fail")  # no new connection
        assert ask("send during") == "ok"  # buffered by TCP
        assert ask("recv 6 1").startswith("fail TimeoutError")  # nothing gets through
        c.restore(1)
        assert ask("recv 6 120") == "got during"  # retransmitted once the link is back
        wait_for(lambda: ask("probe 5") == "ok", "a new connection after restore", timeout=120)
    finally:
        c.restore(1)
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait()
    for i in (0, 1):
        assert not c.wait_clean(i, timeout=30)


def test_kill_node_leaves_no_process_and_restart():
    require_testbed()
    with Cluster(nodes=2) as c:
        c.popen(1, ["sh", "-c", "trap '' TERM; sleep 1001 & sleep 1002 & wait"], start_new_session=True)
        ssh = c.popen(0, SSH + ["node2", "sleep 1003"], stdin=subprocess.DEVNULL)
        c.run(1, ["sh", "-c", "echo x > /dev/shm/dtb-kill-test"], timeout=60, check=True)

        def sleeping():
            cmds = [cmd for _, cmd in c.processes(1)]
            return all(any(f"sleep {n}" in cmd for cmd in cmds) for n in (1001, 1002, 1003))

        wait_for(sleeping, "the sleeps on node2")
        pidns = tb._ns_link(c.init_pid(1), "pid")
        pids = [pid for pid, _ in c.processes(1)] + [c.init_pid(1)]
        veth = c.veth(1)
        c.kill_node(1)
        assert not c.alive(1)
        in_ns = [pid for pid in tb._pids() if tb._ns_link(pid, "pid") == pidns]
        assert in_ns == []
        assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []
        assert c.processes(1) == [] and c.shm_files(1) == []
        assert veth not in tb._links()
        with pytest.raises(ClusterError, match="not running"):
            c.run(1, ["true"])
        assert c.run(0, ["hostname"], timeout=60).stdout.strip() == "node1"
        ssh.kill()
        ssh.wait()
        assert not c.wait_clean(0, timeout=30)
        c.restart_node(1)  # same name, address and host key: ssh works again
        r = c.run(0, SSH + ["node2", "hostname"], timeout=60)
        assert r.stdout.strip() == "node2", r
        snap = snapshot(c)
    assert host_leftovers(snap) == []


@pytest.mark.parametrize("how", ["normal", "exception"])
def test_down_leaves_nothing(how):
    require_testbed()

    class Boom(Exception):
        pass

    snap = None
    name = f"dtb-down-{secrets.token_hex(4)}"
    with pytest.raises(Boom) if how == "exception" else _nothing():
        with Cluster(nodes=3) as c:
            for i in range(3):
                c.run(i, ["sh", "-c", f"echo x > /dev/shm/{name}; "
                                      "setsid sleep 1000 </dev/null >/dev/null 2>&1 &"], timeout=60, check=True)
            c.popen(0, SSH + ["node3", "sleep 1004"], stdin=subprocess.DEVNULL)  # left running, unreaped
            wait_for(lambda: any("sleep 1004" in cmd for _, cmd in c.processes(2)), "the ssh session on node3")
            assert all(name in c.shm_files(i) for i in range(3))
            snap = snapshot(c)
            if how == "exception":
                raise Boom
    assert host_leftovers(snap) == []


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


CRASH = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from cluster import Cluster
c = Cluster(nodes=2)
print(c.id, flush=True)
sys.stdin.read()  # ends when the test closes it
os.kill(os.getpid(), signal.SIGKILL)
"""


def crashed_cluster():
    """A cluster whose owner was SIGKILLed: its nodes end, bridge and state stay."""
    p = subprocess.Popen([sys.executable, "-c", CRASH, HERE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    cid = p.stdout.readline().strip()
    assert cid, "the crashing owner did not make its cluster"
    state = tb._load_state(cid)
    inits = [(n["pid"], n["start"]) for n in state["inits"]]
    p.stdin.close()
    assert p.wait(timeout=60) == -signal.SIGKILL
    # The nodes end on their own (their init held a pipe from the owner).
    assert tb._wait_exit(inits, 60) == []
    assert tb._cluster_links(cid) and os.path.isdir(tb._state_dir(cid))
    return {"id": cid, "inits": inits, "ns": set(), "links": [], "dir": tb._state_dir(cid)}


def test_stale_clusters_are_removed():
    require_testbed()
    first = crashed_cluster()
    with Cluster(nodes=1) as c:  # bring-up sweeps stale clusters
        assert host_leftovers(first) == []
        assert c.run(0, ["hostname"], timeout=60).stdout.strip() == "node1"
    second = crashed_cluster()
    r = subprocess.run([sys.executable, tb.SCRIPT, "status", "--id", second["id"]], capture_output=True, text=True)
    assert "stale" in r.stdout, r
    r = subprocess.run([sys.executable, tb.SCRIPT, "down", "--stale"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and second["id"] in r.stdout, r
    assert host_leftovers(second) == []


def test_command_line_up_exec_down():
    require_testbed()
    cid = "c" + secrets.token_hex(3)

    def cli(*args, **kw):
        return subprocess.run([sys.executable, tb.SCRIPT, *args], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, **kw)

    r = cli("up", "--nodes", "2", "--id", cid)
    try:
        assert r.returncode == 0, r
        assert f"exec {cid} node1 -- bash" in r.stdout and f"down --id {cid}" in r.stdout
        r2 = cli("up", "--nodes", "2", "--id", cid)
        assert r2.returncode == 2 and "exists" in r2.stderr, r2
        r2 = cli("status", "--id", cid)
        assert "detached" in r2.stdout and r2.stdout.count("\tup, init pid") == 2, r2
        assert cli("exec", cid, "node2", "--", "hostname").stdout.strip() == "node2"
        assert cli("exec", cid, "node1", "--", "ssh", "-o", "BatchMode=yes", "node2", "hostname").stdout == "node2\n"
        assert cli("exec", cid, "node1", "--", "sh", "-c", "exit 7").returncode == 7
        r2 = cli("exec", cid, "node9", "--", "true")
        assert r2.returncode == 2 and "no node 'node9'" in r2.stderr, r2
        attached = Cluster.attach(cid)
        assert attached.hostlist == "node1,node2"
        snap = snapshot(attached)
    finally:
        r = cli("down", "--id", cid)
    assert r.returncode == 0, r
    assert host_leftovers(snap) == []
    r = cli("down", "--id", cid)
    assert r.returncode == 1 and "no cluster" in r.stderr, r


def test_two_clusters_side_by_side(c):
    with Cluster(nodes=1, prefix="other") as d:
        assert d.id != c.id and d.subnet != c.subnet and d.bridge != c.bridge
        assert d.run(0, ["hostname"], timeout=60).stdout.strip() == "other1"
        assert c.run(0, ["hostname"], timeout=60).stdout.strip() == "node1"
        with pytest.raises(ClusterError, match="exists"):
            Cluster(nodes=1, id=d.id)
    assert c.alive(0)


def test_without_root_the_error_says_what_is_missing():
    require_testbed()
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip("no system python3 another user can run")
    d = tempfile.mkdtemp(prefix="dtb-noroot-")
    try:
        os.chmod(d, 0o755)
        shutil.copy(tb.SCRIPT, d)
        script = os.path.join(d, "cluster.py")
        r = subprocess.run([python, "-c", "import cluster; cluster.Cluster(nodes=2)"], cwd=d, user=65534,
                           group=65534, extra_groups=[], capture_output=True, text=True, timeout=60,
                           env={"PATH": os.environ["PATH"], "PYTHONPATH": d})
        assert r.returncode == 1 and "ClusterUnavailable" in r.stderr and "root" in r.stderr, r
        r = subprocess.run([python, script, "up", "--id", "x"], user=65534, group=65534, extra_groups=[],
                           capture_output=True, text=True, timeout=60, cwd="/")
        assert r.returncode == 2 and "missing: root" in r.stderr, r
    finally:
        shutil.rmtree(d)


def test_a_repository_under_tmp_is_seen_by_every_node():
    require_testbed()
    d = tempfile.mkdtemp(prefix="dtb-repo-")
    cid = "r" + secrets.token_hex(3)
    try:
        os.makedirs(os.path.join(d, "testbed"))
        script = os.path.join(d, "testbed", "cluster.py")
        shutil.copy(tb.SCRIPT, script)
        r = subprocess.run([sys.executable, script, "up", "--nodes", "2", "--id", cid], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r
        r = subprocess.run([sys.executable, script, "exec", cid, "node2", "--", "sh", "-c",
                            f"test -f {script} && touch /tmp/{cid} && echo seen"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.stdout.strip() == "seen", r
        assert not os.path.exists(f"/tmp/{cid}")  # /tmp itself stays private
    finally:
        subprocess.run([sys.executable, tb.SCRIPT, "down", "--id", cid], capture_output=True, timeout=120)
        shutil.rmtree(d)
