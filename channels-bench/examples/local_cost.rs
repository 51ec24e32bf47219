//! The cost of one `try_send` + `try_recv` of an 8-byte message on one
//! thread: the instructions and locked operations of the fast paths, with
//! no cache line crossing between cores (everything stays in one core's
//! cache). The spinning round trip pays this twice (once per direction) on
//! top of the cache-line transfers.
//!
//! ```sh
//! cargo run --release --example local_cost            # ns per send + receive
//! valgrind --tool=callgrind target/.../local_cost 100000   # instructions
//! ```

use channels_core::{Channel, ChannelOptions};
use std::time::Instant;

fn main() {
    let ch = Channel::heap(&ChannelOptions::new().capacity(64).slot_size(64)).unwrap();
    let msg = [7u8; 8];
    let one = || {
        ch.try_send(msg).unwrap();
        std::hint::black_box(ch.try_recv().unwrap());
    };
    if let Some(n) = std::env::args().nth(1) {
        // A fixed count, for instruction counting.
        for _ in 0..n.parse::<u64>().expect("a count") {
            one();
        }
        return;
    }
    for round in 0..5 {
        let n = 2_000_000;
        let t = Instant::now();
        for _ in 0..n {
            one();
        }
        let pair = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(ch.try_recv().is_err());
        }
        let empty = t.elapsed().as_nanos() as f64 / n as f64;
        println!("round {round}: try_send + try_recv {pair:.1} ns; try_recv on an empty channel {empty:.1} ns");
    }
}
