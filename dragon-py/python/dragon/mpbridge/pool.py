"""HPE Dragon's ``dragon.mpbridge.pool``: the ``dragon`` start method's
``Pool`` (:class:`dragon.pool.Pool`)."""
from ..pool import Pool

__all__ = ["DragonPool", "Pool"]

DragonPool = Pool
