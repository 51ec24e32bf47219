//! The transport conformance suite against the shm transport as programs
//! that link this crate use it: its table registered in the program's
//! transport registry (`transport_shm::plugin::table`) and resolved by
//! name, not loaded from a file (`transport-shm-plugin` runs the same
//! suite against `libdragon_transport_shm.so`).

use transport_abi::conformance::Target;

transport_abi::transport_conformance_tests!(Target::registered(transport_shm::plugin::table(), ""));

#[test]
fn the_registered_table_is_the_one_resolved_by_name() {
    let p = transport_shm::plugin::registered().unwrap();
    assert!(p.is_static() && p.name() == "shm");
    let r = transport_abi::registry::resolve("shm").unwrap();
    assert!(r.is_static() && r.path().as_os_str().is_empty());
    assert!(transport_abi::registry::transports().contains(&("shm".to_owned(), true)));
}
