//! Mutual authentication with the run's secret, before any request.
//!
//! ```text
//!   agent  -> client   HELLO   version u16, agent nonce (32 bytes)
//!   client -> agent    PROOF   client nonce (32), HMAC-SHA256(secret, "dragon-tcp/1 client" | agent nonce | client nonce)
//!   agent  -> client   ACCEPT  HMAC-SHA256(secret, "dragon-tcp/1 agent" | client nonce | agent nonce)
//!                  or  REJECT  a reason (UTF-8), and the agent closes the connection
//! ```
//!
//! Both sides prove they hold the secret without sending it, and fresh
//! nonces on both sides make a recorded exchange useless. MACs are compared
//! in constant time.
//!
//! A process of the run, which does not hold the secret, connects to
//! another node's service directly with its own service's word for it:
//!
//! ```text
//!   service -> process  HELLO          (as above)
//!   process -> service  PROOF_PROCESS  origin node u32, pid u32, client nonce (32),
//!                       HMAC-SHA256(secret, "dragon-tcp/1 process" | agent nonce | client nonce | node | pid)
//!   service -> process  ACCEPT / REJECT (as above)
//! ```
//!
//! The process asks its own node's service for the MAC (and for the ACCEPT
//! it must expect); that service puts in the pid the kernel gives for the
//! asking process, so a process can be vouched for only as itself.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Frame kinds of the handshake (request id 0).
pub const HELLO: u8 = 0xA0;
/// See the module docs.
pub const PROOF: u8 = 0xA1;
/// See the module docs.
pub const ACCEPT: u8 = 0xA2;
/// See the module docs.
pub const REJECT: u8 = 0xA3;
/// A process's proof, vouched for by its node's service (see
/// [`Secret::vouch`]).
pub const PROOF_PROCESS: u8 = 0xA4;
/// Protocol version in HELLO.
pub const VERSION: u16 = 1;

const NONCE: usize = 32;
const MAC: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The run's shared secret (32 random bytes; hex in the environment).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// 32 random bytes from the kernel.
pub fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: writes at most the remaining bytes of `b`.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n > 0 {
            got += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
    b
}

