//! The TCP transport behind the transport plugin ABI (what
//! `libdragon_transport_tcp.so`, crate `transport-tcp-plugin`, exports):
//! every operation goes to the agent of the channel's node.
//!
//! Config string (`open`): `key=value` items separated by commas or spaces:
//!
//! - `agent=<host:port>`: the agent that creates channels, and serves
//!   handles that name no agent (required);
//! - `secret=<64 hex digits>`: the run's secret (required).
//!
//! An attachment holds connections to its agent, one per operation under
//! way (a receive that waits does not hold up a send from another thread),
//! each with the channel attached; a connection that fails is dropped and
//! the next operation makes a new one.

use crate::auth::Secret;
use crate::client::{Client, TcpError};
use shm_primitives::handle::{Handle, Kind};
use std::ffi::CStr;
use std::sync::Mutex;
use std::time::Duration;
use transport_abi::abi::*;
use transport_abi::export::{ChannelImpl, Failure, Timeout, TransportImpl};

/// How long connecting to an agent may take.
const CONNECT: Duration = Duration::from_secs(10);

/// The TCP transport instance.
#[derive(Debug)]
pub struct TcpTransport {
    agent: String,
    secret: Secret,
}

/// One attachment to a channel on some node.
#[derive(Debug)]
pub struct TcpChannel {
    agent: String,
    secret: Secret,
    handle: Vec<u8>,
    /// Idle connections, each with the channel attached (its id there).
    idle: Mutex<Vec<(Client, u64)>>,
}

fn failure(e: TcpError) -> Failure {
    match e {
        TcpError::Remote { code, message } => Failure::new(code, message),
        TcpError::Auth(_) => Failure::new(DRAGON_EINVAL, e.to_string()),
        TcpError::Protocol(_) => Failure::new(DRAGON_EPROTO, e.to_string()),
        TcpError::Io(_) | TcpError::PeerLost { .. } => Failure::new(DRAGON_EIO, e.to_string()),
    }
}

fn parse_config(config: &str) -> Result<TcpTransport, Failure> {
    let (mut agent, mut secret) = (None, None);
    for item in config.split([',', ' ', '\t', '\n']).filter(|s| !s.is_empty()) {
        let bad = |why: &str| Failure::new(DRAGON_EINVAL, format!("tcp transport config {item:?}: {why}"));
        let (k, v) = item.split_once('=').ok_or_else(|| bad("expected key=value"))?;
        match k {
            "agent" => agent = Some(v.to_owned()),
            "secret" => secret = Some(Secret::from_hex(v).ok_or_else(|| bad("expected 64 hex digits"))?),
            _ => return Err(bad("unknown key (known: agent, secret)")),
        }
    }
    match (agent, secret) {
        (Some(agent), Some(secret)) => Ok(TcpTransport { agent, secret }),
        _ => Err(Failure::new(DRAGON_EINVAL, "tcp transport config needs agent=<host:port> and secret=<hex>")),
    }
}

impl TransportImpl for TcpTransport {
    type Channel = TcpChannel;
    const NAME: &'static CStr = c"tcp";
    const CAPABILITIES: u64 =
        DRAGON_CAP_REMOTE | DRAGON_CAP_ZERO_COPY_RECV | DRAGON_CAP_BLOCKING | DRAGON_CAP_POLL | DRAGON_CAP_CREATE;

    fn open(config: &str) -> Result<Self, Failure> {
        parse_config(config)
    }

    fn create_channel(&self, a: &DragonChannelAttrs) -> Result<TcpChannel, Failure> {
        let mut c = Client::connect(&self.agent, &self.secret, CONNECT).map_err(failure)?;
        let (id, handle) = c.create(a.capacity, a.slot_size, a.max_block_bytes).map_err(failure)?;
        Ok(TcpChannel {
            agent: self.agent.clone(),
            secret: self.secret.clone(),
            handle,
            idle: Mutex::new(vec![(c, id)]),
        })
    }

    fn attach_channel(&self, bytes: &[u8]) -> Result<TcpChannel, Failure> {
        let h = Handle::from_bytes_of(bytes, Kind::Channel)
            .map_err(|e| Failure::new(DRAGON_EBADMSG, format!("bad channel handle: {e}")))?;
        let agent = if h.address.is_empty() { self.agent.clone() } else { h.address.clone() };
        let ch =
            TcpChannel { agent, secret: self.secret.clone(), handle: bytes.to_vec(), idle: Mutex::new(Vec::new()) };
        // Attach now, so that a channel that is gone is an error here.
        let conn = ch.connect()?;
        ch.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        Ok(ch)
    }
}

impl TcpChannel {
    fn connect(&self) -> Result<(Client, u64), Failure> {
        let mut c = Client::connect(&self.agent, &self.secret, CONNECT).map_err(failure)?;
        let id = c.attach(&self.handle).map_err(failure)?;
        Ok((c, id))
    }

    /// Run `f` on an idle connection (or a new one); a connection that
    /// failed is not reused.
    fn with<T>(&self, f: impl FnOnce(&mut Client, u64) -> Result<T, TcpError>) -> Result<T, Failure> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut c, id) = match conn {
            Some(c) => c,
            None => self.connect()?,
        };
        let r = f(&mut c, id);
        if matches!(r, Ok(_) | Err(TcpError::Remote { .. })) {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push((c, id));
        }
        r.map_err(failure)
    }
}

impl ChannelImpl for TcpChannel {
    type Message = Vec<u8>;

    fn handle(&self) -> Vec<u8> {
        self.handle.clone()
    }

    fn send(&self, data: &[u8], timeout: Timeout) -> Result<(), Failure> {
        self.with(|c, id| c.send(id, data, timeout))
    }

    fn recv(&self, timeout: Timeout) -> Result<Vec<u8>, Failure> {
        self.with(|c, id| c.recv(id, timeout))
    }

    fn poll(&self, events: u32, timeout: Timeout) -> Result<u32, Failure> {
        self.with(|c, id| c.poll(id, events, timeout))
    }

    fn len(&self) -> u64 {
        self.with(|c, id| c.len(id)).unwrap_or(0)
    }

    fn destroy(&self) -> Result<(), Failure> {
        self.with(|c, id| c.destroy(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects() {
        let s = Secret::random().to_hex();
        let t = parse_config(&format!("agent=10.0.0.1:7000 secret={s}")).unwrap();
        assert_eq!(t.agent, "10.0.0.1:7000");
        assert!(parse_config("agent=x").unwrap_err().message.contains("secret"));
        assert!(parse_config("secret=zz").unwrap_err().message.contains("hex"));
        assert!(parse_config("colour=blue").unwrap_err().message.contains("unknown key"));
    }
}
