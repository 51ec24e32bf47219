//! The conformance suite every transport plugin must pass, run through the
//! real loading path (the built shared library, loaded by file name).
//!
//! In a plugin crate's `tests/conformance.rs`, with `transport-abi` as a
//! dev-dependency with the `conformance` feature:
//!
//! ```ignore
//! transport_abi::transport_conformance_tests!(transport_abi::conformance::Target {
//!     path: transport_abi::conformance::built_library("dragon_transport_mine"),
//!     config: String::new(),
//! });
//! ```
//!
//! The macro defines one `#[test]` per case plus `conformance_child`, the
//! entry point of the child processes of [`two_processes`] (the test
//! binary re-runs itself with `--ignored --exact`; the entry point is
//! ignored, so a normal run neither runs nor counts it). Invoke it once per
//! test binary. Every case starts a watchdog that aborts a hung binary, and
//! waits only with timeouts. Channels are destroyed by guards even when an
//! assertion fails.
//! [`PLUGIN_ENV`] overrides the library under test, so the suite of one
//! crate runs against any plugin file.

use super::abi::*;
use super::loader::{ChannelAttrs, ErrorKind, Plugin, PluginChannel, PluginError, PollEvents, Transport};
use shm_primitives::handle::{Handle, Kind};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::child::{self, Child};

/// Environment variable: the plugin file to test instead of the default.
pub const PLUGIN_ENV: &str = "DRAGON_CONFORMANCE_PLUGIN";
/// Environment variable: the config string instead of the default.
pub const CONFIG_ENV: &str = "DRAGON_CONFORMANCE_CONFIG";
const REQ_ENV: &str = "DRAGON_CONFORMANCE_REQ";
const RESP_ENV: &str = "DRAGON_CONFORMANCE_RESP";

/// Longest any single wait in the suite (a hang becomes a failure).
pub const WAIT: Duration = Duration::from_secs(30);

/// The plugin under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// The shared library file (empty for a registered table).
    pub path: PathBuf,
    /// The config string passed to `open`.
    pub config: String,
    /// A table linked into the test binary, registered in its transport
    /// registry and tested as the program that links it uses it (then
    /// `path` is empty).
    pub registered: Option<&'static DragonTransportTable>,
}

impl Target {
    /// The plugin in the library file `path`, opened with `config`.
    pub fn file(path: PathBuf, config: &str) -> Target {
        Target { path, config: config.to_owned(), registered: None }
    }

    /// The transport whose table `table` is linked into the test binary,
    /// through the transport registry ([`crate::registry::register`]).
    pub fn registered(table: &'static DragonTransportTable, config: &str) -> Target {
        Target { path: PathBuf::new(), config: config.to_owned(), registered: Some(table) }
    }

    /// `self`, unless [`PLUGIN_ENV`] / [`CONFIG_ENV`] name another (a
    /// plugin file named there replaces a registered table too).
    pub fn overridden(self) -> Target {
        let path = std::env::var_os(PLUGIN_ENV).map(PathBuf::from);
        Target {
            registered: if path.is_some() { None } else { self.registered },
            path: path.unwrap_or(self.path),
            config: std::env::var(CONFIG_ENV).unwrap_or(self.config),
        }
    }

    /// Load the library, or resolve the registered table (panics with the
    /// loader's message).
    pub fn plugin(&self) -> Plugin {
        match self.registered {
            Some(table) => {
                let p = crate::registry::register(table).unwrap_or_else(|e| panic!("{e}"));
                let r = crate::registry::resolve(p.name()).unwrap_or_else(|e| panic!("{e}"));
                assert!(r.is_static(), "the registry resolved {:?} to a file, not the registered table", p.name());
                r
            }
            None => Plugin::load(&self.path).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// Load and open.
    pub fn open(&self) -> Transport {
        self.plugin().open(&self.config).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The file cargo built for the `cdylib` called `lib_name` in the target
/// folder of the running test binary (`target/<profile>/` or its `deps/`).
pub fn built_library(lib_name: &str) -> PathBuf {
    let file = format!("lib{lib_name}.so");
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("test binary folder");
    let places: Vec<PathBuf> = [Some(deps), deps.parent()].into_iter().flatten().map(|d| d.join(&file)).collect();
    places.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!("{file} not built; looked at {places:?} (build the plugin crate, or set {PLUGIN_ENV})")
    })
}

/// Arm the test binary's watchdog (`test_support::watchdog`): every case
/// calls it, so a hung plugin fails the run.
fn watchdog() {
    test_support::watchdog::start();
}

/// A created channel, destroyed when dropped (also when a test fails).
struct Owned(PluginChannel);

impl std::ops::Deref for Owned {
    type Target = PluginChannel;
    fn deref(&self) -> &PluginChannel {
        &self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.destroy();
    }
}

fn create(t: &Transport, capacity: u64) -> Owned {
    Owned(t.create_channel(&ChannelAttrs { capacity, ..ChannelAttrs::default() }).expect("create a channel"))
}

/// Deterministic bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn kind<T: std::fmt::Debug>(r: Result<T, PluginError>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            assert!(!e.message().is_empty(), "an error without a message: {e:?}");
            e.kind()
        }
    }
}

