"""Process targets for the synchronisation and shared-value tests."""
import os
import time


def hold_lock_and_die(lock, ready):
    lock.acquire()
    ready.set()
    time.sleep(60)


def count_up(lock, value, n):
    for _ in range(n):
        with lock:
            value.value += 1


def add_unlocked(value, n):
    for _ in range(n):
        with value.get_lock():
            value.value += 1


def fill_array(arr, start):
    for i in range(len(arr)):
        arr[i] = start + i


def post(sem, n):
    for _ in range(n):
        sem.release()


def set_after(ev, delay):
    time.sleep(delay)
    ev.set()


def wait_event(ev, out):
    out.put(ev.wait(30))


def cond_waiter(cond, started, q):
    with cond:
        started.release()
        q.put(cond.wait(30))


def barrier_party(barrier, q):
    q.put(barrier.wait(30))


def report_pid(q):
    q.put(os.getpid())


def use_objects_from_queue(q, out):
    lock, ev, value, arr = q.get(timeout=60)
    with lock:
        value.value += 1
    arr[0] = 99
    ev.set()
    out.put("done")
