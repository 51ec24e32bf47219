//! Helpers shared by the agent's tests: a watchdog, raw connections from a
//! chosen loopback address, and waiting for a connection to be closed.
#![allow(dead_code)]

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

/// Aborts the test binary (after killing its children) if the guard is
/// still alive after `limit`: a hang fails the test instead of stalling the
/// suite. Generous on purpose: it bounds a hang, it does not measure speed.
pub fn watchdog(what: &str, limit: Duration) -> test_support::watchdog::Guard {
    test_support::watchdog::guard(what, limit)
}

/// A TCP connection to `to` from loopback address `from` (any port):
/// 127.0.0.0/8 is all loopback, so one machine can play many peers.
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else { return Err(io::Error::other("IPv4 only")) };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns; the stream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = sin(from, 0);
    let remote = sin(*to.ip(), to.port());
    // SAFETY: valid socket and a sockaddr_in of the given length.
    if unsafe { libc::bind(fd, (&raw const local).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::connect(fd, (&raw const remote).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Read until the peer closes the connection (end of file or reset);
/// whatever it sent first (the HELLO, a REJECT) is returned. Fails if
/// nothing ends it within `limit` (a generous bound, not a measurement).
pub fn wait_closed(s: &mut TcpStream, limit: Duration) -> io::Result<Vec<u8>> {
    s.set_read_timeout(Some(limit))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The next frame from a blocking stream, `buf` holding what was read
/// before; `None` once the peer closed (end of file or reset). Fails if
/// nothing comes within the stream's read timeout.
pub fn read_frame(s: &mut TcpStream, buf: &mut bytes::BytesMut) -> io::Result<Option<transport_tcp::frame::Frame>> {
    let mut chunk = [0u8; 64 << 10];
    loop {
        match transport_tcp::frame::decode(buf) {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
        match s.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A raw connection to the agent at `addr` that has passed the handshake
/// (reads block at most `limit`), and what was read after the ACCEPT (a
/// heartbeat may have come).
pub fn authenticated(
    addr: SocketAddr,
    secret: &transport_tcp::Secret,
    limit: Duration,
) -> (TcpStream, bytes::BytesMut) {
    use std::io::Write;
    use transport_tcp::auth;
    let mut s = TcpStream::connect(addr).expect("connect to the agent");
    s.set_read_timeout(Some(limit)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = bytes::BytesMut::new();
    let hello = read_frame(&mut s, &mut buf).unwrap().expect("HELLO");
    assert_eq!(hello.kind, auth::HELLO);
    let (proof, _, _) = secret.proof(&hello.payload).expect("a valid HELLO");
    let mut out = bytes::BytesMut::new();
    transport_tcp::frame::encode(&mut out, auth::PROOF, 0, &proof);
    s.write_all(&out).unwrap();
    let acc = read_frame(&mut s, &mut buf).unwrap().expect("ACCEPT");
    assert_eq!(acc.kind, auth::ACCEPT);
    (s, buf)
}