const SIZES: &[usize] = &[0, 1, 7, 100, 4000, 70_000, 1 << 20];

/// The table's name, version and capabilities make sense.
pub fn metadata(t: &Target) {
    watchdog();
    let p = t.plugin();
    assert_eq!(p.version().0, DRAGON_TRANSPORT_ABI_MAJOR);
    assert!(!p.name().is_empty());
    assert!(p.has(DRAGON_CAP_LOCAL) || p.has(DRAGON_CAP_REMOTE), "reaches neither this node nor others");
    assert!(p.has(DRAGON_CAP_CREATE), "the suite creates channels");
    assert_eq!(p.path(), t.path.as_path());
}

/// Messages of 0 B, small, slot-sized and larger than a slot (1 MiB) come
/// back intact, in order, through two attachments.
pub fn sizes_round_trip(t: &Target) {
    watchdog();
    let tr = t.open();
    let ch = create(&tr, 16);
    let peer = tr.attach_channel(&ch.handle().unwrap()).unwrap();
    for (i, &n) in SIZES.iter().enumerate() {
        peer.send(&pattern(n, i as u64), Some(WAIT)).unwrap();
    }
    assert_eq!(ch.len().unwrap(), SIZES.len() as u64);
    for (i, &n) in SIZES.iter().enumerate() {
        let m = ch.recv(Some(WAIT)).unwrap();
        assert_eq!(m.len(), n);
        assert!(m == pattern(n, i as u64), "message {i} ({n} bytes) damaged");
    }
    assert!(ch.is_empty().unwrap());
    // recv_into with an exact buffer, and an empty message into no buffer.
    peer.send(b"", Some(WAIT)).unwrap();
    assert_eq!(ch.recv_into(&mut [], Some(WAIT)).unwrap(), 0);
    let big = pattern(1 << 20, 99);
    peer.send(&big, Some(WAIT)).unwrap();
    let mut buf = vec![0u8; big.len()];
    assert_eq!(ch.recv_into(&mut buf, Some(WAIT)).unwrap(), big.len());
    assert!(buf == big);
}

/// One sender's messages arrive in the order sent, across many ring laps.
pub fn order(t: &Target) {
    watchdog();
    let tr = t.open();
    let ch = Arc::new(create(&tr, 8));
    let tx = tr.attach_channel(&ch.handle().unwrap()).unwrap();
    const N: u32 = 3000;
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            let len = if i % 100 == 7 { 9000 } else { 4 + (i as usize % 13) };
            let mut m = pattern(len, u64::from(i));
            m[..4].copy_from_slice(&i.to_le_bytes());
            tx.send(&m, Some(WAIT)).unwrap();
        }
    });
    for i in 0..N {
        let m = ch.recv(Some(WAIT)).unwrap();
        assert_eq!(u32::from_le_bytes(m[..4].try_into().unwrap()), i, "out of order");
        assert!(m[4..] == pattern(m.len(), u64::from(i))[4..]);
    }
    sender.join().unwrap();
}

