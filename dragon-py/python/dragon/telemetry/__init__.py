"""HPE Dragon's ``dragon.telemetry`` for programs that report metrics.

``Telemetry().add_data(...)`` does nothing here, as it does in HPE Dragon
when a program runs without telemetry enabled (this runtime has no
telemetry collector). The analysis and detector classes raise
``NotImplementedError``.
"""

__all__ = ["Telemetry", "SlowGPUDetector", "AnalysisClient"]


class Telemetry:
    """Metrics reporting: accepted and dropped (no collector)."""

    def __init__(self, *args, **kwargs):
        self.level = 0

    def add_data(self, ts_metric_name, ts_data=None, timestamp=None, telemetry_level=1, tagk=None,
                 tagv=None) -> None:
        return None

    def finalize(self) -> None:
        return None


class _Unsupported:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("%s is not supported by this runtime (no telemetry collector)"
                                  % type(self).__name__)


class SlowGPUDetector(_Unsupported):
    pass


class AnalysisClient(_Unsupported):
    pass
