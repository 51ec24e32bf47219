//! A key/value shard shared by real processes that are SIGKILLed at random
//! points in the middle of puts, replaces and deletes: afterwards every
//! value is whole, nothing leaks, and the shard stays usable.

use ddict_shard::ShmShard;
use std::time::Duration;
use test_support::child::{arg, Child};
use transport_shm::segment::{self, RunId};

const ID: u64 = 0x5eed;

/// Entry point of the child processes (run with `--ignored --exact child_entry`).
#[test]
#[ignore = "entry point of child processes, run by the tests that spawn them"]
fn child_entry() {
    test_support::child::entry(role);
}

/// A self-describing value: its length and fill byte derive from `seed`.
fn value(seed: u64) -> Vec<u8> {
    let n = 16 + (seed % 3000) as usize;
    let mut v = vec![(seed % 251) as u8; n];
    v[..8].copy_from_slice(&seed.to_le_bytes());
    v[8..16].copy_from_slice(&(n as u64).to_le_bytes());
    v
}

fn whole(v: &[u8]) -> bool {
    if v.len() < 16 {
        return false;
    }
    let seed = u64::from_le_bytes(v[..8].try_into().unwrap());
    v == value(seed).as_slice()
}

fn role(role: &str) -> i32 {
    match role {
        "hammer" => {
            let sh = ShmShard::open(&arg("SHARD"), ID).unwrap();
            let s = sh.claim_slot().unwrap();
            let mut x: u64 = u64::from(std::process::id()) * 0x9E37_79B9_7F4A_7C15;
            loop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("k{}", x % 200);
                match x % 5 {
                    0 => {
                        sh.delete(&s, key.as_bytes()).unwrap();
                    }
                    1 => {
                        if let Some(v) = sh.get(&s, key.as_bytes()) {
                            assert!(whole(&v), "torn value read");
                        }
                    }
                    _ => {
                        let _ = sh.put(&s, key.as_bytes(), &value(x >> 8));
                    }
                }
            }
        }
        _ => 3,
    }
}

#[test]
fn clients_killed_mid_operation_leave_the_shard_whole() {
    test_support::watchdog::start_with(segment::cleanup_own_run);
    let name = RunId::current().segment_name("kvc");
    let sh = ShmShard::create(&name, 2 << 20, ID).unwrap();
    let _unlink = scopeguard(name.clone());
    let env = [("SHARD", name.clone())];
    let mut survivor = Child::spawn("hammer", &env);
    for round in 0..24u64 {
        let mut victim = Child::spawn("hammer", &env);
        // Let it start and run for a pseudo-random while.
        std::thread::sleep(Duration::from_millis(20 + (round * 7919) % 40));
        victim.kill_no_reap();
        victim.expect_killed();
    }
    survivor.kill_no_reap();
    survivor.expect_killed();
    let reaped = sh.reap_dead();
    assert!(reaped >= 1, "the killed clients' slots are reaped");
    let r = sh.check().unwrap();
    assert_eq!(r.pending_blocks, 0, "blocks in flight of dead clients were freed");
    assert_eq!(sh.stats().clients, 0);
    let s = sh.claim_slot().unwrap();
    let mut n = 0;
    sh.for_each(|_, v| {
        assert!(whole(v), "a value was torn");
        n += 1;
    });
    assert_eq!(n, r.entries);
    assert!(n > 0);
    // Still usable: write, read, clear, and all memory comes back.
    sh.put(&s, b"after", &value(77)).unwrap();
    assert!(whole(&sh.get(&s, b"after").unwrap()));
    sh.clear(&s).unwrap();
    let r = sh.check().unwrap();
    assert_eq!((r.used_blocks, r.free_blocks), (0, 1));
}

struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = segment::unlink(&self.0);
    }
}
fn scopeguard(name: String) -> Unlink {
    Unlink(name)
}
