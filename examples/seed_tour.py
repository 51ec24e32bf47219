"""A tour of the seed programs in one script, on the dragon start method:

1. Pool.map
2. a Process and a Queue round trip
3. a DDict handed to Pool workers through the initializer
4. nested Pools (a pool worker opens a Pool of its own)

Run it as it is: ``python examples/seed_tour.py``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing.queues import Queue
from typing import Any

import dragon  # noqa: F401  registers the "dragon" start method
from dragon.data.ddict import DDict


def square(x: int) -> int:
    return x * x


# -- 2. Process + Queue ------------------------------------------------------------
def echo(inbox: Queue[Any], outbox: Queue[tuple[int, Any]]) -> None:
    for item in iter(inbox.get, None):
        outbox.put((os.getpid(), item))


# -- 3. DDict through the initializer ----------------------------------------------
_store: DDict | None = None


def attach(d: DDict) -> None:
    global _store
    _store = d


def record(x: int) -> int:
    assert _store is not None, "attach() runs first, as the pool's initializer"
    _store[x] = square(x)
    return os.getpid()


# -- 4. nested Pools --------------------------------------------------------------------
def inner_sum(n: int) -> int:
    with mp.Pool(2) as inner:
        return sum(inner.map(square, range(n)))


if __name__ == "__main__":
    mp.set_start_method("dragon")

    with mp.Pool(4) as pool:
        print("1. Pool.map:", pool.map(square, range(10)))

    inbox: Queue[Any] = mp.Queue()
    outbox: Queue[tuple[int, Any]] = mp.Queue()
    child = mp.Process(target=echo, args=(inbox, outbox))
    child.start()
    for msg in ("hello", 42, {"k": [1, 2]}):
        inbox.put(msg)
        pid, back = outbox.get(timeout=60)
        assert pid == child.pid and back == msg
    inbox.put(None)
    child.join()
    print("2. Process + Queue: 3 round trips with process", child.pid, "exit code", child.exitcode)

    d = DDict(managers_per_node=1, num_nodes=1, total_mem=64 * 1024**2)
    with mp.Pool(3, initializer=attach, initargs=(d,)) as pool:
        pids = set(pool.map(record, range(20), 1))
    print("3. DDict through the initializer: %d keys written by %d worker%s, d[7] = %d"
          % (len(d), len(pids), "" if len(pids) == 1 else "s", d[7]))
    d.destroy()

    with mp.Pool(2) as outer:
        print("4. nested Pools:", outer.map(inner_sum, [3, 4, 5], 1))
