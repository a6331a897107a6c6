//! Server-side cost from `/proc`: CPU time (utime + stime of every thread) and resident memory.

use std::time::Duration;

/// CPU time a process has used so far: the nanosecond run times of its threads
/// (`/proc/<pid>/task/*/schedstat`), or, where those cannot be read, `utime + stime` (counted
/// in 10 ms ticks: too coarse for a measurement of a few thousand cheap requests). A thread that
/// exits between two readings takes its time with it; the servers measured here keep theirs.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    match threads_run_time(pid) {
        Some(t) => Ok(t),
        None => ticks(pid),
    }
}

fn threads_run_time(pid: u32) -> Option<Duration> {
    let mut ns = 0u64;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let mut p = e.path();
        p.push("schedstat");
        let Ok(s) = std::fs::read_to_string(p) else {
            // The thread ended meanwhile.
            continue;
        };
        ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    (ns > 0).then(|| Duration::from_nanos(ns))
}

fn ticks(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f[11].parse()?;
    let stime: u64 = f[12].parse()?;
    let hz = 100; // USER_HZ on Linux
    Ok(Duration::from_millis((utime + stime) * 1000 / hz))
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?
        .parse()?;
    Ok(kb * 1024)
}

/// CPU time used by every process except `exclude`, to detect a noisy machine.
pub fn foreign_cpu(exclude: &[u32]) -> Duration {
    let mut total = Duration::ZERO;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if exclude.contains(&pid) {
                continue;
            }
            // Ticks: cheap to read for every process, and exact enough to notice noise.
            if let Ok(t) = ticks(pid) {
                total += t;
            }
        }
    }
    total
}

/// Raises this process's open-file limit as far as it may go.
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if setrlimit(Resource::RLIMIT_NOFILE, 1 << 20, 1 << 20).is_ok() {
        return;
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
