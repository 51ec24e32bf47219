"""Build probe.c and use its mapped bytes objects as programs use bytes.

    python dragon-py/bench/inplace_probe/run_probe.py

Runs the checks in this interpreter and again under ``-X dev``,
``PYTHONMALLOC=debug`` and ``PYTHONMALLOC=malloc``; prints one line each.
"""
import gc
import hashlib
import os
import pickle
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def build(out_dir):
    so = os.path.join(out_dir, "inplace_probe" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-I", sysconfig.get_paths()["include"],
                    "-o", so, os.path.join(HERE, "probe.c")], check=True)
    return out_dir


def checks():
    import inplace_probe as p

    p.install()
    mib = 1 << 20
    objs = [p.make_bytes(mib, ord("A") + i % 26) for i in range(200)]
    assert all(type(o) is bytes and len(o) == mib for o in objs)
    assert objs[0] == b"A" * mib and objs[1][:3] == b"BBB"
    table = {objs[2]: 1}
    assert table[b"C" * mib] == 1                                  # hash, ==
    assert pickle.loads(pickle.dumps(objs[3])) == objs[3]
    assert objs[4].decode()[:2] == "EE" and objs[5].upper() == objs[5]
    view = memoryview(objs[6])
    objs[6] = None                                                 # the view keeps it
    assert view[0] == ord("G") and bytes(view[:2]) == b"GG"
    del view
    assert objs[7][10:20] == b"H" * 10
    assert hashlib.sha256(objs[8]).digest() == hashlib.sha256(b"I" * mib).digest()
    assert p.counts() == (199, 1), p.counts()
    del objs, table
    gc.collect()
    assert p.counts() == (0, 200), p.counts()
    small = [p.make_bytes(n, ord("a")) for n in (0, 1, 31, 4095, 4096, 5000)]
    assert [len(x) for x in small] == [0, 1, 31, 4095, 4096, 5000]
    assert small[0] == b"" and small[2] == b"a" * 31
    del small
    import tracemalloc

    tracemalloc.start()
    x = p.make_bytes(1 << 16, ord("Z"))
    assert x == b"Z" * (1 << 16)
    del x
    tracemalloc.stop()
    for _ in range(20000):
        y = p.make_bytes(1 << 16, ord("0"))
    del y
    live, freed = p.counts()
    assert live == 0 and freed == 200 + 6 + 1 + 20000, (live, freed)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, sys.argv[2])
        checks()
        print("ok")
        return
    with tempfile.TemporaryDirectory() as tmp:
        build(tmp)
        for label, flags, env in (("default", [], {}), ("-X dev", ["-X", "dev"], {}),
                                  ("PYTHONMALLOC=debug", [], {"PYTHONMALLOC": "debug"}),
                                  ("PYTHONMALLOC=malloc", [], {"PYTHONMALLOC": "malloc"})):
            r = subprocess.run([sys.executable, *flags, __file__, "--child", tmp],
                               env={**os.environ, **env}, capture_output=True, text=True)
            status = r.stdout.strip() if r.returncode == 0 else "FAILED (%d): %s" % (r.returncode, r.stderr[-500:])
            print("%-20s %s" % (label, status))


if __name__ == "__main__":
    main()
