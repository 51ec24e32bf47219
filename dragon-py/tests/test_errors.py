"""Each mapping of a Rust error to a Python exception (dragon-py/src/errors.rs),
provoked for real: the exception class, and a message that says what
happened. (Errors of other nodes are provoked in test_multinode.py, the DDict's
full, frozen and destroyed errors in test_ddict.py.)"""
import subprocess
import sys
import threading

import pytest

from dragon import _native, errors
from dragon.data.ddict import DDictError
from conftest import clean_env

pytestmark = pytest.mark.timeout(120)


# ---- channels ----------------------------------------------------------------


def test_bad_channel_handle_is_invalid_handle_error():
    with pytest.raises(errors.InvalidHandleError, match="bad channel handle"):
        _native.Channel.attach(b"garbage")


def test_attaching_a_destroyed_channel_is_destroyed_error():
    ch = _native.Channel.create(4, 128)
    handle = ch.handle
    ch.destroy()
    with pytest.raises(errors.DestroyedError, match="does not exist"):
        _native.Channel.attach(handle)


def test_invalid_channel_options_are_value_error():
    with pytest.raises(ValueError, match="capacity 0"):
        _native.Channel.create(capacity=0)


def test_sending_on_a_closed_channel_is_broken_pipe_error():
    ch = _native.Channel.create(4, 128)
    try:
        ch.close()
        with pytest.raises(BrokenPipeError, match="closed channel"):
            ch.send(b"x")
    finally:
        ch.destroy()


def test_receiving_from_a_closed_drained_channel_is_eof_error():
    ch = _native.Channel.create(4, 128)
    try:
        ch.send(b"last")
        ch.close()
        assert ch.recv(block=False) is not None  # what was sent before the close
        with pytest.raises(EOFError, match="closed and empty"):
            ch.recv(block=False)
    finally:
        ch.destroy()


def test_a_waiting_receive_ends_with_eof_error_when_the_channel_closes():
    ch = _native.Channel.create(4, 128)
    try:
        # Closed before or during the wait: EOFError either way.
        t = threading.Thread(target=ch.close)
        t.start()
        with pytest.raises(EOFError, match="closed and empty"):
            ch.recv(timeout=60)
        t.join()
    finally:
        ch.destroy()


def test_select_on_no_channels_without_timeout_is_value_error():
    with pytest.raises(ValueError, match="never end"):
        _native.select([], None)


# ---- shared memory -----------------------------------------------------------


def test_a_segment_larger_than_dev_shm_is_shared_memory_error():
    with pytest.raises(errors.SharedMemoryError, match="not enough shared memory") as e:
        _native.memory_create(1 << 50)
    assert isinstance(e.value, OSError) and e.value.errno == 28  # ENOSPC


def test_a_memory_block_of_another_node_is_not_local_error():
    # A handle made by a process of node 2 (no segment behind it: the
    # error comes before any attach).
    name, _ = _native.memory_create(4096)
    _native.segment_unlink(name)
    code = "import sys; from dragon import _native; print(_native.memory_handle(sys.argv[1], 1, 0).hex())"
    out = subprocess.run([sys.executable, "-c", code, name], env=clean_env(DRAGON_NODE_INDEX="2"),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    handle = bytes.fromhex(out.strip())
    with pytest.raises(errors.NotLocalError, match="node 2"):
        _native.remote_memory(handle)
    with pytest.raises(errors.NotLocalError, match="node 2"):
        _native.memory_parse(handle)


# ---- synchronisation objects ---------------------------------------------------


def test_bad_lock_handle_is_invalid_handle_error():
    with pytest.raises(errors.InvalidHandleError, match="not a handle"):
        _native.Lock.attach(b"garbage")


def test_attaching_a_destroyed_lock_is_destroyed_error():
    lock = _native.Lock()
    handle = lock.handle
    lock._destroy()
    with pytest.raises(errors.DestroyedError, match="was destroyed"):
        _native.Lock.attach(handle)


def test_releasing_an_unheld_lock_is_value_error():
    with pytest.raises(ValueError, match="released too many times"):
        _native.Lock().release()


def test_releasing_another_threads_rlock_is_assertion_error():
    with pytest.raises(AssertionError, match="not owned by thread"):
        _native.RLock().release()


def test_a_semaphore_past_its_largest_value_is_overflow_error():
    sem = _native.Semaphore(2**31 - 1)
    with pytest.raises(OverflowError, match="exceed its maximum"):
        sem.release()


def test_a_barrier_wait_that_times_out_is_broken_barrier_error():
    barrier = _native.Barrier(2)  # the other party never comes
    with pytest.raises(threading.BrokenBarrierError, match="timed out"):
        barrier.wait(0.01)
    assert barrier.broken
    with pytest.raises(threading.BrokenBarrierError, match="broken"):
        barrier.wait(0.01)


def test_a_failing_barrier_action_raises_its_own_exception():
    barrier = _native.Barrier(1)

    def action():
        raise ZeroDivisionError("from the action")

    with pytest.raises(ZeroDivisionError, match="from the action"):
        barrier.wait(None, action)
    assert barrier.broken


# ---- the Pool's ledger and messages (pool crate) ----------------------------------------


def test_a_bad_pool_ledger_handle_is_invalid_handle_error():
    with pytest.raises(errors.InvalidHandleError, match="bad memory block handle"):
        _native.PoolLedger(b"garbage", 1)
    lock = _native.Lock()
    try:
        with pytest.raises(errors.InvalidHandleError, match="bad memory block handle"):
            _native.PoolLedger(lock.handle, 1)
    finally:
        lock._destroy()


def test_a_destroyed_pool_ledger_is_destroyed_error():
    from dragon._block import SharedBlock

    block = SharedBlock(64)
    handle = block.handle
    _native.segment_unlink(block.name)
    with pytest.raises(errors.DestroyedError, match="destroyed"):
        _native.PoolLedger(handle, 1)


def test_pool_ledger_misuse_and_malformed_pool_messages_are_value_error():
    from dragon._block import SharedBlock

    block = SharedBlock(8 * 4)
    try:
        with pytest.raises(ValueError, match="needs 6 words, the memory holds 4"):
            _native.PoolLedger(block.handle, 2)
        led = _native.PoolLedger(block.handle, 1)
        with pytest.raises(ValueError, match="slot 1 of 1"):
            led.recorded(1)
    finally:
        _native.segment_unlink(block.name)
    with pytest.raises(ValueError, match="a task needs 30 bytes, got 3"):
        _native.pool_decode_task(b"T12")
    with pytest.raises(ValueError, match="expected a lost-task notice"):
        _native.pool_decode_lost(_native.pool_result_header(1, 2, 3) + bytes(8))
    with pytest.raises(ValueError, match="unknown task kind 9"):
        _native.pool_task_header(0, 0, 0, 9, 0)


# ---- DDict and the node runtime ---------------------------------------------------


def test_a_bad_ddict_descriptor_is_ddict_error():
    with pytest.raises(DDictError, match="not a DDict descriptor"):
        _native.DDictClient("garbage")


def test_a_bad_host_list_is_value_error():
    with pytest.raises(ValueError, match="unbalanced brackets"):
        _native.expand_hostlist("node[3-")
