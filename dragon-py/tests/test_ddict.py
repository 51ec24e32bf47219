"""DDict: the dict protocol against a plain dict, picklability, many
processes, full shards, clients and managers killed, durability after
SIGKILL, and nothing left in /dev/shm."""
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import dragon
import dragon.runtime
import multiprocessing as mp
from dragon.data.ddict import (
    DDict,
    DDictDestroyedError,
    DDictError,
    DDictFrozenError,
    DDictFullError,
    DDictManagerDied,
    DDictTimeoutError,
)

import _ddict_helpers as H
from conftest import clean_env, wait_until

MB = 1024 * 1024


def shm_files(d):
    desc = d.serialize()
    segs = [p.rsplit(":", 1)[0] for p in desc.split(";")[3].split(",")]
    return [s for s in segs if os.path.exists("/dev/shm/" + s)]


@pytest.fixture
def dd():
    d = DDict(managers_per_node=2, num_nodes=1, total_mem=16 * MB)
    yield d
    segs = shm_files(d)
    d.destroy()
    assert wait_until(lambda: not any(os.path.exists("/dev/shm/" + s) for s in segs), 5)


def test_dict_protocol(dd):
    d = dd
    d["a"] = 1
    d[2] = "two"
    d[(3, "x")] = [3]
    d[b"raw"] = b"bytes stay bytes"
    assert d["a"] == 1 and d[2] == "two" and d[(3, "x")] == [3]
    assert d[b"raw"] == b"bytes stay bytes"
    assert len(d) == 4
    assert "a" in d and "zz" not in d
    with pytest.raises(KeyError):
        d["missing"]
    with pytest.raises(KeyError):
        del d["missing"]
    assert d.get("missing", 5) == 5
    assert sorted(map(repr, d.keys())) == sorted(map(repr, ["a", 2, (3, "x"), b"raw"]))
    assert dict(d.items())["a"] == 1
    assert sorted(map(repr, d.values())) == sorted(map(repr, [1, "two", [3], b"bytes stay bytes"]))
    assert set(map(repr, iter(d))) == set(map(repr, d.keys()))
    assert d.pop("a") == 1 and d.pop("a", None) is None
    with pytest.raises(KeyError):
        d.pop("a")
    assert d.setdefault("s", 10) == 10 and d.setdefault("s", 11) == 10
    d.update({"u1": 1}, u2=2)
    d.update([("u3", 3)])
    assert d["u1"] + d["u2"] + d["u3"] == 6
    c = d.copy()
    assert isinstance(c, dict) and c == dict(d.items()) and d == c
    k, v = d.popitem()
    assert k not in d and c[k] == v
    del d[2]
    d.clear()
    assert len(d) == 0
    with pytest.raises(KeyError):
        d.popitem()
    # 1, 1.0 and True pickle differently: three keys.
    d[1] = "int"
    d[1.0] = "float"
    assert d[1] == "int" and d[1.0] == "float" and len(d) == 2


def test_random_ops_against_a_dict(dd):
    rng = random.Random(1234)
    model = {}
    keys = [("k", i) for i in range(40)] + list(range(20)) + ["s%d" % i for i in range(20)]
    for step in range(3000):
        k = rng.choice(keys)
        op = rng.randrange(9)
        if op < 3:
            v = rng.choice([rng.randrange(1000), b"x" * rng.randrange(300), {"n": step}, None])
            dd[k] = v
            model[k] = v
        elif op == 3:
            assert dd.get(k, "absent") == model.get(k, "absent")
        elif op == 4:
            assert dd.pop(k, "absent") == model.pop(k, "absent")
        elif op == 5:
            assert (k in dd) == (k in model)
        elif op == 6:
            assert dd.setdefault(k, step) == model.setdefault(k, step)
        elif op == 7:
            if k in model:
                del dd[k]
                del model[k]
            else:
                with pytest.raises(KeyError):
                    del dd[k]
        else:
            assert len(dd) == len(model)
    assert dict(dd.items()) == model


