//! The shm plugin as a user finds it: by name beside the binary, with its
//! config errors reported through the ABI.

use std::time::Duration;
use transport_abi::conformance::built_library;
use transport_abi::{ChannelAttrs, Discovery, ErrorKind, Plugin};

#[test]
fn found_by_name_beside_the_binary() {
    let lib = built_library("dragon_transport_shm");
    let d = Discovery { beside: vec![lib.parent().unwrap().to_path_buf()], ..Discovery::default() };
    let p = d.find("shm").unwrap();
    assert_eq!((p.name(), p.path()), ("shm", lib.as_path()));
}

#[test]
fn config_errors_cross_the_boundary() {
    let p = Plugin::load(built_library("dragon_transport_shm")).unwrap();
    let e = p.open("colour=blue").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.message().contains("colour=blue") && e.message().contains("spin_us"), "{e}");
    let t = p.open("spin_us=0").unwrap();
    let ch = t.create_channel(&ChannelAttrs { capacity: 2, ..ChannelAttrs::default() }).unwrap();
    ch.send(b"x", None).unwrap();
    assert_eq!(ch.recv(Some(Duration::from_secs(5))).unwrap(), b"x");
    let e = t.create_channel(&ChannelAttrs { capacity: 3, slot_size: 1 << 40, ..ChannelAttrs::default() });
    assert_eq!(e.map(|_| ()).unwrap_err().kind(), ErrorKind::Invalid);
    ch.destroy().unwrap();
}
