//! Handle parsing fed random bytes, truncations and damage, and channel
//! attachment over random memory: never a panic, and only valid bytes parse.

use channels_core::region::{HeapRegion, Region};
use channels_core::{Channel, ChannelOptions, Handle, HeapBacking, Kind, Roles};
use proptest::prelude::*;
use std::sync::Arc;

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

    #[test]
    fn attaching_to_random_memory_is_an_error_never_a_crash(
        fill in proptest::collection::vec(any::<u8>(), 4096),
        keep_magic in any::<bool>(),
        h in handle(),
    ) {
        // Random header contents, optionally with a correct magic and
        // version so that the field checks themselves are exercised.
        let region = HeapRegion::new(1 << 17);
        // SAFETY: the region is 128 KiB of plain memory owned here.
        unsafe { std::ptr::copy_nonoverlapping(fill.as_ptr(), region.base().as_ptr(), fill.len()) };
        if keep_magic {
            // SAFETY: in bounds; the first 12 bytes hold magic and version.
            unsafe {
                std::ptr::copy_nonoverlapping(b"DRGNCHAN".as_ptr(), region.base().as_ptr(), 8);
                std::ptr::copy_nonoverlapping(1u32.to_le_bytes().as_ptr(), region.base().as_ptr().add(8), 4);
            }
        }
        let r = Channel::attach_in(Arc::new(region), Box::new(HeapBacking::new("x")), &h, Roles::BOTH);
        prop_assert!(r.is_err());
    }
}

#[test]
fn a_real_channel_attaches_only_with_its_own_handle() {
    let ch = Channel::heap(&ChannelOptions::new()).unwrap();
    let good = ch.handle();
    let again = ch.attach_again(Roles::BOTH).unwrap();
    assert_eq!(again.handle(), good);
}
