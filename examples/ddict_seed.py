"""The DDict seed: a DDict shared with Pool workers through the initializer."""
import multiprocessing as mp

import dragon  # noqa: F401  registers the "dragon" start method
from dragon.data.ddict import DDict


def f(x: int) -> int:
    return x * x


_d: DDict | None = None


def init(d: DDict) -> None:
    global _d
    _d = d


def store(x: int) -> int:
    assert _d is not None, "init() runs first, as the pool's initializer"
    _d[x] = f(x)
    stored: int = _d[x]
    return stored


if __name__ == "__main__":
    mp.set_start_method("dragon")
    with mp.Pool(5) as p:
        print(p.map(f, [1, 2, 3]))
    d = DDict(managers_per_node=1, num_nodes=1, total_mem=1024**3)
    with mp.Pool(5, initializer=init, initargs=(d,)) as p:
        print(p.map(store, [1, 2, 3]))
    print(sorted(d.items()))
    d.destroy()
