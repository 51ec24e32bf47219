"""dragon.native's queue and synchronisation objects, with HPE's spellings."""
import pickle
import queue
import threading

import pytest

import _native_helpers as nh
from dragon.errors import DestroyedError
from dragon.native import Array, Barrier, Event, Lock, Queue, Semaphore, Value
from dragon.native.barrier import BrokenBarrierError
from dragon.native.process import Process
from dragon.native.queue import QueueError

pytestmark = pytest.mark.timeout(120)


def test_queue_default_is_bounded_at_100_like_hpe():
    q = Queue()
    for i in range(100):
        q.put_nowait(i)
    assert q.full() and q.size() == q.qsize() == 100
    with pytest.raises(queue.Full):
        q.put(100, timeout=0)
    with pytest.raises(queue.Full):
        q.put(100, block=False)
    assert [q.get() for _ in range(100)] == list(range(100))
    assert q.empty()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_queue_maxsize_zero_is_unbounded():
    q = Queue(maxsize=0)  # HPE Dragon would cap this at 100
    for i in range(1000):
        q.put_nowait(i)
    assert not q.full()
    assert sum(q.get(timeout=30) for _ in range(1000)) == sum(range(1000))


def test_queue_poll_and_closed():
    q = Queue(maxsize=4)
    assert q.poll() is False and q.poll(0.05) is False
    q.put(b"raw bytes")
    assert q.poll(0) is True
    assert q.get() == b"raw bytes"
    assert not q.closed
    q.close()
    assert q.closed
    with pytest.raises(ValueError):
        q.put(1)
    with pytest.raises(ValueError):
        q.poll()


def test_joinable_queue():
    q = Queue(joinable=True)
    assert q.joinable
    for i in range(5):
        q.put(i)
    with pytest.raises(TimeoutError):
        q.join(timeout=0.1)
    p = Process(nh.joinable_consumer, args=(q, 5))
    p.start()
    q.join(timeout=30)
    assert p.join(30) == 0
    with pytest.raises(ValueError):
        q.task_done()
    with pytest.raises(QueueError):
        q.task_done()


def test_queue_that_is_not_joinable():
    q = Queue()
    with pytest.raises(QueueError):
        q.task_done()
    with pytest.raises(QueueError):
        q.join()


def test_queue_pickles_with_its_kind():
    q = Queue(maxsize=7, joinable=True)
    q2 = pickle.loads(pickle.dumps(q))
    assert type(q2) is Queue and q2.joinable and q2._maxsize == 7
    q2.put("x")
    assert q.get(timeout=10) == "x"
    q.task_done()
    q.join(timeout=10)


def test_queue_destroy():
    q = Queue()
    other = pickle.loads(pickle.dumps(q))
    q.put(1)
    q.destroy()
    assert q.closed
    with pytest.raises(DestroyedError):
        other.put(2)


def test_queue_unsupported_options():
    Queue(m_uid=3, block_size=1024, buffered=True, policy=None)  # accepted, no effect
    for kw in (dict(main_channel=object()), dict(mgr_channel=object()), dict(sem_channel=object()),
               dict(strm_channels=[object()])):
        with pytest.raises(NotImplementedError, match="serialize"):
            Queue(**kw)
    with pytest.raises(TypeError):
        Queue(maxsize="10")
    # Pickler, num_streams and serialize() work: test_hpe_names.py.


def test_queue_thread_wait():
    q = Queue()
    done, ready = threading.Event(), []
    threading.Timer(0.1, q.put, args=(1,)).start()
    q.thread_wait(10, done, ready)
    assert ready == [q] and done.is_set()


def test_pi_demo_shape_across_processes():
    """HPE's pi_demo: workers take points from one native queue and answer on
    another."""
    q_send, q_recv = Queue(), Queue()
    workers = [Process(nh.queue_worker, args=(q_send, q_recv)) for _ in range(2)]
    for w in workers:
        w.start()
    points = [(i / 50.0, j / 50.0) for i in range(50) for j in range(0, 50, 5)]
    inside = 0
    for k in range(0, len(points), 50):
        chunk = points[k:k + 50]
        for pt in chunk:
            q_send.put(pt, timeout=0 if False else None)
        inside += sum(q_recv.get(timeout=30) for _ in chunk)
    for _ in workers:
        q_send.put((-1, -1))
    assert [w.join(30) for w in workers] == [0, 0]
    assert inside == sum(1 for x, y in points if x * x + y * y <= 1.0)


