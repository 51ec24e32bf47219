"""What the two kinds of ``Popen`` share (:class:`dragon.popen.Popen` for a
process of this node, :class:`dragon._remote.RemotePopen` for one of
another node): waiting on the sentinel for the exit status, and the
standard ``terminate``/``kill``/``close`` on top of their own primitives.
"""
from __future__ import annotations

import os
import signal

__all__ = ["ExitStatus"]


class ExitStatus:
    """Base of the ``Popen`` classes. A subclass gives ``sentinel`` (readable
    once the exit status is there), ``returncode``, ``finalizer`` (or None),
    ``_read_status()`` (sets ``returncode`` if the status is there, never
    waits) and ``_send_signal(sig)``."""

    returncode: int | None
    sentinel: int

    def _read_status(self) -> None:
        raise NotImplementedError

    def _send_signal(self, sig: int) -> None:
        raise NotImplementedError

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            if flag != os.WNOHANG:
                from multiprocessing.connection import wait

                wait([self.sentinel])
            self._read_status()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            if timeout is not None:
                from multiprocessing.connection import wait

                if not wait([self.sentinel], timeout):
                    return None
            return self.poll(os.WNOHANG if timeout == 0.0 else 0)
        return self.returncode

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def close(self):
        if self.finalizer is not None:
            self.finalizer()
