"""dragon.native.process: Process, ProcessTemplate, Popen, current()."""
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

import _native_helpers as nh
from conftest import pid_alive, wait_until
from dragon.infrastructure.parameters import this_process
from dragon.native import Event, Queue
from dragon.native.process import (
    DEVNULL, PIPE, STDOUT, MSG_PIPE, Popen, Process, ProcessError, ProcessTemplate, current, split_puid,
)

pytestmark = pytest.mark.timeout(120)


def test_python_target_exit_codes():
    ok = Process(nh.exit_with, args=(0,))
    three = Process(nh.exit_with, args=(3,))
    boom = Process(nh.raise_error)
    for p in (ok, three, boom):
        assert not p.started and p.puid is None and p.returncode is None
        p.start()
    assert ok.join(30) == 0
    assert three.join(30) == 3
    assert boom.join(30) == 1
    assert three.returncode == 3 and three.exitcode == 3
    assert not three.is_alive and three.is_alive() is False
    with pytest.raises(RuntimeError):
        ok.start()


def test_identity_and_lookup():
    p = Process(nh.sleep, args=(30,), ident="native-sleeper")
    p.start()
    try:
        assert p.is_alive and p.is_alive()
        pid, ticks = split_puid(p.puid)
        assert pid == p.pid and ticks > 0
        assert pid_alive(p.pid)
        assert p.name == "native-sleeper"
        # The same object, by puid or by name.
        assert Process(None, ident=p.puid) is p
        assert Process(None, ident="native-sleeper") is p
        with pytest.raises(ProcessError):
            Process(nh.sleep, args=(1,), ident="native-sleeper")  # name taken
        assert p in current().children()
    finally:
        p.kill()
    assert p.join(30) == -signal.SIGKILL
    with pytest.raises(ProcessError):
        Process(None, ident=12345 << 32 | 1)  # nobody
    with pytest.raises(ProcessError):
        Process(None, ident="no-such-name")
    with pytest.raises(ProcessError):
        Process(None)


def test_child_sees_itself_and_its_parent(tmp_path):
    q = Queue()
    p = Process(nh.report, args=(q, "x"), cwd=str(tmp_path), env={"DRAGON_NATIVE_TEST": "yes"})
    p.start()
    info = q.get(timeout=30)
    assert p.join(30) == 0
    assert info["pid"] == p.pid
    assert info["puid"] == info["current_puid"] == p.puid
    assert info["parent_puid"] == this_process.my_puid == current().puid
    assert info["cwd"] == str(tmp_path)
    assert info["env"] == "yes"
    assert "DRAGON_NATIVE_TEST" not in os.environ


def test_signals():
    ps = [Process(nh.sleep, args=(30,)) for _ in range(3)]
    for p in ps:
        p.start()
    ps[0].terminate()
    ps[1].kill()
    ps[2].send_signal(signal.SIGUSR1)
    assert [p.join(30) for p in ps] == [-signal.SIGTERM, -signal.SIGKILL, -signal.SIGUSR1]
    ps[0].kill()  # after the exit: nothing happens


def test_join_timeout_returns_none():
    p = Process(nh.sleep, args=(30,))
    p.start()
    t = time.monotonic()
    assert p.join(0.2) is None
    assert time.monotonic() - t >= 0.15
    p.kill()
    assert p.join(30) == -9


def test_stdout_pipe_lines_and_eof():
    p = Process(nh.print_lines, args=(3,), stdout=PIPE)
    p.start()
    chunks = []
    with pytest.raises(EOFError):
        while True:
            chunks.append(p.stdout_conn.recv())
    assert "".join(chunks) == "line 0\nline 1\nline 2\n"
    assert p.join(30) == 0
    assert p.stderr_conn is None and p.stdin_conn is None
    with pytest.raises(EOFError):
        p.stdout_conn.recv()


def test_recv_returns_whole_lines_and_prompts():
    p = Process(nh.prompt_then_lines, stdin=PIPE, stdout=PIPE)
    p.start()
    out = p.stdout_conn
    assert out.recv() == "first line\n"  # written in two pieces
    assert out.recv() == "answer? "      # no newline comes: returned after a pause
    p.stdin_conn.send("yes\n")
    assert out.recv() == "got yes\n"
    with pytest.raises(EOFError):
        out.recv()
    assert p.join(30) == 0


