"""HPE Dragon's ``dragon.workflows`` package: its names import, and using
them raises ``NotImplementedError`` (this runtime has no workflow engine).
Build task graphs with :class:`dragon.pool.Pool` or
:class:`dragon.native.process_group.ProcessGroup` instead."""
