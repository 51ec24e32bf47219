"""Data services on the dragon runtime: :class:`dragon.data.ddict.DDict`."""
from .ddict import DDict

__all__ = ["DDict"]
