//! The Rust client against managers: routing, dict semantics, typed
//! access, durable mode with group commit, restore after a restart, and
//! nothing left in /dev/shm.

mod common;

use common::{serve, watchdog};
use ddict::{Client, Descriptor, Error, I64Codec, Put, StrCodec, Typed};
use std::collections::HashMap;

fn shm_left(desc: &Descriptor) -> usize {
    desc.shards.iter().filter(|s| std::path::Path::new(&format!("/dev/shm/{}", s.segment)).exists()).count()
}

#[test]
fn dict_semantics_over_shards() {
    watchdog();
    let s = serve("sem", 3, 1 << 20, None, false);
    let desc = Descriptor::from_text(&s.desc.to_text()).unwrap();
    assert_eq!(desc, s.desc);
    let mut c = Client::attach(&desc).unwrap();
    let mut model = HashMap::new();
    for i in 0..300u32 {
        let k = format!("k{i}").into_bytes();
        let v = vec![i as u8; (i % 97) as usize];
        assert_eq!(c.put(&k, &v).unwrap(), Put::Inserted);
        model.insert(k, v);
    }
    assert_eq!(c.len().unwrap(), 300);
    let per: Vec<u64> = (0..3).map(|i| c.shard_len(i).unwrap()).collect();
    assert!(per.iter().all(|&n| n > 50), "keys spread over shards: {per:?}");
    for (k, v) in &model {
        assert_eq!(c.get(k).unwrap().as_ref(), Some(v));
        assert_eq!(c.shard_of(k), ddict::shard_of(k, 3));
    }
    assert!(c.delete(b"k7").unwrap());
    assert_eq!(c.get(b"k7").unwrap(), None);
    assert_eq!(c.fetch_add(b"ctr", 5).unwrap(), 5);
    assert_eq!(c.fetch_add(b"ctr", -7).unwrap(), -2);
    c.put_all(b"everywhere", b"x").unwrap();
    for i in 0..3 {
        assert_eq!(c.get_from(i, b"everywhere", |v| v.to_vec()).unwrap().as_deref(), Some(&b"x"[..]));
    }
    c.freeze().unwrap();
    assert_eq!(c.put(b"a", b"b"), Err(Error::Frozen));
    assert_eq!(c.get(b"k8").unwrap().as_ref(), model.get(b"k8".as_slice()));
    c.unfreeze().unwrap();
    c.clear().unwrap();
    assert_eq!(c.len().unwrap(), 0);
    // A second client in this process (another slot) sees the same data.
    let mut t = Typed::new(Client::attach(&desc).unwrap(), StrCodec, I64Codec);
    t.put(&"n".to_owned(), &42).unwrap();
    assert_eq!(t.get(&"n".to_owned()).unwrap(), Some(42));
    assert_eq!(c.get(b"n").unwrap(), Some(42i64.to_le_bytes().to_vec()));
    drop(t);
    drop(c);
    s.stop();
    assert_eq!(shm_left(&desc), 0);
    assert_eq!(Client::attach(&desc).unwrap_err(), Error::Destroyed);
}

#[test]
fn full_shard_is_an_error_and_keeps_the_old_value() {
    watchdog();
    let s = serve("full", 1, 256 << 10, None, false);
    let mut c = Client::attach(&s.desc).unwrap();
    c.put(b"k", &[1; 1000]).unwrap();
    let e = c.put(b"k", &vec![2; 1 << 20]).unwrap_err();
    assert!(matches!(e, Error::Full { shard: 0, .. }), "{e}");
    assert_eq!(c.get(b"k").unwrap(), Some(vec![1; 1000]));
}

