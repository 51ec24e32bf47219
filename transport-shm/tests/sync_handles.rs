//! Attaching by handle fails clearly on garbage, forged, stale, remote and
//! wrong-kind handles, and never touches the wrong memory.

mod sync_common;

use shm_primitives::handle::{Handle, HandleError, Kind};
use sync_common::{exists, Scratch, Unlink};
use sync_objects::ObjectError;
use transport_shm::{ShmBarrier, ShmCondition, ShmEvent, ShmLock, ShmRLock, ShmSemaphore, SyncShmError};

#[test]
fn every_kind_round_trips_and_is_destroyed() {
    sync_common::watchdog();
    let l = ShmLock::create().unwrap();
    let r = ShmRLock::create().unwrap();
    let s = ShmSemaphore::create(3, Some(5)).unwrap();
    let e = ShmEvent::create().unwrap();
    let c = ShmCondition::create().unwrap();
    let b = ShmBarrier::create(7).unwrap();
    let handles = [l.handle(), r.handle(), s.handle(), e.handle(), c.handle(), b.handle()];
    let _g = Unlink::of(&handles);
    assert_eq!(
        handles.iter().map(|h| h.kind).collect::<Vec<_>>(),
        [Kind::Lock, Kind::RLock, Kind::Semaphore, Kind::Event, Kind::Condition, Kind::Barrier]
    );
    assert!(ShmLock::attach_bytes(&l.handle().to_bytes()).is_ok());
    assert!(ShmRLock::attach_text(&r.handle().to_text()).is_ok());
    let s2 = ShmSemaphore::attach(s.handle()).unwrap();
    assert_eq!((s2.value(), s2.max()), (3, Some(5)));
    assert!(ShmEvent::attach(e.handle()).is_ok());
    assert_eq!(ShmCondition::attach(c.handle()).unwrap().capacity(), c.capacity());
    assert_eq!(ShmBarrier::attach(b.handle()).unwrap().parties(), 7);
    for h in handles {
        transport_shm::segment::unlink(&h.segment).unwrap();
        assert!(!exists(&h.segment));
    }
}

#[test]
fn stale_handle_of_a_destroyed_object() {
    sync_common::watchdog();
    let l = ShmLock::create().unwrap();
    let _g = Unlink::of(&[l.handle()]);
    l.destroy().unwrap();
    let err = ShmLock::attach(l.handle()).unwrap_err();
    assert!(matches!(err, SyncShmError::Destroyed { .. }), "{err}");
    assert!(err.to_string().contains("destroyed"));
}

#[test]
fn forged_and_wrong_kind_handles() {
    sync_common::watchdog();
    let l = ShmLock::create().unwrap();
    let _g = Unlink::of(&[l.handle()]);
    let h = l.handle().clone();

    let err = ShmEvent::attach(&h).unwrap_err();
    assert!(matches!(err, SyncShmError::Handle(HandleError::WrongKind { .. })), "{err}");
    let err = ShmEvent::attach_text(&h.to_text()).unwrap_err();
    assert!(matches!(err, SyncShmError::Handle(HandleError::WrongKind { .. })), "{err}");

    // A well-formed handle claiming the lock's segment holds an event.
    let lie = Handle { kind: Kind::Event, ..h.clone() };
    let err = ShmEvent::attach(&lie).unwrap_err();
    assert!(matches!(err, SyncShmError::Object(ObjectError::WrongKind { expected: Kind::Event, found: 2 })), "{err}");

    let err = ShmLock::attach(&Handle { id: h.id ^ 1, ..h.clone() }).unwrap_err();
    assert!(matches!(err, SyncShmError::Object(ObjectError::IdMismatch { .. })), "{err}");
    let err = ShmLock::attach(&Handle { generation: 2, ..h.clone() }).unwrap_err();
    assert!(matches!(err, SyncShmError::Object(ObjectError::GenerationMismatch { .. })), "{err}");
    let err = ShmLock::attach(&Handle { offset: 64, ..h.clone() }).unwrap_err();
    assert!(matches!(err, SyncShmError::Object(ObjectError::BadMagic { found: 0 })), "{err}");
    let err = ShmLock::attach(&Handle { offset: 1 << 40, ..h.clone() }).unwrap_err();
    assert!(matches!(err, SyncShmError::Object(ObjectError::OutOfBounds { .. })), "{err}");
    let err = ShmLock::attach(&Handle { offset: 8, ..h.clone() }).unwrap_err();
    assert!(matches!(err, SyncShmError::Object(ObjectError::Misaligned { .. })), "{err}");
    let err = ShmLock::attach(&Handle { address: "10.0.0.2:7000".into(), ..h.clone() }).unwrap_err();
    assert!(matches!(err, SyncShmError::NotLocal { .. }), "{err}");

    // The lock still works after all that.
    l.acquire(None).unwrap();
    l.release().unwrap();
    l.destroy().unwrap();
}

#[test]
fn garbage_handles() {
    sync_common::watchdog();
    for text in ["", "!!!!", "AAAA", "not a handle at all"] {
        let err = ShmLock::attach_text(text).unwrap_err();
        assert!(matches!(err, SyncShmError::Handle(_)), "{text}: {err}");
    }
    for bytes in [&b""[..], b"DRGH", b"\x00\x01\x02\x03\x04\x05\x06\x07"] {
        let err = ShmLock::attach_bytes(bytes).unwrap_err();
        assert!(matches!(err, SyncShmError::Handle(_)), "{err}");
    }
    let l = ShmLock::create().unwrap();
    let _g = Unlink::of(&[l.handle()]);
    let mut b = l.handle().to_bytes();
    let n = b.len();
    b[n / 2] ^= 0x40;
    assert!(matches!(ShmLock::attach_bytes(&b), Err(SyncShmError::Handle(_))));
    assert!(matches!(ShmLock::attach_bytes(&b[..n - 3]), Err(SyncShmError::Handle(HandleError::Truncated))));
    l.destroy().unwrap();
}

#[test]
fn handle_to_memory_that_holds_no_object() {
    sync_common::watchdog();
    let scratch = Scratch::create();
    let h = Handle {
        kind: Kind::Lock,
        id: 1,
        generation: 1,
        offset: 0,
        node: 0,
        segment: scratch.name(),
        address: String::new(),
    };
    let err = ShmLock::attach(&h).unwrap_err();
    assert!(matches!(err, SyncShmError::Object(ObjectError::BadMagic { found: 0 })), "{err}");
    // Random bytes in place of the object: still a clear error.
    for i in 0..512 {
        scratch.set(i, (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    let err = ShmCondition::attach(&Handle { kind: Kind::Condition, ..h.clone() }).unwrap_err();
    assert!(matches!(err, SyncShmError::Object(ObjectError::BadMagic { .. })), "{err}");
    let err = ShmLock::attach(&Handle { segment: "dragon-no-such-segment".into(), ..h }).unwrap_err();
    assert!(matches!(err, SyncShmError::Destroyed { .. }), "{err}");
}
