"""HPE Dragon's names that programs import, here and working:
dragon.mpbridge, the DDict's checkpoint errors and persisters,
strip_pickled_bytes, dragon.utils.hash, the DDict's policy placement,
dragon.native.Queue's pickler, num_streams and serialize()."""
import os
import pickle
import signal
import socket
import subprocess
import sys

import cloudpickle
import pytest

import multiprocessing as mp

from conftest import clean_env


# -- dragon.mpbridge --------------------------------------------------------------

def _put_from_child(q, lock, value):
    with lock:
        value.value += 1
    q.put(("child", value.value))


def test_mpbridge_classes_are_what_the_start_method_gives(ctx):
    from dragon.mpbridge import DragonContext, DragonProcess
    from dragon.mpbridge import context, pool, process, queues, sharedctypes, synchronize

    assert isinstance(ctx, DragonContext) and context.DragonContext is DragonContext
    assert process.DragonProcess is DragonProcess and ctx.Process is DragonProcess
    assert isinstance(ctx.Queue(), queues.DragonQueue)
    assert isinstance(ctx.JoinableQueue(), queues.DragonJoinableQueue)
    assert isinstance(ctx.SimpleQueue(), queues.DragonSimpleQueue)
    for name in ("Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event"):
        assert isinstance(getattr(ctx, name)(), getattr(synchronize, "Dragon" + name)), name
    assert isinstance(ctx.Condition(), synchronize.DragonCondition)
    assert isinstance(ctx.Barrier(2), synchronize.DragonBarrier)
    with ctx.Pool(1) as p:
        assert isinstance(p, pool.DragonPool)
        assert p.map(abs, [-1]) == [1]
    assert sharedctypes.DragonValue is sharedctypes.Value


def test_mpbridge_factories_work_across_processes(ctx):
    from dragon.mpbridge.queues import JoinableQueue, Queue, SimpleQueue
    from dragon.mpbridge.sharedctypes import Array, RawArray, RawValue, Value
    from dragon.mpbridge.synchronize import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore

    q = Queue(4, use_base_impl=False)
    lock = Lock(use_base_impl=True)
    value = Value("i", 41)
    p = ctx.Process(target=_put_from_child, args=(q, lock, value))
    p.start()
    assert q.get(timeout=60) == ("child", 42)
    p.join(60)
    assert p.exitcode == 0
    jq = JoinableQueue()
    jq.put(1)
    jq.get(timeout=10)
    jq.task_done()
    jq.join()
    sq = SimpleQueue()
    sq.put("x")
    assert sq.get() == "x"
    assert RLock().acquire() and Semaphore(2).acquire() and BoundedSemaphore(1).acquire()
    ev = Event()
    ev.set()
    assert ev.is_set()
    with Condition():
        pass
    assert Barrier(1).wait() == 0
    assert RawValue("d", 1.5).value == 1.5
    assert list(RawArray("i", [1, 2])) == [1, 2]
    arr = Array("i", 3)
    with arr.get_lock():
        arr[0] = 7
    assert arr[:] == [7, 0, 0]


# -- dragon.data.ddict -------------------------------------------------------------

def test_ddict_checkpoint_names():
    from dragon.data.ddict import (
        DDictCheckpointSync, DDictCheckpointSyncError, DDictError, DDictFutureCheckpoint,
        DDictFutureCheckpointError, DDictPersistCheckpointError, DDictPersistCorruptError, DDictPersistError)

    assert DDictCheckpointSyncError is DDictCheckpointSync
    assert DDictFutureCheckpoint is DDictFutureCheckpointError and issubclass(DDictFutureCheckpointError, DDictError)
    assert DDictPersistCheckpointError is DDictPersistError
    assert issubclass(DDictPersistCorruptError, DDictPersistCheckpointError)


def test_ddict_checkpoint_sync_error_is_raised_under_its_hpe_name():
    from dragon.data.ddict import DDict, DDictCheckpointSyncError

    with DDict(1, 1, 1 << 20, working_set_size=2) as d:
        late = DDict.attach(d.serialize())
        late.checkpoint()  # at checkpoint 1
        for _ in range(3):  # 3: pushes checkpoint 1 out
            d.checkpoint()
        d["k"] = 1
        with pytest.raises(DDictCheckpointSyncError):
            late["k"]
        late.sync_to_newest_checkpoint()
        assert late["k"] == 1
        late.detach()


