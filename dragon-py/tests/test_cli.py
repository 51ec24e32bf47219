"""The ``dragon`` command's options: HPE Dragon's flags that make sense here
(-s, -N/--nodes, -l and its forms, the label flags), those that do not
(refused with a message saying what to use), and ``--help`` naming every
environment variable the runtime reads."""
import os
import re
import subprocess
import sys

import pytest

from conftest import clean_env, write_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRINT = "import multiprocessing as mp, os\nprint(mp.get_start_method(), os.environ.get('DRAGON_LOG_LEVEL'))\n"


def _dragon(*argv, **env):
    return subprocess.run([sys.executable, "-m", "dragon", *argv], env=clean_env(**env), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("flags", [["-N", "1"], ["-N1"], ["--nodes", "1"], ["--nodes=1"], ["-s", "-N", "1"],
                                   ["--single-node-override"], ["--no-label"], ["--basic-label"],
                                   ["--verbose-label", "-s"]])
def test_hpe_flags_that_run_on_this_machine(tmp_path, flags):
    out = _dragon(*flags, write_script(tmp_path, PRINT))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "dragon None\n"


@pytest.mark.parametrize("flags,level", [(["-l", "DEBUG"], "DEBUG"), (["-lINFO"], "INFO"),
                                         (["-l", "stderr=WARNING"], "WARNING"), (["--log-level=NONE"], "NONE"),
                                         (["-l", "none"], "none")])
def test_log_level_forms(tmp_path, flags, level):
    out = _dragon(*flags, write_script(tmp_path, PRINT))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "dragon %s\n" % level


def test_log_level_none_silences_the_runtime(tmp_path):
    script = write_script(tmp_path, """
        import multiprocessing as mp
        if __name__ == "__main__":
            p = mp.Process(target=print, args=("child",))
            p.start(); p.join()
    """)
    loud = _dragon("-l", "INFO", script)
    assert loud.returncode == 0 and "INFO started process" in loud.stderr, loud.stderr
    quiet = _dragon("-l", "NONE", script, DRAGON_DEBUG="1")
    assert quiet.returncode == 0 and quiet.stdout == "child\n"
    assert quiet.stderr == "", quiet.stderr


@pytest.mark.parametrize("flags,message", [
    (["-l", "dragon_file=DEBUG"], "writes no log files"),
    (["-l", "actor_file=INFO"], "writes no log files"),
    (["-l", "stderr=LOUD"], "unknown log level 'LOUD'"),
    (["-N", "0"], "at least 1, not '0'"),
    (["--nodes", "two"], "at least 1, not 'two'"),
    (["-N"], "needs a number of nodes"),
    (["-N", "2"], "-N 2 needs the hosts to run on"),
    (["-N", "2", "-s", "--hostlist", "a,b"], "give -N 2 or -s, not both"),
    (["-N", "3", "--hostlist", "localhost,127.0.0.1"], "-N 3, but the host list has 2 hosts"),
    (["--wlm", "slurm"], "--wlm is an HPE Dragon option with no meaning here: hosts come from"),
    (["--wlm=ssh"], "--wlm is an HPE Dragon option"),
    (["--transport", "tcp"], "over TCP"),
    (["-p", "7575"], "free ports"),
    (["--network-prefix", "ib"], "names or addresses of the host list"),
    (["--network-config", "net.yaml"], "names or addresses of the host list"),
    (["--multi-node-override"], "given a host list"),
    (["--frobnicate"], "unknown option --frobnicate"),
])
def test_flags_refused_with_a_reason(tmp_path, flags, message):
    script = write_script(tmp_path, "print('ran')\n")
    out = _dragon(*flags, script)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr, out.stderr
    assert "ran" not in out.stdout


def test_dash_n_takes_the_first_hosts(tmp_path):
    # Two hosts, of which -N 1 keeps the first (this machine): the second,
    # a name no resolver knows, is never contacted.
    out = _dragon("-N", "1", "--hostlist", "localhost,no-such-host.invalid",
                  write_script(tmp_path, "import multiprocessing as mp\nprint(mp.get_start_method())\n"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "dragon\n"
    assert "no-such-host" not in out.stderr, out.stderr


def _environment_variables_read():
    """Every DRAGON_* variable the runtime reads, found in its sources (not
    the plugin conformance kit's, transport-abi/src/conformance.rs: it is a
    test harness for plugin authors, described in the plugin guide)."""
    reads = re.compile(r"""(?:environ(?:\.get)?\(\s*|environ\[\s*|env::var(?:_os)?\(\s*|_ENV\s*(?::\s*&str)?\s*=\s*)"""
                       r"""["'](DRAGON_[A-Z0-9_]+)["']""")
    found = set()
    roots = [os.path.join(REPO, "dragon-py", "python"), os.path.join(REPO, "dragon-py", "src"),
             os.path.join(REPO, "transport-abi", "src"), os.path.join(REPO, "runtime", "src"),
             os.path.join(REPO, "transport-tcp", "src")]
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                if name.endswith((".py", ".rs")) and name != "conformance.rs":
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        found.update(reads.findall(f.read()))
    return found


def test_help_names_every_environment_variable():
    variables = _environment_variables_read()
    # The scan itself works: it finds those known to be read.
    assert {"DRAGON_LOG_LEVEL", "DRAGON_PEER_TIMEOUT", "DRAGON_ZERO_COPY", "DRAGON_TRANSPORT_PATH",
            "DRAGON_NO_AUTOREGISTER", "DRAGON_RUN_ID"} <= variables, variables
    out = _dragon("--help")
    assert out.returncode == 0
    missing = sorted(v for v in variables if v not in out.stdout)
    assert not missing, "dragon --help does not name %s" % missing
    for flag in ("-N, --nodes", "-s, --single-node", "-l, --log-level", "--hostlist", "--hostfile", "python -m dragon"):
        assert flag in out.stdout, flag


MAIN_CLASSES = """
    import multiprocessing as mp

    class MainError(Exception):
        pass

    class Point:
        def __init__(self, x):
            self.x = x

    def make(x):
        return Point(x)

    def boom(x):
        raise MainError("boom %d" % x)

    def child(q):
        q.put(Point(7))

    if __name__ == "__main__":
        with mp.Pool(2) as p:
            print("points", [pt.x for pt in p.map(make, range(3))])
            try:
                p.apply(boom, (1,))
            except MainError as e:
                print("raised", type(e).__name__, e)
        q = mp.Queue()
        c = mp.Process(target=child, args=(q,))
        c.start()
        print("queued", q.get(timeout=60).x)
        c.join()
"""


def test_classes_of_the_script_come_back_from_its_children(tmp_path):
    # Objects and exceptions of classes the script defines, made in a
    # child (a Pool worker, a Process), reach the script, run by the dragon
    # command as by python, or as a module with -m.
    script = write_script(tmp_path, MAIN_CLASSES)
    expected = "points [0, 1, 2]\nraised MainError boom 1\nqueued 7\n"
    out = _dragon(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected
    module = os.path.splitext(os.path.basename(script))[0]
    out = subprocess.run([sys.executable, "-m", "dragon", "-m", module], env=clean_env(), capture_output=True,
                         text=True, timeout=120, cwd=os.path.dirname(script))
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected
