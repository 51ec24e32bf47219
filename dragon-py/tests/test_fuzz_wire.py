"""Fuzz target ``wire``: the Python wire format (``dragon._wire`` and the
native decoding under it: the tag byte, block messages of the run's block
store, pickles carrying handles), fed mutated messages through real
channels and received through the public objects: ``Queue.get``,
``SimpleQueue.get``, ``Connection.recv`` and ``recv_bytes``, and
``dragon.native.Queue.get``.

Each input is a valid message (the committed corpus in ``corpus/wire``:
pickles of many types, tagged and raw bytes, a control message, a block
message; plus messages made at run time: pickled queues, locks, events,
values, block messages naming this run's store) with a few random byte
mutations (flip, set, insert, delete, truncate, repeat, splice,
interesting integers), written raw into the object's channel and followed
by a sentinel. What must hold: each receive gives a value or an
``Exception`` (never a crash, a hang or a ``BaseException``), and the next
receive gives the sentinel (nothing lost, nothing left behind in the
channel). It runs in a child process, so a crash is reported with the input
that caused it; the child's data limit (2 GiB) turns a pickle that asks for
an absurd allocation into ``MemoryError``.

``DRAGON_FUZZ_CASES`` executions (default 1000); ``DRAGON_FUZZ_SEED``
replays a run (the seed is printed).
"""
import os
import random
import subprocess
import sys

import pytest

from conftest import clean_env, write_script

CASES = int(os.environ.get("DRAGON_FUZZ_CASES", "1000"))
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "wire")

FUZZ_SCRIPT = r"""
import faulthandler, os, pickle, random, resource, sys
import multiprocessing as mp
import dragon
from dragon import _native, _wire, runtime
from dragon.native.queue import Queue as NativeQueue

corpus_dir, cases, seed, state_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
limit = 2 << 30
if hard == resource.RLIM_INFINITY or hard > limit:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))

INTERESTING = [(1, 0), (1, 0x7f), (1, 0x80), (1, 0xff), (2, 0xffff), (2, 0x8000), (4, 0), (4, 0x7fffffff),
               (4, 0xffffffff), (4, 1 << 20), (8, 0), (8, (1 << 63) - 1), (8, (1 << 64) - 1)]


def mutate(b, pool):
    b = bytearray(b)
    for _ in range(rng.choice((0, 1, 1, 2, 3, 4, 6, 8))):
        op = rng.randrange(8)
        n = len(b)
        if op == 0 and n:
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            b[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:
            p = rng.randrange(n + 1)
            b[p:p] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 3 and n:
            p = rng.randrange(n)
            del b[p:p + rng.randrange(1, 32)]
        elif op == 4:
            del b[rng.randrange(n + 1):]
        elif op == 5 and n:
            p = rng.randrange(n)
            b[p:p] = b[p:p + rng.randrange(1, 16)] * rng.randrange(1, 8)
        elif op == 6:
            src = rng.choice(pool)
            if src:
                f = rng.randrange(len(src))
                part = src[f:f + rng.randrange(1, 64)]
                p = rng.randrange(n + 1)
                b[p:p + len(part)] = part
        elif op == 7 and n:
            w, v = rng.choice(INTERESTING)
            p = rng.randrange(n)
            b[p:p + w] = v.to_bytes(8, "little")[:min(w, n - p)]
    return bytes(b)


def main():
    ctx = mp.get_context("dragon")
    q, sq, nq = ctx.Queue(), ctx.SimpleQueue(), NativeQueue()
    r, w = ctx.Pipe(duplex=False)
    # A real block store for this run: one large message through it.
    big = b"L" * (1 << 20)
    q.put(big)
    assert q.get(timeout=60) == big
    pool = [open(os.path.join(corpus_dir, f), "rb").read() for f in sorted(os.listdir(corpus_dir))]
    for make in (ctx.Queue, ctx.Lock, ctx.Event, lambda: ctx.Value("i", 7), NativeQueue, ctx.Semaphore):
        pool.append(bytes(_wire.dumps(make())))
    store = (runtime.shm_prefix() + "blk").encode()
    for seg, idx, gen in ((0, 0, 1), (0, 1, 2), (1, 0, 1)):
        pool.append(bytes([_native.TAG_LENT, _wire.TAG_BYTES, seg, idx]) + gen.to_bytes(4, "little")
                    + (1 << 20).to_bytes(8, "little") + store)
    sentinel = "fuzz-sentinel"
    smsg = pickle.dumps(sentinel)
    targets = [
        ("Queue.get", q._ch, lambda: q.get(timeout=60), sentinel),
        ("SimpleQueue.get", sq._ch, sq.get, sentinel),
        ("Connection.recv", w._send_ch, r.recv, sentinel),
        ("Connection.recv_bytes", w._send_ch, r.recv_bytes, smsg),
        ("native.Queue.get", nq._ch, lambda: nq.get(timeout=60), sentinel),
    ]
    outcomes = {}
    state = open(state_path, "w")
    for i in range(cases):
        name, ch, get, mark = targets[i % len(targets)]
        b = mutate(rng.choice(pool), pool)
        state.seek(0)
        state.truncate()
        state.write("%d %s %s\n" % (i, name, b.hex()))
        state.flush()
        faulthandler.dump_traceback_later(60, exit=True)  # a hang: report and end
        assert ch.send(b, -1) == _wire.SEND_OK
        assert ch.send(smsg, -1) == _wire.SEND_OK
        try:
            v = get()
            kind = "value"
        except Exception as e:
            v, kind = None, type(e).__name__
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if not (kind == "value" and type(v) is type(mark) and v == mark):
            # The mutant was received (a value or an exception): the
            # sentinel comes next. (A control message is skipped: then the
            # first receive was the sentinel.)
            nxt = get()
            assert type(nxt) is type(mark) and nxt == mark, "case %d: after the input came %r" % (i, nxt)
        v = None
        faulthandler.cancel_dump_traceback_later()
    for _, ch, _, _ in targets:
        assert not ch.readable(), "a message was left in a channel"
    values = outcomes.pop("value", 0)
    print("fuzz_wire: %d executions (seed %d) from %d valid inputs, %d values, %d exceptions: %s"
          % (cases, seed, len(pool), values, sum(outcomes.values()),
             ", ".join("%s %d" % kv for kv in sorted(outcomes.items(), key=lambda kv: -kv[1]))), flush=True)


if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(max(300, CASES // 10))
def test_fuzz_wire(tmp_path):
    seed = int(os.environ.get("DRAGON_FUZZ_SEED", random.randrange(1 << 32)))
    state = tmp_path / "state"
    script = write_script(tmp_path, FUZZ_SCRIPT)
    p = subprocess.run([sys.executable, script, CORPUS, str(CASES), str(seed), str(state)], env=clean_env(),
                       capture_output=True, text=True, timeout=max(280, CASES // 10 - 20))
    last = state.read_text() if state.exists() else ""
    assert p.returncode == 0, "seed %d, last input (case, target, hex): %s\n%s\n%s" % (
        seed, last, p.stdout[-2000:], p.stderr[-4000:])
    print(p.stdout.strip().splitlines()[-1])
    assert "fuzz_wire: %d executions" % CASES in p.stdout
