"""HPE Dragon's ``dragon.mpbridge.process``: the ``dragon`` start method's
process class."""
from ..context import DragonProcess

__all__ = ["DragonProcess"]
