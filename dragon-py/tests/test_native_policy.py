"""dragon.infrastructure.policy.Policy and dragon.native.machine."""
import os
import socket

import pytest

import _native_helpers as nh
from dragon.globalservices import node as gs_node
from dragon.infrastructure.policy import GS_DEFAULT_POLICY, Policy, PolicyError
from dragon.native import Queue, cpu_count
from dragon.native.machine import Node, System, current
from dragon.native.process import PIPE, Process

pytestmark = pytest.mark.timeout(120)

CPUS = sorted(os.sched_getaffinity(0))


# -- Policy values ---------------------------------------------------------------

def test_policy_fields_and_validation():
    p = Policy()
    assert p.placement == Policy.Placement.DEFAULT and p.host_name == "" and p.host_id == -1
    assert p.cpu_affinity == [] and p.gpu_affinity == []
    assert Policy(placement=-3, host_name="h").placement is Policy.Placement.HOST_NAME
    assert Policy.from_sdict(Policy(cpu_affinity=[1, 0]).sdesc) == Policy(cpu_affinity=[1, 0])
    for bad in (dict(placement=7), dict(distribution="x"), dict(cpu_affinity=[0, 0]),
                dict(cpu_affinity=[-1]), dict(cpu_affinity=["0"]), dict(cpu_affinity=5),
                dict(gpu_affinity=[True]), dict(host_name=3), dict(host_id="0"),
                dict(placement=Policy.Placement.HOST_NAME),
                dict(placement=Policy.Placement.HOST_ID)):
        with pytest.raises(PolicyError):
            Policy(**bad)
    assert issubclass(PolicyError, ValueError)


def test_policy_merge_and_nesting():
    low = Policy(placement=Policy.Placement.HOST_NAME, host_name="a", cpu_affinity=[0])
    high = Policy(cpu_affinity=[1])
    m = Policy.merge(low, high)
    assert (m.placement, m.host_name, m.cpu_affinity) == (Policy.Placement.HOST_NAME, "a", [1])
    # A new placement brings its own host.
    m2 = Policy.merge(low, Policy(placement=Policy.Placement.ANYWHERE))
    assert (m2.placement, m2.host_name) == (Policy.Placement.ANYWHERE, "")
    assert Policy.global_policy() == GS_DEFAULT_POLICY
    with Policy(cpu_affinity=[CPUS[0]]):
        assert Policy.global_policy().cpu_affinity == [CPUS[0]]
        with Policy(distribution=Policy.Distribution.BLOCK):
            g = Policy.global_policy()
            assert g.cpu_affinity == [CPUS[0]] and g.distribution == Policy.Distribution.BLOCK
        assert Policy.global_policy().distribution == Policy.Distribution.ROUNDROBIN
    assert Policy.global_policy() == GS_DEFAULT_POLICY
    g = Policy.global_policy()
    g.cpu_affinity.append(99)  # a copy
    assert Policy.global_policy().cpu_affinity == []


# -- Policies applied to processes -------------------------------------------------

def _cpus_of(policy=None, **kw):
    q = Queue()
    p = Process(nh.report, args=(q,), policy=policy, **kw)
    p.start()
    info = q.get(timeout=30)
    assert p.join(30) == 0
    return info["cpus"]


def test_cpu_affinity_applied_to_python_target():
    assert _cpus_of(Policy(cpu_affinity=[CPUS[-1]])) == [CPUS[-1]]
    assert _cpus_of() == CPUS  # unchanged without a policy
    with Policy(cpu_affinity=[CPUS[0]]):  # the enclosing policy applies too
        assert _cpus_of() == [CPUS[0]]


def test_cpu_affinity_applied_to_executable():
    p = Process("/bin/sh", args=["-c", "grep Cpus_allowed_list /proc/self/status"], stdout=PIPE,
                policy=Policy(cpu_affinity=[CPUS[-1]]))
    p.start()
    out = p.stdout_conn.read()
    assert p.join(30) == 0
    assert out.split()[-1] == str(CPUS[-1])


def test_placement_on_this_host_is_accepted():
    host = socket.gethostname()
    assert _cpus_of(Policy(placement=Policy.Placement.HOST_NAME, host_name=host)) == CPUS
    assert _cpus_of(Policy(placement=Policy.Placement.HOST_ID, host_id=current().h_uid)) == CPUS
    assert _cpus_of(Policy(placement=Policy.Placement.LOCAL)) == CPUS


@pytest.mark.parametrize("policy, words", [
    (dict(placement=Policy.Placement.HOST_NAME, host_name="no-such-host.invalid"), "no-such-host"),
    (dict(placement=Policy.Placement.HOST_ID, host_id=7), "host id 7"),
    (dict(cpu_affinity=[4096]), "4096"),
    (dict(gpu_affinity=[0]), "GPU"),
])
def test_unsatisfiable_policy_is_a_clear_error(policy, words):
    p = Process(nh.exit_with, args=(0,), policy=Policy(**policy))
    with pytest.raises(PolicyError, match=words):
        p.start()
    assert not p.started and p.puid is None


def test_policy_must_be_a_policy():
    with pytest.raises(TypeError):
        Process(nh.exit_with, policy={"cpu_affinity": [0]})


# -- machine ---------------------------------------------------------------------

def test_machine_info():
    assert cpu_count() == os.cpu_count()
    s = System()
    assert s.nnodes == 1 and s.nodes == [0] and s.hostnames == [socket.gethostname()]
    n = Node(s.nodes[0])
    assert n == current() == s.primary_node == Node(socket.gethostname()) == Node("localhost")
    assert n.hostname == socket.gethostname() and n.name
    assert n.h_uid == n.huid == 0
    assert n.num_cpus == os.cpu_count()
    assert 1 <= n.physical_cpus <= n.num_cpus
    assert n.cpus == CPUS
    assert n.num_gpus == 0 and n.gpus is None and n.gpu_vendor is None
    assert n.physical_mem > 0 and n.is_primary
    assert n.ip_addrs and all(a.count(".") == 3 for a in n.ip_addrs)
    assert str(n).startswith("name=")
    with pytest.raises(KeyError):
        Node(5)
    with pytest.raises(KeyError):
        Node("no-such-host.invalid")
    with pytest.raises(TypeError):
        Node(1.5)


def test_globalservices_node():
    assert gs_node.get_list() == [0]
    assert gs_node.query(0).host_name == socket.gethostname()
    assert gs_node.query_total_cpus() == os.cpu_count()