def test_hpe_extras(dd):
    d = dd
    assert d.fetch_add("ctr") == 1 and d.fetch_add("ctr", 10) == 11 and d["ctr"] == 11
    assert d.fetch_add("ctr", -20) == -9
    assert 0 <= d.which_manager("ctr") < 2 and d.managers == 2
    d.bput("b", {"everywhere": True})
    assert d.bget("b") == {"everywhere": True}
    for i in range(2):
        assert d.manager(i).bget("b") == {"everywhere": True}
    m1 = d.manager(1)
    m1["pinned"] = 5
    assert d.which_manager("pinned") in (0, 1)
    assert m1["pinned"] == 5 and "pinned" in m1.keys()
    assert len(m1) == len(m1.keys())
    with pytest.raises(IndexError):
        d.manager(2)
    d.start_batch_put()
    for i in range(100):
        d[("batch", i)] = i
    d.end_batch_put()
    assert d[("batch", 99)] == 99
    d.freeze()
    assert d.is_frozen
    with pytest.raises(DDictFrozenError):
        d["x"] = 1
    assert d[("batch", 5)] == 5
    d.unfreeze()
    d["x"] = 1
    st = d.stats
    assert len(st) == 2 and sum(s.num_keys for s in st) == len(d)
    assert all(s.total_bytes == 8 * MB and s.total_used_bytes > 0 for s in st)
    assert sorted(map(repr, d.local_keys())) == sorted(map(repr, d.keys()))
    with pytest.raises(DDictTimeoutError):
        d.wait_for("never", timeout=0.05)
    assert d.wait_for("x", timeout=1) == 1


class Upper:
    """A custom value pickler (module level: picklable by reference)."""

    @staticmethod
    def dumps(v):
        return v.upper().encode()

    @staticmethod
    def loads(b):
        return b.decode()


def test_custom_picklers_and_serialize(dd):
    d = DDict.attach(dd.serialize(), value_pickler=Upper)
    d["k"] = "hello"
    assert d["k"] == "HELLO"
    assert pickle.loads(pickle.dumps(d))["k"] == "HELLO"
    d2 = DDict.attach(dd.serialize())
    assert d2[b"nope"] if False else True
    d2.detach()
    with pytest.raises(DDictError):
        d2["k"]


def test_pool_initializer_queue_and_process_args(dd):
    ctx = mp.get_context("dragon")
    dd["hello"] = "world"
    q = ctx.Queue()
    p = ctx.Process(target=H.from_args, args=(dd, q))
    p.start()
    assert q.get(timeout=30) == "world"
    p.join(30)
    assert p.exitcode == 0 and dd["from child"] == p.pid
    q.put(dd)
    assert q.get(timeout=30)["hello"] == "world"
    with ctx.Pool(4, initializer=H.init, initargs=(dd,)) as pool:
        assert sum(pool.map(H.write_range, [(i * 250, (i + 1) * 250) for i in range(8)])) == 2000
        assert sum(pool.map(H.read_range, [(i * 500, (i + 1) * 500) for i in range(4)])) == 0
        assert sum(pool.map(H.count, [100] * 8)) == 800
    assert dd["counter"] == 800
    assert len(dd) == 2000 + 3


def test_full_shard_keeps_old_value():
    with DDict(total_mem=256 * 1024) as d:
        d["k"] = b"a" * 1000
        with pytest.raises(DDictFullError):
            d["k"] = b"b" * (1 << 20)
        assert d["k"] == b"a" * 1000
        n = 0
        with pytest.raises(DDictFullError):
            while True:
                d[n] = b"x" * 1000
                n += 1
        assert n > 50 and d[n - 1] == b"x" * 1000
        d.clear()
        d["big"] = b"y" * 100_000
        assert d["big"] == b"y" * 100_000


def test_killed_clients_leave_the_shard_whole(dd):
    ctx = mp.get_context("dragon")
    for round in range(12):
        p = ctx.Process(target=H.hammer, args=(dd, round))
        p.start()
        time.sleep(0.05 + (round * 0.037) % 0.2)
        p.kill()
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
    for k in dd.keys():
        v = dd[k]
        assert len(set(v)) == 1, "a value was torn"
    # The managers reap the dead clients' slots and blocks in flight.
    # (each shard: its manager and this process)
    assert wait_until(lambda: all(s.clients <= 2 for s in dd.stats), 5)
    dd.clear()
    assert sum(s.total_used_bytes for s in dd.stats) == 0, "heap blocks leaked"
    dd["after"] = 1
    assert dd["after"] == 1


