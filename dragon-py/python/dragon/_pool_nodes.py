"""A :class:`dragon.pool.Pool` whose workers run on several nodes.

On one node the pool is one *part*: a task channel, a robust lock and a
ledger (see :mod:`dragon._pool_part`). Across nodes it is one part per
node that has workers, each made on its node and used only there, so that
a worker takes its tasks exactly as on one node (from a ring of its node,
under its node's lock, recording them in its node's ledger, with no system
call while tasks are queued):

* **The owner's node** (the process that made the pool): the part is made
  by the owner itself, as on one node; its workers send their results
  straight to the owner's result channel.
* **Every other node** has an *agent*: a small process the owner starts
  there. The agent makes the node's task channel, lock and ledger, an
  *inbox* (tasks from the owner) and a *local result channel*, and hands
  their handles to the owner. The owner sends that node's tasks to the
  inbox in batches (one thread per node: what is queued while a batch is
  on its way leaves in the next one); the agent puts them one by one into
  the node's task ring. Workers there send their results to the local
  result channel, and the agent forwards them to the owner in batches.
  The owner's node services carry both ways (``dragon/_remote.py``).

Task numbers
------------
Part *k* numbers its tasks from ``k << SHIFT`` on, consecutively, so that
the ledger's rules hold on each node unchanged (the next taker of a node
sees a gap in *its* numbers) while a number names its task, and its part,
across the whole pool.

Balancing
---------
A part gets tasks only once one of its workers has started (each worker
says so, once, through the result channel): tasks never wait on a node
whose workers cannot start (their arguments cannot be used there, say),
and a part that never starts ends without having held any. The owner gives
each part at most a *window* of tasks that it has not
answered yet (credits), and sends each task to the part with the largest
share of its window free. A node that finishes tasks sooner gets its
credits back sooner and so gets more of them; a slow node never holds more
than its window while others are idle. A window is two tasks per worker
plus what the node answers in ``WINDOW_SECONDS`` (its answer rate, measured
every ``WINDOW_PERIOD``; at most what its ring holds): short tasks keep a
deep queue on every node (the round trip to a node is hidden), long ones a
shallow one (a slow node keeps little that others could have done). Each
node's ring holds its window, so its workers find tasks there without
waiting for the owner while any are queued. While some node's workers are
still starting, the nodes already started hold at most a task per worker,
so that long tasks given out at once are not all queued on the first node
to start.

Loss
----
* A worker that dies: on the owner's node the owner reads its ledger slot
  (as on one node). On another node the owner asks that node's agent (a
  *reap* request in the inbox); the agent first forwards every result
  already in its local result channel (everything the dead worker sent),
  then reads the slot, and answers with the lost task (if any) and the
  slot, which the owner then fills with a new worker.
* A node that is lost (its link cut, its service gone), or whose agent
  ended: the owner sees its agent's exit (``-9`` for a lost node) or a
  failed send to its inbox. Every task sent to that part and not answered
  fails with :class:`~dragon.errors.NodeLostError` naming the node (or
  :class:`~dragon.errors.WorkerLostError` if the node is there but its
  agent ended); the part takes no more tasks; the pool goes on with the
  other nodes. A result that arrives after its task was failed is dropped:
  each task ends once.
* The owner's end ends everything: each agent holds one end of a socket
  pair whose other end the owner keeps (a tether across nodes, see
  ``docs/architecture.md``), and ends when it reads end of file; each
  worker on another node watches its node's agent.
"""
from __future__ import annotations

import collections
import pickle
import socket
import struct
import threading
import time

from multiprocessing import util

from . import _log, _native, _remote, _wire
from ._block import SharedBlock
from .errors import BrokenPoolError, DragonError, MessageTooLargeError, NodeLostError, WorkerLostError
from ._pool_part import (
    MAX_ATTACHMENTS,
    NOT_RUN,
    NOTHING,
    RESULT_CAPACITY,
    SLOT_SIZE,
    STOP,
    TASK_CAPACITY,
    Results,
    Tasks,
    TaskSplitter,
    decode_result,
    ended_how,
    ledger_size,
    main_import_error,
    result_header,
    task_header,
    worker,
)

__all__ = ["plan", "NodeTasks", "NodeResults", "SHIFT"]

