"""The runtime's log: the ``dragon`` logger, its level from ``dragon -l``,
``DRAGON_LOG_LEVEL`` or ``DRAGON_DEBUG``."""
import re
import subprocess
import sys

from conftest import clean_env, write_script

POOL = """
import multiprocessing as mp
import os

def f(x):
    if x == "die":
        os._exit(3)
    return x

if __name__ == "__main__":
    mp.set_start_method("dragon")
    with mp.Pool(2) as p:
        print(p.map(f, [1, 2]))
        try:
            p.apply(f, ("die",))
        except Exception as e:
            print(type(e).__name__)
"""


def _run(argv, **env):
    return subprocess.run(argv, env=clean_env(**env), capture_output=True, text=True, timeout=120)


def test_dragon_l_logs_process_starts_and_lost_workers(tmp_path):
    path = write_script(tmp_path, POOL)
    out = _run([sys.executable, "-m", "dragon", "-l", "INFO", path])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[1, 2]", "WorkerLostError"]
    starts = re.findall(r"^dragon\[\d+\] INFO started process (\d+) \((\S+)\)$", out.stderr, re.M)
    # the two workers, and the replacement of the one that died
    assert len(starts) >= 3 and all("PoolWorker" in name for _, name in starts), out.stderr
    assert re.search(r"^dragon\[\d+\] WARNING pool worker process \d+ exited with code 3$", out.stderr,
                     re.M), out.stderr


def test_log_level_from_the_environment(tmp_path):
    path = write_script(tmp_path, POOL)
    out = _run([sys.executable, path], DRAGON_LOG_LEVEL="warning")
    assert out.returncode == 0, out.stderr
    assert "started process" not in out.stderr  # INFO is below WARNING
    assert "WARNING pool worker process" in out.stderr


def test_silent_by_default_and_records_reach_the_programs_logging(tmp_path):
    path = write_script(tmp_path, POOL)
    out = _run([sys.executable, path])
    assert out.returncode == 0, out.stderr
    assert "dragon[" not in out.stderr and "started process" not in out.stderr, out.stderr
    # A program that configures logging gets the records through the root logger.
    path = write_script(tmp_path, "import logging\nlogging.basicConfig(level=logging.INFO, format='%(name)s: "
                        "%(message)s')\n" + POOL, name="configured.py")
    out = _run([sys.executable, path])
    assert out.returncode == 0, out.stderr
    assert re.search(r"^dragon: started process \d+ \(\S*PoolWorker", out.stderr, re.M), out.stderr


def test_dragon_debug_keeps_working():
    code = "import logging, dragon; print(logging.getLogger('dragon').getEffectiveLevel())"
    assert _run([sys.executable, "-c", code], DRAGON_DEBUG="1").stdout.strip() == "10"
    # an explicit level wins
    assert _run([sys.executable, "-c", code], DRAGON_DEBUG="1", DRAGON_LOG_LEVEL="ERROR").stdout.strip() == "40"


def test_bad_level_is_a_usage_error(tmp_path):
    path = write_script(tmp_path, "print('ran')\n")
    out = _run([sys.executable, "-m", "dragon", "-l", "LOUD", path])
    assert out.returncode == 2
    assert "unknown log level 'LOUD'" in out.stderr and "ran" not in out.stdout
    out = _run([sys.executable, "-m", "dragon", "--log-level=debug", path])
    assert out.returncode == 0 and out.stdout == "ran\n", out.stderr
