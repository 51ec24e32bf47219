"""The DDict's manager processes: starting them (and reporting why one did
not start), their body, stopping them, where each one runs, and the
``dragon ddict-repair`` command (which repairs the files of managers that
are not running)."""
from __future__ import annotations

import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

from .. import _native
from ._errors import DDictError, DDictPersistError, DDictTimeoutError, error_class

__all__ = [
    "manager_main",
    "start_managers",
    "stop",
    "stop_raw",
    "shard_nodes",
    "plan_managers",
    "report_lines",
    "repair_main",
]


def shard_files(persist_path: str, name: str, index: int) -> list[str]:
    """The log and snapshot of shard ``index`` of the DDict ``name``."""
    return [os.path.join(persist_path, "%s.%d.%s" % (name, index, ext)) for ext in ("wal", "snap")]


def shape_file(persist_path: str, name: str) -> str:
    """The record of how many shards the DDict ``name`` was written with,
    kept beside shard 0's files."""
    return os.path.join(persist_path, "%s.shards" % name)


def _read_shape(persist_path: str, name: str) -> int | None:
    try:
        with open(shape_file(persist_path, name)) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _write_shape(persist_path: str, name: str, shards: int) -> None:
    """Record ``shards`` (a file ``0600``, replaced whole)."""
    path = shape_file(persist_path, name)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, as the shard's files
        os.write(fd, b"%d\n" % shards)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def manager_main(desc: str, index: int, size: int, owner_pid: int, owner_start: int, conn: Connection,
                 persist_path: str | None, restore: bool, working_set: int = 1,
                 check_name: str | None = None, shape: tuple[str, int] | None = None,
                 cpus: list[int] | None = None) -> None:
    """Body of a manager process (on ``cpus``, if given). With
    ``check_name`` (a restore), first tell the creator whether this node
    has files of the shard, and restore only when it answers ``"go"``, or
    ``"repair"``: then first repair the shard's files on this node's disk
    and send the report (see
    :func:`start_managers`). ``shape``, ``(name, shards)`` for shard 0 of
    a durable DDict: its count of shards is recorded beside its files
    (and, on a restore, what was recorded is told to the creator first)."""
    told = []
    if owner_pid == 0:
        # A manager on another node than its DDict's creator (whose pid
        # means nothing here) lives as long as the run's template on its
        # node, its parent: until the run ends or the DDict is destroyed.
        owner_pid, owner_start = os.getppid(), 0

    def ready() -> None:
        if shape is not None and persist_path is not None:
            _write_shape(persist_path, shape[0], shape[1])
        conn.send(("ready", os.getpid()))
        told.append(True)

    try:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if check_name is not None and persist_path is not None:
            found = any(os.path.exists(f) for f in shard_files(persist_path, check_name, index))
            on_disk = _native.ddict_shards_on_disk(persist_path, check_name)
            written = _read_shape(persist_path, check_name) if shape is not None else None
            conn.send(("found", found, socket.gethostname(), on_disk, written))
            word = conn.recv()
            if word == "repair":
                conn.send(("repaired", _native.ddict_repair(persist_path, check_name, None, index)))
            elif word != "go":
                os._exit(0)
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


def _node_order(durable: bool) -> list[int]:
    """The run's nodes in the order a DDict's managers fill them: from this
    node on, wrapping around; a durable DDict's from the run's first node,
    whichever node creates it, so that a restore from any node finds each
    shard's files on the node that logged them (each node may have its own
    disk). On one node: this one."""
    from .. import _remote

    here = _remote.this_node()
    if not _remote.multinode():
        return [here]
    indexes = sorted(n["index"] for n in _remote.nodes())
    start = 0 if durable or here not in indexes else indexes.index(here)
    return indexes[start:] + indexes[:start]


def shard_nodes(managers_per_node: int, num_nodes: int, durable: bool = False) -> list[int]:
    """The node of each shard: ``managers_per_node`` on each of the first
    ``num_nodes`` nodes of :func:`_node_order` (all here on one node)."""
    from .. import _remote

    order = _node_order(durable)
    if not _remote.multinode():
        order = order * num_nodes
    elif num_nodes > len(order):
        raise ValueError("num_nodes=%d, but the run has %d nodes" % (num_nodes, len(order)))
    return [node for node in order[:num_nodes] for _ in range(managers_per_node)]


