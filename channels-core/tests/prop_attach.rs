//! Channel attachment by handle over random memory: never a panic, only an
//! error; a real channel attaches with its own handle.

use channels_core::{Channel, ChannelOptions, HeapBacking, Roles};
use proptest::prelude::*;
use shm_primitives::{Handle, HeapRegion, Kind, Region};
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