def test_posix_persister_makes_a_durable_ddict(tmp_path):
    from dragon.data.ddict import DDict, NULLCheckpointPersister, PosixCheckpointPersister

    d = DDict(1, 1, 1 << 20, name="pers", persist_path=str(tmp_path), persister_class=PosixCheckpointPersister)
    assert d.durable
    d["a"] = [1, 2]
    d.destroy()
    again = DDict(1, 1, 1 << 20, name="pers", persist_path=str(tmp_path), restore=True,
                  persister_class=PosixCheckpointPersister)
    assert again["a"] == [1, 2]
    again.destroy()
    with DDict(1, 1, 1 << 20, persister_class=NULLCheckpointPersister) as mem:
        assert not mem.durable


def test_persister_misuse_is_a_clear_error(tmp_path):
    from dragon.data.ddict import (
        DAOSCheckpointPersister, DDict, NULLCheckpointPersister, PosixCheckpointPersister)

    with pytest.raises(NotImplementedError, match="PosixCheckpointPersister with persist_path"):
        DDict(1, 1, 1 << 20, persist_path=str(tmp_path), persister_class=DAOSCheckpointPersister)
    with pytest.raises(NotImplementedError, match="no DAOS client"):
        DAOSCheckpointPersister()
    with pytest.raises(ValueError, match="needs persist_path"):
        DDict(1, 1, 1 << 20, persister_class=PosixCheckpointPersister)
    with pytest.raises(ValueError, match="persists nothing"):
        DDict(1, 1, 1 << 20, persist_path=str(tmp_path), persister_class=NULLCheckpointPersister)
    with pytest.raises(TypeError, match="persister_class"):
        DDict(1, 1, 1 << 20, persister_class=dict)
    with pytest.raises(TypeError, match="as a class"):
        PosixCheckpointPersister()


def test_strip_pickled_bytes():
    from dragon.data.ddict import strip_pickled_bytes

    data = pickle.dumps("key", protocol=5)
    assert data.startswith(b"\x80\x05\x95") and data.endswith(b"\x94.")
    stripped = strip_pickled_bytes(data)
    assert stripped == data[3:-2]
    assert strip_pickled_bytes(pickle.dumps(7, protocol=2)) == pickle.dumps(7, protocol=2)[:-1]
    assert strip_pickled_bytes(b"plain") == b"plain"


def test_utils_hash_is_the_ddict_placement():
    from dragon.data.ddict import DDict
    from dragon.utils import hash as dhash

    assert dhash(b"abc") == dhash(bytearray(b"abc")) == dhash(memoryview(b"abc"))
    # FNV-1a 64 of b"a", a fixed value: stable across processes and runs.
    assert dhash(b"a") == 0xAF63DC4C8601EC8C
    with pytest.raises(TypeError):
        dhash("text")
    with DDict(3, 1, 3 << 20) as d:
        for key in ("x", 17, ("t", 1), b"raw"):
            assert dhash(pickle.dumps(key, protocol=5)) % d.managers == d.which_manager(key)


def test_ddict_policy_places_and_pins_its_managers():
    """HPE Dragon's policy argument: a list of policies starts
    managers_per_policy managers for each, on the host each names and its
    CPUs; one Policy applies to every manager."""
    from dragon.data.ddict import DDict
    from dragon.infrastructure.policy import Policy

    here, last = socket.gethostname(), max(os.sched_getaffinity(0))
    with DDict(None, None, 4 << 20, policy=[Policy(host_name=here), Policy(cpu_affinity=[last])],
               managers_per_policy=2) as d:
        assert d.managers == 4 and [n.h_uid for n in d.manager_nodes] == [0, 0, 0, 0]
        assert [s.hostname for s in d.stats] == [here] * 4
        pins = [os.sched_getaffinity(p.pid) for p in d._procs]
        assert pins[:2] == [os.sched_getaffinity(0)] * 2 and pins[2:] == [{last}] * 2, pins
        d.update({i: i * i for i in range(100)})
        assert sum(d[i] for i in range(100)) == sum(i * i for i in range(100))
        assert {d.which_manager(i) for i in range(100)} == {0, 1, 2, 3}
    with DDict(2, 1, 4 << 20, policy=Policy(cpu_affinity=[last])) as d:
        assert d.managers == 2 and [os.sched_getaffinity(p.pid) for p in d._procs] == [{last}] * 2
        d["k"] = "v"
        assert d["k"] == "v"


