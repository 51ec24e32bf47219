//! Node services of several in-process "nodes" on loopback: joining,
//! requests carried between nodes, waits, timeouts, errors, a lost node.
//! (The same services between real nodes, namespaces with their own
//! network, `/dev/shm` and pids, are tested from Python with the test bed.)

use runtime::proto::out;
use runtime::testing::LocalCluster;
use std::time::Duration;
use test_support::watchdog;
use transport_tcp::local::ServiceClient;
use transport_tcp::proto;
use transport_tcp::TcpError;

fn create(c: &ServiceClient, node: u32) -> (u64, Vec<u8>) {
    let mut p = 64u64.to_le_bytes().to_vec();
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    let r = c.call(node, proto::CREATE, &p).unwrap();
    let (att, h) = proto::take_u64(&r).unwrap();
    (att, h.to_vec())
}

fn send(c: &ServiceClient, node: u32, att: u64, data: &[u8]) -> Result<(), TcpError> {
    c.call(node, proto::SEND, &proto::op_payload(att, proto::timeout_ns(Some(Duration::from_secs(30))), data))
        .map(|_| ())
}

fn recv(c: &ServiceClient, node: u32, att: u64, t: Option<Duration>) -> Result<Vec<u8>, TcpError> {
    c.call(node, proto::RECV, &proto::op_payload(att, proto::timeout_ns(t), &[])).map(|b| b.to_vec())
}

fn code(e: TcpError) -> (i32, String) {
    match e {
        TcpError::Remote { code, message } => (code, message),
        e => panic!("expected an error from the service, got {e}"),
    }
}

#[test]
fn three_nodes_join_and_carry_channel_requests_between_them() {
    watchdog::start();
    let c = LocalCluster::start(3, Duration::from_secs(5)).unwrap();
    assert_eq!(c.table.matches("\"index\":").count(), 3, "{}", c.table);
    let on2 = ServiceClient::connect(&c.service(2)).unwrap();
    let on1 = ServiceClient::connect(&c.service(1)).unwrap();
    // A channel on node 0, created from node 2, attached from node 1.
    let (att2, handle) = create(&on2, 0);
    let r = on1.call(0, proto::ATTACH, &handle).unwrap();
    let (att1, _) = proto::take_u64(&r).unwrap();
    let big: Vec<u8> = (0..(10 << 20)).map(|i| (i % 253) as u8).collect();
    send(&on2, 0, att2, b"first").unwrap();
    send(&on2, 0, att2, &big).unwrap();
    send(&on2, 0, att2, b"").unwrap();
    let len = on1.call(0, proto::LEN, &att1.to_le_bytes()).unwrap();
    assert_eq!(proto::take_u64(&len).unwrap().0, 3);
    assert_eq!(recv(&on1, 0, att1, None).unwrap(), b"first");
    assert_eq!(recv(&on1, 0, att1, None).unwrap(), big);
    assert_eq!(recv(&on1, 0, att1, None).unwrap(), b"");
    // A receive that waits is answered when a message comes.
    let waiter = {
        let on1 = on1.clone();
        std::thread::spawn(move || recv(&on1, 0, att1, None))
    };
    send(&on2, 0, att2, b"later").unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), b"later");
    // A timeout is the channel's timeout error.
    let (k, _) = code(recv(&on1, 0, att1, Some(Duration::from_millis(50))).unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_ETIMEDOUT);
    // A node that is not in the run, an attachment this client does not hold.
    let (k, m) = code(on1.call(7, proto::LEN, &att1.to_le_bytes()).unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EINVAL, "{m}");
    assert!(m.contains("no node 7"), "{m}");
    let (k, _) = code(on2.call(0, proto::LEN, &att1.wrapping_add(100).to_le_bytes()).unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EINVAL);
    // A forged handle is a clear error from the channel's node.
    let mut bad = handle.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let (k, m) = code(on1.call(0, proto::ATTACH, &bad).unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EBADMSG, "{m}");
    on2.call(0, proto::DESTROY, &att2.to_le_bytes()).unwrap();
    // The node table is there for processes.
    let t = on1.call_raw(runtime::proto::NODES, &[], &[]).unwrap();
    assert_eq!(String::from_utf8_lossy(&t), c.table);
}

