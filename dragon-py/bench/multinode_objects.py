"""Pools, locks, values and DDicts across nodes of the namespaced test bed
(``testbed/``), as root.

Every measure against a baseline taken in the same run, on the same
machine (the test bed's nodes share its CPUs):

* ``Pool.map`` of ``x * x`` at chunksize 1 and 64 (tasks/s): a pool spread
  over three nodes (``dragon --hostlist node1,node2,node3``, workers
  round-robin) against a pool of the same total worker count on one node
  (``dragon`` without a host list, on node1). The cost of crossing nodes;
  no target.
* A ``Lock`` acquire/release and a ``Value`` increment
  (``with v.get_lock(): v.value += 1``) from a process on node2, both
  objects made on node1 (``dragon --hostlist node1,node2``), against the
  same number of request/answer round trips of 8 bytes over a raw TCP
  socket between the same two nodes. From another node each of these calls
  is one request to the object's node: an acquire/release is 2 round
  trips; an increment is 8 (the outer acquire and release, and the
  ``value`` getter and setter, each acquiring and releasing the ``RLock``
  again around its read or write). Each line also gives the TCP segments
  node2 sent per operation (``/proc/net/snmp`` of its network namespace).
* A DDict's 64 B and 1 MiB put/get (ops/s, one client, distinct 128-byte
  keys, bytes values) from node2, which holds no shard (``DDict(1, 1, ...)``
  made on node1), against redis (redis-py on node2, a ``redis-server`` in
  node1's namespace, no persistence). Targets: at least 2x redis for 64 B,
  1x for 1 MiB.
* The same operations from a client on the shard's node (node1) of that
  multi-node run, against the same DDict in a one-node run (``dragon``
  without a host list on node1). Target: within 10 %. In both runs an
  uncounted first pass on node1 touches the shard's memory first.

    sudo .venv/bin/python dragon-py/bench/multinode_objects.py [--reps 5] [--out FILE.jsonl]

Needs ``redis-server`` on PATH (``apt-get install redis-server``) and the
``redis`` package in this interpreter (``pip install redis``). Prints one
JSON line per measure and a Markdown table of medians (of each measure, and
of the per-repetition ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "testbed"))
sys.path.insert(0, HERE)
DRAGON = os.path.join(os.path.dirname(sys.executable), "dragon")
PY = sys.executable

POOL_WORKERS = 6
POOL_TASKS = {1: 60000, 64: 2000000}
SYNC_N = 2000
RTT_N = 5000
# Round trips of one operation from another node (see the docstring).
SYNC_TRIPS = {"lock_acquire_release": 2, "value_increment": 8}
# Per size: (puts of distinct keys, gets cycling over the keys put).
KV_OPS = {64: (200000, 400000), 1 << 20: (400, 4000)}
KV_BUDGET = 3.0
KV_MEM = 1 << 30

# Node2's TCP segments sent so far (the reader's network namespace).
TCP_OUT = """
def tcp_out():
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("OutSegs")])
"""

POOL = """
import multiprocessing as mp, socket, sys, time, json

def sq(x):
    return x * x

def host(_):
    time.sleep(0.001)
    return socket.gethostname()

if __name__ == "__main__":
    n, t1, t64 = map(int, sys.argv[1:4])
    with mp.Pool(n) as p:
        # Every node with workers takes tasks once one of them has started:
        # map until each has answered, then time.
        want = len({getattr(w, "_dragon_node", 0) for w in p._pool})
        seen, deadline = set(), time.monotonic() + 120
        while len(seen) < want:
            if time.monotonic() > deadline:
                raise SystemExit("only %s of %d nodes ran tasks" % (sorted(seen), want))
            seen.update(p.map(host, range(8 * n), chunksize=1))
        p.map(sq, range(2000), chunksize=1)
        out = {"nodes": len(seen)}
        for cs, tasks in ((1, t1), (64, t64)):
            t = time.perf_counter()
            r = p.map(sq, range(tasks), chunksize=cs)
            dt = time.perf_counter() - t
            assert r[-1] == (tasks - 1) ** 2 and len(r) == tasks
            out["c%d" % cs] = tasks / dt
    print(json.dumps(out))
"""

SYNC = TCP_OUT + """
import multiprocessing as mp, sys, time, json
from dragon.infrastructure.policy import Policy

def remote(lock, v, n, q):
    for _ in range(200):
        lock.acquire(); lock.release()
        with v.get_lock():
            v.value += 1
    out = {}
    s, t = tcp_out(), time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    dt = time.perf_counter() - t
    out["lock_acquire_release"] = (dt / n * 1e6, (tcp_out() - s) / n)
    s, t = tcp_out(), time.perf_counter()
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    dt = time.perf_counter() - t
    out["value_increment"] = (dt / n * 1e6, (tcp_out() - s) / n)
    q.put(out)

if __name__ == "__main__":
    n = int(sys.argv[1])
    lock, v, q = mp.Lock(), mp.Value("i", 0), mp.Queue()
    with Policy(host_name="node2"):
        p = mp.Process(target=remote, args=(lock, v, n, q))
        p.start()
    out = q.get(timeout=600)
    p.join(60)
    assert p.exitcode == 0 and v.value == n + 200, (p.exitcode, v.value)
    print(json.dumps(out))
