"""What HPE Dragon programs import at module level imports here; what this
runtime does not support fails clearly when used, never with ImportError."""
import importlib

import pytest

pytestmark = pytest.mark.timeout(60)

NAMES = [
    ("dragon.native", ["Process", "Popen", "Queue", "Pool", "Lock", "Semaphore", "Event", "Barrier", "Value",
                       "Array", "cpu_count", "ProcessGroup", "ProcessTemplate", "Policy"]),
    ("dragon.native.process", ["Process", "ProcessTemplate", "Popen", "ProcessError", "current",
                               "MSG_PIPE", "MSG_STDOUT", "MSG_DEVNULL"]),
    ("dragon.native.process_group", ["ProcessGroup", "DragonUserCodeError", "DragonProcessGroupError"]),
    ("dragon.native.queue", ["Queue", "QueueError"]),
    ("dragon.native.lock", ["Lock"]),
    ("dragon.native.semaphore", ["Semaphore"]),
    ("dragon.native.event", ["Event"]),
    ("dragon.native.barrier", ["Barrier", "BrokenBarrierError"]),
    ("dragon.native.value", ["Value"]),
    ("dragon.native.array", ["Array"]),
    ("dragon.native.pool", ["Pool"]),
    ("dragon.native.machine", ["System", "Node", "cpu_count", "current"]),
    ("dragon.infrastructure.policy", ["Policy"]),
    ("dragon.infrastructure.parameters", ["this_process", "Policy"]),
    ("dragon.infrastructure.connection", ["Connection", "Pipe", "ConnectionOptions"]),
    ("dragon.infrastructure.process_desc", ["ProcessOptions"]),
    ("dragon.infrastructure.facts", ["PMIBackend"]),
    ("dragon.infrastructure.messages", ["PIPE", "STDOUT", "DEVNULL"]),
    ("dragon.globalservices.node", ["get_list", "query", "query_total_cpus"]),
    ("dragon.globalservices.process", ["multi_join", "query", "join", "kill", "ProcessError"]),
    ("dragon.data.ddict", ["DDict", "DDictCheckpointSyncError", "DDictFutureCheckpointError",
                           "DDictPersistCheckpointError", "PosixCheckpointPersister", "NULLCheckpointPersister",
                           "DAOSCheckpointPersister", "CheckpointPersister", "strip_pickled_bytes"]),
    ("dragon.mpbridge", ["DragonContext", "DragonProcess", "queues", "synchronize", "sharedctypes"]),
    ("dragon.mpbridge.queues", ["DragonQueue", "DragonJoinableQueue", "DragonSimpleQueue", "Queue",
                                "JoinableQueue", "SimpleQueue"]),
    ("dragon.mpbridge.synchronize", ["DragonLock", "DragonRLock", "DragonSemaphore", "DragonBoundedSemaphore",
                                     "DragonCondition", "DragonEvent", "DragonBarrier", "Lock", "Event"]),
    ("dragon.mpbridge.sharedctypes", ["DragonValue", "DragonArray", "DragonRawValue", "DragonRawArray",
                                      "Value", "Array", "RawValue", "RawArray"]),
    ("dragon.mpbridge.context", ["DragonContext"]),
    ("dragon.mpbridge.process", ["DragonProcess"]),
    ("dragon.mpbridge.pool", ["DragonPool"]),
    ("dragon.telemetry", ["Telemetry"]),
    ("dragon.workflows.batch", ["Batch"]),
    ("dragon.utils", ["B64", "b64encode", "b64decode", "host_id", "hash"]),
]


@pytest.mark.parametrize("module, names", NAMES, ids=[m for m, _ in NAMES])
def test_names_import(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) is not None, (module, name)


def test_unsupported_is_a_clear_error():
    from dragon.globalservices.process import create
    from dragon.telemetry import Telemetry
    from dragon.workflows.batch import Batch

    with pytest.raises(NotImplementedError, match="dragon.native.process.Process"):
        create("/bin/true")
    with pytest.raises(NotImplementedError, match="not supported"):
        Batch()
    Telemetry().add_data("metric", 1.0)  # no collector: dropped, as HPE does without telemetry


def test_multi_join():
    from dragon.globalservices.process import multi_join
    from dragon.native.process import Process
    import _native_helpers as nh

    quick = Process(nh.exit_with, args=(2,))
    slow = Process(nh.sleep, args=(30,))
    quick.start()
    slow.start()
    exited, status = multi_join([quick.puid, slow.puid], join_all=False, timeout=30)
    assert exited == [(quick.puid, 2)]
    assert status[slow.puid] == [False, None]
    exited, _ = multi_join([slow.puid], timeout=0.05)
    assert exited is None
    slow.kill()
    exited, _ = multi_join([quick.puid, slow.puid], join_all=True, timeout=30)
    assert sorted(exited) == sorted([(quick.puid, 2), (slow.puid, -9)])