#[test]
fn a_stopped_node_fails_what_waits_on_it_and_is_reported() {
    watchdog::start();
    let mut c = LocalCluster::start(3, Duration::from_secs(5)).unwrap();
    let on1 = ServiceClient::connect(&c.service(1)).unwrap();
    let (att, _) = create(&on1, 2);
    let waiter = {
        let on1 = on1.clone();
        std::thread::spawn(move || recv(&on1, 2, att, None))
    };
    // Wait until the receive is parked on node 2: its LEN is answered
    // after it on the same link, and node 2 has no message.
    let len = on1.call(2, proto::LEN, &att.to_le_bytes()).unwrap();
    assert_eq!(proto::take_u64(&len).unwrap().0, 0);
    assert_eq!(c.nodes[2].stop(), 0, "node 2 stopped cleanly");
    let (k, m) = code(waiter.join().unwrap().unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EIO, "{m}");
    assert!(m.contains("node 2") && m.contains("lost"), "{m}");
    // Later requests fail at once, naming the node.
    let (_, m) = code(recv(&on1, 2, att, None).unwrap_err());
    assert!(m.contains("node 2"), "{m}");
    // The primary says so to its launcher.
    let lost = c.nodes[0].wait_for(out::LOST).unwrap();
    assert_eq!(lost[..4], 2u32.to_le_bytes());
    assert!(String::from_utf8_lossy(&lost[4..]).contains("node 2"), "{}", String::from_utf8_lossy(&lost));
}

#[test]
fn a_secondary_whose_primary_is_gone_tears_itself_down() {
    watchdog::start();
    let mut c = LocalCluster::start(2, Duration::from_secs(5)).unwrap();
    c.nodes[0].stop();
    let stopped = c.nodes[1].wait_for(out::STOPPED).unwrap();
    let text = String::from_utf8_lossy(&stopped).into_owned();
    assert!(text.contains("node 0") && text.contains("lost"), "{text}");
    assert_eq!(c.nodes[1].stop(), 1, "a secondary that lost its primary exits with a failure");
}

#[test]
fn the_cpus_a_launcher_gives_a_node_are_its_cpus_in_the_table() {
    watchdog::start();
    // Node 0 is told its share of an allocation (as a Slurm launch tells
    // it); node 1 is not and reports its service's affinity.
    let c = LocalCluster::start_with_cpus(2, Duration::from_secs(5), &[7]).unwrap();
    let affinity = runtime::table::NodeInfo::local(0, "here", 0).cpus;
    let cpus: Vec<&str> = c.table.split("\"cpus\":").skip(1).map(|t| t.split(',').next().unwrap()).collect();
    assert_eq!(cpus, vec!["7".to_string(), affinity.to_string()], "{}", c.table);
}

#[test]
fn the_primary_names_the_hosts_that_did_not_join() {
    watchdog::start();
    use runtime::bootstrap::Bootstrap;
    let boot = Bootstrap {
        run: transport_shm::RunId::new_owned_by_me().as_str().to_owned(),
        secret: transport_tcp::Secret::random(),
        index: 0,
        hosts: vec!["here".into(), "nowhere-a".into(), "nowhere-b".into()],
        peer_timeout: Duration::from_secs(5),
        join_timeout: Duration::from_millis(300),
        cpus: None,
    };
    let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    struct W(crossbeam_channel::Sender<Vec<u8>>);
    impl std::io::Write for W {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (_keep, r) = std::os::unix::net::UnixStream::pair().unwrap();
    let opts = runtime::service::Options { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    let code = runtime::service::run(
        boot,
        Box::new(std::io::BufReader::new(r)),
        runtime::service::Out::new(Box::new(W(tx))),
        opts,
    );
    assert_eq!(code, 1);
    let all: Vec<u8> = rx.try_iter().flatten().collect();
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("did not join") && text.contains("nowhere-a, nowhere-b"), "{text}");
}

#[test]
fn unauthenticated_peers_are_bounded_and_do_not_disturb_the_run() {
    watchdog::start();
    use std::io::Read;
    let c = LocalCluster::start(2, Duration::from_secs(5)).unwrap();
    let addr = c.nodes[0].address.clone();
    // More idle connections from one address than the per-address cap:
    // the oldest are closed to make room (each gets a REJECT, then EOF).
    let cap = transport_tcp::gate::MAX_UNAUTHENTICATED_PER_ADDR;
    let idle: Vec<std::net::TcpStream> = (0..cap + 5).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    let mut first = idle[0].try_clone().unwrap();
    first.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match first.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the oldest idle connection was not closed: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("too many connections from this address"), "{text}");
    // The run works meanwhile: a request through node 1 to node 0.
    let on1 = ServiceClient::connect(&c.service(1)).unwrap();
    let (att, _) = create(&on1, 0);
    send(&on1, 0, att, b"still here").unwrap();
    assert_eq!(recv(&on1, 0, att, None).unwrap(), b"still here");
    drop(idle);
}