def test_killed_manager_is_a_clear_error():
    d = DDict(managers_per_node=2, total_mem=4 * MB)
    try:
        d["a"] = 1
        os.kill(d._procs[1].pid, signal.SIGKILL)
        d._procs[1].join(10)
        t0 = time.monotonic()
        with pytest.raises(DDictManagerDied):
            while time.monotonic() - t0 < 10:
                d["a"] = 2
                d[("x", time.monotonic())] = 1
                time.sleep(0.001)
    finally:
        d.destroy()


def test_destroy_removes_everything_and_handles_fail_cleanly():
    d = DDict(managers_per_node=3, total_mem=3 * MB)
    s = d.serialize()
    segs = shm_files(d)
    assert len(segs) == 3
    d["x"] = 1
    d.destroy()
    assert wait_until(lambda: not any(os.path.exists("/dev/shm/" + g) for g in segs), 5)
    assert all(p.exitcode is not None for p in d._procs)
    with pytest.raises(DDictDestroyedError):
        DDict.attach(s)


def test_bad_arguments():
    with pytest.raises(ValueError):
        DDict(total_mem=1000)
    with pytest.raises(ValueError):
        DDict(num_nodes=1, n_nodes=2)
    with pytest.raises(ValueError):
        DDict(managers_per_node=0)


DURABLE = """
import os, sys
import multiprocessing as mp
import dragon
from dragon.data.ddict import DDict

if __name__ == "__main__":
    mp.set_start_method("dragon")
    path, mode = sys.argv[1], sys.argv[2]
    d = DDict(managers_per_node=2, total_mem=8 * 1024 * 1024, name="t",
              persist_path=path, restore=(mode == "check"))
    if mode == "write":
        i = 0
        while True:
            d[("key", i)] = ("value", i)
            if i % 3 == 0:
                d.pop(("key", i - 1), None)
            d.fetch_add("n")
            print(i, flush=True)
            i += 1
    else:
        print(len(d), d["n"], flush=True)
        for k, v in d.items():
            if k != "n":
                print(k[1], v[1], flush=True)
        d.destroy()
"""


