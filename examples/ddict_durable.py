"""A durable DDict: every acknowledged write survives the program being
killed; run it twice to see the counter go on."""
import multiprocessing as mp
import os
import sys
import tempfile

import dragon  # noqa: F401
from dragon.data.ddict import DDict

if __name__ == "__main__":
    mp.set_start_method("dragon")
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "ddict-example")
    d = DDict(managers_per_node=2, total_mem=64 * 1024**2, name="example",
              persist_path=path, restore=os.path.isdir(path))
    runs = d.fetch_add("runs")
    d["last run pid"] = os.getpid()
    print("this program has run %d time(s) with %s" % (runs, path))
    d.destroy()  # the managers stop; the log stays in the directory
