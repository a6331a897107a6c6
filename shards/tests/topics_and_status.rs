//! Topic administration, partition offsets, group status and metrics, on both backends.

mod support;
use support::{Backend, Gateway};

on_both_backends!(
    create_alter_delete_topic,
    created_and_grown_partitions_are_readable_once_answered,
    metrics_and_process_status,
    topics_beyond_the_metrics_cap_are_summed_into_other,
    group_lag_is_measured,
    a_topics_groups_are_measured_within_the_status_budget,
    one_app_cannot_take_every_partition,
);

fn create_alter_delete_topic(b: Backend) {
    let mut g = Gateway::on(b, &[]);
    let app = g.app("app1");
    let r = g.req(
        "POST",
        &format!("/v1/topics/{app}/t/v1?partitions=2&retention.hours=1&retention.bytes=1MiB"),
        &[],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["partitions"], 2);
    assert_eq!(r.json()["retention_bytes"], 1 << 20);
    g.req("POST", &format!("/v1/topics/{app}/t/v1"), &[], b"")
        .assert_error(409);
    g.publish(&app, "t", "key=a", b"x");
    let r = g.req(
        "PUT",
        &format!("/v1/topics/{app}/t/v1?partitions=5"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    g.req(
        "PUT",
        &format!("/v1/topics/{app}/t/v1?partitions=1"),
        &[],
        b"",
    )
    .assert_error(400);
    let parts = g
        .req("GET", &format!("/v1/partitions/{app}/t/v1"), &[], b"")
        .json();
    assert_eq!(parts["partitions"], 5);
    assert_eq!(parts["offsets"].as_array().unwrap().len(), 5);
    let newest: u64 = parts["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["newest"].as_u64().unwrap())
        .sum();
    assert_eq!(newest, 1);
    // Metadata survives a restart.
    g.terminate();
    g.spawn();
    assert_eq!(
        g.req("GET", &format!("/v1/partitions/{app}/t/v1"), &[], b"")
            .json()["partitions"],
        5
    );
    assert_eq!(
        g.req("DELETE", &format!("/v1/topics/{app}/t/v1"), &[], b"")
            .status,
        200
    );
    g.req("POST", "/v1/msgs/t/v1", &[("Appid", app.as_str())], b"x")
        .assert_error(404);
    assert!(!g.log_root().join(format!("{app}.t.v1")).exists());
    g.req("DELETE", &format!("/v1/topics/{app}/t/v1"), &[], b"")
        .assert_error(404);
}

fn metrics_and_process_status(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app = g.app("app1");
    g.create_topic(&app, "t", 2);
    for _ in 0..5 {
        g.publish(&app, "t", "", b"12345");
    }
    let s = g.req("GET", "/v1/status", &[], b"").json();
    assert_eq!(s["cores"], 2);
    assert_eq!(
        s["backend"],
        match b {
            Backend::Embedded => "embedded",
            Backend::Kafka => "kafka",
        }
    );
    let m = g.req("GET", "/metrics", &[], b"").text();
    let value = |name: &str| support::metric_value(&m, name);
    assert_eq!(value("kateway_pub_messages_total"), 5.0);
    assert_eq!(value("kateway_pub_bytes_total"), 25.0);
    // Labelled: per topic, and per route and status.
    let t = format!("{{app=\"{app}\",topic=\"t\",ver=\"v1\"}}");
    assert_eq!(
        value(&format!("kateway_topic_published_messages_total{t}")),
        5.0
    );
    assert_eq!(
        value(&format!("kateway_topic_published_bytes_total{t}")),
        25.0
    );
    assert_eq!(
        value("kateway_http_request_duration_seconds_count{route=\"publish\",status=\"201\"}"),
        5.0
    );
    assert_eq!(
        // A wait long enough for a Kafka consumer to fetch both partitions under load.
        g.drain(&app, &app, "t", "group=g&batch=10&wait=3s").len(),
        5
    );
    let m = g.req("GET", "/metrics", &[], b"").text();
    let value = |name: &str| support::metric_value(&m, name);
    assert_eq!(
        value(&format!("kateway_topic_delivered_messages_total{t}")),
        5.0
    );
    assert_eq!(
        value(&format!("kateway_topic_delivered_bytes_total{t}")),
        25.0
    );
    assert!(
        value("kateway_http_request_duration_seconds_count{route=\"subscribe\",status=\"200\"}")
            >= 1.0
    );
    assert!(
        value("kateway_http_request_duration_seconds_count{route=\"subscribe\",status=\"204\"}")
            >= 1.0
    );
    if b == Backend::Embedded {
        // The embedded store's own figures.
        assert!(value("kateway_log_fsyncs_total") >= 1.0);
        assert!(value("kateway_log_size_bytes") > 25.0);
        assert_eq!(value("kateway_log_partitions"), 2.0);
        // Where publishes spend their time: every publish appended and waited for its write;
        // all but the ack=local one waited for an fsync (ack=all is the default).
        let r = g.req(
            "POST",
            "/v1/msgs/t/v1?ack=local",
            &[("Appid", app.as_str())],
            b"x",
        );
        assert_eq!(r.status, 201);
        let m = g.req("GET", "/metrics", &[], b"").text();
        let stage = |s: &str| {
            support::metric_value(
                &m,
                &format!("kateway_publish_stage_duration_seconds_count{{stage=\"{s}\"}}"),
            )
        };
        assert_eq!(stage("append"), 6.0);
        assert_eq!(stage("write_wait"), 6.0);
        assert_eq!(stage("sync_wait"), 5.0);
        assert!(stage("write") >= 1.0);
    }
}

/// A creation or growth is answered once every partition can be read (Kafka applies both
/// asynchronously: a partition without a leader yet cannot report its offsets).
fn created_and_grown_partitions_are_readable_once_answered(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app = g.app("grow");
    g.create_topic(&app, "t", 8);
    for n in [24u32, 48, 96] {
        let r = g.req(
            "PUT",
            &format!("/v1/topics/{app}/t/v1?partitions={n}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = g.req("GET", &format!("/v1/partitions/{app}/t/v1"), &[], b"");
        assert_eq!(r.status, 200, "growing to {n}: {}", r.text());
        assert_eq!(r.json()["partitions"], n);
        assert_eq!(r.json()["offsets"].as_array().unwrap().len(), n as usize);
    }
}

/// With `metrics.max_topic_series = 1` the first topic by name keeps its labels and the
/// others are summed into `other`.
fn topics_beyond_the_metrics_cap_are_summed_into_other(b: Backend) {
    let g = Gateway::on(b, &[("KATEWAY_METRICS_MAX_TOPIC_SERIES", "1")]);
    let app = g.app("app1");
    for (t, n) in [("ta", 1), ("tb", 2), ("tc", 3)] {
        g.create_topic(&app, t, 1);
        for _ in 0..n {
            g.publish(&app, t, "", b"x");
        }
    }
    let m = g.req("GET", "/metrics", &[], b"").text();
    let series: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("kateway_topic_published_messages_total{"))
        .collect();
    assert_eq!(
        series,
        [
            format!(
                "kateway_topic_published_messages_total{{app=\"{app}\",topic=\"ta\",ver=\"v1\"}} 1"
            ),
            "kateway_topic_published_messages_total{app=\"other\",topic=\"other\",ver=\"other\"} 5"
                .to_string(),
        ],
        "{m}"
    );
}

/// `kateway_group_lag_messages` follows what a group has left to consume.
fn group_lag_is_measured(b: Backend) {
    let g = Gateway::on(b, &[("KATEWAY_METRICS_LAG_INTERVAL", "100ms")]);
    let (app, sub) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app, "t", 1);
    for _ in 0..5 {
        g.publish(&app, "t", "", b"x");
    }
    // Two handed out (and committed: auto-ack); three left.
    let r = g.sub(&sub, &app, "t", "group=g&batch=2&wait=2s", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let series = format!(
        "kateway_group_lag_messages{{app=\"{app}\",topic=\"t\",ver=\"v1\",subscriber=\"{sub}\",group=\"g\"}}"
    );
    let lag = |want: u64| {
        let line = format!("{series} {want}");
        for _ in 0..300 {
            let m = g.req("GET", "/metrics", &[], b"").text();
            if m.lines().any(|l| l == line) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let m = g.req("GET", "/metrics", &[], b"").text();
        let seen: Vec<_> = m
            .lines()
            .filter(|l| l.starts_with("kateway_group_lag"))
            .collect();
        panic!("no {line} within 15 s: {seen:?}");
    };
    lag(3);
    assert_eq!(
        g.drain(&sub, &app, "t", "group=g&batch=10&wait=200ms")
            .len(),
        3
    );
    lag(0);
}

/// On Kafka a topic's groups are measured one request per group, within `kafka.status_budget`:
/// with none, only the first group asked about is measured and the others are counted; a group
/// asked about by name is always measured. The embedded store measures every group.
fn a_topics_groups_are_measured_within_the_status_budget(b: Backend) {
    let g = Gateway::on(b, &[("KATEWAY_KAFKA_STATUS_BUDGET", "0s")]);
    let (app, sub) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app, "t", 1);
    for _ in 0..3 {
        g.publish(&app, "t", "", b"x");
    }
    for group in ["g1", "g2", "g3"] {
        let r = g.sub(
            &sub,
            &app,
            "t",
            &format!("group={group}&ack=1&wait=2s"),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = g.req(
            "PUT",
            &format!("/v1/offsets/{app}/t/v1/{group}"),
            &[("Appid", sub.as_str())],
            b"[{\"partition\":0,\"offset\":0}]",
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let status = |query: &str| {
        let r = g.req(
            "GET",
            &format!("/v1/status/{app}/t/v1{query}"),
            &[("Appid", sub.as_str())],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let names: Vec<String> = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["group"].as_str().unwrap().to_owned())
            .collect();
        (names, v.get("unmeasured_groups").cloned())
    };
    let (names, unmeasured) = status("");
    match b {
        Backend::Embedded => {
            assert_eq!(names, ["g1", "g2", "g3"]);
            assert_eq!(unmeasured, None);
        }
        Backend::Kafka => {
            assert_eq!(names, ["g1"]);
            assert_eq!(unmeasured, Some(serde_json::json!(2)));
        }
    }
    let (names, unmeasured) = status("?group=g3");
    assert_eq!(names, ["g3"]);
    assert_eq!(unmeasured, None);
}

/// An app's topics hold at most `store.max_partitions_per_app` partitions, so that one app
/// cannot take the gateway's whole partition budget from the others; the refusal names the
/// setting and leaves nothing behind.
fn one_app_cannot_take_every_partition(b: Backend) {
    let g = Gateway::on(b, &[("KATEWAY_STORE_MAX_PARTITIONS_PER_APP", "8")]);
    let (a1, a2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&a1, "t", 6);
    let r = g.req(
        "POST",
        &format!("/v1/topics/{a1}/u/v1?partitions=3"),
        &[],
        b"",
    );
    r.assert_error(400);
    assert!(
        r.text().contains("store.max_partitions_per_app"),
        "{}",
        r.text()
    );
    let r = g.req(
        "PUT",
        &format!("/v1/topics/{a1}/t/v1?partitions=9"),
        &[],
        b"",
    );
    r.assert_error(400);
    let r = g.req(
        "GET",
        &format!("/v1/partitions/{a1}/u/v1"),
        &[("Appid", a1.as_str())],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    g.create_topic(&a1, "u", 2);
    g.create_topic(&a2, "t", 8);
}