def test_durable_after_sigkill_of_everything(tmp_path):
    script = tmp_path / "durable.py"
    script.write_text(textwrap.dedent(DURABLE))
    store = str(tmp_path / "store")
    w = subprocess.Popen([sys.executable, str(script), store, "write"], env=clean_env(),
                         stdout=subprocess.PIPE, text=True)
    acked = -1
    t0 = time.monotonic()
    while acked < 300 and time.monotonic() - t0 < 60:
        line = w.stdout.readline()
        if not line:
            break
        acked = int(line)
    w.kill()  # SIGKILL; the template kills the managers
    w.wait(30)
    assert acked >= 300, "the writer did not get going"
    r = subprocess.run([sys.executable, str(script), store, "check"], env=clean_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    n, counter = map(int, lines[0].split())
    # Every acknowledged write is back (the one in flight may be too).
    assert counter >= acked + 1
    got = {int(a): int(b) for a, b in (line.split() for line in lines[1:] if line)}
    for i in range(acked + 1):
        if i % 3 == 2 and i + 1 <= acked:
            assert i not in got, "deleted key %d came back" % i
        elif i % 3 == 2:
            assert got.get(i, i) == i  # its delete may have been in flight
        else:
            assert got.get(i) == i, "acknowledged key %d lost" % i


def test_checkpoints_and_rollback():
    from dragon.data.ddict import DDictCheckpointSync

    with DDict(managers_per_node=2, total_mem=4 * MB, working_set_size=2) as d:
        d["a"] = 0  # checkpoint 0: the unversioned state
        d.checkpoint()
        assert d.checkpoint_id == 1
        d["a"] = 1
        d["b"] = 1
        d.checkpoint()
        assert d["a"] == 1, "values flow forward to later checkpoints"
        d["a"] = 2
        del d["b"]
        assert "b" not in d and len(d) == 1 and d.keys() == ["a"]
        d.rollback()
        assert d["a"] == 1 and d["b"] == 1 and sorted(d.keys()) == ["a", "b"]
        other = DDict.attach(d.serialize())
        assert other.checkpoint_id == 0 and other["a"] == 0 and len(other) == 1
        other.sync_to_newest_checkpoint()
        assert other.checkpoint_id == 2 and other["a"] == 2
        d.checkpoint()
        d.checkpoint()
        d["a"] = 3  # checkpoint 3: the working set keeps 2..3, 1 is merged
        d.rollback()
        d.rollback()
        with pytest.raises(DDictCheckpointSync):
            d["a"]
        d.sync_to_newest_checkpoint()
        assert d["a"] == 3 and d.fetch_add("n", 5) == 5 and d["n"] == 5
        d.pput("p", "persistent")
        assert d["p"] == "persistent" and other["p"] == "persistent"
        zero = DDict.attach(d.serialize())
        assert zero["a"] == 1 and zero["b"] == 1, "checkpoint 1 was merged into the base"
        assert sorted(zero.keys()) == ["a", "b", "p"]
        assert pickle.loads(pickle.dumps(zero))["p"] == "persistent"


def test_killed_durable_manager_never_hangs_a_writer(tmp_path):
    d = DDict(total_mem=4 * MB, persist_path=str(tmp_path / "p"), name="kill")
    try:
        d["a"] = 1
        os.kill(d._procs[0].pid, signal.SIGKILL)
        d._procs[0].join(10)
        with pytest.raises(DDictManagerDied):
            d["a"] = 2  # waits in the manager's mailbox, then sees it died
    finally:
        d.destroy()
    # What was acknowledged is in the log.
    with DDict.open(str(tmp_path / "p"), name="kill", total_mem=4 * MB) as r:
        assert r["a"] == 1


def test_durable_batches_come_back(tmp_path):
    p = str(tmp_path / "b")
    with DDict(managers_per_node=2, total_mem=8 * MB, persist_path=p, name="b") as d:
        d.update({("k", i): i for i in range(500)})
        d.start_batch_put()
        for i in range(100):
            d[("j", i)] = str(i)
        d.end_batch_put()
        assert len(d) == 600
    with DDict.open(p, name="b", managers_per_node=2, total_mem=8 * MB) as r:
        assert len(r) == 600 and r[("k", 499)] == 499 and r[("j", 7)] == "7"


def test_a_restore_missing_some_shards_files_is_refused_and_one_missing_all_starts_empty(tmp_path):
    from dragon.data.ddict import DDictPersistError

    p = str(tmp_path / "m")
    with DDict.open(p, name="m", managers_per_node=3, total_mem=12 * MB) as fresh:
        assert len(fresh) == 0  # no shard has files: a new, empty DDict
        fresh.update({i: i for i in range(60)})
    os.unlink(os.path.join(p, "m.1.wal"))
    kept = {f: os.stat(os.path.join(p, f)).st_mtime_ns for f in os.listdir(p)}
    with pytest.raises(DDictPersistError, match=r"shard 1 \(m.1.wal or m.1.snap\) on node 0 .* in "
                       + p + ": no log or snapshot there, though 2 of its 3 shards have theirs") as e:
        DDict.open(p, name="m", managers_per_node=3, total_mem=12 * MB)
    assert e.value.shards == [1] and e.value.path == p
    # Refused before any manager opened its files.
    assert {f: os.stat(os.path.join(p, f)).st_mtime_ns for f in os.listdir(p)} == kept


def test_a_restore_with_another_count_of_shards_than_was_written_is_refused(tmp_path):
    # Written with 3 shards, restored with 2 or 4: keys would be left out
    # and looked up by the wrong count of shards.
    from dragon.data.ddict import DDictPersistError

    p = str(tmp_path / "f")
    with DDict.open(p, name="f", managers_per_node=3, total_mem=12 * MB) as d:
        d.update({i: i for i in range(60)})
    kept = {f: os.stat(os.path.join(p, f)).st_mtime_ns for f in os.listdir(p)}
    for n in (2, 4):
        with pytest.raises(DDictPersistError, match=r"cannot restore the DDict 'f' with %d shards: it was "
                           r"written with 3 \(%s\)" % (n, os.path.join(p, "f.shards"))) as e:
            DDict.open(p, name="f", managers_per_node=n, total_mem=n * 4 * MB)
        assert e.value.written == 3 and e.value.path == p
        assert {f: os.stat(os.path.join(p, f)).st_mtime_ns for f in os.listdir(p)} == kept
    # Without the record (written before there was one), the files of a
    # shard beyond the count still say so.
    os.unlink(os.path.join(p, "f.shards"))
    with pytest.raises(DDictPersistError, match=r"with 2 shards: " + p
                       + r" holds files of its shard 2 too, so it was written with at least 3") as e:
        DDict.open(p, name="f", managers_per_node=2, total_mem=8 * MB)
    assert e.value.shards == [2] and e.value.written is None
    with DDict.open(p, name="f", managers_per_node=3, total_mem=12 * MB) as d:
        assert sorted(d.keys()) == list(range(60))
    assert open(os.path.join(p, "f.shards")).read() == "3\n"
    # Made anew (no restore) with 2: the record says 2, and the old files of
    # shard 2 left beside it do not stop a restore with 2.
    with DDict(2, 1, 8 * MB, name="f", persist_path=p) as d:
        d.update({i: -i for i in range(10)})
    assert os.path.exists(os.path.join(p, "f.2.wal"))
    with DDict.open(p, name="f", managers_per_node=2, total_mem=8 * MB) as d:
        assert sorted(d.items()) == [(i, -i) for i in range(10)]


# ---- damaged persistence files --------------------------------------------------

def _write_durable(path, name, n, managers=1):
    with DDict(managers_per_node=managers, total_mem=8 * MB, persist_path=str(path), name=name) as d:
        for i in range(n):
            d[("k", i)] = ("v", i)


def _flip(path, offset, count=1):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = bytearray(f.read(count))
        f.seek(offset)
        f.write(bytes(x ^ 0x41 for x in b))


def test_a_damaged_log_is_refused_and_repair_keeps_every_valid_record(tmp_path):
    from dragon.data.ddict import DDictPersistCorruptError, DDictPersistError, DDictRepairWarning

    store = tmp_path / "store"
    _write_durable(store, "mid", 200)
    wal = store / "mid.0.wal"
    data = wal.read_bytes()
    _flip(wal, len(data) // 2, 3)  # three bytes in the middle of the log
    damaged = wal.read_bytes()
    with pytest.raises(DDictPersistCorruptError) as ei:
        DDict.open(str(store), name="mid", total_mem=8 * MB)
    e = ei.value
    assert isinstance(e, DDictPersistError)
    assert e.path == str(wal) and str(wal) in str(e)
    assert 0 < e.offset <= len(data) // 2 and "byte %d" % e.offset in str(e)
    assert 90 < e.records_after < 110 and e.bytes_after == len(data) - e.offset
    assert "repair" in str(e)
    assert wal.read_bytes() == damaged, "a refused restore must not truncate the log"
    with pytest.warns(DDictRepairWarning, match="skipped"):
        d = DDict(total_mem=8 * MB, persist_path=str(store), name="mid", restore=True, repair=True)
    with d:
        (rep,) = d.repair_report
        assert rep["path"] == str(wal) and rep["rewritten"] and rep["records"] == 199
        ((offset, nbytes, lost, _),) = rep["skipped"]
        assert offset == e.offset and nbytes > 0 and lost == 1
        assert open(rep["damaged_copy"], "rb").read() == damaged
        assert len(d) == 199
        assert all(d[("k", i)] == ("v", i) for i in range(200) if ("k", i) in d)
        d["after"] = 1
    with DDict.open(str(store), name="mid", total_mem=8 * MB) as r:
        assert len(r) == 200 and r["after"] == 1
    with pytest.raises(ValueError):
        DDict(total_mem=8 * MB, persist_path=str(store), name="mid", repair=True)


def test_damage_at_the_start_and_a_torn_end_of_a_log(tmp_path):
    from dragon.data.ddict import DDictPersistCorruptError

    store = tmp_path / "s"
    _write_durable(store, "st", 50)
    wal = store / "st.0.wal"
    _flip(wal, 30)  # the first record (the file header is 20 bytes)
    with pytest.raises(DDictPersistCorruptError) as ei:
        DDict.open(str(store), name="st", total_mem=8 * MB)
    assert ei.value.offset == 20 and ei.value.records_after == 49
    with pytest.warns(Warning):
        with DDict.open(str(store), name="st", total_mem=8 * MB, repair=True) as r:
            assert len(r) == 49 and ("k", 0) not in r
    # A record cut short at the end (a write torn by a crash) is dropped
    # without a word, and the log truncated there.
    store = tmp_path / "e"
    _write_durable(store, "en", 50)
    wal = store / "en.0.wal"
    with open(wal, "r+b") as f:
        f.truncate(os.path.getsize(wal) - 5)
    with DDict.open(str(store), name="en", total_mem=8 * MB) as r:
        assert len(r) == 49 and ("k", 48) in r and ("k", 49) not in r


def test_a_damaged_snapshot_is_refused_and_repaired(tmp_path):
    from dragon.data.ddict import DDictPersistCorruptError

    store = tmp_path / "snap"
    big = b"x" * (1024 * 1024)
    with DDict(total_mem=16 * MB, persist_path=str(store), name="sn") as d:
        for i in range(50):
            d[("k", i)] = i
        # Past 64 MiB of log (and twice the live data) the manager writes a
        # snapshot and empties the log.
        for i in range(70):
            d["big"] = big
        snap = store / "sn.0.snap"
        assert wait_until(snap.exists, 60)
        d["big"] = b"small again"  # logged after the snapshot, whenever it was taken
    size = os.path.getsize(snap)
    _flip(snap, size // 2)  # inside the 1 MiB value
    with pytest.raises(DDictPersistCorruptError) as ei:
        DDict.open(str(store), name="sn", total_mem=16 * MB)
    assert ei.value.path == str(snap)
    with pytest.warns(Warning):
        with DDict.open(str(store), name="sn", total_mem=16 * MB, repair=True) as r:
            rep = {os.path.basename(x["path"]): x for x in r.repair_report}
            assert [s[2] for s in rep["sn.0.snap"]["skipped"]] == [1]
            assert len(r) == 51 and r["big"] == b"small again" and r[("k", 7)] == 7


def test_the_repair_command(tmp_path):
    store = tmp_path / "c"
    _write_durable(store, "cmd", 100, managers=2)
    wal = store / "cmd.1.wal"
    _flip(wal, os.path.getsize(wal) // 2)
    exe = os.path.join(os.path.dirname(sys.executable), "dragon")
    r = subprocess.run([exe, "ddict-repair", str(store), "cmd"], capture_output=True, text=True,
                       timeout=60, env=clean_env())
    assert r.returncode == 0, r.stderr
    assert "cmd.1.wal" in r.stdout and "skipped" in r.stdout and "1 records lost" in r.stdout, r.stdout
    assert "cmd.0.wal" in r.stdout and "clean, left as it is" in r.stdout, r.stdout
    with DDict.open(str(store), name="cmd", managers_per_node=2, total_mem=8 * MB) as d:
        assert len(d) == 99
    r = subprocess.run([exe, "ddict-repair", str(store), "nosuch"], capture_output=True, text=True,
                       timeout=60, env=clean_env())
    assert r.returncode == 1 and "no files" in r.stderr


def test_a_durable_ddict_is_served_by_one_manager_per_shard(tmp_path):
    """A second DDict of the same name and persist_path, or a repair, while
    the first serves it: a clear error naming the holder, and the first
    goes on; once the first is destroyed, the second opens it whole."""
    from dragon.data.ddict import DDictPersistError

    store = str(tmp_path / "held")
    d = DDict(2, 1, 4 * MB, name="held", persist_path=store)
    d.update({i: i for i in range(50)})
    mine = d.serialize().split(";")[3].split("-held-")[1].split("-")[0]

    def held():  # this run's segments of DDicts named "held" (not another run's)
        prefix = dragon.runtime.shm_prefix() + "dd-held-"
        return [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]

    assert held() and all("-held-%s-" % mine in f for f in held())
    with pytest.raises(DDictPersistError, match=r'files of shard \d of DDict "held" in .* are in use by pid \d+ on '):
        DDict(2, 1, 4 * MB, name="held", persist_path=store, restore=True)
    # Refused before they made their shards: nothing of the second DDict to remove.
    assert all("-held-%s-" % mine in f for f in held()), held()
    exe = os.path.join(os.path.dirname(sys.executable), "dragon")
    r = subprocess.run([exe, "ddict-repair", store, "held"], capture_output=True, text=True,
                       timeout=60, env=clean_env())
    assert r.returncode != 0 and "are in use" in r.stderr, (r.stdout, r.stderr)
    d[50] = 50  # the first one goes on
    assert len(d) == 51
    d.destroy()
    with DDict(2, 1, 4 * MB, name="held", persist_path=store, restore=True) as again:
        assert sorted(again.keys()) == list(range(51))
    # Nothing left of the three DDicts, the refused one included.
    assert wait_until(lambda: not held(), 60), held()


PRIVATE = """
import os, sys
os.umask(int(sys.argv[2], 8))
import multiprocessing as mp
import dragon
from dragon.data.ddict import DDict

if __name__ == "__main__":
    mp.set_start_method("dragon")
    d = DDict(total_mem=4 * 1024 * 1024, name="m", persist_path=sys.argv[1])
    d["k"] = "v"
    d["k2"] = "v2"
    d.destroy()
"""


@pytest.mark.parametrize("umask", ["000", "022", "277"])
def test_persistence_files_are_0600_and_directories_0700_whatever_the_umask(tmp_path, umask):
    import stat

    if umask == "277" and os.geteuid() != 0:
        pytest.skip("under umask 277 only root can open the run's shared-memory segments")
    script = tmp_path / "private.py"
    script.write_text(textwrap.dedent(PRIVATE))
    os.chmod(tmp_path, 0o755)
    store = tmp_path / "a" / "b"
    r = subprocess.run([sys.executable, str(script), str(store), umask], env=clean_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path) == 0o755, "an existing directory keeps its mode"
    assert mode(tmp_path / "a") == 0o700 and mode(store) == 0o700
    assert mode(store / "m.0.wal") == 0o600 and mode(store / "m.shards") == 0o600
    # Files the repair writes too, whatever this process's umask.
    _flip(store / "m.0.wal", 30)
    old = os.umask(int(umask, 8))
    try:
        from dragon import _native

        (rep,) = _native.ddict_repair(str(store), "m")
    finally:
        os.umask(old)
    assert rep["rewritten"] and mode(store / "m.0.wal") == 0o600
    assert mode(rep["damaged_copy"]) == 0o600
    assert sorted(os.listdir(store)) == ["m.0.lock", "m.0.wal", "m.0.wal.damaged", "m.shards"]
    assert mode(store / "m.0.lock") == 0o600


def _destroy_when_told(d, go, q):
    go.wait(60)
    d.destroy()
    q.put("destroyed")


def test_a_write_right_after_another_process_destroyed_the_ddict_is_refused(ctx):
    # Refused at once, not accepted and lost for a moment (the liveness of
    # the managers is checked now and then; the DDict's state every time).
    d = DDict(total_mem=8 * MB)
    go, q = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_destroy_when_told, args=(d, go, q))
    p.start()
    d["warm"] = 1
    go.set()
    assert q.get(timeout=60) == "destroyed"
    with pytest.raises(DDictDestroyedError):
        d["late"] = 2
    p.join(60)