/// Deferred sends (`send_deferred`, or `send` for a plugin without it)
/// keep one attachment's order with its ordinary sends, also while the
/// channel is full and its receiver slow; `flush` returns once all are
/// in; a deferred send that fails is reported by a later call, not lost.
pub fn deferred_sends(t: &Target) {
    watchdog();
    let tr = t.open();
    let ch = Arc::new(create(&tr, 4));
    let tx = tr.attach_channel(&ch.handle().unwrap()).unwrap();
    const N: u32 = 600;
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            let len = if i % 50 == 7 { 70_000 } else { 4 + (i as usize % 13) };
            let mut m = pattern(len, u64::from(i));
            m[..4].copy_from_slice(&i.to_le_bytes());
            if i % 10 == 3 {
                tx.send(&m, Some(WAIT)).unwrap();
            } else {
                tx.send_deferred(&m, Some(WAIT)).unwrap();
            }
        }
        tx.flush(Some(WAIT)).unwrap();
        tx
    });
    for i in 0..N {
        if i % 100 == 0 {
            // A slow receiver: the channel fills and the sends wait.
            std::thread::sleep(Duration::from_millis(20));
        }
        let m = ch.recv(Some(WAIT)).unwrap();
        assert_eq!(u32::from_le_bytes(m[..4].try_into().unwrap()), i, "out of order");
        assert!(m[4..] == pattern(m.len(), u64::from(i))[4..]);
    }
    let tx = sender.join().unwrap();
    assert!(ch.is_empty().unwrap());
    // After a flush everything sent is in the channel.
    for i in 0..3u8 {
        tx.send_deferred(&[i], Some(WAIT)).unwrap();
    }
    tx.flush(Some(WAIT)).unwrap();
    assert_eq!(ch.len().unwrap(), 3);
    for i in 0..3u8 {
        assert_eq!(ch.recv(Some(WAIT)).unwrap(), [i]);
    }
    // A destroyed channel: the failure comes back from this call or a later one.
    ch.destroy().unwrap();
    let first = tx.send_deferred(b"lost", Some(WAIT));
    let failed = match &first {
        Err(e) => e.clone(),
        Ok(()) => tx.flush(Some(WAIT)).expect_err("a send to a destroyed channel was reported as done"),
    };
    assert!(
        matches!(failed.kind(), ErrorKind::Destroyed | ErrorKind::Closed | ErrorKind::NotFound),
        "unexpected failure: {failed}"
    );
    // Reported once: the attachment's next flush has nothing more to say.
    if first.is_ok() {
        tx.flush(Some(WAIT)).unwrap();
    }
}

/// Zero timeouts fail at once with WouldBlock, finite ones with TimedOut
/// after at least the timeout, and a wait without limit ends when a peer
/// acts.
pub fn timeouts(t: &Target) {
    watchdog();
    let tr = t.open();
    let ch = create(&tr, 2);
    let d = Duration::from_millis(40);
    assert_eq!(kind(ch.recv(Some(Duration::ZERO))), ErrorKind::WouldBlock);
    let start = Instant::now();
    assert_eq!(kind(ch.recv(Some(d))), ErrorKind::TimedOut);
    assert!(start.elapsed() >= d, "recv gave up early");
    assert_eq!(kind(ch.poll(PollEvents::IN, Some(Duration::ZERO))), ErrorKind::WouldBlock);
    let start = Instant::now();
    assert_eq!(kind(ch.poll(PollEvents::IN, Some(d))), ErrorKind::TimedOut);
    assert!(start.elapsed() >= d, "poll gave up early");
    // Fill it, then sends time out the same way.
    let mut n = 0;
    while ch.send(b"x", Some(Duration::ZERO)).is_ok() {
        n += 1;
        assert!(n <= 1 << 16, "a capacity-2 channel took 65536 messages");
    }
    assert!(n >= 2);
    let start = Instant::now();
    assert_eq!(kind(ch.send(b"y", Some(d))), ErrorKind::TimedOut);
    assert!(start.elapsed() >= d, "send gave up early");
    assert_eq!(kind(ch.poll(PollEvents::OUT, Some(d))), ErrorKind::TimedOut);
    // A receive without limit, woken by a sender in another thread.
    let tr2 = tr.clone();
    let empty = Arc::new(create(&tr2, 2));
    let h = empty.handle().unwrap();
    let waker = std::thread::spawn(move || {
        let tx = tr2.attach_channel(&h).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        tx.send(b"wake", Some(WAIT)).unwrap();
    });
    assert_eq!(empty.poll(PollEvents::IN, Some(WAIT)).unwrap() & PollEvents::IN, PollEvents::IN);
    assert_eq!(empty.recv(None).unwrap(), b"wake");
    waker.join().unwrap();
}

