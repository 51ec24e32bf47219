"""A live view of a run: ``dragon top`` and the metrics endpoint.

    dragon top [RUN_ID] [-n SECONDS] [--once]

:func:`snapshot` gathers, for a run on this node, its nodes, its processes
(state, CPU, memory, the name ``multiprocessing`` gave them) here and, in a
multi-node run, on every other node (asked through this node's service; a
node that cannot be asked is shown LOST, with the reason), its queues with
their depth and its DDicts' shards with the memory each uses of its share.
``dragon top`` shows it, refreshed every ``SECONDS`` (1 by default) until
the run ends or Ctrl-C; ``--once`` prints it once. The
program's own process serves the same figures in Prometheus' text format
when started with ``dragon --metrics [HOST:]PORT`` (``/metrics``; HOST is
127.0.0.1 unless given).

Where the figures come from: the processes of a run carry its id in their
environment (``DRAGON_RUN_ID``), ``/proc`` has their state and times, and
the run's directory (:mod:`dragon._registry`) has the names of the
processes, queues and DDicts its processes made. A queue is read by
attaching to its channel as an observer (neither sender nor receiver); a
DDict by asking its managers for their counters.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from . import runtime

__all__ = ["live_runs", "snapshot", "render", "prometheus", "main", "serve_metrics"]

_HZ = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[str, int, int, int, int, str] | None:
    """``(state, ppid, cpu ticks, start ticks, rss bytes, comm)`` of ``pid``."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    comm = data[data.index("(") + 1:data.rindex(")")]
    fields = data[data.rindex(")") + 2:].split()
    return (fields[0], int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]),
            int(fields[21]) * _PAGE, comm)


def live_runs() -> list[str]:
    """The ids of the runs on this node whose owner lives, newest first."""
    from . import _native

    runs = set()
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return []
    for name in names:
        parts = name.split("-")
        if len(parts) >= 4 and parts[0] == "dragon":
            rid = "-".join(parts[1:4])
            if _native.valid_run_id(rid):
                runs.add(rid)
    live = [r for r in runs if runtime.owner_alive(r)]
    return sorted(live, key=lambda r: runtime.run_owner(r)[1], reverse=True)


def _members(run_id: str) -> tuple[set[int], str | None]:
    """The pids on this node whose environment names the run, and the
    run's node table (``DRAGON_NODES``) if one of them has it."""
    needle = ("DRAGON_RUN_ID=%s\0" % run_id).encode()
    pids = {runtime.run_owner(run_id)[0]}
    table = None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env:
            pids.add(int(entry))
            if table is None:
                for var in env.split(b"\0"):
                    if var.startswith(b"DRAGON_NODES="):
                        table = var[len(b"DRAGON_NODES="):].decode(errors="replace")
    return pids, table


def _nodes(run_id: str, table_text: str | None) -> list[dict[str, Any]]:
    """The run's nodes: from this process's run if it is the one looked
    at, else from the table a process of the run carries."""
    import json
    import socket

    from . import _remote

    here = 0
    table = None
    if os.environ.get(runtime.RUN_ENV) == run_id and _remote.multinode():
        try:
            table, here = _remote.nodes(), _remote.this_node()
        except Exception:
            table = None
    if table is None and table_text:
        try:
            table = json.loads(table_text)
        except ValueError:
            table = None
        hostname = socket.gethostname()
        here = next((i for i, n in enumerate(table or []) if isinstance(n, dict)
                     and hostname in (n.get("hostname"), n.get("host"))), 0)
    if not table:
        return [{"index": 0, "host": socket.gethostname(), "here": True}]
    return [{"index": n.get("index", i) if isinstance(n, dict) else i,
             "host": (n.get("host") or n.get("hostname")) if isinstance(n, dict) else str(n),
             "here": i == here} for i, n in enumerate(table)]