#[test]
fn a_process_connects_straight_to_another_nodes_service_with_its_own_services_word() {
    watchdog::start();
    let c = LocalCluster::start(3, Duration::from_secs(5)).unwrap();
    let on1 = ServiceClient::connect(&c.service(1)).unwrap();
    let on2 = ServiceClient::connect(&c.service(2)).unwrap();
    // Where node 0's service is, as node 1's service knows it.
    let route = on1.call(0, proto::ROUTE, &[]).unwrap();
    let route = String::from_utf8_lossy(&route).into_owned();
    let addr = route.lines().nth(1).unwrap().to_owned();
    assert_eq!(addr, c.nodes[0].address, "{route}");
    // Its own node is not another node; a short VOUCH is refused.
    let (k, m) = code(on1.call(1, proto::VOUCH, &[0; 64]).unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EINVAL, "{m}");
    let (k, m) = code(on1.call(0, proto::VOUCH, &[0; 10]).unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EPROTO, "{m}");

    let direct = on1.connect_direct(0, Duration::from_secs(10)).unwrap();
    assert!(direct.is_direct() && !on1.is_direct());
    // A channel of node 0 made through node 2's service, used straight
    // from node 1: small and large messages, a receive that waits.
    let (att2, handle) = create(&on2, 0);
    let (att, _) =
        proto::take_u64(&direct.call(0, proto::ATTACH, &handle).unwrap()).map(|(a, r)| (a, r.to_vec())).unwrap();
    let big: Vec<u8> = (0..(5 << 20)).map(|i| (i % 251) as u8).collect();
    send(&on2, 0, att2, b"one").unwrap();
    send(&direct, 0, att, &big).unwrap();
    assert_eq!(recv(&direct, 0, att, None).unwrap(), b"one");
    assert_eq!(recv(&on2, 0, att2, None).unwrap(), big);
    let waiter = {
        let direct = direct.clone();
        std::thread::spawn(move || recv(&direct, 0, att, None))
    };
    send(&on2, 0, att2, b"later").unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), b"later");
    // Deferred sends: every success comes, by the ping's reply at the
    // latest, and the messages are there in order; a failure comes
    // without a ping (waited for alone, it would otherwise never come).
    let deferred = |a: u64, m: &[u8]| {
        direct.submit(proto::SEND_DEFERRED, &0u32.to_le_bytes(), &[&proto::op_payload(a, 0, &[]), m].concat()).unwrap()
    };
    let tickets: Vec<_> = (0..3u8).map(|i| deferred(att, &[i])).collect();
    direct.notify(0, proto::PING, &[]).unwrap();
    for t in tickets {
        t.wait(None).unwrap().unwrap();
    }
    for i in 0..3u8 {
        assert_eq!(recv(&on2, 0, att2, None).unwrap(), [i]);
    }
    let (k, _) = code(deferred(att + 100, b"x").wait(None).unwrap().unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EINVAL);
    // More than a connection holds back: they come without a ping.
    let tickets: Vec<_> = (0..proto::LAZY_REPLIES).map(|_| deferred(att, b"m")).collect();
    for t in tickets {
        t.wait(None).unwrap().unwrap();
    }
    for _ in 0..proto::LAZY_REPLIES {
        assert_eq!(recv(&on2, 0, att2, None).unwrap(), b"m");
    }

    // Requests for any other node, and relaying ones, are refused on it;
    // so is an attachment it does not hold.
    let (k, m) = code(direct.call(2, proto::LEN, &att.to_le_bytes()).unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EINVAL, "{m}");
    let (k, m) = code(direct.call(0, runtime::proto::LAUNCH, &[0; 16]).unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EPROTO, "{m}");
    let (k, _) = code(direct.call(0, proto::LEN, &(att + 100).to_le_bytes()).unwrap_err());
    assert_eq!(k, transport_abi::abi::DRAGON_EINVAL);

    // Without a service's word, or with another run's, no connection.
    let forged = |_: &[u8; 32], client: &[u8; 32]| {
        let mut p = 1u32.to_le_bytes().to_vec();
        p.extend_from_slice(&std::process::id().to_le_bytes());
        p.extend_from_slice(client);
        p.extend_from_slice(&[7; 32]);
        Ok((p, vec![0; 32]))
    };
    let e =
        transport_tcp::client::Client::connect_vouched(&addr, Duration::from_secs(10), &mut { forged }).unwrap_err();
    assert!(matches!(&e, TcpError::Auth(m) if m.contains("not vouched for")), "{e}");
    let other = transport_tcp::Secret::random();
    let mut other_word = |agent: &[u8; 32], client: &[u8; 32]| Ok(other.vouch(agent, client, 1, 4242));
    let e =
        transport_tcp::client::Client::connect_vouched(&addr, Duration::from_secs(10), &mut other_word).unwrap_err();
    assert!(matches!(&e, TcpError::Auth(_)), "{e}");

    drop(direct);
    on2.call(0, proto::DESTROY, &att2.to_le_bytes()).unwrap();
}

