"""How this process's off-node transport is configured (called by the
native module on first use of a channel of another node).

The native module resolves the transport ``tcp`` through the plugin ABI's
registry: ``libdragon_transport_tcp.so`` from a directory of
``DRAGON_TRANSPORT_PATH`` (colon-separated, searched first, so a site or a
fabric vendor can put its own build there), else the transport config file,
else the one shipped inside this package. Its configuration names this
node's service, which carries every operation to the channel's node, or
vouches for this process on a connection straight to that node's service
(``DRAGON_DIRECT``, on unless ``0``).
"""
from __future__ import annotations

import os

from . import _remote

__all__ = ["tcp_config"]


def tcp_config() -> str:
    """The ``tcp`` transport's config string for this process."""
    service = _remote.service_address()
    if service is None:
        raise _remote.ServiceError("this process is not part of a multi-node run (no %s)" % _remote.SERVICE_ENV)
    # blocks=1: large messages that name a block of their node's store
    # arrive here as copies of the block. direct=1: the channels of another
    # node are reached on a connection straight to that node's service
    # (DRAGON_DIRECT=0: through this node's service, as every other request).
    direct = os.environ.get("DRAGON_DIRECT", "1") != "0"
    return "service=%s node=%d blocks=1 direct=%d" % (service, _remote.this_node(), direct)
