//! Unit tests of the shard, with crash injection: an operation is stopped
//! dead at every step it can stop at (as `SIGKILL` would stop it), its
//! locks and slot are handed to a dead pid, and the shard must then be
//! consistent, leak nothing, and hold either the old or the new value.

use super::*;
use shm_primitives::region::HeapRegion;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Fails the test (instead of hanging it) if `f` takes over 60 s.
fn watchdog<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    test_support::watchdog::within(Duration::from_secs(60), f)
}

fn shard(len: usize) -> Shard<Arc<HeapRegion>> {
    // SAFETY: a fresh zeroed region used only by this shard.
    unsafe { Shard::init(Arc::new(HeapRegion::new(len)), 42) }.unwrap()
}

fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

const PID_MASK: u32 = (1 << 30) - 1;

/// Hand every lock and slot of the calling process to `ghost` (a dead pid).
fn simulate_death<R: Region>(sh: &Shard<R>, ghost: u32) {
    let me = Me::current();
    let mut locks = vec![H_ALLOC_LOCK];
    locks.extend((0..sh.g.nstripes).map(|i| sh.g.stripes_off + i * STRIPE_LEN + S_LOCK));
    for l in locks {
        let w = sh.mem.w32(l);
        let v = w.load(Ordering::Relaxed);
        if v & PID_MASK == me.process.pid {
            w.store((v & !PID_MASK) | ghost, Ordering::Relaxed);
            sh.mem.set(l + 8, u64::from(ghost) << 32);
        }
    }
    for i in 0..sh.g.nslots {
        let s = sh.slot_off(i);
        if sh.mem.get(s + C_STAMP) == me.stamp() {
            sh.mem.set(s + C_STAMP, u64::from(ghost) << 32);
        }
    }
}

fn quiet_died_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<crash::Died>().is_none() {
                prev(info);
            }
        }));
    });
}

/// Run `op` with a crash after `k` crash points. Returns whether it died.
fn run_with_crash(k: u64, op: impl FnOnce()) -> bool {
    crash::COUNTDOWN.with(|c| c.set(k));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(op));
    crash::COUNTDOWN.with(|c| c.set(0));
    let died = crash::DEAD.with(|d| d.replace(false));
    match r {
        Ok(()) => {
            assert!(!died);
            false
        }
        Err(p) => {
            assert!(p.downcast_ref::<crash::Died>().is_some(), "operation panicked for another reason");
            assert!(died);
            true
        }
    }
}

#[test]
fn geometry_fits_and_layout_is_as_documented() {
    assert!(Geometry::for_len(MIN_SHARD_LEN - 1).is_err());
    for len in [MIN_SHARD_LEN, 1 << 20, 1 << 30, 3 << 30] {
        let g = Geometry::for_len(len).unwrap();
        assert!(g.heap_off < g.heap_end && g.heap_end <= len as u64, "{g:?}");
        assert_eq!(g.nbuckets % g.nstripes, 0);
        assert!(g.slots_off >= g.stripes_off + g.nstripes * STRIPE_LEN);
    }
    assert_eq!(std::mem::size_of::<RawLock>(), 16);
    assert!(H_ALLOC_JOURNAL + 8 + 16 * ALLOC_JOURNAL_CAP as u64 <= H_FREE_HEADS);
    assert!(H_FREE_HEADS + 8 * NCLASS as u64 <= HEADER_LEN);
    assert!(S_JOURNAL + 8 + 16 * STRIPE_JOURNAL_CAP as u64 <= STRIPE_LEN);
    assert_eq!(H_USER + 8 * USER_WORDS as u64, H_ALLOC_LOCK);
    for c in 0..NCLASS - 1 {
        assert_eq!(class_of(class_lo(c)), c);
        assert_eq!(class_of(class_lo(c + 1) - 1), c);
    }
}