#: Part k's task numbers start at k << SHIFT.
SHIFT = 48
#: Most messages, and bytes, in one batch between the owner and an agent.
BATCH_ITEMS = 512
BATCH_BYTES = 1 << 20
#: Ring slots of an agent's inbox (batches).
INBOX_CAPACITY = 64
#: Seconds the owner waits for a new agent's handles.
AGENT_START_TIMEOUT = 120.0

# Messages besides those of a part (dragon._pool_part):
_LEN = struct.Struct("<I")
# A batch: b"K" (owner -> agent) or b"B" (agent -> owner), then per message
# its length (u32) and its bytes.
_TASKS_BATCH, _RESULTS_BATCH = b"K", b"B"
# Agent -> owner, once: b"H" + pickled (part, task ring, lock, ledger, inbox,
# local results) handles.
_HELLO = b"H"
# Owner -> agent: the worker in a slot has exited (slot, pid, exit code).
_REAP = struct.Struct("<cqqq")
# Agent -> owner: a slot is free again (part, slot, whether its worker had
# started, how many started workers the part has).
_FREED = struct.Struct("<cqqqq")
# Owner -> its own result channel: every task of a part is lost (part).
_GONE = struct.Struct("<cq")
# Worker -> owner, once: a worker of a part has started (part).
_READY = struct.Struct("<cq")

_R, _B, _L, _F, _G, _N, _S = (ord(c) for c in "RBLFGNS")
_T, _Q = ord("T"), ord("Q")
_MISSING = object()


#: A part's window covers what its node does in about this long (seconds).
WINDOW_SECONDS = 0.02
#: How often a part's window is resized from its answer rate (seconds).
WINDOW_PERIOD = 0.05


def _label(node):
    for n in _remote.nodes():
        if n["index"] == node:
            return "node %d (%s)" % (node, n["hostname"])
    return "node %d" % node


def _pack(kind, items):
    out = [kind]
    for d in items:
        out.append(_LEN.pack(len(d)))
        out.append(d)
    return b"".join(out)


def _unpack(data):
    mv = memoryview(data)
    n, off, out = len(mv), 1, []
    while off < n:
        (ln,) = _LEN.unpack_from(mv, off)
        off += 4
        out.append(mv[off:off + ln])
        off += ln
    return out


# ---------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------

def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s must be an int, not %r" % (name, value))
    if value < 1:
        raise ValueError("Number of processes must be at least 1" if name == "processes"
                         else "%s must be at least 1" % name)
    return value


