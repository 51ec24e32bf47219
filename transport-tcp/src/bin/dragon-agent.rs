//! `dragon-agent`: serve this node's channels to other nodes over TCP.
//!
//! ```text
//! DRAGON_RUN_SECRET=<64 hex digits> dragon-agent --listen <host:port>
//! ```
//!
//! The secret comes from the environment, never the command line (which
//! other users can read). Once listening, the agent prints
//! `listening <host:port>` on stdout (port 0 picks a free port, so this is
//! how the launcher learns it), then serves until its standard input is
//! closed: when the launcher (ssh, srun, or the test) goes away, so does
//! the agent.

use std::io::{Read, Write};
use std::net::SocketAddr;
use transport_tcp::{Agent, Secret};

const USAGE: &str = "usage: DRAGON_RUN_SECRET=<64 hex digits> dragon-agent --listen <host:port>";

fn fail(msg: &str) -> ! {
    eprintln!("dragon-agent: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = match args.as_slice() {
        [flag, addr] if flag == "--listen" => {
            addr.parse::<SocketAddr>().unwrap_or_else(|e| fail(&format!("--listen {addr:?}: {e}")))
        }
        _ => fail("expected --listen <host:port>"),
    };
    let secret = std::env::var("DRAGON_RUN_SECRET")
        .ok()
        .and_then(|s| Secret::from_hex(&s))
        .unwrap_or_else(|| fail("DRAGON_RUN_SECRET must hold the run's secret (64 hex digits)"));
    let agent = Agent::start(listen, secret).unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening {}", agent.local_addr());
    let _ = out.flush();
    // Serve until stdin closes (whatever it reads is ignored).
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    agent.stop();
}
