//! The simulated fabric through the verbs interface alone: what each work
//! request does, and every error an adapter would report, as the protocol
//! engine relies on them.

mod common;

use std::sync::Arc;
use std::time::Duration;
use transport_verbs::sim::{Fault, SimPort};
use transport_verbs::verbs::*;

struct End {
    port: Arc<SimPort>,
    cq: Arc<dyn CompletionQueue>,
    qp: Box<dyn QueuePair>,
    buf: Buffer,
    mr: Box<dyn MemoryRegion>,
}

const CAPS: QpCaps = QpCaps { max_send_wr: 16, max_recv_wr: 4, max_inline: 64, max_rd_atomic: 4 };

fn end(port: Arc<SimPort>) -> End {
    let p = port.clone() as Arc<dyn Port>;
    let cq = p.create_cq(32).unwrap();
    let qp = p.create_qp(&cq, CAPS).unwrap();
    let buf = p.alloc(8192).unwrap();
    // SAFETY: `buf` outlives `mr` (dropped first: field order of End).
    let mr =
        unsafe { p.register(buf.ptr(), buf.len(), Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ) }
            .unwrap();
    End { port, cq, qp, buf, mr }
}

/// Two queue pairs connected to each other.
fn pair() -> (End, End) {
    pair_on(&test_support::unique_name("net"))
}

/// The same, on simulated network `net`.
fn pair_on(net: &str) -> (End, End) {
    test_support::watchdog::start();
    let f = transport_verbs::sim::SimFabric::new(net).unwrap();
    let (a, b) = (end(f.open_sim().unwrap()), end(f.open_sim().unwrap()));
    for e in [&a, &b] {
        assert_eq!(e.qp.state(), QpState::Reset);
        e.qp.modify(QpTransition::Init).unwrap();
    }
    b.qp.modify(QpTransition::ReadyToReceive(a.qp.address())).unwrap();
    a.qp.modify(QpTransition::ReadyToReceive(b.qp.address())).unwrap();
    for e in [&a, &b] {
        e.qp.modify(QpTransition::ReadyToSend).unwrap();
        assert_eq!(e.qp.state(), QpState::ReadyToSend);
    }
    (a, b)
}

fn one(cq: &Arc<dyn CompletionQueue>) -> Completion {
    let mut v = Vec::new();
    for _ in 0..1000 {
        if cq.poll(&mut v, 1).unwrap() == 1 {
            return v[0];
        }
        cq.wait(Some(Duration::from_millis(50))).unwrap();
    }
    panic!("no completion");
}

fn none(cq: &Arc<dyn CompletionQueue>) {
    let mut v = Vec::new();
    assert_eq!(cq.poll(&mut v, 8).unwrap(), 0, "unexpected {v:?}");
}

fn sge(e: &End, off: u64, len: u32) -> Sge {
    Sge { addr: e.buf.addr() + off, len, lkey: e.mr.lkey() }
}

fn post_recv(e: &End, id: u64, off: u64, len: u32) {
    e.qp.post_recv(&RecvWr { wr_id: id, sge: sge(e, off, len) }).unwrap();
}

fn send(e: &End, id: u64, op: SendOp, s: Sge, inline: bool) {
    e.qp.post_send(&SendWr { wr_id: id, op, sge: s, inline }).unwrap();
}

#[test]
fn sends_writes_and_reads_move_the_bytes() {
    let (a, b) = pair();
    // A send into a posted receive, from registered memory and inline.
    post_recv(&b, 1, 0, 100);
    post_recv(&b, 2, 100, 100);
    a.buf.write(0, b"hello");
    send(&a, 10, SendOp::Send, sge(&a, 0, 5), false);
    let data = b"inline!";
    send(&a, 11, SendOp::Send, Sge { addr: data.as_ptr() as u64, len: 7, lkey: 0 }, true);
    assert_eq!(
        one(&a.cq),
        Completion {
            wr_id: 10,
            status: WcStatus::Success,
            opcode: WcOpcode::Send,
            byte_len: 5,
            imm: None,
            vendor_err: 0
        }
    );
    assert_eq!(one(&a.cq).wr_id, 11);
    let r = one(&b.cq);
    assert_eq!((r.wr_id, r.opcode, r.byte_len), (1, WcOpcode::Recv, 5));
    assert_eq!(b.buf.read(0, 5), b"hello");
    assert_eq!(one(&b.cq).byte_len, 7);
    assert_eq!(b.buf.read(100, 7), b"inline!");
    // An RDMA write with immediate data: the bytes where it says, the
    // peer's receive consumed for the completion.
    post_recv(&b, 3, 0, 0);
    a.buf.write(200, b"written");
    send(
        &a,
        12,
        SendOp::WriteImm { remote_addr: b.buf.addr() + 4000, rkey: b.mr.rkey(), imm: 77 },
        sge(&a, 200, 7),
        false,
    );
    assert_eq!(one(&a.cq).opcode, WcOpcode::RdmaWrite);
    let r = one(&b.cq);
    assert_eq!((r.wr_id, r.opcode, r.imm, r.byte_len), (3, WcOpcode::RecvWithImm, Some(77), 7));
    assert_eq!(b.buf.read(4000, 7), b"written");
    // An RDMA read: no receive, no completion at the peer.
    b.buf.write(5000, b"read me");
    send(&a, 13, SendOp::Read { remote_addr: b.buf.addr() + 5000, rkey: b.mr.rkey() }, sge(&a, 300, 7), false);
    let r = one(&a.cq);
    assert_eq!((r.wr_id, r.status, r.opcode, r.byte_len), (13, WcStatus::Success, WcOpcode::RdmaRead, 7));
    assert_eq!(a.buf.read(300, 7), b"read me");
    none(&b.cq);
}

