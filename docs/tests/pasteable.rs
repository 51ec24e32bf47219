//! Every Rust example of the Rust guide is a whole `src/main.rs`: each is
//! built and run as a project of its own, outside this workspace, with the
//! `[dependencies]` lines the guide gives (a new project next to a
//! checkout called `dragon-rs`). Offline, with this workspace's lock file,
//! in a target folder of its own kept between runs (`target/pasteable`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match &mut cur {
            None if line == format!("```{lang}") => cur = Some(String::new()),
            Some(b) if line == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Runs `cmd`, its output in files of `dir`, killing it after `limit` (a
/// watchdog: a build on a loaded machine takes what it takes, far below
/// it); whether it succeeded, and its standard error.
fn run(mut cmd: Command, dir: &Path, limit: Duration) -> (bool, String) {
    let err_path = dir.join("stderr.txt");
    let out = std::fs::File::create(dir.join("stdout.txt")).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err)).spawn().expect("run cargo");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cargo") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&err_path).unwrap_or_default();
    (
        status.is_some_and(|s| s.success()),
        if status.is_none() { format!("killed after {limit:?}\n{text}") } else { text },
    )
}

#[test]
fn rust_guide_examples_build_and_run_as_projects_of_their_own() {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = docs.parent().expect("the workspace").to_path_buf();
    let guide = std::fs::read_to_string(docs.join("rust-guide.md")).expect("read the guide");
    let deps = blocks(&guide, "toml");
    assert_eq!(deps.len(), 1, "one [dependencies] block");
    assert!(deps[0].starts_with("[dependencies]\n"), "{}", deps[0]);
    let examples = blocks(&guide, "rust");
    assert!(examples.len() >= 3, "found {} examples", examples.len());

    let tmp = std::env::temp_dir().join(format!("dragon-pasteable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("temp folder");
    std::os::unix::fs::symlink(&repo, tmp.join("dragon-rs")).expect("link the checkout");
    let target = repo.join("target").join("pasteable");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for (i, code) in examples.iter().enumerate() {
        assert!(code.contains("fn main()"), "example {i} is not a whole main.rs:\n{code}");
        assert!(!code.lines().any(|l| l.starts_with("# ") || l == "#"), "example {i} has hidden lines:\n{code}");
        let project = tmp.join(format!("example{i}"));
        std::fs::create_dir_all(project.join("src")).expect("project folder");
        let manifest =
            format!("[package]\nname = \"example{i}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n{}", deps[0]);
        std::fs::write(project.join("Cargo.toml"), manifest).expect("Cargo.toml");
        std::fs::write(project.join("src/main.rs"), code).expect("main.rs");
        std::fs::copy(repo.join("Cargo.lock"), project.join("Cargo.lock")).expect("Cargo.lock");
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&project)
            .args(["run", "--offline", "-q"])
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_MANIFEST_DIR");
        let (ok, stderr) = run(cmd, &project, Duration::from_secs(1200));
        assert!(ok, "example {i} failed as a project of its own:\n{code}\n{stderr}");
    }
    remove(&tmp);
}

fn remove(p: &Path) {
    // The link first, so that removing the folder never follows it.
    let _ = std::fs::remove_file(p.join("dragon-rs"));
    let _ = std::fs::remove_dir_all(p);
}
