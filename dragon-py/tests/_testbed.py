"""What the tests on the test bed share (testbed/cluster.py: namespaced
nodes with their own network, /dev/shm, hostname and pids, a real sshd
each): the requirement check, a module's cluster, scripts in the cluster's
shared folder, ``dragon --hostlist`` runs from node1, and the clean check.
Root is needed (CI runs as root); without it these tests fail, unless
``DRAGON_SKIP_NETNS=1`` says to skip them.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "testbed"))

DRAGON = os.path.join(os.path.dirname(sys.executable), "dragon")
NODES = 3
# Generous: a loaded 2-core machine runs three nodes' interpreters.
RUN_TIMEOUT = 180


def require_testbed():
    """Fail (or skip, with DRAGON_SKIP_NETNS=1) when the test bed cannot run here."""
    try:
        from cluster import missing_requirements
    except ImportError as e:  # pragma: no cover - the test bed is in the repository
        pytest.fail("the test bed (testbed/cluster.py) cannot be imported: %s" % e, pytrace=False)
    missing = missing_requirements()
    if missing:
        if os.environ.get("DRAGON_SKIP_NETNS") == "1":
            pytest.skip("multi-node tests need: %s (DRAGON_SKIP_NETNS=1)" % ", ".join(missing))
        pytest.fail("multi-node tests need: %s (run as root, or set DRAGON_SKIP_NETNS=1 to skip them)"
                    % ", ".join(missing), pytrace=False)


@contextlib.contextmanager
def namespaced_nodes(nodes=NODES):
    """A cluster of ``nodes`` namespaced nodes, for a module's tests."""
    require_testbed()
    from cluster import Cluster

    with Cluster(nodes=nodes) as c:
        yield c


def script(cluster, name, body):
    """Write ``body`` (dedented) as ``name`` in the cluster's shared folder."""
    return write_script(pathlib.Path(cluster.shared), body, name)


def run_env(**extra):
    """This process's environment without its own run's variables (the
    test process may have a run of its own), plus ``extra``."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("DRAGON_") or k == "DRAGON_DEBUG"}
    e.update(extra)
    return e


def run(cluster, path, *args, extra=(), env=None, timeout=RUN_TIMEOUT):
    """Run ``dragon --hostlist <all> path`` on node1 (``env``: variables
    added to :func:`run_env`'s); CompletedProcess."""
    argv = [DRAGON, "--hostlist", cluster.hostlist, *extra, path, *args]
    return cluster.run(0, argv, timeout=timeout, cwd=cluster.shared, env=run_env(**(env or {})))


def assert_clean(cluster, nodes=None):
    for i in (range(len(cluster.names)) if nodes is None else nodes):
        left = cluster.wait_clean(i, timeout=30)
        assert not left, "node%d not clean after the run: %r" % (i + 1, left)


def ok(r):
    assert r.returncode == 0, "exit %d\nstdout:\n%s\nstderr:\n%s" % (r.returncode, r.stdout, r.stderr)


def strike_when_ready(cluster, path, marker, strike, env=None):
    """Run ``dragon --hostlist <all> path marker`` on node1; once the
    script creates ``marker``, call ``strike()`` (cut a link, kill a
    service); return ``(returncode, stdout, stderr)``."""
    if os.path.exists(marker):
        os.unlink(marker)
    argv = [DRAGON, "--hostlist", cluster.hostlist, path, marker]
    proc = cluster.popen(0, argv, cwd=cluster.shared, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=run_env(**(env or {})))
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the script never got ready"
            time.sleep(0.05)
        strike()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def kill_service(cluster, i):
    """SIGKILL node ``i``'s node service."""
    services = [pid for pid, cmd in cluster.processes(i) if "dragon._node" in cmd]
    assert services, cluster.processes(i)
    for pid in services:
        os.kill(pid, signal.SIGKILL)


# A helper multi-node scripts start with: on(node, target, *args) starts
# target(*args) in a new process on node index `node` (node1 is 0).
ON_NODE = """
        import multiprocessing as mp
        from dragon.infrastructure.policy import Policy

        def on(node, target, *args):
            with Policy(host_name="node%d" % (node + 1)):
                p = mp.Process(target=target, args=args)
                p.start()
            return p
"""
