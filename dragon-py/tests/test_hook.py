"""The start-method hook installed with the package (dragon_hook.pth)."""
import subprocess
import sys

from conftest import clean_env

SCRIPT = """
import multiprocessing as mp

def child(q):
    q.put(mp.get_start_method())

if __name__ == "__main__":
    mp.set_start_method("dragon")          # no `import dragon` anywhere
    q = mp.Queue()
    p = mp.Process(target=child, args=(q,))
    p.start()
    print(q.get(timeout=60), type(q).__module__)
    p.join()
"""


def test_start_method_known_without_import(tmp_path):
    path = tmp_path / "noimport.py"
    path.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(path)], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # The child runs under dragon, and the queue is the channel-backed one.
    assert out.stdout.split() == ["dragon", "dragon.queues"]


def test_hook_can_be_turned_off(tmp_path):
    path = tmp_path / "noimport.py"
    path.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(path)], env=clean_env(DRAGON_NO_AUTOREGISTER="1"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cannot find context for 'dragon'" in out.stderr
