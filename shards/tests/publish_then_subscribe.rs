//! Publish → subscribe round trips over real sockets, on both backends: single, batch (ndjson
//! and binary), keyed order per partition, tags, and the batch subscribe formats.

mod support;
use support::{records, Backend, Gateway};

on_both_backends!(
    single_message_round_trip_with_headers,
    batch_publish_ndjson_and_binary_then_batch_subscribe,
    keyed_messages_keep_order_within_their_partition,
    tags_are_stored_and_filter_subscriptions,
    a_rare_tag_is_found_behind_a_long_run_of_other_messages,
);

fn single_message_round_trip_with_headers(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "orders", 2);
    let r = g.publish(&app1, "orders", "", b"hello");
    assert_eq!(r.status, 201);
    let p = r.header("x-partition").unwrap().to_string();
    let o = r.header("x-offset").unwrap().to_string();
    assert_eq!(r.json()["partition"].to_string(), p);
    assert_eq!(r.json()["offset"].to_string(), o);
    let s = g.sub(&app2, &app1, "orders", "group=g1&wait=5s", &[]);
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.body, b"hello");
    assert_eq!(s.header("x-partition"), Some(p.as_str()));
    assert_eq!(s.header("x-offset"), Some(o.as_str()));
}

fn batch_publish_ndjson_and_binary_then_batch_subscribe(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "logs", 1);
    let r = g.req(
        "POST",
        "/v1/msgs/logs/v1",
        &[
            ("Appid", app1.as_str()),
            ("Content-Type", "application/x-ndjson"),
        ],
        b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let j = r.json();
    assert_eq!(j["count"], 3);
    let offs: Vec<u64> = j["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, vec![0, 1, 2]);

    let mut bin = bytes::BytesMut::new();
    kateway_proto::batch::encode_binary(&mut bin, None, b"bin-1");
    kateway_proto::batch::encode_binary(&mut bin, Some(b"k"), b"bin-2");
    let r = g.req(
        "POST",
        "/v1/msgs/logs/v1",
        &[
            ("Appid", app1.as_str()),
            ("Content-Type", "application/vnd.kateway.batch"),
        ],
        &bin,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["count"], 2);

    let s = g.sub(&app2, &app1, "logs", "group=g&batch=10&wait=5s", &[]);
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("application/octet-stream"));
    assert_eq!(s.header("transfer-encoding"), Some("chunked"));
    let recs = records(&s.body);
    let values: Vec<&[u8]> = recs.iter().map(|r| r.2.as_slice()).collect();
    assert_eq!(
        values,
        vec![
            &b"{\"a\":1}"[..],
            b"{\"a\":2}",
            b"{\"a\":3}",
            b"bin-1",
            b"bin-2"
        ]
    );
    assert_eq!(
        recs.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );

    // JSON lines output for another group.
    let s = g.sub(
        &app2,
        &app1,
        "logs",
        "group=nd&batch=2&wait=5s",
        &[("Accept", "application/x-ndjson")],
    );
    assert_eq!(s.status, 200);
    let lines: Vec<serde_json::Value> = s
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["value"], "eyJhIjoxfQ=="); // base64 of {"a":1}
    assert_eq!(lines[1]["offset"], 1);
}

fn keyed_messages_keep_order_within_their_partition(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "k", 4);
    let mut part_of = std::collections::HashMap::new();
    for i in 0..40 {
        let key = format!("user-{}", i % 4);
        let r = g.publish(
            &app1,
            "k",
            &format!("key={key}&ack=local"),
            format!("{key}:{i}").as_bytes(),
        );
        let p = r.header("x-partition").unwrap().to_string();
        // Same key, same partition (Kafka's partitioner), every time.
        assert_eq!(part_of.entry(key.clone()).or_insert(p.clone()), &p);
        let expect = kateway_core::partitioner::partition_for_key(key.as_bytes(), 4).to_string();
        assert_eq!(p, expect);
    }
    let s = g.sub(&app2, &app1, "k", "group=g&batch=100&wait=5s", &[]);
    let mut got = records(&s.body);
    got.extend(g.drain(&app2, &app1, "k", "group=g&batch=100&wait=1s"));
    assert_eq!(got.len(), 40);
    for k in 0..4 {
        let seq: Vec<usize> = got
            .iter()
            .map(|r| String::from_utf8(r.2.clone()).unwrap())
            .filter(|v| v.starts_with(&format!("user-{k}:")))
            .map(|v| v.split(':').nth(1).unwrap().parse().unwrap())
            .collect();
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, sorted, "key user-{k} out of order");
        assert_eq!(seq.len(), 10);
    }
}

fn tags_are_stored_and_filter_subscriptions(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", app1.as_str()), ("X-Tag", "red;big")],
        b"m1",
    );
    g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", app1.as_str()), ("X-Tag", "blue")],
        b"m2",
    );
    g.req("POST", "/v1/msgs/t/v1", &[("Appid", app1.as_str())], b"m3");
    let s = g.sub(
        &app2,
        &app1,
        "t",
        "group=blue&wait=5s",
        &[("X-Tag", "blue;green")],
    );
    assert_eq!(s.status, 200);
    assert_eq!(s.body, b"m2");
    assert_eq!(s.header("x-tag"), Some("blue"));
    let s = g.sub(
        &app2,
        &app1,
        "t",
        "group=blue&wait=1s",
        &[("X-Tag", "blue;green")],
    );
    assert_eq!(s.status, 204, "no other message carries blue or green");
    let s = g.sub(&app2, &app1, "t", "group=all&wait=5s", &[]);
    assert_eq!(
        (s.body.as_slice(), s.header("x-tag")),
        (&b"m1"[..], Some("red;big"))
    );
}

fn a_rare_tag_is_found_behind_a_long_run_of_other_messages(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    // 100 000 messages tagged `common` (7 MB), then one tagged `rare`.
    let line = format!("{{\"v\":\"{}\"}}\n", "x".repeat(56));
    let body = line.repeat(1000);
    for _ in 0..100 {
        let r = g.req(
            "POST",
            "/v1/msgs/t/v1",
            &[
                ("Appid", app1.as_str()),
                ("Content-Type", "application/x-ndjson"),
                ("X-Tag", "common"),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", app1.as_str()), ("X-Tag", "rare")],
        b"needle",
    );
    let s = g.sub(&app2, &app1, "t", "group=g&wait=10s", &[("X-Tag", "rare")]);
    assert_eq!(
        s.status,
        200,
        "the matching message is stored: {}",
        s.text()
    );
    assert_eq!(s.body, b"needle");
    assert_eq!(s.header("x-offset"), Some("100000"));
}
