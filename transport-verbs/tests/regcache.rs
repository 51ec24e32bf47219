//! The registration cache on a simulated port: hits, misses, eviction of
//! the least recently used idle buffers within both bounds, buffers in use
//! never evicted, everything deregistered and freed at the end.

mod common;

use std::sync::Arc;
use transport_verbs::regcache::{class_of, CacheLimits, RegCache};
use transport_verbs::sim::SimStats;
use transport_verbs::verbs::Port;

const K: usize = 1 << 10;

fn cache(limits: CacheLimits) -> (RegCache, Arc<transport_verbs::sim::SimPort>) {
    test_support::watchdog::start();
    let port = common::fabric().open_sim().unwrap();
    (RegCache::new(port.clone() as Arc<dyn Port>, limits), port)
}

#[test]
fn size_classes() {
    assert_eq!(class_of(1, 64 * K), 64 * K);
    assert_eq!(class_of(64 * K + 1, 64 * K), 128 * K);
    assert_eq!(class_of(3 << 20, 64 * K), 4 << 20);
}

#[test]
fn idle_buffers_are_reused_then_evicted_least_recently_used_first() {
    let (c, port) = cache(CacheLimits { min_size: 4 * K, max_idle: 2, max_idle_bytes: 1 << 30 });
    // Three classes, all returned: the least recently returned goes.
    let a = c.get(4 * K).unwrap();
    let b = c.get(8 * K).unwrap();
    let d = c.get(16 * K).unwrap();
    let (a_addr, d_addr) = (a.addr(), d.addr());
    assert_eq!(port.stats().mrs, 3);
    drop(a);
    drop(b);
    assert_eq!(c.stats().evictions, 0);
    drop(d);
    let s = c.stats();
    assert_eq!((s.idle, s.evictions, s.misses, s.hits), (2, 1, 3, 0), "{s:?}");
    assert_eq!(port.stats().mrs, 2, "the evicted buffer is deregistered");
    assert_eq!(port.stats().buffers, 2, "and freed");
    // The 16 KiB buffer is still there: a hit, the very same memory.
    let d = c.get(10 * K).unwrap();
    assert_eq!(d.addr(), d_addr);
    assert_eq!(c.stats().hits, 1);
    // The 4 KiB one was evicted: a miss (new memory, registered again).
    let a = c.get(100).unwrap();
    assert_eq!(c.stats().misses, 4);
    let _ = a_addr;
    drop((a, d));
}

#[test]
fn the_byte_bound_evicts_too_and_buffers_in_use_stay() {
    let (c, port) = cache(CacheLimits { min_size: 64 * K, max_idle: 100, max_idle_bytes: 256 * K });
    let held: Vec<_> = (0..4).map(|_| c.get(128 * K).unwrap()).collect();
    let more: Vec<_> = (0..4).map(|_| c.get(64 * K).unwrap()).collect();
    assert_eq!(c.stats().in_use, 8);
    // In use: nothing is evicted, whatever the bounds.
    assert_eq!(c.stats().evictions, 0);
    drop(held);
    let s = c.stats();
    assert_eq!(s.idle_bytes, 256 * K, "{s:?}");
    assert_eq!(s.evictions, 2);
    drop(more);
    let s = c.stats();
    assert!(s.idle_bytes <= 256 * K && s.in_use == 0, "{s:?}");
    assert_eq!(port.stats().mrs, s.idle);
    drop(c);
    assert_eq!(port.stats(), SimStats::default(), "dropping the cache deregisters and frees every buffer");
}

#[test]
fn a_lease_outlives_its_cache() {
    let (c, port) = cache(CacheLimits::default());
    let mut l = c.get(1000).unwrap();
    l.fill(&[b"still ", b"here"]);
    drop(c);
    assert_eq!(port.stats().mrs, 1);
    // SAFETY: nothing transfers into this lease.
    assert_eq!(unsafe { l.bytes(10) }, b"still here");
    drop(l);
    assert_eq!(port.stats(), SimStats::default());
}
