//! Handle parsing fed random bytes, truncations and damage: never a panic,
//! and only valid bytes parse. (Attaching to random memory by handle:
//! `channels-core/tests/prop_attach.rs`.)

use proptest::prelude::*;
use shm_primitives::{Handle, Kind};

fn handle() -> impl Strategy<Value = Handle> {
    (any::<u64>(), any::<u64>(), any::<u32>(), "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,60}", "[ -~]{0,40}").prop_map(
        |(id, generation, node, segment, address)| Handle {
            kind: Kind::Channel,
            id,
            generation,
            offset: 0,
            node,
            segment,
            address,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_parses_or_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        // A random byte string is a valid handle only if its CRC matches,
        // which proptest will not stumble on; it must never panic.
        let r = Handle::from_bytes(&bytes);
        if let Ok(h) = r {
            prop_assert_eq!(&h.to_bytes(), &bytes);
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = Handle::from_text(&text);
    }

    #[test]
    fn valid_handles_round_trip_and_every_truncation_fails(h in handle()) {
        let b = h.to_bytes();
        prop_assert_eq!(&Handle::from_bytes(&b).unwrap(), &h);
        prop_assert_eq!(&Handle::from_text(&h.to_text()).unwrap(), &h);
        for cut in 0..b.len() {
            prop_assert!(Handle::from_bytes(&b[..cut]).is_err());
        }
        let t = h.to_text();
        for cut in 0..t.len() {
            prop_assert!(Handle::from_text(&t[..cut]).is_err());
        }
    }

    #[test]
    fn any_single_byte_damage_is_rejected(h in handle(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut b = h.to_bytes();
        let i = at.index(b.len());
        b[i] ^= flip;
        prop_assert!(Handle::from_bytes(&b).is_err());
    }
}
