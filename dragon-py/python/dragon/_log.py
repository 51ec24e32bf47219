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

import logging
import os

__all__ = ["logger", "LEVEL_ENV", "configure", "parse_level"]

LEVEL_ENV = "DRAGON_LOG_LEVEL"

logger = logging.getLogger("dragon")
logger.addHandler(logging.NullHandler())

#: The level of ``NONE`` (HPE Dragon's "no log"): above every record's.
NONE = logging.CRITICAL + 10

_FORMAT = "dragon[%(process)d] %(levelname)s %(message)s"


def parse_level(text: str) -> int:
    """The level a ``DRAGON_LOG_LEVEL`` value names; ``ValueError`` if none."""
    t = text.strip()
    if t.upper() in ("NONE", "OFF"):
        return NONE
    if t.lstrip("-").isdigit():
        return int(t)
    level = logging.getLevelName(t.upper())
    if isinstance(level, int):
        return level
    raise ValueError("unknown log level %r (one of DEBUG, INFO, WARNING, ERROR, CRITICAL, NONE, or a number)" % text)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler this module adds (so that it is added once)."""


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
        import sys

        sys.stderr.write("dragon: %s=%s ignored: %s\n" % (LEVEL_ENV, level, e))
        return
    logger.setLevel(value)
    if not any(isinstance(h, _Handler) for h in logger.handlers):
        handler = _Handler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False  # one line per record, whatever the root logger has


configure()
