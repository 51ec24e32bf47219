//! The transports of this program, by name: those linked in (registered
//! with their static table) and those loaded from plugin files. Every
//! transport a program uses is resolved here, so that one name means one
//! transport for the whole process.
//!
//! At start a program registers the transports built into it
//! ([`register`], with the table `export::table` makes); anything then
//! asks for a transport by name ([`resolve`]): a linked-in one first, else
//! a plugin file found by [`Discovery::from_env`] and loaded once.
//!
//! A name is resolved once per process: the first plugin file found (or
//! given to [`load`]) stays the one that name means. A linked-in table is
//! checked exactly as a loaded one ([`Plugin::from_static`]), and the
//! conformance suite runs against registered tables as against files
//! (`conformance::Target::registered`).

use crate::abi::DragonTransportTable;
use crate::loader::{Discovery, LoadError, Plugin};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// What a name means, once resolved.
struct Entry {
    plugin: Plugin,
    /// The table of a linked-in transport (to tell a second registration of
    /// the same table from another one).
    table: Option<*const DragonTransportTable>,
}

// SAFETY: the pointer names a static table (immutable, lives forever); it
// is only compared.
unsafe impl Send for Entry {}

static ENTRIES: Mutex<Option<HashMap<String, Entry>>> = Mutex::new(None);

fn entries() -> MutexGuard<'static, Option<HashMap<String, Entry>>> {
    ENTRIES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Register a transport linked into this program under the name its table
/// gives. Registering the same table again returns the same transport;
/// another table under a name already taken (linked in or loaded) is
/// [`LoadError::Duplicate`].
pub fn register(table: &'static DragonTransportTable) -> Result<Plugin, LoadError> {
    let plugin = Plugin::from_static(table)?;
    let mut g = entries();
    let map = g.get_or_insert_with(HashMap::new);
    let ptr: *const DragonTransportTable = table;
    if let Some(e) = map.get(plugin.name()) {
        return match e.table {
            Some(p) if std::ptr::eq(p, ptr) => Ok(e.plugin.clone()),
            _ => Err(LoadError::Duplicate(plugin.name().to_owned())),
        };
    }
    map.insert(plugin.name().to_owned(), Entry { plugin: plugin.clone(), table: Some(ptr) });
    Ok(plugin)
}

/// The transport `name`: linked in, or loaded before, or else found by
/// [`Discovery::from_env`] and loaded (once).
pub fn resolve(name: &str) -> Result<Plugin, LoadError> {
    resolve_with(name, &Discovery::from_env())
}

/// [`resolve`], searching with `discovery` if `name` is not known yet.
pub fn resolve_with(name: &str, discovery: &Discovery) -> Result<Plugin, LoadError> {
    if let Some(p) = known(name) {
        return Ok(p);
    }
    // Found outside the lock (loading runs the library's initialisers);
    // if another thread resolved the name meanwhile, its plugin wins.
    let found = discovery.find(name)?;
    Ok(keep(name, found))
}

/// The transport `name` from the plugin file at `path` (which must be that
/// transport), unless the name is already resolved: then the one it
/// means, whatever file it came from.
pub fn load(name: &str, path: impl AsRef<Path>) -> Result<Plugin, LoadError> {
    if let Some(p) = known(name) {
        return Ok(p);
    }
    let path = path.as_ref();
    let found = Plugin::load(path)?;
    if found.name() != name {
        return Err(LoadError::NameMismatch {
            path: path.to_path_buf(),
            expected: name.to_owned(),
            found: found.name().to_owned(),
        });
    }
    Ok(keep(name, found))
}

/// What is registered or loaded now: (name, linked in?), sorted by name.
pub fn transports() -> Vec<(String, bool)> {
    let g = entries();
    let mut v: Vec<(String, bool)> =
        g.iter().flat_map(|m| m.iter()).map(|(n, e)| (n.clone(), e.plugin.is_static())).collect();
    v.sort();
    v
}

fn known(name: &str) -> Option<Plugin> {
    entries().as_ref().and_then(|m| m.get(name)).map(|e| e.plugin.clone())
}

