"""Interactive sessions: functions and classes of a __main__ that children
cannot import (REPL, notebooks, python -c, python - < file) travel by value."""
import subprocess
import sys

import pytest

from conftest import clean_env

SESSION = """
import multiprocessing as mp
mp.set_start_method("dragon")
def triple(x):
    return x * 3
class Box:
    def __init__(self, v):
        self.v = v
    def get(self):
        return self.v
with mp.Pool(2) as p:
    print("pool", p.map(triple, [1, 2, 3]), p.map(lambda x: x + 1, [1, 2]), p.apply(Box(5).get))
q = mp.Queue()
child = mp.Process(target=lambda q: q.put(Box("from child")), args=(q,))
child.start()
print("process", q.get(timeout=60).get())
child.join()
"""

# The same session typed at the prompt: a blank line ends each compound statement.
REPL = "\n".join([
    "import multiprocessing as mp",
    "mp.set_start_method('dragon')",
    "def triple(x):", "    return x * 3", "",
    "class Box:", "    def __init__(self, v):", "        self.v = v", "    def get(self):", "        return self.v", "",
    "with mp.Pool(2) as p:",
    "    print('pool', p.map(triple, [1, 2, 3]), p.map(lambda x: x + 1, [1, 2]), p.apply(Box(5).get))", "",
    "q = mp.Queue()",
    "child = mp.Process(target=lambda q: q.put(Box('from child')), args=(q,))",
    "child.start()",
    "print('process', q.get(timeout=60).get())",
    "child.join()", "",
])

EXPECTED = ["pool [3, 6, 9] [2, 3] 5", "process from child"]


def _lines(out):
    return [line for line in out.splitlines() if line.startswith(("pool", "process"))]


@pytest.mark.parametrize("how", ["-c", "stdin", "repl"])
def test_interactive_main_functions_travel_by_value(how):
    if how == "-c":
        argv, stdin = [sys.executable, "-c", SESSION], None
    elif how == "stdin":
        argv, stdin = [sys.executable, "-"], SESSION
    else:
        # An interactive interpreter reading its commands from a pipe (what a
        # REPL user types); blank lines end the compound statements.
        argv, stdin = [sys.executable, "-i", "-q"], REPL
    r = subprocess.run(argv, input=stdin, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert _lines(r.stdout) == EXPECTED, (r.stdout, r.stderr[-2000:])


def test_without_cloudpickle_the_error_says_what_to_do(tmp_path):
    blocker = tmp_path / "cloudpickle.py"
    blocker.write_text("raise ImportError('cloudpickle hidden for this test')\n")
    env = clean_env(PYTHONPATH=str(tmp_path))
    code = "import multiprocessing as mp\nmp.set_start_method('dragon')\n" \
           "with mp.Pool(1) as p:\n    p.map(lambda x: x, [1])\n"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "install cloudpickle" in r.stderr
