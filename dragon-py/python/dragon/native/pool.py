"""HPE Dragon's ``dragon.native.pool``: :class:`dragon.pool.Pool`."""
from ..pool import Pool

__all__ = ["Pool"]
