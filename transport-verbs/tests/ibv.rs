//! The real verbs implementation where there is no RDMA device: loading
//! never crashes, and every way of having no device is a clean
//! `VerbsError::NoDevice` (what the transport reports, and its callers fall
//! back on). On a machine with devices, discovery lists their ports.

use transport_verbs::boot::{open_port, FabricSpec};
use transport_verbs::ibv::IbvFabric;
use transport_verbs::verbs::{Fabric, VerbsError};

#[test]
fn a_missing_library_is_no_device() {
    let e = IbvFabric::load(Some("/nonexistent/libibverbs.so.1")).unwrap_err();
    assert!(matches!(&e, VerbsError::NoDevice(m) if m.contains("cannot be loaded")), "{e:?}");
    assert!(e.to_string().starts_with("no RDMA device: "), "{e}");
    // A file that is not the library either.
    let e = IbvFabric::load(Some("/etc/hostname")).unwrap_err();
    assert!(matches!(e, VerbsError::NoDevice(_)), "{e:?}");
    let spec = FabricSpec::Ibverbs { lib: Some("/nonexistent/libibverbs.so.1".into()), gid_index: None };
    assert!(matches!(open_port(&spec, None), Err(VerbsError::NoDevice(_))));
}

#[test]
fn the_installed_library_lists_devices_or_says_there_are_none() {
    let f = match IbvFabric::load(None) {
        Ok(f) => f,
        Err(VerbsError::NoDevice(why)) => {
            eprintln!("rdma-core is not installed here: {why}");
            return;
        }
        Err(e) => panic!("loading gave {e:?}, not NoDevice"),
    };
    match f.ports() {
        Ok(ports) => {
            assert!(!ports.is_empty());
            for p in &ports {
                assert!(!p.device.is_empty() && p.port >= 1, "{p:?}");
            }
            eprintln!("RDMA ports here: {ports:?}");
        }
        Err(e) => {
            assert!(matches!(e, VerbsError::NoDevice(_)), "{e:?}");
            eprintln!("{e}");
        }
    }
    // Opening the default fabric's active port: a port, or no device.
    match open_port(&FabricSpec::Ibverbs { lib: None, gid_index: None }, None) {
        Ok((info, _port)) => assert!(info.is_active()),
        Err(e) => assert!(matches!(e, VerbsError::NoDevice(_)), "{e:?}"),
    }
}
