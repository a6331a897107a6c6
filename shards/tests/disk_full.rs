//! A real full disk: the data directory on a small tmpfs (mounted by the test; CI runs as
//! root), filled to ENOSPC by concurrent `ack=all` publishers. Nothing refused is stored,
//! everything acknowledged is readable after a crash, deleting a topic works on the full disk and
//! frees its space, and the gateway takes writes again without a restart. `scripts/enospc-loop`
//! repeats this test many times.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Gateway;

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    refused: Vec<(String, u16, u64, Option<String>)>,
}

fn fill_until_full(g: &Gateway, threads: usize, refusals: usize) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (addr, seen) = (g.addr.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut c = Gateway::connect_to(&addr);
                let mut refused = 0;
                for i in 0.. {
                    let mut v = format!("t{t}-{i}-").into_bytes();
                    v.resize(4096, b'.');
                    let r = c.req("POST", "/v1/msgs/t/v1", &[("Appid", "app")], &v);
                    let v = String::from_utf8(v).unwrap();
                    let mut s = seen.lock().unwrap();
                    if r.status == 201 {
                        s.acked.push(v);
                    } else {
                        let code = r.json()["code"].as_u64().unwrap_or(0);
                        let ra = r.header("retry-after").map(str::to_owned);
                        s.refused.push((v, r.status, code, ra));
                        refused += 1;
                        if refused >= refusals {
                            return;
                        }
                        drop(s);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
}

fn stored(g: &Gateway, group: &str) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for (_, _, v) in g.drain(
        "r",
        "app",
        "t",
        &format!("group={group}&batch=1000&wait=1s"),
    ) {
        *n.entry(String::from_utf8(v).unwrap()).or_insert(0) += 1;
    }
    n
}

#[test]
fn a_full_disk_loses_nothing_acknowledged_and_recovers_without_a_restart() {
    let fs = Tmpfs::mount("24m");
    let data: PathBuf = fs.path().join("data");
    let mut g = Gateway::at(
        data.clone(),
        &[
            ("KATEWAY_STORE_FAULT_RETRY", "200ms"),
            ("KATEWAY_STORE_SEGMENT_BYTES", "1MiB"),
        ],
    );
    g.spawn();
    g.create_topic("app", "t", 4);
    g.create_topic("app", "filler", 1);
    let chunk = vec![b'f'; 500 << 10];
    for _ in 0..12 {
        g.publish("app", "filler", "", &chunk);
    }
    let seen = fill_until_full(&g, 4, 25);
    // Full: refused with 503 and Retry-After, shown as not ready.
    for (v, status, code, ra) in &seen.refused {
        assert_eq!((*status, *code), (503, 50300), "{v}");
        assert_eq!(ra.as_deref(), Some("5"));
    }
    let r = g.req("GET", "/ready", &[], b"");
    r.assert_error(503);
    assert!(r.text().contains("No space left"), "{}", r.text());
    let st = g.req("GET", "/v1/status", &[], b"").json();
    assert!(st["store"]["failed_cores"].as_u64().unwrap() >= 1, "{st}");
    // Deleting a topic works on the full disk and frees its space; writes resume by themselves.
    let r = g.req("DELETE", "/v1/topics/app/filler/v1", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let t0 = Instant::now();
    while g.req("GET", "/ready", &[], b"").status != 200 {
        assert!(t0.elapsed() < Duration::from_secs(20), "not ready again");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = g.publish("app", "t", "", b"after the disk was full");
    assert_eq!(r.status, 201);
    let check = |all: &HashMap<String, usize>| {
        for v in &seen.acked {
            assert_eq!(
                all.get(v),
                Some(&1),
                "acknowledged {}.. stored once",
                &v[..12]
            );
        }
        for (v, ..) in &seen.refused {
            assert!(!all.contains_key(v), "refused {}.. was stored", &v[..12]);
        }
    };
    check(&stored(&g, "before"));
    g.kill9();
    g.spawn();
    let all = stored(&g, "after");
    check(&all);
    eprintln!(
        "disk_full: acked {} refused {} stored {}",
        seen.acked.len(),
        seen.refused.len(),
        all.len()
    );
}
