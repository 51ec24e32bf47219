//! Random operation sequences on a small shard against a `HashMap` model,
//! through the public API only. Full-shard errors must leave the model's
//! value in place; the heap check must pass after every sequence.

use ddict_shard::{KvError, Put, Shard, Update};
use proptest::prelude::*;
use shm_primitives::region::HeapRegion;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, usize),
    PutIfAbsent(u8, usize),
    Get(u8),
    Delete(u8),
    Take(u8),
    Add(u8, u8),
    Clear,
    Len,
}

fn op() -> impl Strategy<Value = Op> {
    // Keys from a small set so that replaces and deletes hit; sizes up to
    // a third of the heap so that the shard fills up.
    let size = prop_oneof![0usize..64, 64usize..2048, 2048usize..40_000];
    prop_oneof![
        6 => (any::<u8>().prop_map(|k| k % 24), size.clone()).prop_map(|(k, n)| Op::Put(k, n)),
        1 => (any::<u8>().prop_map(|k| k % 24), size).prop_map(|(k, n)| Op::PutIfAbsent(k, n)),
        4 => any::<u8>().prop_map(|k| Op::Get(k % 24)),
        2 => any::<u8>().prop_map(|k| Op::Delete(k % 24)),
        1 => any::<u8>().prop_map(|k| Op::Take(k % 24)),
        1 => (any::<u8>().prop_map(|k| k % 24), any::<u8>()).prop_map(|(k, d)| Op::Add(k, d)),
        1 => Just(Op::Clear),
        1 => Just(Op::Len),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn shard_behaves_like_a_hashmap(ops in proptest::collection::vec(op(), 1..120)) {
        // SAFETY: a fresh zeroed region used only by this shard.
        let sh = unsafe { Shard::init(Arc::new(HeapRegion::new(128 << 10)), 1) }.unwrap();
        let s = sh.claim_slot().unwrap();
        let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (i, o) in ops.into_iter().enumerate() {
            match o {
                Op::Put(k, n) | Op::PutIfAbsent(k, n) => {
                    let if_absent = matches!(o, Op::PutIfAbsent(..));
                    let v = vec![(i % 251) as u8; n];
                    match sh.put_parts(&s, &key(k), &[&v], if_absent) {
                        Ok(Put::Exists) => prop_assert!(if_absent && model.contains_key(&key(k))),
                        Ok(p) => {
                            prop_assert_eq!(p == Put::Replaced, model.contains_key(&key(k)));
                            model.insert(key(k), v);
                        }
                        Err(KvError::Full { .. }) => {}
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Get(k) => prop_assert_eq!(sh.get(&s, &key(k)), model.get(&key(k)).cloned()),
                Op::Delete(k) => prop_assert_eq!(sh.delete(&s, &key(k)).unwrap(), model.remove(&key(k)).is_some()),
                Op::Take(k) => prop_assert_eq!(sh.take_with(&s, &key(k), |v| v.to_vec()).unwrap(), model.remove(&key(k))),
                Op::Add(k, d) => {
                    let r = sh.update(&s, &key(k), |cur| {
                        let mut v = cur.map(|c| c.to_vec()).unwrap_or_default();
                        v.push(d);
                        (Update::Set(v.clone()), v)
                    });
                    match r {
                        Ok(v) => { model.insert(key(k), v); }
                        Err(KvError::Full { .. }) => {}
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Clear => {
                    prop_assert_eq!(sh.clear(&s).unwrap(), model.len() as u64);
                    model.clear();
                }
                Op::Len => prop_assert_eq!(sh.len(), model.len() as u64),
            }
        }
        let mut keys = sh.keys();
        keys.sort();
        let mut mk: Vec<_> = model.keys().cloned().collect();
        mk.sort();
        prop_assert_eq!(keys, mk);
        let r = sh.check().unwrap();
        prop_assert_eq!(r.entries, model.len() as u64);
        prop_assert_eq!(r.pending_blocks, 0);
        // Everything freed comes back as one block.
        sh.clear(&s).unwrap();
        let r = sh.check().unwrap();
        prop_assert_eq!((r.used_blocks, r.free_blocks), (0, 1));
    }
}
