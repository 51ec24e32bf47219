"""Process targets for the queue, pipe and wait tests."""
import os
import time


def echo_queue(qin, qout):
    while True:
        m = qin.get()
        if m is None:
            break
        qout.put(m)


def produce(q, tag, n):
    for i in range(n):
        q.put((tag, i))


def consume(q, n, out):
    got = [q.get(timeout=60) for _ in range(n)]
    out.put(got)


def drain_joinable(q, n):
    for _ in range(n):
        q.get(timeout=60)
        q.task_done()


def use_queue_from_queue(carrier, out):
    inner = carrier.get(timeout=60)
    inner.put(("hello from", os.getpid()))
    out.put("done")


def get_and_report(q, out):
    out.put(q.get(timeout=60))


def echo_conn(conn):
    while True:
        try:
            m = conn.recv()
        except EOFError:
            return
        if m is None:
            break
        conn.send(m)
    conn.close()


def echo_conn_from_queue(q):
    echo_conn(q.get(timeout=60))


def send_then_exit(conn, items):
    for m in items:
        conn.send(m)
    conn.close()


def send_then_sleep(conn):
    conn.send("alive")
    time.sleep(60)


def send_bytes_after(conn, delay, data):
    time.sleep(delay)
    conn.send_bytes(data)


def put_after(q, delay, item):
    time.sleep(delay)
    q.put(item)


def sleep(seconds):
    time.sleep(seconds)


def square(x):
    return x * x


def produce_forever(q, size):
    data = os.urandom(size)
    i = 0
    while True:
        q.put((i, data))
        i += 1


def put_one(q, item):
    q.put(item)