def plan_managers(managers_per_node: int, num_nodes: int, policy: Any, managers_per_policy: int,
                  durable: bool) -> tuple[list[int], list[list[int] | None]]:
    """The node of each manager, and the CPUs it may run on (``None``: any),
    as HPE Dragon's ``policy`` argument places them:

    * no policy: :func:`shard_nodes`;
    * one :class:`~dragon.infrastructure.policy.Policy`: the
      ``managers_per_node * num_nodes`` managers on the node it names (this
      node for ``Placement.LOCAL``; as without a policy if it names none),
      on its ``cpu_affinity``;
    * a list of policies: ``managers_per_policy`` managers for each, in
      order, each group on the node its policy names (one that names none:
      the next node of :func:`_node_order`) and on its CPUs.

    A policy naming a host or CPUs the run does not have raises
    :class:`~dragon.infrastructure.policy.PolicyError`."""
    from .. import _remote
    from ..infrastructure.policy import Policy
    from ..native import machine

    def named_node(p: Policy) -> int | None:
        node = machine.policy_node(p)
        return _remote.this_node() if node is None and p.placement == Policy.Placement.LOCAL else node

    count = managers_per_node * num_nodes
    if policy is None:
        return shard_nodes(managers_per_node, num_nodes, durable), [None] * count
    if isinstance(policy, Policy):
        named = named_node(policy)
        spread = [named] * count if named is not None else shard_nodes(managers_per_node, num_nodes, durable)
        return spread, [machine.check_policy(policy)] * count
    if not isinstance(policy, (list, tuple)) or not policy:
        raise TypeError("policy must be a Policy or a non-empty list of them, not %r" % (policy,))
    for p in policy:
        if not isinstance(p, Policy):
            raise TypeError("policy: every item of the list must be a Policy, not %r" % (p,))
    order = _node_order(durable)
    nodes: list[int] = []
    cpus: list[list[int] | None] = []
    for j, p in enumerate(policy):
        named = named_node(p)
        node = named if named is not None else order[j % len(order)]
        nodes += [node] * managers_per_policy
        cpus += [machine.check_policy(p)] * managers_per_policy
    return nodes, cpus


def start_managers(desc: str, n: int, size: int, timeout: float, persist_path: str | None, restore: bool,
                   working_set: int = 1, nodes: list[int] | None = None,
                   name: str | None = None, repair_reports: list[dict[str, Any]] | None = None,
                   cpus: list[list[int] | None] | None = None) -> list[BaseProcess]:
    """Start the ``n`` managers of the DDict ``desc`` (manager ``i`` on
    ``nodes[i]``, all here without ``nodes``, on the CPUs ``cpus[i]`` if
    that is not ``None``) and wait until each serves its
    shard, at most ``timeout`` seconds in all; raises the error of a manager
    that failed (its own DDict error type), having ended them all.

    A restore (``restore`` with ``persist_path`` and the DDict's ``name``)
    first asks each manager whether its node has files of its shard: when
    some shards have files and others none (restored from another node
    than the one that logged them, or files lost), it raises
    :class:`DDictPersistError` naming them before any manager touches its
    files; when no shard has any, the DDict starts empty. With
    ``repair_reports`` (a list), each manager first repairs its shard's
    files on its own node's disk, and the reports are added to the list in
    shard order."""
    import multiprocessing

    ctx: Any = multiprocessing.get_context("dragon")  # the dragon context (registered by import dragon)
    Pipe = ctx.Pipe  # its ends cross nodes
    pid, start = _native.ddict_self_identity()
    here = _native.this_node()
    check = name if restore and persist_path is not None else None
    procs, conns = [], []
    try:
        for i in range(n):
            # A restore's managers wait for the creator's word: duplex.
            r, w = Pipe(duplex=check is not None)
            node = None if nodes is None else nodes[i]
            # The creator's identity only means something on its own node.
            owner = (pid, start) if node is None or node == here else (0, 0)
            shape = (name, n) if i == 0 and persist_path is not None and name is not None else None
            p = ctx.Process(target=manager_main,
                            args=(desc, i, size, owner[0], owner[1], w, persist_path, restore,
                                  working_set, check, shape, None if cpus is None else cpus[i]),
                            name="ddict-manager-%d" % i, daemon=True)
            if node is not None:
                p._dragon_node = node
            p.start()
            w.close()
            procs.append(p)
            conns.append(r)
        end = time.monotonic() + timeout
        if check is not None:
            assert persist_path is not None
            found = [_message(i, p, r, end, timeout) for i, (p, r) in enumerate(zip(procs, conns))]
            # What shard 0's node recorded, if any shard has files (else a
            # new DDict, recorded anew).
            # The record is the word; without one (files written before
            # there was a record), files of a shard beyond the count say it.
            written = found[0][4] if any(has for _, has, _, _, _ in found) else None
            beyond = [] if written is not None else sorted(
                {j for _, _, _, on_disk, _ in found for j in on_disk if j >= n})
            if written is not None and written != n or beyond:
                raise _shape_error(check, persist_path, n, written, beyond)
            missing = [(i, host) for i, (_, has, host, _, _) in enumerate(found) if not has]
            if missing and len(missing) < n:
                raise _missing_error(check, persist_path, n, missing, nodes)
            for r in conns:
                r.send("go" if repair_reports is None else "repair")
            if repair_reports is not None:
                for i, (p, r) in enumerate(zip(procs, conns)):
                    repair_reports.extend(_message(i, p, r, end, timeout)[1])
        for i, (p, r) in enumerate(zip(procs, conns)):
            _message(i, p, r, end, timeout)
    except BaseException:
        stop_raw(desc, procs)
        raise
    finally:
        for r in conns:
            r.close()
    return procs


