//! Damaged logs and snapshots: a torn tail is dropped, any other damage
//! (at the start, in the middle, at the end of a log or a snapshot) is an
//! error naming the file and offset that changes nothing on disk, and
//! repair brings back every record outside the damage. Files are created
//! 0600 and directories 0700; format-1 files still restore.

mod common;

use common::files::*;
use common::{serve, watchdog};
use ddict::manager::{self, Config};
use ddict::persist::{self, Kind, Wal, FILE_HEADER, REC_CLEAR, REC_DELETE, REC_PUT};
use ddict::{Client, Error};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

fn model(pairs: &[(Vec<u8>, Vec<u8>)]) -> Model {
    pairs.iter().cloned().collect()
}

fn without(pairs: &[(Vec<u8>, Vec<u8>)], gone: &[usize]) -> Model {
    pairs.iter().enumerate().filter(|(i, _)| !gone.contains(i)).map(|(_, p)| p.clone()).collect()
}

/// Restoring fails with the corruption error and leaves the files as they were.
fn refused(dir: &Path, name: &str) -> persist::Corruption {
    let (wal, snap) = (log_path(dir, name), snap_path(dir, name));
    let before = (read(&wal), snap.exists().then(|| read(&snap)));
    let c = corruption(restore(dir, name));
    assert_eq!((read(&wal), snap.exists().then(|| read(&snap))), before, "a refused restore changed a file");
    c
}

fn flip(p: &Path, at: u64) {
    let mut b = read(p);
    b[at as usize] ^= 0x40;
    std::fs::write(p, b).unwrap();
}

#[test]
fn a_bad_record_in_the_middle_of_a_log_is_an_error_and_repair_keeps_the_rest() {
    let d = TempDir::new("mid");
    let ps = pairs(50, 1);
    let spans = write_log(d.path(), "m", &ps);
    let wal = log_path(d.path(), "m");
    // Three bytes flipped in record 20: 29 acknowledged records follow it.
    for i in 0..3 {
        flip(&wal, spans[20].0 + 8 + i);
    }
    let c = refused(d.path(), "m");
    assert_eq!(c.path, wal);
    assert_eq!(c.offset, spans[20].0);
    assert_eq!(c.records_after, 29);
    assert_eq!(c.bytes_after, read(&wal).len() as u64 - spans[20].0);
    let msg = Error::PersistCorrupt(Box::new(c)).to_string();
    assert!(msg.contains(&wal.display().to_string()) && msg.contains(&format!("byte {}", spans[20].0)), "{msg}");
    assert!(msg.contains("29 valid records") && msg.contains("repair"), "{msg}");
    // Repair: every record but the damaged one, the original kept aside.
    let damaged = read(&wal);
    let rep = persist::repair(d.path(), "m", 0).unwrap();
    assert_eq!(rep.len(), 1);
    let r = &rep[0];
    assert!(r.rewritten);
    assert_eq!(r.records, 49);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].offset, spans[20].0);
    assert_eq!(r.skipped[0].bytes, spans[20].1 - spans[20].0);
    assert_eq!(r.skipped[0].lost, Some(1));
    let copy = r.damaged_copy.clone().unwrap();
    assert_eq!(read(&copy), damaged);
    assert_eq!(restore(d.path(), "m").unwrap(), without(&ps, &[20]));
    // A second repair finds nothing to do.
    let again = persist::repair(d.path(), "m", 0).unwrap();
    assert!(!again[0].rewritten && again[0].skipped.is_empty());
}

#[test]
fn damage_at_the_start_of_a_log() {
    let d = TempDir::new("start");
    let ps = pairs(10, 2);
    let spans = write_log(d.path(), "s", &ps);
    let wal = log_path(d.path(), "s");
    // The first record.
    flip(&wal, spans[0].0 + 30);
    let c = refused(d.path(), "s");
    assert_eq!((c.offset, c.records_after), (FILE_HEADER as u64, 9));
    persist::repair(d.path(), "s", 0).unwrap();
    assert_eq!(restore(d.path(), "s").unwrap(), without(&ps, &[0]));
    // The file header: every record is still there.
    let d = TempDir::new("start");
    write_log(d.path(), "s", &ps);
    let wal = log_path(d.path(), "s");
    flip(&wal, 9);
    let c = refused(d.path(), "s");
    assert_eq!((c.offset, c.records_after), (0, 10));
    assert!(c.what.contains("header"), "{}", c.what);
    let rep = persist::repair(d.path(), "s", 0).unwrap();
    assert_eq!(rep[0].records, 10);
    assert_eq!(restore(d.path(), "s").unwrap(), model(&ps));
}