"""

# One client: for each size, put distinct keys, then get them back (round
# and round, up to the count of gets); a phase also stops after `budget`
# seconds. ops/s per (size, phase), and node's TCP segments sent per op.
KV = TCP_OUT + """
import time

def key(i):
    k = b"%012d-" % i
    return k + b"k" * (128 - len(k))

def kv(store, sizes, budget, prefix=""):
    out = {}
    for size, (n, gets) in sizes:
        val = b"v" * size
        keys = [key(i) for i in range(n)]
        for i in range(min(50, n)):  # warm up (new connection, first map)
            store[b"w" + keys[i]] = val
            store[b"w" + keys[i]]
        for phase in ("put", "get"):
            s, t = tcp_out(), time.perf_counter()
            deadline, done = t + budget, 0
            if phase == "put":
                for k in keys:
                    store[k] = val
                    done += 1
                    if (done & 7) == 0 and time.perf_counter() > deadline:
                        break
                written = done
            else:
                while done < gets:
                    for k in keys[:min(written, gets - done)]:
                        if len(store[k]) != size:
                            raise SystemExit("bad value for %r" % k)
                        done += 1
                        if (done & 7) == 0 and time.perf_counter() > deadline:
                            break
                    if time.perf_counter() > deadline:
                        break
            dt = time.perf_counter() - t
            out["%s%s_%d" % (prefix, phase, size)] = (done / dt, (tcp_out() - s) / done)
        store.clear()
    return out
"""

DDICT = KV + """
import multiprocessing as mp, sys, json
from dragon.data.ddict import DDict
from dragon.infrastructure.policy import Policy

def client(d, sizes, budget, prefix, q):
    q.put(kv(d, sizes, budget, prefix))

if __name__ == "__main__":
    mode, mem, budget, sizes = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
    d = DDict(1, 1, mem)  # one shard, on this node (node1)
    q = mp.Queue()
    out = {}
    # A first pass on node1, not counted, touches the shard's memory, so
    # that the measured passes of both runs find it mapped.
    if mode == "multi":
        places = [("node1", "warm_"), ("node2", "remote_"), ("node1", "local_")]
    else:
        places = [(None, "warm_"), (None, "single_")]
    for host, prefix in places:
        if host is None:
            p = mp.Process(target=client, args=(d, sizes, budget, prefix, q))
            p.start()
        else:
            with Policy(host_name=host):
                p = mp.Process(target=client, args=(d, sizes, budget, prefix, q))
                p.start()
        out.update(q.get(timeout=600))
        p.join(60)
        assert p.exitcode == 0, p.exitcode
    d.destroy()
    print(json.dumps({k: v for k, v in out.items() if not k.startswith("warm_")}))
"""

REDIS = KV + """
import json, sys
import redis

class Store:
    def __init__(self, r):
        self.r = r
    def __setitem__(self, k, v):
        self.r.set(k, v)
    def __getitem__(self, k):
        v = self.r.get(k)
        if v is None:
            raise KeyError(k)
        return v
    def clear(self):
        self.r.flushdb()

