"""The DDict's manager processes: starting them (and reporting why one did
not start), their body, stopping them, where each one runs, and the
``dragon ddict-repair`` command (which repairs the files of managers that
are not running)."""
from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

from .. import _native
from ._errors import DDictError, DDictTimeoutError, error_class

__all__ = [
    "manager_main",
    "start_managers",
    "stop",
    "stop_raw",
    "shard_nodes",
    "report_lines",
    "repair_main",
]


def manager_main(desc: str, index: int, size: int, owner_pid: int, owner_start: int, conn: Connection,
                 persist_path: str | None, restore: bool, working_set: int = 1) -> None:
    """Body of a manager process."""
    told = []
    if owner_pid == 0:
        # A manager on another node than its DDict's creator (whose pid
        # means nothing here) lives as long as the run's template on its
        # node, its parent: until the run ends or the DDict is destroyed.
        owner_pid, owner_start = os.getppid(), 0

    def ready() -> None:
        conn.send(("ready", os.getpid()))
        told.append(True)

    try:
        _native.ddict_serve(desc, index, size, owner_pid, owner_start, ready, persist_path, restore,
                            working_set)
    except BaseException as e:  # noqa: BLE001 - reported to the creator
        if not told:
            try:
                conn.send(("error", "%s: %s" % (type(e).__name__, e), _error_info(e)))
            except OSError:
                pass
        os._exit(1)
    finally:
        conn.close()


_CORRUPT_ATTRS = ("path", "offset", "what", "records_after", "bytes_after", "spans")


def _error_info(e: BaseException) -> tuple[str, str, dict[str, Any]] | None:
    """What the creator needs to raise a manager's DDict error as its own
    type: ``(class name, message, attributes)``, or None."""
    if isinstance(e, DDictError) and error_class(type(e).__name__) is type(e):
        attrs = {a: getattr(e, a) for a in _CORRUPT_ATTRS if getattr(e, a, None) is not None}
        return type(e).__name__, str(e), attrs
    return None


def _manager_error(i: int, detail: str, info: Any) -> DDictError:
    """The exception for manager ``i`` failing to start."""
    if info is not None:
        name, message, attrs = info
        cls = error_class(name)
        if cls is not None:
            e = cls("DDict manager %d failed to start: %s" % (i, message))
            for a, v in attrs.items():
                setattr(e, a, v)
            return e
    return DDictError("DDict manager %d failed to start: %s" % (i, detail))


def report_lines(report: list[dict[str, Any]]) -> list[str]:
    """Human-readable lines of a repair report."""
    lines = []
    for r in report:
        what = "rewritten" if r["rewritten"] else "clean, left as it is"
        lines.append("%s: %d records kept, %s" % (r["path"], r["records"], what))
        for offset, nbytes, lost, why in r["skipped"]:
            lines.append("  skipped %d bytes at byte %d (%s)%s" % (
                nbytes, offset, why, "" if lost is None else "; %d records lost" % lost))
        if r["torn_tail"] is not None:
            offset, nbytes, _, why = r["torn_tail"]
            lines.append("  dropped a torn tail of %d bytes at byte %d (%s)" % (nbytes, offset, why))
        if r["damaged_copy"]:
            lines.append("  the damaged original is kept as %s" % r["damaged_copy"])
    return lines


def repair_main(argv: list[str]) -> int:
    """``dragon ddict-repair <persist_path> <name>``."""
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        sys.stderr.write("usage: dragon ddict-repair <persist_path> <name>\n\n"
                         "Repair the persistence files of a durable DDict that no program is "
                         "using:\nkeep every valid record, report what was skipped, rewrite the "
                         "files clean.\n")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    path, name = argv
    if not os.path.isdir(path):
        sys.stderr.write("dragon ddict-repair: %s is not a directory\n" % path)
        return 2
    try:
        report = _native.ddict_repair(path, name)
    except DDictError as e:
        sys.stderr.write("dragon ddict-repair: %s\n" % e)
        return 1
    if not report:
        sys.stderr.write("dragon ddict-repair: no files of a DDict named %r in %s\n" % (name, path))
        return 1
    for line in report_lines(report):
        print(line)
    skipped = sum(len(r["skipped"]) for r in report)
    print("%d files, %d damaged spans skipped" % (len(report), skipped))
    return 0


