//! Fuzz target `wire`: the decoders of what a peer sends over RDMA and
//! during set-up (`wire::Address`, `wire::Header`, `wire::Descriptor`).
//! The first input byte says which; the rest is the bytes.
//!
//! What must hold: each decoder answers for any bytes, a clear error or a
//! value that encodes back to the same bytes, and allocates at most what
//! its format bounds (an address's fabric data: 512 bytes).

use proptest::prelude::*;
use test_support::fuzz::{fuzz, largest_allocation, Verdict};
use transport_verbs::wire::{Address, Descriptor, Header, ADDRESS_FIXED, HEADER, MAX_FABRIC};

#[global_allocator]
static ALLOC: test_support::fuzz::CountingAlloc = test_support::fuzz::CountingAlloc;

const MAX_MESSAGE: u64 = 1 << 34;

#[test]
fn fuzz_wire() {
    let pool = test_support::fuzz::corpus(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/wire"));
    fuzz("wire", pool, |b| {
        let Some((&which, p)) = b.split_first() else { return Ok(Verdict::Rejected) };
        let (verdict, big) = largest_allocation(|| -> Result<Verdict, TestCaseError> {
            match which % 3 {
                0 => match Address::decode(p) {
                    Ok(a) => {
                        prop_assert_eq!(&a.encode(), p);
                        Ok(Verdict::Accepted)
                    }
                    Err(e) => {
                        prop_assert!(!e.0.is_empty());
                        Ok(Verdict::Rejected)
                    }
                },
                1 => match Header::decode(p) {
                    Ok(h) => {
                        prop_assert_eq!(&h.encode()[..], &p[..HEADER]);
                        Ok(Verdict::Accepted)
                    }
                    Err(_) => Ok(Verdict::Rejected),
                },
                _ => match Descriptor::decode(p, MAX_MESSAGE) {
                    Ok(d) => {
                        prop_assert_eq!(&d.encode()[..], p);
                        prop_assert!(d.len > 0 && d.len <= MAX_MESSAGE);
                        Ok(Verdict::Accepted)
                    }
                    Err(_) => Ok(Verdict::Rejected),
                },
            }
        });
        prop_assert!(big <= ADDRESS_FIXED + MAX_FABRIC + 4096, "allocated {big} bytes");
        verdict
    });
}
