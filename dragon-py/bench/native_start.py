"""Start-up cost of dragon.native processes and groups, next to the
multiprocessing `dragon` Process and subprocess (docs/python-native.md).

    .venv/bin/python dragon-py/bench/native_start.py [--reps 40]

Prints one line per case: the median wall time of start + join.
"""
import argparse
import multiprocessing as mp
import statistics
import subprocess
import time

import dragon  # noqa: F401
from dragon.native.process import Process, ProcessTemplate
from dragon.native.process_group import ProcessGroup


def noop():
    pass


def _median_ms(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def mp_process():
    p = mp.Process(target=noop)
    p.start()
    p.join()


def native_callable():
    p = Process(noop)
    p.start()
    p.join()


def native_exec():
    p = Process("/bin/true")
    p.start()
    p.join()


def subprocess_run():
    subprocess.run(["/bin/true"], check=True)


def group_of_8():
    pg = ProcessGroup()
    pg.add_process(8, ProcessTemplate(noop))
    pg.init()
    pg.start()
    pg.join()
    pg.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=40)
    reps = ap.parse_args().reps
    mp.set_start_method("dragon")
    for _ in range(3):  # warm the template
        mp_process()
        native_callable()
    for name, fn, n in [
        ("multiprocessing dragon Process start+join", mp_process, reps),
        ("native Process(callable) start+join", native_callable, reps),
        ("native Process('/bin/true') start+join", native_exec, reps),
        ("subprocess.run(['/bin/true'])", subprocess_run, reps),
        ("ProcessGroup of 8 callables init..close", group_of_8, max(reps // 2, 1)),
    ]:
        print("%-44s %7.2f ms" % (name, _median_ms(fn, n)), flush=True)
