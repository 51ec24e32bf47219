//! A Rust program that uses the `pool` and `queues` crates together, with
//! no Python: a pool of worker processes (copies of this program) counts
//! the words of text chunks, each worker reports what it did on a `Queue`
//! whose handle travels in the task's argument bytes, and the parent reads
//! those reports beside the results.
//!
//! `cargo run --release -p docs --example rust_service` (run by `make demo`).
use pool::{Functions, Pool};
use queues::{Queue, QueueHandle};
use std::time::Duration;

/// A task: `<progress queue handle>\n<text>`; its result: the word count.
fn count_words(arg: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(arg).map_err(|e| e.to_string())?;
    let (handle, chunk) = text.split_once('\n').ok_or("no progress queue in the task")?;
    let handle: QueueHandle = handle.parse().map_err(|e| format!("{e}"))?;
    let progress = Queue::attach(&handle).map_err(|e| e.to_string())?;
    let words = chunk.split_whitespace().count();
    let first = chunk.split_whitespace().next().unwrap_or("");
    let note = format!("worker {} counted {words} words starting with {first:?}", std::process::id());
    progress.put(note.as_bytes(), None).map_err(|e| e.to_string())?;
    // Dropping the queue waits until the note is in the channel.
    Ok(words.to_string().into_bytes())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let funcs = Functions::new().register("count_words", count_words);
    funcs.serve_if_worker(); // in a worker: runs tasks, then exits

    let progress = Queue::new(0)?;
    let text = "the quick brown fox jumps over the lazy dog ".repeat(40);
    let words: Vec<&str> = text.split_whitespace().collect();
    let chunks: Vec<String> = words.chunks(50).map(|c| c.join(" ")).collect();
    let tasks: Vec<String> = chunks.iter().map(|c| format!("{}\n{c}", progress.handle())).collect();

    let pool = Pool::new(&funcs, 3)?;
    println!("pool of {} workers: pids {:?}", pool.size(), pool.worker_pids());
    let results = pool.map("count_words", &tasks)?;
    for _ in 0..tasks.len() {
        let note = progress.get(Some(Duration::from_secs(60)))?;
        println!("progress: {}", String::from_utf8_lossy(note.payload()));
    }
    let mut total = 0;
    for r in results {
        total += String::from_utf8(r?)?.parse::<usize>()?;
    }
    println!("{} chunks, {total} words in all ({} expected)", tasks.len(), words.len());
    pool.close();
    Ok(())
}
