"""HPE Dragon's ``dragon.mpbridge.context``: the ``dragon`` start method's
context."""
from ..context import DragonContext, DragonProcess

__all__ = ["DragonContext", "DragonProcess"]
