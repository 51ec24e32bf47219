"""The parts of HPE Dragon's ``dragon.globalservices`` client API that user
programs call (:mod:`~dragon.globalservices.node`,
:mod:`~dragon.globalservices.process`), answered by this runtime without a
global-services process. What has no counterpart raises
``NotImplementedError`` saying what to use instead."""
