//! The same-node transport behind the transport plugin ABI: what
//! `libdragon_transport_shm.so` (crate `transport-shm-plugin`) exports, and
//! what the TCP agent uses to serve other nodes, as safe Rust
//! (`transport_abi::export`'s traits).
//!
//! Config string (`open`): empty, or `key=value` items separated by commas
//! or spaces:
//!
//! - `spin_us=<n>`: how long a blocking call spins before it sleeps (the
//!   channel's default when absent).

use channels_core::{
    select_any, AllocError, BackingError, Channel, ChannelError, ChannelOptions, Dir, Message, RecvTimeoutError,
    SelectError, SendTimeoutError, TryRecvError, TrySendError,
};
use shm_primitives::{Handle, Kind};
use std::ffi::CStr;
use std::time::Duration;
use transport_abi::abi::*;
use transport_abi::export::{ChannelImpl, Failure, Timeout, TransportImpl, Wait};

/// The shared-memory transport instance.
#[derive(Debug)]
pub struct ShmTransport {
    spin: Option<Duration>,
}

/// One attachment to a shared-memory channel.
#[derive(Debug)]
pub struct ShmChannel {
    ch: Channel,
}

fn channel_failure(e: ChannelError) -> Failure {
    let code = match &e {
        ChannelError::InvalidOptions(_) => DRAGON_EINVAL,
        ChannelError::Handle(_) | ChannelError::NotAChannel(_) => DRAGON_EBADMSG,
        ChannelError::NotFound(_) => DRAGON_ENOENT,
        ChannelError::LayoutVersion { .. } => DRAGON_EPROTO,
        ChannelError::Stale { .. } => DRAGON_ESTALE,
        ChannelError::Destroyed => DRAGON_EIDRM,
        ChannelError::TooManyAttachments { .. } => DRAGON_EMFILE,
        ChannelError::Backing(BackingError::NoSpace(_)) => DRAGON_ENOMEM,
        _ => DRAGON_EIO,
    };
    Failure::new(code, e.to_string())
}

fn alloc_failure(e: AllocError) -> Failure {
    let code = match &e {
        AllocError::TooLarge { .. } => DRAGON_E2BIG,
        AllocError::Corrupt(_) => DRAGON_EIO,
        _ => DRAGON_ENOMEM,
    };
    Failure::new(code, e.to_string())
}

fn parse_config(config: &str) -> Result<ShmTransport, Failure> {
    let mut t = ShmTransport { spin: None };
    for item in config.split([',', ' ', '\t', '\n']).filter(|s| !s.is_empty()) {
        let bad = |why: String| Failure::new(DRAGON_EINVAL, format!("shm transport config {item:?}: {why}"));
        let (k, v) = item.split_once('=').ok_or_else(|| bad("expected key=value".into()))?;
        match k {
            "spin_us" => {
                let us: u64 = v.parse().map_err(|e| bad(format!("not a number of microseconds: {e}")))?;
                t.spin = Some(Duration::from_micros(us));
            }
            _ => return Err(bad("unknown key (known: spin_us)".into())),
        }
    }
    Ok(t)
}

/// The shm transport's function table, for programs that link this crate
/// and register it in their transport registry
/// (`transport_abi::registry::register`): the same table
/// `libdragon_transport_shm.so` exports.
pub fn table() -> &'static DragonTransportTable {
    static TABLE: DragonTransportTable = transport_abi::export::table::<ShmTransport>();
    &TABLE
}

/// The shm transport as this program's transport registry has it
/// (registered on first call).
pub fn registered() -> Result<transport_abi::Plugin, transport_abi::LoadError> {
    transport_abi::registry::register(table())
}

impl ShmTransport {
    fn wrap(&self, ch: Channel) -> ShmChannel {
        if let Some(s) = self.spin {
            ch.set_spin(s);
        }
        ShmChannel { ch }
    }
}

impl TransportImpl for ShmTransport {
    type Channel = ShmChannel;
    const NAME: &'static CStr = c"shm";
    const CAPABILITIES: u64 =
        DRAGON_CAP_LOCAL | DRAGON_CAP_ZERO_COPY_RECV | DRAGON_CAP_BLOCKING | DRAGON_CAP_POLL | DRAGON_CAP_CREATE;

    fn open(config: &str) -> Result<Self, Failure> {
        parse_config(config)
    }

    fn create_channel(&self, a: &DragonChannelAttrs) -> Result<ShmChannel, Failure> {
        let mut opts = ChannelOptions::new();
        if a.capacity != 0 {
            opts = opts.capacity(a.capacity);
        }
        if a.slot_size != 0 {
            let s = usize::try_from(a.slot_size)
                .map_err(|_| Failure::new(DRAGON_EINVAL, format!("slot size {} is too large", a.slot_size)))?;
            opts = opts.slot_size(s);
        }
        if a.max_block_bytes != 0 {
            opts = opts.max_block_bytes(a.max_block_bytes);
        }
        let ch = crate::create_channel(&opts).map_err(channel_failure)?;
        Ok(self.wrap(ch))
    }