def test_lock_plain_and_recursive():
    lock = Lock()
    assert not lock.is_recursive()
    assert lock.acquire() and lock.is_mine() and lock.count() == 1
    assert lock.acquire(block=False) is False
    assert lock.acquire(timeout=-1) is False  # negative: do not wait
    lock.release()
    with pytest.raises(ValueError):
        lock.release()
    r = Lock(recursive=True)
    with r:
        with r:
            assert r.count() == 2
    assert r.count() == 0
    assert pickle.loads(pickle.dumps(r)).is_recursive()


def test_lock_across_processes():
    lock, got, release = Lock(), Event(), Event()
    p = Process(nh.hold_lock, args=(lock, got, release))
    p.start()
    assert got.wait(30)
    assert lock.acquire(timeout=0.1) is False
    release.set()
    assert lock.acquire(timeout=30)
    lock.release()
    assert p.join(30) == 0


def test_semaphore():
    s = Semaphore(2)
    assert s.acquire() and s.acquire(blocking=True, timeout=0.01)
    assert s.acquire(blocking=False) is False
    s.release(n=2)
    assert s.get_value() == 2
    b = Semaphore(1, bounded=True)
    with pytest.raises(ValueError):
        b.release()
    b.acquire()
    with pytest.raises(ValueError):
        b.release(2)
    b.release()
    assert b.get_value() == 1
    with pytest.raises(ValueError):
        Semaphore(-1)
    with b:
        assert b.get_value() == 0
    b2 = pickle.loads(pickle.dumps(b))
    with pytest.raises(ValueError):
        b2.release()


def test_event_across_processes():
    e, q = Event(), Queue()
    p = Process(nh.wait_event, args=(e, q))
    p.start()
    assert not e.is_set() and e.wait(-1) is False
    e.set()
    assert q.get(timeout=30) is True
    assert p.join(30) == 0
    with e:  # HPE: set on entry, cleared on exit
        assert e.is_set()
    assert not e.is_set()


def test_barrier_across_processes():
    b, q = Barrier(3), Queue()
    ps = [Process(nh.barrier_wait, args=(b, q)) for _ in range(2)]
    for p in ps:
        p.start()
    mine = b.wait(30)
    got = sorted([mine, q.get(timeout=30), q.get(timeout=30)])
    assert got == [0, 1, 2]
    assert [p.join(30) for p in ps] == [0, 0]
    assert b.parties == 3 and b.n_waiting == 0 and not b.broken
    with pytest.raises(BrokenBarrierError):
        Barrier(2).wait(0.05)
    for bad in (dict(parties=0), dict(parties="2"), dict(action=5), dict(timeout=-1)):
        with pytest.raises(ValueError):
            Barrier(**bad)
    with pytest.raises(ValueError):
        Barrier(2).wait(-1)


def test_value_and_array_across_processes():
    v = Value("i", 0)
    a = Array("q", [0, 10, 20])
    ps = [Process(nh.add_to, args=(v, a, 200)) for _ in range(2)]
    for p in ps:
        p.start()
    assert [p.join(60) for p in ps] == [0, 0]
    assert v.value == 400 and a[0] == 400 and a[1:] == [10, 20] and len(a) == 3
    assert isinstance(pickle.loads(pickle.dumps(v)), Value)
    assert isinstance(pickle.loads(pickle.dumps(a)), Array)
    assert Value("d", 1.5).value == 1.5
    assert Array("c", b"hi").value == b"hi"
    assert a.get_obj()._length_ == 3
    with pytest.raises(AttributeError):
        Value("z")
    raw = Array("i", 4, lock=False)
    assert not hasattr(raw, "get_lock") and list(raw) == [0] * 4
