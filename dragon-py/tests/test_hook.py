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


LAZY = """
import sys
import multiprocessing as mp
from multiprocessing import Queue, Pool   # bound before dragon is imported

def child(q):
    q.put(mp.get_start_method())

if __name__ == "__main__":
    print("imported:", "dragon" in sys.modules)
    mp.set_start_method("dragon")
    assert mp.get_context() is mp.get_context("dragon")   # one context object
    q = Queue()
    p = mp.Process(target=child, args=(q,))
    p.start()
    print(q.get(timeout=60), type(q).__module__, type(mp.get_context()).__name__)
    p.join()
    with Pool(2) as pool:
        print(type(pool).__module__, pool.map(abs, [-1, -2]))
"""


def test_hook_does_not_import_dragon_until_used(tmp_path):
    # `import multiprocessing` must stay as cheap as without dragon installed:
    # the hook registers a stand-in, and the factories bound before the
    # start method was chosen still reach dragon's objects.
    path = tmp_path / "lazy.py"
    path.write_text(LAZY)
    out = subprocess.run([sys.executable, str(path)], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "imported: False",
        "dragon dragon.queues DragonContext",
        "dragon.pool [1, 2]",
    ]


def test_other_start_methods_never_import_dragon(tmp_path):
    path = tmp_path / "spawn.py"
    path.write_text("""
import sys
import multiprocessing as mp

def child(q):
    q.put("dragon" in sys.modules)

if __name__ == "__main__":
    mp.set_start_method("spawn")
    q = mp.Queue()
    p = mp.Process(target=child, args=(q,))
    p.start()
    print(q.get(timeout=60), "dragon" in sys.modules, type(q).__module__)
    p.join()
""")
    out = subprocess.run([sys.executable, str(path)], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "multiprocessing.queues"]
