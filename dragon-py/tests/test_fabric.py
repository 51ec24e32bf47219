"""RDMA or TCP between nodes, on the test bed's namespaced nodes (which,
like the machine they run on, have no RDMA device): every node service
says which fabric it uses to each peer and why (one line per peer, and
``dragon.native.machine.Node(i).transport``), TCP is the clean fallback,
and ``DRAGON_FABRIC`` forces either on every node, ssh'd ones included.
The RDMA side itself is tested on a simulated fabric
(``runtime/tests/fabric.rs``). Needs root, as ``test_multinode.py``.
"""
from __future__ import annotations

import os
import re
import textwrap

import pytest

from _testbed import DRAGON, RUN_TIMEOUT, namespaced_nodes

NODES = 2

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster():
    with namespaced_nodes(NODES) as c:
        yield c


SCRIPT = """
    from dragon.native.machine import Node
    from dragon import _remote

    if __name__ == "__main__":
        print("self:", Node(0).transport)
        print("peer:", Node(1).transport)
        t = _remote.transports()
        print("rdma here:", t["rdma"], "|", t["why_not"])
"""


def _run(cluster, env):
    path = os.path.join(cluster.shared, "fabric.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(SCRIPT))
    e = {k: v for k, v in os.environ.items() if not k.startswith("DRAGON_")}
    e.update(env)
    r = cluster.run(0, [DRAGON, "--hostlist", cluster.hostlist, path], timeout=RUN_TIMEOUT, cwd=cluster.shared, env=e)
    for i in range(NODES):
        left = cluster.wait_clean(i, timeout=30)
        assert not left, "node%d not clean after the run: %r" % (i + 1, left)
    return r


def test_without_rdma_tcp_is_used_and_said(cluster):
    r = _run(cluster, {})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "self: shm" in out, out
    # Node 2 joined node 1 at start: the accepting side's view, with why.
    assert re.search(r"peer: tcp \(node 1 \(node2\): no RDMA device: ", out), out
    assert re.search(r"rdma here: None \| no RDMA device: ", out), out
    # One line for the link, from the connecting side, on the terminal.
    lines = [line for line in r.stderr.splitlines() if " to node 0 " in line]
    assert len(lines) == 1 and lines[0].startswith("dragon: node 1 (node2) to node 0 (node1): tcp (no RDMA device: "), \
        r.stderr


def test_dragon_fabric_forces_tcp_or_rdma_on_every_node(cluster):
    r = _run(cluster, {"DRAGON_FABRIC": "tcp"})
    assert r.returncode == 0, r.stderr
    # node2 (started over ssh) got the setting too.
    assert "peer: tcp (node 1 (node2): DRAGON_FABRIC=tcp)" in r.stdout, r.stdout
    assert "dragon: node 1 (node2) to node 0 (node1): tcp (DRAGON_FABRIC=tcp)" in r.stderr, r.stderr
    # RDMA forced where there is none: a clear error, not a fallback.
    r = _run(cluster, {"DRAGON_FABRIC": "verbs"})
    assert r.returncode != 0, r.stdout
    assert "DRAGON_FABRIC=verbs, but no RDMA device: " in r.stderr, r.stderr
    assert "self:" not in r.stdout
    # A value that means nothing: said, and nothing starts.
    r = _run(cluster, {"DRAGON_FABRIC": "infiniband-please"})
    assert r.returncode != 0 and "expected auto, tcp, verbs or sim:<name>" in r.stderr, r.stderr