#[test]
fn a_bad_remote_key_fails_the_request_and_flushes_the_queue_pair() {
    let (a, b) = pair();
    post_recv(&a, 1, 0, 64);
    send(&a, 5, SendOp::Read { remote_addr: b.buf.addr(), rkey: b.mr.rkey() ^ 0x100 }, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::RemoteAccess);
    assert_eq!(a.qp.state(), QpState::Error);
    // The posted receive was flushed; later requests are flushed too.
    let r = one(&a.cq);
    assert_eq!((r.wr_id, r.status), (1, WcStatus::Flushed));
    send(&a, 6, SendOp::Send, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::Flushed);
    post_recv(&a, 7, 0, 64);
    assert_eq!(
        one(&a.cq),
        Completion {
            wr_id: 7,
            status: WcStatus::Flushed,
            opcode: WcOpcode::Recv,
            byte_len: 0,
            imm: None,
            vendor_err: 0x5105
        }
    );
    // Out of bounds and without the right are refused the same way.
    let (a, b) = pair();
    send(&a, 1, SendOp::Read { remote_addr: b.buf.addr() + 8190, rkey: b.mr.rkey() }, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::RemoteAccess);
    let (a, b) = pair();
    let ro = b.port.alloc(4096).unwrap();
    // SAFETY: `ro` outlives the region (dropped just below, after it).
    let mr = unsafe { (b.port.clone() as Arc<dyn Port>).register(ro.ptr(), 4096, Access::LOCAL_WRITE) }.unwrap();
    send(&a, 1, SendOp::Read { remote_addr: ro.addr(), rkey: mr.rkey() }, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::RemoteAccess, "no remote read right");
    drop(mr);
}

