"""HPE Dragon's ``dragon.native`` names, for programs written against it.

``dragon.native.Pool`` is :class:`dragon.pool.Pool` (the ``dragon`` start
method's pool, on shared-memory channels).
"""
from ..pool import Pool

__all__ = ["Pool"]