def test_stderr_to_stdout_and_devnull():
    merged = Process(nh.print_lines, args=(1, "m"), stdout=PIPE, stderr=STDOUT)
    quiet = Process(nh.print_lines, args=(1,), stdout=DEVNULL, stderr=DEVNULL)
    merged.start()
    quiet.start()
    out = merged.stdout_conn.read()
    assert "m 0\n" in out and "to stderr\n" in out
    assert merged.join(30) == 0 and quiet.join(30) == 0


def test_output_to_file_appends(tmp_path):
    t = ProcessTemplate(nh.print_lines, args=(2, "f"), cwd=str(tmp_path), stdout="out.txt")
    for _ in range(2):
        p = Process.from_template(t)
        p.start()
        assert p.join(30) == 0
    assert (tmp_path / "out.txt").read_text() == "f 0\nf 1\n" * 2


def test_stdin_pipe_to_python_target():
    p = Process(nh.echo_stdin, stdin=PIPE, stdout=PIPE)
    p.start()
    p.stdin_conn.send("hello\n")
    p.stdin_conn.close()
    assert p.stdout_conn.read() == "got:HELLO\n"
    assert p.join(30) == 0


def test_executable_target():
    p = Process("echo", args=["one", 2, "three"], stdout=PIPE)
    assert not p.is_python and os.path.isabs(p.target)
    p.start()
    assert p.stdout_conn.read() == "one 2 three\n"
    assert p.join(30) == 0
    false = Process("false")
    false.start()
    assert false.join(30) == 1


def test_executable_cwd_env_stdin(tmp_path):
    p = Process("/bin/sh", args=["-c", "pwd; echo $DRAGON_NATIVE_TEST; cat"], cwd=str(tmp_path),
                env={"DRAGON_NATIVE_TEST": "exec-env"}, stdin=PIPE, stdout=PIPE)
    p.start()
    p.stdin_conn.send(b"from stdin\n")
    p.stdin_conn.close()
    assert p.stdout_conn.read().splitlines() == [str(tmp_path), "exec-env", "from stdin"]
    assert p.join(30) == 0


def test_executable_signals_and_exit():
    p = Process("sleep", args=["30"])
    p.start()
    assert p.is_alive
    with open("/proc/%d/cmdline" % p.pid, "rb") as f:
        assert f.read().split(b"\0")[0].endswith(b"sleep")
    p.terminate()
    assert p.join(30) == -signal.SIGTERM


def test_executable_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Process("no-such-program-anywhere")
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    p = Process(str(script))
    with pytest.raises(PermissionError):
        p.start()
    assert p.returncode == 127  # the child that could not exec, already reaped
    with pytest.raises(TypeError):
        Process("echo", args="one string")
    with pytest.raises(TypeError):
        Process("echo", kwargs={"a": 1})
    with pytest.raises(TypeError):
        Process("echo", env={"A": 1})
    with pytest.raises(ValueError):
        Process("echo", stdout=STDOUT)
    with pytest.raises(FileNotFoundError):
        Process("echo", cwd=str(tmp_path / "missing")).start()


def test_lambda_target_travels_by_value():
    # cloudpickle is a dependency of the package: a lambda target runs.
    q = Queue()
    p = Process(lambda q: q.put("by value"), args=(q,))
    p.start()
    assert q.get(timeout=30) == "by value"
    assert p.join(30) == 0


def test_unpicklable_target_without_cloudpickle_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # import fails
    p = Process(lambda: None)
    with pytest.raises(ProcessError, match="cloudpickle"):
        p.start()
    assert not p.started


def test_template_is_not_startable():
    t = ProcessTemplate(nh.exit_with, args=(4,))
    with pytest.raises(NotImplementedError):
        t.start()
    assert t.get_original_python_parameters() == (nh.exit_with, (4,), {})
    p = Process.from_template(t, ident="from-template")
    p.start()
    assert p.join(30) == 4 and p.name == "from-template"


