//! The free list: exclusive ownership under concurrent pop/push, and
//! recovery when an operation's owner dies right after announcing it.

use crate::alloc::{
    adopt, block_state, head_word, state_kind, AllocError, FreeList, Metas, KIND_FREE, KIND_OWNED, OP_POP, OP_PUSH,
};
use crate::layout::BlockMeta;
use loom::sync::atomic::AtomicBool;
use loom::thread;
use shm_primitives::sync::{AtomicU64, Ordering};
use std::sync::Arc;

struct Pool {
    head: AtomicU64,
    metas: Vec<BlockMeta>,
    in_use: Vec<AtomicBool>,
}

impl Metas for Pool {
    fn meta(&self, id: u32) -> Result<&BlockMeta, AllocError> {
        self.metas.get(id as usize).ok_or_else(|| AllocError::Corrupt("id".into()))
    }
}

/// `n` blocks, all pushed on the list by attachment 1.
fn pool(n: usize) -> Arc<Pool> {
    let p = Pool {
        head: AtomicU64::new(0),
        metas: (0..n)
            .map(|_| BlockMeta { state: AtomicU64::new(block_state(0, KIND_OWNED, 1)), next: AtomicU64::new(0) })
            .collect(),
        in_use: (0..n).map(|_| AtomicBool::new(false)).collect(),
    };
    for id in 0..n as u32 {
        FreeList::new(&p.head).push(1, id, &p).unwrap();
    }
    Arc::new(p)
}

fn check_all_free(p: &Pool) {
    let fl = FreeList::new(&p.head);
    let mut ids = vec![];
    fl.walk(p, 10, &mut |id| ids.push(id)).unwrap();
    ids.sort();
    assert_eq!(ids, (0..p.metas.len() as u32).collect::<Vec<_>>());
    for m in &p.metas {
        assert_eq!(state_kind(m.state.load(Ordering::Relaxed)), KIND_FREE);
    }
}

fn use_one(p: &Pool, att: u32) {
    let fl = FreeList::new(&p.head);
    if let Some(id) = fl.pop(att, p).unwrap() {
        assert!(!p.in_use[id as usize].swap(true, Ordering::Relaxed), "block {id} handed out twice");
        p.in_use[id as usize].store(false, Ordering::Relaxed);
        fl.push(att, id, p).unwrap();
    }
}

#[test]
fn loom_alloc_concurrent_pop_push_is_exclusive() {
    super::model(3, || {
        let p = pool(2);
        let p2 = Arc::clone(&p);
        let t = thread::spawn(move || use_one(&p2, 2));
        use_one(&p, 3);
        t.join().unwrap();
        check_all_free(&p);
    });
}

#[test]
fn loom_alloc_push_races_pop_of_the_last_block() {
    super::model(3, || {
        let p = pool(2);
        let fl = FreeList::new(&p.head);
        // Attachment 2 holds block 1; block 0 is the only free one.
        assert_eq!(fl.pop(2, &*p).unwrap(), Some(1));
        let p2 = Arc::clone(&p);
        let t = thread::spawn(move || FreeList::new(&p2.head).push(2, 1, &*p2).unwrap());
        let got = FreeList::new(&p.head).pop(3, &*p).unwrap();
        t.join().unwrap();
        let id = got.expect("a block was free throughout");
        assert!(crate::alloc::state_value(p.metas[id as usize].state.load(Ordering::Relaxed)) == 3);
        FreeList::new(&p.head).push(3, id, &*p).unwrap();
        check_all_free(&p);
    });
}

/// Attachment 5 announces an operation and dies; others carry on; the sweep
/// of 5 then returns whatever it held.
fn crash_model(op: u64) {
    super::model(2, move || {
        let p = pool(2);
        if op == OP_PUSH {
            // 5 owns block 0 (popped earlier).
            assert_eq!(FreeList::new(&p.head).pop(5, &*p).unwrap(), Some(1));
        }
        let pd = Arc::clone(&p);
        let dying = thread::spawn(move || {
            let h = pd.head.load(Ordering::Acquire);
            let (tag, id1) = (h >> 40, h & ((1 << 28) - 1));
            if (h >> 38) & 3 != 0 {
                return;
            }
            let announced = if op == OP_POP {
                if id1 == 0 {
                    return;
                }
                head_word(tag + 1, OP_POP, 5, id1)
            } else {
                pd.metas[1].next.store(id1, Ordering::Relaxed);
                head_word(tag + 1, OP_PUSH, 5, 2)
            };
            let _ = pd.head.compare_exchange(h, announced, Ordering::AcqRel, Ordering::Relaxed);
            // ...and the process is killed here.
        });
        let p2 = Arc::clone(&p);
        let other = thread::spawn(move || use_one(&p2, 6));
        dying.join().unwrap();
        other.join().unwrap();
        // Sweep of 5: finish announcements, adopt and free its blocks.
        let fl = FreeList::new(&p.head);
        fl.settle(&*p).unwrap();
        for id in 0..2 {
            if adopt(&p.metas[id as usize], 5, 9) {
                fl.push(9, id, &*p).unwrap();
            }
        }
        check_all_free(&p);
    });
}

#[test]
fn loom_alloc_owner_dies_after_announcing_pop() {
    crash_model(OP_POP);
}

#[test]
fn loom_alloc_owner_dies_after_announcing_push() {
    crash_model(OP_PUSH);
}
