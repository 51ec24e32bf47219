"""Pool.map on the dragon start method (the seed program)."""
import multiprocessing as mp

import dragon  # noqa: F401  registers the "dragon" start method


def f(x: int) -> int:
    return x * x


if __name__ == "__main__":
    mp.set_start_method("dragon")
    with mp.Pool(5) as p:
        print(p.map(f, [1, 2, 3]))
