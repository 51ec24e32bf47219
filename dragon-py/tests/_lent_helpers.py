"""Process targets for the zero-copy bytes tests."""
import hashlib
import time

from dragon import _native


def echo_with_stats(qin, qout):
    """Echo until None; then report this process's lent counters."""
    while True:
        m = qin.get()
        if m is None:
            break
        qout.put(m)
    qout.put(_native.lent_stats())


def keep_first_then_check(qin, qout):
    """Receive x, send it straight back (the block passes on while x is
    still alive here), receive y, then report x's digest before and after
    and y's digest."""
    x = qin.get(timeout=60)
    before = hashlib.sha256(x).hexdigest()
    qout.put(x)
    y = qin.get(timeout=60)
    qout.put((before, hashlib.sha256(x).hexdigest(), hashlib.sha256(y).hexdigest(), len(x), len(y)))


def hold(qin, qout):
    """Receive objects and keep them until killed."""
    kept = []
    while True:
        kept.append(qin.get())
        qout.put(_native.lent_stats()["live"])


def hoard(qin, qout, n):
    """Keep n large objects, then report their digests."""
    kept = [qin.get(timeout=60) for _ in range(n)]
    time.sleep(0.2)
    qout.put([hashlib.sha256(k).hexdigest() for k in kept])


def put_and_die(q, how):
    """Put a large object, then die (SIGKILL, or a plain exit)."""
    import os
    import signal

    q.put(b"k" * (1 << 20))
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(0)


def big_result(i):
    """A task whose result pickles to more than a block's threshold."""
    return bytes([i % 256]) * (600 << 10), i