def test_ddict_policy_misuse_is_a_clear_error_before_anything_starts():
    from dragon.data.ddict import DDict
    from dragon.infrastructure.policy import Policy, PolicyError

    before = set(os.listdir("/dev/shm"))
    with pytest.raises(PolicyError, match="'nosuchhost', which is not a node of this run"):
        DDict(1, 1, 1 << 20, policy=Policy(host_name="nosuchhost"))
    with pytest.raises(PolicyError, match="cpu_affinity names CPU"):
        DDict(None, None, 1 << 20, policy=[Policy(), Policy(cpu_affinity=[4096])])
    with pytest.raises(ValueError, match="leave num_nodes .* out"):
        DDict(1, 2, 1 << 20, policy=[Policy()])
    with pytest.raises(ValueError, match="managers_per_node=None is for a list of policies"):
        DDict(None, 1, 1 << 20)
    with pytest.raises(ValueError, match="managers_per_policy must be a positive int"):
        DDict(None, None, 1 << 20, policy=[Policy()], managers_per_policy=0)
    with pytest.raises(ValueError, match="policy is an empty list"):
        DDict(None, None, 1 << 20, policy=[])
    with pytest.raises(TypeError, match="a Policy or a non-empty list"):
        DDict(1, 1, 1 << 20, policy="node2")
    with pytest.raises(TypeError, match="every item of the list must be a Policy"):
        DDict(None, None, 1 << 20, policy=[Policy(), "node2"])
    assert set(os.listdir("/dev/shm")) <= before


def _largest(view, out, k):
    # Best first: the k largest keys of this manager, with the manager.
    for key in sorted(view.keys(), reverse=True)[:k]:
        out.put((key, view.which_manager(key)))


def _fails(view, out):
    out.put(("before", 0))
    raise ValueError("no good")


def _dies(view, out):
    os.kill(os.getpid(), signal.SIGKILL)


def _waits(view, out, gate):
    gate.wait()


def test_ddict_filter_runs_beside_each_manager_and_merges_best_first(ctx):
    from dragon.data.ddict import DDict, DDictError

    with DDict(3, 1, 3 << 20) as d:
        d.update({i: str(i) for i in range(100)})
        with d.filter(_largest, (4,), lambda a, b: a[0] > b[0]) as found:
            res = list(found)
        assert len(res) == 12 and [k for k, _ in res] == sorted((k for k, _ in res), reverse=True)
        assert [k for k, _ in res[:3]] == [99, 98, 97]
        assert all(m == d.which_manager(k) for k, m in res)  # each call saw its own manager's keys
        with d.filter(_largest, (2,), None) as found:  # no order asked: each call's outputs, all of them
            got = sorted(k for k, _ in found)
        assert got == sorted(k for m in range(3)
                             for k in sorted((k for k in range(100) if d.which_manager(k) == m), reverse=True)[:2])
        with pytest.raises(DDictError, match="filter code of manager .* raised ValueError: no good"):
            with d.filter(_fails, (), lambda a, b: False) as found:
                list(found)
        with pytest.raises(DDictError, match=r"ended \(exit code -9\) before its output did"):
            with d.filter(_dies, (), None) as found:
                list(found)
        gate = ctx.Event()
        f = d.filter(_waits, (gate,), None)
        with f:
            pass  # left before any output: the processes are ended
        assert all(p.exitcode is not None for p in f._procs)


def test_ddict_hpe_views_and_local_queries():
    from dragon.data.ddict import DDict

    with DDict(2, 1, 2 << 20, name="views") as d:
        d.update({i: i * 10 for i in range(20)})
        assert d.get_name() == "views"
        assert d.local_managers == [0, 1] and d.local_manager in (0, 1) and d.main_manager == d.local_manager
        assert d.local_len() == 20 and sorted(d.local_values()) == [i * 10 for i in range(20)]
        assert sorted(d.local_items()) == [(i, i * 10) for i in range(20)]
        assert d.dstats[1] == d.stats[1] and d.dstats[1].num_keys == len(d.manager(1).keys())
        raw = d.pickler(value_pickler=pickle)  # any object with dumps/loads
        raw["p"] = [1, 2]
        assert d["p"] == [1, 2] and raw[3] == 30
        one = d.manager(1).pickler()
        assert one.which_manager("anything") == 1
    with DDict(2, 1, 2 << 20, working_set_size=3) as d:
        d["x"] = 0
        d.checkpoint()
        d["x"] = 1  # a version at checkpoint 1
        m = d.which_manager("x")
        # As HPE Dragon's views: at this handle's checkpoint.
        views = [d.manager(m), d.pickler(), d.manager(m).pickler()]
        assert [(v.checkpoint_id, v["x"]) for v in views] == [(1, 1)] * 3
        assert d.local_len() == 1 and d.local_items() == [("x", 1)]  # the key once, at its version
        assert DDict.attach(d.serialize())["x"] == 0  # a new handle starts at checkpoint 0


