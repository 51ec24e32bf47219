"""HPE Dragon's ``dragon.workflows.batch.Batch``: importable so that programs
load; creating a ``Batch`` raises ``NotImplementedError`` (this runtime has
no batch/task-graph engine; :class:`dragon.pool.Pool` runs independent tasks,
:class:`dragon.native.process_group.ProcessGroup` runs groups of processes)."""

__all__ = ["Batch"]


class Batch:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "dragon.workflows.batch.Batch is not supported by this runtime; use dragon.pool.Pool for "
            "independent tasks or dragon.native.process_group.ProcessGroup for groups of processes")
