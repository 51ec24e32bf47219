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
  socket from that process to an echo server on node1. From another node
  each of these calls is one request to the object's node: an
  acquire/release is 2 round trips; an increment is 8 (the outer acquire
  and release, and the ``value`` getter and setter, each acquiring and
  releasing the ``RLock`` again around its read or write). Each line also
  gives the TCP segments node2 sent per operation (``/proc/net/snmp`` of
  its network namespace).
* A DDict's 64 B and 1 MiB put/get (ops/s, one client, distinct 128-byte
  keys, bytes values) from node2, which holds no shard (``DDict(1, 1, ...)``
  made on node1), against redis (``redis-server`` in node1's namespace, no
  persistence; redis-py in the same client process on node2). Targets: at
  least 2x redis for 64 B, 1x for 1 MiB.
* The same operations from a client on the shard's node (node1) of that
  multi-node run, against the same DDict in a one-node run (``dragon``
  without a host list on node1). Target: within 10 %. In both runs an
  uncounted first pass on node1 touches the shard's memory first.

The machine's load moves within seconds: what is compared within one
process (remote operations and raw round trips; DDict and redis) takes
turns in slices; what needs two runs (one node and several) alternates
its order from one repetition to the next.

    sudo .venv/bin/python dragon-py/bench/multinode_objects.py [--reps 5] [--out FILE.jsonl] [--local-only]

``--local-only`` runs the last comparison alone (two runs per repetition),
for a closer look at it.

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

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "testbed"))
sys.path.insert(0, HERE)
from multinode import _json, _write  # noqa: E402  (the script in this folder)

DRAGON = os.path.join(os.path.dirname(sys.executable), "dragon")
PY = sys.executable

POOL_WORKERS = 6
POOL_TASKS = {1: 60000, 64: 2000000}
SYNC_N = 2000
# The compared operations take turns in this many slices of each.
SLICES = 10
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

# The raw TCP request/answer client, interleaved with the remote process's
# own operations (the server is multinode.py's echo server on node1).
RAW = """
import socket

class Raw:
    def __init__(self, host, port):
        self.c = socket.create_connection((host, port))
        self.c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.sendall(b"r")

    def trips(self, n):
        c, msg = self.c, b"12345678"
        for _ in range(n):
            c.sendall(msg)
            got = c.recv(8)
            while len(got) < 8:
                got += c.recv(8 - len(got))
"""

SYNC = TCP_OUT + RAW + """
import multiprocessing as mp, sys, time, json
from dragon.infrastructure.policy import Policy

def remote(lock, v, n, slices, host, port, q):
    raw = Raw(host, port)

    def lock_op(m):
        for _ in range(m):
            lock.acquire()
            lock.release()

    def value_op(m):
        for _ in range(m):
            with v.get_lock():
                v.value += 1

    lock_op(100); value_op(100); raw.trips(200)
    # Slices of each kind in turn, so that the machine's load falls on all
    # alike: [seconds, operations, TCP segments sent] per kind.
    acc = {k: [0.0, 0, 0] for k in ("lock_acquire_release", "value_increment", "rtt_8b")}
    m = n // slices
    for _ in range(slices):
        for kind, run, count in (("lock_acquire_release", lock_op, m), ("rtt_8b", raw.trips, 2 * m),
                                 ("value_increment", value_op, m), ("rtt_8b", raw.trips, 8 * m)):
            s, t = tcp_out(), time.perf_counter()
            run(count)
            a = acc[kind]
            a[0] += time.perf_counter() - t
            a[1] += count
            a[2] += tcp_out() - s
    q.put({k: (a[0] / a[1] * 1e6, a[2] / a[1]) for k, a in acc.items()})

if __name__ == "__main__":
    n, slices, host, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    lock, v, q = mp.Lock(), mp.Value("i", 0), mp.Queue()
    with Policy(host_name="node2"):
        p = mp.Process(target=remote, args=(lock, v, n, slices, host, port, q))
        p.start()
    out = q.get(timeout=600)
    p.join(60)
    want = 100 + n // slices * slices
    assert p.exitcode == 0 and v.value == want, (p.exitcode, v.value, want)
    print(json.dumps(out))
"""

