//! Storage faults injected through the log engine's failpoints (`KATEWAY_FAILPOINTS`): a write
//! or fsync that fails is never acknowledged, nothing acknowledged is lost, and the core takes
//! writes again by itself once the disk does, with the failed state visible in `/ready`,
//! `/v1/status` and the metrics meanwhile; and a slow or failed fsync holds back only what waits
//! for it.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Gateway;

/// What publishers saw: the values acknowledged, and the values refused (status, code).
#[derive(Default)]
struct Outcome {
    acked: Vec<String>,
    refused: Vec<(String, u16, u64, Option<String>)>,
}

/// Publishes from `threads` connections (alternating `ack=all` and `ack=local` when `mixed`)
/// until each has seen `after` acknowledgements after its first refusal, or `max` attempts.
fn publish_through_fault(
    g: &Gateway,
    threads: usize,
    mixed: bool,
    after: usize,
    max: usize,
) -> Outcome {
    let out = Arc::new(Mutex::new(Outcome::default()));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = g.addr.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut c = Gateway::connect_to(&addr);
                let (mut failed, mut ok_after) = (false, 0);
                for i in 0..max {
                    let v = format!("w{t}-{i}");
                    let ack = if mixed && i % 2 == 1 { "local" } else { "all" };
                    let r = c.req(
                        "POST",
                        &format!("/v1/msgs/t/v1?ack={ack}"),
                        &[("Appid", "app")],
                        v.as_bytes(),
                    );
                    let mut o = out.lock().unwrap();
                    if r.status == 201 {
                        o.acked.push(v);
                        if failed {
                            ok_after += 1;
                            if ok_after >= after {
                                return;
                            }
                        }
                    } else {
                        failed = true;
                        let code = r.json()["code"].as_u64().unwrap_or(0);
                        let ra = r.header("retry-after").map(str::to_owned);
                        o.refused.push((v, r.status, code, ra));
                        drop(o);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    Arc::try_unwrap(out).ok().unwrap().into_inner().unwrap()
}

/// Polls `/ready` in the background; returns the statuses seen, in order, without repeats.
fn watch_ready(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u16>> {
    std::thread::spawn(move || {
        let mut seen: Vec<u16> = Vec::new();
        loop {
            // The last sample is taken after `stop`: one sent earlier can be answered (and
            // read) after the caller already saw the gateway ready again.
            let last = stop.load(Ordering::Relaxed);
            if let Ok(mut c) = std::panic::catch_unwind(|| Gateway::connect_to(&addr)) {
                if c.send("GET", "/ready", &[], b"").is_ok() {
                    if let Ok(r) = c.read_response() {
                        if seen.last() != Some(&r.status) {
                            seen.push(r.status);
                        }
                    }
                }
            }
            if last {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

fn wait_ready(g: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if g.req("GET", "/ready", &[], b"").status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not become ready again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every value stored in topic `t`, read by a fresh group, with how often it was delivered.
fn stored(g: &Gateway) -> HashMap<String, usize> {
    static READS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let group = READS.fetch_add(1, Ordering::Relaxed);
    let mut n = HashMap::new();
    let q = format!("group=check{group}&batch=1000&wait=1s");
    for (_, _, v) in g.drain("reader", "app", "t", &q) {
        *n.entry(String::from_utf8(v).unwrap()).or_insert(0) += 1;
    }
    n
}

fn check_outcome(out: &Outcome, all: &HashMap<String, usize>, refused_absent: bool) {
    assert!(!out.refused.is_empty(), "the fault refused some publishes");
    for (v, status, code, ra) in &out.refused {
        assert_eq!((*status, *code), (503, 50300), "{v}");
        assert_eq!(ra.as_deref(), Some("5"), "{v}: Retry-After");
        if refused_absent {
            assert!(!all.contains_key(v), "{v} was refused but stored");
        }
    }
    for v in &out.acked {
        assert_eq!(all.get(v), Some(&1), "acknowledged {v} stored exactly once");
    }
}

#[test]
fn failed_writes_are_never_acknowledged_and_the_core_recovers_by_itself() {
    let mut g = Gateway::start_with(&[
        ("KATEWAY_FAILPOINTS", "log::write=60*off->25*enospc->off"),
        ("KATEWAY_STORE_FAULT_RETRY", "100ms"),
    ]);
    g.create_topic("app", "t", 4);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_ready(g.addr.clone(), stop.clone());
    let out = publish_through_fault(&g, 4, true, 30, 3000);
    wait_ready(&g);
    stop.store(true, Ordering::Relaxed);
    let ready_seen = watcher.join().unwrap();
    assert!(
        ready_seen.contains(&503),
        "/ready said not ready during the fault: {ready_seen:?}"
    );
    assert_eq!(ready_seen.last(), Some(&200));
    assert!(g.metric("kateway_store_write_errors_total") > 0.0);
    assert!(g.metric("kateway_store_recoveries_total") >= 1.0);
    assert_eq!(g.metric("kateway_store_failed_cores"), 0.0);
    // Written and readable without a restart...
    check_outcome(&out, &stored(&g), true);
    // ...and after a crash.
    g.kill9();
    g.set_env(&[]);
    g.spawn();
    let all = stored(&g);
    check_outcome(&out, &all, true);
    assert_eq!(
        all.len(),
        out.acked.len(),
        "nothing but the acknowledged values"
    );
}

#[test]
fn failed_fsyncs_are_never_acknowledged() {
    let mut g = Gateway::start_with(&[
        ("KATEWAY_FAILPOINTS", "log::fsync=40*off->6*eio->off"),
        ("KATEWAY_STORE_FAULT_RETRY", "100ms"),
    ]);
    g.create_topic("app", "t", 4);
    let out = publish_through_fault(&g, 4, false, 30, 3000);
    wait_ready(&g);
    assert!(g.metric("kateway_store_fsync_errors_total") > 0.0);
    // A publish whose fsync failed may or may not be stored (its bytes were written); every
    // acknowledged one is.
    check_outcome(&out, &stored(&g), false);
    g.kill9();
    g.set_env(&[]);
    g.spawn();
    check_outcome(&out, &stored(&g), false);
}

#[test]
fn short_writes_leave_no_damage_behind() {
    let mut g = Gateway::start_with(&[
        ("KATEWAY_FAILPOINTS", "log::write=30*off->3*short(20)->off"),
        ("KATEWAY_STORE_FAULT_RETRY", "100ms"),
    ]);
    g.create_topic("app", "t", 2);
    let out = publish_through_fault(&g, 2, true, 20, 2000);
    wait_ready(&g);
    g.kill9();
    g.set_env(&[]);
    g.spawn();
    check_outcome(&out, &stored(&g), true);
    let st = g.req("GET", "/v1/status", &[], b"").json();
    assert_eq!(
        st["store"]["damage"],
        serde_json::json!([]),
        "the partial writes were cut: {st}"
    );
}

#[test]
fn storage_errors_name_no_server_paths() {
    let g = Gateway::start();
    // A file where the topic's directory would go: creating the topic fails on disk.
    let topics = g.data_dir().join("topics");
    std::fs::create_dir_all(&topics).unwrap();
    std::fs::write(topics.join("app.blocked.v1"), b"x").unwrap();
    let r = g.req("POST", "/v1/topics/app/blocked/v1?partitions=2", &[], b"");
    r.assert_error(503);
    let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
    let data = g.data_dir().display().to_string();
    assert!(!msg.contains(&data) && !msg.contains("/tmp"), "{msg}");
    // The failed creation left nothing behind (the blocking file went with it).
    let _ = std::fs::remove_file(topics.join("app.blocked.v1"));
    let r = g.req("GET", "/v1/partitions/app/blocked/v1", &[], b"");
    r.assert_error(404);
    g.create_topic("app", "blocked", 2);
}

#[test]
fn a_failed_topic_creation_leaves_nothing_behind() {
    let mut g = Gateway::start_with(&[("KATEWAY_FAILPOINTS", "log::create=3*off->1*eio->off")]);
    let r = g.req("POST", "/v1/topics/app/x/v1?partitions=8", &[], b"");
    r.assert_error(503);
    g.req("GET", "/v1/partitions/app/x/v1", &[], b"")
        .assert_error(404);
    assert!(!g.data_dir().join("topics/app.x.v1").exists());
    g.kill9();
    g.set_env(&[]);
    g.spawn();
    g.req("GET", "/v1/partitions/app/x/v1", &[], b"")
        .assert_error(404);
    g.create_topic("app", "x", 8);
    g.publish("app", "x", "", b"works");
}

#[test]
fn an_offset_answered_before_its_write_failed_is_never_given_again() {
    let mut g = Gateway::start_with(&[
        ("KATEWAY_STORE_FAULT_RETRY", "200ms"),
        ("KATEWAY_FAILPOINTS", "log::write=3*off->eio"),
    ]);
    g.create_topic("app", "o", 1);
    for i in 0..3 {
        let r = g.publish("app", "o", "ack=local", b"m");
        assert_eq!(r.header("x-offset"), Some(i.to_string().as_str()));
    }
    let r = g.publish("app", "o", "async=1", b"lost");
    assert_eq!((r.status, r.header("x-offset")), (202, Some("3")));
    // The write of offset 3 fails; the disk is fine again after a restart.
    let parts = g.metric_until("kateway_store_write_errors_total", 100, |v| v >= 1.0);
    assert!(parts >= 1.0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    g.kill9();
    g.set_env(&[]);
    g.spawn();
    let p = g.req("GET", "/v1/partitions/app/o/v1", &[], b"").json();
    assert_eq!(p["offsets"][0]["newest"], 4, "{p}");
    let r = g.publish("app", "o", "ack=all", b"after");
    assert_eq!(
        r.header("x-offset"),
        Some("4"),
        "offset 3 belongs to the lost message"
    );
    let got = g.drain("b", "app", "o", "group=g&batch=10&wait=1s");
    let offsets: Vec<u64> = got.iter().map(|r| r.1).collect();
    assert_eq!(offsets, vec![0, 1, 2, 4]);
}

#[test]
fn a_failed_topic_growth_leaves_nothing_behind() {
    // Two partitions are created, then growing to six fails creating the fourth.
    let mut g = Gateway::start_with(&[("KATEWAY_FAILPOINTS", "log::create=3*off->1*eio->off")]);
    g.create_topic("app", "x", 2);
    g.publish("app", "x", "", b"before");
    let r = g.req("PUT", "/v1/topics/app/x/v1?partitions=6", &[], b"");
    r.assert_error(503);
    let dir = g.data_dir().join("topics/app.x.v1");
    let left = |dir: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(left(&dir), vec!["0", "1"]);
    let parts = g.req("GET", "/v1/partitions/app/x/v1", &[], b"").json();
    assert_eq!(parts["partitions"], 2);
    g.kill9();
    g.set_env(&[]);
    g.spawn();
    assert_eq!(left(&dir), vec!["0", "1"]);
    let r = g.req("PUT", "/v1/topics/app/x/v1?partitions=6", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let s = g.sub("b", "app", "x", "group=g&batch=10&wait=2s", &[]);
    assert_eq!(support::records(&s.body).len(), 1);
}

#[test]
fn many_partitions_cannot_exhaust_descriptors_or_stop_a_restart() {
    let mut g = Gateway::new_with(&[
        ("KATEWAY_STORE_MAX_PARTITIONS", "12000"),
        ("KATEWAY_STORE_MAX_PARTITIONS_PER_APP", "12000"),
    ]);
    g.nofile = Some(256);
    g.spawn();
    g.create_topic("app", "big", 10_000);
    let r = g.publish("app", "big", "key=k", b"hello");
    assert_eq!(r.status, 201);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", g.pid()))
        .unwrap()
        .count();
    assert!(fds < 128, "{fds} descriptors open");
    // Beyond what the gateway may hold: refused, saying why, leaving nothing behind.
    let r = g.req("POST", "/v1/topics/app/more/v1?partitions=5000", &[], b"");
    r.assert_error(400);
    assert!(r.text().contains("store.max_partitions"), "{}", r.text());
    assert!(!g.data_dir().join("topics/app.more.v1").exists());
    g.kill9();
    g.spawn();
    let s = g.sub("b", "app", "big", "group=g&wait=2s", &[]);
    assert_eq!((s.status, &s.body[..]), (200, &b"hello"[..]));
    g.create_topic("app", "small", 2);
}

/// A disk that stops answering an fsync holds back only the `ack=all` publishes waiting for
/// it: writes go on while the fsync is in flight, so `ack=local` publishes are answered and
/// readable meanwhile, and the `ack=all` one is never acknowledged.
#[test]
fn an_fsync_that_never_ends_holds_back_only_ack_all_publishes() {
    let mut g = Gateway::start_with(&[("KATEWAY_FAILPOINTS", "log::fsync=hang")]);
    g.create_topic("app", "t", 1);
    let mut durable = g.connect();
    durable
        .send(
            "POST",
            "/v1/msgs/t/v1?ack=all",
            &[("Appid", "app")],
            b"durable",
        )
        .unwrap();
    // Readable once written; the fsync that follows the write never ends.
    let first = g.sub("reader", "app", "t", "group=g&batch=100&wait=30s", &[]);
    assert_eq!(first.status, 200, "{}", first.text());
    let values = |r: &support::Resp| -> Vec<String> {
        support::records(&r.body)
            .into_iter()
            .map(|(_, _, v)| String::from_utf8(v).unwrap())
            .collect()
    };
    assert_eq!(values(&first), ["durable"]);
    for i in 0..20 {
        let r = g.publish("app", "t", "ack=local", format!("local{i}").as_bytes());
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let rest = g.sub("reader", "app", "t", "group=g&batch=100&wait=30s", &[]);
    assert_eq!(rest.status, 200, "{}", rest.text());
    let want: Vec<String> = (0..20).map(|i| format!("local{i}")).collect();
    assert_eq!(values(&rest), want);
    assert_eq!(g.metric("kateway_log_fsyncs_total"), 0.0, "no fsync ended");
    // Whatever the gateway had answered is in this socket's buffer when it dies.
    g.kill9();
    // An error is the connection closed unanswered.
    if let Ok(r) = durable.read_reply(false) {
        assert_ne!(r.status, 201, "acknowledged without an fsync: {}", r.text());
    }
}

/// After a failed fsync and the recovery, a later publish is a generation of its own: it is
/// stored and acknowledged, not refused for the failure before it.
#[test]
fn a_publish_after_the_recovery_is_not_refused_for_the_failure_before_it() {
    let g = Gateway::start_with(&[
        ("KATEWAY_FAILPOINTS", "log::fsync=5*off->1*eio->off"),
        ("KATEWAY_STORE_FAULT_RETRY", "100ms"),
    ]);
    g.create_topic("app", "t", 1);
    let mut c = g.connect();
    let publish = |c: &mut support::Conn, i: usize| {
        c.req(
            "POST",
            "/v1/msgs/t/v1?ack=all",
            &[("Appid", "app")],
            format!("m{i}").as_bytes(),
        )
    };
    let refused = (0..50).find(|&i| {
        let r = publish(&mut c, i);
        assert!(matches!(r.status, 201 | 503), "{}", r.text());
        r.status == 503
    });
    assert!(refused.is_some(), "the failed fsync refused its publish");
    wait_ready(&g);
    for i in 100..105 {
        let r = publish(&mut c, i);
        assert_eq!(r.status, 201, "after the recovery: {}", r.text());
    }
}

/// A commit repeated while the first one is written but not yet fsynced (a seek to where a
/// read left the group) is answered once that commit is synced, and the sync starts at once:
/// it does not wait for the fsync interval.
#[test]
fn a_repeated_commit_is_synced_at_once() {
    let g = Gateway::start_with(&[
        ("KATEWAY_STORE_FSYNC_INTERVAL", "1h"),
        ("KATEWAY_STORE_FSYNC_BYTES", "1GiB"),
    ]);
    g.create_topic("app", "t", 1);
    g.publish("app", "t", "ack=local", b"m0");
    // Auto-ack: reading commits the group at offset 1 (written, not synced).
    let s = g.sub("reader", "app", "t", "group=g&wait=5s", &[]);
    assert_eq!(s.body, b"m0");
    let synced = g.metric("kateway_log_fsyncs_total");
    let r = g.req(
        "PUT",
        "/v1/offset/app/t/v1/g/0?offset=1",
        &[("Appid", "reader")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(g.metric("kateway_log_fsyncs_total") > synced);
}

/// A topic deleted and created again while an fsync of its old partition is in flight: that
/// fsync covered the old files, not the new ones, so an `ack=all` publish written to the new
/// partition during it is answered only after an fsync of its own. (Taking the old sync's plan
/// for the new partition marked the new file synced up to the old file's size, and its publish
/// was answered 201 with no fsync at all.)
#[test]
fn a_partition_made_anew_during_an_fsync_is_synced_on_its_own() {
    const DELAY: Duration = Duration::from_millis(2000);
    let g = Arc::new(Gateway::start_with(&[(
        "KATEWAY_FAILPOINTS",
        "log::fsync=delay(2000)",
    )]));
    g.create_topic("app", "t", 1);
    let timed = |g: &Arc<Gateway>, body: Vec<u8>| {
        let g = g.clone();
        std::thread::spawn(move || {
            let r = g.req("POST", "/v1/msgs/t/v1?ack=all", &[("Appid", "app")], &body);
            (r.status, Instant::now())
        })
    };
    // The old partition's fsync: 10 KiB, in flight for DELAY.
    let old = timed(&g, vec![b'o'; 10 << 10]);
    std::thread::sleep(Duration::from_millis(400));
    let r = g.req("DELETE", "/v1/topics/app/t/v1", &[], b"");
    assert!(r.status < 300, "{}", r.text());
    g.create_topic("app", "t", 1);
    // Held while the old fsync runs, then written with the `ack=local` publish below: both
    // end far inside the old file's 10 KiB.
    let new = timed(&g, b"new".to_vec());
    std::thread::sleep(Duration::from_millis(200));
    g.publish("app", "t", "ack=local", b"local");
    let (_, old_done) = old.join().unwrap();
    let (status, new_done) = new.join().unwrap();
    assert_eq!(status, 201);
    let after = new_done.saturating_duration_since(old_done);
    assert!(
        after >= DELAY / 2,
        "answered {after:?} after the old partition's fsync ended: no fsync of its own"
    );
}

/// A gateway told to stop while its fsyncs fail (or its writes do) stops at once: what cannot
/// be synced before a recovery is not waited for, and no task is left running at the shutdown
/// deadline (which the gateway reports, then exits anyway).
#[test]
fn a_gateway_stops_while_its_disk_fails() {
    for spec in ["log::fsync=eio", "log::write=eio"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let mut g = Gateway::new_with(&[
            ("KATEWAY_FAILPOINTS", spec),
            ("KATEWAY_STORE_FAULT_RETRY", "1h"),
        ]);
        g.stderr_file = Some(log.clone());
        g.spawn();
        g.create_topic("app", "t", 1);
        let r = g.req("POST", "/v1/msgs/t/v1?ack=all", &[("Appid", "app")], b"m");
        assert_eq!(r.status, 503, "{spec}: {}", r.text());
        assert_eq!(g.terminate(), Some(0), "{spec}");
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(log.contains("refusing writes"), "{spec}: {log}");
        assert!(
            !log.contains("still running at the shutdown deadline"),
            "{spec}: {log}"
        );
    }
}
