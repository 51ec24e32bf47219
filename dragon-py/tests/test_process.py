"""Process lifecycle under the dragon start method."""
import os
import signal
import sys
import threading
import time

import pytest

import multiprocessing as mp
from multiprocessing.connection import wait

import _helpers as h
from conftest import pid_alive, run_script, wait_until, write_script


def test_registered_and_dispatching():
    assert "dragon" in mp.context._concrete_contexts
    ctx = mp.get_context("dragon")
    assert ctx.get_start_method() == "dragon"
    assert ctx.Process._start_method == "dragon"
    # Top-level factories dispatch on the current context, keep docstrings.
    # (They pickle by reference as multiprocessing.Queue and so on.)
    assert getattr(mp.Queue, "_dragon_dispatch", False)
    assert mp.Queue.__module__ == "multiprocessing"
    assert mp.Queue.__doc__ == mp.context.BaseContext.Queue.__doc__
    import inspect

    assert str(inspect.signature(mp.Queue)) == "(maxsize=0)"
    # The standard submodules are untouched.
    import multiprocessing.pool

    assert multiprocessing.pool.Pool.__module__ == "multiprocessing.pool"


def test_start_join_exitcode_pid_name(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=h.report, args=(q,), name="worker-x")
    assert p.exitcode is None and not p.is_alive()
    p.start()
    info = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    assert not p.is_alive()
    assert info["pid"] == p.pid  # a real OS pid
    assert info["name"] == "worker-x"
    assert info["parent_pid"] == os.getpid()
    assert info["parent_alive"] is True
    assert info["start_method"] == "dragon"
    assert info["run_id"] == os.environ["DRAGON_RUN_ID"]
    p.close()
    with pytest.raises(ValueError):
        p.is_alive()


def test_pid_is_live_os_process(ctx):
    p = ctx.Process(target=h.sleep, args=(30,))
    p.start()
    try:
        assert pid_alive(p.pid)
        with open("/proc/%d/cmdline" % p.pid, "rb") as f:
            assert b"python" in f.read()
        assert p in mp.active_children()
        with pytest.raises(ValueError):
            p.close()  # still running
    finally:
        p.kill()
        p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert p not in mp.active_children()
    assert wait_until(lambda: not pid_alive(p.pid))


@pytest.mark.parametrize("target,args,code", [
    (h.noop, (), 0),
    (h.exit_with, (3,), 3),
    (h.raise_error, (), 1),
    (h.hard_exit, (7,), 7),
    (h.self_signal, (signal.SIGABRT,), -signal.SIGABRT),
    (h.self_signal, (signal.SIGUSR1,), -signal.SIGUSR1),
])
def test_exit_codes(ctx, target, args, code, capfd):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(30)
    assert p.exitcode == code
    if target is h.raise_error:
        assert "boom from the child" in capfd.readouterr().err


def test_terminate_and_kill(ctx):
    a = ctx.Process(target=h.sleep, args=(60,))
    b = ctx.Process(target=h.sleep, args=(60,))
    a.start()
    b.start()
    a.terminate()
    b.kill()
    a.join(30)
    b.join(30)
    assert a.exitcode == -signal.SIGTERM
    assert b.exitcode == -signal.SIGKILL
    a.terminate()  # after exit: a no-op, as in the standard library
    b.kill()


def test_join_timeout(ctx):
    p = ctx.Process(target=h.sleep, args=(60,))
    p.start()
    t = time.monotonic()
    p.join(0.2)
    assert time.monotonic() - t >= 0.19
    assert p.is_alive() and p.exitcode is None
    p.terminate()
    p.join(30)
    assert p.exitcode == -signal.SIGTERM


def test_daemon_flag(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=h.report, args=(q,), daemon=True)
    p.start()
    assert q.get(timeout=30)["daemon"] is True
    p.join(30)


def test_sentinel_with_connection_wait(ctx):
    slow = ctx.Process(target=h.sleep, args=(60,))
    fast = ctx.Process(target=h.sleep, args=(0.1,))
    slow.start()
    fast.start()
    assert isinstance(fast.sentinel, int)
    ready = wait([slow.sentinel, fast.sentinel], timeout=30)
    assert ready == [fast.sentinel]
    # After exit, the exit code is known at once and the sentinel stays ready.
    assert fast.exitcode == 0
    assert wait([fast.sentinel], timeout=0) == [fast.sentinel]
    assert wait([slow.sentinel], timeout=0.05) == []
    slow.terminate()
    assert wait([slow.sentinel], timeout=30) == [slow.sentinel]
    slow.join(30)
    fast.join(30)


def test_cpu_count_and_current_process(ctx):
    assert ctx.cpu_count() == os.cpu_count()
    assert mp.cpu_count() == os.cpu_count()
    assert mp.current_process().name == "MainProcess"
    assert mp.parent_process() is None


def test_nested_process(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=h.nested_process, args=(q,))
    p.start()
    child, grandchild, code = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0 and child == p.pid
    assert grandchild not in (child, os.getpid()) and code == 5