# -- dragon.native.Queue -------------------------------------------------------------

class Reversing:
    """A custom pickler as HPE Dragon takes one: dump(obj, file) / load(file)."""

    @staticmethod
    def dump(obj, file):
        file.write(b"R" + str(obj)[::-1].encode())

    @staticmethod
    def load(file):
        data = file.read()
        assert data[:1] == b"R"
        return data[1:].decode()[::-1]


def _get_one(q, out):
    out.put(q.get(timeout=60))


def test_native_queue_custom_pickler_travels_with_the_queue(ctx):
    from dragon.native import Queue

    q = Queue(pickler=Reversing)
    q.put("hello")
    q.put(123)
    assert q.get(timeout=10) == "hello" and q.get(timeout=10) == "123"  # through str(), as it encodes
    q.put("from the parent")
    out = mp.get_context("dragon").Queue()
    p = ctx.Process(target=_get_one, args=(q, out))
    p.start()
    assert out.get(timeout=60) == "from the parent"
    p.join(60)
    # The pickle module (and cloudpickle) are picklers too.
    for mod in (pickle, cloudpickle):
        q2 = Queue(pickler=mod, joinable=True)
        q2.put({"a": [1, 2]})
        assert q2.get(timeout=10) == {"a": [1, 2]}
        q2.task_done()
        q2.join(timeout=10)
    with pytest.raises(TypeError, match="dump"):
        Queue(pickler=object())


def test_native_queue_num_streams():
    from dragon.native import Queue

    q = Queue(buffered=False, num_streams=4)
    assert q.num_streams == 4 and not q.buffered
    big = b"x" * (1 << 20)
    q.put(big)
    assert q.get(timeout=10) == big
    with pytest.raises(ValueError, match="buffered=False"):
        Queue(num_streams=2)  # buffered by default, as in HPE Dragon
    with pytest.raises(ValueError):
        Queue(buffered=False, num_streams=-1)
    with pytest.raises(NotImplementedError, match="no channel objects"):
        q.put(1, stream_channel=object())
    with pytest.raises(NotImplementedError, match="no channel objects"):
        q.get(stream_channel=object())


def test_native_queue_serialize_and_attach(ctx):
    from dragon.native import Queue

    q = Queue(maxsize=5, joinable=True, pickler=Reversing)
    text = q.serialize()
    assert isinstance(text, str)
    other = Queue.attach(text)
    other.put("abc")
    assert q.get(timeout=10) == "abc"
    q.task_done()
    other.join(timeout=10)
    assert other.joinable and other._maxsize == 5
    # In another process, from the text alone.
    out = mp.get_context("dragon").Queue()
    p = ctx.Process(target=_attach_and_get, args=(text, out))
    p.start()
    q.put("to the child")
    assert out.get(timeout=60) == "to the child"
    p.join(60)
    with pytest.raises(ValueError, match="not a serialized queue"):
        Queue.attach("garbage!")
    with pytest.raises(ValueError, match="not a serialized queue"):
        import base64
        Queue.attach(base64.urlsafe_b64encode(pickle.dumps([1])).decode())


def _attach_and_get(text, out):
    from dragon.native import Queue

    out.put(Queue.attach(text).get(timeout=60))


def test_python_m_dragon_and_dash_s(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import multiprocessing as mp\nprint(mp.get_start_method())\n")
    for argv in (["-m", "dragon", str(script)], ["-m", "dragon", "-s", str(script)],
                 ["-m", "dragon", "--single-node", str(script)]):
        out = subprocess.run([sys.executable, *argv], env=clean_env(), capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "dragon\n"
    help_ = subprocess.run([sys.executable, "-m", "dragon", "--help"], env=clean_env(), capture_output=True,
                           text=True, timeout=60)
    assert help_.returncode == 0
    for word in ("--log-level", "-s, --single-node", "DRAGON_LOG_LEVEL", "DRAGON_PEER_TIMEOUT"):
        assert word in help_.stdout, word
