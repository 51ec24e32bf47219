//! Two processes talking over shared-memory channels.
//!
//! Run with `cargo run --release -p transport-shm --example rust_two_process`.
//! The parent creates a request channel and a reply channel, starts a copy
//! of itself as the worker (passing the channels' handles as text), sends it
//! work, and reads the answers; one answer is a large message received
//! without a copy. Everything is destroyed at the end: nothing is left in
//! `/dev/shm`.

use std::time::Duration;
use transport_shm::channel::{self, ChannelOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "worker" {
        return worker(&args[2], &args[3]);
    }

    // 64 messages in flight at most; up to 232 bytes travel inline in a slot,
    // larger ones go to shared blocks created on demand.
    let opts = ChannelOptions::new().capacity(64).slot_size(256);
    let requests = channel::create(&opts)?;
    let replies = channel::create(&opts)?;

    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["worker", &requests.handle().to_text(), &replies.handle().to_text()])
        .spawn()?;

    for n in 1..=5u64 {
        requests.send(n.to_le_bytes())?;
        let answer = replies.recv_timeout(Duration::from_secs(10))?;
        let square = u64::from_le_bytes(answer[..8].try_into()?);
        println!("parent: {n}^2 = {square}");
    }

    // A 16 MiB reply arrives in a shared block: `into_bytes` does not copy,
    // and dropping the bytes gives the block back to the channel.
    requests.send(b"big")?;
    let big = replies.recv_timeout(Duration::from_secs(10))?;
    println!("parent: got {} bytes, zero-copy: {}", big.len(), big.is_zero_copy());
    let bytes = big.into_bytes();
    assert!(bytes.iter().all(|&b| b == 0xAB));
    drop(bytes);

    // No more requests: the worker drains what is left, sees the channel
    // closed and exits.
    requests.close();
    let status = child.wait()?;
    println!("parent: worker exited with {status}");

    requests.destroy();
    replies.destroy();
    Ok(())
}

fn worker(requests: &str, replies: &str) -> Result<(), Box<dyn std::error::Error>> {
    let requests = channel::attach_text(requests)?;
    let replies = channel::attach_text(replies)?;
    // `recv` fails with `Disconnected` once the channel is closed and empty.
    while let Ok(msg) = requests.recv() {
        if &*msg == b"big" {
            // Write the reply in place, straight into shared memory.
            replies.send_with(16 << 20, |buf| buf.fill(0xAB))?;
        } else {
            let n = u64::from_le_bytes(msg[..8].try_into()?);
            replies.send((n * n).to_le_bytes())?;
        }
    }
    println!("worker: requests closed, exiting");
    Ok(())
}
