import os
import subprocess
import sys
import textwrap
import time

import pytest

import dragon  # noqa: F401  registers the start method
import multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture
def ctx():
    return mp.get_context("dragon")


def clean_env(**extra):
    """The environment for a script that must start a run of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAGON_")}
    env.update(extra)
    return env


def write_script(tmp_path, source, name="script.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def run_script(path, *args, timeout=60, **kw):
    return subprocess.run([sys.executable, path, *args], env=clean_env(), capture_output=True,
                          text=True, timeout=timeout, **kw)


def wait_until(pred, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def pid_alive(pid):
    """Alive and not a zombie."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def run_processes(run_id):
    """Live processes whose environment names the run."""
    needle = ("DRAGON_RUN_ID=" + run_id).encode()
    out = []
    for e in os.listdir("/proc"):
        if not e.isdigit() or int(e) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % e, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env and pid_alive(int(e)):
            out.append(int(e))
    return out


def shm_files(run_id):
    return [n for n in os.listdir("/dev/shm") if n.startswith("dragon-%s-" % run_id)]
