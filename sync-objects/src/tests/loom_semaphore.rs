//! The semaphore: units are conserved and a release always reaches a
//! sleeper (Dekker handshake between the sleeper count and the value).

use super::super::Semaphore;
use super::region;
use loom::sync::Arc;

#[test]
fn loom_semaphore_no_lost_wakeup() {
    super::bounded(3).check(|| {
        // SAFETY: a fresh region used only by this semaphore.
        let s = Arc::new(unsafe { Semaphore::init(region(), 0, 1, 1, 0, None) }.unwrap());
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&s);
                loom::thread::spawn(move || s.acquire(None).unwrap())
            })
            .collect();
        s.release().unwrap();
        s.release().unwrap();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(s.value(), 0);
        assert_eq!(s.sleepers(), 0);
    });
}

#[test]
fn loom_semaphore_bounded_conserves_units() {
    loom::model(|| {
        // SAFETY: a fresh region used only by this semaphore.
        let s = Arc::new(unsafe { Semaphore::init(region(), 0, 1, 1, 1, Some(1)) }.unwrap());
        let s2 = Arc::clone(&s);
        let t = loom::thread::spawn(move || {
            let got = s2.try_acquire();
            if got {
                s2.release().unwrap();
            }
            got
        });
        let got = s.try_acquire();
        if got {
            s.release().unwrap();
        }
        t.join().unwrap();
        assert_eq!(s.value(), 1);
        assert!(s.release().is_err());
    });
}