#[test]
fn damage_at_the_end_of_a_log_is_a_torn_tail() {
    let ps = pairs(10, 3);
    // The last record fails its CRC, nothing after it: dropped, truncated.
    let d = TempDir::new("end");
    let spans = write_log(d.path(), "e", &ps);
    let wal = log_path(d.path(), "e");
    flip(&wal, spans[9].1 - 1);
    assert_eq!(restore(d.path(), "e").unwrap(), without(&ps, &[9]));
    assert_eq!(read(&wal).len() as u64, spans[9].0);
    // Cut short in the middle of the last record: the same.
    let d = TempDir::new("end");
    let spans = write_log(d.path(), "e", &ps);
    let wal = log_path(d.path(), "e");
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(spans[9].0 + 10).unwrap();
    drop(f);
    assert_eq!(restore(d.path(), "e").unwrap(), without(&ps, &[9]));
    // Garbage (zeros of a preallocated block) after the last record: dropped.
    let d = TempDir::new("end");
    write_log(d.path(), "e", &ps);
    let wal = log_path(d.path(), "e");
    let mut b = read(&wal);
    b.extend_from_slice(&[0; 4096]);
    std::fs::write(&wal, b).unwrap();
    assert_eq!(restore(d.path(), "e").unwrap(), model(&ps));
    // The restored log takes new records after the good ones.
    let mut w = Wal::open(d.path(), "e", 0, true, |_, _, _| Ok(())).unwrap();
    w.append(REC_PUT, b"new", b"1");
    w.sync().unwrap();
    drop(w);
    let mut m = model(&ps);
    m.insert(b"new".to_vec(), b"1".to_vec());
    assert_eq!(restore(d.path(), "e").unwrap(), m);
}

#[test]
fn inserted_garbage_zeroed_runs_and_lost_records_are_errors() {
    let ps = pairs(30, 4);
    // Garbage between two records: every record is intact.
    let d = TempDir::new("ins");
    let spans = write_log(d.path(), "g", &ps);
    let wal = log_path(d.path(), "g");
    let mut b = read(&wal);
    let at = spans[12].0 as usize;
    b.splice(at..at, (0..100u8).map(|i| i.wrapping_mul(37)));
    std::fs::write(&wal, b).unwrap();
    let c = refused(d.path(), "g");
    assert_eq!((c.offset, c.records_after), (spans[12].0, 18));
    let rep = persist::repair(d.path(), "g", 0).unwrap();
    assert_eq!((rep[0].skipped[0].bytes, rep[0].skipped[0].lost), (100, Some(0)));
    assert_eq!(restore(d.path(), "g").unwrap(), model(&ps));
    // A zeroed run across records 5..=7.
    let d = TempDir::new("zero");
    let spans = write_log(d.path(), "z", &ps);
    let wal = log_path(d.path(), "z");
    let mut b = read(&wal);
    b[spans[5].0 as usize + 3..spans[7].1 as usize - 2].fill(0);
    std::fs::write(&wal, b).unwrap();
    assert_eq!(refused(d.path(), "z").records_after, 22);
    let rep = persist::repair(d.path(), "z", 0).unwrap();
    assert_eq!(rep[0].skipped[0].lost, Some(3), "{rep:?}");
    assert_eq!(restore(d.path(), "z").unwrap(), without(&ps, &[5, 6, 7]));
    // Whole records cut out (the sequence numbers show the gap).
    let d = TempDir::new("gap");
    let spans = write_log(d.path(), "q", &ps);
    let wal = log_path(d.path(), "q");
    let mut b = read(&wal);
    b.drain(spans[3].0 as usize..spans[5].1 as usize);
    std::fs::write(&wal, b).unwrap();
    let c = refused(d.path(), "q");
    assert!(c.what.contains("sequence number"), "{}", c.what);
    let rep = persist::repair(d.path(), "q", 0).unwrap();
    assert_eq!((rep[0].skipped[0].bytes, rep[0].skipped[0].lost), (0, Some(3)));
    assert_eq!(restore(d.path(), "q").unwrap(), without(&ps, &[3, 4, 5]));
}

