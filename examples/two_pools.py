"""Two pools of different sizes working at once, on the dragon start method.

Each pool has its own channels and workers; results of one never wait for
the other. Run it as it is: ``python examples/two_pools.py``.
"""
import multiprocessing as mp
import os
import time

import dragon  # noqa: F401  registers the "dragon" start method


def slow_square(x: int) -> int:
    time.sleep(0.01)
    return x * x


def cube(x: int) -> int:
    return x * x * x


def whoami(_: object) -> int:
    time.sleep(0.005)
    return os.getpid()


if __name__ == "__main__":
    mp.set_start_method("dragon")
    with mp.Pool(2) as small, mp.Pool(6) as large:
        t = time.perf_counter()
        a = small.map_async(slow_square, range(40), 1)
        b = large.map_async(cube, range(10_000), 100)
        c = large.imap_unordered(slow_square, range(60))
        print("large pool, 10 000 cubes: sum", sum(b.get(60)))
        print("large pool, imap_unordered of 60: sum", sum(c))
        print("small pool, 40 slow squares: sum", sum(a.get(60)))
        print("both done in %.2f s" % (time.perf_counter() - t))
        small_pids = set(small.map(whoami, range(20), 1))
        large_pids = set(large.map(whoami, range(60), 1))
        assert not small_pids & large_pids
        print("workers: small pool %d, large pool %d, none shared" % (len(small_pids), len(large_pids)))