host, port, budget, sizes = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
print(json.dumps(kv(Store(redis.Redis(host=host, port=port)), sizes, budget, "redis_")))
"""


def _write(c, name, text):
    path = os.path.join(c.shared, name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def _json(out):
    for line in out.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no result in output:\n" + out)


def dragon(c, name, script, args, hosts=None):
    """Run `script` with dragon from node1: one node without `hosts`."""
    path = _write(c, name, script)
    cmd = [DRAGON] + (["--hostlist", hosts] if hosts else []) + [path] + [str(a) for a in args]
    r = c.run(0, cmd, timeout=900, cwd=c.shared)
    assert r.returncode == 0, r.stdout + r.stderr
    return _json(r.stdout)


def pool(c, hosts):
    return dragon(c, "bench_pool.py", POOL, [POOL_WORKERS, POOL_TASKS[1], POOL_TASKS[64]], hosts)


def raw_rtt(c, port):
    import multinode  # the raw TCP request/answer loop, node2 -> node1

    return multinode.raw(c, "r", RTT_N, port)["rtt_us"]


def sizes():
    return json.dumps(sorted(KV_OPS.items()))


def ddict(c, mode):
    hosts = "node1,node2" if mode == "multi" else None
    return dragon(c, "bench_ddict.py", DDICT, [mode, KV_MEM, KV_BUDGET, sizes()], hosts)


def redis_kv(c, port):
    srv = c.popen(0, [shutil.which("redis-server"), "--port", str(port), "--bind", "0.0.0.0",
                      "--save", "", "--appendonly", "no", "--protected-mode", "no",
                      "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = _write(c, "bench_redis.py", REDIS)
        ready = "import redis, sys, time\n" \
                "for _ in range(600):\n" \
                "    try:\n" \
                "        redis.Redis(host=sys.argv[1], port=int(sys.argv[2])).ping(); break\n" \
                "    except redis.ConnectionError:\n" \
                "        time.sleep(0.05)\n" \
                "else:\n" \
                "    raise SystemExit('redis-server answers no ping')\n"
        r = c.run(1, [PY, "-c", ready, c.address(0), str(port)], timeout=120)
        assert r.returncode == 0, r.stderr + (srv.stderr.read() if srv.poll() is not None else "")
        r = c.run(1, [PY, client, c.address(0), str(port), str(KV_BUDGET), sizes()], timeout=900)
        assert r.returncode == 0, r.stderr
        return _json(r.stdout)
    finally:
        srv.terminate()
        srv.wait(60)


def check_requirements():
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("the redis package in %s (pip install redis)" % PY)
    if missing:
        sys.exit("multinode_objects.py needs " + " and ".join(missing))


def loadavg():
    return os.getloadavg()[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    check_requirements()
    from cluster import Cluster

    rows = []

    def emit(rep, bench, what, value, **extra):
        row = {"bench": bench, "what": what, "rep": rep, "value": value, "load": round(loadavg(), 2), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    with Cluster(nodes=3) as c:
        port = 41000
        for rep in range(a.reps):
            port += 2
            # Each pair's order alternates from one repetition to the next.
            flip = (lambda xs: xs[::-1]) if rep % 2 else list
            for what, hosts in flip([("one_node", None), ("three_nodes", c.hostlist)]):
                r = pool(c, hosts)
                for cs in (1, 64):
                    emit(rep, "pool_map_c%d" % cs, what, r["c%d" % cs], nodes=r["nodes"], workers=POOL_WORKERS)
            rtt = raw_rtt(c, port)
            emit(rep, "rtt_8b", "raw_tcp", rtt)
            r = dragon(c, "bench_sync.py", SYNC, [SYNC_N], "node1,node2")
            for bench, trips in SYNC_TRIPS.items():
                us, segs = r[bench]
                emit(rep, bench, "dragon_remote", us, trips=trips, tcp_segs_per_op=round(segs, 2))
                emit(rep, bench, "raw_tcp", trips * rtt, trips=trips)
            results = {}
            for run in flip([lambda: redis_kv(c, port + 1), lambda: ddict(c, "multi"), lambda: ddict(c, "single")]):
                results.update(run())
            for key, (ops, segs) in sorted(results.items()):
                who, phase, size = key.rsplit("_", 2)
                emit(rep, "ddict_%s_%s" % (phase, size), who, ops, tcp_segs_per_op=round(segs, 2))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    table(rows, a.reps)


def table(rows, reps):
    by = {}
    for r in rows:
        by.setdefault((r["bench"], r["what"]), {})[r["rep"]] = r["value"]

    def med(bench, what):
        return statistics.median(by[(bench, what)].values())

    def ratio(bench, num, den):
        """Median of the per-repetition ratios num/den."""
        a, b = by[(bench, num)], by[(bench, den)]
        return statistics.median(a[k] / b[k] for k in a if k in b)

    load = [r["load"] for r in rows]
    print()
    print("%d repetitions; load average (1 min) %.1f to %.1f during the run" % (reps, min(load), max(load)))
    print()
    print("| measure | baseline | dragon | dragon / baseline | target |")
    print("|---|---|---|---|---|")
    for cs in (1, 64):
        b = "pool_map_c%d" % cs
        print("| Pool(%d).map chunksize %d, 3 nodes vs 1 node (tasks/s) | %.0f | %.0f | %.2fx | recorded |"
              % (POOL_WORKERS, cs, med(b, "one_node"), med(b, "three_nodes"), ratio(b, "three_nodes", "one_node")))
    for b, label in (("lock_acquire_release", "Lock acquire+release"),
                     ("value_increment", "Value increment under its lock")):
        print("| %s from node2 vs %d raw TCP round trips (us/op) | %.1f | %.1f | %.2fx | recorded |"
              % (label, SYNC_TRIPS[b], med(b, "raw_tcp"), med(b, "dragon_remote"),
                 ratio(b, "dragon_remote", "raw_tcp")))
    for size, label, target in ((64, "64 B", 2.0), (1 << 20, "1 MiB", 1.0)):
        for phase in ("put", "get"):
            b = "ddict_%s_%d" % (phase, size)
            print("| DDict %s %s from a node without shard vs redis (ops/s) | %.0f | %.0f | %.2fx | >= %gx |"
                  % (label, phase, med(b, "redis"), med(b, "remote"), ratio(b, "remote", "redis"), target))
    for size, label in ((64, "64 B"), (1 << 20, "1 MiB")):
        for phase in ("put", "get"):
            b = "ddict_%s_%d" % (phase, size)
            print("| DDict %s %s on the shard's node, 2-node run vs 1-node run (ops/s) | %.0f | %.0f | %.2fx "
                  "| >= 0.9x |" % (label, phase, med(b, "single"), med(b, "local"), ratio(b, "local", "single")))


if __name__ == "__main__":
    main()
