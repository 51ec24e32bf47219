//! RDMA or TCP between node services, chosen without configuration
//! (`runtime::fabric`), with in-process nodes on loopback whose RDMA ports
//! are on simulated networks (`transport_verbs::sim`): which fabric each
//! link uses and why, the log line per peer, the report processes read,
//! requests of every size carried either way, and forcing either.

use runtime::fabric::{Mode, Setting};
use runtime::proto::{self as rp, out};
use runtime::service::Options;
use runtime::testing::LocalCluster;
use std::time::Duration;
use test_support::watchdog;
use transport_shm::blocks::{BlockId, BlockMessage, Store};
use transport_tcp::local::ServiceClient;
use transport_tcp::proto;
use transport_verbs::boot::FabricSpec;

fn opts(mode: Mode, spec: FabricSpec) -> Options {
    Options { fabric: Some(Setting { mode, spec }), ..Options::default() }
}

fn sim(net: &str) -> FabricSpec {
    FabricSpec::Sim(net.to_owned())
}

/// rdma-core that cannot be loaded: no RDMA device, on any machine.
fn no_device() -> FabricSpec {
    FabricSpec::Ibverbs { lib: Some("/nonexistent/libibverbs.so.1".into()), gid_index: None }
}

const WAIT: Duration = Duration::from_secs(30);

/// Create a channel on `node` through `c`, send it `data` and read it back.
fn round_trip(c: &ServiceClient, node: u32, data: &[u8]) {
    let mut p = 64u64.to_le_bytes().to_vec();
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    let r = c.call(node, proto::CREATE, &p).unwrap();
    let (att, _) = proto::take_u64(&r).unwrap();
    c.call(node, proto::SEND, &proto::op_payload(att, proto::timeout_ns(Some(WAIT)), data)).unwrap();
    let got = c.call(node, proto::RECV, &proto::op_payload(att, proto::timeout_ns(Some(WAIT)), &[])).unwrap();
    assert!(got[..] == data[..], "{} bytes to node {node} came back damaged", data.len());
    c.call(node, proto::DESTROY, &att.to_le_bytes()).unwrap();
}

/// The LOG lines node `i` wrote so far.
fn logs(c: &LocalCluster, i: usize) -> Vec<String> {
    c.nodes[i]
        .records()
        .into_iter()
        .filter(|(k, _)| *k == out::LOG)
        .map(|(_, p)| String::from_utf8_lossy(&p).into_owned())
        .collect()
}

/// What node `i`'s service reports (TRANSPORTS), as text.
fn report(c: &LocalCluster, i: usize) -> String {
    let s = ServiceClient::connect(&c.service(i)).unwrap();
    String::from_utf8(s.call(i as u32, rp::TRANSPORTS, &[]).unwrap().to_vec()).unwrap()
}

