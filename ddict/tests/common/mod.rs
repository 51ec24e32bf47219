//! Managers in threads of the test process, for tests of the client.
#![allow(dead_code)]

pub mod files;
pub mod fuzz;

use ddict::manager::{self, Config};
use ddict::{Descriptor, ShardRef, FLAG_DURABLE};
use shm_primitives::ProcessId;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use transport_shm::segment::{nonce32, RunId};

/// A DDict served by manager threads; destroyed (and joined) on drop.
pub struct Served {
    pub desc: Descriptor,
    threads: Vec<JoinHandle<Result<(), ddict::Error>>>,
}

pub fn serve(name: &str, shards: usize, len: usize, persist: Option<PathBuf>, restore: bool) -> Served {
    let run = RunId::current();
    let mut refs = Vec::new();
    let mut threads = Vec::new();
    for i in 0..shards {
        let segment = format!("{}dd-{name}-{i}-{:08x}", run.prefix(), nonce32());
        let id = (u64::from(nonce32()) << 32) | u64::from(nonce32());
        refs.push(ShardRef { segment: segment.clone(), id, node: 0 });
        let cfg = Config {
            segment,
            id,
            len,
            index: i,
            name: name.to_owned(),
            owner: ProcessId::current(),
            persist: persist.clone(),
            restore,
            compact_after: 4096,
            working_set: 2,
        };
        let (tx, rx) = mpsc::channel();
        threads.push(std::thread::spawn(move || manager::serve(&cfg, || tx.send(()).unwrap())));
        rx.recv_timeout(Duration::from_secs(30)).expect("manager ready");
    }
    let flags = if persist.is_some() { FLAG_DURABLE } else { 0 };
    Served { desc: Descriptor { name: name.to_owned(), flags, shards: refs }, threads }
}

impl Served {
    pub fn stop(mut self) {
        self.stop_inner();
    }
    fn stop_inner(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        if let Ok(mut c) = ddict::Client::attach(&self.desc) {
            c.destroy();
        }
        for t in self.threads.drain(..) {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Arm the binary's watchdog, which removes the run's segments before it
/// aborts a hung binary.
pub fn watchdog() {
    test_support::watchdog::start_with(transport_shm::segment::cleanup_own_run);
}
