//! A Rust process and a Python process (the `dragon` package) share one
//! queue: what each puts, the other gets, with the tags of the Python
//! package's message format.
//!
//! Needs a Python that can `import dragon`: `DRAGON_TEST_PYTHON`, else the
//! workspace's `.venv` (which `make test` builds before the Rust tests).
//! Without one the test says so and does nothing.

mod common;

use common::{assert_gone, deadline};
use queues::{Queue, QueueChannel, Tag};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use test_support::child::Child;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("DRAGON_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(".venv").join("bin").join("python")
    });
    let ok = Command::new(&p)
        .args(["-c", "import dragon.queues"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(p)
}

/// The Python side: attach to the queues' channels as `dragon.queues.Queue`s
/// (as unpickling one does), get what Rust put on the first, put a pickle
/// and bytes on the second.
const SCRIPT: &str = r#"
import sys
from dragon import queues

def attach(hex_handle):
    q = queues.Queue.__new__(queues.Queue)
    q.__setstate__((bytes.fromhex(hex_handle), 0, "unbounded", None, False))
    return q

inbox, outbox = attach(sys.argv[1]), attach(sys.argv[2])
got = inbox.get(timeout=60)
assert got == b"from rust", got
outbox.put({"answer": 42})
outbox.put(b"from python")
outbox.close()
outbox.join_thread()
print("python ok")
"#;

fn hex(q: &Queue) -> String {
    q.channel().handle().to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_python_process_and_a_rust_process_share_a_queue() {
    let _g = deadline("python interop");
    let Some(py) = python() else {
        eprintln!("no Python with the dragon package (set DRAGON_TEST_PYTHON): nothing to check");
        return;
    };
    let (to_python, q) = (Queue::new(0).unwrap(), Queue::new(0).unwrap());
    to_python.put(b"from rust", None).unwrap();
    let mut cmd = Command::new(py);
    cmd.args(["-c", SCRIPT, &hex(&to_python), &hex(&q)]).stdout(Stdio::piped());
    let mut child = Child::start(&mut cmd);
    let a = q.get(Some(Duration::from_secs(60))).expect("the pickle");
    assert_eq!(a.tag(), Tag::Pickle);
    assert_eq!(a.payload().first(), Some(&0x80));
    let b = q.get(Some(Duration::from_secs(60))).expect("the bytes");
    assert_eq!((b.tag(), b.payload()), (Tag::Bytes, &b"from python"[..]));
    let mut out = String::new();
    child.stdout().expect("piped").read_to_string(&mut out).unwrap();
    child.expect_success();
    assert!(out.contains("python ok"), "{out}");
    assert!(to_python.empty(), "Python took it");
    for q in [to_python, q] {
        let h = q.handle().to_string();
        drop(q);
        assert_gone(&h);
    }
}
