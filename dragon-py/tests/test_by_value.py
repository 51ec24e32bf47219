"""Functions by value where by reference cannot work: lambdas and closures
of a script, for Pool methods, Process(target=...) and
ProcessPoolExecutor; by reference stays the default."""
import pickle
import subprocess
import sys
import threading

import pytest

from conftest import clean_env, write_script

SCRIPT = """
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor


def make_adder(n):
    def add(x):
        return x + n
    return add


def put_twice(q, f, x):
    q.put(f(x))


if __name__ == "__main__":
    mp.set_start_method("dragon")
    scale = 3
    with mp.Pool(2) as p:
        print("map", p.map(lambda x: x * scale, range(5)))
        print("closure", p.map(make_adder(10), range(3)))
        print("apply", p.apply(lambda a, b: a + b, (1, 2)))
        print("apply_async", p.apply_async(make_adder(1), (41,)).get(timeout=60))
        print("starmap", p.starmap(lambda a, b: a * b, [(2, 3), (4, 5)]))
        print("imap", list(p.imap(lambda x: -x, range(3))))
        print("imap_unordered", sorted(p.imap_unordered(make_adder(100), range(3))))
    q = mp.Queue()
    pr = mp.Process(target=lambda q: q.put("lambda target"), args=(q,))
    pr.start()
    print("process", q.get(timeout=60))
    pr.join()
    pr = mp.Process(target=put_twice, args=(q, lambda x: x * 2, 21))
    pr.start()
    print("process arg", q.get(timeout=60))
    pr.join()
    with ProcessPoolExecutor(2) as ex:
        print("executor map", list(ex.map(lambda x: x ** 2, range(4))))
        print("executor submit", ex.submit(make_adder(5), 1).result(timeout=60))
"""


def test_lambdas_and_closures_in_a_script(tmp_path):
    path = write_script(tmp_path, SCRIPT)
    out = subprocess.run([sys.executable, path], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "map [0, 3, 6, 9, 12]",
        "closure [10, 11, 12]",
        "apply 3",
        "apply_async 42",
        "starmap [6, 20]",
        "imap [0, -1, -2]",
        "imap_unordered [100, 101, 102]",
        "process lambda target",
        "process arg 42",
        "executor map [0, 1, 4, 9]",
        "executor submit 6",
    ]


def test_the_standard_start_methods_are_left_alone(tmp_path):
    # A spawn executor in a program that imported dragon: its lambda fails
    # to pickle exactly as without dragon.
    path = write_script(tmp_path, """
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        import dragon

        if __name__ == "__main__":
            with ProcessPoolExecutor(1, mp_context=mp.get_context("dragon")) as ex:
                print(ex.submit(lambda: "dragon").result(timeout=60))
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
                try:
                    ex.submit(lambda: 1).result(timeout=60)
                except Exception as e:
                    print("spawn", type(e).__name__)
    """)
    out = subprocess.run([sys.executable, path], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["dragon", "spawn PicklingError"]


def top_level(x):
    return x


def test_by_reference_stays_the_default():
    from dragon import _wire

    data = bytes(_wire.dumps_function(top_level))
    assert b"cloudpickle" not in data
    assert pickle.loads(data) is top_level
    f = lambda x: x  # noqa: E731
    data = bytes(_wire.dumps_function(f))
    assert b"cloudpickle" in data
    assert pickle.loads(data)(7) == 7
    assert _wire.findable(top_level) and not _wire.findable(f)


def test_what_cannot_go_by_value_either_raises_the_first_error():
    from dragon import _wire

    lock = threading.Lock()

    def holds_lock():
        return lock

    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)) as info:
        _wire.dumps_function(holds_lock)
    # pickle's own complaint about the nested function, not cloudpickle's
    assert "holds_lock" in str(info.value)


def test_unpicklable_target_still_fails_at_start(tmp_path):
    path = write_script(tmp_path, """
        import multiprocessing as mp
        import threading

        if __name__ == "__main__":
            mp.set_start_method("dragon")
            lock = threading.Lock()
            p = mp.Process(target=lambda: lock)
            try:
                p.start()
            except Exception as e:
                print(type(e).__name__)
    """)
    out = subprocess.run([sys.executable, path], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("PicklingError", "AttributeError", "TypeError")