    fn attach_channel(&self, bytes: &[u8]) -> Result<ShmChannel, Failure> {
        let h = Handle::from_bytes_of(bytes, Kind::Channel)
            .map_err(|e| Failure::new(DRAGON_EBADMSG, format!("bad channel handle: {e}")))?;
        if !h.address.is_empty() {
            return Err(Failure::new(
                DRAGON_EREMOTE,
                format!("the channel lives on node {} ({}); shared memory reaches this node only", h.node, h.address),
            ));
        }
        let ch = crate::attach_channel(&h).map_err(channel_failure)?;
        Ok(self.wrap(ch))
    }
}

fn send_failure<M>(e: SendTimeoutError<M>) -> Failure {
    let text = e.to_string();
    match e {
        SendTimeoutError::Timeout(_) => Failure::new(DRAGON_ETIMEDOUT, text),
        SendTimeoutError::Disconnected(_) => Failure::new(DRAGON_EPIPE, text),
        SendTimeoutError::Destroyed(_) => Failure::new(DRAGON_EIDRM, text),
        SendTimeoutError::Alloc(_, a) => alloc_failure(a),
        _ => Failure::new(DRAGON_EIO, text),
    }
}

fn try_send_failure<M>(e: TrySendError<M>) -> Failure {
    let text = e.to_string();
    match e {
        TrySendError::Full(_) => Failure::new(DRAGON_EAGAIN, text),
        TrySendError::Disconnected(_) => Failure::new(DRAGON_EPIPE, text),
        TrySendError::Destroyed(_) => Failure::new(DRAGON_EIDRM, text),
        TrySendError::Alloc(_, a) => alloc_failure(a),
        _ => Failure::new(DRAGON_EIO, text),
    }
}

fn recv_failure(e: RecvTimeoutError) -> Failure {
    let code = match e {
        RecvTimeoutError::Timeout => DRAGON_ETIMEDOUT,
        RecvTimeoutError::Disconnected => DRAGON_EPIPE,
        RecvTimeoutError::Destroyed => DRAGON_EIDRM,
        _ => DRAGON_EIO,
    };
    Failure::new(code, e.to_string())
}

impl ShmChannel {
    fn ready(&self, events: u32) -> u32 {
        let mut r = 0;
        if events & DRAGON_POLL_IN != 0 && self.ch.is_readable() {
            r |= DRAGON_POLL_IN;
        }
        if events & DRAGON_POLL_OUT != 0 && self.ch.is_writable() {
            r |= DRAGON_POLL_OUT;
        }
        r
    }

    fn hup(&self) -> u32 {
        if self.ch.is_closed() || self.ch.is_destroyed() {
            DRAGON_POLL_HUP
        } else {
            0
        }
    }
}

impl ChannelImpl for ShmChannel {
    type Message = Message;

    fn handle(&self) -> Vec<u8> {
        self.ch.handle().to_bytes()
    }

    fn send(&self, data: &[u8], timeout: Timeout) -> Result<(), Failure> {
        match timeout {
            Some(Duration::ZERO) => self.ch.try_send(data).map_err(try_send_failure),
            Some(t) => self.ch.send_timeout(data, t).map_err(send_failure),
            None => self.ch.send_parts(&[data], None).map_err(send_failure),
        }
    }

    fn recv(&self, timeout: Timeout) -> Result<Message, Failure> {
        match timeout {
            Some(Duration::ZERO) => self.ch.try_recv().map_err(|e| match e {
                TryRecvError::Empty => Failure::new(DRAGON_EAGAIN, e.to_string()),
                TryRecvError::Disconnected => recv_failure(RecvTimeoutError::Disconnected),
                TryRecvError::Destroyed => recv_failure(RecvTimeoutError::Destroyed),
                _ => Failure::new(DRAGON_EIO, e.to_string()),
            }),
            Some(t) => self.ch.recv_timeout(t).map_err(recv_failure),
            None => self.ch.recv_interruptible(None, &mut || true).map_err(recv_failure),
        }
    }

    fn poll(&self, events: u32, timeout: Timeout) -> Result<u32, Failure> {
        let wait = Wait::new(timeout);
        loop {
            let r = self.ready(events);
            if r != 0 {
                return Ok(r | self.hup());
            }
            let left = wait.left("the channel is not ready", "timed out waiting for the channel to become ready")?;
            let both = [(&self.ch, Dir::Recv), (&self.ch, Dir::Send)];
            let items = match events & (DRAGON_POLL_IN | DRAGON_POLL_OUT) {
                DRAGON_POLL_IN => &both[..1],
                DRAGON_POLL_OUT => &both[1..],
                _ => &both[..],
            };
            let waited = select_any(items, left);
            match waited {
                Ok(_) | Err(SelectError::Timeout) => {}
                Err(e) => return Err(Failure::new(DRAGON_EIO, e.to_string())),
            }
        }
    }

    fn len(&self) -> u64 {
        self.ch.len() as u64
    }

    fn destroy(&self) -> Result<(), Failure> {
        self.ch.destroy();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects() {
        assert_eq!(parse_config("").unwrap().spin, None);
        assert_eq!(parse_config(" spin_us=5 ").unwrap().spin, Some(Duration::from_micros(5)));
        let e = parse_config("spin_us=x").unwrap_err();
        assert_eq!(e.code, DRAGON_EINVAL);
        assert!(e.message.contains("spin_us=x"), "{}", e.message);
        assert!(parse_config("colour=blue").unwrap_err().message.contains("unknown key"));
        assert!(parse_config("novalue").is_err());
    }
}
