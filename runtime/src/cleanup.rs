//! A node's cleanup at the end of a run: every process of the run still
//! alive on the node is killed (the template kills the ones it started;
//! this catches any that escaped its session), and the run's shared-memory
//! files are removed by the caller.

use shm_primitives::process::read_stat;

/// This process and its ancestors.
fn me_and_ancestors() -> Vec<u32> {
    let mut out = vec![std::process::id()];
    while let Some(p) = read_stat(*out.last().expect("not empty")).map(|s| s.ppid) {
        if p == 0 || out.contains(&p) {
            break;
        }
        out.push(p);
    }
    out
}

/// Pids of the processes on this node (this PID namespace) whose
/// environment names run `run`, this process and its ancestors excepted.
pub fn run_processes(run: &str) -> Vec<u32> {
    let needle = format!("DRAGON_RUN_ID={run}");
    let spare = me_and_ancestors();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !spare.contains(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

/// Kill (SIGKILL) every process of run `run` on this node (see
/// [`run_processes`]); returns how many were signalled.
pub fn kill_run_processes(run: &str) -> usize {
    let pids = run_processes(run);
    for &p in &pids {
        let _ = crate::sys::kill(p as i32, libc::SIGKILL);
    }
    pids.len()
}

/// Most bytes of the run's registry file a status carries.
const REGISTRY_CAP: usize = 1 << 20;

/// What `dragon top` shows of this node for run `run`, as JSON:
/// `{"uptime": seconds, "hz": ticks per second, "page": bytes,
/// "procs": [{"pid", "ppid", "state", "ticks", "start", "rss", "comm",
/// "cmd"}], "registry": the run's registry file on this node (its first
/// MiB)}`.
pub fn status_json(run: &str) -> String {
    use crate::table::json_str;
    use std::fmt::Write;
    let mut out = String::from("{");
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let _ = write!(
        out,
        "\"uptime\":{uptime},\"hz\":{},\"page\":{},\"procs\":[",
        crate::sys::clock_ticks(),
        crate::sys::page_size()
    );
    let mut first = true;
    let me = std::process::id();
    for pid in run_processes(run).into_iter().chain([me]) {
        let Some(stat) = read_stat(pid) else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(
            out,
            "{{\"pid\":{pid},\"ppid\":{},\"ticks\":{},\"start\":{},\"rss\":{},\"state\":",
            stat.ppid, stat.cpu_ticks, stat.start, stat.rss_pages
        );
        json_str(&mut out, stat.state.encode_utf8(&mut [0; 4]));
        out.push_str(",\"comm\":");
        json_str(&mut out, &stat.comm);
        out.push_str(",\"cmd\":");
        json_str(&mut out, cmd.trim_end());
        out.push('}');
    }
    out.push_str("],\"registry\":");
    let reg = transport_shm::RunId::parse(run)
        .and_then(|r| std::fs::read(format!("{}/{}reg", transport_shm::segment::SHM_DIR, r.prefix())).ok())
        .unwrap_or_default();
    let reg = String::from_utf8_lossy(&reg[..reg.len().min(REGISTRY_CAP)]);
    json_str(&mut out, &reg);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_kills_a_process_of_the_run_and_spares_its_caller() {
        // A run id of its own: other test processes on the machine run too.
        let run = transport_shm::RunId::new_owned_by_me();
        let run = run.as_str();
        let mut child =
            std::process::Command::new("sleep").arg("600").env("DRAGON_RUN_ID", run).spawn().expect("sleep");
        // The child's environment shows in /proc only once its exec has
        // set up its new stack, which can be after `spawn` returns: wait
        // for it (the watchdog is generous; the wait ends at the event).
        let watchdog = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let found = loop {
            let found = run_processes(run);
            if !found.is_empty() || std::time::Instant::now() > watchdog {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(found, vec![child.id()]);
        let other = transport_shm::RunId::new_owned_by_me();
        assert!(!run_processes(other.as_str()).contains(&child.id()));
        assert_eq!(kill_run_processes(run), 1);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(me_and_ancestors().contains(&std::process::id()));
    }

    #[test]
    fn the_status_shows_the_caller() {
        let run = transport_shm::RunId::new_owned_by_me();
        let status = status_json(run.as_str());
        let me = read_stat(std::process::id()).expect("this process's stat");
        let entry = format!("{{\"pid\":{},\"ppid\":{},\"ticks\":", std::process::id(), me.ppid);
        assert!(status.contains(&entry), "{status}");
        assert!(status.contains(&format!("\"start\":{},", me.start)), "{status}");
        assert!(status.contains(&format!("\"comm\":\"{}\"", me.comm)), "{status}");
    }
}
