//! Starting processes on this node for the run, through the run's
//! template process (`dragon._template`: a pre-imported Python fork
//! server), speaking the template's own protocol.
//!
//! The node service starts its node's template on the first request, with
//! the requester's preparation data (so the template imports the same main
//! module as the requester's own template did), then each start is:
//!
//! 1. a `SOCK_SEQPACKET` connection to the template, one datagram
//!    `DRAGON-START/2` carrying descriptors: one end of an *exit socket*,
//!    the read end of a *data pipe*, then the child's stdin (`/dev/null`),
//!    stdout and stderr (pipes this service reads and forwards);
//! 2. the start data (two pickles made by the requester: the head naming
//!    descriptors 1, 2, 3 as stdio, then the process object) written into
//!    the data pipe;
//! 3. the template's reply: `P` + pid (8 bytes) with a pidfd, or `E` + why;
//! 4. later, 8 bytes on the exit socket: the exit code (negative signal
//!    number if killed). Until the connection is closed the exited child
//!    stays a zombie, so its pid can be signalled without reaching a
//!    process that reused it.

use crate::sys;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The first datagram of a start request.
pub const REQUEST: &[u8] = b"DRAGON-START/2";

/// A template this service started.
#[derive(Debug)]
pub struct Template {
    pid: u32,
    name: String,
    /// The template watches this pipe: closing it is its signal to clean
    /// up its processes and exit.
    alive_w: Option<OwnedFd>,
}

/// How to start a template.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    /// The Python interpreter.
    pub python: PathBuf,
    /// Interpreter flags (`-O`, `-X ...`, as the requester runs with).
    pub flags: Vec<String>,
    /// The preparation data (a pickle of `dragon.runtime.template_prep()`).
    pub prep: Vec<u8>,
    /// Abstract socket name it listens on.
    pub name: String,
    /// Its environment.
    pub env: Vec<(String, String)>,
}

impl Template {
    /// Start a template as `spec` says; requests may be sent at once (they
    /// queue on its socket while it imports).
    pub fn start(spec: &TemplateSpec) -> io::Result<Template> {
        let listener = sys::seqpacket_listen(&spec.name)?;
        let (alive_r, alive_w) = sys::pipe()?;
        let mut argv = vec![spec.python.to_string_lossy().into_owned()];
        argv.extend(spec.flags.iter().cloned());
        argv.push("-c".into());
        argv.push("from dragon._template import main; main()".into());
        argv.push(listener.as_raw_fd().to_string());
        argv.push(alive_r.as_raw_fd().to_string());
        argv.push(std::process::id().to_string());
        let pid = sys::spawn_session(&argv, &spec.env, &[listener.as_raw_fd(), alive_r.as_raw_fd()])?;
        drop((listener, alive_r));
        let mut w = std::fs::File::from(alive_w);
        // The template reads its preparation data first (a pipe holds 64 KiB;
        // it reads as soon as it starts).
        let res = w.write_all(&(spec.prep.len() as u64).to_le_bytes()).and_then(|()| w.write_all(&spec.prep));
        let t = Template { pid, name: spec.name.clone(), alive_w: Some(OwnedFd::from(w)) };
        res.map(|()| t)
    }

    /// The template's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The abstract socket name it listens on.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tell the template to kill its processes and exit; wait for it at
    /// most `wait`, then kill it. Returns its exit code if it was reaped.
    pub fn stop(&mut self, wait: Duration) -> Option<i32> {
        self.alive_w = None;
        let deadline = Instant::now() + wait;
        loop {
            if let Some(code) = sys::reap(self.pid) {
                return Some(code);
            }
            if Instant::now() >= deadline {
                let _ = sys::kill(self.pid as i32, libc::SIGKILL);
                // Its session: every process it started.
                let _ = sys::kill(-(self.pid as i32), libc::SIGKILL);
                std::thread::sleep(Duration::from_millis(10));
                return sys::reap(self.pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        if self.alive_w.is_some() {
            self.stop(Duration::from_secs(5));
        }
    }
}

/// A process the template started.
#[derive(Debug)]
pub struct Started {
    /// Its pid (on this node).
    pub pid: i32,
    /// The connection to the template: while it is open the child's pid
    /// stays its own (a zombie after the exit); closing it lets go.
    pub conn: OwnedFd,
    /// Readable when the child has exited: 8 bytes of exit code.
    pub exit: OwnedFd,
    /// The child's standard output (read end).
    pub stdout: OwnedFd,
    /// The child's standard error (read end).
    pub stderr: OwnedFd,
}

/// Why a start failed.
#[derive(Debug)]
pub enum StartError {
    /// The template could not be reached or went away.
    Template(io::Error),
    /// The template could not start the process (its message).
    Refused(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Template(e) => write!(f, "the node's template process cannot be reached: {e}"),
            StartError::Refused(m) => write!(f, "the node's template could not start the process: {m}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Start one process through the template listening on `template`, with
/// start data `data` (its head names descriptors 1, 2, 3 as stdin, stdout,
/// stderr, has no resource tracker, and numbers `extra` from 4).
pub fn start(template: &str, data: &[u8], extra: &[std::os::fd::RawFd]) -> Result<Started, StartError> {
    let t = StartError::Template;
    let conn = sys::seqpacket_connect(template).map_err(t)?;
    let (exit, exit_w) = sys::socketpair().map_err(t)?;
    let (data_r, data_w) = sys::pipe().map_err(t)?;
    let (out_r, out_w) = sys::pipe().map_err(t)?;
    let (err_r, err_w) = sys::pipe().map_err(t)?;
    let null = std::fs::File::open("/dev/null").map_err(t)?;
    let mut fds = vec![exit_w.as_raw_fd(), data_r.as_raw_fd(), null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
    fds.extend_from_slice(extra);
    sys::send_with_fds(&conn, REQUEST, &fds).map_err(t)?;
    drop((exit_w, data_r, null, out_w, err_w));
    let mut w = std::fs::File::from(data_w);
    // A broken pipe means the fork failed: the reply says why.
    let _ = w.write_all(data);
    drop(w);
    let mut buf = [0u8; 4096];
    let (n, _pidfds) = sys::recv_with_fds(conn.as_raw_fd(), &mut buf).map_err(t)?;
    match (buf.first(), n) {
        (Some(b'P'), 9) => {
            let pid = i64::from_le_bytes(buf[1..9].try_into().expect("8 bytes")) as i32;
            Ok(Started { pid, conn, exit, stdout: out_r, stderr: err_r })
        }
        (Some(b'E'), _) => Err(StartError::Refused(String::from_utf8_lossy(&buf[1..n]).into_owned())),
        _ => Err(StartError::Template(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the template went away while starting the process",
        ))),
    }
}
