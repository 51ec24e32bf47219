import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import dragon  # noqa: F401  registers the start method
import multiprocessing as mp
from dragon import _native

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# A shell starts a background job with SIGINT ignored, and every child
# inherits that: the tests that stop a child with SIGINT (Ctrl-C, a
# ProcessGroup's stop) would then fail however they were written. Children
# of the tests get SIGINT back.
signal.signal(signal.SIGINT, signal.default_int_handler)


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
    return _native.process_alive(pid, 0)


def run_processes(run_id):
    """Live processes whose environment names the run (``run_id`` may be the
    start of run ids, e.g. ``"<pid>-"`` for every run that process owns)."""
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
        if any(v.startswith(needle) for v in env) and pid_alive(int(e)):
            out.append(int(e))
    return out


def shm_files(run_id):
    return files_with_prefix("dragon-%s-" % run_id)


def files_with_prefix(prefix):
    """Names in /dev/shm that start with ``prefix``."""
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


def interrupt_when_ready(path, *args):
    """Run the script, send SIGINT once it prints "ready" (plus 0.2 s for it
    to go to sleep in the call under test); its ``(stdout, stderr)``."""
    p = subprocess.Popen([sys.executable, path, *args], env=clean_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        return p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def run_and_list_leftovers(tmp_path, source):
    """Run ``source`` (which prints its run's shm prefix last) to its end;
    the /dev/shm files of that run still there."""
    r = run_script(write_script(tmp_path, source))
    assert r.returncode == 0, r.stderr
    prefix = r.stdout.strip().splitlines()[-1]
    assert prefix.startswith("dragon-")
    return files_with_prefix(prefix)


def when_blocked_beside(action, ticks=20):
    """Start a thread that runs Python ``ticks`` times (a millisecond's sleep
    between) and then calls ``action``, which ends the blocking call the
    caller makes next. A call that releases the GIL while it waits lets the
    thread run and is ended by ``action``; one that holds it keeps the thread
    from running, and waits in vain until its own timeout (a failure). The
    thread is returned (join it)."""

    def beside():
        n = 0
        while n < ticks:
            time.sleep(0.001)
            n += 1
        action()

    t = threading.Thread(target=beside, daemon=True)
    t.start()
    return t