def plan(processes, policy, processes_per_policy):
    """Where a pool's workers go: one ``(node, cpus)`` per worker (``cpus``
    None for no CPU affinity).

    ``policy`` is None (the policy in force in this thread), a
    :class:`~dragon.infrastructure.policy.Policy` or a list of them. Each
    policy that names a host puts its workers there; one that does not
    spreads them over every node of the run, round-robin from this node
    (``distribution=BLOCK``: filling each node's CPUs before the next).
    ``processes`` defaults to the CPUs of the nodes the policy allows (the
    run's ``cpu_count()``); with a list of policies, each gets
    ``processes_per_policy`` workers (default 1), or ``processes`` are
    dealt over them in turn.
    """
    from .infrastructure.policy import Policy
    from .native import machine

    here = _remote.this_node()
    ambient = Policy.global_policy()
    if policy is None:
        policies = [ambient]
    elif isinstance(policy, Policy):
        policies = [Policy.merge(ambient, policy)]
    else:
        if isinstance(policy, (str, bytes)) or not hasattr(policy, "__iter__"):
            raise TypeError("policy must be a Policy or a list of Policies, not %r" % (policy,))
        policies = list(policy)
        if not policies:
            raise ValueError("policy is an empty list: a pool needs at least one policy")
        for p in policies:
            if not isinstance(p, Policy):
                raise TypeError("policy must be a Policy or a list of Policies; %r is not a Policy" % (p,))
        policies = [Policy.merge(ambient, p) for p in policies]
    if processes is not None:
        _positive("processes", processes)
    if processes_per_policy is not None:
        _positive("processes_per_policy", processes_per_policy)
        if processes is not None and processes != processes_per_policy * len(policies):
            raise ValueError("processes=%d disagrees with processes_per_policy=%d for %d policies (%d)"
                             % (processes, processes_per_policy, len(policies),
                                processes_per_policy * len(policies)))
        counts = [processes_per_policy] * len(policies)
    elif len(policies) == 1:
        counts = [processes]
    elif processes is None:
        counts = [1] * len(policies)
    else:
        n = len(policies)
        counts = [processes // n + (1 if k < processes % n else 0) for k in range(n)]

    nodes = {d.h_uid: d for d in machine.directory()}
    order = [here] + sorted(n for n in nodes if n != here) if here in nodes else sorted(nodes)
    out = []
    turn = 0
    for pol, count in zip(policies, counts):
        node = machine.policy_node(pol)
        cpus = machine.check_policy(pol)
        local = node is None and pol.placement == Policy.Placement.LOCAL
        if local:
            node = here
        if count is None:
            count = nodes[node].num_cpus if node is not None else sum(d.num_cpus for d in nodes.values())
            count = max(1, count)
        if count == 0:
            continue
        if node is not None:
            out += [(node, cpus)] * count
        elif pol.distribution == Policy.Distribution.BLOCK:
            k = 0
            while k < count:
                for n in order:
                    take = min(max(1, nodes[n].num_cpus), count - k)
                    out += [(n, cpus)] * take
                    k += take
                    if k == count:
                        break
        else:
            for _ in range(count):
                out.append((order[turn % len(order)], cpus))
                turn += 1
    return out


# ---------------------------------------------------------------------------
# The owner's side
# ---------------------------------------------------------------------------

class _Lifeline:
    """One end of a socket pair whose other end the pool's owner keeps. On
    another node (a tether) it reads end of file once the owner closes its
    end, or dies, or its node is lost."""

    def __init__(self, sock):
        self._sock = sock

    def __reduce__(self):
        from multiprocessing import reduction

        return _rebuild_lifeline, (reduction.DupFd(self._sock.fileno()),)

    def gone(self):
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True


def _rebuild_lifeline(df):
    sock = socket.socket(fileno=df.detach())
    sock.settimeout(None)  # never socket.setdefaulttimeout()'s
    return _Lifeline(sock)


class _Ref:
    """What a worker on another node unpickles as its task side or result
    channel: the owner holds only their handles (they live on that node)."""

    __slots__ = ("_args", "_fn")

    def __init__(self, fn, *args):
        self._fn = fn
        self._args = args

    def __reduce__(self):
        return self._fn, self._args


def _attach_tasks(ch, lock, block, slots):
    t = Tasks.__new__(Tasks)
    t.__setstate__((ch, lock, SharedBlock.attach(block), slots))
    return t


def _attach_results(handle):
    r = Results.__new__(Results)
    r.__setstate__(handle)
    return r


class _Part:
    """A pool's workers on one node and what they take their tasks from."""

    def __init__(self, index, node, slot_cpus):
        self.index = index
        self.node = node
        self.label = _label(node)
        self.base = index << SHIFT
        self.next_seq = self.base  # the next task number (task handler only)
        self.target = len(slot_cpus)
        self.slot_cpus = slot_cpus
        self.slots = _native.PoolSlots(self.target)  # free slots, workers that died before starting
        self.capacity = max(TASK_CAPACITY, 4 * self.target + 8)
        self.floor = 2 * self.target
        self.ceiling = self.capacity - self.target - 8  # room for the stop messages
        self.window = max(8, self.floor)
        self.outstanding = 0  # tasks sent and not answered
        self.answered = 0  # since `since`
        self.since = time.monotonic()
        self.rate = None  # answers per second
        self.dead = None  # (exception class, message) once the part takes no more tasks
        self.ready = False  # one of its workers has started: it takes tasks
        self.error = None  # why sending to its node failed
        self.alive_started = 0
        self.orphans = []  # workers of a part that is gone
        self.local = False
        self.tasks = None  # the owner's node: its Tasks
        # Another node: its agent, inbox and the worker's references.
        self.agent = None
        self.inbox = None
        self.tasks_ref = None
        self.results_ref = None
        self.reaping = {}  # slot -> exit code of a worker whose slot the agent is asked about
        self.outbox = collections.deque()
        self.cv = threading.Condition(threading.Lock())
        self.closing = False
        self.sender = None

    def enqueue(self, data):
        with self.cv:
            if self.closing:
                return
            self.outbox.append(data)
            self.cv.notify()

    def close(self, drop):
        with self.cv:
            self.closing = True
            if drop:
                self.outbox.clear()
            self.cv.notify()


class NodeTasks(TaskSplitter):
    """The task side of a pool across nodes (its ``_inqueue``); see the
    module docs."""

    _multinode = True

    def __init__(self, ctx, placement):
        here = _remote.this_node()
        by_node = {}
        for node, cpus in placement:
            by_node.setdefault(node, []).append(cpus)
        order = ([here] if here in by_node else []) + sorted(n for n in by_node if n != here)
        self.parts = [_Part(k, n, by_node[n]) for k, n in enumerate(order)]
        self.pending = {}  # task number -> (job, index), or None for a stop
        self._cond = threading.Condition(threading.Lock())  # credits, parts' ends
        self._waiting = False
        self._turn = 0
        self._aborted = False
        self._stops_sent = False
        self._mutex = threading.Lock()  # the worker list and slots
        self._notifier = None  # the pool's change notifier (wakes the worker handler)
        self._sentinels = []  # the worker handler's fixed sentinels (agents among them)
        self._lifeline = None
        self._done = False
        self.results = NodeResults(self)
        try:
            self._start_parts(ctx)
        except BaseException:
            self._release_names()
            raise

    # -- set-up ------------------------------------------------------------------
    def _start_parts(self, ctx):
        remote = []
        for p in self.parts:
            if p.node == _remote.this_node():
                p.local = True
                p.tasks = Tasks(p.target, p.base, p.capacity)
            else:
                remote.append(p)
        if not remote:
            return
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.settimeout(None)
        self._lifeline = mine
        try:
            for p in remote:
                agent = ctx.Process(target=_agent, name="PoolAgent-%d" % p.node,
                                    args=(_Lifeline(theirs), self.results, p.index, p.target, p.base, p.capacity))
                agent.daemon = True
                agent._dragon_node = p.node
                agent.start()
                p.agent = agent
        finally:
            theirs.close()
        # Their handles, through the result channel (nothing else is there yet).
        want = {p.index: p for p in remote}
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        ch = self.results._ch
        while want:
            msg = ch.recv(True, 0.1)
            if msg is None:
                for p in want.values():
                    code = p.agent.exitcode
                    if code is not None:
                        raise BrokenPoolError("the pool's agent process on %s %s before it was ready (its stderr "
                                              "says why)" % (p.label, ended_how(code)))
                if time.monotonic() > deadline:
                    raise BrokenPoolError("the pool's agent process on %s did not start within %d s"
                                          % (", ".join(p.label for p in want.values()), AGENT_START_TIMEOUT))
                continue
            data = msg[1]
            if data[:1] != _HELLO:
                continue
            index, task_ch, lock, ledger, inbox, results = pickle.loads(memoryview(data)[1:])
            p = want.pop(index)
            p.inbox = _native.Channel.attach(inbox)
            p.tasks_ref = _Ref(_attach_tasks, task_ch, lock, ledger, p.target)
            p.results_ref = _Ref(_attach_results, results)
        for p in remote:
            p.sender = threading.Thread(target=self._send_loop, args=(p,), name="dragon-pool-%s" % p.label,
                                        daemon=True)
            p.sender.start()

    def agent_sentinels(self):
        return [p.agent.sentinel for p in self.parts if p.agent is not None]

    # -- tasks (the task handler thread) ------------------------------------------
    def put(self, task):
        """Send a task to the part with the most free credits (waiting for
        one), or (``None``) stop every worker."""
        if task is None:
            self._stop_all()
            return
        job, i, kind, fb, payload = self.split(task)
        while True:
            part = self._reserve()
            seq = part.next_seq
            try:
                data = _wire.dumps(payload, task_header(seq, job, i, kind, len(fb)) + fb)
            except BaseException:
                self._credit(part)
                raise
            with self._cond:
                if part.dead is None:
                    self.pending[seq] = (job, i)
                    part.next_seq = seq + 1
                    break
            # The part went meanwhile: another one.
        try:
            self._deliver(part, seq, data)
        except BaseException:
            with self._cond:
                if self.pending.pop(seq, None) is not None:
                    part.outstanding -= 1
                    part.next_seq = seq
            raise

    def _deliver(self, part, seq, data):
        if part.local:
            _wire.send_blocking(part.tasks._ch, data, -2)
            # After the message is in the ring (see dragon._pool_part.Tasks._send).
            part.tasks._led.publish_sent(seq + 1)
        else:
            part.enqueue(data)

    def _reserve(self):
        parts = self.parts
        n = len(parts)
        with self._cond:
            while True:
                if self._aborted:
                    raise BrokenPoolError("the pool is being terminated")
                best, best_free, live = None, 0.0, False
                # While a node's workers are still starting, the nodes ready
                # hold no more than a task per worker: the first to start
                # would otherwise take a window's worth (long tasks sent
                # there wait while the others' workers sit idle).
                starting = any(p.dead is None and not p.ready for p in parts)
                for k in range(n):
                    p = parts[(self._turn + k) % n]
                    if p.dead is not None:
                        continue
                    live = True
                    if not p.ready:
                        continue
                    window = min(p.window, p.target) if starting else p.window
                    free = (window - p.outstanding) / window
                    if free > best_free:
                        best, best_free = p, free
                if best is not None:
                    if not best.outstanding:
                        # Busy again: its rate is measured from now.
                        best.since = time.monotonic()
                        best.answered = 0
                    best.outstanding += 1
                    self._turn = (best.index + 1) % n
                    return best
                if not live:
                    raise BrokenPoolError(self._gone_reason())
                self._waiting = True
                self._cond.wait()

    def _credit(self, part):
        with self._cond:
            part.outstanding -= 1
            if self._waiting:
                self._waiting = False
                self._cond.notify()

    def _answered(self, seq):
        """Task ``seq`` was answered (result thread): its part's credit back,
        and now and then its window resized to its rate."""
        p = self.parts[seq >> SHIFT]
        with self._cond:
            p.outstanding -= 1
            p.answered += 1
            now = time.monotonic()
            dt = now - p.since
            if dt >= WINDOW_PERIOD:
                rate = p.answered / dt
                p.rate = rate if p.rate is None else (p.rate + rate) / 2
                p.window = max(p.floor, min(p.ceiling, p.floor + int(p.rate * WINDOW_SECONDS)))
                p.answered = 0
                p.since = now
            if self._waiting:
                self._waiting = False
                self._cond.notify()

    def _ready(self, data):
        """A worker of a part has started (result thread): the part takes
        tasks."""
        p = self.parts[_READY.unpack_from(data)[1]]
        if p.ready:
            return
        with self._cond:
            p.ready = True
            if self._waiting:
                self._waiting = False
                self._cond.notify()

    def _gone_reason(self):
        return "every node of this pool is gone: " + "; ".join(
            "%s: %s" % (p.label, p.dead[1]) for p in self.parts if p.dead is not None)

    def _stop_all(self):
        """A stop message for every worker slot of every part (once)."""
        stops = []
        with self._cond:
            if self._stops_sent:
                return
            self._stops_sent = True
            for p in self.parts:
                if p.dead is not None:
                    continue
                for _ in range(p.target):
                    seq = p.next_seq
                    p.next_seq = seq + 1
                    self.pending[seq] = None
                    stops.append((p, seq))
        for p, seq in stops:
            self._deliver(p, seq, task_header(seq, -1, -1, STOP, 0))

    # -- another node's link (one thread per node) ----------------------------------
    def _send_loop(self, p):
        """Send what is queued for ``p``'s node to its agent, in batches."""
        while True:
            with p.cv:
                while not p.outbox and not p.closing:
                    p.cv.wait()
                if not p.outbox:
                    return
                items, size = [], 0
                while p.outbox and len(items) < BATCH_ITEMS and size < BATCH_BYTES:
                    d = p.outbox.popleft()
                    items.append(d)
                    size += len(d)
            try:
                _wire.send_in_order(p.inbox, _pack(_TASKS_BATCH, items), -2)
            except BaseException as e:
                p.error = "%s: %s" % (type(e).__name__, e)
                self._poke()
                return

    def _poke(self):
        n = self._notifier
        if n is not None:
            try:
                n.put(None)
            except Exception:
                pass

    # -- workers (the worker handler thread) ------------------------------------------
    def repopulate(self, ctx, Process, pool, initializer, initargs, maxtasks, wrap_exception):
        """Start a worker in every free slot of every part still there."""
        from .popen import batch_starts

        with self._mutex, batch_starts():
            for p in self.parts:
                while p.dead is None and p.error is None:
                    slot = p.slots.take(p.tasks._led if p.local else None)
                    if slot is None:
                        break
                    if p.local:
                        args = (p.tasks, self.results, initializer, initargs, maxtasks, wrap_exception, slot)
                        kwargs = {}
                    else:
                        args = (p.tasks_ref, p.results_ref, initializer, initargs, maxtasks, wrap_exception, slot)
                        kwargs = {"owner": p.agent.pid}
                    if p.slot_cpus[slot]:
                        kwargs["cpus"] = p.slot_cpus[slot]
                    if not p.ready:
                        kwargs["started"] = _READY.pack(b"S", p.index)
                    w = Process(ctx, target=worker, args=args, kwargs=kwargs)
                    w.name = w.name.replace("Process", "PoolWorker")
                    w.daemon = True
                    w._dragon_slot = slot
                    w._dragon_node = p.node
                    try:
                        w.start()
                    except Exception as e:
                        p.slots.not_started(slot)
                        if p.local:
                            raise
                        # The node cannot start processes (lost?): the
                        # part goes (maintain() says why), the pool goes on.
                        p.error = "cannot start a worker there: %s: %s" % (type(e).__name__, e)
                        self._poke()
                        break
                    w._dragon_part = p  # after start: the process object is pickled
                    pool.append(w)
                    util.debug("added worker on %s" % p.label)

    def maintain(self, ctx, Process, pool, initializer, initargs, maxtasks, wrap_exception):
        """The worker handler's round: parts that are gone, workers that
        exited, parts whose workers cannot start, then new workers."""
        for p in self.parts:
            if p.dead is None and not p.local and (p.error is not None or p.agent.exitcode is not None):
                self._lose(p, pool)
        self._reap(pool)
        for p in self.parts:
            reason = None if p.dead is not None else p.slots.broken(self._started_alive(p, pool), "on " + p.label)
            if reason is not None:
                main_error = main_import_error(ctx)
                if main_error:
                    reason += ". Each of them failed importing the main module: %s" % main_error
                util.info("dragon pool: %s" % reason)
                self._end_part(p, pool, BrokenPoolError, reason)
        self.repopulate(ctx, Process, pool, initializer, initargs, maxtasks, wrap_exception)

    def _reap(self, pool):
        with self._mutex:
            for i in reversed(range(len(pool))):
                w = pool[i]
                if w.exitcode is None:
                    continue
                w.join()
                del pool[i]
                p, slot = w._dragon_part, w._dragon_slot
                if p.dead is not None:
                    continue
                if w.exitcode != 0 and not self._done:
                    _log.logger.warning("pool worker process %s on %s %s", w.pid, p.label, ended_how(w.exitcode))
                if p.local:
                    notice = p.slots.exited(p.tasks._led, slot, w.pid, w.exitcode)
                    if notice is not None:
                        self.results._send_notice(notice)
                else:
                    # Its agent reads its slot, after forwarding what it sent.
                    p.reaping[slot] = w.exitcode
                    p.enqueue(_REAP.pack(b"Q", slot, w.pid, w.exitcode))

    def _freed(self, data):
        """An agent's answer about a slot (result thread)."""
        _, index, slot, started, alive = _FREED.unpack_from(data)
        p = self.parts[index]
        with self._mutex:
            code = p.reaping.pop(slot, None)
            if p.dead is not None:
                return
            p.slots.freed(slot, bool(started), code or 0)
            p.alive_started = alive
        self._poke()

    def _started_alive(self, p, pool):
        if p.local:
            led = p.tasks._led
            return any(led.started(w._dragon_slot) for w in pool if w._dragon_part is p)
        return p.alive_started > 0

    def _lose(self, p, pool):
        """``p``'s agent ended or its link failed: say which, end the part."""
        try:
            p.inbox.readable()  # does its node answer?
        except Exception as e:
            msg = ("this task was sent to %s, which was lost before the task's result came back (%s: %s); "
                   "it is not run again" % (p.label, type(e).__name__, e))
            self._end_part(p, pool, NodeLostError, msg)
            return
        if p.agent.exitcode is not None:
            why = "the pool's agent process %s" % ended_how(p.agent.exitcode)
        else:
            why = "sending to it failed (%s)" % p.error
        msg = ("this task was sent to %s, where %s before the task's result came back; it is not run again"
               % (p.label, why))
        self._end_part(p, pool, WorkerLostError, msg)

    def _end_part(self, p, pool, cls, msg):
        """``p`` takes no more tasks; its workers go; every task it was sent
        and did not answer fails with ``cls(msg)``."""
        with self._cond:
            if p.dead is not None:
                return
            p.dead = (cls, msg)
            self._cond.notify_all()
        util.info("dragon pool: %s" % msg)
        p.close(drop=True)
        if p.agent is not None and p.agent.sentinel in self._sentinels:
            self._sentinels.remove(p.agent.sentinel)
        with self._mutex:
            for i in reversed(range(len(pool))):
                w = pool[i]
                if w._dragon_part is p:
                    del pool[i]
                    p.orphans.append(w)
        for w in p.orphans:
            if w.exitcode is None:
                try:
                    w.kill()
                except Exception:
                    pass
        if p.agent is not None and p.agent.exitcode is None:
            try:
                p.agent.kill()
            except Exception:
                pass
        self.results._report_gone(p.index)

    # -- end ---------------------------------------------------------------------------
    def abort(self):
        """Terminate: a task handler waiting for credits gives up, nothing
        more goes to other nodes."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        for p in self.parts:
            p.close(drop=True)

    def _release_names(self):
        """The pool is over: its agents end (removing their node's names),
        this node's lock and ledger names go."""
        if self._done:
            return
        self._done = True
        for p in self.parts:
            p.close(drop=True)
            if p.tasks is not None:
                p.tasks._release_names()
        if self._lifeline is not None:
            self._lifeline.close()  # every agent reads end of file
        for p in self.parts:
            a = p.agent
            if a is None:
                continue
            try:
                a.join(30)
                if a.exitcode is None:
                    a.kill()
                    a.join(5)
            except Exception:
                pass
            for w in p.orphans:
                try:
                    w.join(0.1)
                except Exception:
                    pass

    def _drain(self):
        return False


class NodeResults(Results):
    """The result channel of a pool across nodes (its ``_outqueue``), on the
    owner's node: results of this node's workers, and batches of the other
    nodes' agents."""

    def __init__(self, tasks):
        Results.__init__(self, tasks.pending)
        self._tasks = tasks
        self._queued = collections.deque()

    def __reduce__(self):
        # To this node's workers (and the agents, through their node's
        # service): the channel, attached there.
        _wire.keep_alive(self._ch)
        return _attach_results, (self._ch.handle,)

    def _report_gone(self, index):
        _wire.send_blocking(self._ch, _GONE.pack(b"G", index), -2)

    def get(self):
        """As :meth:`dragon._pool_part.Results.get`, across nodes."""
        extra, queued, pending = self._extra, self._queued, self._pending
        while True:
            if extra:
                return extra.pop()
            if queued:
                data = queued.popleft()
            else:
                try:
                    _, data = self._ch.recv(True, None)
                except DragonError as e:
                    raise EOFError(str(e)) from None
            kind = data[0]
            if kind == _R:
                seq, job, i, obj = decode_result(data)
                if pending.pop(seq, _MISSING) is not _MISSING:
                    self._tasks._answered(seq)
                    return job, i, obj
                # Else its task was failed already (its node was lost): it ends once.
            elif kind == _B:
                queued.extend(_unpack(data))
            elif kind == _N:
                return None
            elif kind == _L:
                self._lost(data)
            elif kind == _F:
                self._tasks._freed(data)
            elif kind == _G:
                self._gone(data)
            elif kind == _S:
                self._tasks._ready(data)
            if not extra and not queued:
                # A message for the pool itself: return after it, as on one
                # node, rather than wait for the next (the standard handler
                # drains the queue at its end with poll() then get(), and
                # would wait forever).
                return NOTHING

    def _lost(self, data):
        seq, count, pid, code = _native.pool_decode_lost(data)
        pending, parts = self._pending, self._tasks.parts
        for s in range(seq + count - 1, seq - 1, -1):
            task = pending.pop(s, None)
            if task is None:
                continue
            self._tasks._answered(s)
            where = parts[s >> SHIFT].label
            if pid == NOT_RUN:
                err = BrokenPoolError(self._broken_reason)
            elif pid < 0:
                err = WorkerLostError("a pool worker process on %s died while taking this task from the pool's "
                                      "queue (the task is not run again)" % where)
            else:
                err = WorkerLostError("pool worker process %d on %s %s while running this task (the task is not "
                                      "run again)" % (pid, where, ended_how(code)))
            self._extra.append((task[0], task[1], (False, err)))

    def _gone(self, data):
        _, index = _GONE.unpack_from(data)
        cls, msg = self._tasks.parts[index].dead
        pending = self._pending
        for seq in [s for s in list(pending) if s >> SHIFT == index]:
            task = pending.pop(seq, None)
            if task is not None:
                self._extra.append((task[0], task[1], (False, cls(msg))))


# ---------------------------------------------------------------------------
# The agent (a process on each node other than the owner's)
# ---------------------------------------------------------------------------

def _agent(lifeline, results, index, slots, base, capacity):
    """Body of a pool's agent on its node: make the node's task ring, lock,
    ledger, inbox and local result channel, hand their handles to the
    owner, then move tasks in and results out until the owner's end."""
    owner = results._ch  # the owner's result channel, through the node services
    ring = _native.Channel.create(capacity, SLOT_SIZE, 0, MAX_ATTACHMENTS)
    lock = _native.Lock()
    block = SharedBlock(ledger_size(slots))
    led = _native.PoolLedger(block.handle, slots)
    led.init(base)
    inbox = _native.Channel.create(INBOX_CAPACITY, SLOT_SIZE, 0, 16)
    local = _native.Channel.create(RESULT_CAPACITY, SLOT_SIZE, 0, MAX_ATTACHMENTS)
    try:
        hello = pickle.dumps((index, ring.handle, lock.handle, block.handle, inbox.handle, local.handle))
        _wire.send_blocking(owner, _HELLO + hello, -2)
        _agent_loop(lifeline, owner, ring, led, inbox, local, index, slots)
    except (EOFError, OSError, DragonError) as e:
        # The owner's node or its result channel went away: so does the pool.
        util.debug("pool agent: %r -- exiting" % (e,))
    finally:
        # Its channels go with it (the owner's attachment to the inbox is
        # held by its node's service, which would keep it until the run
        # ends), and so do the names of the lock and the ledger.
        for f in (ring.destroy, inbox.destroy, local.destroy, lock._destroy,
                  lambda: _native.segment_unlink(block.name)):
            try:
                f()
            except Exception:
                pass


def _forward(local, owner, drain):
    """Send the results waiting in ``local`` to the owner: one batch, or
    (``drain``) all."""
    while True:
        items, size = [], 0
        while len(items) < BATCH_ITEMS and size < BATCH_BYTES:
            m = local.recv(False)
            if m is None:
                break
            items.append(m[1])
            size += len(m[1])
        if not items:
            return
        _wire.send_in_order(owner, _pack(_RESULTS_BATCH, items), -2)
        if not drain:
            return


def _agent_loop(lifeline, owner, ring, led, inbox, local, index, slots):
    chans = [local, inbox]
    gone = lifeline.gone
    while True:
        if _native.select(chans, None, gone) is None:
            return  # the owner closed its end, or is gone
        _forward(local, owner, False)
        m = inbox.recv(False)
        if m is None:
            continue
        for item in _unpack(m[1]):
            kind = item[0]
            if kind == _T:
                _put_task(ring, led, local, item)
            elif kind == _Q:
                _, slot, pid, code = _REAP.unpack(item)
                # Everything the dead worker sent goes first.
                _forward(local, owner, True)
                notice = led.lost(slot, pid, code)
                started = int(led.started(slot))
                led.reset_slot(slot)
                alive = led.started_count()
                out = [_FREED.pack(b"F", index, slot, started, alive)]
                if notice is not None:
                    out.insert(0, notice)
                _wire.send_in_order(owner, _pack(_RESULTS_BATCH, out), -2)


def _put_task(ring, led, local, item):
    seq, job, i, _, _ = _native.pool_decode_task(item)
    try:
        _wire.send_blocking(ring, item, -2)
    except MessageTooLargeError as e:
        # Larger than this node's shared memory: the task fails, the pool
        # goes on (its number is a gap that the next taker reports, and
        # the owner ignores: the task has its answer).
        _wire.send_blocking(local, _wire.dumps((False, e), result_header(seq, job, i)), -2)
        return
    # After the message is in the ring (see dragon._pool_part.Tasks._send).
    led.publish_sent(seq + 1)