#[test]
fn any_damage_in_a_snapshot_is_an_error() {
    let ps = pairs(40, 5);
    type Damage = Box<dyn Fn(&mut Vec<u8>, &[(u64, u64)])>;
    let setups: Vec<(&str, Damage, Vec<usize>)> = vec![
        ("header", Box::new(|b, _| b[2] ^= 1), vec![]),
        ("first record", Box::new(|b, s| b[s[0].0 as usize + 26] ^= 1), vec![0]),
        ("middle", Box::new(|b, s| b[s[20].0 as usize + 1] ^= 4), vec![20]),
        ("last record", Box::new(|b, s| b[s[39].1 as usize - 1] ^= 4), vec![39]),
        ("end record", Box::new(|b, s| b[s[39].1 as usize + 2] ^= 4), vec![]),
        ("cut at a record boundary", Box::new(|b, s| b.truncate(s[30].0 as usize)), (30..40).collect()),
        ("cut in a record", Box::new(|b, s| b.truncate(s[39].0 as usize + 7)), vec![39]),
        ("bytes after the end", Box::new(|b, _| b.extend_from_slice(b"tail")), vec![]),
    ];
    for (what, damage, lost) in setups {
        let d = TempDir::new("snap");
        let spans = write_snapshot(d.path(), "n", &ps);
        let snap = snap_path(d.path(), "n");
        let mut b = read(&snap);
        damage(&mut b, &spans);
        std::fs::write(&snap, &b).unwrap();
        let c = refused(d.path(), "n");
        assert_eq!(c.path, snap, "{what}");
        let rep = persist::repair(d.path(), "n", 0).unwrap();
        assert!(rep[0].rewritten && rep[0].damaged_copy.is_some(), "{what}");
        assert_eq!(restore(d.path(), "n").unwrap(), without(&ps, &lost), "{what}");
    }
}

/// Restoring a snapshot of `n` records cut to `cut` bytes is refused, at
/// or before the cut; repair keeps every record wholly before it.
fn cut_snapshot_is_refused(n: usize, seed: u64, cut: usize) {
    let d = TempDir::new("cut");
    let ps = pairs(n, seed);
    let spans = write_snapshot(d.path(), "c", &ps);
    let snap = snap_path(d.path(), "c");
    let mut b = read(&snap);
    assert!(cut < b.len());
    b.truncate(cut);
    std::fs::write(&snap, &b).unwrap();
    let c = refused(d.path(), "c");
    assert_eq!(c.path, snap, "n {n}, cut {cut}");
    assert!(c.offset <= cut as u64, "n {n}, cut {cut}: damage reported at {}", c.offset);
    let msg = Error::PersistCorrupt(Box::new(c.clone())).to_string();
    assert!(msg.contains(&snap.display().to_string()) && msg.contains(&format!("byte {}", c.offset)), "{msg}");
    let rep = persist::repair(d.path(), "c", 0).unwrap();
    assert!(rep[0].rewritten && !rep[0].skipped.is_empty(), "n {n}, cut {cut}: {rep:?}");
    let kept = spans.iter().take_while(|s| s.1 <= cut as u64).count();
    assert_eq!(restore(d.path(), "c").unwrap(), model(&ps[..kept]), "n {n}, cut {cut}");
}

/// The case `prop_persist` found: a snapshot of 11 records cut to nothing
/// (`Truncate { at }` takes `at` modulo the length + 1, here 0) read as an
/// empty format-1 snapshot and was accepted, an empty DDict.
#[test]
fn a_snapshot_cut_to_nothing_is_refused() {
    let d = TempDir::new("cut0");
    let ps = pairs(11, 349817705568862264);
    write_snapshot(d.path(), "z", &ps);
    let snap = snap_path(d.path(), "z");
    let mut t = Tracked::new(read(&snap));
    t.apply(&Damage::Truncate { at: 9188284991206718152 });
    assert!(t.bytes.is_empty());
    std::fs::write(&snap, &t.bytes).unwrap();
    let c = refused(d.path(), "z");
    assert_eq!((c.path, c.offset, c.records_after, c.bytes_after), (snap.clone(), 0, 0, 0));
    assert!(c.what.contains("empty snapshot"), "{}", c.what);
    for n in [0, 1, 11] {
        cut_snapshot_is_refused(n, 349817705568862264, 0);
    }
}

