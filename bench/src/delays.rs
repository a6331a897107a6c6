//! `compare --delays` (scenario `publish-delayed`): what delayed messages cost. On one kateway
//! (one server CPU): server CPU per single-message publish with `delay=1h` against an immediate
//! one (`ack=local` both), in alternating blocks, each delayed block against the immediate block
//! right after it; then the anonymous resident memory that 100 000 pending delays add, due in 30 days
//! (held in the on-disk index) and due within the memory horizon (held in memory with their
//! messages).

use crate::compare::CompareArgs;
use crate::harness::{median, Server};
use crate::lease::{cpu_per_request, Conn};
use crate::scenario;
use serde_json::{json, Value};
use std::time::Duration;

/// Requests per measured block.
const BLOCK: usize = 5000;
/// Blocks of each kind.
const CYCLES: usize = 8;
/// Pending delays for the memory measurement.
const PENDING: usize = 100_000;

/// Runs the scenario on `kateway`; returns the table rows and the report's scenario.
pub fn run(a: &CompareArgs, kateway: &Server) -> anyhow::Result<(Vec<String>, Value)> {
    let pid = kateway.child.id();
    let payload = scenario::payload(a.size);
    scenario::create_topic(&kateway.addr, "bench", "d", 1)?;
    let mut c = Conn::new(&kateway.addr)?;
    // The delay log is created by the first delayed publish: not measured.
    let (st, _) = c.call("POST /v1/msgs/d/v1?ack=local&delay=1h", &payload)?;
    anyhow::ensure!(st == 202, "delayed publish: {st}");
    let (mut delayed, mut immediate, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for cycle in 0..CYCLES {
        eprintln!("[publish-delayed] cycle {}", cycle + 1);
        let d = cpu_per_request(Some(pid), BLOCK, || {
            matches!(
                c.call("POST /v1/msgs/d/v1?ack=local&delay=1h", &payload),
                Ok((202, _))
            )
        });
        let i = cpu_per_request(Some(pid), BLOCK, || {
            matches!(
                c.call("POST /v1/msgs/d/v1?ack=local", &payload),
                Ok((201, _))
            )
        });
        delayed.push(d);
        immediate.push(i);
        ratio.push(d / i);
    }
    let far = pending_rss(kateway, &mut c, "30d", a.size)?;
    let near = pending_rss(kateway, &mut c, "50s", a.size)?;
    let range = |v: &[f64]| {
        let (med, lo, hi) = crate::harness::spread(v);
        format!("×{med:.2} (min {lo:.2}, max {hi:.2})")
    };
    let rows = vec![
        format!(
            "| one delayed publish (delay=1h, ack=local) | {:.1} µs server CPU |",
            median(&delayed)
        ),
        format!(
            "| one immediate publish (ack=local) | {:.1} µs server CPU |",
            median(&immediate)
        ),
        format!(
            "| **delayed ÷ immediate publish** (each block against the one right after it) | {} |",
            range(&ratio)
        ),
        format!(
            "| Anonymous RSS added by {PENDING} pending delays due in 30 days (on-disk index) | {:.1} MiB |",
            far / (1 << 20) as f64
        ),
        format!(
            "| Anonymous RSS added by {PENDING} pending delays due within the memory horizon ({} B messages) | {:.1} MiB |",
            a.size,
            near / (1 << 20) as f64
        ),
    ];
    let v = json!({
        "delayed_publish_cpu_us": delayed,
        "immediate_publish_cpu_us": immediate,
        "delayed_per_immediate": ratio,
        "pending": PENDING,
        "rss_bytes_added_far": far,
        "rss_bytes_added_near": near,
    });
    Ok((rows, v))
}

/// The process's anonymous resident memory (`RssAnon`: the heap, not mapped files).
fn anon_bytes(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no RssAnon"))?;
    Ok(kib * 1024)
}

/// The anonymous resident memory `PENDING` delays of `delay` add, once the gateway has read them into
/// its index (in batches of 1000).
fn pending_rss(s: &Server, c: &mut Conn, delay: &str, size: usize) -> anyhow::Result<f64> {
    let pid = s.child.id();
    std::thread::sleep(Duration::from_secs(3));
    let before = anon_bytes(pid)? as f64;
    let line = format!("{}\n", "x".repeat(size));
    let body = line.repeat(1000);
    let head = format!("POST /v1/msgs/d/v1?ack=local&delay={delay}");
    for _ in 0..PENDING / 1000 {
        let (st, _) = c.call_as(&head, "application/x-ndjson", body.as_bytes())?;
        anyhow::ensure!(st == 202, "delayed batch: {st}");
    }
    // A list reads the delay log to its end first: every delay is in the index then.
    let (st, _) = c.call("GET /v1/delays/d/v1?max=1", b"")?;
    anyhow::ensure!(st == 200, "list: {st}");
    // Past the allocator's purge delay, so that only what is held counts.
    std::thread::sleep(Duration::from_secs(3));
    let after = anon_bytes(pid)? as f64;
    eprintln!(
        "[publish-delayed] {PENDING} delays of {delay}: rss {:.1} → {:.1} MiB",
        before / (1 << 20) as f64,
        after / (1 << 20) as f64
    );
    Ok(after - before)
}
