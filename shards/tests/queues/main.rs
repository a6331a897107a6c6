//! Leased delivery (`ack=lease`), on both backends: receipts, ack/nack/extend/bury, retries and
//! dead letters, no head-of-line blocking, the queue state surviving `kill -9`, receipts
//! that cannot be forged, and batch receipts.

#[path = "../support/mod.rs"]
mod support;

mod dead;
mod restarts;
mod settle;
use dead::*;
use restarts::*;
use serde_json::Value;
use settle::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{records, Backend, Conn, Gateway};

on_both_backends!(
    every_message_is_acked_once_and_poison_ones_are_dead_lettered,
    a_stalled_message_does_not_hold_back_later_ones,
    settling_acks_nacks_extends_and_buries,
    receipts_cannot_be_forged_or_used_on_another_group,
    acked_messages_stay_acked_across_kill_9,
    a_large_checkpoint_survives_kill_9,
    dead_letters_are_counted_peeked_redriven_and_purged,
    dead_letters_go_back_only_where_their_group_reads,
    a_topic_created_again_starts_its_queues_afresh,
    batch_receipts_settle_whole_batches,
    a_message_is_buried_once,
    an_ack_racing_a_bury_never_both_succeed,
    a_group_policy_sets_its_attempts,
    concurrent_redrives_and_purges_move_each_dead_letter_once,
    one_app_cannot_take_every_queue,
    a_leased_poll_ends_with_its_client,
);

/// Fast retries, short leases and checkpoints, for tests.
const QUEUE_ENV: &[(&str, &str)] = &[
    ("KATEWAY_QUEUE_MAX_ATTEMPTS", "3"),
    ("KATEWAY_QUEUE_BACKOFF_BASE", "10ms"),
    ("KATEWAY_QUEUE_BACKOFF_MAX", "50ms"),
    ("KATEWAY_QUEUE_VISIBILITY", "1s"),
    ("KATEWAY_QUEUE_CHECKPOINT_INTERVAL", "200ms"),
];

/// A leased message as a JSON line shows it.
#[derive(Debug, Clone)]
struct Leased {
    receipt: String,
    attempt: u64,
    value: Vec<u8>,
}

fn parse(body: &[u8]) -> Vec<Leased> {
    use base64::Engine;
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l).unwrap();
            Leased {
                receipt: v["receipt"].as_str().unwrap().to_owned(),
                attempt: v["attempt"].as_u64().unwrap(),
                value: base64::engine::general_purpose::STANDARD
                    .decode(v["value"].as_str().unwrap())
                    .unwrap(),
            }
        })
        .collect()
}

/// Leases up to `batch` messages of `app2.<group>` on `app1.t`.
fn lease(c: &mut Conn, app1: &str, app2: &str, group: &str, q: &str) -> Vec<Leased> {
    let r = c.req(
        "GET",
        &format!("/v1/msgs/{app1}/t/v1?group={group}&ack=lease&{q}"),
        &[("Appid", app2), ("Accept", "application/x-ndjson")],
        b"",
    );
    match r.status {
        204 => Vec::new(),
        200 => parse(&r.body),
        s => panic!("lease: {s} {}", r.text()),
    }
}

/// Settles `receipts` with `op`; returns each outcome's status.
fn settle(c: &mut Conn, app1: &str, app2: &str, group: &str, op: &str, body: Value) -> Vec<String> {
    let r = c.req(
        "POST",
        &format!("/v1/queue/{app1}/t/v1/{group}/{op}"),
        &[("Appid", app2)],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{op}: {}", r.text());
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            if o["status"] == "failed" {
                eprintln!("{op}: {o}");
            }
            o["status"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn publish_numbered(g: &Gateway, app1: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let body: String = chunk.iter().map(|i| format!("{i}\n")).collect();
        let r = g.req(
            "POST",
            "/v1/msgs/t/v1?ack=local",
            &[("Appid", app1), ("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

fn num(v: &[u8]) -> usize {
    std::str::from_utf8(v).unwrap().trim().parse().unwrap()
}

/// Reads the whole dead-letter topic of `app2.<group>` with a plain group.
fn dead_letters(g: &Gateway, app2: &str, group: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    loop {
        let r = g.req(
            "GET",
            &format!("/v1/msgs/{app2}/{group}-dlq/v1?group=peek&batch=500&wait=1s"),
            &[("Appid", app2), ("Accept", "application/x-ndjson")],
            b"",
        );
        if r.status == 204 {
            return out;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        for l in r.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            use base64::Engine;
            let v: Value = serde_json::from_slice(l).unwrap();
            let value = base64::engine::general_purpose::STANDARD
                .decode(v["value"].as_str().unwrap())
                .unwrap();
            out.push((num(&value), v["tags"].as_str().unwrap_or("").to_owned()));
        }
    }
}
