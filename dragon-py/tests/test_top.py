"""``dragon top`` driven in a real terminal (tmux) against a running Pool,
its screen read back; ``--once``; the metrics endpoint (``--metrics``)."""
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from conftest import clean_env, write_script

# Two pool workers each report their pid and then wait on an event; the
# program then prints its run id and the workers' pids, and ends when a
# line arrives on its standard input.
PROGRAM = """
import multiprocessing as mp
import os
import sys

from dragon.data.ddict import DDict


def hold(ev, pids):
    pids.put(os.getpid())
    ev.wait()
    return os.getpid()


if __name__ == "__main__":
    ev = mp.Event()
    pids = mp.Queue()
    waiting = mp.Queue()
    for i in range(3):
        waiting.put(i)
    d = DDict(2, 1, 4 << 20, name="topdict")
    d["k"] = b"x" * 100000
    with mp.Pool(2) as pool:
        r = [pool.apply_async(hold, (ev, pids)) for _ in range(2)]
        workers = sorted(pids.get(timeout=60) for _ in range(2))
        print("READY", os.environ["DRAGON_RUN_ID"], *workers, flush=True)
        sys.stdin.readline()
        ev.set()
        assert sorted(x.get(timeout=60) for x in r) == workers
    d.destroy()
    print("DONE", flush=True)
"""


def _start(tmp_path, *flags):
    path = write_script(tmp_path, PROGRAM)
    proc = subprocess.Popen([sys.executable, "-m", "dragon", *flags, path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise AssertionError("the program did not start: %r %s" % (line, proc.stderr.read()))
    _, run_id, *workers = line.split()
    return proc, run_id, [int(w) for w in workers]


def _finish(proc):
    out, err = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "DONE"


def _check_screen(screen, run_id, workers):
    assert "run %s" % run_id in screen
    for pid in workers:
        assert re.search(r"^\s*%d\s+\d+\s+[RSD]\s+[\d.]+\s+[\d.]+\s+DragonPoolWorker-\d+\s*$" % pid, screen, re.M), \
            screen
    assert re.search(r"^\s*\d+\s+\d+\s+[RSD]\s+[\d.]+\s+[\d.]+\s+main\s*$", screen, re.M), screen
    assert re.search(r"^\s*\d+\s+\d+\s+S\s+[\d.]+\s+[\d.]+\s+template\s*$", screen, re.M), screen
    assert re.search(r"^\s*3\s+\d+\s+\d+\s+[0-9a-f]{16}\s*$", screen, re.M), screen  # the queue of 3 items
    assert re.search(r"^topdict\s+0\s+", screen, re.M) and re.search(r"^topdict\s+1\s+", screen, re.M), screen
    used = [float(m) for m in re.findall(r"^topdict\s+\d+\s+([\d.]+)\s+2\.0\s", screen, re.M)]
    assert len(used) == 2 and max(used) >= 0.1, screen  # the 100 kB value, in a share of 2 MiB (4 MiB over 2 shards)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_dragon_top_in_a_terminal(tmp_path):
    proc, run_id, workers = _start(tmp_path)
    sock = "dragon-top-%s" % uuid.uuid4().hex[:8]
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    env = clean_env(TERM="xterm-256color")
    try:
        subprocess.run(tmux + ["new-session", "-d", "-x", "150", "-y", "50",
                               "%s -m dragon top %s -n 0.2; sleep 600" % (sys.executable, run_id)],
                       env=env, check=True, timeout=60)
        # Read the screen back until it shows the pool (a watchdog, not a
        # timing assumption: each frame is checked as a whole).
        deadline = time.monotonic() + 90
        while True:
            screen = subprocess.run(tmux + ["capture-pane", "-p", "-t", "0"], env=env, capture_output=True,
                                    text=True, timeout=60).stdout
            try:
                _check_screen(screen, run_id, workers)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        _finish(proc)
        deadline = time.monotonic() + 90
        while "run %s ended" % run_id not in screen:
            assert time.monotonic() < deadline, screen
            time.sleep(0.2)
            screen = subprocess.run(tmux + ["capture-pane", "-p", "-t", "0"], env=env, capture_output=True,
                                    text=True, timeout=60).stdout
    finally:
        subprocess.run(tmux + ["kill-server"], env=env, capture_output=True, timeout=60)
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)


def test_dragon_top_once_and_its_errors(tmp_path):
    proc, run_id, workers = _start(tmp_path)
    try:
        out = subprocess.run([sys.executable, "-m", "dragon", "top", run_id, "--once"], env=clean_env(),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        _check_screen(out.stdout, run_id, workers)
    finally:
        _finish(proc)
    gone = subprocess.run([sys.executable, "-m", "dragon", "top", run_id, "--once"], env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 1 and "is not running on this node" in gone.stderr
    for argv, message in ((["nonsense"], "is not a run id"), (["-n", "0"], "needs a number of seconds"),
                          (["--frob"], "unknown option --frob")):
        bad = subprocess.run([sys.executable, "-m", "dragon", "top", *argv], env=clean_env(), capture_output=True,
                             text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_metrics_endpoint(tmp_path):
    proc, run_id, workers = _start(tmp_path, "-l", "INFO", "--metrics", "127.0.0.1:0")
    try:
        url = None
        while url is None:  # the line is logged before the program starts
            line = proc.stderr.readline()
            assert line, "no metrics line"
            m = re.search(r"metrics at (http://\S+/metrics)", line)
            url = m and m.group(1)
        with urllib.request.urlopen(url, timeout=60) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
        assert "# TYPE dragon_process_cpu_seconds_total counter" in text
        for pid in workers:
            assert re.search(r'^dragon_process_resident_bytes\{run="%s",pid="%d",name="DragonPoolWorker-\d+",'
                             r'state="[RSD]"\} \d+$' % (run_id, pid), text, re.M), text
        assert re.search(r'^dragon_queue_depth\{run="%s",channel="[0-9a-f]{16}"\} 3$' % run_id, text, re.M), text
        assert re.search(r'^dragon_ddict_shard_bytes\{run="%s",ddict="topdict",shard="1"\} 2097152$' % run_id,
                         text, re.M), text
        assert re.search(r'^dragon_nodes\{run="%s"\} 1$' % run_id, text, re.M)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=60)
    finally:
        _finish(proc)