def test_nested_pool(ctx):
    # Stock Pool workers are daemonic and may not have children, so the
    # nesting process here is a plain (non-daemonic) Process.
    q = ctx.Queue()
    ps = [ctx.Process(target=h.put_result, args=(q, h.nested_pool, n)) for n in (3, 4)]
    for p in ps:
        p.start()
    assert sorted(q.get(timeout=60) for _ in ps) == [5, 14]
    for p in ps:
        p.join(30)
        assert p.exitcode == 0


def test_parent_process_death_is_seen(ctx):
    q = ctx.Queue()
    hold = ctx.Event()
    p = ctx.Process(target=h.orphan_watcher, args=(q, hold))
    p.start()
    assert q.get(timeout=30) == ("before", True)
    hold.set()
    p.join(30)
    assert q.get(timeout=30) == ("after", False)


def test_pool_initializer_global_and_map(ctx):
    with ctx.Pool(2, initializer=h.init_global, initargs=(41,)) as pool:
        assert pool.map(h.read_global, range(4)) == [41] * 4
        assert pool.map(h.square, range(10)) == [x * x for x in range(10)]


def test_connection_passed_to_child(ctx):
    a, b = ctx.Pipe()
    p = ctx.Process(target=h.fd_reader, args=(b,))
    p.start()
    a.send("ab")
    assert a.poll(30)
    assert a.recv() == "abab"
    p.join(30)
    assert p.exitcode == 0


def test_environment_cwd_and_sys_path_follow_the_parent(ctx, tmp_path, monkeypatch):
    ctx.Process(target=h.noop).start()  # the template is up before the changes
    monkeypatch.setenv("DRAGON_TEST_VAR", "changed-later")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("/dragon-test-path")
    q = ctx.Queue()
    p = ctx.Process(target=h.report, args=(q,))
    p.start()
    info = q.get(timeout=30)
    p.join(30)
    assert info["env"] == "changed-later"
    assert info["cwd"] == str(tmp_path)
    assert info["sys_path_has"]


def test_stdio_follows_the_parent(ctx, capfd):
    p = ctx.Process(target=h.write_stdio, args=("one",))
    p.start()
    p.join(30)
    out, err = capfd.readouterr()
    assert "stdout-one" in out and "raw-one" in out
    assert "stderr-one" in err