def _runtime_name(pid: int, comm: str, cmd: bytes | None = None) -> str:
    """What a process of the run that the program did not start is."""
    if cmd is None:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except OSError:
            cmd = b""
    for needle, name in ((b"dragon._template", "template"), (b"resource_tracker", "resource tracker"),
                         (b"dragon._node", "node service")):
        if needle in cmd:
            return name
    return comm


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def snapshot(run_id: str, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The figures of ``run_id`` on this node (a dict; see :func:`render`).
    With the ``previous`` snapshot, CPU is measured since then; without,
    since each process started."""
    from . import _native, _registry

    now = time.monotonic()
    uptime = _uptime()
    records = _registry.read(run_id)
    names: dict[int, str] = {}
    queues: list[tuple[int, str]] = []
    ddicts: list[tuple[int, str, str]] = []
    remote_names: dict[tuple[int, int], str] = {}
    for kind, pid, fields in records:
        if kind == "p" and fields and fields[0].isdigit():
            names[int(fields[0])] = " ".join(fields[1:])
        elif kind == "r" and len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            remote_names[(int(fields[0]), int(fields[1]))] = " ".join(fields[2:])
        elif kind == "q" and fields:
            queues.append((pid, fields[0]))
        elif kind == "d" and fields:
            ddicts.append((pid, fields[0], " ".join(fields[1:])))
    owner = runtime.run_owner(run_id)[0]
    prev_cpu = (previous or {}).get("_cpu", {})
    dt = now - (previous or {}).get("_at", now)
    procs = []
    cpu_now = {}
    members, table_text = _members(run_id)
    nodes = _nodes(run_id, table_text)
    here = next((n["index"] for n in nodes if n["here"]), 0)
    if len(nodes) > 1 and "DRAGON_SERVICE" not in os.environ:
        # Objects of other nodes (a DDict's shards there) are reached
        # through this node's service, as the run's own processes do.
        os.environ["DRAGON_SERVICE"] = _native.service_name(run_id, here)
        os.environ.setdefault("DRAGON_NODE_INDEX", str(here))
    for pid in sorted(members):
        st = _stat(pid)
        if st is None:
            continue
        state, ppid, ticks, start, rss, comm = st
        cpu_now[pid] = (start, ticks)
        before = prev_cpu.get(pid)
        if before is not None and before[0] == start and dt > 0:
            pct = 100.0 * (ticks - before[1]) / _HZ / dt
        else:
            age = uptime - start / _HZ
            pct = 100.0 * ticks / _HZ / age if age > 0 else 0.0
        if pid == owner:
            name = "main"
        else:
            name = names.get(pid) or _runtime_name(pid, comm)
        procs.append({"pid": pid, "ppid": ppid, "state": state, "cpu_percent": pct, "cpu_seconds": ticks / _HZ,
                      "rss_bytes": rss, "name": name})
    qs = []
    seen = set()
    for pid, handle in queues:
        if handle in seen:
            continue
        seen.add(handle)
        try:
            ch = _native.Channel.attach(bytes.fromhex(handle), send=False, recv=False)
            depth, capacity, closed = len(ch), ch.capacity, ch.is_destroyed()
            del ch
        except Exception:
            continue  # gone
        if closed:
            continue
        qs.append({"channel": handle[-16:], "made_by": pid, "depth": depth, "capacity": capacity})
    dds = []
    for pid, desc, name in ddicts:
        if desc in seen:
            continue
        seen.add(desc)
        try:
            from .data.ddict import DDict

            d = DDict.attach(desc, timeout=2.0)
            try:
                stats = d.stats
            finally:
                d.detach()
        except Exception:
            continue  # destroyed
        for s in stats:
            dds.append({"ddict": name, "shard": s.manager_id, "used_bytes": s.total_used_bytes,
                        "share_bytes": s.total_bytes, "keys": s.num_keys, "clients": s.clients,
                        "made_by": pid})
    for p in procs:
        p["node"] = here
    if len(nodes) > 1:
        procs.extend(_other_nodes(run_id, nodes, here, prev_cpu, dt, cpu_now, remote_names))
    return {"run": run_id, "owner": owner, "nodes": nodes, "processes": procs, "queues": qs, "ddicts": dds,
            "_cpu": cpu_now, "_at": now}


def _other_nodes(run_id: str, nodes: list[dict[str, Any]], here: int, prev_cpu: dict[Any, Any], dt: float,
                 cpu_now: dict[Any, Any], remote_names: dict[tuple[int, int], str]) -> list[dict[str, Any]]:
    """The run's processes on the other nodes, as their services tell (a
    node that cannot be asked is marked lost, with the reason). A process's
    name is in the registry of the node of the process that started it:
    ``remote_names`` (by node and pid) holds this node's and the others'
    ``r`` records."""
    import json

    from . import _native, _registry

    statuses = {}
    for n in nodes:
        if n["here"]:
            continue
        try:
            statuses[n["index"]] = json.loads(_native.node_status(run_id, here, n["index"]))
        except (ConnectionError, ValueError) as e:
            n["lost"] = str(e)
            continue
        for kind, _, f in _registry.parse(statuses[n["index"]].get("registry", "")):
            if kind == "r" and len(f) >= 2 and f[0].isdigit() and f[1].isdigit():
                remote_names[(int(f[0]), int(f[1]))] = " ".join(f[2:])
    out = []
    for index, status in statuses.items():
        n = next(n for n in nodes if n["index"] == index)
        hz, page, uptime = status.get("hz") or _HZ, status.get("page") or _PAGE, status.get("uptime", 0.0)
        names = {int(f[0]): " ".join(f[1:]) for kind, _, f in _registry.parse(status.get("registry", ""))
                 if kind == "p" and f and f[0].isdigit()}
        names.update({pid: name for (node, pid), name in remote_names.items() if node == index})
        for p in status.get("procs", []):
            key = (n["index"], p["pid"])
            cpu_now[key] = (p["start"], p["ticks"])
            before = prev_cpu.get(key)
            if before is not None and before[0] == p["start"] and dt > 0:
                pct = 100.0 * (p["ticks"] - before[1]) / hz / dt
            else:
                age = uptime - p["start"] / hz
                pct = 100.0 * p["ticks"] / hz / age if age > 0 else 0.0
            name = names.get(p["pid"]) or _runtime_name(p["pid"], p["comm"], p.get("cmd", "").encode())
            out.append({"pid": p["pid"], "ppid": p["ppid"], "state": p["state"], "cpu_percent": pct,
                        "cpu_seconds": p["ticks"] / hz, "rss_bytes": p["rss"] * page, "name": name,
                        "node": n["index"]})
    return out


def _mib(n: int) -> str:
    return "%.1f" % (n / (1 << 20))


def render(snap: dict[str, Any], width: int = 100) -> str:
    """The text ``dragon top`` shows for a snapshot."""
    procs = snap["processes"]
    nodes = snap["nodes"]
    where = "on this node" if len(nodes) == 1 else "on %d nodes" % len(nodes)
    lines = ["dragon top   run %s   %d process%s %s   %s" % (
        snap["run"], len(procs), "" if len(procs) == 1 else "es", where, time.strftime("%H:%M:%S"))]
    if snap.get("other_runs"):
        lines.append("other runs on this node: %s (dragon top RUN_ID)" % " ".join(snap["other_runs"]))
    lines.append("NODES %d: %s" % (len(nodes), ", ".join(
        "%d %s%s%s" % (n["index"], n["host"], " (here)" if n["here"] else "", " LOST" if n.get("lost") else "")
        for n in nodes)))
    for n in nodes:
        if n.get("lost"):
            lines.append("  node %d (%s) cannot be asked: %s" % (n["index"], n["host"], n["lost"]))
    lines.append("")
    # With several nodes, a column says which (pids are per node).
    hosts = {n["index"]: n["host"] for n in nodes}
    multi = len(nodes) > 1

    def node_col(host: str) -> str:
        return "%-10s " % host[:10] if multi else ""

    lines.append(node_col("NODE") + "%8s %8s %1s %6s %8s  %s" % ("PID", "PPID", "S", "CPU%", "RSS MiB", "NAME"))
    for p in sorted(procs, key=lambda p: (p.get("node", 0), p["pid"])):
        lines.append(node_col(hosts.get(p.get("node", 0), "?")) + "%8d %8d %1s %6.1f %8s  %s" % (
            p["pid"], p["ppid"], p["state"], p["cpu_percent"], _mib(p["rss_bytes"]), p["name"]))
    lines.append("")
    lines.append("QUEUES %d" % len(snap["queues"]))
    if snap["queues"]:
        lines.append("%8s %12s %8s  %s" % ("DEPTH", "CAPACITY", "MADE BY", "CHANNEL"))
        for q in snap["queues"]:
            lines.append("%8d %12d %8d  %s" % (q["depth"], q["capacity"], q["made_by"], q["channel"]))
    lines.append("")
    lines.append("DDICT SHARDS %d" % len(snap["ddicts"]))
    if snap["ddicts"]:
        lines.append("%-16s %5s %9s %9s %5s %8s %7s" % ("DDICT", "SHARD", "USED MiB", "SHARE MiB", "USE%",
                                                       "KEYS", "CLIENTS"))
        for d in snap["ddicts"]:
            pct = 100.0 * d["used_bytes"] / d["share_bytes"] if d["share_bytes"] else 0.0
            lines.append("%-16s %5d %9s %9s %5.1f %8d %7d" % (d["ddict"][:16], d["shard"], _mib(d["used_bytes"]),
                                                             _mib(d["share_bytes"]), pct, d["keys"], d["clients"]))
    return "\n".join(line[:width] for line in lines) + "\n"


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(snap: dict[str, Any]) -> str:
    """The snapshot in Prometheus' text exposition format (0.0.4)."""
    out = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, object], float]]) -> None:
        out.append("# HELP %s %s" % (name, help_))
        out.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            text = ",".join('%s="%s"' % (k, _label(v)) for k, v in labels.items())
            out.append("%s{%s} %s" % (name, text, repr(float(value)) if isinstance(value, float) else value))

    run = {"run": snap["run"]}
    metric("dragon_nodes", "gauge", "Nodes of the run.", [(run, len(snap["nodes"]))])
    metric("dragon_processes", "gauge", "Processes of the run (on every node that answered).",
           [(run, len(snap["processes"]))])
    # With several nodes, a label says which (pids are per node).
    multi = len(snap["nodes"]) > 1
    procs = [({**run, **({"node": p.get("node", 0)} if multi else {}), "pid": p["pid"], "name": p["name"],
               "state": p["state"]}, p) for p in snap["processes"]]
    metric("dragon_process_cpu_seconds_total", "counter", "CPU time of a process of the run.",
           [(lab, float(p["cpu_seconds"])) for lab, p in procs])
    metric("dragon_process_resident_bytes", "gauge", "Resident memory of a process of the run.",
           [(lab, p["rss_bytes"]) for lab, p in procs])
    metric("dragon_queue_depth", "gauge", "Items waiting in a queue.",
           [({**run, "channel": q["channel"]}, q["depth"]) for q in snap["queues"]])
    metric("dragon_queue_capacity", "gauge", "Items a queue's channel holds at most.",
           [({**run, "channel": q["channel"]}, q["capacity"]) for q in snap["queues"]])
    shards = [({**run, "ddict": d["ddict"], "shard": d["shard"]}, d) for d in snap["ddicts"]]
    metric("dragon_ddict_shard_used_bytes", "gauge", "Memory a DDict shard uses.",
           [(lab, d["used_bytes"]) for lab, d in shards])
    metric("dragon_ddict_shard_bytes", "gauge", "Memory a DDict shard may use (its share).",
           [(lab, d["share_bytes"]) for lab, d in shards])
    metric("dragon_ddict_shard_keys", "gauge", "Keys in a DDict shard.", [(lab, d["keys"]) for lab, d in shards])
    return "\n".join(out) + "\n"