# One client, one or several stores: for each size, put distinct keys, then
# get them back (round and round, up to the count of gets), the stores
# taking turns slice by slice so that the machine's load falls on all alike;
# a store's phase also ends after `budget` seconds of its own time. Per
# (store, phase, size): ops/s, this node's TCP segments sent per op, the
# ops/s of the fastest slice, and ops per second of the client thread's CPU
# time.
KV = TCP_OUT + """
import time

def key(i):
    k = b"%012d-" % i
    return k + b"k" * (128 - len(k))

def kv(stores, sizes, budget, slices):
    out = {}
    for size, (n, gets) in sizes:
        val = b"v" * size
        keys = [key(i) for i in range(n)]
        for store in stores.values():
            for i in range(min(50, n)):  # warm up (new connection, first map)
                store[b"w" + keys[i]] = val
                store[b"w" + keys[i]]
        written = {}
        for phase, total in (("put", n), ("get", gets)):
            acc = {name: [0.0, 0, 0, 0.0, 0.0] for name in stores}
            per_slice, per_budget = -(-total // slices), budget / slices
            for sl in range(slices):
                names = list(stores) if sl % 2 == 0 else list(stores)[::-1]
                for name in names:
                    store, a = stores[name], acc[name]
                    if a[0] >= budget or a[1] >= total:
                        continue
                    s, cpu, t = tcp_out(), time.thread_time(), time.perf_counter()
                    deadline, done, want = t + per_budget, 0, min(per_slice, total - a[1])
                    if phase == "put":
                        for k in keys[a[1]:a[1] + want]:
                            store[k] = val
                            done += 1
                            if (done & 7) == 0 and time.perf_counter() > deadline:
                                break
                    else:
                        have, i = written[name], a[1]
                        while done < want:
                            k = keys[(i + done) % have]
                            if len(store[k]) != size:
                                raise SystemExit("bad value for %r" % k)
                            done += 1
                            if (done & 7) == 0 and time.perf_counter() > deadline:
                                break
                    dt = time.perf_counter() - t
                    a[0] += dt
                    a[1] += done
                    a[2] += tcp_out() - s
                    a[3] = max(a[3], done / dt)
                    a[4] += time.thread_time() - cpu
            for name, a in acc.items():
                out["%s_%s_%d" % (name, phase, size)] = (a[1] / a[0], a[2] / a[1], a[3], a[1] / a[4])
                if phase == "put":
                    written[name] = a[1]
        for store in stores.values():
            store.clear()
    return out
"""

DDICT = KV + """
import multiprocessing as mp, sys, json
from dragon.data.ddict import DDict
from dragon.infrastructure.policy import Policy

class Redis:
    def __init__(self, host, port):
        import redis
        self.r = redis.Redis(host=host, port=port)
    def __setitem__(self, k, v):
        self.r.set(k, v)
    def __getitem__(self, k):
        v = self.r.get(k)
        if v is None:
            raise KeyError(k)
        return v
    def clear(self):
        self.r.flushdb()

def client(d, names, redis_at, sizes, budget, slices, q):
    stores = {"redis": Redis(*redis_at)} if redis_at else {}
    stores.update((name, d) for name in names)
    q.put(kv(stores, sizes, budget, slices))

if __name__ == "__main__":
    mode, mem, budget, slices = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    sizes, redis_at = json.loads(sys.argv[5]), json.loads(sys.argv[6])
    d = DDict(1, 1, mem)  # one shard, on this node (node1)
    q = mp.Queue()
    out = {}
    # A first pass on node1, not counted, touches the shard's memory, so
    # that the measured passes of both runs find it mapped. Then, in the
    # two-node run, node2's client takes turns with redis (on node1).
    if mode == "multi":
        places = [("node1", ["warm"], None), ("node2", ["remote"], redis_at), ("node1", ["local"], None)]
    elif mode == "local":
        places = [("node1", ["warm"], None), ("node1", ["local"], None)]
    else:
        places = [(None, ["warm"], None), (None, ["single"], None)]
    for host, names, at in places:
        args = (d, names, at, sizes, budget, slices, q)
        if host is None:
            p = mp.Process(target=client, args=args)
            p.start()
        else:
            with Policy(host_name=host):
                p = mp.Process(target=client, args=args)
                p.start()
        out.update(q.get(timeout=900))
        p.join(60)
        assert p.exitcode == 0, p.exitcode
    d.destroy()
    print(json.dumps({k: v for k, v in out.items() if not k.startswith("warm_")}))
"""


