//! Damage on disk costs only the damaged records: found on open, on read or by the scrubber,
//! skipped (or refused, in the strict recovery modes, until the group is moved past it), and
//! reported in `/v1/status` and the metrics. Offsets are never reused after recovery cut
//! records, and a lost or damaged catalog does not make topics vanish.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use support::{records, Gateway};

/// Every record of topic `t` read by a fresh group `group`: (partition, offset, value).
fn read_all(g: &Gateway, group: &str) -> Vec<(u32, u64, Vec<u8>)> {
    g.drain(
        "r",
        "app",
        "t",
        &format!("group={group}&batch=1000&wait=1s"),
    )
}

fn status(g: &Gateway) -> Value {
    g.req("GET", "/v1/status", &[], b"").json()
}

fn damage(g: &Gateway) -> Vec<Value> {
    status(g)["store"]["damage"].as_array().unwrap().clone()
}

fn lost(damage: &[Value]) -> u64 {
    damage.iter().map(|d| d["records"].as_u64().unwrap()).sum()
}

/// Publishes `n` messages of `size` bytes to partition 0 of `t` in batches of 100; message `i`
/// starts with `i` so a reader can tell which it got.
fn fill(g: &Gateway, n: usize, size: usize) {
    fill_key(g, "", n, size)
}

