"""Process targets for the tests (importable by children; no pytest here)."""
import os
import sys
import time

import multiprocessing as mp

G = None


def noop():
    pass


def exit_with(code):
    sys.exit(code)


def raise_error():
    raise RuntimeError("boom from the child")


def hard_exit(code):
    os._exit(code)


def self_signal(sig):
    os.kill(os.getpid(), sig)
    time.sleep(30)


def sleep(seconds):
    time.sleep(seconds)


def report(q):
    """Send what the child sees of itself and its parent."""
    parent = mp.parent_process()
    q.put({
        "pid": os.getpid(),
        "name": mp.current_process().name,
        "daemon": mp.current_process().daemon,
        "parent_pid": parent.pid if parent else None,
        "parent_alive": parent.is_alive() if parent else None,
        "start_method": mp.get_start_method(),
        "cwd": os.getcwd(),
        "env": os.environ.get("DRAGON_TEST_VAR"),
        "sys_path_has": "/dragon-test-path" in sys.path,
        "run_id": os.environ.get("DRAGON_RUN_ID"),
    })


def write_stdio(tag):
    print("stdout-" + tag, flush=True)
    print("stderr-" + tag, file=sys.stderr, flush=True)
    os.write(1, ("raw-" + tag + "\n").encode())


def square(x):
    return x * x


def init_global(value):
    global G
    G = value


def read_global(_):
    return G


def nested_pool(n):
    """Start a Pool from inside a child (asks the same template)."""
    ctx = mp.get_context("dragon")
    with ctx.Pool(2) as p:
        return sum(p.map(square, range(n)))


def nested_process(q):
    """Start a grandchild; report both pids and the grandchild's exit code."""
    ctx = mp.get_context("dragon")
    p = ctx.Process(target=exit_with, args=(5,))
    p.start()
    p.join()
    q.put((os.getpid(), p.pid, p.exitcode))


def orphan_watcher(q, hold):
    """Start a grandchild that outlives this process; it reports whether it
    sees its parent alive before and after the parent exits."""
    ctx = mp.get_context("dragon")
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_watch_parent, args=(q, r))
    p.start()
    w.send("go")
    hold.wait(30)
    os._exit(0)


def _watch_parent(q, r):
    r.recv()
    parent = mp.parent_process()
    before = parent.is_alive()
    q.put(("before", before))
    parent.join(30)
    q.put(("after", parent.is_alive()))


def start_many(n, q):
    """Start n processes (from a child) and report their exit codes."""
    ctx = mp.get_context("dragon")
    ps = [ctx.Process(target=exit_with, args=(i % 7,)) for i in range(n)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    q.put([p.exitcode for p in ps])


def fd_reader(conn):
    """Receives a Connection (its fd travels with the start request)."""
    msg = conn.recv()
    conn.send(msg * 2)


def put_result(q, fn, *args):
    q.put(fn(*args))
