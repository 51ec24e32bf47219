//! What a node service learns from its launcher, on its standard input.
//!
//! ```text
//!   dragon-bootstrap 1
//!   run=<run id>
//!   secret=<64 hex digits>
//!   index=<this node's index, 0 = primary>
//!   hosts=<host,host,...>          every node of the run, as the launcher names them
//!   peer-timeout-ms=<n>            silence after which a peer node is lost (optional)
//!   join-timeout-ms=<n>            how long the primary waits for every node (optional)
//!   cpus=<n>                       CPUs the run may use on this node (optional: a batch
//!                                  system's allocation; without it, the service's affinity)
//!   end
//!   primary=<host:port>            secondaries only, once the primary listens
//! ```
//!
//! Standard input is the only place the secret travels: never a command
//! line (every user can read those) or a file. After the bootstrap the
//! service keeps reading its standard input as its lifeline: end of file
//! (the launcher, or the ssh connection to it, went away) tears the node
//! down.

use std::fmt;
use std::io::{BufRead, Read};
use std::time::Duration;
use transport_tcp::Secret;

/// First line of a bootstrap.
pub const MAGIC: &str = "dragon-bootstrap 1";
/// Default silence after which a peer node is called lost.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time the primary waits for every node to join.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest bootstrap line accepted.
const MAX_LINE: usize = 1 << 20;

/// A node's bootstrap.
#[derive(Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// The run's id (`transport_shm::RunId` format).
    pub run: String,
    /// The run's secret.
    pub secret: Secret,
    /// This node's index in `hosts`.
    pub index: u32,
    /// Every node of the run, as the launcher names them.
    pub hosts: Vec<String>,
    /// Silence after which a peer node is lost.
    pub peer_timeout: Duration,
    /// How long the primary waits for every node to join.
    pub join_timeout: Duration,
    /// CPUs the run may use on this node when the launcher knows them (a
    /// Slurm allocation's share of the node); `None`: the service's CPU
    /// affinity.
    pub cpus: Option<u32>,
}

impl fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bootstrap")
            .field("run", &self.run)
            .field("index", &self.index)
            .field("hosts", &self.hosts)
            .field("peer_timeout", &self.peer_timeout)
            .field("join_timeout", &self.join_timeout)
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

/// A bootstrap that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapError(pub String);

impl fmt::Display for BootstrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad bootstrap: {}", self.0)
    }
}

impl std::error::Error for BootstrapError {}

fn bad(msg: impl Into<String>) -> BootstrapError {
    BootstrapError(msg.into())
}

/// Read one line (without its newline); `None` at end of input.
pub fn read_line<R: BufRead>(r: &mut R) -> Result<Option<String>, BootstrapError> {
    let mut buf = Vec::new();
    let n = Read::take(r, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).map_err(|e| bad(e.to_string()))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(bad("line too long"));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    String::from_utf8(buf).map(Some).map_err(|_| bad("not UTF-8"))
}

impl Bootstrap {
    /// The bootstrap as text (what the launcher writes), `end` line included.
    pub fn encode(&self) -> String {
        let cpus = self.cpus.map(|n| format!("cpus={n}\n")).unwrap_or_default();
        format!(
            "{MAGIC}\nrun={}\nsecret={}\nindex={}\nhosts={}\npeer-timeout-ms={}\njoin-timeout-ms={}\n{cpus}end\n",
            self.run,
            self.secret.to_hex(),
            self.index,
            self.hosts.join(","),
            self.peer_timeout.as_millis(),
            self.join_timeout.as_millis()
        )
    }