#[test]
fn dict_semantics() {
    let sh = shard(1 << 20);
    let s = sh.claim_slot().unwrap();
    assert_eq!(sh.get(&s, b"a"), None);
    assert_eq!(sh.put(&s, b"a", b"1").unwrap(), Put::Inserted);
    assert_eq!(sh.put(&s, b"b", b"22").unwrap(), Put::Inserted);
    assert_eq!(sh.put(&s, b"a", b"333").unwrap(), Put::Replaced);
    assert_eq!(sh.get(&s, b"a").as_deref(), Some(&b"333"[..]));
    assert_eq!(sh.put_parts(&s, b"a", &[b"x"], true).unwrap(), Put::Exists);
    assert_eq!(sh.put_parts(&s, b"c", &[b"x", b"y"], true).unwrap(), Put::Inserted);
    assert_eq!(sh.get(&s, b"c").as_deref(), Some(&b"xy"[..]));
    assert_eq!(sh.len(), 3);
    assert!(sh.contains(&s, b"b"));
    assert!(sh.delete(&s, b"b").unwrap());
    assert!(!sh.delete(&s, b"b").unwrap());
    assert_eq!(sh.take_with(&s, b"c", |v| v.to_vec()).unwrap(), Some(b"xy".to_vec()));
    let mut keys = sh.keys();
    keys.sort();
    assert_eq!(keys, vec![b"a".to_vec()]);
    let n = sh
        .update(&s, b"n", |cur| {
            let v = cur.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap())) + 5;
            (Update::Set(v.to_le_bytes().to_vec()), v)
        })
        .unwrap();
    assert_eq!(n, 5);
    assert_eq!(sh.update(&s, b"n", |_| (Update::Remove, ())), Ok(()));
    assert!(!sh.contains(&s, b"n"));
    assert_eq!(sh.put(&s, b"", b"").unwrap(), Put::Inserted);
    assert_eq!(sh.get(&s, b"").as_deref(), Some(&b""[..]));
    assert_eq!(sh.clear(&s).unwrap(), 2);
    assert_eq!(sh.len(), 0);
    let r = sh.check().unwrap();
    assert_eq!((r.entries, r.used_blocks, r.pending_blocks), (0, 0, 0));
    assert_eq!(r.free_blocks, 1, "everything coalesced back into one block");
    sh.release_slot(s);
    assert_eq!(sh.stats().clients, 0);
}

#[test]
fn attach_validates() {
    let r = Arc::new(HeapRegion::new(1 << 20));
    assert!(matches!(Shard::attach(Arc::clone(&r), 42), Err(KvError::NotAShard(_))));
    // SAFETY: fresh region.
    let sh = unsafe { Shard::init(Arc::clone(&r), 42) }.unwrap();
    let s = sh.claim_slot().unwrap();
    sh.put(&s, b"k", b"v").unwrap();
    let other = Shard::attach(Arc::clone(&r), 42).unwrap();
    let s2 = other.claim_slot().unwrap();
    assert_eq!(other.get(&s2, b"k").as_deref(), Some(&b"v"[..]));
    assert!(matches!(Shard::attach(Arc::clone(&r), 43), Err(KvError::NotAShard(_))));
}

