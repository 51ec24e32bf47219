//! Loom models of the shard (`make test-loom`): the real put, get, update
//! and freeze code with threads standing in for processes, on the smallest
//! shard. Words are loom atomics (see `loom_mem`), so every load and store
//! of the index, allocator and journals is a scheduling point.

use super::*;
use loom::sync::Arc;
use shm_primitives::region::HeapRegion;

fn model(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    // A put is a few hundred loads and stores, the final heap check a few
    // thousand: every one is a branch.
    b.max_branches = 100_000;
    b.check(f);
}

fn shard() -> Arc<Shard<std::sync::Arc<HeapRegion>>> {
    // SAFETY: a fresh zeroed region used only by this shard.
    Arc::new(unsafe { Shard::init(std::sync::Arc::new(HeapRegion::new(MIN_SHARD_LEN)), 7) }.unwrap())
}

fn counter(sh: &Shard<std::sync::Arc<HeapRegion>>, s: &Slot) {
    sh.update(s, b"ctr", |cur| {
        let v = cur.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap())) + 1;
        (Update::Set(v.to_le_bytes().to_vec()), ())
    })
    .unwrap();
}

#[test]
fn loom_kv_get_sees_old_or_new_value() {
    model(1, || {
        let sh = shard();
        let s = sh.claim_slot().unwrap();
        sh.put(&s, b"k", b"old").unwrap();
        let sh2 = Arc::clone(&sh);
        let t = loom::thread::spawn(move || {
            let s = sh2.claim_slot().unwrap();
            sh2.put(&s, b"k", b"new value").unwrap();
            sh2.release_slot(s);
        });
        let v = sh.get(&s, b"k").unwrap();
        assert!(v == b"old" || v == b"new value", "{v:?}");
        t.join().unwrap();
        assert_eq!(sh.get(&s, b"k").unwrap(), b"new value");
        let r = sh.check().unwrap();
        assert_eq!((r.entries, r.used_blocks, r.pending_blocks), (1, 1, 0));
    });
}

#[test]
fn loom_kv_updates_do_not_lose_increments() {
    model(1, || {
        let sh = shard();
        let s = sh.claim_slot().unwrap();
        let sh2 = Arc::clone(&sh);
        let t = loom::thread::spawn(move || {
            let s = sh2.claim_slot().unwrap();
            counter(&sh2, &s);
            sh2.release_slot(s);
        });
        counter(&sh, &s);
        t.join().unwrap();
        assert_eq!(sh.get(&s, b"ctr").unwrap(), 2u64.to_le_bytes());
        assert_eq!(sh.check().unwrap().used_blocks, 1, "the replaced value was freed");
    });
}

#[test]
fn loom_kv_unfreeze_waits_for_lock_free_readers() {
    model(2, || {
        let sh = shard();
        let s = sh.claim_slot().unwrap();
        sh.put(&s, b"k", b"old").unwrap();
        sh.freeze();
        let sh2 = Arc::clone(&sh);
        let t = loom::thread::spawn(move || {
            let s = sh2.claim_slot().unwrap();
            let v = sh2.get(&s, b"k").unwrap();
            assert!(v == b"old" || v == b"new", "{v:?}");
            sh2.release_slot(s);
        });
        assert_eq!(sh.put(&s, b"k", b"x"), Err(KvError::Frozen));
        sh.unfreeze();
        sh.put(&s, b"k", b"new").unwrap();
        t.join().unwrap();
        assert_eq!(sh.check().unwrap().entries, 1);
    });
}

#[test]
fn loom_kv_lock_free_reads_start_after_writes_in_progress_end() {
    model(2, || {
        let sh = shard();
        let s = sh.claim_slot().unwrap();
        sh.put(&s, b"k", b"old").unwrap();
        let sh2 = Arc::clone(&sh);
        let t = loom::thread::spawn(move || {
            let s = sh2.claim_slot().unwrap();
            // Either lands before the freeze or is refused by it.
            let r = sh2.put(&s, b"k", b"new");
            assert!(r.is_ok() || r == Err(KvError::Frozen), "{r:?}");
            sh2.release_slot(s);
        });
        let sh3 = Arc::clone(&sh);
        let f = loom::thread::spawn(move || sh3.freeze());
        // A reader while the freeze is in progress: it must not skip the
        // locks before the write in progress has finished.
        let v = sh.get(&s, b"k").unwrap();
        assert!(v == b"old" || v == b"new", "{v:?}");
        t.join().unwrap();
        f.join().unwrap();
        let v = sh.get(&s, b"k").unwrap();
        assert!(v == b"old" || v == b"new", "{v:?}");
        sh.unfreeze();
        assert_eq!(sh.check().unwrap().entries, 1);
    });
}
