//! Consumer groups, on both backends: independent groups, consumers sharing a group, explicit
//! acknowledgement surviving a restart, and the batch ack API.

mod support;
use std::collections::HashSet;
use support::{records, Backend, Gateway};

on_both_backends!(
    two_groups_each_see_every_message,
    consumers_of_one_group_split_messages_without_duplicates,
    unacked_messages_come_back_after_restart_acked_ones_do_not,
    batch_ack_commits_last_processed_offsets,
    seeking_moves_a_group_back_and_forth,
    a_head_request_hands_out_nothing,
);

fn drain(g: &Gateway, group: &str, query: &str) -> Vec<(u32, u64, Vec<u8>)> {
    g.drain(
        &g.app("app2"),
        &g.app("app1"),
        "t",
        &format!("group={group}&batch=50&wait=2s{query}"),
    )
}

fn two_groups_each_see_every_message(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 4);
    for i in 0..30 {
        g.publish(&app1, "t", "ack=local", format!("m{i}").as_bytes());
    }
    let a: HashSet<Vec<u8>> = drain(&g, "ga", "").into_iter().map(|r| r.2).collect();
    let other: HashSet<Vec<u8>> = drain(&g, "gb", "").into_iter().map(|r| r.2).collect();
    assert_eq!(a.len(), 30);
    assert_eq!(a, other);
}

/// HEAD has no body to carry messages: it is refused (405), and the group still gets them all.
fn a_head_request_hands_out_nothing(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 2);
    for i in 0..10 {
        g.publish(&app1, "t", "ack=local", format!("m{i}").as_bytes());
    }
    let r = g.req(
        "HEAD",
        &format!("/v1/msgs/{app1}/t/v1?group=g&batch=50"),
        &[("Appid", app2.as_str())],
        b"",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(drain(&g, "g", "").len(), 10);
}

fn consumers_of_one_group_split_messages_without_duplicates(b: Backend) {
    let g = std::sync::Arc::new(Gateway::on(b, &[]));
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 4);
    for i in 0..200 {
        g.publish(&app1, "t", "ack=local", format!("m{i}").as_bytes());
    }
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (g, app1, app2) = (g.clone(), app1.clone(), app2.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let s = g.sub(&app2, &app1, "t", "group=shared&wait=2s", &[]);
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

fn unacked_messages_come_back_after_restart_acked_ones_do_not(b: Backend) {
    let mut g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    for i in 0..5 {
        g.publish(&app1, "t", "", format!("m{i}").as_bytes());
    }
    // Explicit-ack consumer: takes m0, acks it with the next request, takes m1, never acks it.
    let s = g.sub(&app2, &app1, "t", "group=ex&ack=1&wait=5s", &[]);
    assert_eq!(s.body, b"m0");
    let (p, o) = (
        s.header("x-partition").unwrap().to_string(),
        s.header("x-offset").unwrap().to_string(),
    );
    let s = g.sub(
        &app2,
        &app1,
        "t",
        "group=ex&ack=1&wait=5s",
        &[("X-Partition", &p), ("X-Offset", &o)],
    );
    assert_eq!(s.body, b"m1");
    // A graceful restart (a Kafka membership leaves its group at once; kill -9 is in the
    // crash tests).
    g.terminate();
    g.spawn();
    let s = g.sub(&app2, &app1, "t", "group=ex&ack=1&wait=5s", &[]);
    assert_eq!(s.status, 200);
    assert_eq!(
        s.body, b"m1",
        "the unacknowledged message is delivered again; the acked one is not"
    );
}

fn batch_ack_commits_last_processed_offsets(b: Backend) {
    let mut g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    for i in 0..5 {
        g.publish(&app1, "t", "", format!("m{i}").as_bytes());
    }
    let s = g.sub(&app2, &app1, "t", "group=b&ack=1&batch=5&wait=5s", &[]);
    assert_eq!(records(&s.body).len(), 5);
    let r = g.req(
        "PUT",
        &format!("/v1/offsets/{app1}/t/v1/b"),
        &[("Appid", app2.as_str())],
        b"[{\"partition\":0,\"offset\":2}]",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let st = g
        .req(
            "GET",
            &format!("/v1/status/{app1}/t/v1?group=b"),
            &[("Appid", app2.as_str())],
            b"",
        )
        .json();
    assert_eq!(st["groups"][0]["partitions"][0]["committed"], 3);
    assert_eq!(st["groups"][0]["lag"], 2);
    g.terminate();
    g.spawn();
    let s = g.sub(&app2, &app1, "t", "group=b&ack=1&wait=5s", &[]);
    assert_eq!(s.body, b"m3");
    let bad = g.req(
        "PUT",
        &format!("/v1/offsets/{app1}/t/v1/b"),
        &[("Appid", app2.as_str())],
        b"[{\"partition\":9,\"offset\":1}]",
    );
    bad.assert_error(400);
    let bad = g.req(
        "PUT",
        &format!("/v1/offsets/{app1}/t/v1/b"),
        &[("Appid", app2.as_str())],
        b"not json",
    );
    bad.assert_error(400);
}

fn seeking_moves_a_group_back_and_forth(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    for i in 0..10 {
        g.publish(&app1, "t", "", format!("m{i}").as_bytes());
    }
    assert_eq!(drain(&g, "g", "").len(), 10);
    let seek = |p: u32, to: &str| {
        g.req(
            "PUT",
            &format!("/v1/offset/{app1}/t/v1/g/{p}?offset={to}"),
            &[("Appid", app2.as_str())],
            b"",
        )
    };
    let r = seek(0, "4");
    assert_eq!(r.status, 200, "{}", r.text());
    let again = drain(&g, "g", "");
    assert_eq!(
        again.iter().map(|r| r.1).collect::<Vec<_>>(),
        (4..10).collect::<Vec<_>>()
    );
    // Forward too, past what was read.
    assert_eq!(seek(0, "8").status, 200);
    let last = drain(&g, "g", "");
    assert_eq!(last.iter().map(|r| r.1).collect::<Vec<_>>(), vec![8, 9]);
    seek(0, "11").assert_error(400);
    seek(0, "x").assert_error(400);
    seek(7, "1").assert_error(400);
}