def stop(client: _native.DDictClient, procs: list[BaseProcess]) -> None:
    """Destroy at exit (the creator's finalizer)."""
    try:
        client.destroy()
    except Exception:  # noqa: BLE001 - already gone
        pass
    for p in procs:
        try:
            p.join(5)
            if p.exitcode is None:
                p.kill()
                p.join(1)
        except Exception:  # noqa: BLE001
            pass


def stop_raw(desc: str, procs: list[BaseProcess]) -> None:
    """Destroy the DDict ``desc`` describes and end its managers ``procs``
    (a creator that failed to start it, or to attach to it)."""
    try:
        _native.DDictClient(desc).destroy()
    except Exception:  # noqa: BLE001
        pass
    for p in procs:
        if p.exitcode is None:
            p.kill()
        p.join(1)


def shard_nodes(managers_per_node: int, num_nodes: int) -> list[int]:
    """The node of each shard: ``managers_per_node`` on each of
    ``num_nodes`` nodes from this one (all here on one node)."""
    from .. import _remote

    here = _remote.this_node()
    nodes = [here] * num_nodes
    if _remote.multinode():
        indexes = sorted(n["index"] for n in _remote.nodes())
        if num_nodes > len(indexes):
            raise ValueError("num_nodes=%d, but the run has %d nodes" % (num_nodes, len(indexes)))
        start = indexes.index(here) if here in indexes else 0
        nodes = [indexes[(start + k) % len(indexes)] for k in range(num_nodes)]
    return [node for node in nodes for _ in range(managers_per_node)]


def start_managers(desc: str, n: int, size: int, timeout: float, persist_path: str | None, restore: bool,
                   working_set: int = 1, nodes: list[int] | None = None) -> list[BaseProcess]:
    """Start the ``n`` managers of the DDict ``desc`` (manager ``i`` on
    ``nodes[i]``, all here without ``nodes``) and wait until each serves its
    shard, at most ``timeout`` seconds in all; raises the error of a manager
    that failed (its own DDict error type), having ended them all."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx: Any = multiprocessing.get_context("dragon")  # the dragon context (registered by import dragon)
    Pipe = ctx.Pipe  # its ends cross nodes
    pid, start = _native.ddict_self_identity()
    here = _native.this_node()
    procs, conns = [], []
    try:
        for i in range(n):
            r, w = Pipe(duplex=False)
            node = None if nodes is None else nodes[i]
            # The creator's identity only means something on its own node.
            owner = (pid, start) if node is None or node == here else (0, 0)
            p = ctx.Process(target=manager_main,
                            args=(desc, i, size, owner[0], owner[1], w, persist_path, restore,
                                  working_set),
                            name="ddict-manager-%d" % i, daemon=True)
            if node is not None:
                p._dragon_node = node
            p.start()
            w.close()
            procs.append(p)
            conns.append(r)
        end = time.monotonic() + timeout
        for i, (p, r) in enumerate(zip(procs, conns)):
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise DDictTimeoutError("DDict manager %d did not start within %s s" % (i, timeout))
                ready = wait([r, p.sentinel], left)
                if r in ready:
                    try:
                        what, detail, *info = r.recv()
                    except EOFError:
                        what, detail, info = "error", "exited with code %s" % p.exitcode, []
                    if what == "ready":
                        break
                    raise _manager_error(i, detail, info[0] if info else None)
                if p.sentinel in ready:
                    p.join(1)
                    raise DDictError("DDict manager %d died while starting (exit code %s)"
                                     % (i, p.exitcode))
    except BaseException:
        stop_raw(desc, procs)
        raise
    finally:
        for r in conns:
            r.close()
    return procs