def serve_metrics(spec: str, run_id: str) -> Any:
    """Serve ``/metrics`` of ``run_id`` at ``[HOST:]PORT`` from a daemon
    thread; the server (``server_address`` is where it listens)."""
    import http.server
    import threading

    host, _, port = spec.rpartition(":")
    server_host = host or "127.0.0.1"
    state: dict[str, Any] = {}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served")
                return
            with lock:
                snap = snapshot(run_id, state.get("last"))
                state["last"] = snap
            body = prometheus(snap).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((server_host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="dragon-metrics", daemon=True).start()
    return server


USAGE = """usage: dragon top [RUN_ID] [-n SECONDS] [--once]

A live view of a run on this node: its nodes, its processes here (state,
CPU, resident memory, name), its queues with their depth, its DDicts'
shards with the memory each uses of its share. Refreshed every SECONDS
(default 1) until the run ends or Ctrl-C; --once prints it once. Without
RUN_ID, the newest run whose program is still running.
"""


def main(argv: list[str]) -> int:
    run_id = None
    interval = 1.0
    once = False
    args = list(argv)
    while args:
        a = args.pop(0)
        if a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if a == "--once":
            once = True
        elif a in ("-n", "--interval") or a.startswith("--interval="):
            value = a.partition("=")[2] if "=" in a else (args.pop(0) if args else "")
            try:
                interval = float(value)
                if not interval > 0:
                    raise ValueError
            except ValueError:
                sys.stderr.write("dragon top: %s needs a number of seconds > 0, not %r\n%s" % (a, value, USAGE))
                return 2
        elif a.startswith("-"):
            sys.stderr.write("dragon top: unknown option %s\n%s" % (a, USAGE))
            return 2
        elif run_id is None:
            run_id = a
        else:
            sys.stderr.write("dragon top: one run at a time\n%s" % USAGE)
            return 2
    from . import _native

    if run_id is None:
        runs = live_runs()
        if not runs:
            sys.stderr.write("dragon top: no run on this node (a run lives while its program runs)\n")
            return 1
        run_id = runs[0]
    elif not _native.valid_run_id(run_id):
        sys.stderr.write("dragon top: %r is not a run id (<pid>-<start>-<8 hex>)\n" % run_id)
        return 2
    if not runtime.owner_alive(run_id):
        sys.stderr.write("dragon top: run %s is not running on this node\n" % run_id)
        return 1
    snap = snapshot(run_id)
    others = [r for r in live_runs() if r != run_id]
    if others:
        snap["other_runs"] = others
    if once:
        sys.stdout.write(render(snap))
        return 0
    tty = sys.stdout.isatty()
    try:
        while True:
            width = os.get_terminal_size().columns if tty else 100
            frame = render(snap, width)
            sys.stdout.write(("\x1b[H\x1b[J" if tty else "") + frame)
            sys.stdout.flush()
            time.sleep(interval)
            if not runtime.owner_alive(run_id):
                sys.stdout.write("run %s ended\n" % run_id)
                return 0
            snap = snapshot(run_id, snap)
            others = [r for r in live_runs() if r != run_id]
            if others:
                snap["other_runs"] = others
    except KeyboardInterrupt:
        return 0