def dragon(c, name, script, args, hosts=None):
    """Run `script` with dragon from node1: one node without `hosts`."""
    path = _write(c, name, script)
    cmd = [DRAGON] + (["--hostlist", hosts] if hosts else []) + [path] + [str(a) for a in args]
    r = c.run(0, cmd, timeout=900, cwd=c.shared)
    assert r.returncode == 0, r.stdout + r.stderr
    return _json(r.stdout)


def pool(c, hosts):
    return dragon(c, "bench_pool.py", POOL, [POOL_WORKERS, POOL_TASKS[1], POOL_TASKS[64]], hosts)


def sync(c, port):
    """Remote Lock and Value against raw TCP round trips to node1's echo server."""
    import multinode

    server = _write(c, "raw_server.py", multinode.RAW_SERVER)
    srv = c.popen(0, [PY, server, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().startswith("ready")
        return dragon(c, "bench_sync.py", SYNC, [SYNC_N, SLICES, c.address(0), port], "node1,node2")
    finally:
        srv.wait(60)


def ddict(c, mode, redis_port=None):
    hosts = None if mode == "single" else "node1,node2"
    at = [c.address(0), redis_port] if redis_port else None
    args = [mode, KV_MEM, KV_BUDGET, SLICES, json.dumps(sorted(KV_OPS.items())), json.dumps(at)]
    return dragon(c, "bench_ddict.py", DDICT, args, hosts)


def ddict_and_redis(c, port):
    """The two-node DDict run, with redis-server running in node1's namespace."""
    srv = c.popen(0, [shutil.which("redis-server"), "--port", str(port), "--bind", "0.0.0.0",
                      "--save", "", "--appendonly", "no", "--protected-mode", "no",
                      "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready = ("import redis, sys, time\n"
                 "for _ in range(600):\n"
                 "    try:\n"
                 "        redis.Redis(host=sys.argv[1], port=int(sys.argv[2])).ping(); break\n"
                 "    except redis.ConnectionError:\n"
                 "        time.sleep(0.05)\n"
                 "else:\n"
                 "    raise SystemExit('redis-server answers no ping')\n")
        r = c.run(1, [PY, "-c", ready, c.address(0), str(port)], timeout=120)
        assert r.returncode == 0, r.stderr + (srv.stderr.read() if srv.poll() is not None else "")
        return ddict(c, "multi", port)
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
    ap.add_argument("--local-only", action="store_true",
                    help="only the DDict on the shard's node: a 2-node and a 1-node run per repetition (no redis)")
    a = ap.parse_args()
    if not a.local_only:
        check_requirements()
    from cluster import Cluster

    rows = []

    def emit(rep, bench, what, value, **extra):
        row = {"bench": bench, "what": what, "rep": rep, "value": value, "load": round(loadavg(), 2), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def emit_kv(rep, results):
        for key, (ops, segs, best, cpu) in sorted(results.items()):
            who, phase, size = key.rsplit("_", 2)
            emit(rep, "ddict_%s_%s" % (phase, size), who, ops, tcp_segs_per_op=round(segs, 2), best=best,
                 per_cpu_s=cpu)

    with Cluster(nodes=3) as c:
        port = 41000
        for rep in range(a.reps):
            port += 2
            # Each pair's order alternates from one repetition to the next.
            flip = (lambda xs: xs[::-1]) if rep % 2 else list
            if a.local_only:
                for run in flip([lambda: ddict(c, "local"), lambda: ddict(c, "single")]):
                    emit_kv(rep, run())
                continue
            for what, hosts in flip([("one_node", None), ("three_nodes", c.hostlist)]):
                r = pool(c, hosts)
                for cs in (1, 64):
                    emit(rep, "pool_map_c%d" % cs, what, r["c%d" % cs], nodes=r["nodes"], workers=POOL_WORKERS)
            r = sync(c, port)
            rtt = r["rtt_8b"][0]
            emit(rep, "rtt_8b", "raw_tcp", rtt, tcp_segs_per_op=round(r["rtt_8b"][1], 2))
            for bench, trips in SYNC_TRIPS.items():
                us, segs = r[bench]
                emit(rep, bench, "dragon_remote", us, trips=trips, tcp_segs_per_op=round(segs, 2))
                emit(rep, bench, "raw_tcp", trips * rtt, trips=trips)
            for run in flip([lambda p=port: ddict_and_redis(c, p + 1), lambda: ddict(c, "single")]):
                emit_kv(rep, run())
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    table(rows, a.reps, a.local_only)


def table(rows, reps, local_only=False):
    by, best, cpu = {}, {}, {}
    for r in rows:
        by.setdefault((r["bench"], r["what"]), {})[r["rep"]] = r["value"]
        if "best" in r:
            best.setdefault((r["bench"], r["what"]), {})[r["rep"]] = r["best"]
            cpu.setdefault((r["bench"], r["what"]), {})[r["rep"]] = r["per_cpu_s"]

    def med(bench, what, of=by):
        return statistics.median(of[(bench, what)].values())

    def ratio(bench, num, den, of=by):
        """Median of the per-repetition ratios num/den."""
        a, b = of[(bench, num)], of[(bench, den)]
        return statistics.median(a[k] / b[k] for k in a if k in b)

    load = [r["load"] for r in rows]
    print()
    print("%d repetitions; load average (1 min) %.1f to %.1f during the run" % (reps, min(load), max(load)))
    print()
    print("| measure | baseline | dragon | dragon / baseline | target |")
    print("|---|---|---|---|---|")
    for cs in () if local_only else (1, 64):
        b = "pool_map_c%d" % cs
        print("| Pool(%d).map chunksize %d, 3 nodes vs 1 node (tasks/s) | %.0f | %.0f | %.2fx | recorded |"
              % (POOL_WORKERS, cs, med(b, "one_node"), med(b, "three_nodes"), ratio(b, "three_nodes", "one_node")))
    for b, label in () if local_only else (("lock_acquire_release", "Lock acquire+release"),
                                           ("value_increment", "Value increment under its lock")):
        print("| %s from node2 vs %d raw TCP round trips (us/op) | %.1f | %.1f | %.2fx | recorded |"
              % (label, SYNC_TRIPS[b], med(b, "raw_tcp"), med(b, "dragon_remote"),
                 ratio(b, "dragon_remote", "raw_tcp")))
    for size, label, target in () if local_only else ((64, "64 B", 2.0), (1 << 20, "1 MiB", 1.0)):
        for phase in ("put", "get"):
            b = "ddict_%s_%d" % (phase, size)
            print("| DDict %s %s from a node without shard vs redis (ops/s) | %.0f | %.0f | %.2fx | >= %gx |"
                  % (label, phase, med(b, "redis"), med(b, "remote"), ratio(b, "remote", "redis"), target))
    # Two runs, seconds apart: also the fastest of each phase's slices (the
    # least disturbed by the machine's other work) and ops per second of
    # the client's CPU time (what the operation costs the caller).
    for size, label in ((64, "64 B"), (1 << 20, "1 MiB")):
        for phase in ("put", "get"):
            b = "ddict_%s_%d" % (phase, size)
            print("| DDict %s %s on the shard's node, 2-node run vs 1-node run (ops/s) | %.0f | %.0f "
                  "| %.2fx (fastest slice %.2fx, per CPU second %.2fx) | >= 0.9x |"
                  % (label, phase, med(b, "single"), med(b, "local"), ratio(b, "local", "single"),
                     ratio(b, "local", "single", best), ratio(b, "local", "single", cpu)))


if __name__ == "__main__":
    main()
