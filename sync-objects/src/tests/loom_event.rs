//! The event: a waiter always sees a set, even one cleared again at once.

use super::super::{Event, Waiter};
use super::region;
use loom::sync::Arc;

#[test]
fn loom_event_set_wakes_waiter() {
    loom::model(|| {
        // SAFETY: a fresh region used only by this event.
        let e = Arc::new(unsafe { Event::init(region(), 0, 1, 1) }.unwrap());
        let e2 = Arc::clone(&e);
        let t = loom::thread::spawn(move || e2.wait(None));
        e.set();
        assert!(t.join().unwrap());
        assert!(e.is_set());
    });
}

#[test]
fn loom_event_pulse_is_not_missed() {
    loom::model(|| {
        // SAFETY: a fresh region used only by this event.
        let e = Arc::new(unsafe { Event::init(region(), 0, 1, 1) }.unwrap());
        let e2 = Arc::clone(&e);
        // The waiter's wait starts (reads the word) before the pulse.
        let v0 = e.snapshot();
        let t = loom::thread::spawn(move || e2.wait_since(v0, &mut Waiter::forever()));
        e.set();
        e.clear();
        assert_eq!(t.join().unwrap(), Ok(true), "a waiter that started before the set returns true");
        assert!(!e.is_set());
    });
}
