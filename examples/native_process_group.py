"""A ProcessGroup of executables and Python functions placed by policy: the
shape of HPE Dragon's ``examples/dragon_native/mpi/policy_demo.py`` (which
runs an MPI binary on half the nodes), on this runtime.

    python examples/native_process_group.py

It lists the nodes of the run (``System``/``Node``), starts on every node a
group of "ranks" (here ``/bin/sh`` printing where it runs) placed with a
``Policy(placement=HOST_NAME)`` and restricted to the node's first CPU by the
group's policy, reads each rank's stdout through its puid, and runs two
Python workers whose output goes to files.
"""
import os
import sys
import tempfile

from dragon.infrastructure.policy import Policy
from dragon.native.machine import Node, System
from dragon.native.process import Popen, Process, ProcessTemplate
from dragon.native.process_group import ProcessGroup


def write_line(rank: int) -> None:
    print(f"python worker {rank} ran on CPUs {sorted(os.sched_getaffinity(0))}")


def main(ranks_per_node: int = 2) -> None:
    alloc = System()
    nodes = {Node(h).hostname: Node(h) for h in alloc.nodes}
    print(f"{alloc.nnodes} node(s):")
    for name, node in nodes.items():
        print(f"  {name}: h_uid={node.h_uid} cpus={node.num_cpus} (physical {node.physical_cpus}) "
              f"gpus={node.num_gpus} ip={node.ip_addrs}")

    first_cpu = min(next(iter(nodes.values())).cpus)
    grp = ProcessGroup(restart=False, policy=Policy(cpu_affinity=[first_cpu]))
    for name in nodes:
        here = Policy(placement=Policy.Placement.HOST_NAME, host_name=name)
        grp.add_process(nproc=ranks_per_node, template=ProcessTemplate(
            target="/bin/sh", args=["-c", "echo rank $$ on $(hostname) CPUs " +
                                    "$(grep Cpus_allowed_list /proc/self/status | cut -f2)"],
            stdout=Popen.PIPE, policy=here))
    grp.init()
    grp.start()
    grp.join()
    # The group keeps its exited processes: their captured output is there.
    for puid, _ in grp.inactive_puids:
        proc = Process(None, ident=puid)
        assert proc.stdout_conn is not None  # the template asked for stdout=PIPE
        print(f"  puid {proc.puid}: {proc.stdout_conn.read().strip()}")
    codes = {code for _, code in grp.inactive_puids}  # None: an exit code this process could not learn
    print("ranks exited with", sorted(codes, key=lambda c: -1 if c is None else c))
    grp.close()

    # Python targets, each with its stdout in a file of its own.
    outdir = tempfile.mkdtemp(prefix="native-group-")
    workers = ProcessGroup()
    for rank in range(2):
        workers.add_process(nproc=1, template=ProcessTemplate(
            target=write_line, args=(rank,), cwd=outdir, stdout=f"worker_{rank}.txt"))
    workers.init()
    workers.start()
    workers.join()
    workers.close()
    for rank in range(2):
        path = os.path.join(outdir, f"worker_{rank}.txt")
        with open(path) as f:
            print(f"  {os.path.basename(path)}: {f.read().strip()}")
        os.unlink(path)
    os.rmdir(outdir)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
