"""The standard library's guidance kept: a script that forgets
``if __name__ == "__main__":`` gets spawn's bootstrapping message, in every
child and in the parent's error, and never an unrelated exception."""
import subprocess
import sys

import pytest

from conftest import clean_env, write_script

# The text spawn's _check_not_importing_main raises (on every CPython from 3.11).
BOOTSTRAP = "An attempt has been made to start a new process before the"
IDIOM = "if __name__ == '__main__':"

UNGUARDED = """
import multiprocessing as mp
mp.set_start_method("dragon")

def f(x):
    return x * x

with mp.Pool(2) as p:
    print(p.map(f, range(10)))
"""

# set_start_method at module level, the pool under the guard: the children
# still run the unguarded call.
HALF_GUARDED = """
import multiprocessing as mp
mp.set_start_method("dragon")

def f(x):
    return x * x

if __name__ == "__main__":
    with mp.Pool(2) as p:
        print(p.starmap(pow, [(2, 3)]), p.map(f, range(10)))
"""

# No set_start_method at all (run by the dragon command): the Pool at module
# level is what the children reach.
POOL_ONLY = """
import multiprocessing as mp

def f(x):
    return x * x

with mp.Pool(2) as p:
    print(p.map(f, range(10)))
"""


def _check(out):
    assert out.returncode != 0, out.stdout
    err = out.stderr
    assert "ZeroDivisionError" not in err, err
    assert "context has already been set" not in err, err
    # The parent's error (the last traceback) repeats the message.
    last = err[err.rindex("Traceback (most recent call last)"):]
    assert "BrokenPoolError" in last, err
    assert BOOTSTRAP in last and IDIOM in last, err
    # And the children said it too (their tracebacks come first).
    assert err.count(BOOTSTRAP) >= 2, err


@pytest.mark.timeout(900)
def test_unguarded_script_20_of_20(tmp_path):
    path = write_script(tmp_path, UNGUARDED)
    for run in range(20):
        out = subprocess.run([sys.executable, path], env=clean_env(), capture_output=True, text=True,
                             timeout=120)
        try:
            _check(out)
        except AssertionError:
            print("run %d of 20" % (run + 1))
            raise


@pytest.mark.timeout(300)
def test_set_start_method_at_module_level_only(tmp_path):
    path = write_script(tmp_path, HALF_GUARDED)
    for _ in range(3):
        out = subprocess.run([sys.executable, path], env=clean_env(), capture_output=True, text=True,
                             timeout=120)
        _check(out)


@pytest.mark.timeout(300)
def test_unguarded_pool_under_the_dragon_command(tmp_path):
    path = write_script(tmp_path, POOL_ONLY)
    for _ in range(3):
        out = subprocess.run([sys.executable, "-m", "dragon", path], env=clean_env(), capture_output=True,
                             text=True, timeout=120)
        _check(out)


def test_guarded_script_and_forced_call_still_work(tmp_path):
    # force=True at module level is allowed (as with the standard library),
    # and so is set_start_method under the guard.
    path = write_script(tmp_path, """
        import multiprocessing as mp
        mp.set_start_method("dragon", force=True)

        def f(x):
            return x + 1

        if __name__ == "__main__":
            mp.set_start_method("dragon", force=True)
            with mp.Pool(2) as p:
                print(p.map(f, [1, 2]))
    """)
    out = subprocess.run([sys.executable, path], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[2, 3]"


def test_map_on_a_pool_without_live_workers_does_not_divide_by_zero(ctx):
    # The chunk size comes from the workers the pool keeps, not those alive.
    from dragon.pool import Pool

    with Pool(2, context=ctx) as p:
        saved, p._pool = p._pool, []
        try:
            result = p.map_async(abs, [-1, -2, -3])
        finally:
            p._pool = saved
        assert result.get(timeout=60) == [1, 2, 3]
