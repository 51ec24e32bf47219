"""A Process and a Queue round trip on the dragon start method."""
from __future__ import annotations

import multiprocessing as mp
from multiprocessing.queues import Queue
from typing import Any

import dragon  # noqa: F401  registers the "dragon" start method


def echo(inbox: Queue[Any], outbox: Queue[tuple[str, Any]]) -> None:
    while True:
        item = inbox.get()
        if item is None:
            break
        outbox.put(("echo", item))


if __name__ == "__main__":
    mp.set_start_method("dragon")
    inbox: Queue[Any] = mp.Queue()
    outbox: Queue[tuple[str, Any]] = mp.Queue()
    p = mp.Process(target=echo, args=(inbox, outbox))
    p.start()
    for msg in ["hello", 42, {"k": [1, 2]}]:
        inbox.put(msg)
        print(outbox.get(timeout=30))
    inbox.put(None)
    p.join()
    print("child", p.pid, "exit code", p.exitcode)
