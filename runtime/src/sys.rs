//! The operating-system calls the node service needs that the standard
//! library does not offer: `SOCK_SEQPACKET` unix sockets with descriptor
//! passing (the template's protocol), a child in a session of its own,
//! signals (sent, and the termination signals taken by one thread), peer
//! credentials, the CPUs this process may use, the host's
//! addresses. The only module of the crate with `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn abstract_addr(name: &str) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    if bytes.len() + 1 > a.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("socket name {name:?} is too long")));
    }
    // Abstract namespace: a leading NUL, no terminator.
    for (i, b) in bytes.iter().enumerate() {
        a.sun_path[i + 1] = *b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + bytes.len();
    Ok((a, len as libc::socklen_t))
}

fn socket(kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the descriptor it returns is ours.
    let fd = check(unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `SOCK_SEQPACKET` socket listening on abstract name `name`.
pub fn seqpacket_listen(name: &str) -> io::Result<OwnedFd> {
    let fd = socket(libc::SOCK_SEQPACKET)?;
    let (a, len) = abstract_addr(name)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) })?;
    // SAFETY: plain system call on our descriptor.
    check(unsafe { libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) })?;
    Ok(fd)
}

/// A `SOCK_SEQPACKET` connection to abstract name `name` (blocking).
pub fn seqpacket_connect(name: &str) -> io::Result<OwnedFd> {
    let fd = socket(libc::SOCK_SEQPACKET)?;
    let (a, len) = abstract_addr(name)?;
    loop {
        // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
        match check(unsafe { libc::connect(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) }) {
            Ok(_) => return Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A connected pair of `SOCK_STREAM` unix sockets.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: two fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe: (read end, write end), close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Most descriptors taken from one read.
pub const MAX_FDS_PER_READ: usize = 64;

/// Send one datagram `data` with descriptors `fds` attached.
pub fn send_with_fds(sock: &OwnedFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let payload = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is `space` bytes, room for one header
        // and `fds`; CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        match unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } {
            n if n >= 0 => return Ok(()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Receive one datagram (or what a stream socket has) into `buf` and the
/// descriptors attached to it (at most [`MAX_FDS_PER_READ`]). Returns the
/// length read (0 at end of connection).
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS_PER_READ * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `cbuf`,
    // with the kernel's own length fields; each SCM_RIGHTS descriptor is
    // a fresh one now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, fds))
}

/// Start `argv` (with `env`) in a session of its own, with `/dev/null` as
/// standard input and output, inheriting `keep` (which must not be 0-2)
/// and standard error. Returns its pid.
pub fn spawn_session(argv: &[String], env: &[(String, String)], keep: &[RawFd]) -> io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    let keep = keep.to_vec();
    // The child gets the termination signals back (this process may block
    // them for one thread to take: `block_termination_signals`; the mask
    // is inherited across fork and exec).
    let termination = termination_set();
    // SAFETY: between fork and exec the closure only makes system calls
    // that are async-signal-safe (sigprocmask, setsid, fcntl) and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sigprocmask(libc::SIG_UNBLOCK, &termination, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            for &fd in &keep {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The child is reaped by `reap`, not through `Child` (which would wait).
    Ok(child.id())
}

/// The signals that end a node service as its launcher's end does: SIGTERM
/// (a batch system ending or cancelling the job, `kill`) and SIGHUP.
const TERMINATION: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGHUP];

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it and
    // sigaddset is given valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in TERMINATION {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block SIGTERM and SIGHUP in the calling thread, and so in every thread
/// it starts from then on, so that only [`wait_termination_signal`] takes
/// them. Call it before the process has other threads. A child inherits
/// the mask: [`spawn_session`] unblocks them in its child.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: a valid, initialized set; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Wait until SIGTERM or SIGHUP arrives (blocked beforehand by
/// [`block_termination_signals`]); the signal's number.
pub fn wait_termination_signal() -> io::Result<i32> {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: valid pointers to an initialized set and to an int.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// Reap child `pid` if it has exited: its exit code (negative signal
/// number if killed), `None` while it runs.
pub fn reap(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: plain system call.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    if r <= 0 {
        return if r < 0 { Some(-1) } else { None };
    }
    Some(if libc::WIFSIGNALED(status) { -libc::WTERMSIG(status) } else { libc::WEXITSTATUS(status) })
}

/// Send `sig` to process `pid` (errors other than "no such process" are returned).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain system call.
    if unsafe { libc::kill(pid, sig) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// The user id and pid of the process at the other end of unix socket `fd`.
pub fn peer_cred(fd: RawFd) -> io::Result<(u32, u32)> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` has room for `len` bytes.
    check(unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    })?;
    Ok((cred.uid, cred.pid as u32))
}

/// Clock ticks per second (`/proc` CPU times are in them).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).unwrap_or(100)
}

/// Bytes per page.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).unwrap_or(4096)
}

/// Raise this process's limit on open descriptors to the most it may
/// have (the hard limit); the soft limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to
    // an rlimit for the duration of the call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return None;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    Some(r.rlim_cur)
}

/// This process's limit on open descriptors (the soft limit).
pub fn open_files_limit() -> Option<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: as in `raise_open_files_limit`.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r.rlim_cur)
}

/// This process's user id.
pub fn uid() -> u32 {
    // SAFETY: plain system call, cannot fail.
    unsafe { libc::getuid() }
}

/// How many CPUs this process may run on (its affinity mask).
pub fn cpus_allowed() -> u32 {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return libc::CPU_COUNT(&set).max(1) as u32;
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

pub use shm_primitives::process::hostname;

/// The IPv4 addresses of this machine's interfaces, loopback excluded.
pub fn ipv4_addresses() -> Vec<String> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs made.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of the family it says.
            let fam = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
            if fam == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    out.push(ip.to_string());
                }
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Whether `fd` has data (or end of file) to read within `timeout_ms`
/// (-1: no limit).
pub fn readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `p` holds `p.len()` pollfd entries.
        let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(p.iter().map(|x| x.revents != 0).collect());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What a stream socket holds now: `Some(true)` at end of file (every copy
/// of the other end closed), `Some(false)` if bytes are waiting (read and
/// dropped here, with any descriptors that came with them), `None` if
/// nothing is there yet.
pub fn drain_or_eof(fd: RawFd) -> Option<bool> {
    let mut buf = [0u8; 512];
    let mut any = false;
    loop {
        let mut peek = [0u8; 1];
        // SAFETY: `peek` has room for the one byte asked for.
        let n = unsafe { libc::recv(fd, peek.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        match n {
            0 => return Some(true),
            n if n > 0 => {
                any = true;
                let _ = recv_with_fds(fd, &mut buf);
            }
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => return any.then_some(false),
                    // A reset or another failure: the other end is gone.
                    _ => return Some(true),
                }
            }
        }
    }
}