/// A full channel refuses more, reports its length and readiness, and
/// takes messages again once one is received.
pub fn full_channel(t: &Target) {
    watchdog();
    let tr = t.open();
    let ch = create(&tr, 4);
    assert!(ch.poll(PollEvents::OUT, Some(Duration::ZERO)).unwrap().contains(PollEvents::OUT));
    let mut n = 0u64;
    loop {
        match ch.send(&n.to_le_bytes(), Some(Duration::ZERO)) {
            Ok(()) => n += 1,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
                break;
            }
        }
        assert!(n <= 1 << 16, "a capacity-4 channel took 65536 messages");
    }
    assert!(n >= 4, "capacity 4 asked, {n} taken");
    assert_eq!(ch.len().unwrap(), n);
    assert_eq!(kind(ch.poll(PollEvents::OUT, Some(Duration::ZERO))), ErrorKind::WouldBlock);
    let both = ch.poll(PollEvents::IN | PollEvents::OUT, Some(WAIT)).unwrap();
    assert!(both.contains(PollEvents::IN) && !both.contains(PollEvents::OUT));
    assert_eq!(ch.recv(Some(WAIT)).unwrap(), 0u64.to_le_bytes());
    assert!(ch.poll(PollEvents::OUT, Some(WAIT)).unwrap().contains(PollEvents::OUT));
    ch.send(&n.to_le_bytes(), Some(Duration::ZERO)).unwrap();
    for i in 1..=n {
        assert_eq!(ch.recv(Some(WAIT)).unwrap(), i.to_le_bytes());
    }
    assert!(ch.is_empty().unwrap());
}

/// A receive into a buffer that is too small says how much is needed and
/// loses nothing: the same message comes next, before later ones.
pub fn buffer_too_small_loses_nothing(t: &Target) {
    watchdog();
    let tr = t.open();
    let ch = create(&tr, 8);
    let a = pattern(1000, 1);
    let big = pattern(1 << 20, 2);
    ch.send(&a, Some(WAIT)).unwrap();
    ch.send(b"b", Some(WAIT)).unwrap();
    ch.send(&big, Some(WAIT)).unwrap();
    let mut small = [0u8; 10];
    for _ in 0..2 {
        let e = ch.recv_into(&mut small, Some(WAIT)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BufferTooSmall, "{e}");
        assert_eq!(e.needed(), Some(1000));
    }
    assert_eq!(ch.len().unwrap(), 3, "the kept message still counts");
    assert!(ch.poll(PollEvents::IN, Some(Duration::ZERO)).unwrap().contains(PollEvents::IN));
    let e = ch.recv_into(&mut [], Some(WAIT)).unwrap_err();
    assert_eq!(e.needed(), Some(1000));
    let mut buf = vec![0u8; 1000];
    assert_eq!(ch.recv_into(&mut buf, Some(WAIT)).unwrap(), 1000);
    assert!(buf == a);
    assert_eq!(ch.recv_into(&mut small, Some(WAIT)).unwrap(), 1);
    assert_eq!(&small[..1], b"b");
    let e = ch.recv_into(&mut small, Some(WAIT)).unwrap_err();
    assert_eq!(e.needed(), Some(1 << 20));
    // The kept message also comes first through the zero-copy path.
    let got =
        if tr_has_zero_copy(t) { ch.recv_msg(Some(WAIT)).unwrap().to_vec() } else { ch.recv(Some(WAIT)).unwrap() };
    assert!(got == big);
    assert!(ch.is_empty().unwrap());
}

fn tr_has_zero_copy(t: &Target) -> bool {
    t.plugin().has(DRAGON_CAP_ZERO_COPY_RECV)
}

