//! The off-node transport plugin, `libdragon_transport_tcp.so`, ships inside
//! the Python package (`dragon/`), next to the extension. `make setup` and
//! `make wheel` build it and copy it there themselves. A build by pip, from
//! the source distribution or from this folder, has no Makefile: there the
//! `bundled-plugin` feature (on in `pyproject.toml`) makes this script build
//! the plugin (a cargo build of its own, in a target folder of its own, so
//! that it never waits on the lock of the build running this script) and
//! place it where maturin packs the package from.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGIN: &str = "libdragon_transport_tcp.so";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_BUNDLED_PLUGIN").is_none() {
        return;
    }
    let here = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = here.parent().expect("dragon-py lies in the workspace").to_path_buf();
    for krate in ["transport-tcp-plugin", "transport-tcp", "transport-abi"] {
        println!("cargo:rerun-if-changed={}", root.join(krate).join("src").display());
    }
    // The package's folder: dragon-py/python/dragon in the source tree, and
    // python/dragon at the root of the source distribution.
    let package = [here.join("python/dragon"), root.join("python/dragon")]
        .into_iter()
        .find(|p| p.join("__init__.py").is_file())
        .expect("the Python package dragon/ next to the crate");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = out.join("plugin-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--locked", "-p", "transport-tcp-plugin", "--lib", "--target-dir"])
        .arg(&target)
        // No debug info in the shipped plugin (the workspace's release
        // profile keeps some for profiling).
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run cargo to build the transport plugin");
    assert!(status.success(), "building the transport plugin ({PLUGIN}) failed");
    copy(&target.join("release").join(PLUGIN), &package.join(PLUGIN));
}

fn copy(from: &Path, to: &Path) {
    // Through a temporary name: a process of a running installation may
    // have the old file mapped.
    let tmp = to.with_extension("so.tmp");
    std::fs::copy(from, &tmp).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), tmp.display()));
    std::fs::rename(&tmp, to).unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), to.display()));
}
