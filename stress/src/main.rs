#![forbid(unsafe_code)]
//! `stress`: soak and crash-injection runs. See `docs/stress.md`.

use std::process::Command;
use std::time::{Duration, Instant};
use stress::{Opts, Summary};

const USAGE: &str = "\
usage: stress <channel|sync|ddict|lend|all> [options]

  --seconds S        how long the chaos runs (default 10; for `all`, per scenario)
  --iterations N     stop after N kills even if time remains
  --seed X           seed of every random choice (default: from the clock; printed)
  --workers N        producers (channel, lend), lockers (sync), clients (ddict)
  --consumers M      consumers (channel, lend), managers (ddict)
  --kill-every-ms T  mean time between kills (default per scenario)
  -v, --verbose      progress on stderr

Prints one JSON summary line per scenario; exits 1 on any violation, hang or
leak (2 if the run itself hung and its watchdog ended it).";

/// Default (workers, consumers/managers, kill interval in ms).
type Defaults = (usize, usize, u64);
type Scenario = fn(&Opts, &mut Summary);

struct Args {
    scenario: String,
    seconds: f64,
    iterations: Option<u64>,
    seed: Option<u64>,
    workers: Option<usize>,
    consumers: Option<usize>,
    kill_every_ms: Option<u64>,
    verbose: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    let scenario = it.next().ok_or("no scenario given")?.clone();
    let mut a = Args {
        scenario,
        seconds: 10.0,
        iterations: None,
        seed: None,
        workers: None,
        consumers: None,
        kill_every_ms: None,
        verbose: false,
    };
    while let Some(flag) = it.next() {
        if flag == "-v" || flag == "--verbose" {
            a.verbose = true;
            continue;
        }
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || val.parse::<u64>().map_err(|_| format!("{flag}: not a whole number: {val}"));
        match flag.as_str() {
            "--seconds" => {
                a.seconds = val.parse().map_err(|_| format!("--seconds: not a number: {val}"))?;
                if !(a.seconds.is_finite() && a.seconds >= 0.0) {
                    return Err(format!("--seconds must be a non-negative number, not {val}"));
                }
            }
            "--iterations" => a.iterations = Some(num()?),
            "--seed" => a.seed = Some(num()?),
            "--workers" => a.workers = Some(num()?.clamp(1, 64) as usize),
            "--consumers" => a.consumers = Some(num()?.clamp(1, 64) as usize),
            "--kill-every-ms" => a.kill_every_ms = Some(num()?.max(1)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

fn clock_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    stress::Rng::derive(t, u64::from(std::process::id())).next_u64()
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("worker") {
        stress::worker_guard();
        let role = stress::env(stress::ROLE_ENV);
        let code = match role.as_str() {
            "producer" => stress::channel::producer(),
            "consumer" => stress::channel::consumer(),
            "locker" => stress::sync::worker(),
            "lend-producer" => stress::lend::producer(),
            "lend-forwarder" => stress::lend::forwarder(),
            "lend-consumer" => stress::lend::consumer(),
            r => stress::ddict_scenario::worker(r),
        };
        std::process::exit(code);
    }
    let a = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stress: {e}\n\n{USAGE}");
            std::process::exit(64);
        }
    };
    let seed = a.seed.unwrap_or_else(clock_seed);
    if a.scenario == "all" {
        // Each scenario in its own process: its own run id, watchdog and
        // summary line.
        let mut failed = false;
        for sc in ["channel", "sync", "ddict", "lend"] {
            let mut cmd = Command::new(std::env::current_exe().expect("own executable"));
            cmd.args([sc, "--seconds", &a.seconds.to_string(), "--seed", &seed.to_string()]);
            for (flag, v) in [
                ("--iterations", a.iterations),
                ("--workers", a.workers.map(|n| n as u64)),
                ("--consumers", a.consumers.map(|n| n as u64)),
                ("--kill-every-ms", a.kill_every_ms),
            ] {
                if let Some(v) = v {
                    cmd.args([flag, &v.to_string()]);
                }
            }
            if a.verbose {
                cmd.arg("-v");
            }
            let ok = cmd.status().is_ok_and(|s| s.success());
            failed |= !ok;
        }
        std::process::exit(i32::from(failed));
    }
    let (defaults, run): (Defaults, Scenario) = match a.scenario.as_str() {
        "channel" => ((3, 2, 200), stress::channel::run),
        "sync" => ((5, 0, 300), stress::sync::run),
        "ddict" => ((4, 2, 300), stress::ddict_scenario::run),
        "lend" => ((2, 2, 200), stress::lend::run),
        other => {
            eprintln!("stress: unknown scenario {other:?}\n\n{USAGE}");
            std::process::exit(64);
        }
    };
    let opts = Opts {
        duration: Duration::from_secs_f64(a.seconds),
        iterations: a.iterations,
        seed,
        workers: a.workers.unwrap_or(defaults.0),
        workers2: a.consumers.unwrap_or(defaults.1),
        kill_every: Duration::from_millis(a.kill_every_ms.unwrap_or(defaults.2)),
        verbose: a.verbose,
    };
    let name: &'static str = match a.scenario.as_str() {
        "channel" => "channel",
        "sync" => "sync",
        "lend" => "lend",
        _ => "ddict",
    };
    eprintln!("stress {name}: seed {seed} (replay: stress {name} --seed {seed} --seconds {})", a.seconds);
    let mut sum = Summary::new(name, seed);
    let start = Instant::now();
    run(&opts, &mut sum);
    sum.duration_s = start.elapsed().as_secs_f64();
    println!("{}", sum.to_json());
    std::process::exit(i32::from(!sum.violations.is_empty()));
}