#[test]
fn a_deregistered_key_is_refused() {
    let (a, b) = pair();
    let extra = b.port.alloc(4096).unwrap();
    // SAFETY: `extra` outlives the region.
    let mr = unsafe {
        (b.port.clone() as Arc<dyn Port>).register(extra.ptr(), 4096, Access::REMOTE_READ | Access::LOCAL_WRITE)
    }
    .unwrap();
    let (addr, key) = (extra.addr(), mr.rkey());
    send(&a, 1, SendOp::Read { remote_addr: addr, rkey: key }, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    drop(mr);
    send(&a, 2, SendOp::Read { remote_addr: addr, rkey: key }, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::RemoteAccess);
}

#[test]
fn local_errors_and_receive_errors() {
    // A bad local key.
    let (a, _b) = pair();
    send(&a, 1, SendOp::Send, Sge { lkey: a.mr.lkey() + 1, ..sge(&a, 0, 8) }, false);
    assert_eq!(one(&a.cq).status, WcStatus::LocalProtection);
    // No receive posted at the peer.
    let (a, _b) = pair();
    send(&a, 1, SendOp::Send, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::RnrRetryExceeded);
    // A receive too small: the receiver says so, the sender too.
    let (a, b) = pair();
    post_recv(&b, 9, 0, 4);
    send(&a, 1, SendOp::Send, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::RemoteInvalidRequest);
    let r = one(&b.cq);
    assert_eq!((r.wr_id, r.status), (9, WcStatus::LocalLength));
    assert_eq!(b.qp.state(), QpState::Error);
    // Inline beyond the granted size is an operation error.
    let (a, _b) = pair();
    let big = [0u8; 100];
    send(&a, 1, SendOp::Send, Sge { addr: big.as_ptr() as u64, len: 100, lkey: 0 }, true);
    assert_eq!(one(&a.cq).status, WcStatus::LocalQpOperation);
}

#[test]
fn lost_peers_and_injected_failures() {
    // The peer's queue pair destroyed: retries exceeded.
    let (a, b) = pair();
    drop(b);
    send(&a, 1, SendOp::Send, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::RetryExceeded);
    // A cut link, both ways.
    let (a, b) = pair();
    a.port.inject(Fault::Cut);
    post_recv(&a, 1, 0, 64);
    send(&b, 2, SendOp::Send, sge(&b, 0, 8), false);
    assert_eq!(one(&b.cq).status, WcStatus::RetryExceeded);
    send(&a, 3, SendOp::Send, sge(&a, 0, 8), false);
    let c = one(&a.cq);
    assert_eq!((c.wr_id, c.status), (3, WcStatus::RetryExceeded));
    // The n-th request fails as told.
    let (a, b) = pair();
    a.port.inject(Fault::FailWr { skip: 1, status: WcStatus::Other(21) });
    for i in 0..2 {
        post_recv(&b, i, 0, 64);
    }
    send(&a, 1, SendOp::Send, sge(&a, 0, 8), false);
    send(&a, 2, SendOp::Send, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    assert_eq!(one(&a.cq).status, WcStatus::Other(21));
    // Receives dropped: the peer finds none.
    let (a, b) = pair();
    b.port.inject(Fault::DropRecvs);
    post_recv(&b, 1, 0, 64);
    send(&a, 1, SendOp::Send, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::RnrRetryExceeded);
}

#[test]
fn a_cut_network_fails_work_requests_on_it_both_ways_and_no_other() {
    let net = test_support::unique_name("cut");
    let (a, b) = pair_on(&net);
    let (c, d) = pair();
    transport_verbs::sim::cut_network(&net);
    post_recv(&b, 1, 0, 64);
    send(&a, 1, SendOp::Send, sge(&a, 0, 8), false);
    assert_eq!(one(&a.cq).status, WcStatus::RetryExceeded);
    send(&b, 2, SendOp::Send, sge(&b, 0, 8), false);
    let x = one(&b.cq);
    // b's posted receive is flushed first when its queue pair fails.
    let x = if x.wr_id == 1 { one(&b.cq) } else { x };
    assert_eq!((x.wr_id, x.status), (2, WcStatus::RetryExceeded));
    // Another network is untouched.
    post_recv(&d, 1, 0, 64);
    send(&c, 1, SendOp::Send, sge(&c, 0, 8), false);
    assert_eq!(one(&c.cq).status, WcStatus::Success);
}

#[test]
fn invalid_calls_are_errors_not_crashes() {
    test_support::watchdog::start();
    let f = common::fabric();
    let port = f.open_sim().unwrap();
    let p = port.clone() as Arc<dyn Port>;
    let e = end(port);
    // Out of order transitions and work requests in the wrong state.
    assert!(matches!(e.qp.modify(QpTransition::ReadyToSend), Err(VerbsError::Invalid(_))));
    assert!(matches!(e.qp.post_recv(&RecvWr { wr_id: 1, sge: sge(&e, 0, 8) }), Err(VerbsError::Invalid(_))));
    e.qp.modify(QpTransition::Init).unwrap();
    let err = e.qp.post_send(&SendWr { wr_id: 1, op: SendOp::Send, sge: sge(&e, 0, 8), inline: false }).unwrap_err();
    assert!(err.to_string().contains("sends need RTS"), "{err}");
    // A peer address that is not one.
    let mut bogus = e.qp.address();
    bogus.fabric = b"dragon-no-such-segment".to_vec();
    assert!(e.qp.modify(QpTransition::ReadyToReceive(bogus)).unwrap_err().to_string().contains("does not exist"));
    // Memory the simulation cannot share.
    let mut private = vec![0u8; 4096];
    // SAFETY: the call fails; nothing is registered.
    let err = unsafe { p.register(private.as_mut_ptr(), 4096, Access::LOCAL_WRITE) }.unwrap_err();
    assert!(err.to_string().contains("registers only memory its ports allocated"), "{err}");
    // A full receive queue.
    for i in 0..CAPS.max_recv_wr {
        e.qp.post_recv(&RecvWr { wr_id: u64::from(i), sge: sge(&e, 0, 8) }).unwrap();
    }
    assert!(matches!(e.qp.post_recv(&RecvWr { wr_id: 9, sge: sge(&e, 0, 8) }), Err(VerbsError::Exhausted(_))));
}

#[test]
fn discovery_and_a_port_that_is_down() {
    test_support::watchdog::start();
    let f = common::fabric();
    let ports = f.ports().unwrap();
    assert_eq!(ports.len(), 1);
    assert!(ports[0].is_active() && !ports[0].gid.is_zero());
    assert_eq!(active_port(&f, None).unwrap(), ports[0]);
    assert!(matches!(active_port(&f, Some("mlx5_0")), Err(VerbsError::NoDevice(m)) if m.contains("no device mlx5_0")));
    // Two processes' ports of one network reach each other; another
    // network's do not.
    let other = common::fabric().ports().unwrap().remove(0);
    assert!(ports[0].reaches(&ports[0]) && !ports[0].reaches(&other));
    f.set_port_down(true);
    assert_eq!(f.ports().unwrap()[0].state, PortState::Down);
    let e = active_port(&f, None).unwrap_err();
    assert!(e.to_string().starts_with("no RDMA device: no active port"), "{e}");
}
