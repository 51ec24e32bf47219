#!/usr/bin/env python3
"""Process start-up costs of a start method (measures; asserts nothing).

    python dragon-py/bench/startup.py [--methods dragon,fork,spawn] [--reps 5]

Prints one JSON line per method with medians over interleaved repetitions:
  process_start_join_ms   Process(target=noop).start(); join() in a warm run
  empty_script_s          a whole `python script.py` doing
                          `import dragon; set_start_method(M); Pool(2).map(...)`
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SCRIPT = """
import multiprocessing as mp
import dragon

def f(x):
    return x * x

if __name__ == "__main__":
    mp.set_start_method({method!r})
    with mp.Pool(2) as p:
        p.map(f, range(4))
"""

LATENCY = """
import json, sys, time
import multiprocessing as mp
import dragon

def noop():
    pass

if __name__ == "__main__":
    ctx = mp.get_context({method!r})
    n = {n}
    p = ctx.Process(target=noop); p.start(); p.join()  # warm-up (starts the template)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        p = ctx.Process(target=noop)
        p.start()
        p.join()
        ts.append(time.perf_counter() - t)
    ts.sort()
    print(json.dumps(ts[len(ts) // 2]))
"""


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("DRAGON_")}


def run(path):
    t = time.perf_counter()
    subprocess.run([sys.executable, path], check=True, env=clean_env())
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", default="dragon,fork,spawn")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--latency-n", type=int, default=50)
    args = ap.parse_args()
    methods = args.methods.split(",")
    tmp = tempfile.mkdtemp(prefix="dragon-bench-")
    scripts, lat_scripts = {}, {}
    for m in methods:
        scripts[m] = os.path.join(tmp, "empty_%s.py" % m)
        with open(scripts[m], "w") as f:
            f.write(SCRIPT.format(method=m))
        lat_scripts[m] = os.path.join(tmp, "lat_%s.py" % m)
        with open(lat_scripts[m], "w") as f:
            f.write(LATENCY.format(method=m, n=args.latency_n))
    empty = {m: [] for m in methods}
    lat = {m: [] for m in methods}
    for m in methods:
        run(scripts[m])  # warm the page cache
    for _ in range(args.reps):
        for m in methods:
            empty[m].append(run(scripts[m]))
            out = subprocess.run([sys.executable, lat_scripts[m]], check=True, env=clean_env(),
                                 capture_output=True, text=True).stdout
            lat[m].append(json.loads(out))
    for m in methods:
        print(json.dumps({
            "method": m,
            "empty_script_s": round(statistics.median(empty[m]), 4),
            "process_start_join_ms": round(1000 * statistics.median(lat[m]), 3),
            "reps": args.reps,
        }))


if __name__ == "__main__":
    main()
