//! Consumer groups: independent groups, consumers sharing a group, explicit acknowledgement
//! surviving a restart, and the batch ack API.

mod support;
use std::collections::HashSet;
use support::{records, Gateway};

fn drain(g: &Gateway, group: &str, query: &str) -> Vec<(u32, u64, Vec<u8>)> {
    g.drain(
        "app2",
        "app1",
        "t",
        &format!("group={group}&batch=50&wait=1s{query}"),
    )
}

#[test]
fn two_groups_each_see_every_message() {
    let g = Gateway::start();
    g.create_topic("app1", "t", 4);
    for i in 0..30 {
        g.publish("app1", "t", "ack=local", format!("m{i}").as_bytes());
    }
    let a: HashSet<Vec<u8>> = drain(&g, "ga", "").into_iter().map(|r| r.2).collect();
    let b: HashSet<Vec<u8>> = drain(&g, "gb", "").into_iter().map(|r| r.2).collect();
    assert_eq!(a.len(), 30);
    assert_eq!(a, b);
}

#[test]
fn consumers_of_one_group_split_messages_without_duplicates() {
    let g = std::sync::Arc::new(Gateway::start());
    g.create_topic("app1", "t", 4);
    for i in 0..200 {
        g.publish("app1", "t", "ack=local", format!("m{i}").as_bytes());
    }
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let s = g.sub("app2", "app1", "t", "group=shared&wait=1s", &[]);
                    if s.status == 204 {
                        return got;
                    }
                    got.push(s.body);
                }
            })
        })
        .collect();
    let results: Vec<Vec<Vec<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        results.iter().all(|r| !r.is_empty()),
        "both consumers got work"
    );
    let all: Vec<Vec<u8>> = results.concat();
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 200, "no message delivered twice");
    assert_eq!(unique.len(), 200, "every message delivered");
}

#[test]
fn unacked_messages_come_back_after_restart_acked_ones_do_not() {
    let mut g = Gateway::start();
    g.create_topic("app1", "t", 1);
    for i in 0..5 {
        g.publish("app1", "t", "", format!("m{i}").as_bytes());
    }
    // Explicit-ack consumer: takes m0, acks it with the next request, takes m1, never acks it.
    let s = g.sub("app2", "app1", "t", "group=ex&ack=1&wait=2s", &[]);
    assert_eq!(s.body, b"m0");
    let (p, o) = (
        s.header("x-partition").unwrap().to_string(),
        s.header("x-offset").unwrap().to_string(),
    );
    let s = g.sub(
        "app2",
        "app1",
        "t",
        "group=ex&ack=1&wait=2s",
        &[("X-Partition", &p), ("X-Offset", &o)],
    );
    assert_eq!(s.body, b"m1");
    g.kill9();
    g.spawn();
    let s = g.sub("app2", "app1", "t", "group=ex&ack=1&wait=2s", &[]);
    assert_eq!(s.status, 200);
    assert_eq!(
        s.body, b"m1",
        "the unacknowledged message is delivered again; the acked one is not"
    );
}

#[test]
fn batch_ack_commits_last_processed_offsets() {
    let mut g = Gateway::start();
    g.create_topic("app1", "t", 1);
    for i in 0..5 {
        g.publish("app1", "t", "", format!("m{i}").as_bytes());
    }
    let s = g.sub("app2", "app1", "t", "group=b&ack=1&batch=5&wait=2s", &[]);
    assert_eq!(records(&s.body).len(), 5);
    let r = g.req(
        "PUT",
        "/v1/offsets/app1/t/v1/b",
        &[("Appid", "app2")],
        b"[{\"partition\":0,\"offset\":2}]",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let st = g
        .req(
            "GET",
            "/v1/status/app1/t/v1?group=b",
            &[("Appid", "app2")],
            b"",
        )
        .json();
    assert_eq!(st["groups"][0]["partitions"][0]["committed"], 3);
    assert_eq!(st["groups"][0]["lag"], 2);
    g.terminate();
    g.spawn();
    let s = g.sub("app2", "app1", "t", "group=b&ack=1&wait=2s", &[]);
    assert_eq!(s.body, b"m3");
    let bad = g.req(
        "PUT",
        "/v1/offsets/app1/t/v1/b",
        &[("Appid", "app2")],
        b"[{\"partition\":9,\"offset\":1}]",
    );
    bad.assert_error(400);
    let bad = g.req(
        "PUT",
        "/v1/offsets/app1/t/v1/b",
        &[("Appid", "app2")],
        b"not json",
    );
    bad.assert_error(400);
}
