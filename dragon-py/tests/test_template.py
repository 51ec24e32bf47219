"""The template process: protocol robustness, failure reporting, stock
objects on the dragon context."""
import os
import signal
import socket

import pytest

import _helpers as h
from conftest import pid_alive, run_script, write_script
from dragon import _startproto as proto
from dragon import runtime


def _raw_client():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(30)
    s.connect("\0" + runtime.ensure_template())
    return s


def _start_and_join(ctx, code=0):
    p = ctx.Process(target=h.exit_with, args=(code,))
    p.start()
    p.join(30)
    return p.exitcode


def test_silent_client_does_not_block_others(ctx):
    idle = _raw_client()  # connects and never says anything
    try:
        assert _start_and_join(ctx, 4) == 4
    finally:
        idle.close()


def test_bad_requests_get_clear_errors(ctx):
    s = _raw_client()
    s.send(b"GARBAGE")
    assert s.recv(256).startswith(proto.REPLY_ERROR + b"unknown request")
    assert s.recv(256) == b""  # and the connection is closed
    s.close()
    s = _raw_client()
    s.send(proto.REQUEST)  # without its descriptors
    assert s.recv(256).startswith(proto.REPLY_ERROR + b"request without")
    s.close()
    s = _raw_client()
    r, w = os.pipe()
    s.sendmsg([proto.REQUEST], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, proto.fd_array([r]))])
    os.close(r)
    os.close(w)
    assert s.recv(256).startswith(proto.REPLY_ERROR + b"request without its exit and data pipes")
    s.close()
    assert _start_and_join(ctx, 2) == 2  # the template carries on


def test_client_that_vanishes_mid_request(ctx):
    s = _raw_client()
    exit_r, exit_w = os.pipe()
    r, w = os.pipe()
    s.sendmsg([proto.REQUEST], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, proto.fd_array([exit_w, r]))])
    os.close(exit_w)
    os.close(r)
    os.close(w)  # no start data will ever come: the child exits quietly
    reply = s.recv(256)
    assert reply[:1] == proto.REPLY_PID
    # The exit pipe gets the exit code (the child exits with 1, having no
    # start data) and then EOF.
    assert int.from_bytes(os.read(exit_r, 8), "little", signed=True) == 1
    assert os.read(exit_r, 8) == b""
    os.close(exit_r)
    s.close()
    pid = int.from_bytes(reply[1:9], "little", signed=True)
    from conftest import wait_until

    assert wait_until(lambda: not pid_alive(pid), 10)
    assert _start_and_join(ctx, 3) == 3


def test_terminate_right_after_start(ctx):
    # A SIGTERM that reaches a child before it has dropped the template's
    # handlers must kill the child, not be taken for the template's.
    ps = [ctx.Process(target=h.sleep, args=(60,)) for _ in range(30)]
    for p in ps:
        p.start()
    for p in ps:
        p.terminate()
    for p in ps:
        p.join(30)
    assert [p.exitcode for p in ps] == [-signal.SIGTERM] * 30
    assert pid_alive(runtime.template_pid())
    assert _start_and_join(ctx, 1) == 1


def test_too_many_descriptors_is_a_clear_error(ctx):
    conns = [ctx.Pipe() for _ in range(proto.MAX_FDS // 2 + 5)]
    p = ctx.Process(target=h.noop, args=(conns,))
    with pytest.raises(ValueError, match="too many file descriptors"):
        p.start()
    for a, b in conns:
        a.close()
        b.close()
    assert _start_and_join(ctx, 0) == 0


def test_template_killed_gives_clear_error(tmp_path):
    path = write_script(tmp_path, """
        import multiprocessing as mp, os, signal, time
        import dragon
        from dragon import runtime
        if __name__ == "__main__":
            mp.set_start_method("dragon")
            p = mp.Process(target=time.sleep, args=(60,))
            p.start()
            os.kill(runtime.template_pid(), signal.SIGKILL)
            p.join(30)
            print("lost child exitcode", p.exitcode, flush=True)
            try:
                mp.Process(target=time.sleep, args=(0,)).start()
            except OSError as e:
                print("error:", e, flush=True)
            os.kill(p.pid, signal.SIGKILL)
    """)
    r = run_script(path)
    assert r.returncode == 0, r.stderr
    assert "lost child exitcode 255" in r.stdout
    assert ("cannot reach the dragon runtime's template process" in r.stdout
            or "template process went away" in r.stdout)
    assert "exited" in r.stdout or "gone" in r.stdout


def test_main_module_import_error_reported_by_children(tmp_path):
    path = write_script(tmp_path, """
        import multiprocessing as mp
        import dragon
        if __name__ != "__main__":
            raise ImportError("main module refuses to be imported")
        def f():
            pass
        if __name__ == "__main__":
            mp.set_start_method("dragon")
            p = mp.Process(target=f)
            p.start(); p.join(30)
            print("exitcode", p.exitcode, flush=True)
    """)
    r = run_script(path)
    assert r.returncode == 0, r.stderr
    assert "exitcode 1" in r.stdout
    assert "main module refuses to be imported" in r.stderr


def test_manager_and_threadpool_under_dragon(ctx):
    with ctx.Manager() as m:
        d = m.dict()
        p = ctx.Process(target=h.put_result, args=(m.Queue(), h.square, 3))
        p.start()
        p.join(30)
        d["k"] = 1
        assert dict(d) == {"k": 1}
    from multiprocessing.pool import ThreadPool

    with ThreadPool(2) as tp:
        assert tp.map(h.square, range(4)) == [0, 1, 4, 9]


def test_process_pool_executor(ctx):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(h.square, range(6))) == [x * x for x in range(6)]


def test_batched_starts(ctx):
    # Inside batch_starts a start does not wait for its pid; the pids arrive
    # by the end of the block and the processes behave as any other.
    from dragon.popen import batch_starts

    ps = [ctx.Process(target=h.exit_with, args=(i,)) for i in range(6)]
    with batch_starts():
        for p in ps:
            p.start()
        assert all(p._popen._pid is None or p._popen._pid > 0 for p in ps)
    assert all(p._popen._pid > 0 for p in ps)
    assert len({p.pid for p in ps}) == 6
    for p in ps:
        p.join(30)
    assert [p.exitcode for p in ps] == list(range(6))