/// Zero-copy receive (plugins with the capability): the bytes are right
/// and stay valid after the channel attachment is closed.
pub fn zero_copy(t: &Target) {
    watchdog();
    let p = t.plugin();
    let tr = p.open(&t.config).unwrap();
    let ch = create(&tr, 4);
    if !p.has(DRAGON_CAP_ZERO_COPY_RECV) {
        ch.send(b"x", Some(WAIT)).unwrap();
        assert_eq!(kind(ch.recv_msg(Some(WAIT))), ErrorKind::Unsupported);
        return;
    }
    let peer = tr.attach_channel(&ch.handle().unwrap()).unwrap();
    let big = pattern(3 << 20, 5);
    peer.send(&big, Some(WAIT)).unwrap();
    peer.send(b"", Some(WAIT)).unwrap();
    let m = ch.recv_msg(Some(WAIT)).unwrap();
    let e = ch.recv_msg(Some(WAIT)).unwrap();
    assert_eq!(e.len(), 0);
    drop(peer);
    drop(ch);
    drop(tr);
    drop(p);
    assert!(*m == big[..], "zero-copy bytes damaged after closing the channel");
}

/// Truncated, damaged, forged and foreign handles are rejected with an
/// error, never attached and never a crash.
pub fn bad_handles(t: &Target) {
    watchdog();
    let p = t.plugin();
    let tr = p.open(&t.config).unwrap();
    let ch = create(&tr, 4);
    let good = ch.handle().unwrap();
    for n in 0..good.len() {
        assert_eq!(kind(tr.attach_channel(&good[..n])), ErrorKind::BadHandle, "{n}-byte prefix");
    }
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = good.clone();
            b[i] ^= bit;
            assert_eq!(kind(tr.attach_channel(&b)), ErrorKind::BadHandle, "byte {i} flipped");
        }
    }
    let mut long = good.clone();
    long.push(0);
    assert_eq!(kind(tr.attach_channel(&long)), ErrorKind::BadHandle);
    assert_eq!(kind(tr.attach_channel(b"not a handle at all")), ErrorKind::BadHandle);
    assert_eq!(kind(tr.attach_channel(&pattern(300, 3))), ErrorKind::BadHandle);
    // Well-formed handles (valid checksum) that lie.
    let h = Handle::from_bytes(&good).expect("plugin handles use the handle.rs format");
    let forged = |f: &dyn Fn(&mut Handle)| {
        let mut x = h.clone();
        f(&mut x);
        tr.attach_channel(&x.to_bytes())
    };
    assert_eq!(kind(forged(&|x| x.kind = Kind::Lock)), ErrorKind::BadHandle);
    let k = kind(forged(&|x| x.id ^= 1));
    assert!(matches!(k, ErrorKind::Stale | ErrorKind::BadHandle | ErrorKind::NotFound), "{k:?}");
    let k = kind(forged(&|x| x.generation += 1));
    assert!(matches!(k, ErrorKind::Stale | ErrorKind::BadHandle | ErrorKind::NotFound), "{k:?}");
    let k = kind(forged(&|x| x.segment.push_str("-no-such-thing")));
    assert_eq!(k, ErrorKind::NotFound);
    let k = kind(forged(&|x| x.offset += 64));
    assert!(matches!(k, ErrorKind::Stale | ErrorKind::BadHandle | ErrorKind::NotFound), "{k:?}");
    if !p.has(DRAGON_CAP_REMOTE) {
        let k = kind(forged(&|x| {
            x.node = 7;
            x.address = "10.0.0.7:7000".into();
        }));
        assert_eq!(k, ErrorKind::Remote);
    }
    // The real one still works after all that.
    let peer = tr.attach_channel(&good).unwrap();
    peer.send(b"ok", Some(WAIT)).unwrap();
    assert_eq!(ch.recv(Some(WAIT)).unwrap(), b"ok");
}

/// Destroy reaches every attachment; channels and messages keep their
/// transport and library alive after the caller drops those.
pub fn destroy_and_lifetimes(t: &Target) {
    watchdog();
    let p = t.plugin();
    let tr = p.open(&t.config).unwrap();
    let ch = tr.create_channel(&ChannelAttrs { capacity: 4, ..ChannelAttrs::default() }).unwrap();
    let peer = tr.attach_channel(&ch.handle().unwrap()).unwrap();
    let handle = ch.handle().unwrap();
    drop(tr);
    drop(p);
    // The library is still loaded and the transport open: the channel works.
    peer.send(b"still here", Some(WAIT)).unwrap();
    assert_eq!(ch.recv(Some(WAIT)).unwrap(), b"still here");
    // A second transport instance of the same plugin reaches the channel.
    let tr2 = t.open();
    let third = tr2.attach_channel(&handle).unwrap();
    third.send(b"3", Some(WAIT)).unwrap();
    assert_eq!(ch.recv(Some(WAIT)).unwrap(), b"3");
    ch.destroy().unwrap();
    assert_eq!(kind(peer.send(b"x", Some(WAIT))), ErrorKind::Destroyed);
    assert_eq!(kind(third.recv(Some(WAIT))), ErrorKind::Destroyed);
    assert!(ch.poll(PollEvents::IN, Some(WAIT)).unwrap().contains(PollEvents::HUP));
    let k = kind(tr2.attach_channel(&handle));
    assert!(matches!(k, ErrorKind::NotFound | ErrorKind::Destroyed | ErrorKind::Stale), "{k:?}");
}

