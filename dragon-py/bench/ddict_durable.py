"""Durable DDict puts: K client processes put 64-byte values for a few
seconds into a DDict with persist_path (every put is logged and
fdatasync'ed before it is acknowledged; concurrent puts share a sync).
Prints one JSON line: acknowledged puts/s, in total and per client."""
import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import time

import dragon  # noqa: F401
from dragon.data.ddict import DDict


def client(d, cid, secs, batch, q):
    v = b"v" * 64
    n = 0
    end = time.perf_counter() + secs
    while time.perf_counter() < end:
        if batch > 1:
            d.update({(cid, n + i): v for i in range(batch)})
            n += batch
        else:
            d[(cid, n)] = v
            n += 1
    q.put(n)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=1, help="puts per update() call")
    ap.add_argument("--dir", default=None, help="log directory (default: a temporary one)")
    a = ap.parse_args()
    mp.set_start_method("dragon")
    path = a.dir or tempfile.mkdtemp(prefix="ddict-durable-bench-")
    d = DDict(managers_per_node=1, total_mem=256 * 1024**2, name="bench", persist_path=path)
    q = mp.Queue()
    ps = [mp.Process(target=client, args=(d, i, a.seconds, a.batch, q)) for i in range(a.clients)]
    for p in ps:
        p.start()
    total = sum(q.get() for _ in ps)
    for p in ps:
        p.join()
    d.destroy()
    if a.dir is None:
        shutil.rmtree(path, ignore_errors=True)
    print(json.dumps({"bench": "ddict_durable", "clients": a.clients, "seconds": a.seconds,
                      "batch": a.batch,
                      "puts_per_s": round(total / a.seconds, 1),
                      "per_client_puts_per_s": round(total / a.seconds / a.clients, 1)}))