def test_stdio_redirected_to_file(ctx, tmp_path):
    path = tmp_path / "out.txt"
    saved = os.dup(1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    os.dup2(fd, 1)
    os.close(fd)
    try:
        p = ctx.Process(target=h.write_stdio, args=("two",))
        p.start()
        p.join(30)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert "stdout-two" in path.read_text()


def test_closed_stdio_is_fine(tmp_path):
    path = write_script(tmp_path, """
        import multiprocessing as mp, os, sys
        import dragon
        def f():
            os.write(2, b"child-alive\\n")
        if __name__ == "__main__":
            os.close(0)
            os.close(1)
            mp.set_start_method("dragon")
            p = mp.Process(target=f)
            p.start(); p.join(30)
            os.write(2, b"exitcode %d\\n" % p.exitcode)
    """)
    r = run_script(path)
    assert r.returncode == 0, r.stderr
    assert "child-alive" in r.stderr and "exitcode 0" in r.stderr


def test_unpicklable_target_is_a_clear_error(ctx):
    import threading

    lock = threading.Lock()
    # A lambda goes by value (test_by_value.py); one that holds a lock
    # cannot go either way.
    p = ctx.Process(target=lambda: lock)
    with pytest.raises(Exception) as ei:
        p.start()
    assert "pickle" in str(ei.value).lower() or "lambda" in str(ei.value)
    ok = ctx.Process(target=h.noop)  # the runtime is still usable
    ok.start()
    ok.join(30)
    assert ok.exitcode == 0


def test_concurrent_starts_from_threads(ctx):
    codes = []
    lock = threading.Lock()

    def starter(i):
        for j in range(5):
            p = ctx.Process(target=h.exit_with, args=((i + j) % 5,))
            p.start()
            p.join(30)
            with lock:
                codes.append((p.exitcode, (i + j) % 5))

    ts = [threading.Thread(target=starter, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert len(codes) == 20
    assert all(a == b for a, b in codes)


def test_concurrent_starts_from_processes(ctx):
    q = ctx.Queue()
    ps = [ctx.Process(target=h.start_many, args=(6, q)) for _ in range(3)]
    for p in ps:
        p.start()
    results = [q.get(timeout=60) for _ in ps]
    for p in ps:
        p.join(30)
        assert p.exitcode == 0
    assert results == [[i % 7 for i in range(6)]] * 3


def test_template_is_in_its_own_session(ctx):
    from dragon import runtime

    p = ctx.Process(target=h.sleep, args=(30,))
    p.start()
    try:
        tpl = runtime.template_pid()
        assert tpl is not None
        assert os.getsid(tpl) == tpl != os.getsid(0)
        assert os.getsid(p.pid) == tpl  # workers do not get the terminal's Ctrl-C
    finally:
        p.kill()
        p.join(30)


MAIN_SCRIPT = """
import multiprocessing as mp
import os, sys
import dragon

G = "unset"

def init(v):
    global G
    G = v

def task(x):
    return (x * x, G, __name__)

class Box:
    def __init__(self, v):
        self.v = v

def show(box):
    print("box", box.v, type(box).__module__, flush=True)

if __name__ == "__main__":
    mp.set_start_method("dragon")
    p = mp.Process(target=show, args=(Box(7),))
    p.start(); p.join()
    with mp.Pool(2, initializer=init, initargs=("set-by-init",)) as pool:
        print(pool.map(task, [1, 2, 3]), flush=True)
    print("exitcode", p.exitcode)
"""


def test_main_module_functions_and_initializer_globals(tmp_path):
    path = write_script(tmp_path, MAIN_SCRIPT)
    r = run_script(path)
    assert r.returncode == 0, r.stderr
    assert "box 7 __mp_main__" in r.stdout  # as with spawn
    assert "[(1, 'set-by-init', '__mp_main__'), (4, 'set-by-init', '__mp_main__'), " \
           "(9, 'set-by-init', '__mp_main__')]" in r.stdout
    assert "exitcode 0" in r.stdout


def test_target_missing_in_child_gives_error_not_hang(tmp_path):
    path = write_script(tmp_path, """
        import multiprocessing as mp
        import dragon
        if __name__ == "__main__":
            def hidden():  # not importable by the child
                pass
            mp.set_start_method("dragon")
            p = mp.Process(target=hidden)
            p.start(); p.join(30)
            print("exitcode", p.exitcode)
    """)
    r = run_script(path)
    assert r.returncode == 0, r.stderr
    assert "exitcode 1" in r.stdout
    assert "hidden" in r.stderr and "AttributeError" in r.stderr


def test_unguarded_main_gives_spawn_error(tmp_path):
    path = write_script(tmp_path, """
        import multiprocessing as mp
        import dragon
        def f():
            pass
        mp.set_start_method("dragon", force=True)
        p = mp.Process(target=f)
        p.start(); p.join(30)
        print("exitcode", p.exitcode, flush=True)
    """)
    r = run_script(path)
    assert r.returncode == 0, r.stderr
    # The child re-imports the main module, which tries to start a process
    # during bootstrapping: spawn's error, and the parent sees exit code 1.
    assert "exitcode 1" in r.stdout
    assert "bootstrapping phase" in r.stderr


def test_dragon_cli(tmp_path):
    import subprocess

    from conftest import clean_env

    script = write_script(tmp_path, """
        import multiprocessing as mp, sys
        def f(x):
            return x + 1
        if __name__ == "__main__":
            print(mp.get_start_method(), sys.argv[1:], flush=True)
            with mp.Pool(2) as p:
                print(p.map(f, [1, 2]), flush=True)
    """)
    exe = os.path.join(os.path.dirname(sys.executable), "dragon")
    r = subprocess.run([exe, script, "a", "b"], env=clean_env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["dragon ['a', 'b']", "[2, 3]"]
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("dragon ")
    r = subprocess.run([exe, "-m", "script", "z"], env=clean_env(), capture_output=True, text=True,
                       timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["dragon ['z']", "[2, 3]"]
    r = subprocess.run([exe, str(tmp_path / "missing.py")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "can't open file" in r.stderr
    # HPE Dragon programs select the start method themselves; an uncaught
    # exception gives exit code 1 as with python.
    script = write_script(tmp_path, """
        import multiprocessing as mp
        def f(x):
            return -x
        if __name__ == "__main__":
            mp.set_start_method("dragon")
            with mp.Pool(2) as p:
                print(p.map(f, [1, 2]), flush=True)
            raise SystemExit(3)
    """, name="selects.py")
    r = subprocess.run([exe, script], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines() == ["[-1, -2]"]


def test_exited_child_keeps_its_pid_until_its_exit_is_seen():
    # As with fork, an exited child's pid keeps naming it (a zombie) until
    # the parent has seen the exit (join, poll, is_alive): a signal sent in
    # between must not fail, nor reach a process that reused the pid. Once
    # seen, the child is reaped, as fork's waitpid does, while the Process
    # object lives on (a program that keeps its Process objects, a Pool's
    # workers, leaves no zombies).
    from multiprocessing.connection import wait

    ctx = mp.get_context("dragon")
    p = ctx.Process(target=time.sleep, args=(0,))
    p.start()
    assert wait([p.sentinel], 60) == [p.sentinel]  # exited; not yet seen
    os.kill(p.pid, 0)  # still there, as a zombie
    p.join()
    assert p.exitcode == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the template did not reap the child after its exit was seen")
    assert p.exitcode == 0 and not p.is_alive()
    p.close()


def test_socket_default_timeout_does_not_reach_the_runtime(ctx):
    # CPython's TestTimeouts sets socket.setdefaulttimeout(0.1) around a
    # process start; the runtime's own sockets must stay blocking.
    import socket

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.0001)
    try:
        procs = [ctx.Process(target=time.sleep, args=(0.3,)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        with ctx.Pool(2) as pool:
            assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
    finally:
        socket.setdefaulttimeout(old)