/// Many threads send and receive on one channel at once, through shared
/// and separate attachments: every message arrives exactly once, each
/// sender's in order.
pub fn threads(t: &Target) {
    watchdog();
    let tr = t.open();
    let ch = Arc::new(create(&tr, 16));
    let handle = ch.handle().unwrap();
    const SENDERS: u32 = 4;
    const RECEIVERS: usize = 3;
    const EACH: u32 = 1500;
    let mut joins = Vec::new();
    for s in 0..SENDERS {
        let (tr, handle) = (tr.clone(), handle.clone());
        joins.push(std::thread::spawn(move || {
            let tx = tr.attach_channel(&handle).unwrap();
            for i in 0..EACH {
                let len = if i % 50 == 0 { 5000 } else { 8 };
                let mut m = vec![0u8; len];
                m[..4].copy_from_slice(&s.to_le_bytes());
                m[4..8].copy_from_slice(&i.to_le_bytes());
                tx.send(&m, Some(WAIT)).unwrap();
            }
            Vec::new()
        }));
    }
    let per_receiver = (SENDERS * EACH) as usize / RECEIVERS;
    for r in 0..RECEIVERS {
        let ch = Arc::clone(&ch);
        let count = if r == RECEIVERS - 1 { (SENDERS * EACH) as usize - per_receiver * r } else { per_receiver };
        joins.push(std::thread::spawn(move || {
            let mut got = Vec::with_capacity(count);
            let mut last: HashMap<u32, u32> = HashMap::new();
            let mut buf = [0u8; 8];
            for _ in 0..count {
                let m = match ch.recv_into(&mut buf, Some(WAIT)) {
                    Ok(_) => buf.to_vec(),
                    Err(e) if e.kind() == ErrorKind::BufferTooSmall => ch.recv(Some(WAIT)).unwrap(),
                    Err(e) => panic!("{e}"),
                };
                let s = u32::from_le_bytes(m[..4].try_into().unwrap());
                let i = u32::from_le_bytes(m[4..8].try_into().unwrap());
                if let Some(&prev) = last.get(&s) {
                    assert!(i > prev, "sender {s}: {i} after {prev}");
                }
                last.insert(s, i);
                got.push((s, i));
            }
            got
        }));
    }
    let mut all: Vec<(u32, u32)> = joins.into_iter().flat_map(|j| j.join().unwrap()).collect();
    all.sort_unstable();
    let want: Vec<(u32, u32)> = (0..SENDERS).flat_map(|s| (0..EACH).map(move |i| (s, i))).collect();
    assert!(all == want, "messages lost or duplicated");
    assert!(ch.is_empty().unwrap());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

const STOP: &[u8] = b"\xffstop";

/// The name `--exact` needs for the `conformance_child` test defined by the
/// macro invoked in the module `module_path`.
pub fn child_test_name(module_path: &str) -> String {
    match module_path.split_once("::") {
        Some((_, rest)) => format!("{rest}::conformance_child"),
        None => "conformance_child".to_owned(),
    }
}

/// Two processes (the test binary re-executed) exchange messages of every
/// size through the plugin: the child attaches by handle bytes and echoes
/// each message reversed.
pub fn two_processes(t: &Target, child_test: &str) {
    watchdog();
    let tr = t.open();
    let req = create(&tr, 8);
    let resp = create(&tr, 8);
    let mut cmd = child::command(child_test, "echo");
    if t.registered.is_none() {
        // A registered table is the child's own (the same test binary).
        cmd.env(PLUGIN_ENV, &t.path);
    }
    let mut child = Child::start(
        cmd.env(CONFIG_ENV, &t.config)
            .env(REQ_ENV, hex(&req.handle().unwrap()))
            .env(RESP_ENV, hex(&resp.handle().unwrap())),
    );
    let mut sent = Vec::new();
    for (i, &n) in SIZES.iter().chain(&[3 << 20]).enumerate() {
        sent.push(pattern(n, 100 + i as u64));
    }
    for i in 0..300u32 {
        sent.push(i.to_le_bytes().to_vec());
    }
    // Send and receive in step with a window, so neither side blocks forever.
    let mut next = 0;
    for m in &sent {
        req.send(m, Some(WAIT)).unwrap();
        if req.len().unwrap() >= 4 || m.len() > 1 << 16 {
            let mut back = resp.recv(Some(WAIT)).unwrap();
            back.reverse();
            assert!(back == sent[next], "echo {next} wrong");
            next += 1;
        }
    }
    req.send(STOP, Some(WAIT)).unwrap();
    while next < sent.len() {
        let mut back = resp.recv(Some(WAIT)).unwrap();
        back.reverse();
        assert!(back == sent[next], "echo {next} wrong");
        next += 1;
    }
    let status = child.wait_for(WAIT);
    assert!(status.success(), "child failed: {status}");
    // The child's attachments are gone; ours still work.
    resp.send(b"after", Some(WAIT)).unwrap();
    assert_eq!(resp.recv(Some(WAIT)).unwrap(), b"after");
}

/// In a child started by [`two_processes`], play its role and exit; in a
/// normal test run, return at once.
pub fn child_entry(t: &Target) {
    let Some(role) = child::role() else { return };
    assert_eq!(role, "echo");
    let var = child::arg;
    let tr = t.open();
    let req = tr.attach_channel(&unhex(&var(REQ_ENV))).unwrap();
    let resp = tr.attach_channel(&unhex(&var(RESP_ENV))).unwrap();
    loop {
        let mut m = req.recv(Some(WAIT)).unwrap();
        if m == STOP {
            break;
        }
        m.reverse();
        resp.send(&m, Some(WAIT)).unwrap();
    }
    drop((req, resp, tr));
    std::process::exit(0);
}

/// Define the conformance tests for `$target` (an expression of type
/// [`Target`]; [`PLUGIN_ENV`]/[`CONFIG_ENV`] override it at run time).
#[macro_export]
macro_rules! transport_conformance_tests {
    ($target:expr) => {
        fn conformance_target() -> $crate::conformance::Target {
            $crate::conformance::Target::overridden($target)
        }
        #[test]
        #[ignore = "entry point of child processes, run by conformance_two_processes"]
        fn conformance_child() {
            $crate::conformance::child_entry(&conformance_target());
        }
        #[test]
        fn conformance_metadata() {
            $crate::conformance::metadata(&conformance_target());
        }
        #[test]
        fn conformance_sizes_round_trip() {
            $crate::conformance::sizes_round_trip(&conformance_target());
        }
        #[test]
        fn conformance_order() {
            $crate::conformance::order(&conformance_target());
        }
        #[test]
        fn conformance_deferred_sends() {
            $crate::conformance::deferred_sends(&conformance_target());
        }
        #[test]
        fn conformance_timeouts() {
            $crate::conformance::timeouts(&conformance_target());
        }
        #[test]
        fn conformance_full_channel() {
            $crate::conformance::full_channel(&conformance_target());
        }
        #[test]
        fn conformance_buffer_too_small_loses_nothing() {
            $crate::conformance::buffer_too_small_loses_nothing(&conformance_target());
        }
        #[test]
        fn conformance_zero_copy() {
            $crate::conformance::zero_copy(&conformance_target());
        }
        #[test]
        fn conformance_bad_handles() {
            $crate::conformance::bad_handles(&conformance_target());
        }
        #[test]
        fn conformance_destroy_and_lifetimes() {
            $crate::conformance::destroy_and_lifetimes(&conformance_target());
        }
        #[test]
        fn conformance_threads() {
            $crate::conformance::threads(&conformance_target());
        }
        #[test]
        fn conformance_two_processes() {
            let child = $crate::conformance::child_test_name(module_path!());
            $crate::conformance::two_processes(&conformance_target(), &child);
        }
    };
}