def _message(i: int, p: BaseProcess, r: Connection, end: float, timeout: float) -> list[Any]:
    """The next message of starting manager ``i`` (``ready``, ``found`` or
    ``repaired``);
    raises its error, or if it died or did not answer by ``end``."""
    from multiprocessing.connection import wait

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
            if what in ("ready", "found", "repaired"):
                return [what, detail, *info]
            raise _manager_error(i, detail, info[0] if info else None)
        if p.sentinel in ready:
            p.join(1)
            raise DDictError("DDict manager %d died while starting (exit code %s)" % (i, p.exitcode))


def _shape_error(name: str, persist_path: str, n: int, written: int | None,
                 beyond: list[int]) -> DDictPersistError:
    """The error of a restore with ``n`` shards of a DDict written with
    ``written`` (as recorded beside shard 0's files), or whose files of
    shards ``beyond`` (indexes ``>= n``) were found."""
    if written is not None:
        what = "it was written with %d (%s)" % (written, shape_file(persist_path, name))
    else:
        what = "%s holds files of its shard%s %s too, so it was written with at least %d" % (
            persist_path, "s" if len(beyond) > 1 else "", ", ".join(map(str, beyond)), beyond[-1] + 1)
    e = DDictPersistError(
        "cannot restore the DDict %r with %d shards: %s. Restoring with another count would leave keys "
        "out and look others up in the wrong shards. Restore with the same managers_per_node and "
        "num_nodes as when it was written." % (name, n, what))
    e.shards = beyond  # type: ignore[attr-defined]
    e.written = written  # type: ignore[attr-defined]
    e.path = persist_path  # type: ignore[attr-defined]
    return e


def _missing_error(name: str, persist_path: str, n: int, missing: list[tuple[int, str]],
                   nodes: list[int] | None) -> DDictPersistError:
    """The error of a restore that found files of some shards but none of
    ``missing`` (``(shard, host)`` pairs)."""
    where = ", ".join("shard %d (%s) on node %d (%s)" % (
        i, " or ".join(os.path.basename(f) for f in shard_files(persist_path, name, i)),
        _native.this_node() if nodes is None else nodes[i], host) for i, host in missing)
    e = DDictPersistError(
        "cannot restore the DDict %r: %s in %s: no log or snapshot there, though %d of its "
        "%d shards have theirs. Restoring would start %s empty and lose what %s held. "
        "Restore with the same managers_per_node and num_nodes as when it was written, in a run "
        "with the same nodes in the same order (a durable DDict's shards are on the run's first "
        "num_nodes nodes), or bring the files to the node named." % (
            name, where, persist_path, n - len(missing), n,
            "that shard" if len(missing) == 1 else "those shards",
            "it" if len(missing) == 1 else "they"))
    e.shards = [i for i, _ in missing]  # type: ignore[attr-defined]
    e.path = persist_path  # type: ignore[attr-defined]
    return e
