//! `docs/architecture.md` against the workspace: its table lists every
//! crate with exactly the workspace crates it depends on, and its level
//! diagram puts every dependency on a lower level than its user.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the docs crate is in the workspace")
}

/// The workspace's members, from the top-level `Cargo.toml`.
fn members() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let list = text.split("members = [").nth(1).and_then(|t| t.split(']').next()).expect("a members list");
    list.split(',').map(|m| m.trim().trim_matches('"').to_owned()).filter(|m| !m.is_empty()).collect()
}

/// The workspace crates named in the `[dependencies]` section of `crate_`.
fn dependencies(crate_: &str, workspace: &BTreeSet<String>) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(crate_).join("Cargo.toml")).unwrap();
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
        } else if inside {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            if workspace.contains(name) {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("docs/architecture.md")).unwrap()
}

/// The table's rows: crate -> the workspace crates in "depends on".
fn table(doc: &str, workspace: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut rows = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, deps) = (cells[1], cells[3]);
        let deps: BTreeSet<String> = deps
            .split([',', ' '])
            .map(|d| d.trim_matches(|c: char| !c.is_alphanumeric() && c != '-'))
            .filter(|d| workspace.contains(*d))
            .map(str::to_owned)
            .collect();
        for name in names.split(',').map(|n| n.trim().trim_matches('`')) {
            rows.insert(name.to_owned(), deps.clone());
        }
    }
    rows
}

/// The diagram's levels: crate -> level.
fn levels(doc: &str, workspace: &BTreeSet<String>) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("level ")) {
        let mut words = line.split_whitespace().skip(1);
        let level: u32 = words.next().unwrap().parse().unwrap();
        for w in words.filter(|w| workspace.contains(*w)) {
            out.insert(w.to_owned(), level);
        }
    }
    out
}

#[test]
fn the_table_lists_every_crate_with_its_direct_dependencies() {
    let workspace: BTreeSet<String> = members().into_iter().collect();
    let rows = table(&architecture(), &workspace);
    for c in &workspace {
        let row = rows.get(c).unwrap_or_else(|| panic!("docs/architecture.md has no row for `{c}`"));
        let real = dependencies(c, &workspace);
        assert_eq!(row, &real, "docs/architecture.md: the row of `{c}` names other dependencies than its Cargo.toml");
    }
}

#[test]
fn dependencies_point_down_the_levels() {
    let workspace: BTreeSet<String> = members().into_iter().collect();
    let levels = levels(&architecture(), &workspace);
    for c in workspace.iter().filter(|c| !matches!(c.as_str(), "docs" | "test-support")) {
        let mine = *levels.get(c).unwrap_or_else(|| panic!("`{c}` is on no level of the diagram"));
        // test-support is beside everything (a dev-dependency, or the
        // conformance suite's optional one).
        for d in dependencies(c, &workspace).into_iter().filter(|d| d != "test-support") {
            let theirs = levels[&d];
            assert!(theirs < mine, "`{c}` (level {mine}) uses `{d}` (level {theirs}): not below it");
        }
    }
}

/// The crates that place objects in shared memory.
const SHARED_MEMORY_CRATES: &[&str] =
    &["shm-primitives", "channels-core", "sync-objects", "ddict-shard", "transport-shm", "queues", "pool"];

/// The non-test source lines of the shared-memory crates: (file, line number, line).
fn shared_memory_code() -> Vec<(String, usize, String)> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for c in SHARED_MEMORY_CRATES {
        walk(&root().join(c).join("src"), &mut files);
    }
    let mut out = Vec::new();
    for f in files {
        let name = f.strip_prefix(root()).unwrap().display().to_string();
        // Models and tests set up states directly (exempt, as written down).
        if name.contains("loom_") || name.contains("test") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            // The unit tests' module at the end of a file.
            let t = line.trim();
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            if t.starts_with("#[cfg(") && t.contains("test") && next.starts_with("mod ") && next.ends_with('{') {
                break;
            }
            out.push((name.clone(), i + 1, (*line).to_owned()));
        }
    }
    out
}

#[test]
fn synchronising_edges_are_named_at_both_ends_listed_and_every_ordering_says_why() {
    let code = shared_memory_code();
    let mut uses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut listed = BTreeSet::new();
    for (file, n, line) in &code {
        let text = line.trim();
        if let Some(bullet) = text.strip_prefix("//! - ") {
            // "- `a`, `b`: ..." lists edges a and b.
            let names = bullet.split(':').next().unwrap_or_default();
            listed.extend(names.split(',').map(|w| w.trim().trim_matches('`').to_owned()));
        } else if text.starts_with("//!") {
            continue;
        } else if let Some(at) = text.find("SYNC POINT ") {
            let rest = &text[at + "SYNC POINT ".len()..];
            // "a, b: ..." or "a (and b): ..." names edges a and b.
            let names = rest.split(':').next().unwrap_or_default().trim_end_matches('.').replace(" (and ", ", ");
            for name in names.split(',').map(|n| n.trim().trim_end_matches(')')).filter(|n| !n.is_empty()) {
                uses.entry(name.to_owned()).or_default().push(format!("{file}:{n}"));
            }
        }
    }
    assert!(uses.len() > 40, "only {} edges found: is the scan still reading the code?", uses.len());
    for (name, at) in &uses {
        assert!(at.len() >= 2, "SYNC POINT {name} is named at one end only: {at:?}");
        assert!(listed.contains(name), "SYNC POINT {name} ({}) is in no module's list of edges", at[0]);
    }
    // Every ordering stronger than Relaxed says why (an edge, a Dekker
    // handshake, a snapshot) in a comment just above it.
    for (i, (file, n, line)) in code.iter().enumerate() {
        let strong = ["Ordering::Acquire", "Ordering::Release", "Ordering::AcqRel", "Ordering::SeqCst"];
        if line.trim_start().starts_with("//") || !strong.iter().any(|o| line.contains(o)) {
            continue;
        }
        let above = &code[i.saturating_sub(6)..i];
        let said = above.iter().any(|(f, _, l)| f == file && l.trim_start().starts_with("//")) || line.contains("//");
        assert!(said, "{file}:{n}: an ordering stronger than Relaxed without a comment saying why");
    }
}