#[test]
fn durable_writes_come_back_after_a_restart() {
    watchdog();
    let dir = std::env::temp_dir().join(format!("ddict-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = serve("dur", 2, 1 << 20, Some(dir.clone()), false);
    let mut c = Client::attach(&s.desc).unwrap();
    assert!(c.durable());
    let mut model = HashMap::new();
    for i in 0..400u32 {
        let k = format!("k{}", i % 150).into_bytes();
        let v = vec![(i % 251) as u8; (i * 13 % 700) as usize];
        c.put(&k, &v).unwrap();
        model.insert(k, v);
        if i % 9 == 0 {
            let k = format!("k{}", (i * 7) % 150).into_bytes();
            assert_eq!(c.delete(&k).unwrap(), model.remove(&k).is_some());
        }
    }
    assert_eq!(c.fetch_add(b"ctr", 3).unwrap(), 3);
    assert_eq!(c.fetch_add(b"ctr", 4).unwrap(), 7);
    model.insert(b"ctr".to_vec(), 7i64.to_le_bytes().to_vec());
    assert_eq!(c.put_parts(b"ctr", &[b"zz"], true).unwrap(), Put::Exists);
    c.freeze().unwrap();
    assert_eq!(c.put(b"x", b"y"), Err(Error::Frozen));
    c.unfreeze().unwrap();
    assert_eq!(c.len().unwrap(), model.len() as u64);
    drop(c);
    s.stop();
    // A new DDict of the same name restores every acknowledged write.
    let s = serve("dur", 2, 1 << 20, Some(dir.clone()), true);
    let mut c = Client::attach(&s.desc).unwrap();
    assert_eq!(c.len().unwrap(), model.len() as u64);
    for (k, v) in &model {
        assert_eq!(c.get(k).unwrap().as_ref(), Some(v), "{}", String::from_utf8_lossy(k));
    }
    c.clear().unwrap();
    drop(c);
    s.stop();
    let s = serve("dur", 2, 1 << 20, Some(dir.clone()), true);
    assert_eq!(Client::attach(&s.desc).unwrap().len().unwrap(), 0);
    s.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_durable_writers_share_syncs() {
    watchdog();
    let dir = std::env::temp_dir().join(format!("ddict-group-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = serve("grp", 1, 4 << 20, Some(dir.clone()), false);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let desc = s.desc.clone();
            std::thread::spawn(move || {
                let mut c = Client::attach(&desc).unwrap();
                for i in 0..200 {
                    c.put(format!("t{t}-{i}").as_bytes(), b"v").unwrap();
                    c.fetch_add(b"ctr", 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = Client::attach(&s.desc).unwrap();
    assert_eq!(c.len().unwrap(), 801);
    assert_eq!(c.get(b"ctr").unwrap(), Some(800i64.to_le_bytes().to_vec()));
    drop(c);
    s.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_out_of_the_working_set_merge_into_the_base() {
    use ddict::manager::{versioned_key, TOMBSTONE};
    watchdog();
    let s = serve("ck", 1, 1 << 20, None, false);
    let mut c = Client::attach(&s.desc).unwrap();
    assert_eq!(c.checkpoint_state(0).unwrap(), (0, 1, 2));
    c.put(b"k", b"base").unwrap();
    for ck in 1..=2u64 {
        c.put(&versioned_key(ck, b"k"), format!("v{ck}").as_bytes()).unwrap();
        assert_eq!(c.checkpoint_advance(0, ck).unwrap(), 1);
    }
    c.put(&versioned_key(2, b"gone"), &[TOMBSTONE]).unwrap();
    c.put(b"gone", b"old").unwrap();
    // Writing checkpoint 3 with a working set of 2 merges checkpoint 1.
    assert_eq!(c.checkpoint_advance(0, 3).unwrap(), 2);
    assert_eq!(c.checkpoint_state(0).unwrap(), (3, 2, 2));
    assert_eq!(c.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(!c.contains(&versioned_key(1, b"k")).unwrap());
    assert!(c.contains(&versioned_key(2, b"k")).unwrap());
    // Jumping ahead merges every checkpoint that falls out, in order.
    assert_eq!(c.checkpoint_advance(0, 10).unwrap(), 9);
    assert_eq!(c.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(c.get(b"gone").unwrap(), None, "a tombstone deletes the base entry");
    assert_eq!(c.len().unwrap(), 1);
    // An older checkpoint does not move anything back.
    assert_eq!(c.checkpoint_advance(0, 4).unwrap(), 9);
}

#[test]
fn durable_batches_are_logged_and_restored() {
    watchdog();
    let dir = std::env::temp_dir().join(format!("ddict-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = serve("bat", 2, 1 << 20, Some(dir.clone()), false);
    let mut c = Client::attach(&s.desc).unwrap();
    let keys: Vec<Vec<u8>> = (0..300u32).map(|i| format!("k{i}").into_bytes()).collect();
    let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), k.as_slice())).collect();
    c.put_batch(&pairs).unwrap();
    c.put_batch(&[(b"k1", b"again"), (b"k1", b"last")]).unwrap();
    let big = vec![0u8; 900 << 10];
    assert!(matches!(c.put_batch(&[(b"big1", &big[..]), (b"big1", &big[..])]), Err(Error::Full { .. })));
    assert_eq!(c.len().unwrap(), 300);
    drop(c);
    s.stop();
    let s = serve("bat", 2, 1 << 20, Some(dir.clone()), true);
    let mut c = Client::attach(&s.desc).unwrap();
    assert_eq!(c.len().unwrap(), 300);
    assert_eq!(c.get(b"k1").unwrap().as_deref(), Some(&b"last"[..]));
    assert_eq!(c.get(b"k299").unwrap().as_deref(), Some(&b"k299"[..]));
    drop(c);
    s.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_maps_its_nodes_shards_and_names_the_node_of_the_others() {
    watchdog();
    let s = serve("nodes", 3, 1 << 20, None, false);
    let mut all = Client::attach(&s.desc).unwrap();
    for i in 0..60u32 {
        all.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    // The same DDict as a process of node 0 sees it when shard 1 lives on node 5.
    let mut desc = s.desc.clone();
    desc.shards[1].node = 5;
    assert!(desc.to_text().contains("@5"), "{}", desc.to_text());
    assert_eq!(Descriptor::from_text(&desc.to_text()).unwrap(), desc);
    let mut part = Client::attach_on(&desc, 0).unwrap();
    assert_eq!(part.local_shards(), vec![0, 2]);
    assert!(part.is_here(0) && !part.is_here(1));
    assert_eq!(part.node_of(1), 5);
    let elsewhere = (0..60u32).map(|i| format!("k{i}").into_bytes()).find(|k| part.shard_of(k) == 1).unwrap();
    assert_eq!(part.get(&elsewhere).unwrap_err(), Error::Elsewhere { shard: 1, node: 5 });
    assert_eq!(part.put(&elsewhere, b"w").unwrap_err(), Error::Elsewhere { shard: 1, node: 5 });
    assert_eq!(part.shard_len(1).unwrap_err(), Error::Elsewhere { shard: 1, node: 5 });
    // Whole-DDict operations cover this node's shards.
    let here = all.shard_len(0).unwrap() + all.shard_len(2).unwrap();
    assert_eq!(part.len().unwrap(), here);
    assert_eq!(part.keys().unwrap().len() as u64, here);
    assert_eq!(part.stats_here().iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 2]);
    // A node with no shard maps nothing and answers nothing.
    let mut none = Client::attach_on(&s.desc, 9).unwrap();
    assert!(none.local_shards().is_empty());
    assert_eq!(none.len().unwrap(), 0);
    assert!(matches!(none.get(b"k1").unwrap_err(), Error::Elsewhere { node: 0, .. }));
    drop((part, none, all));
    s.stop();
}
