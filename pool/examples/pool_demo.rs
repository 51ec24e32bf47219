//! A pool of worker processes running a registered function.
//!
//! `cargo run --release -p pool --example pool_demo`: starts 3 workers
//! (copies of this program), maps a function over 8 inputs, prints each
//! result with the worker that computed it, submits one task that fails,
//! and closes the pool.
use pool::{Functions, Pool};

/// Steps the Collatz sequence from `n` takes to reach 1.
fn steps(mut n: u64) -> u32 {
    let mut s = 0;
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        s += 1;
    }
    s
}

/// The start below the limit (decimal text) with the longest Collatz
/// sequence: "<start> <steps> <pid of the worker>".
fn longest(arg: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(arg).map_err(|e| e.to_string())?;
    let limit: u64 = text.parse().map_err(|_| format!("not a number: {text:?}"))?;
    if limit < 2 {
        return Err(format!("no start below {limit}"));
    }
    let (start, most) = (1..limit).map(|n| (n, steps(n))).max_by_key(|&(_, s)| s).expect("a start");
    Ok(format!("{start} {most} {}", std::process::id()).into_bytes())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let funcs = Functions::new().register("longest", longest);
    funcs.serve_if_worker(); // in a worker: runs tasks, then exits

    let pool = Pool::new(&funcs, 3)?;
    println!("pool of {} workers: pids {:?}", pool.size(), pool.worker_pids());
    let limits: Vec<String> = (1..=8u64).map(|k| (k * 100_000).to_string()).collect();
    for (limit, result) in limits.iter().zip(pool.map("longest", &limits)?) {
        let text = String::from_utf8(result?)?;
        let f: Vec<&str> = text.split(' ').collect();
        println!("below {limit:>7}: {:>6} takes {:>3} steps (worker {})", f[0], f[1], f[2]);
    }
    match pool.submit("longest", b"1")?.wait() {
        Ok(_) => println!("unexpected success"),
        Err(e) => println!("below 1: {e}"),
    }
    pool.close();
    println!("pool closed");
    Ok(())
}