fn keep(name: &str, found: Plugin) -> Plugin {
    let mut g = entries();
    let map = g.get_or_insert_with(HashMap::new);
    map.entry(name.to_owned()).or_insert(Entry { plugin: found, table: None }).plugin.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{DragonChannelAttrs, DRAGON_CAP_LOCAL, DRAGON_EINVAL};
    use crate::export::{table, ChannelImpl, Failure, Timeout, TransportImpl};
    use std::ffi::CStr;

    /// A transport that opens and does nothing else (named by `N`).
    struct Idle<const N: u8>;
    struct NoChannel;

    impl<const N: u8> TransportImpl for Idle<N> {
        type Channel = NoChannel;
        const NAME: &'static CStr = match N {
            0 => c"regtest_a",
            1 => c"regtest_a", // the same name, another table
            _ => c"regtest_b",
        };
        const CAPABILITIES: u64 = DRAGON_CAP_LOCAL;
        fn open(_: &str) -> Result<Self, Failure> {
            Ok(Idle)
        }
        fn create_channel(&self, _: &DragonChannelAttrs) -> Result<NoChannel, Failure> {
            Err(Failure::new(DRAGON_EINVAL, "no channels here"))
        }
        fn attach_channel(&self, _: &[u8]) -> Result<NoChannel, Failure> {
            Err(Failure::new(DRAGON_EINVAL, "no channels here"))
        }
    }

    impl ChannelImpl for NoChannel {
        type Message = Vec<u8>;
        fn handle(&self) -> Vec<u8> {
            Vec::new()
        }
        fn send(&self, _: &[u8], _: Timeout) -> Result<(), Failure> {
            Ok(())
        }
        fn recv(&self, _: Timeout) -> Result<Vec<u8>, Failure> {
            Ok(Vec::new())
        }
        fn poll(&self, _: u32, _: Timeout) -> Result<u32, Failure> {
            Ok(0)
        }
        fn len(&self) -> u64 {
            0
        }
        fn destroy(&self) -> Result<(), Failure> {
            Ok(())
        }
    }

    static A: DragonTransportTable = table::<Idle<0>>();
    static A_OTHER: DragonTransportTable = table::<Idle<1>>();
    static B: DragonTransportTable = table::<Idle<2>>();

    #[test]
    fn a_linked_in_table_is_registered_once_and_resolved_by_name() {
        let a = register(&A).unwrap();
        assert!(a.is_static() && a.path().as_os_str().is_empty());
        assert_eq!(a.name(), "regtest_a");
        // The same table again: the same transport.
        assert!(register(&A).unwrap().is_static());
        // Another table under the same name: refused, and the name keeps
        // meaning the first.
        match register(&A_OTHER) {
            Err(LoadError::Duplicate(n)) => assert_eq!(n, "regtest_a"),
            other => panic!("expected Duplicate, got {other:?}"),
        }
        let r = resolve_with("regtest_a", &Discovery::default()).unwrap();
        assert!(r.is_static());
        // Usable through the ABI like any plugin.
        let t = r.open("").unwrap();
        assert_eq!(t.name(), "regtest_a");
        assert!(transports().contains(&("regtest_a".to_owned(), true)));
        let e = load("regtest_a", "/nonexistent/libdragon_transport_regtest_a.so").unwrap();
        assert!(e.is_static(), "a resolved name keeps its meaning");
    }

    #[test]
    fn an_unknown_name_is_searched_for_and_not_found_is_an_error() {
        match resolve_with("regtest_nowhere", &Discovery::default()) {
            Err(LoadError::NotFound { name, .. }) => assert_eq!(name, "regtest_nowhere"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(load("regtest_nowhere", "/nonexistent/x.so"), Err(LoadError::Missing(_))));
        assert!(matches!(resolve_with("no/such", &Discovery::default()), Err(LoadError::BadName(_))));
        // A second linked-in transport registers beside the first; the
        // names that were not found are not kept.
        let b = register(&B).unwrap();
        assert_eq!(b.name(), "regtest_b");
        assert!(!transports().iter().any(|(n, _)| n == "regtest_nowhere"));
    }
}