/// [`fill`] with partition key `key` (none when empty).
fn fill_key(g: &Gateway, key: &str, n: usize, size: usize) {
    for start in (0..n).step_by(100) {
        let mut body = Vec::new();
        for i in start..(start + 100).min(n) {
            let mut v = format!("{i:06}-").into_bytes();
            v.resize(size, b'x');
            body.extend_from_slice(&(key.len() as u16).to_be_bytes());
            body.extend_from_slice(key.as_bytes());
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(&v);
        }
        let r = g.req(
            "POST",
            "/v1/msgs/t/v1",
            &[
                ("Appid", "app"),
                ("Content-Type", "application/vnd.kateway.batch"),
            ],
            &body,
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

fn segments(g: &Gateway) -> Vec<PathBuf> {
    segments_of(g, 0)
}

/// The segment files of partition `p` of `t`, oldest first.
fn segments_of(g: &Gateway, p: u32) -> Vec<PathBuf> {
    let dir = g.data_dir().join(format!("topics/app.t.v1/{p}"));
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log")
                && p.file_stem()
                    .is_some_and(|s| s.to_string_lossy().parse::<u64>().is_ok())
        })
        .collect();
    v.sort();
    v
}

/// The length of a segment's records: its file without the zeros the gateway writes ahead of
/// its appends (the tests' records end with non-zero bytes).
fn records_len(path: &Path) -> u64 {
    let data = std::fs::read(path).unwrap();
    data.iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// Cuts a file to the length `to` makes of the length of its records.
fn cut(path: &Path, to: impl FnOnce(u64) -> u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(to(records_len(path))).unwrap();
}

fn flip(path: &Path, at: usize, len: usize) {
    let mut data = std::fs::read(path).unwrap();
    for b in &mut data[at..at + len] {
        *b ^= 0x5a;
    }
    std::fs::write(path, data).unwrap();
}

const ONE_MIB_SEGMENTS: [(&str, &str); 2] = [
    ("KATEWAY_STORE_SEGMENT_BYTES", "1MiB"),
    ("KATEWAY_STORE_SCRUB_BYTES_PER_SECOND", "0"),
];

#[test]
fn offsets_are_not_reused_after_recovery_cuts_records() {
    let mut g = Gateway::start();
    g.create_topic("app", "t", 1);
    fill(&g, 300, 20);
    assert_eq!(
        read_all(&g, "g").len(),
        300,
        "the group consumed everything"
    );
    g.kill9();
    // Damage at the end of the log: the last 50 records (54 bytes each) are unreadable.
    cut(&segments(&g)[0], |len| len - 50 * 54 + 10);
    g.spawn();
    let d = damage(&g);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["kind"], "torn-tail");
    assert_eq!(d[0]["offsets"], serde_json::json!([250, 300]), "{d:?}");
    let st = g
        .req("GET", "/v1/status/app/t/v1?group=g", &[("Appid", "r")], b"")
        .json();
    let p = &st["groups"][0]["partitions"][0];
    assert_eq!(
        (p["newest"].as_u64(), p["committed"].as_u64()),
        (Some(300), Some(300)),
        "{st}"
    );
    // New messages get new offsets, and the group that was past the cut gets every one of them.
    for i in 0..300 {
        let r = g.publish("app", "t", "", format!("new-{i}").as_bytes());
        if i == 0 {
            assert_eq!(r.header("x-offset"), Some("300"));
        }
    }
    let got = read_all(&g, "g");
    assert_eq!(got.len(), 300);
    assert!(got
        .iter()
        .all(|(_, o, v)| *o >= 300 && v.starts_with(b"new-")));
}

#[test]
fn small_damage_costs_only_the_damaged_records() {
    let mut g = Gateway::start_with(&ONE_MIB_SEGMENTS);
    g.create_topic("app", "t", 1);
    fill(&g, 3000, 1000);
    g.kill9();
    let segs = segments(&g);
    assert!(segs.len() >= 3, "{segs:?}");
    // Four bytes flipped in the middle of the active segment; five bytes cut from the end of a
    // sealed one; a whole middle segment missing.
    let active = segs.last().unwrap();
    let alen = records_len(active) as usize;
    flip(active, alen / 2, 4);
    cut(&segs[0], |len| len - 5);
    std::fs::remove_file(&segs[1]).unwrap();
    let _ = std::fs::remove_file(segs[1].with_extension("index"));
    g.spawn();
    let d = damage(&g);
    let kinds: Vec<&str> = d.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in ["corrupt", "torn-tail", "missing-segment"] {
        assert!(kinds.contains(&k), "{k} in {d:?}");
    }
    let got = read_all(&g, "g");
    assert_eq!(got.len() as u64 + lost(&d), 3000, "{d:?}");
    let missing = d.iter().find(|d| d["kind"] == "missing-segment").unwrap();
    let corrupt = d.iter().find(|d| d["kind"] == "corrupt").unwrap();
    assert_eq!(
        corrupt["records"], 1,
        "a flip costs the one record it hit: {corrupt}"
    );
    assert!(missing["records"].as_u64().unwrap() > 500);
    assert!(
        got.iter().any(|r| r.1 == 2999),
        "records after the damage survive"
    );
    for (_, o, v) in &got {
        assert!(v.starts_with(format!("{o:06}-").as_bytes()), "offset {o}");
    }
    assert_eq!(
        g.metric("kateway_log_damaged_records_total") as u64,
        lost(&d)
    );
}

/// Damage inside sealed segments whose index still matches: found by reading or scrubbing.
fn damage_sealed(g: &mut Gateway) -> u64 {
    g.create_topic("app", "t", 1);
    fill(g, 2000, 1000);
    g.kill9();
    let seg = &segments(g)[0];
    // Records are 1034 bytes: a flipped byte in record 10, and record 100's length field
    // claiming 2 GiB (which must not make a reader allocate it).
    flip(seg, 10 * 1034 + 500, 1);
    let mut data = std::fs::read(seg).unwrap();
    data[100 * 1034..100 * 1034 + 4].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
    std::fs::write(seg, data).unwrap();
    2
}

#[test]
fn damage_in_sealed_segments_is_skipped_and_reported() {
    let mut g = Gateway::new_with(&ONE_MIB_SEGMENTS);
    g.spawn();
    let bad = damage_sealed(&mut g);
    g.spawn();
    assert!(
        damage(&g).is_empty(),
        "sealed segments are not scanned on open"
    );
    let got = read_all(&g, "g");
    assert_eq!(got.len() as u64, 2000 - bad);
    let d = damage(&g);
    assert_eq!(lost(&d), bad, "{d:?}");
    assert!(d.iter().all(|d| d["found_by"] == "read"));
    // The scrubber finds it without a reader.
    g.kill9();
    g.set_env(&[
        ("KATEWAY_STORE_SEGMENT_BYTES", "1MiB"),
        ("KATEWAY_STORE_SCRUB_BYTES_PER_SECOND", "64MiB"),
    ]);
    g.spawn();
    let mut found = Vec::new();
    for _ in 0..100 {
        found = damage(&g);
        if lost(&found) == bad {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(lost(&found), bad, "{found:?}");
    assert!(found.iter().all(|d| d["found_by"] == "scrub"));
    assert!(g.metric("kateway_log_scrubbed_bytes_total") > 1e6);
}

#[test]
fn strict_recovery_refuses_damage_until_the_group_is_moved_past_it() {
    let mut g = Gateway::new_with(&ONE_MIB_SEGMENTS);
    g.spawn();
    let bad = damage_sealed(&mut g);
    g.set_env(&[
        ("KATEWAY_STORE_SEGMENT_BYTES", "1MiB"),
        ("KATEWAY_STORE_SCRUB_BYTES_PER_SECOND", "0"),
        ("KATEWAY_STORE_RECOVERY_MODE", "tolerate-tail"),
    ]);
    g.spawn();
    let mut got = 0;
    let mut seeks = 0;
    loop {
        let s = g.sub("r", "app", "t", "group=g&batch=1000&wait=1s", &[]);
        match s.status {
            204 => break,
            200 => got += records(&s.body).len(),
            _ => {
                s.assert_error(503);
                let j = s.json();
                assert_eq!(j["code"], 50305, "{j}");
                let msg = j["errmsg"].as_str().unwrap();
                let to: u64 = msg.rsplit("offset=").next().unwrap().parse().unwrap();
                let r = g.req(
                    "PUT",
                    &format!("/v1/offset/app/t/v1/g/0?offset={to}"),
                    &[("Appid", "r")],
                    b"",
                );
                assert_eq!(r.status, 200, "{}", r.text());
                seeks += 1;
                assert!(seeks <= bad, "{msg}");
            }
        }
    }
    assert_eq!(seeks, bad);
    assert_eq!(got as u64, 2000 - bad);
}

#[test]
fn strict_recovery_refuses_to_start_on_damage_and_names_the_file() {
    let mut g = Gateway::start();
    g.create_topic("app", "t", 1);
    fill(&g, 100, 100);
    g.kill9();
    let seg = segments(&g)[0].clone();
    flip(&seg, 50 * 134 + 60, 2);
    let before = std::fs::read(&seg).unwrap();
    g.set_env(&[("KATEWAY_STORE_RECOVERY_MODE", "absolute")]);
    let (code, stderr) = g.run_to_exit();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("00000000000000000000.log"), "{stderr}");
    assert!(stderr.contains("damaged records"), "{stderr}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        before,
        "refusing changes nothing"
    );
    g.set_env(&[]);
    g.spawn();
    assert_eq!(read_all(&g, "g").len(), 99);
}

#[test]
fn a_lost_or_damaged_catalog_does_not_make_topics_vanish() {
    let mut g = Gateway::start();
    g.create_topic("app", "t", 2);
    fill(&g, 10, 10);
    let meta = g.data_dir().join("meta/topics.json");
    for damage in [None, Some(&b"{ not json"[..])] {
        g.kill9();
        match damage {
            None => std::fs::remove_file(&meta).unwrap(),
            Some(junk) => std::fs::write(&meta, junk).unwrap(),
        }
        g.spawn();
        let r = g.req("GET", "/v1/partitions/app/t/v1", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["partitions"], 2);
        g.req("POST", "/v1/topics/app/t/v1", &[], b"")
            .assert_error(409);
    }
    assert_eq!(read_all(&g, "g").len(), 10, "its data is still there");
}

#[test]
fn damage_to_the_offsets_log_is_reported() {
    let mut g = Gateway::start();
    g.create_topic("app", "t", 1);
    fill(&g, 10, 10);
    assert_eq!(read_all(&g, "g").len(), 10);
    g.kill9();
    let off = g.data_dir().join("topics/app.t.v1/0/offsets.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&off).unwrap();
    std::io::Write::write_all(&mut f, &[0, 0, 0, 77, 1, 2, 3]).unwrap();
    drop(f);
    g.spawn();
    assert_eq!(g.metric("kateway_log_damaged_bytes_total"), 7.0);
    let d = damage(&g);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0]["kind"].as_str(), d[0]["bytes"].as_u64()),
        (Some("offsets-log"), Some(7))
    );
    assert!(read_all(&g, "g").is_empty(), "the intact commits were kept");
}

