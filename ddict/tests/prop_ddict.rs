//! Random operation sequences through the `ddict` client (three small
//! shards served by manager threads) against a `HashMap`, full-shard
//! errors included: a put that does not fit leaves the model unchanged.

mod common;

use common::{serve, watchdog};
use ddict::{Client, Error, Put};
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, usize),
    PutIfAbsent(u8, usize),
    Get(u8),
    Delete(u8),
    Take(u8),
    Add(u8, i8),
    Clear,
    Len,
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![0usize..100, 100usize..5000, 5000usize..60_000];
    prop_oneof![
        6 => (0u8..30, size.clone()).prop_map(|(k, n)| Op::Put(k, n)),
        1 => (0u8..30, size).prop_map(|(k, n)| Op::PutIfAbsent(k, n)),
        4 => (0u8..30).prop_map(Op::Get),
        2 => (0u8..30).prop_map(Op::Delete),
        1 => (0u8..30).prop_map(Op::Take),
        1 => (0u8..30, any::<i8>()).prop_map(|(k, d)| Op::Add(k, d)),
        1 => Just(Op::Clear),
        1 => Just(Op::Len),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn client_behaves_like_a_hashmap(ops in proptest::collection::vec(op(), 1..150)) {
        watchdog();
        let s = serve("prop", 3, 128 << 10, None, false);
        let mut c = Client::attach(&s.desc).unwrap();
        let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (i, o) in ops.into_iter().enumerate() {
            match o {
                Op::Put(k, n) | Op::PutIfAbsent(k, n) => {
                    let if_absent = matches!(o, Op::PutIfAbsent(..));
                    let v = vec![(i % 251) as u8; n];
                    match c.put_parts(&key(k), &[&v], if_absent) {
                        Ok(Put::Exists) => prop_assert!(if_absent && model.contains_key(&key(k))),
                        Ok(_) => { model.insert(key(k), v); }
                        Err(Error::Full { shard, .. }) => prop_assert_eq!(shard, c.shard_of(&key(k))),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Get(k) => prop_assert_eq!(c.get(&key(k)).unwrap(), model.get(&key(k)).cloned()),
                Op::Delete(k) => prop_assert_eq!(c.delete(&key(k)).unwrap(), model.remove(&key(k)).is_some()),
                Op::Take(k) => prop_assert_eq!(c.take_with(&key(k), |v| v.to_vec()).unwrap(), model.remove(&key(k))),
                Op::Add(k, d) => {
                    let old = ddict::counter_value(model.get(&key(k)).map(|v| v.as_slice()), &[]);
                    match c.fetch_add(&key(k), i64::from(d)) {
                        Ok(n) => {
                            prop_assert_eq!(n, old + i64::from(d));
                            model.insert(key(k), n.to_le_bytes().to_vec());
                        }
                        Err(Error::Full { .. }) => {}
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Clear => {
                    c.clear().unwrap();
                    model.clear();
                }
                Op::Len => prop_assert_eq!(c.len().unwrap(), model.len() as u64),
            }
        }
        let mut keys = c.keys().unwrap();
        keys.sort();
        let mut mk: Vec<_> = model.keys().cloned().collect();
        mk.sort();
        prop_assert_eq!(keys, mk);
        drop(c);
        s.stop();
    }
}
