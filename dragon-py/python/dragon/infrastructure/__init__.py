"""HPE Dragon's ``dragon.infrastructure`` names that user programs import:
:mod:`~dragon.infrastructure.policy` (``Policy``),
:mod:`~dragon.infrastructure.parameters` (``this_process``),
:mod:`~dragon.infrastructure.connection` (``Connection``, ``Pipe``),
:mod:`~dragon.infrastructure.process_desc` (``ProcessOptions``),
:mod:`~dragon.infrastructure.facts` (``PMIBackend``).

The rest of HPE's infrastructure package (its message protocol, global
services and local services) has no counterpart here: this runtime has none
of those services. See ``docs/python-native.md``.
"""
