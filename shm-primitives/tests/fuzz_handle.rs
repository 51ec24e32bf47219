//! Fuzz target `handle`: handle decoding, bytes and text form.
//!
//! Mutants of valid handles are parsed as they are (almost all then fail
//! their checksum) and once more with the checksum recomputed where the
//! declared lengths put it, so the checks behind the checksum (kind, flags,
//! segment name, address) see damaged fields too. Whatever is accepted
//! encodes back to the very same bytes and text; whatever is refused is a
//! `HandleError` with a message. Never a panic, a hang, or an allocation
//! beyond a few times the input.

use proptest::prelude::*;
use shm_primitives::handle::crc32;
use shm_primitives::{Handle, HandleError, Kind};
use test_support::fuzz::{fuzz, largest_allocation, Verdict};

#[global_allocator]
static ALLOC: test_support::fuzz::CountingAlloc = test_support::fuzz::CountingAlloc;

const KINDS: [Kind; 9] = [
    Kind::Channel,
    Kind::Lock,
    Kind::RLock,
    Kind::Semaphore,
    Kind::Event,
    Kind::Barrier,
    Kind::Condition,
    Kind::Memory,
    Kind::DDict,
];

/// Valid handles made here, beside the committed corpus.
fn generated() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, kind) in KINDS.into_iter().enumerate() {
        let h = Handle {
            kind,
            id: 1 << (7 * i),
            generation: i as u64,
            offset: 4096 * i as u64,
            node: i as u32,
            segment: format!("dragon-{i}-gen.{}", "x".repeat(i * 20)),
            address: if i % 2 == 0 { String::new() } else { format!("host-{i}:{}", 7000 + i) },
        };
        out.push(h.to_bytes());
    }
    out
}

/// The bytes with the checksum recomputed where the declared lengths put
/// it, if they fit.
fn with_fixed_crc(b: &[u8]) -> Option<Vec<u8>> {
    let n = *b.get(36)? as usize;
    let m = *b.get(37 + n)? as usize;
    let crc_at = 38 + n + m;
    let mut v = b.get(..crc_at)?.to_vec();
    v.extend_from_slice(&crc32(&v).to_le_bytes());
    Some(v)
}

/// Parse `b`; check what must hold of the result.
fn parse(b: &[u8]) -> Result<Verdict, TestCaseError> {
    let (r, big) = largest_allocation(|| Handle::from_bytes(b));
    prop_assert!(big <= 64 + 4 * b.len(), "parsing {} bytes allocated {big} at once", b.len());
    match r {
        Ok(h) => {
            prop_assert_eq!(&h.to_bytes(), b, "accepted bytes that do not encode back");
            prop_assert_eq!(Handle::from_text(&h.to_text()), Ok(h.clone()));
            for k in KINDS {
                let of = Handle::from_bytes_of(b, k);
                if k == h.kind {
                    prop_assert_eq!(of, Ok(h.clone()));
                } else {
                    prop_assert_eq!(of, Err(HandleError::WrongKind { expected: k, found: h.kind }));
                }
            }
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            Ok(Verdict::Rejected)
        }
    }
}

/// Parse `t` as the text form; accepted text is the canonical text of
/// what it names.
fn parse_text(t: &str) -> Result<bool, TestCaseError> {
    let (r, big) = largest_allocation(|| Handle::from_text(t));
    prop_assert!(big <= 64 + 4 * t.len(), "parsing {} characters allocated {big} at once", t.len());
    match r {
        Ok(h) => {
            prop_assert_eq!(h.to_text(), t, "accepted text that is not the canonical text");
            Ok(true)
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            Ok(false)
        }
    }
}

fn base64url(data: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let v =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn fuzz_handle() {
    let corpus = test_support::fuzz::corpus(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/handle"));
    for (i, b) in corpus.iter().enumerate() {
        Handle::from_bytes(b).unwrap_or_else(|e| panic!("corpus handle {i} is not valid: {e}"));
    }
    let mut pool = corpus;
    pool.extend(generated());
    fuzz("handle", pool, |b| {
        let mut verdict = parse(b)?;
        if let Some(fixed) = with_fixed_crc(b) {
            if parse(&fixed)? == Verdict::Accepted {
                verdict = Verdict::Accepted;
            }
        }
        // The text form: of these bytes (it names the same handle, or the
        // same error), and the bytes themselves read as text.
        let t = base64url(b);
        prop_assert_eq!(Handle::from_text(&t), Handle::from_bytes(b));
        parse_text(&t)?;
        parse_text(&String::from_utf8_lossy(b))?;
        Ok(verdict)
    });
}
