"""Multi-node benchmarks on the namespaced test bed (``testbed/``), as root.

Between two of the test bed's nodes (network namespaces joined by a bridge
over veth pairs), in the same run:

* round trip of an 8-byte message: a ``Queue`` pair (``dragon --hostlist``,
  the queues on node1, the echoing process on node2) against a raw TCP
  socket pair between the same two nodes (plain Python sockets,
  ``TCP_NODELAY``, the same request/answer loop);
* streaming 1 MiB ``bytes`` from node2 to node1: through a ``Queue``
  against a raw TCP socket (1 MiB ``sendall``/``recv_into`` loop);
* bring-up: the whole ``dragon --hostlist node1,node2,node3 count.py`` of a
  script that prints the node count, wall time from start to exit.

    sudo .venv/bin/python dragon-py/bench/multinode.py [--reps 5] [--out FILE.jsonl]

Prints one JSON line per measure and a Markdown table of medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "testbed"))
DRAGON = os.path.join(os.path.dirname(sys.executable), "dragon")
PY = sys.executable

RTT_N = 3000
STREAM_MB = 512

RAW_SERVER = """
import socket, sys
MIB = 1 << 20
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
mode = c.recv(1)
if mode == b"r":
    while True:
        m = c.recv(8)
        if not m:
            break
        c.sendall(m)
else:
    buf = bytearray(MIB)
    view = memoryview(buf)
    total = 0
    while True:
        n = c.recv_into(view)
        if not n:
            break
        total += n
    print("got", total, flush=True)
"""

RAW_CLIENT = """
import socket, sys, time, json
MIB = 1 << 20
host, port, mode, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = socket.create_connection((host, port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.sendall(mode.encode())
if mode == "r":
    msg = b"12345678"
    for _ in range(200):
        c.sendall(msg); c.recv(8)
    t = time.perf_counter()
    for _ in range(n):
        c.sendall(msg)
        got = c.recv(8)
    dt = time.perf_counter() - t
    print(json.dumps({"rtt_us": dt / n * 1e6}))
else:
    data = b"x" * MIB
    t = time.perf_counter()
    for _ in range(n):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    dt = time.perf_counter() - t
    print(json.dumps({"mib_s": n / dt}))
"""

QUEUE_RTT = """
import multiprocessing as mp, sys, time, json
from dragon.infrastructure.policy import Policy

def echo(a, b, n):
    for _ in range(n):
        b.put(a.get())

if __name__ == "__main__":
    n = int(sys.argv[1])
    a, b = mp.Queue(), mp.Queue()
    with Policy(host_name="node2"):
        p = mp.Process(target=echo, args=(a, b, n + 200))
        p.start()
    msg = b"12345678"
    for _ in range(200):
        a.put(msg); b.get()
    t = time.perf_counter()
    for _ in range(n):
        a.put(msg)
        b.get()
    dt = time.perf_counter() - t
    p.join()
    print(json.dumps({"rtt_us": dt / n * 1e6}))
"""

QUEUE_STREAM = """
import multiprocessing as mp, sys, time, json
from dragon.infrastructure.policy import Policy
MIB = 1 << 20

def produce(q, n):
    data = b"x" * MIB
    for _ in range(n):
        q.put(data)
    q.put(None)

if __name__ == "__main__":
    n = int(sys.argv[1])
    q = mp.Queue()
    with Policy(host_name="node2"):
        p = mp.Process(target=produce, args=(q, n))
        p.start()
    first = q.get()
    t = time.perf_counter()
    got = 1
    while q.get() is not None:
        got += 1
    dt = time.perf_counter() - t
    p.join()
    print(json.dumps({"mib_s": (got - 1) / dt}))
"""

COUNT = """
from dragon.native.machine import System
print(System().nnodes)
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


def raw(c, mode, n, port):
    server = _write(c, "raw_server.py", RAW_SERVER)
    client = _write(c, "raw_client.py", RAW_CLIENT)
    srv = c.popen(0, [PY, server, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().startswith("ready")
        r = c.run(1, [PY, client, c.address(0), str(port), mode, str(n)], timeout=600)
        assert r.returncode == 0, r.stderr
        return _json(r.stdout)
    finally:
        srv.wait(60)


def queue(c, script, n, direct=True):
    path = _write(c, "bench_q.py", script)
    env = dict(os.environ, DRAGON_DIRECT="1" if direct else "0")
    r = c.run(0, [DRAGON, "--hostlist", "node1,node2", path, str(n)], timeout=600, cwd=c.shared, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return _json(r.stdout)


def bringup(c):
    path = _write(c, "count.py", COUNT)
    t = time.perf_counter()
    r = c.run(0, [DRAGON, "--hostlist", c.hostlist, path], timeout=600, cwd=c.shared)
    dt = time.perf_counter() - t
    assert r.returncode == 0 and r.stdout.strip() == "3", r.stdout + r.stderr
    return {"s": dt}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    from cluster import Cluster

    rows = []
    with Cluster(nodes=3) as c:
        port = 40000
        for rep in range(a.reps):
            port += 1
            res = [
                ("rtt_8b", "raw_tcp", raw(c, "r", RTT_N, port)["rtt_us"]),
                ("rtt_8b", "dragon_queue", queue(c, QUEUE_RTT, RTT_N)["rtt_us"]),
                ("rtt_8b", "dragon_queue_relayed", queue(c, QUEUE_RTT, RTT_N, direct=False)["rtt_us"]),
                ("stream_1mib", "raw_tcp", raw(c, "s", STREAM_MB, port + 1000)["mib_s"]),
                ("stream_1mib", "dragon_queue", queue(c, QUEUE_STREAM, STREAM_MB)["mib_s"]),
                ("stream_1mib", "dragon_queue_relayed", queue(c, QUEUE_STREAM, STREAM_MB, direct=False)["mib_s"]),
                ("bringup_3_nodes", "dragon", bringup(c)["s"]),
            ]
            for bench, what, v in res:
                row = {"bench": bench, "what": what, "rep": rep, "value": v}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    med = {}
    for r in rows:
        med.setdefault((r["bench"], r["what"]), []).append(r["value"])
    med = {k: statistics.median(v) for k, v in med.items()}
    rtt_r = med[("rtt_8b", "dragon_queue")] / med[("rtt_8b", "raw_tcp")]
    bw_r = med[("stream_1mib", "dragon_queue")] / med[("stream_1mib", "raw_tcp")]
    print()
    print("| measure | raw TCP | dragon | ratio | target |")
    print("|---|---|---|---|---|")
    print("| 8 B round trip (us) | %.1f | %.1f | %.2fx | <= 1.5x |"
          % (med[("rtt_8b", "raw_tcp")], med[("rtt_8b", "dragon_queue")], rtt_r))
    print("| 1 MiB streaming (MiB/s) | %.0f | %.0f | %.2fx | >= 0.7x |"
          % (med[("stream_1mib", "raw_tcp")], med[("stream_1mib", "dragon_queue")], bw_r))
    print("| 3-node bring-up, whole run (s) | | %.2f | | <= 1.5 s |" % med[("bringup_3_nodes", "dragon")])
    print()
    rtt, bw = med[("rtt_8b", "dragon_queue_relayed")], med[("stream_1mib", "dragon_queue_relayed")]
    print("Relayed through both nodes' services (DRAGON_DIRECT=0): round trip %.1f us (%.2fx), "
          "streaming %.0f MiB/s (%.2fx)"
          % (rtt, rtt / med[("rtt_8b", "raw_tcp")], bw, bw / med[("stream_1mib", "raw_tcp")]))


if __name__ == "__main__":
    main()