#[test]
fn full_shard_keeps_the_old_value_and_memory_is_reusable() {
    let sh = shard(MIN_SHARD_LEN * 2);
    let s = sh.claim_slot().unwrap();
    let heap = sh.geometry().heap_len();
    sh.put(&s, b"big", &vec![1u8; (heap / 2) as usize]).unwrap();
    let e = sh.put(&s, b"big", &vec![2u8; (heap / 2) as usize + 64]).unwrap_err();
    assert!(matches!(e, KvError::Full { .. }), "{e}");
    assert_eq!(sh.get(&s, b"big").unwrap(), vec![1u8; (heap / 2) as usize]);
    // Many small entries until full, then one big one after a clear.
    let mut i = 0u32;
    loop {
        match sh.put(&s, &i.to_le_bytes(), &[7u8; 40]) {
            Ok(_) => i += 1,
            Err(KvError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(i > 10);
    sh.check().unwrap();
    sh.clear(&s).unwrap();
    sh.put(&s, b"huge", &vec![3u8; (heap - 1024) as usize]).unwrap();
    assert_eq!(sh.check().unwrap().entries, 1);
}

#[test]
fn frozen_shard_refuses_writes_and_reads_without_locks() {
    let sh = shard(1 << 20);
    let s = sh.claim_slot().unwrap();
    sh.put(&s, b"k", b"v").unwrap();
    sh.freeze();
    assert!(sh.is_frozen());
    assert_eq!(sh.put(&s, b"k", b"w"), Err(KvError::Frozen));
    assert_eq!(sh.delete(&s, b"k"), Err(KvError::Frozen));
    assert_eq!(sh.clear(&s), Err(KvError::Frozen));
    // Hold a stripe lock: a frozen get must not need it.
    let b = sh.bucket_of(key_hash(b"k"));
    let g = sh.lock_stripe(sh.stripe_of_bucket(b));
    assert_eq!(sh.get(&s, b"k").as_deref(), Some(&b"v"[..]));
    drop(g);
    sh.unfreeze();
    sh.put(&s, b"k", b"w").unwrap();
    assert_eq!(sh.check().unwrap().entries, 1);
}

#[test]
fn dead_clients_are_reaped() {
    let sh = shard(1 << 20);
    let s = sh.claim_slot().unwrap();
    // A block in flight, as if the client died between allocating and
    // linking.
    let e = sh.make_entry(&s, 1, b"k", &[b"v"]).unwrap();
    assert_ne!(e, 0);
    assert_eq!(sh.check().unwrap().pending_blocks, 1);
    simulate_death(&sh, dead_pid());
    assert_eq!(sh.reap_dead(), 1);
    let r = sh.check().unwrap();
    assert_eq!((r.used_blocks, r.pending_blocks), (0, 0));
    assert_eq!(sh.stats().clients, 0);
}

#[test]
fn slots_run_out_then_dead_ones_are_reused() {
    let sh = shard(MIN_SHARD_LEN);
    let n = sh.geometry().nslots;
    let slots: Vec<_> = (0..n).map(|_| sh.claim_slot().unwrap()).collect();
    assert_eq!(sh.claim_slot().unwrap_err(), KvError::TooManyClients(n));
    drop(slots);
    simulate_death(&sh, dead_pid());
    assert!(sh.claim_slot().is_ok());
}

/// A state to crash in: a few keys, one of which the operation touches.
type Model = HashMap<Vec<u8>, Vec<u8>>;

fn seeded() -> (Shard<Arc<HeapRegion>>, Model) {
    let sh = shard(256 << 10);
    let s = sh.claim_slot().unwrap();
    let mut model = HashMap::new();
    for i in 0..20u32 {
        let k = format!("key{i}").into_bytes();
        let v = vec![i as u8; 10 + i as usize * 7];
        sh.put(&s, &k, &v).unwrap();
        model.insert(k, v);
    }
    sh.release_slot(s);
    (sh, model)
}

/// Crash `op` at every point; after each crash the shard must be whole
/// and `key` must hold one of `allowed`.
fn crash_everywhere(name: &str, key: &[u8], allowed: &[Option<Vec<u8>>], op: impl Fn(&Shard<Arc<HeapRegion>>, &Slot)) {
    quiet_died_panics();
    let ghost = dead_pid();
    let mut k = 1;
    loop {
        let (sh, model) = seeded();
        let s = sh.claim_slot().unwrap();
        let died = run_with_crash(k, || op(&sh, &s));
        if died {
            simulate_death(&sh, ghost);
        } else {
            sh.release_slot(s);
        }
        // Another process comes along: reaps, reads, writes.
        let s2 = sh.claim_slot().unwrap();
        sh.reap_dead();
        let v = sh.get(&s2, key);
        assert!(allowed.contains(&v), "{name}: crash at point {k}: {key:?} = {v:?}");
        for (mk, mv) in &model {
            if mk != key {
                assert_eq!(sh.get(&s2, mk).as_ref(), Some(mv), "{name}: crash at point {k}: other key changed");
            }
        }
        let r = sh.check().unwrap_or_else(|e| panic!("{name}: crash at point {k}: {e}"));
        assert_eq!(r.pending_blocks, 0, "{name}: crash at point {k}: blocks left in flight");
        sh.put(&s2, b"after", &[9; 100]).unwrap();
        sh.delete(&s2, key).unwrap();
        sh.check().unwrap();
        if !died {
            break;
        }
        k += 1;
    }
    assert!(k > 5, "{name}: the operation passed only {k} crash points");
}

#[test]
fn crash_during_insert() {
    watchdog(|| {
        crash_everywhere("insert", b"new", &[None, Some(vec![5; 300])], |sh, s| {
            sh.put(s, b"new", &[5; 300]).unwrap();
        })
    });
}

#[test]
fn crash_during_replace() {
    watchdog(|| {
        crash_everywhere("replace", b"key3", &[Some(vec![3; 31]), Some(vec![6; 5000])], |sh, s| {
            sh.put(s, b"key3", &[6; 5000]).unwrap();
        })
    });
}

#[test]
fn crash_during_delete() {
    watchdog(|| {
        crash_everywhere("delete", b"key7", &[None, Some(vec![7; 59])], |sh, s| {
            sh.delete(s, b"key7").unwrap();
        })
    });
}

#[test]
fn crash_during_update() {
    watchdog(|| {
        crash_everywhere("update", b"key2", &[Some(vec![2; 24]), Some(vec![1; 8])], |sh, s| {
            sh.update(s, b"key2", |_| (Update::Set(vec![1; 8]), ())).unwrap();
        })
    });
}

#[test]
fn crash_during_clear() {
    quiet_died_panics();
    let ghost = dead_pid();
    for k in 1..20_000 {
        let (sh, model) = seeded();
        let s = sh.claim_slot().unwrap();
        let died = run_with_crash(k, || {
            sh.clear(&s).unwrap();
        });
        if died {
            simulate_death(&sh, ghost);
        }
        let s2 = sh.claim_slot().unwrap();
        sh.reap_dead();
        // Every key is either still there, whole, or gone.
        for (mk, mv) in &model {
            if let Some(v) = sh.get(&s2, mk) {
                assert_eq!(&v, mv);
            }
        }
        let r = sh.check().unwrap_or_else(|e| panic!("clear: crash at point {k}: {e}"));
        assert_eq!(r.pending_blocks, 0);
        if !died {
            assert_eq!(r.entries, 0);
            return;
        }
    }
    panic!("clear never finished");
}

#[test]
fn threads_hammer_one_shard() {
    watchdog(|| {
        let sh = Arc::new(shard(4 << 20));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let sh = Arc::clone(&sh);
                std::thread::spawn(move || {
                    let s = sh.claim_slot().unwrap();
                    for i in 0..3000u32 {
                        let own = [t, (i % 50) as u8];
                        sh.put(&s, &own, &vec![t; (i % 200) as usize]).unwrap();
                        assert_eq!(sh.get(&s, &own).unwrap(), vec![t; (i % 200) as usize]);
                        // A shared counter.
                        sh.update(&s, b"ctr", |cur| {
                            let v = cur.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap())) + 1;
                            (Update::Set(v.to_le_bytes().to_vec()), ())
                        })
                        .unwrap();
                        if i % 7 == 0 {
                            sh.delete(&s, &own).unwrap();
                        }
                    }
                    sh.release_slot(s);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = sh.claim_slot().unwrap();
        assert_eq!(sh.get(&s, b"ctr").unwrap(), 12000u64.to_le_bytes().to_vec());
        sh.check().unwrap();
    });
}

#[test]
fn batch_requests_link_in_order_and_free_what_they_replace() {
    let sh = shard(1 << 20);
    let client = sh.claim_slot().unwrap();
    sh.put(&client, b"a", b"old").unwrap();
    let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"b", b"2"), (b"a", b"3")];
    let seq = sh.post_batch(&client, 9, &pairs).unwrap();
    let mut reqs = Vec::new();
    sh.requests(&mut reqs);
    assert_eq!(reqs.len(), 1);
    assert_eq!((reqs[0].op, reqs[0].seq), (9, seq));
    let mut seen = Vec::new();
    sh.batch_data(&reqs[0], |k, v| seen.push((k.to_vec(), v.to_vec())));
    assert_eq!(seen, pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect::<Vec<_>>());
    assert_eq!(sh.apply_batch(&reqs[0]).unwrap(), 3);
    sh.reply(&reqs[0], 0, 3);
    assert_eq!(sh.wait_reply(&client, seq, Duration::from_secs(1)), Some((0, 3)));
    assert_eq!(sh.get(&client, b"a").as_deref(), Some(&b"3"[..]));
    assert_eq!(sh.get(&client, b"b").as_deref(), Some(&b"2"[..]));
    let r = sh.check().unwrap();
    assert_eq!((r.entries, r.used_blocks, r.pending_blocks), (2, 2, 0));
    // A batch that does not fit is not posted and gives its blocks back.
    let big = vec![0u8; 700 << 10];
    assert!(matches!(sh.post_batch(&client, 9, &[(b"x", &big[..]), (b"y", &big[..])]), Err(KvError::Full { .. })));
    sh.requests(&mut reqs);
    assert!(reqs.is_empty());
    assert_eq!(sh.check().unwrap().used_blocks, 2);
}

#[test]
fn crash_during_batch_post() {
    watchdog(|| {
        crash_everywhere("batch", b"key1", &[Some(vec![1; 17])], |sh, s| {
            sh.post_batch(s, 9, &[(b"key1", b"x"), (b"other", &[5; 300])]).unwrap();
        })
    });
}
