"""Estimate pi with worker processes fed through native queues: the shape of
HPE Dragon's ``examples/dragon_native/pi_demo.py``, on this runtime.

    python examples/native_pi_demo.py [workers]

The main process draws random points, sends them to the workers on one
``dragon.native.queue.Queue`` and collects "inside the circle or not" on
another; the workers are ``dragon.native.process.Process`` objects.
"""
import math
import random
import sys

from dragon.native.process import Process
from dragon.native.queue import Queue


def pi_helper(q_in: Queue, q_out: Queue) -> None:
    while True:
        x, y = q_in.get(timeout=None)
        if x == -1 and y == -1:  # we're done
            break
        q_out.put(x * x + y * y <= 1.0)


def main(num_workers: int, rounds: int = 2000) -> float:
    q_send, q_recv = Queue(), Queue()
    workers = [Process(target=pi_helper, args=(q_send, q_recv)) for _ in range(num_workers)]
    for p in workers:
        p.start()

    rng = random.Random(42)
    inside = sent = 0
    for count in range(rounds):
        for _ in range(num_workers):
            q_send.put((rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0)), timeout=0)
            sent += 1
        for _ in range(num_workers):
            inside += q_recv.get(timeout=None)
        value = 4.0 * inside / sent
        if count % 500 == 0:
            print(f"{count:04}: pi={value:10.7f}, error={(value - math.pi) / math.pi:8.1e}", flush=True)

    for _ in workers:
        q_send.put((-1.0, -1.0), timeout=0)  # stop message
    codes = [p.join(timeout=None) for p in workers]
    print(f"final value after {rounds} rounds ({sent} points): pi={value:.5f}, workers exited {codes}")
    return value


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