impl Secret {
    /// A fresh random secret.
    pub fn random() -> Secret {
        Secret(random32())
    }

    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Secret> {
        let s = s.trim();
        if s.len() != 64 {
            return None;
        }
        let mut b = [0u8; 32];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Secret(b))
    }

    /// 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("any key length");
        m.update(label);
        m.update(a);
        m.update(b);
        m
    }

    /// The HELLO payload an agent sends, with its nonce.
    pub fn hello(agent_nonce: &[u8; 32]) -> Vec<u8> {
        let mut p = VERSION.to_le_bytes().to_vec();
        p.extend_from_slice(agent_nonce);
        p
    }

    /// A client's PROOF payload answering a HELLO payload, and the client
    /// nonce it used; `None` for a malformed HELLO or another version.
    pub fn proof(&self, hello: &[u8]) -> Option<(Vec<u8>, [u8; 32], [u8; 32])> {
        if hello.len() != 2 + NONCE || u16::from_le_bytes([hello[0], hello[1]]) != VERSION {
            return None;
        }
        let agent_nonce: [u8; 32] = hello[2..].try_into().ok()?;
        let client_nonce = random32();
        let mac = self.mac(b"dragon-tcp/1 client", &agent_nonce, &client_nonce).finalize().into_bytes();
        let mut p = client_nonce.to_vec();
        p.extend_from_slice(&mac);
        Some((p, agent_nonce, client_nonce))
    }

    /// The agent's check of a PROOF: on success, the ACCEPT payload.
    pub fn accept(&self, agent_nonce: &[u8; 32], proof: &[u8]) -> Option<Vec<u8>> {
        if proof.len() != NONCE + MAC {
            return None;
        }
        let (client_nonce, mac) = proof.split_at(NONCE);
        self.mac(b"dragon-tcp/1 client", agent_nonce, client_nonce).verify_slice(mac).ok()?;
        Some(self.accept_payload(agent_nonce, client_nonce))
    }

    /// What a node's service vouches for one of its processes: the
    /// PROOF_PROCESS payload answering `agent_nonce` for process `pid` of
    /// node `node`, and the ACCEPT payload the process must then get.
    pub fn vouch(&self, agent_nonce: &[u8; 32], client_nonce: &[u8; 32], node: u32, pid: u32) -> (Vec<u8>, Vec<u8>) {
        let mut proof = node.to_le_bytes().to_vec();
        proof.extend_from_slice(&pid.to_le_bytes());
        let mac = self.process_mac(agent_nonce, client_nonce, &proof).finalize().into_bytes();
        proof.extend_from_slice(client_nonce);
        proof.extend_from_slice(&mac);
        (proof, self.accept_payload(agent_nonce, client_nonce))
    }

    /// The service's check of a PROOF_PROCESS: on success, the process's
    /// node and pid and the ACCEPT payload.
    pub fn accept_process(&self, agent_nonce: &[u8; 32], proof: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
        if proof.len() != 8 + NONCE + MAC {
            return None;
        }
        let node = u32::from_le_bytes(proof[0..4].try_into().ok()?);
        let pid = u32::from_le_bytes(proof[4..8].try_into().ok()?);
        let (client_nonce, mac) = proof[8..].split_at(NONCE);
        self.process_mac(agent_nonce, client_nonce, &proof[0..8]).verify_slice(mac).ok()?;
        Some((node, pid, self.accept_payload(agent_nonce, client_nonce)))
    }

    /// The MAC of a process's proof: `node_pid` is its node and pid (8 bytes).
    fn process_mac(&self, agent_nonce: &[u8], client_nonce: &[u8], node_pid: &[u8]) -> HmacSha256 {
        self.mac(b"dragon-tcp/1 process", agent_nonce, &[client_nonce, node_pid].concat())
    }

    /// The ACCEPT payload answering a proof made with `client_nonce`.
    fn accept_payload(&self, agent_nonce: &[u8], client_nonce: &[u8]) -> Vec<u8> {
        self.mac(b"dragon-tcp/1 agent", client_nonce, agent_nonce).finalize().into_bytes().to_vec()
    }

    /// The client's check of an ACCEPT payload.
    pub fn verify_accept(&self, agent_nonce: &[u8; 32], client_nonce: &[u8; 32], accept: &[u8]) -> bool {
        self.mac(b"dragon-tcp/1 agent", client_nonce, agent_nonce).verify_slice(accept).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_needs_the_same_secret_on_both_sides() {
        let s = Secret::random();
        let agent_nonce = random32();
        let (proof, an, cn) = s.proof(&Secret::hello(&agent_nonce)).unwrap();
        assert_eq!(an, agent_nonce);
        let accept = s.accept(&agent_nonce, &proof).unwrap();
        assert!(s.verify_accept(&agent_nonce, &cn, &accept));
        // Another secret fails both ways.
        let other = Secret::random();
        assert!(other.accept(&agent_nonce, &proof).is_none());
        assert!(!other.verify_accept(&agent_nonce, &cn, &accept));
        // A proof for another nonce (a replay) fails.
        assert!(s.accept(&random32(), &proof).is_none());
        // Malformed messages fail without panicking.
        assert!(s.proof(&[1, 0]).is_none());
        assert!(s.accept(&agent_nonce, &proof[..10]).is_none());
    }

    #[test]
    fn a_vouched_process_proves_who_it_is_and_nothing_else() {
        let s = Secret::random();
        let (agent_nonce, client_nonce) = (random32(), random32());
        let (proof, accept) = s.vouch(&agent_nonce, &client_nonce, 2, 4321);
        assert_eq!(s.accept_process(&agent_nonce, &proof), Some((2, 4321, accept.clone())));
        assert!(s.verify_accept(&agent_nonce, &client_nonce, &accept));
        // Another node or pid written over the vouched ones fails.
        for (at, v) in [(0, 3u32), (4, 4322)] {
            let mut forged = proof.clone();
            forged[at..at + 4].copy_from_slice(&v.to_le_bytes());
            assert!(s.accept_process(&agent_nonce, &forged).is_none());
        }
        // Another secret, another nonce (a replay), a short proof: refused.
        assert!(Secret::random().accept_process(&agent_nonce, &proof).is_none());
        assert!(s.accept_process(&random32(), &proof).is_none());
        assert!(s.accept_process(&agent_nonce, &proof[..40]).is_none());
        // A service's PROOF is not a process's, nor the other way round.
        let (service_proof, _, _) = s.proof(&Secret::hello(&agent_nonce)).unwrap();
        assert!(s.accept_process(&agent_nonce, &service_proof).is_none());
        assert!(s.accept(&agent_nonce, &proof).is_none());
    }

    #[test]
    fn secrets_round_trip_as_hex() {
        let s = Secret::random();
        assert_eq!(Secret::from_hex(&s.to_hex()), Some(s));
        assert_eq!(Secret::from_hex("zz"), None);
        assert_eq!(Secret::from_hex(&"g".repeat(64)), None);
    }
}