#[test]
fn a_service_holding_its_most_direct_connections_refuses_more_and_takes_them_again_once_one_goes() {
    watchdog::start();
    let opts = |i: usize| runtime::service::Options { direct_max: (i == 0).then_some(1), ..Default::default() };
    let c = LocalCluster::start_with(3, Duration::from_secs(5), opts).unwrap();
    let on1 = ServiceClient::connect(&c.service(1)).unwrap();
    let on2 = ServiceClient::connect(&c.service(2)).unwrap();
    let first = on1.connect_direct(0, Duration::from_secs(10)).unwrap();
    first.call(0, proto::PING, &[]).unwrap();
    let e = on2.connect_direct(0, Duration::from_secs(10)).unwrap_err();
    assert!(matches!(&e, TcpError::Auth(m) if m.contains("as many direct connections as it may (1)")), "{e}");
    // The relayed way still reaches node 0.
    on2.call(0, proto::PING, &[]).unwrap();
    // Node 0 is its own for node 1's other process, whatever the others hold.
    drop(first);
    let second = loop {
        // The service sees the first go when it reads its end.
        match on2.connect_direct(0, Duration::from_secs(10)) {
            Ok(c) => break c,
            Err(TcpError::Auth(m)) if m.contains("as many direct connections") => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    second.call(0, proto::PING, &[]).unwrap();
}

#[test]
fn a_parent_connection_of_a_process_without_a_lifeline_ends_after_its_reply() {
    // PARENT asks for the sentinel of the parent of a process started here
    // for another node; for a process with no lifeline here (none was
    // started, or its parent has ended) it is a connection that reads its
    // reply, then end of file at once.
    use std::io::{Read, Write};
    use std::os::linux::net::SocketAddrExt;
    watchdog::start();
    let c = LocalCluster::start(2, Duration::from_secs(5)).unwrap();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(c.service(1).as_bytes()).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    let payload = [1u32.to_le_bytes(), 4242u32.to_le_bytes()].concat();
    let mut req = ((9 + payload.len()) as u32).to_le_bytes().to_vec();
    req.push(runtime::proto::PARENT);
    req.extend_from_slice(&7u64.to_le_bytes());
    req.extend_from_slice(&payload);
    s.write_all(&req).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let mut ok = 9u32.to_le_bytes().to_vec();
    ok.push(proto::OK);
    ok.extend_from_slice(&7u64.to_le_bytes());
    assert_eq!(got, ok);
}

#[test]
fn routes_reach_another_node_straight_and_this_node_when_asked() {
    // A direct connection is asked for on a connection made for it (the
    // process holds none to its own service until it needs one).
    watchdog::start();
    let c = LocalCluster::start(2, Duration::from_secs(5)).unwrap();
    let routes = transport_tcp::local::Routes::new(&c.service(1));
    let direct = routes.client_for(0).unwrap();
    assert!(direct.is_direct());
    direct.call(0, proto::PING, &[]).unwrap();
    let local = routes.local().unwrap();
    assert!(!local.is_direct());
    local.call(0, proto::PING, &[]).unwrap();
    // Asked again, the same ways.
    assert!(routes.client_for(0).unwrap().is_direct());
    let gone = transport_tcp::local::Routes::new("dragon-no-such-service");
    assert!(gone.client_for(0).is_err() && gone.local().is_err());
}