/// A snapshot cut at any byte (to nothing, in its header, in a record, at a
/// record boundary, in the end record) is refused.
#[test]
fn a_snapshot_cut_anywhere_is_refused() {
    for (n, seed) in [(0, 7), (1, 8), (3, 349817705568862264)] {
        let d = TempDir::new("cutlen");
        write_snapshot(d.path(), "l", &pairs(n, seed));
        let len = read(&snap_path(d.path(), "l")).len();
        for cut in 0..len {
            cut_snapshot_is_refused(n, seed, cut);
        }
    }
}

#[test]
fn format_1_files_restore_and_are_rewritten() {
    let d = TempDir::new("v1");
    std::fs::create_dir_all(d.path()).unwrap();
    let ps = pairs(20, 6);
    let mut snap = Vec::new();
    for (k, v) in &ps[..10] {
        persist::encode_record_v1(&mut snap, REC_PUT, k, v);
    }
    let mut log = Vec::new();
    for (k, v) in &ps[10..] {
        persist::encode_record_v1(&mut log, REC_PUT, k, v);
    }
    persist::encode_record_v1(&mut log, REC_DELETE, &ps[0].0, b"");
    let torn = log.len();
    persist::encode_record_v1(&mut log, REC_CLEAR, b"", b"");
    log.truncate(torn + 6);
    std::fs::write(snap_path(d.path(), "o"), &snap).unwrap();
    std::fs::write(log_path(d.path(), "o"), &log).unwrap();
    let want = without(&ps, &[0]);
    assert_eq!(restore(d.path(), "o").unwrap(), want);
    // Both files are format 2 now, and restore to the same.
    for p in [snap_path(d.path(), "o"), log_path(d.path(), "o")] {
        assert_eq!(&read(&p)[..2], b"DD", "{}", p.display());
    }
    assert_eq!(restore(d.path(), "o").unwrap(), want);
    // A format-1 log damaged in the middle is refused, and repaired.
    let d = TempDir::new("v1bad");
    std::fs::create_dir_all(d.path()).unwrap();
    let mut log = Vec::new();
    let mut starts = Vec::new();
    for (k, v) in &ps {
        starts.push(log.len());
        persist::encode_record_v1(&mut log, REC_PUT, k, v);
    }
    log[starts[7] + 9] ^= 0x20;
    std::fs::write(log_path(d.path(), "o"), &log).unwrap();
    let c = refused(d.path(), "o");
    assert_eq!((c.offset, c.records_after), (starts[7] as u64, 12));
    let rep = persist::repair(d.path(), "o", 0).unwrap();
    assert_eq!((rep[0].version, rep[0].records), (1, 19));
    assert_eq!(restore(d.path(), "o").unwrap(), without(&ps, &[7]));
    // An empty format-1 snapshot (an empty DDict compacted) reads like a
    // snapshot cut to nothing: refused; repair keeps the log after it.
    let d = TempDir::new("v1empty");
    std::fs::create_dir_all(d.path()).unwrap();
    std::fs::write(snap_path(d.path(), "o"), b"").unwrap();
    let mut log = Vec::new();
    for (k, v) in &ps[..3] {
        persist::encode_record_v1(&mut log, REC_PUT, k, v);
    }
    std::fs::write(log_path(d.path(), "o"), &log).unwrap();
    let c = refused(d.path(), "o");
    assert_eq!((c.path, c.offset, c.bytes_after), (snap_path(d.path(), "o"), 0, 0));
    persist::repair(d.path(), "o", 0).unwrap();
    assert_eq!(restore(d.path(), "o").unwrap(), model(&ps[..3]));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn files_are_0600_and_created_directories_0700() {
    let d = TempDir::new("modes");
    std::fs::create_dir_all(d.path()).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = d.path().join("a").join("b");
    let ps = pairs(5, 7);
    write_snapshot(&dir, "p", &ps);
    let spans = write_log(&dir, "p", &ps);
    assert_eq!(mode(d.path()), 0o755, "an existing directory keeps its mode");
    assert_eq!(mode(&d.path().join("a")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&log_path(&dir, "p")), 0o600);
    // A log left world-readable by an older version is made private on open.
    std::fs::set_permissions(log_path(&dir, "p"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut w = Wal::open(&dir, "p", 0, true, |_, _, _| Ok(())).unwrap();
    assert_eq!(mode(&log_path(&dir, "p")), 0o600);
    w.compact(|put| ps.iter().for_each(|(k, v)| put(k, v))).unwrap();
    drop(w);
    assert_eq!(mode(&snap_path(&dir, "p")), 0o600);
    // Repaired files and the kept damaged copy too.
    write_log(&dir, "p", &ps);
    flip(&log_path(&dir, "p"), spans[1].0 + 1);
    let rep = persist::repair(&dir, "p", 0).unwrap();
    assert_eq!(mode(&log_path(&dir, "p")), 0o600);
    let fixed = rep.iter().find(|r| r.path == log_path(&dir, "p")).unwrap();
    assert_eq!(mode(fixed.damaged_copy.as_ref().unwrap()), 0o600);
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn shards_on_disk_lists_every_shard_of_a_name() {
    let d = TempDir::new("list");
    for i in [0, 2, 11] {
        drop(Wal::open(d.path(), "x", i, false, |_, _, _| Ok(())).unwrap());
    }
    drop(Wal::open(d.path(), "x_y", 1, false, |_, _, _| Ok(())).unwrap());
    std::fs::write(d.path().join("x.03.wal"), b"").unwrap();
    assert_eq!(persist::shards_on_disk(d.path(), "x").unwrap(), vec![0, 2, 11]);
}

#[test]
fn a_manager_refuses_a_damaged_log_and_serves_it_after_repair() {
    watchdog();
    let d = TempDir::new("mgr");
    let s = serve("mgrc", 1, 1 << 20, Some(d.path().to_owned()), false);
    let mut c = Client::attach(&s.desc).unwrap();
    for i in 0..40u32 {
        c.put(format!("k{i}").as_bytes(), &i.to_le_bytes()).unwrap();
    }
    drop(c);
    s.stop();
    let wal = d.path().join("mgrc.0.wal");
    let len = read(&wal).len() as u64;
    flip(&wal, len / 2);
    let segment = format!("{}dd-mgrc-bad", transport_shm::segment::RunId::current().prefix());
    let cfg = Config {
        segment: segment.clone(),
        id: 7,
        len: 1 << 20,
        index: 0,
        name: "mgrc".into(),
        owner: shm_primitives::ProcessId::current(),
        persist: Some(d.path().to_owned()),
        restore: true,
        compact_after: 4096,
        working_set: 1,
    };
    let e = manager::serve(&cfg, || panic!("a manager over a damaged log must not start")).unwrap_err();
    assert!(matches!(&e, Error::PersistCorrupt(c) if c.path == wal), "{e}");
    assert!(!Path::new(&format!("/dev/shm/{segment}")).exists());
    assert_eq!(read(&wal).len() as u64, len, "the damaged log was not truncated");
    let rep = persist::repair(d.path(), "mgrc", 0).unwrap();
    let lost = rep.iter().map(|r| r.skipped.iter().map(|s| s.lost.unwrap_or(0)).sum::<u64>()).sum::<u64>();
    assert_eq!(lost, 1);
    let s = serve("mgrc", 1, 1 << 20, Some(d.path().to_owned()), true);
    assert_eq!(Client::attach(&s.desc).unwrap().len().unwrap(), 39);
    s.stop();
}

#[test]
fn decoders_reject_what_they_cannot_read() {
    // A length field of 2 or 4 GiB in a small file is damage, not an
    // allocation (the format-1 reader used to allocate and zero it first).
    let before = common::fuzz::vm_peak();
    let mut b = persist::encode_header(Kind::Log, 5).to_vec();
    let mut rec = Vec::new();
    persist::encode_record(&mut rec, 5, REC_PUT, b"k", b"v").unwrap();
    rec[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = persist::crc32(&rec[8..24]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&rec);
    let s = persist::scan(&mut &b[..], Kind::Log, true, |_, _, _| Ok(())).unwrap();
    assert_eq!(s.records, 0);
    assert_eq!(s.torn_tail.map(|t| t.offset), Some(FILE_HEADER as u64));
    let mut v1 = Vec::new();
    persist::encode_record_v1(&mut v1, REC_PUT, b"k", b"v");
    let mut bad = v1.clone();
    bad[..4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    v1.extend_from_slice(&bad);
    let s = persist::scan(&mut &v1[..], Kind::Log, true, |_, _, _| Ok(())).unwrap();
    assert_eq!((s.version, s.records), (1, 1));
    let grew = common::fuzz::vm_peak() - before;
    assert!(grew < 256 << 20, "reading grew the peak memory by {grew} bytes");
}
