//! A unix stream connection that keeps the descriptors sent along with its
//! bytes (`SCM_RIGHTS`): a process hands its node's service the
//! descriptors a process it starts on another node refers to (the
//! lifetime sockets of `Pipe` ends; see `service.rs`, "tethers").

use mio::event::Source;
use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// Descriptors received, oldest first.
pub type Received = Arc<Mutex<VecDeque<OwnedFd>>>;

/// A [`UnixStream`] whose reads collect the descriptors that came with them.
#[derive(Debug)]
pub struct FdStream {
    inner: UnixStream,
    fds: Received,
}

impl FdStream {
    /// Wrap `inner`; received descriptors go to the returned queue.
    pub fn new(inner: UnixStream) -> (FdStream, Received) {
        let fds = Received::default();
        (FdStream { inner, fds: fds.clone() }, fds)
    }
}

impl AsRawFd for FdStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
    }
}

impl Read for FdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, fds) = crate::sys::recv_with_fds(self.inner.as_raw_fd(), buf)?;
        if !fds.is_empty() {
            self.fds.lock().unwrap_or_else(|e| e.into_inner()).extend(fds);
        }
        Ok(n)
    }
}

impl Write for FdStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.inner.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Source for FdStream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.inner.register(r, t, i)
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.inner.reregister(r, t, i)
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.inner.deregister(r)
    }
}
