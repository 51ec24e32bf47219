"""The runtime's log: the ``dragon`` logger of :mod:`logging`.

The runtime logs one line per process start (``INFO``), per pool worker
lost (``WARNING``), and, in multi-node runs, per node joined (``INFO``) and
node lost (``ERROR``); more at ``DEBUG``.

By default the logger has only a ``NullHandler``: a program that configures
:mod:`logging` itself (``logging.basicConfig``, handlers on ``dragon`` or on
the root logger) receives the records at the levels it chose, and one that
does not sees nothing. ``DRAGON_LOG_LEVEL`` (a level name such as ``INFO``
or ``debug``, a number, or ``NONE`` for nothing at all; ``dragon -l LEVEL``
sets it) gives the logger that level and a handler writing to standard
error, in every process of the run (children inherit the variable). ``DRAGON_DEBUG=1`` means
``DRAGON_LOG_LEVEL=DEBUG`` unless that is set.
"""
from __future__ import annotations

import os
import sys

__all__ = ["logger", "LEVEL_ENV", "configure", "parse_level"]

LEVEL_ENV = "DRAGON_LOG_LEVEL"

#: The level of ``NONE`` (HPE Dragon's "no log"): above every record's
#: (``logging.CRITICAL + 10``).
NONE = 60

_FORMAT = "dragon[%(process)d] %(levelname)s %(message)s"

_RECORDS = frozenset(("debug", "info", "warning", "error", "critical", "exception", "log"))

_real = None  # the logging.Logger, once made


def _make():
    """The ``dragon`` logger of :mod:`logging` (made once, with a
    ``NullHandler``)."""
    global _real
    if _real is None:
        import logging

        real = logging.getLogger("dragon")
        real.addHandler(logging.NullHandler())
        _real = real
    return _real


def _drop(*args, **kwargs):
    return None


class _Logger:
    """The ``dragon`` logger, made on first use that can reach anyone.

    :mod:`logging` costs every ``import dragon`` (and the run's template)
    about 9 ms, and a record can only reach a handler that a program set
    up, which it cannot do without importing :mod:`logging`. So until
    :mod:`logging` is imported (by the program, or by :func:`configure` for
    ``DRAGON_LOG_LEVEL``), records go nowhere without it, exactly where the
    logger with only its ``NullHandler`` would have sent them."""

    __slots__ = ()

    def __getattr__(self, name):
        if _real is None and "logging" not in sys.modules and name in _RECORDS:
            return _drop
        return getattr(_make(), name)


logger = _Logger()


def parse_level(text: str) -> int:
    """The level a ``DRAGON_LOG_LEVEL`` value names; ``ValueError`` if none."""
    t = text.strip()
    if t.upper() in ("NONE", "OFF"):
        return NONE
    if t.lstrip("-").isdigit():
        return int(t)
    import logging

    level = logging.getLevelName(t.upper())
    if isinstance(level, int):
        return level
    raise ValueError("unknown log level %r (one of DEBUG, INFO, WARNING, ERROR, CRITICAL, NONE, or a number)" % text)


#: The name of the handler this module adds (so that it is added once).
_HANDLER = "dragon-stderr"


def configure(level: str | None = None) -> None:
    """Apply ``level`` (default: the environment's) to the ``dragon``
    logger, with a handler on standard error. Without a level anywhere,
    leave the logger alone."""
    if level is None:
        level = os.environ.get(LEVEL_ENV) or ("DEBUG" if os.environ.get("DRAGON_DEBUG") else None)
    if not level:
        return
    try:
        value = parse_level(level)
    except ValueError as e:
        sys.stderr.write("dragon: %s=%s ignored: %s\n" % (LEVEL_ENV, level, e))
        return
    import logging

    real = _make()
    real.setLevel(value)
    if not any(h.get_name() == _HANDLER for h in real.handlers):
        handler = logging.StreamHandler()
        handler.set_name(_HANDLER)
        handler.setFormatter(logging.Formatter(_FORMAT))
        real.addHandler(handler)
        real.propagate = False  # one line per record, whatever the root logger has


configure()
