"""Targets for the DDict tests (importable by children; no pytest here)."""
import os
import time

_d = None


def init(d):
    global _d
    _d = d


def write_range(args):
    lo, hi = args
    for i in range(lo, hi):
        _d[("k", i)] = {"i": i, "pid": os.getpid()}
    return hi - lo


def read_range(args):
    lo, hi = args
    bad = 0
    for i in range(lo, hi):
        v = _d[("k", i)]
        if v["i"] != i:
            bad += 1
    return bad


def count(n):
    for _ in range(n):
        _d.fetch_add("counter")
    return n


def from_args(d, q):
    q.put(d["hello"])
    d["from child"] = os.getpid()


def hammer(d, seed):
    """Put/replace/delete random keys forever (killed by the test)."""
    import random

    r = random.Random(seed)
    while True:
        k = "h%d" % r.randrange(300)
        op = r.randrange(5)
        if op == 0:
            d.pop(k, None)
        else:
            d[k] = bytes([r.randrange(256)]) * r.randrange(1, 5000)


def serve_forever(d, q):
    q.put(d.serialize())
    while True:
        time.sleep(1)
