//! What every scenario runner shares: starting servers pinned to CPUs and stopping them,
//! their data directories, free ports, the kateway binary under test, the machine's
//! description, and the median/spread statistics of rounds.

use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Server {
    pub name: &'static str,
    pub addr: String,
    pub child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a server on the CPUs `cpus` (a taskset list) and waits until it listens.
pub(crate) fn start(
    name: &'static str,
    cpus: &str,
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<Server> {
    let addr = args
        .iter()
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no --listen"))?;
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(cpus)
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server { name, addr, child })
}

pub(crate) fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({"min": s[0], "median": s[s.len() / 2], "max": s[s.len() - 1], "all": v})
}

pub(crate) fn median(v: &[f64]) -> f64 {
    spread(v).0
}

/// The median, minimum and maximum of the rounds' figures.
pub(crate) fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn cmd_out(c: &str, args: &[&str]) -> String {
    Command::new(c)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "kernel": cmd_out("uname", &["-r"]),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "commit": cmd_out("git", &["rev-parse", "--short", "HEAD"]),
        "dirty": !cmd_out("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        "rustc": cmd_out("rustc", &["--version"]),
    })
}

/// The servers' data directories, removed when the run ends (declared before the servers, so
/// it is dropped after they stop).
pub(crate) struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kateway binary to benchmark: the given path, or the workspace's release build, built
/// first when it is missing (so `cargo run -p kateway-bench -- compare` works on a fresh clone).
pub(crate) fn kateway_binary(given: &std::path::Path) -> anyhow::Result<String> {
    if given.exists() {
        return Ok(given.to_string_lossy().into_owned());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let built = root.join("target/release/kateway");
    if !built.exists() {
        eprintln!("building {} ...", built.display());
        let ok = Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "kateway-shards",
                "--bin",
                "kateway",
            ])
            .current_dir(&root)
            .status()?
            .success();
        anyhow::ensure!(ok, "cargo build of kateway failed");
    }
    Ok(built.to_string_lossy().into_owned())
}
