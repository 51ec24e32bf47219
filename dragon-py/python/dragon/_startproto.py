"""What the run's template (:mod:`dragon._template`) and the processes that
ask it for children (:mod:`dragon.popen`, :mod:`dragon.runtime`) share: the
messages of their protocol (described at the top of :mod:`dragon._template`),
passing descriptors over a Unix socket, and, in a started child, the
descriptors its process object refers to.
"""
import os

REQUEST = b"DRAGON-START/2"
MAIN_ERROR = b"DRAGON-MAIN-ERROR/1"
REPLY_PID = b"P"
REPLY_ERROR = b"E"
REPLY_MAIN_ERROR = b"M"
# Descriptors per request: the exit socket, the data pipe, three stdio streams,
# the resource tracker, and those the process object refers to. SCM_MAX_FD
# is 253.
MAX_FDS = 253
INT64 = 8

# In a started child: the descriptors its process object refers to, by
# index (set by the template's child before it unpickles the object; read by
# dragon.popen's reduced descriptors).
inherited_fds = []


def fd_array(fds):
    """``fds`` as the array ``SCM_RIGHTS`` ancillary data takes."""
    import array

    return array.array("i", fds)


def fds_from_ancillary(anc):
    """The descriptors ``SCM_RIGHTS`` ancillary data (of ``recvmsg``) carries."""
    import array
    import socket

    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return list(fds)


def close_all(fds):
    """Close each descriptor of ``fds`` (negative ones and errors ignored)."""
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