def test_foreign_process_view():
    q = Queue()
    hold = Event()
    parent = Process(nh.grandchild_puid, args=(q, hold))
    parent.start()
    puid = q.get(timeout=30)
    view = Process(None, ident=puid)  # started by another process
    assert view.is_alive and view.pid == split_puid(puid)[0]
    assert view.join(0.05) is None
    with pytest.raises(ProcessError):
        view.start()
    view.kill()
    assert wait_until(lambda: not view.is_alive, 30)
    assert view.returncode is None  # known to its parent only
    hold.set()
    assert parent.join(30) == 0


def test_started_process_pickles_as_a_view():
    q = Queue()
    p = Process(nh.sleep, args=(30,))
    p.start()
    assert pickle.loads(pickle.dumps(p)) is p
    other = Process(nh.look_up, args=(q, p.puid))
    other.start()
    puid, alive, pid = q.get(timeout=30)
    assert (puid, alive, pid) == (p.puid, True, p.pid)
    assert other.join(30) == 0
    p.kill()
    p.join(30)


def test_current_process():
    me = current()
    assert me.puid == this_process.my_puid
    assert me.pid == os.getpid()
    assert me.is_alive
    with pytest.raises(ProcessError):
        me.join(0)


def test_popen_communicate_and_wait():
    p = Popen(["sh", "-c", "cat; echo err >&2; exit 4"], stdin=Popen.PIPE, stdout=Popen.PIPE,
              stderr=Popen.PIPE)
    assert p.puid is not None and p.pid > 0
    assert p.communicate("abc\n", timeout=30) == ("abc\n", "err\n")
    assert p.returncode == 4 and p.poll() == 4
    s = Popen("echo $((6 * 7))", shell=True, stdout=MSG_PIPE)
    assert s.communicate(timeout=30) == ("42\n", None)
    slow = Popen(["sleep", "30"])
    with pytest.raises(subprocess.TimeoutExpired):
        slow.wait(timeout=0.1)
    slow.kill()
    assert slow.wait(30) == -9
    with pytest.raises(NotImplementedError):
        Popen(["true"], preexec_fn=lambda: None)


def test_popen_runs_python_scripts(tmp_path):
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('script', sys.argv[1:])\n")
    p = Popen([str(script), "a", "b"], stdout=PIPE)
    assert p.communicate(timeout=60)[0] == "script ['a', 'b']\n"
    assert p.returncode == 0


def test_output_connection_travels_to_another_process():
    q = Queue()
    p = Process(nh.print_lines, args=(2, "t"), stdout=PIPE)
    p.start()
    reader = Process(nh.read_conn, args=(p.stdout_conn, q))
    reader.start()
    p.stdout_conn.close()
    assert q.get(timeout=30) == "t 0\nt 1\n"
    assert reader.join(30) == 0 and p.join(30) == 0


def test_is_alive_flag_works_both_ways():
    p = Process(nh.sleep, args=(30,))
    p.start()
    try:
        assert p.is_alive == True  # noqa: E712  (HPE spelling: a property)
        assert p.is_alive() is True  # multiprocessing spelling
        assert bool(p.is_alive)
    finally:
        p.kill()
        p.join(30)
    assert not p.is_alive and p.is_alive == False  # noqa: E712


def test_standard_streams_argument_checks():
    with pytest.raises(TypeError):
        Process(nh.sleep, stdout=True)
    with pytest.raises(TypeError):
        Process(nh.sleep, stdout=object())
    with pytest.raises(ValueError):
        Process(nh.sleep, stdin=STDOUT)
    with pytest.raises(NotImplementedError):
        Process(nh.sleep, _pmi_enabled=True)
    # A descriptor of ours: the child writes to it.
    r, w = os.pipe()
    try:
        p = Process(nh.print_lines, args=(1, "fd"), stdout=w)
        p.start()
        os.close(w)
        w = -1
        data = b""
        while True:
            chunk = os.read(r, 1024)
            if not chunk:
                break
            data += chunk
        assert data == b"fd 0\n"
        assert p.join(30) == 0
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_interpreter_used_for_children_is_ours():
    p = Process(sys.executable, args=["-c", "import sys; print(sys.version_info[:2])"], stdout=PIPE)
    p.start()
    assert p.stdout_conn.read().strip() == str(sys.version_info[:2])
    assert p.join(30) == 0