    /// Read a bootstrap up to its `end` line.
    pub fn read(r: &mut impl BufRead) -> Result<Bootstrap, BootstrapError> {
        let eof = || bad("input ended before the bootstrap did");
        if read_line(r)?.ok_or_else(eof)? != MAGIC {
            return Err(bad(format!("the first line is not {MAGIC:?} (another version of dragon?)")));
        }
        let (mut run, mut secret, mut index, mut hosts) = (None, None, None, None);
        let (mut peer_timeout, mut join_timeout) = (PEER_TIMEOUT, JOIN_TIMEOUT);
        let mut cpus = None;
        loop {
            let line = read_line(r)?.ok_or_else(eof)?;
            if line == "end" {
                break;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| bad(format!("expected key=value, got {line:?}")))?;
            let ms = |v: &str| {
                v.parse::<u64>().map(Duration::from_millis).map_err(|_| bad(format!("{k}: not a number of ms")))
            };
            match k {
                "run" => run = Some(v.to_owned()),
                "secret" => secret = Some(Secret::from_hex(v).ok_or_else(|| bad("secret: expected 64 hex digits"))?),
                "index" => index = Some(v.parse::<u32>().map_err(|_| bad("index: not a number"))?),
                "hosts" => hosts = Some(v.split(',').map(str::to_owned).collect::<Vec<_>>()),
                "peer-timeout-ms" => peer_timeout = ms(v)?,
                "join-timeout-ms" => join_timeout = ms(v)?,
                "cpus" => match v.parse::<u32>() {
                    Ok(n) if n > 0 => cpus = Some(n),
                    _ => return Err(bad("cpus: expected a number of CPUs above zero")),
                },
                // Unknown keys are errors: a launcher and a service of
                // different versions must not half-understand each other.
                _ => return Err(bad(format!("unknown key {k:?}"))),
            }
        }
        let run = run.ok_or_else(|| bad("no run="))?;
        if transport_shm::RunId::parse(&run).is_none() {
            return Err(bad(format!("run={run:?} is not a run id")));
        }
        let secret = secret.ok_or_else(|| bad("no secret="))?;
        let index = index.ok_or_else(|| bad("no index="))?;
        let hosts = hosts.ok_or_else(|| bad("no hosts="))?;
        if hosts.iter().any(|h| h.is_empty()) {
            return Err(bad("hosts= has an empty name"));
        }
        if index as usize >= hosts.len() {
            return Err(bad(format!("index={index} but only {} hosts", hosts.len())));
        }
        if peer_timeout.is_zero() || join_timeout.is_zero() {
            return Err(bad("timeouts must be above zero"));
        }
        Ok(Bootstrap { run, secret, index, hosts, peer_timeout, join_timeout, cpus })
    }

    /// This node's name, as the launcher names it.
    pub fn host(&self) -> &str {
        &self.hosts[self.index as usize]
    }
}

/// Parse the `primary=<host:port>` line a secondary reads after the bootstrap.
pub fn parse_primary(line: &str) -> Result<String, BootstrapError> {
    match line.strip_prefix("primary=") {
        Some(a) if a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) => {
            Ok(a.to_owned())
        }
        _ => Err(bad(format!("expected primary=<host:port>, got {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bootstrap {
        Bootstrap {
            run: transport_shm::RunId::new_owned_by_me().as_str().to_owned(),
            secret: Secret::random(),
            index: 1,
            hosts: vec!["node1".into(), "node2".into(), "node3".into()],
            peer_timeout: Duration::from_millis(2500),
            join_timeout: Duration::from_secs(30),
            cpus: None,
        }
    }

    #[test]
    fn round_trips() {
        let b = sample();
        let text = b.encode();
        let mut r = std::io::Cursor::new(format!("{text}primary=node1:4242\n"));
        let got = Bootstrap::read(&mut r).unwrap();
        assert_eq!(got, b);
        assert_eq!(got.host(), "node2");
        let line = read_line(&mut r).unwrap().unwrap();
        assert_eq!(parse_primary(&line).unwrap(), "node1:4242");
        assert_eq!(read_line(&mut r).unwrap(), None);
        assert!(!text.contains("cpus="), "no cpus= line unless the launcher knows them");
    }

    #[test]
    fn an_allocations_cpus_round_trip() {
        let b = Bootstrap { cpus: Some(3), ..sample() };
        let text = b.encode();
        assert!(text.contains("\ncpus=3\nend\n"), "{text}");
        assert_eq!(Bootstrap::read(&mut std::io::Cursor::new(text)).unwrap(), b);
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let b = sample();
        assert!(!format!("{b:?}").contains(&b.secret.to_hex()));
    }

    #[test]
    fn bad_bootstraps_are_clear_errors() {
        let good = sample().encode();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "ended"),
            ("dragon-bootstrap 2\n".into(), "another version"),
            (good.replace("end\n", ""), "ended"),
            (good.replace("index=1", "index=3"), "only 3 hosts"),
            (good.replace("index=1", "index=x"), "index"),
            (good.replace("secret=", "secret=zz"), "hex"),
            (good.replace("run=", "run=x"), "not a run id"),
            (good.replace("hosts=node1,", "hosts=,"), "empty name"),
            (good.replace("peer-timeout-ms=2500", "peer-timeout-ms=0"), "above zero"),
            (good.replace("end\n", "colour=blue\nend\n"), "unknown key"),
            (good.replace("end\n", "cpus=0\nend\n"), "above zero"),
            (good.replace("end\n", "cpus=two\nend\n"), "cpus"),
            (good.replace("end\n", "cpus=-1\nend\n"), "cpus"),
            (good.replace("end\n", "garbage\nend\n"), "key=value"),
        ];
        for (text, want) in cases {
            let e = Bootstrap::read(&mut std::io::Cursor::new(text.clone())).unwrap_err();
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
        for l in ["primary=", "primary=host", "primary=:1", "primary=h:99999", "other=h:1"] {
            assert!(parse_primary(l).is_err(), "{l}");
        }
    }
}
