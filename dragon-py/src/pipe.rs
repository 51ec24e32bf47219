//! `_native.PipeInbox`: the receiving side of a `dragon.connection`
//! connection, by the `queues` crate's pipe rules ([`queues::Inbox`]): a
//! message kept (by `poll`, or too long for `recv_bytes`) comes first,
//! control messages are skipped, and `EOFError` comes once every copy of
//! the other end is closed and nothing is left to read.
//!
//! The other end's lifetime is the connection's socket pair's (see
//! `dragon/connection.py`): the other end is gone once its socket is
//! closed in every process, which a peek at this end's socket sees. The
//! inbox holds the socket object, not its descriptor: a closed socket is
//! a gone peer, never a reused descriptor.
use crate::errors::pipe_err;
use crate::queue::{block_args, raise_later, run, tag_of, AnyChannel};
use pyo3::exceptions::{PyBlockingIOError, PyEOFError, PyInterruptedError, PyOSError, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use queues::{Fault, Inbox, PipeError, Tag};
use std::sync::Mutex;
use std::time::Duration;

/// `socket.MSG_PEEK | socket.MSG_DONTWAIT`.
const PEEK_NOW: i32 = libc::MSG_PEEK | libc::MSG_DONTWAIT;

/// The receiving side of one connection end.
#[pyclass(module = "dragon._native", frozen)]
pub(crate) struct PipeInbox {
    /// The channel this end receives from (`Channel` or `RemoteChannel`),
    /// `None` for a write-only end.
    channel: Option<Py<PyAny>>,
    /// This end's socket of the pair.
    sock: Py<PyAny>,
    inbox: Mutex<Inbox<Py<PyTuple>>>,
}

impl PipeInbox {
    /// Receive one message waiting at most `t` (stopping early when the
    /// other end looks gone: `self` is the channel's check).
    fn recv_one(slf: &Bound<'_, Self>, t: Option<Duration>) -> Result<Option<(Tag, Py<PyTuple>)>, Fault> {
        let py = slf.py();
        let me = slf.get();
        let ch = me.channel.as_ref().ok_or_else(|| Fault::Other("connection is write-only".into()))?;
        let (block, secs) = block_args(t);
        let check = Some(slf.clone().into_any().unbind());
        let r = AnyChannel::of(ch.bind(py)).map_err(raise_later)?.recv(block, secs, check);
        match r {
            Ok(Some(m)) => Ok(Some((tag_of(&m).map_err(raise_later)?, m.unbind()))),
            Ok(None) => Ok(None),
            Err(e) if e.is_instance_of::<PyEOFError>(py) => Err(Fault::Closed),
            Err(e) => Err(raise_later(e)),
        }
    }

    /// Whether every copy of the other end is closed.
    fn closed_peer(&self, py: Python<'_>) -> PyResult<bool> {
        match self.sock.bind(py).call_method1("recv", (1, PEEK_NOW)) {
            Ok(b) => Ok(b.len()? == 0),
            Err(e)
                if e.is_instance_of::<PyBlockingIOError>(py)
                    || e.is_instance_of::<PyInterruptedError>(py)
                    || e.is_instance_of::<PyTimeoutError>(py) =>
            {
                Ok(false)
            }
            Err(e) if e.is_instance_of::<PyOSError>(py) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Whether the other end is gone and nothing is left to read. The
    /// other end's close is looked at before the ring: what it sent before
    /// closing is then visible.
    fn gone(&self, py: Python<'_>) -> Result<bool, Fault> {
        if !self.closed_peer(py).map_err(raise_later)? {
            return Ok(false);
        }
        let Some(ch) = &self.channel else { return Ok(true) };
        let readable = AnyChannel::of(ch.bind(py)).map_err(raise_later)?.readable();
        Ok(!readable.map_err(raise_later)?)
    }

    /// Run `f` on the inbox, taken out of its lock meanwhile (a receive may
    /// wait, and another thread may use the connection).
    fn with_inbox<R>(
        slf: &Bound<'_, Self>,
        f: impl FnOnce(&mut Inbox<Py<PyTuple>>) -> Result<R, PipeError>,
    ) -> PyResult<Option<R>> {
        let me = slf.get();
        let mut inbox = std::mem::take(&mut *me.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        let r = run(
            || match f(&mut inbox) {
                Err(PipeError::Timeout) => Ok(None),
                r => r.map(Some),
            },
            |e| pipe_err(&e),
        );
        if inbox.has_kept() {
            *me.inbox.lock().unwrap_or_else(|e| e.into_inner()) = inbox;
        }
        r
    }
}

#[pymethods]
impl PipeInbox {
    /// The inbox of an end receiving from `channel` (`None`: write-only),
    /// whose socket of the pair is `sock`.
    #[new]
    fn new(channel: Option<Py<PyAny>>, sock: Py<PyAny>) -> PipeInbox {
        PipeInbox { channel, sock, inbox: Mutex::new(Inbox::new()) }
    }

    /// The next message `(tag, payload)`; `None` if nothing came in time;
    /// `EOFError` when the other end is gone and nothing is left.
    #[pyo3(signature = (block=true, timeout=None))]
    fn recv(slf: &Bound<'_, Self>, block: bool, timeout: Option<f64>) -> PyResult<Option<Py<PyTuple>>> {
        let t = crate::blocking::block_timeout(block, timeout)?;
        let py = slf.py();
        let r = Self::with_inbox(slf, |inbox| {
            inbox.recv_with(t, |t| Self::recv_one(slf, t), || slf.get().gone(py)).map(|(_, m)| m)
        })?;
        Ok(r)
    }

    /// Whether a message (or the end of file) is there to receive, waiting
    /// as `recv` does; a message taken to find out is kept for the next
    /// receive.
    #[pyo3(signature = (block=true, timeout=None))]
    fn poll(slf: &Bound<'_, Self>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        let t = crate::blocking::block_timeout(block, timeout)?;
        let py = slf.py();
        let r = Self::with_inbox(slf, |inbox| inbox.poll_with(t, |t| Self::recv_one(slf, t), || slf.get().gone(py)))?;
        Ok(r.unwrap_or(false))
    }

    /// Keep `(tag, payload)` for the next receive.
    fn keep(&self, py: Python<'_>, tag: u8, payload: Py<PyAny>) -> PyResult<()> {
        let m = PyTuple::new(py, [tag.into_pyobject(py)?.into_any().unbind(), payload])?.unbind();
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).keep(queues::wire::split(&[tag]).0, m);
        Ok(())
    }

    /// Drop what is kept.
    fn clear(&self) {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether every copy of the other end is closed (the channel's check
    /// while a receive waits).
    fn peer_closed(&self, py: Python<'_>) -> PyResult<bool> {
        self.closed_peer(py)
    }

    fn __call__(&self, py: Python<'_>) -> PyResult<bool> {
        self.closed_peer(py)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PipeInbox>()?;
    Ok(())
}
