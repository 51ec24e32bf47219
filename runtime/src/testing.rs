//! Node services for several "nodes" inside one process, on loopback: for
//! tests and benchmarks of what crosses nodes without a cluster (the
//! multi-node tests with real nodes use the namespace test bed, `testbed/`).
//! Every service is the real one ([`crate::service::run`]); only its
//! standard input and output are in-memory pipes.

use crate::bootstrap::Bootstrap;
use crate::proto::out;
use crate::service::{self, Options, Out};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;
use transport_tcp::Secret;

/// How long starting a cluster may take before it is a failure.
const WATCHDOG: Duration = Duration::from_secs(60);

/// One record a service wrote for its launcher: (kind, payload).
pub type Record = (u8, Vec<u8>);

struct Records {
    buf: Vec<u8>,
    tx: Sender<Record>,
}

impl Write for Records {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        while self.buf.len() >= 5 {
            let n = u32::from_le_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
            if self.buf.len() < 5 + n {
                break;
            }
            let rec: Vec<u8> = self.buf.drain(..5 + n).collect();
            let _ = self.tx.send((rec[0], rec[5..].to_vec()));
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One in-process node.
#[derive(Debug)]
pub struct Node {
    stdin: Option<UnixStream>,
    records: Receiver<Record>,
    /// Records `wait_for` went past, for `records`.
    skipped: std::sync::Mutex<Vec<Record>>,
    thread: Option<JoinHandle<i32>>,
    /// Where its service listens for other nodes (`host:port`).
    pub address: String,
}

/// Services for `n` nodes of one run, joined.
#[derive(Debug)]
pub struct LocalCluster {
    /// The run's id.
    pub run: String,
    /// The nodes, by index.
    pub nodes: Vec<Node>,
    /// The node table (JSON) the primary sent.
    pub table: String,
}

fn start_node(boot: Bootstrap, opts: Options) -> io::Result<Node> {
    let (mut w, r) = UnixStream::pair()?;
    let (tx, rx) = unbounded();
    w.write_all(boot.encode().as_bytes())?;
    let out = Out::new(Box::new(Records { buf: Vec::new(), tx }));
    let opts = Options { listen: "127.0.0.1:0".parse().expect("an address"), ..opts };
    let thread = std::thread::Builder::new().name(format!("dragon-node-{}", boot.index)).spawn(move || {
        let mut input = io::BufReader::new(r);
        // The bootstrap was written above; read it as main() would.
        let boot = Bootstrap::read(&mut input).expect("our own bootstrap");
        service::run(boot, Box::new(input), out, opts)
    })?;
    let mut node =
        Node { stdin: Some(w), records: rx, skipped: Default::default(), thread: Some(thread), address: String::new() };
    node.address = String::from_utf8_lossy(&node.wait_for(out::LISTENING)?).into_owned();
    Ok(node)
}

fn node_with_primary(node: &mut Node, primary: &str) -> io::Result<()> {
    node.stdin.as_mut().expect("open").write_all(format!("primary={primary}\n").as_bytes())
}

impl Node {
    /// Wait for the next record of `kind` (others are kept for
    /// [`Node::records`]); an ERROR record or the watchdog is an error.
    pub fn wait_for(&self, kind: u8) -> io::Result<Vec<u8>> {
        loop {
            match self.records.recv_timeout(WATCHDOG) {
                Ok((k, p)) if k == kind => return Ok(p),
                Ok((out::ERROR, p)) => return Err(io::Error::other(String::from_utf8_lossy(&p).into_owned())),
                Ok(r) => self.skipped.lock().unwrap_or_else(|e| e.into_inner()).push(r),
                Err(RecvTimeoutError::Timeout) => return Err(io::Error::other("watchdog: no record in 60 s")),
                Err(RecvTimeoutError::Disconnected) => return Err(io::Error::other("the service ended")),
            }
        }
    }

    /// Records written since the last look.
    pub fn records(&self) -> Vec<Record> {
        let mut v = std::mem::take(&mut *self.skipped.lock().unwrap_or_else(|e| e.into_inner()));
        v.extend(self.records.try_iter());
        v
    }

    /// The records channel (to wait for one).
    pub fn record_channel(&self) -> &Receiver<Record> {
        &self.records
    }

    /// Close its standard input (as a launcher that goes away) and wait for
    /// the service to end: its exit code.
    pub fn stop(&mut self) -> i32 {
        self.stdin = None;
        self.thread.take().map_or(-1, |t| t.join().unwrap_or(-1))
    }
}

impl LocalCluster {
    /// Start `n` services of a new run on loopback, and wait until every
    /// node has the table. The run is its own (owned by this process), so
    /// that its cleanup never touches this process's other files; the
    /// channels the services create are named after this process's run.
    pub fn start(n: usize, peer_timeout: Duration) -> io::Result<LocalCluster> {
        LocalCluster::start_with(n, peer_timeout, |_| Options::default())
    }

    /// The same, node `i` run with `opts(i)` (its listening address
    /// aside: loopback).
    pub fn start_with(n: usize, peer_timeout: Duration, opts: impl Fn(usize) -> Options) -> io::Result<LocalCluster> {
        LocalCluster::start_inner(n, peer_timeout, &[], opts)
    }

    /// As [`LocalCluster::start`], node `i` told by its bootstrap that the
    /// run may use `cpus[i]` CPUs there (as a Slurm launch does); nodes
    /// past the end of `cpus` are not told.
    pub fn start_with_cpus(n: usize, peer_timeout: Duration, cpus: &[u32]) -> io::Result<LocalCluster> {
        LocalCluster::start_inner(n, peer_timeout, cpus, |_| Options::default())
    }

    fn start_inner(
        n: usize,
        peer_timeout: Duration,
        cpus: &[u32],
        opts: impl Fn(usize) -> Options,
    ) -> io::Result<LocalCluster> {
        let run = transport_shm::RunId::new_owned_by_me().as_str().to_owned();
        let secret = Secret::random();
        let hosts: Vec<String> = (0..n).map(|_| "127.0.0.1".to_owned()).collect();
        let boot = |i: usize| Bootstrap {
            run: run.clone(),
            secret: secret.clone(),
            index: i as u32,
            hosts: hosts.clone(),
            peer_timeout,
            join_timeout: WATCHDOG,
            cpus: cpus.get(i).copied(),
        };
        // On failure, the nodes started so far are stopped (and clean up).
        let mut c = LocalCluster { run: run.clone(), nodes: Vec::new(), table: String::new() };
        c.nodes.push(start_node(boot(0), opts(0))?);
        let primary = c.nodes[0].address.clone();
        for i in 1..n {
            let mut node = start_node(boot(i), opts(i))?;
            c.nodes.push(node_with_primary(&mut node, &primary).map(|()| node)?);
        }
        // Secondaries first: one that cannot join says so at once, where
        // the primary would wait for it until its join timeout.
        for i in (0..n).rev() {
            c.table = String::from_utf8_lossy(&c.nodes[i].wait_for(out::READY)?).into_owned();
        }
        Ok(c)
    }

    /// The abstract socket name of node `i`'s service.
    pub fn service(&self, i: usize) -> String {
        service::service_name(&self.run, i as u32)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}