/// Node `from`'s RDMA traffic to `peer` as its report says: sent inline,
/// written, read by the peer, received, read in place.
fn carried(r: &str, peer: u32) -> Vec<u64> {
    let key = "\"carried\":{";
    let all = &r[r.find(key).unwrap_or_else(|| panic!("{r}")) + key.len()..];
    let at = all.find(&format!("\"{peer}\":[")).unwrap_or_else(|| panic!("no link to {peer}: {r}"));
    let list = &all[at..];
    list[list.find('[').unwrap() + 1..list.find(']').unwrap()].split(',').map(|x| x.parse().unwrap()).collect()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn rdma_where_both_ends_share_a_network_tcp_elsewhere() {
    watchdog::start();
    let (net_a, net_b) = (test_support::unique_name("fa"), test_support::unique_name("fb"));
    // Nodes 0 and 1 on one simulated network, node 2 on another.
    let c = LocalCluster::start_with(3, Duration::from_secs(5), |i| {
        opts(Mode::Auto, sim(if i < 2 { &net_a } else { &net_b }))
    })
    .unwrap();
    let on1 = ServiceClient::connect(&c.service(1)).unwrap();
    let on2 = ServiceClient::connect(&c.service(2)).unwrap();
    // Every size, both ways: inline, ring, RDMA read of a large message.
    for n in [0, 10, 5000, 100_000, 10 << 20] {
        round_trip(&on1, 0, &pattern(n));
        round_trip(&on2, 0, &pattern(n));
        round_trip(&on2, 1, &pattern(n));
    }
    // Node 1 joined node 0 over RDMA; node 2 joined over TCP and reached
    // node 1 over TCP too. One line each, from the connecting side.
    let l1 = logs(&c, 1);
    assert_eq!(l1.len(), 1, "{l1:?}");
    assert!(
        l1[0].starts_with("node 1 (127.0.0.1) to node 0 (127.0.0.1): verbs (sim0 port 1 to sim0 port 1)"),
        "{l1:?}"
    );
    let l2 = logs(&c, 2);
    assert_eq!(l2.len(), 2, "{l2:?}");
    for l in &l2 {
        assert!(l.contains(": tcp (not on a common RDMA network"), "{l}");
    }
    assert!(logs(&c, 0).is_empty(), "the accepting side logs nothing");
    // The reports: both sides of each link agree.
    let r0 = report(&c, 0);
    assert!(r0.starts_with("{\"node\":0,\"rdma\":\"sim0 port 1\",\"why_not\":null,"), "{r0}");
    assert!(r0.contains("\"1\":\"verbs (sim0 port 1 to sim0 port 1)\""), "{r0}");
    assert!(r0.contains("\"2\":\"tcp (not on a common RDMA network"), "{r0}");
    let r1 = report(&c, 1);
    assert!(r1.contains("\"0\":\"verbs (sim0 port 1 to sim0 port 1)\""), "{r1}");
    assert!(r1.contains("\"2\":\"tcp (not on a common RDMA network"), "{r1}");
    // The traffic between nodes 0 and 1 went over RDMA, every way of it
    // (node 1's requests, node 0's replies, the 10 MiB ones read by RDMA).
    let (to1, to0) = (carried(&r0, 1), carried(&r1, 0));
    assert!(to1[..4].iter().all(|&n| n > 0), "node 0 to 1 sent inline, written, large, received: {to1:?}");
    assert!(to0[..4].iter().all(|&n| n > 0), "node 1 to 0 sent inline, written, large, received: {to0:?}");
    // No message named a block of a store: nothing was read in place.
    assert_eq!((to1[4], to0[4]), (0, 0));
    assert!(!r0.contains("\"carried\":{\"1\":[0") && !r0[r0.find("carried").unwrap()..].contains("\"2\""), "{r0}");
}

/// A remote receive of a message naming a block of the serving node's
/// store: the reply's bytes are read by the peer straight from the block
/// (no copy on the serving side), and the block goes back to the store.
#[test]
fn blocks_of_the_store_are_read_in_place_across_an_rdma_link() {
    watchdog::start();
    let net = test_support::unique_name("fi");
    let c = LocalCluster::start_with(2, Duration::from_secs(5), |_| opts(Mode::Auto, sim(&net))).unwrap();
    blocks_across(&c);
    let to1 = carried(&report(&c, 0), 1);
    assert_eq!(to1[4], 3, "node 0 to 1 sent inline, written, large, received, in place: {to1:?}");
}

/// The same over TCP: the block's bytes go on the link as they are.
#[test]
fn blocks_of_the_store_cross_a_tcp_link_whole() {
    watchdog::start();
    let net = test_support::unique_name("ft");
    let c = LocalCluster::start_with(2, Duration::from_secs(5), |_| opts(Mode::Tcp, sim(&net))).unwrap();
    blocks_across(&c);
    assert!(!report(&c, 0).contains("\"carried\":{\"1\""), "an RDMA link where TCP was forced");
}

/// Sends that name a block of the sender's node's store (SEND_BLOCK):
/// node 1's service sends the block's bytes on to node 0 (over RDMA read
/// in place), and keeps a block message for its own node as it is.
#[test]
fn blocks_sent_from_a_node_go_on_as_their_bytes() {
    watchdog::start();
    for mode in [Mode::Auto, Mode::Tcp] {
        let net = test_support::unique_name("fs");
        let c = LocalCluster::start_with(2, Duration::from_secs(5), |_| opts(mode, sim(&net))).unwrap();
        let on1 = ServiceClient::connect(&c.service(1)).unwrap();
        let name = test_support::unique_name("blk");
        let store = Store::open(&name).unwrap();
        let data = pattern(2 << 20);
        let block_message = || {
            let blk = store.take(data.len()).unwrap();
            store.write(blk, &data).unwrap();
            let m = store.lent(blk).send(store.attachment(), blk.gen).unwrap();
            BlockMessage::encode(0x42, &name, BlockId { gen: m, ..blk }, data.len())
        };
        for node in [0u32, 1] {
            let mut p = 64u64.to_le_bytes().to_vec();
            p.extend_from_slice(&0u64.to_le_bytes());
            p.extend_from_slice(&0u64.to_le_bytes());
            let r = on1.call(node, proto::CREATE, &p).unwrap();
            let (att, _) = proto::take_u64(&r).unwrap();
            let wait = proto::timeout_ns(Some(WAIT));
            for _ in 0..3 {
                on1.call(node, proto::SEND_BLOCK, &proto::op_payload(att, wait, &block_message())).unwrap();
                let flags = [proto::RECV_BLOCKS];
                let got = on1.call(node, proto::RECV, &proto::op_payload(att, wait, &flags)).unwrap();
                assert_eq!(got.len(), data.len() + 1, "{mode:?} to node {node}");
                assert!(
                    got[0] == 0x42 && got[1..] == data[..],
                    "{mode:?}: the block's bytes came damaged to node {node}"
                );
                assert!(test_support::eventually(WAIT, || store.blocks_in_use() == 0), "a block was not given back");
            }
            // The same block message twice: for another node the second
            // names a block already sent on, refused with a clear error (and
            // nothing sent); its own node keeps both as they are, and the
            // second is refused when received.
            let once = block_message();
            on1.call(node, proto::SEND_BLOCK, &proto::op_payload(att, wait, &once)).unwrap();
            let again = on1.call(node, proto::SEND_BLOCK, &proto::op_payload(att, wait, &once));
            let flags = [proto::RECV_BLOCKS];
            let got = on1.call(node, proto::RECV, &proto::op_payload(att, wait, &flags)).unwrap();
            assert!(got[1..] == data[..]);
            if node == 0 {
                let e = again.unwrap_err().to_string();
                assert!(e.contains("does not hold"), "{e}");
            } else {
                again.unwrap();
                let e = on1.call(node, proto::RECV, &proto::op_payload(att, wait, &flags)).unwrap_err().to_string();
                assert!(e.contains("does not hold"), "{e}");
            }
            assert!(test_support::eventually(WAIT, || store.blocks_in_use() == 0));
            on1.call(node, proto::DESTROY, &att.to_le_bytes()).unwrap();
        }
        if mode == Mode::Auto {
            let to0 = carried(&report(&c, 1), 0);
            assert!(to0[4] >= 4, "node 1 to 0: sent inline, written, large, received, in place: {to0:?}");
        }
        drop(store);
        for i in 0..64 {
            let _ = transport_shm::segment::unlink(&format!("{name}{i}"));
        }
        let _ = transport_shm::segment::unlink(&name);
    }
}

/// Three messages naming blocks of a store, sent to a channel of node 0
/// and received from node 1: whole, and every block given back.
fn blocks_across(c: &LocalCluster) {
    let on1 = ServiceClient::connect(&c.service(1)).unwrap();
    let mut p = 64u64.to_le_bytes().to_vec();
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    let r = on1.call(0, proto::CREATE, &p).unwrap();
    let (att, _) = proto::take_u64(&r).unwrap();
    let name = test_support::unique_name("blk");
    let store = Store::open(&name).unwrap();
    let data = pattern(3 << 20);
    for _ in 0..3 {
        let blk = store.take(data.len()).unwrap();
        store.write(blk, &data).unwrap();
        let m = store.lent(blk).send(store.attachment(), blk.gen).unwrap();
        let msg = BlockMessage::encode(0x42, &name, BlockId { gen: m, ..blk }, data.len());
        on1.call(0, proto::SEND, &proto::op_payload(att, proto::timeout_ns(Some(WAIT)), &msg)).unwrap();
        let want_blocks = [proto::RECV_BLOCKS];
        let got =
            on1.call(0, proto::RECV, &proto::op_payload(att, proto::timeout_ns(Some(WAIT)), &want_blocks)).unwrap();
        assert_eq!(got.len(), data.len() + 1);
        assert!(got[0] == 0x42 && got[1..] == data[..], "the block's bytes came back damaged");
        assert!(test_support::eventually(WAIT, || store.blocks_in_use() == 0), "the block was not given back");
    }
    on1.call(0, proto::DESTROY, &att.to_le_bytes()).unwrap();
    drop(store);
    for i in 0..64 {
        let _ = transport_shm::segment::unlink(&format!("{name}{i}"));
    }
    let _ = transport_shm::segment::unlink(&name);
}

#[test]
fn without_a_device_every_link_is_tcp_and_says_why() {
    watchdog::start();
    let c = LocalCluster::start_with(2, Duration::from_secs(5), |_| opts(Mode::Auto, no_device())).unwrap();
    let on1 = ServiceClient::connect(&c.service(1)).unwrap();
    round_trip(&on1, 0, &pattern(1 << 20));
    let l1 = logs(&c, 1);
    assert_eq!(l1.len(), 1, "{l1:?}");
    assert!(l1[0].starts_with("node 1 (127.0.0.1) to node 0 (127.0.0.1): tcp (no RDMA device: "), "{l1:?}");
    let r0 = report(&c, 0);
    assert!(r0.starts_with("{\"node\":0,\"rdma\":null,\"why_not\":\"no RDMA device: "), "{r0}");
    assert!(r0.contains("\"1\":\"tcp (node 1 (127.0.0.1): no RDMA device: "), "{r0}");
}

#[test]
fn forcing_tcp_or_rdma() {
    watchdog::start();
    // TCP although both could use RDMA.
    let net = test_support::unique_name("ft");
    let c = LocalCluster::start_with(2, Duration::from_secs(5), |_| opts(Mode::Tcp, sim(&net))).unwrap();
    round_trip(&ServiceClient::connect(&c.service(1)).unwrap(), 0, b"over tcp");
    let l1 = logs(&c, 1);
    assert!(l1.len() == 1 && l1[0].ends_with(": tcp (DRAGON_FABRIC=tcp)"), "{l1:?}");
    assert!(report(&c, 0).contains("\"1\":\"tcp (node 1 (127.0.0.1): DRAGON_FABRIC=tcp)\""));
    drop(c);
    // RDMA forced and available: used.
    let c = LocalCluster::start_with(2, Duration::from_secs(5), |_| opts(Mode::Verbs, sim(&net))).unwrap();
    round_trip(&ServiceClient::connect(&c.service(1)).unwrap(), 0, &pattern(300_000));
    assert!(logs(&c, 1)[0].contains(": verbs ("));
    drop(c);
    // RDMA forced without a device: the service does not start.
    let e = LocalCluster::start_with(2, Duration::from_secs(5), |_| opts(Mode::Verbs, no_device())).unwrap_err();
    assert!(e.to_string().contains("DRAGON_FABRIC=verbs, but no RDMA device: "), "{e}");
    // RDMA forced, the peer on another network: the node cannot join.
    let other = test_support::unique_name("fo");
    let e = LocalCluster::start_with(2, Duration::from_secs(5), |i| {
        opts(Mode::Verbs, sim(if i == 0 { &net } else { &other }))
    })
    .unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("cannot join the primary node")
            && e.contains("DRAGON_FABRIC=verbs, but tcp (not on a common RDMA network"),
        "{e}"
    );
}

