"""Which off-node transport plugin this process loads, and how it is
configured (called by the native module on first use of a channel of
another node).

The plugin is ``libdragon_transport_tcp.so``: from a directory of
``DRAGON_TRANSPORT_PATH`` (colon-separated, searched first, so a site or a
fabric vendor can put its own build there), else the one shipped inside
this package. Its configuration names this node's service, which carries
every operation to the channel's node, or vouches for this process on a
connection straight to that node's service (``DRAGON_DIRECT``, on unless
``0``).
"""
from __future__ import annotations

import os

from . import _remote

__all__ = ["tcp_plugin", "PLUGIN_FILE"]

PLUGIN_FILE = "libdragon_transport_tcp.so"


def plugin_path(file: str = PLUGIN_FILE) -> str:
    for d in os.environ.get("DRAGON_TRANSPORT_PATH", "").split(":"):
        if d and os.path.isfile(os.path.join(d, file)):
            return os.path.join(d, file)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), file)


def tcp_plugin() -> tuple[str, str]:
    """``(path of the plugin, its config string)``."""
    service = _remote.service_address()
    if service is None:
        raise _remote.ServiceError("this process is not part of a multi-node run (no %s)" % _remote.SERVICE_ENV)
    path = plugin_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            "the off-node transport plugin %s is missing (the package was built without it; "
            "`make setup` builds it, or set DRAGON_TRANSPORT_PATH)" % path)
    # blocks=1: large messages that name a block of their node's store
    # arrive here as copies of the block. direct=1: the channels of another
    # node are reached on a connection straight to that node's service
    # (DRAGON_DIRECT=0: through this node's service, as every other request).
    direct = os.environ.get("DRAGON_DIRECT", "1") != "0"
    return path, "service=%s node=%d blocks=1 direct=%d" % (service, _remote.this_node(), direct)
