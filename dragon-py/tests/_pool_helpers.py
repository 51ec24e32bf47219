"""Task functions for the Pool tests (importable by workers; no pytest here)."""
import os
import signal
import time

import multiprocessing as mp

G = None


def square(x):
    return x * x


def mul(a, b):
    return a * b


def add_kw(a, b=0, *, c=0):
    return a + b + c


def pid(_=None):
    return os.getpid()


def wait_event(event, timeout=120, started=None):
    if started is not None:
        started.set()
    return event.wait(timeout)


def slow_square(x, delay=0.05):
    time.sleep(delay)
    return x * x


def sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError("bad value %r" % x)
    return x


def raise_here():
    raise RuntimeError("raised in the task")  # marker: raise_here line


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def unpicklable_result(_=None):
    return Unpicklable()


class BadUnpickle:
    """Pickles fine, fails to unpickle (in the parent)."""

    def __reduce__(self):
        return (_refuse, ("no",))


def _refuse(arg):
    raise RuntimeError("refusing to be rebuilt")


def bad_unpickle_result(_=None):
    return BadUnpickle()


def exit_now(code):
    os._exit(code)


def kill_self(_=None):
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def kill_self_on(x, bad):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    return x


def init_global(value):
    global G
    G = value


def read_global(_=None):
    return G


def init_fail(_=None):
    raise KeyError("initializer broke")


def is_daemon(_=None):
    return mp.current_process().daemon


def nested_map(n):
    """Open a pool from inside a pool worker."""
    with mp.get_context("dragon").Pool(2) as p:
        return sum(p.map(square, range(n)))


def nested_workers(q):
    """Report this process's pool's worker pids, then wait to be killed."""
    p = mp.get_context("dragon").Pool(2)
    p.map(square, range(4))
    q.put([w.pid for w in p._pool])
    time.sleep(60)


def rogue_take(tasks, keep_lock=True):
    """Take one task the way a worker does, then die without recording it
    (a worker killed between taking and recording)."""
    tasks._lock.acquire()
    msg = tasks._ch.recv(True, 30)
    os._exit(0 if msg is not None else 3)


def identity(x):
    return x


class Plain:
    pass


def count_and_kill(counter, x, bad):
    if x == bad:
        with counter.get_lock():
            counter.value += 1
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    return x