#[test]
fn a_cut_rdma_link_loses_the_node_saying_why() {
    watchdog::start();
    let (net_a, net_b) = (test_support::unique_name("fc"), test_support::unique_name("fd"));
    // Nodes 1 and 2 on one network (RDMA between them), node 0 apart.
    let c = LocalCluster::start_with(3, Duration::from_secs(5), |i| {
        opts(Mode::Auto, sim(if i == 0 { &net_b } else { &net_a }))
    })
    .unwrap();
    let on1 = ServiceClient::connect(&c.service(1)).unwrap();
    // A channel on node 2, used from node 1.
    let mut p = 64u64.to_le_bytes().to_vec();
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    let (att, handle) =
        proto::take_u64(&on1.call(2, proto::CREATE, &p).unwrap()).map(|(a, h)| (a, h.to_vec())).unwrap();
    on1.call(2, proto::SEND, &proto::op_payload(att, proto::timeout_ns(Some(WAIT)), b"before")).unwrap();
    let got = on1.call(2, proto::RECV, &proto::op_payload(att, proto::timeout_ns(Some(WAIT)), &[])).unwrap();
    assert_eq!(&got[..], b"before");
    assert!(logs(&c, 1).iter().any(|l| l.contains("to node 2 (127.0.0.1): verbs (")), "RDMA between 1 and 2");
    // A receive waits on node 2 (nothing will come) when the network dies.
    let waiter = {
        let on1 = on1.clone();
        std::thread::spawn(move || on1.call(2, proto::RECV, &proto::op_payload(att, proto::timeout_ns(None), &[])))
    };
    transport_verbs::sim::cut_network(&net_a);
    let e = waiter.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("node 2 (127.0.0.1) is lost: its RDMA link failed"), "{e}");
    // Later requests fail at once, the same way; node 1 reported the loss.
    let e = on1.call(2, proto::LEN, &att.to_le_bytes()).unwrap_err().to_string();
    assert!(e.contains("node 2 (127.0.0.1) is lost"), "{e}");
    let lost: Vec<String> = c.nodes[1]
        .records()
        .into_iter()
        .filter(|(k, _)| *k == out::LOST)
        .map(|(_, p)| String::from_utf8_lossy(&p[4..]).into_owned())
        .collect();
    assert!(lost.iter().any(|l| l.contains("its RDMA link failed")), "{lost:?}");
    // The TCP links, to node 0, are untouched.
    round_trip(&on1, 0, b"still fine");
    // The channel is still there on node 2: destroyed from there.
    let on2 = ServiceClient::connect(&c.service(2)).unwrap();
    let (att2, _) = proto::take_u64(&on2.call(2, proto::ATTACH, &handle).unwrap()).unwrap();
    on2.call(2, proto::DESTROY, &att2.to_le_bytes()).unwrap();
}
