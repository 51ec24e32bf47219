//! The loader against plugins that are broken in every way it must catch:
//! each a typed error naming the file, never a crash. The plugins are built
//! here from `tests/c/stub_plugin.c` with the C compiler (`$CC`, else `cc`)
//! against the checked-in header, which also checks that the header
//! compiles as strict C.

use std::path::{Path, PathBuf};
use std::process::Command;
use test_support::TempDir;
use transport_abi::abi::*;
use transport_abi::{library_file_name, Discovery, ErrorKind, LoadError, Plugin};

/// Build the stub plugin with `defines` into `dir/file`.
fn build(dir: &Path, file: &str, defines: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join(file);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg("-I")
        .arg(root.join("include"))
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg(root.join("tests/c/stub_plugin.c"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(status.success(), "{cc} failed on the stub plugin with {defines:?}");
    out
}

fn load_err(path: &Path) -> LoadError {
    let e = Plugin::load(path).expect_err("loading must fail");
    assert!(e.to_string().contains(&path.display().to_string()), "error does not name the file: {e}");
    e
}

#[test]
fn a_well_formed_c_plugin_loads_and_its_errors_cross() {
    let dir = TempDir::create("good");
    let path = build(dir.path(), "good.so", &[]);
    let p = Plugin::load(&path).unwrap();
    assert_eq!(p.name(), "cstub");
    assert_eq!(p.version(), (DRAGON_TRANSPORT_ABI_MAJOR, DRAGON_TRANSPORT_ABI_MINOR));
    assert!(p.has(DRAGON_CAP_LOCAL) && !p.has(DRAGON_CAP_ZERO_COPY_RECV));
    let e = p.open("").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.message(), "the C stub transport opens nothing");
    assert!(e.to_string().contains("cstub") && e.to_string().contains("open"), "{e}");
}

#[test]
fn success_without_an_object_is_an_error() {
    let dir = TempDir::create("noobj");
    let p = Plugin::load(build(dir.path(), "p.so", &["OPEN_NO_OBJECT"])).unwrap();
    let e = p.open("").unwrap_err();
    assert!(e.message().contains("broke the ABI"), "{e}");
}

#[test]
fn wrong_major_version() {
    let dir = TempDir::create("major");
    let path = build(dir.path(), "p.so", &["MAJOR=2"]);
    assert_eq!(
        load_err(&path),
        LoadError::WrongVersion { path: path.clone(), major: 2, minor: DRAGON_TRANSPORT_ABI_MINOR }
    );
}

#[test]
fn entry_symbol_of_another_major_version() {
    let dir = TempDir::create("v2");
    let path = build(dir.path(), "p.so", &["ENTRY=dragon_transport_v2"]);
    let e = load_err(&path);
    assert_eq!(e, LoadError::NoEntry { path, other_major: Some(2) });
    assert!(e.to_string().contains("version 2"), "{e}");
}

#[test]
fn library_without_the_symbol() {
    let dir = TempDir::create("nosym");
    let path = build(dir.path(), "p.so", &["ENTRY=something_else"]);
    assert_eq!(load_err(&path), LoadError::NoEntry { path, other_major: None });
}

#[test]
fn table_too_short() {
    let dir = TempDir::create("short");
    let path = build(dir.path(), "p.so", &["SIZE=16"]);
    let need = transport_abi::loader::TABLE_SIZE_V1_0;
    assert_eq!(load_err(&path), LoadError::TableTooShort { path, size: 16, need });
    // One field short of minor version 0's table.
    let path = build(dir.path(), "q.so", &["SIZE=offsetof(DragonTransportTable,len)"]);
    assert!(matches!(load_err(&path), LoadError::TableTooShort { .. }));
}

#[test]
fn a_plugin_of_minor_version_0_still_loads() {
    // Its table ends with `len`: the fields of minor version 1 are not read.
    let dir = TempDir::create("minor0");
    let path = build(dir.path(), "old.so", &["MINOR=0", "SIZE=offsetof(DragonTransportTable,send_deferred)"]);
    let p = Plugin::load(&path).unwrap();
    assert_eq!(p.version(), (DRAGON_TRANSPORT_ABI_MAJOR, 0));
}

#[test]
fn null_table_null_function_bad_name() {
    let dir = TempDir::create("nulls");
    let path = build(dir.path(), "t.so", &["NULL_TABLE"]);
    assert_eq!(load_err(&path), LoadError::NullTable(path));
    let path = build(dir.path(), "f.so", &["NULL_SEND"]);
    assert_eq!(load_err(&path), LoadError::MissingFunction { path, function: "send" });
    let path = build(dir.path(), "z.so", &["CAPS=DRAGON_CAP_ZERO_COPY_RECV"]);
    assert_eq!(load_err(&path), LoadError::MissingFunction { path, function: "recv_msg" });
    let path = build(dir.path(), "n.so", &["NAME=\"bad name!\""]);
    assert_eq!(load_err(&path), LoadError::BadTableName(path));
}

#[test]
fn not_a_library_and_missing_file() {
    let dir = TempDir::create("notlib");
    let text = dir.path().join("text.so");
    std::fs::write(&text, "this is not a shared library\n").unwrap();
    assert!(matches!(load_err(&text), LoadError::NotALibrary { .. }));
    let empty = dir.path().join("empty.so");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(load_err(&empty), LoadError::NotALibrary { .. }));
    assert!(matches!(load_err(dir.path()), LoadError::NotALibrary { .. }), "a folder");
    let missing = dir.path().join("missing.so");
    assert_eq!(load_err(&missing), LoadError::Missing(missing));
}

#[test]
fn discovery_loads_by_name_and_checks_it() {
    let dir = TempDir::create("disc");
    build(dir.path(), &library_file_name("cstub"), &[]);
    build(dir.path(), &library_file_name("other"), &[]);
    let d = Discovery { path: vec![PathBuf::from("/nonexistent"), dir.path().to_owned()], ..Discovery::default() };
    assert_eq!(d.find("cstub").unwrap().name(), "cstub");
    assert!(matches!(d.find("other"), Err(LoadError::NameMismatch { .. })));
    // A file that is found but broken is an error, not skipped.
    std::fs::write(dir.path().join(library_file_name("broken")), "junk").unwrap();
    assert!(matches!(d.find("broken"), Err(LoadError::NotALibrary { .. })));
    let e = d.find("absent").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/libdragon_transport_absent.so"), "{e}");
}