#[test]
fn a_damaged_commit_costs_only_itself() {
    let mut g = Gateway::start();
    g.create_topic("app", "t", 1);
    fill(&g, 10, 10);
    let ack = |group: &str, last: u64| {
        let body = format!("[{{\"partition\":0,\"offset\":{last}}}]");
        let r = g.req(
            "PUT",
            &format!("/v1/offsets/app/t/v1/{group}"),
            &[("Appid", "r")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    ack("x", 0);
    ack("y", 7);
    ack("x", 8);
    g.kill9();
    // A flipped byte inside the first commit record.
    flip(&g.data_dir().join("topics/app.t.v1/0/offsets.log"), 30, 1);
    g.spawn();
    let st = g
        .req("GET", "/v1/status/app/t/v1", &[("Appid", "r")], b"")
        .json();
    let committed = |group: &str| {
        st["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["group"] == group)
            .map(|x| x["partitions"][0]["committed"].clone())
    };
    assert_eq!(committed("x"), Some(serde_json::json!(9)), "{st}");
    assert_eq!(committed("y"), Some(serde_json::json!(8)), "{st}");
    let d = damage(&g);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["kind"], "offsets-log");
}

#[test]
fn records_lost_below_what_consumers_committed_are_reported() {
    let mut g = Gateway::start();
    g.create_topic("app", "t", 1);
    fill(&g, 10, 20);
    assert_eq!(read_all(&g, "g").len(), 10);
    g.kill9();
    // Cut exactly at a record boundary: 5 whole records remain, nothing looks torn.
    cut(&segments(&g)[0], |len| len / 2);
    g.spawn();
    let d = damage(&g);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["kind"], "lost-tail");
    assert_eq!(d[0]["offsets"], serde_json::json!([5, 10]), "{d:?}");
    let r = g.publish("app", "t", "", b"next");
    assert_eq!(r.header("x-offset"), Some("10"), "offsets are not reused");
}

#[test]
fn deleting_a_topic_then_crashing_completes_the_deletion() {
    let mut g = Gateway::start();
    g.create_topic("app", "t", 2);
    fill(&g, 10, 10);
    // A deletion interrupted after its directory went into the trash, before the catalog was
    // rewritten.
    g.kill9();
    let root = g.data_dir().join("topics");
    std::fs::create_dir_all(root.join(".trash")).unwrap();
    std::fs::rename(root.join("app.t.v1"), root.join(".trash/app.t.v1.123")).unwrap();
    g.spawn();
    g.req("GET", "/v1/partitions/app/t/v1", &[], b"")
        .assert_error(404);
    assert!(!root.join(".trash/app.t.v1.123").exists());
    g.create_topic("app", "t", 2);
    assert!(
        read_all(&g, "g").is_empty(),
        "a re-created topic starts empty"
    );
}

/// A key of `t` that lands on partition `p` of `n`.
fn key_for(p: u32, n: u32) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| kateway_core::partitioner::partition_for_key(k.as_bytes(), n) == p)
        .unwrap()
}

