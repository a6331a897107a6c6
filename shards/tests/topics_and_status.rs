//! Topic administration, partition offsets, group status and metrics, on both backends.

mod support;
use support::{Backend, Gateway};

on_both_backends!(
    create_alter_delete_topic,
    created_and_grown_partitions_are_readable_once_answered,
    metrics_and_process_status
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
    assert!(value("kateway_http_request_duration_seconds_count") >= 7.0);
    if b == Backend::Embedded {
        // The embedded store's own figures.
        assert!(value("kateway_log_fsyncs_total") >= 1.0);
        assert!(value("kateway_log_size_bytes") > 25.0);
        assert_eq!(value("kateway_log_partitions"), 2.0);
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
