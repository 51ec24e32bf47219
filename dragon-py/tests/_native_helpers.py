"""Targets for the dragon.native tests (importable by children; no pytest)."""
import os
import signal
import sys
import time


def exit_with(code):
    sys.exit(code)


def raise_error():
    raise RuntimeError("boom from a native process")


def sleep(seconds):
    time.sleep(seconds)


def stubborn(seconds, ready=None):
    """Ignore SIGINT and SIGTERM (only SIGKILL ends it early); then put the
    pid on queue ``ready``, if given."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if ready is not None:
        ready.put(os.getpid())
    time.sleep(seconds)


def report(q, tag=None):
    """What the child sees of itself."""
    from dragon.infrastructure.parameters import this_process
    from dragon.native.process import current

    me = current()
    try:
        parent = me.parent().puid
    except Exception as e:  # pragma: no cover - reported to the test
        parent = repr(e)
    q.put({
        "tag": tag,
        "pid": os.getpid(),
        "puid": this_process.my_puid,
        "current_puid": me.puid,
        "parent_puid": parent,
        "cwd": os.getcwd(),
        "env": os.environ.get("DRAGON_NATIVE_TEST"),
        "cpus": sorted(os.sched_getaffinity(0)),
    })


def print_lines(n, tag="line"):
    for i in range(n):
        print("%s %d" % (tag, i))
    print("to stderr", file=sys.stderr)
    sys.stdout.flush()


def prompt_then_lines():
    """A line written in two pieces, then a prompt without a newline that
    waits for an answer."""
    os.write(1, b"first ")
    os.write(1, b"line\n")
    os.write(1, b"answer? ")
    answer = sys.stdin.readline()
    os.write(1, ("got " + answer).encode())


def echo_stdin():
    data = sys.stdin.read()
    print("got:" + data.upper(), end="")


def grandchild_puid(q, hold):
    """Start a sleeper of our own and report its puid; wait for ``hold``."""
    from dragon.native.process import Process

    p = Process(sleep, args=(60,))
    p.start()
    q.put(p.puid)
    hold.wait(60)
    p.kill()
    p.join()


def look_up(q, puid):
    """Look a process up by puid in another process and report what we see."""
    from dragon.native.process import Process

    p = Process(None, ident=puid)
    q.put((p.puid, bool(p.is_alive), p.pid))


def read_conn(conn, q):
    q.put(conn.read())


def add_to(value, array, n):
    for _ in range(n):
        with value.get_lock():
            value.value += 1
        with array:
            array[0] += 1


def barrier_wait(barrier, q):
    q.put(barrier.wait(30))


def wait_event(event, q):
    q.put(event.wait(30))


def hold_lock(lock, got, release):
    lock.acquire()
    got.set()
    release.wait(30)
    lock.release()


def queue_worker(q_in, q_out):
    """HPE pi-demo shape: take (x, y), answer whether it is in the circle."""
    while True:
        x, y = q_in.get(timeout=None)
        if x == -1 and y == -1:
            break
        q_out.put(x * x + y * y <= 1.0)


def joinable_consumer(q, n):
    for _ in range(n):
        q.get(timeout=30)
        q.task_done()
