"""The DDict seed: a DDict shared with Pool workers through the initializer."""
import multiprocessing as mp

import dragon  # noqa: F401  registers the "dragon" start method
from dragon.data.ddict import DDict


def f(x):
    return x * x


_d = None


def init(d):
    global _d
    _d = d


def store(x):
    _d[x] = f(x)
    return _d[x]


if __name__ == "__main__":
    mp.set_start_method("dragon")
    with mp.Pool(5) as p:
        print(p.map(f, [1, 2, 3]))
    d = DDict(managers_per_node=1, num_nodes=1, total_mem=1024**3)
    with mp.Pool(5, initializer=init, initargs=(d,)) as p:
        print(p.map(store, [1, 2, 3]))
    print(sorted(d.items()))
    d.destroy()
