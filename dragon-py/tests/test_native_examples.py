"""The dragon.native example programs (ports of HPE Dragon examples), run as
a user runs them: a fresh interpreter, its own run; nothing is left behind."""
import os
import subprocess
import sys

import pytest

from conftest import clean_env, run_processes, shm_files, wait_until

pytestmark = pytest.mark.timeout(180)

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples")


def _leftovers(pid):
    """Segments and live processes of the run started by process ``pid``."""
    return shm_files(str(pid)), run_processes("%d-" % pid)


def _run(name, *args):
    p = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, name), *args], env=clean_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        p.kill()  # its template's watchdog removes the rest
        out, err = p.communicate()
        pytest.fail("%s did not finish in 150 s; stderr:\n%s" % (name, err))
    assert p.returncode == 0, err
    assert wait_until(lambda: _leftovers(p.pid) == ([], []), 10), _leftovers(p.pid)
    return out


def test_pi_demo():
    out = _run("native_pi_demo.py", "3")
    last = out.strip().splitlines()[-1]
    assert "workers exited [0, 0, 0]" in last
    value = float(last.split("pi=")[1].split(",")[0])
    assert abs(value - 3.14159) < 0.1


def test_process_group_demo():
    out = _run("native_process_group.py", "2")
    lines = out.splitlines()
    assert lines[0] == "1 node(s):"
    ranks = [line for line in lines if ": rank " in line]
    assert len(ranks) == 2
    cpu = min(os.sched_getaffinity(0))
    assert all(line.endswith("CPUs %d" % cpu) for line in ranks)
    assert "ranks exited with [0]" in lines
    assert sum(1 for line in lines if "python worker" in line) == 2
