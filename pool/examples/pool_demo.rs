//! A pool of worker processes running a registered function.
//!
//! `cargo run --release -p pool --example pool_demo`: starts 3 workers
//! (copies of this program), maps a function over 12 inputs, prints each
//! result with the worker that computed it, submits one task that fails,
//! and closes the pool.
use pool::{Functions, Pool};

/// The number of steps the Collatz sequence from `n` takes to reach 1,
/// and the pid of the worker that counted them.
fn collatz(arg: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(arg).map_err(|e| e.to_string())?;
    let mut n: u64 = text.parse().map_err(|_| format!("not a number: {text:?}"))?;
    if n == 0 {
        return Err("the sequence starts at 1 or above".into());
    }
    let mut steps = 0u32;
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    Ok(format!("{steps} {}", std::process::id()).into_bytes())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let funcs = Functions::new().register("collatz", collatz);
    funcs.serve_if_worker();

    let pool = Pool::new(&funcs, 3)?;
    println!("pool of {} workers: pids {:?}", pool.size(), pool.worker_pids());
    let inputs: Vec<String> =
        [27u64, 97, 871, 6171, 77031, 837799, 1, 2, 3, 7, 9, 63_728_127].iter().map(u64::to_string).collect();
    for (input, result) in inputs.iter().zip(pool.map("collatz", &inputs)?) {
        let text = String::from_utf8(result?)?;
        let (steps, pid) = text.split_once(' ').unwrap_or((&text, "?"));
        println!("collatz({input}) takes {steps} steps (worker {pid})");
    }
    match pool.submit("collatz", b"0")?.wait() {
        Ok(_) => println!("unexpected success"),
        Err(e) => println!("collatz(0): {e}"),
    }
    pool.close();
    println!("pool closed");
    Ok(())
}
