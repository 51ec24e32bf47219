//! Fuzz target `frame`: decoding a TCP stream into frames.
//!
//! Mutants of valid streams (handshake frames, every request, replies) are
//! decoded whole and in pieces. What must hold: the same frames and the
//! same error whichever way the bytes arrive; an error exactly where a
//! length field is below the header or above `MAX_FRAME`; every frame
//! encodes back to the bytes it came from; allocation bounded by
//! `MAX_FRAME` whatever the input claims.

use bytes::BytesMut;
use proptest::prelude::*;
use test_support::fuzz::{fuzz, largest_allocation, Verdict};
use transport_tcp::frame::{self, Frame, FrameError, HEADER, MAX_FRAME};

#[global_allocator]
static ALLOC: test_support::fuzz::CountingAlloc = test_support::fuzz::CountingAlloc;

/// Frames off `buf` until it needs more bytes or fails.
fn drain(buf: &mut BytesMut, out: &mut Vec<Frame>) -> Result<(), FrameError> {
    while let Some(f) = frame::decode(buf)? {
        out.push(f);
    }
    Ok(())
}

/// What a decoder must make of `b`: the frames, then the error (if a
/// length field is out of bounds) or the incomplete tail's length.
fn model(b: &[u8]) -> (Vec<Frame>, Result<usize, FrameError>) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &b[at..];
        if rest.len() < 4 {
            return (frames, Ok(rest.len()));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if len < HEADER {
            return (frames, Err(FrameError::TooShort(len)));
        }
        if len > MAX_FRAME {
            return (frames, Err(FrameError::TooLong(len)));
        }
        if rest.len() < 4 + len {
            return (frames, Ok(rest.len()));
        }
        let id = u64::from_le_bytes(rest[5..13].try_into().unwrap());
        frames.push(Frame { kind: rest[4], id, payload: rest[13..4 + len].to_vec().into() });
        at += 4 + len;
    }
}

fn valid_streams() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for n in [0usize, 1, 8, 255, 1024, 70_000] {
        let mut b = BytesMut::new();
        frame::encode(&mut b, 0x80, n as u64, &vec![n as u8; n]);
        frame::encode(&mut b, 0x82, 0, &[]);
        out.push(b.to_vec());
    }
    out
}

#[test]
fn fuzz_frame() {
    let corpus = test_support::fuzz::corpus(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/frame"));
    for (i, b) in corpus.iter().enumerate() {
        let (frames, end) = model(b);
        assert!(!frames.is_empty() && end == Ok(0), "corpus stream {i} is not whole frames");
    }
    let mut pool = corpus;
    pool.extend(valid_streams());
    fuzz("frame", pool, |b| {
        let (want, end) = model(b);
        // Whole.
        let mut buf = BytesMut::from(b);
        let mut got = Vec::new();
        let (r, big) = largest_allocation(|| drain(&mut buf, &mut got));
        // A frame's buffer is reserved when its header arrives: at most
        // one frame's worth (BytesMut may round up to twice that).
        prop_assert!(big <= 2 * (4 + MAX_FRAME) + 2 * b.len(), "decoding allocated {big} bytes at once");
        prop_assert_eq!(&got, &want);
        match &end {
            Ok(tail) => {
                prop_assert!(r.is_ok());
                prop_assert_eq!(buf.len(), *tail, "the incomplete tail stays in the buffer");
            }
            Err(e) => {
                prop_assert_eq!(r.as_ref(), Err(e));
                prop_assert!(!e.to_string().is_empty());
            }
        }
        // Each frame encodes back to its bytes.
        let mut again = BytesMut::new();
        for f in &got {
            frame::encode(&mut again, f.kind, f.id, &f.payload);
        }
        prop_assert_eq!(&again[..], &b[..again.len()]);
        // In pieces (cut where the bytes themselves say): the same frames
        // and the same end.
        let mut buf = BytesMut::new();
        let mut got2 = Vec::new();
        let mut r2 = Ok(());
        let mut at = 0;
        let mut i = 0;
        while at < b.len() && r2.is_ok() {
            let n = (usize::from(b[i % b.len()]) % 17 + 1).min(b.len() - at);
            buf.extend_from_slice(&b[at..at + n]);
            at += n;
            i += 1;
            r2 = drain(&mut buf, &mut got2);
        }
        prop_assert_eq!(&got2, &want);
        prop_assert_eq!(r2.is_ok(), end.is_ok());
        Ok(if end == Ok(0) { Verdict::Accepted } else { Verdict::Rejected })
    });
}