#[test]
fn a_partition_that_fails_to_read_costs_no_other_partition_its_messages() {
    let mut g = Gateway::new_with(&ONE_MIB_SEGMENTS);
    g.spawn();
    damage_sealed(&mut g);
    g.set_env(&[
        ("KATEWAY_STORE_SEGMENT_BYTES", "1MiB"),
        ("KATEWAY_STORE_SCRUB_BYTES_PER_SECOND", "0"),
        ("KATEWAY_STORE_RECOVERY_MODE", "tolerate-tail"),
    ]);
    g.spawn();
    // Partition 0 refuses its damaged record 10; partitions 1-3 (on both cores) are healthy.
    let r = g.req("PUT", "/v1/topics/app/t/v1?partitions=4", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = g.req(
        "PUT",
        "/v1/offset/app/t/v1/g/0?offset=10",
        &[("Appid", "r")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for p in 1..4 {
        let key = key_for(p, 4);
        let r = g.publish(
            "app",
            "t",
            &format!("key={key}"),
            format!("to-{p}").as_bytes(),
        );
        assert_eq!(r.header("x-partition"), Some(p.to_string().as_str()));
    }
    let s = g.sub("r", "app", "t", "group=g&batch=10&wait=1s", &[]);
    assert_eq!(s.status, 200, "{}", s.text());
    let mut got: Vec<(u32, Vec<u8>)> = records(&s.body).into_iter().map(|r| (r.0, r.2)).collect();
    got.sort();
    let want: Vec<(u32, Vec<u8>)> = (1..4)
        .map(|p| (p, format!("to-{p}").into_bytes()))
        .collect();
    assert_eq!(got, want, "the healthy partitions' messages are delivered");
    // Partitions alternate between the 2 cores: now the core of partition 0 has nothing else
    // to give, and the other core's message still comes through.
    let key = key_for(1, 4);
    g.publish("app", "t", &format!("key={key}"), b"again");
    let s = g.sub("r", "app", "t", "group=g&batch=10&wait=1s", &[]);
    assert_eq!(s.status, 200, "{}", s.text());
    let got: Vec<(u32, Vec<u8>)> = records(&s.body).into_iter().map(|r| (r.0, r.2)).collect();
    assert_eq!(got, vec![(1, b"again".to_vec())]);
    // What is left is the damage, refused; nothing was committed that was not delivered.
    let s = g.sub("r", "app", "t", "group=g&batch=10&wait=1s", &[]);
    s.assert_error(503);
    assert_eq!(s.json()["code"], 50305);
    let st = g
        .req("GET", "/v1/status/app/t/v1?group=g", &[("Appid", "r")], b"")
        .json();
    let committed: Vec<u64> = st["groups"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["committed"].as_u64().unwrap())
        .collect();
    assert_eq!(committed, vec![10, 2, 1, 1], "{st}");
}

#[test]
fn the_scrubber_reaches_every_partition() {
    let mut g = Gateway::new_with(&ONE_MIB_SEGMENTS);
    g.spawn();
    // Partitions alternate between the 2 cores: 0 and 2 share one (and its scrubber).
    g.create_topic("app", "t", 3);
    for p in [0, 2] {
        fill_key(&g, &key_for(p, 3), 1200, 3000);
    }
    g.kill9();
    // One flipped byte in the last sealed segment of each partition.
    for p in [0, 2] {
        let segs = segments_of(&g, p);
        assert!(segs.len() >= 4, "{segs:?}");
        flip(&segs[segs.len() - 2], 10 * 3034 + 500, 1);
    }
    // Each 250 ms tick's budget is a little more than a segment: the partition scrubbed first
    // finishes a segment and leaves the other only a few bytes, which must not starve it.
    let segment = std::fs::metadata(&segments_of(&g, 0)[0]).unwrap().len();
    let rate = 4 * (segment + 1000);
    g.set_env(&[
        ("KATEWAY_STORE_SEGMENT_BYTES", "1MiB"),
        ("KATEWAY_STORE_SCRUB_BYTES_PER_SECOND", &rate.to_string()),
    ]);
    g.spawn();
    let mut found = Vec::new();
    for _ in 0..300 {
        found = damage(&g);
        if found.len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut parts: Vec<u64> = found
        .iter()
        .map(|d| d["partition"].as_u64().unwrap())
        .collect();
    parts.sort();
    assert_eq!(parts, vec![0, 2], "{found:?}");
    assert!(found.iter().all(|d| d["found_by"] == "scrub"));
}

#[test]
fn stray_files_where_partitions_belong_do_not_stop_a_start() {
    let mut g = Gateway::start();
    g.create_topic("app", "t", 2);
    g.publish("app", "t", &format!("key={}", key_for(0, 2)), b"kept");
    g.kill9();
    let topics = g.data_dir().join("topics");
    // A listed topic's partition directory replaced by a file...
    std::fs::remove_dir_all(topics.join("app.t.v1/1")).unwrap();
    std::fs::write(topics.join("app.t.v1/1"), b"not a partition").unwrap();
    // ... and an unlisted topic directory holding a file named like a partition.
    std::fs::create_dir_all(topics.join("app.v.v1/0")).unwrap();
    std::fs::write(topics.join("app.v.v1/1"), b"stray").unwrap();
    g.spawn();
    let strays: Vec<String> = std::fs::read_dir(topics.join("app.t.v1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("1.stray-"))
        .collect();
    assert_eq!(strays.len(), 1, "the file was set aside, not deleted");
    let r = g.publish("app", "t", &format!("key={}", key_for(1, 2)), b"new");
    assert_eq!(r.header("x-partition"), Some("1"));
    let got = read_all(&g, "g");
    assert_eq!(got.len(), 2);
    let v = g.req("GET", "/v1/partitions/app/v/v1", &[], b"").json();
    assert_eq!(
        v["partitions"], 1,
        "only directories count as partitions: {v}"
    );
}
