//! Long polling, on both backends: 204 after `wait` with nothing to read; a publish wakes a
//! parked poll, also when the message lands on a partition another core owns; a subscriber that
//! disconnects releases its poll.

mod support;
use std::time::Duration;
use support::{Backend, Gateway};

on_both_backends!(
    empty_topic_parks_the_poll_then_answers_204,
    publish_wakes_a_parked_poll_on_every_partition,
    a_subscriber_that_disconnects_releases_its_long_poll,
);

fn empty_topic_parks_the_poll_then_answers_204(b: Backend) {
    let g = std::sync::Arc::new(Gateway::on(b, &[]));
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 2);
    let g2 = g.clone();
    let poll = std::thread::spawn(move || g2.sub(&app2, &app1, "t", "group=g&wait=2s", &[]));
    // While the poll waits, the gateway reports it as parked.
    let parked = g.metric_until("kateway_sub_parked_polls", 50, |v| v >= 1.0);
    assert_eq!(parked, 1.0, "the poll is parked, not answered at once");
    let s = poll.join().unwrap();
    assert_eq!(s.status, 204);
    assert!(s.body.is_empty());
    assert_eq!(g.metric("kateway_sub_parked_polls"), 0.0);
}

fn publish_wakes_a_parked_poll_on_every_partition(b: Backend) {
    let g = std::sync::Arc::new(Gateway::on(b, &[]));
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 4);
    // Keys chosen so the messages land on each of the 4 partitions (owned by both cores).
    for p in 0..4u32 {
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| kateway_core::partitioner::partition_for_key(k.as_bytes(), 4) == p)
            .unwrap();
        // A first poll puts the group at the end of the topic (Kafka's consumer groups take
        // their position when they join).
        let group = format!("group=g{p}&reset=newest");
        let s = g.sub(&app2, &app1, "t", &format!("{group}&wait=1s"), &[]);
        assert_eq!(s.status, 204);
        let (g2, a1, a2, q) = (g.clone(), app1.clone(), app2.clone(), group.clone());
        let poll = std::thread::spawn(move || g2.sub(&a2, &a1, "t", &format!("{q}&wait=30s"), &[]));
        g.metric_until("kateway_sub_parked_polls", 100, |v| v >= 1.0);
        g.publish(
            &app1,
            "t",
            &format!("key={key}"),
            format!("to-{p}").as_bytes(),
        );
        let s = poll.join().unwrap();
        assert_eq!(s.status, 200, "woken on partition {p}");
        assert_eq!(s.body, format!("to-{p}").as_bytes());
        assert_eq!(s.header("x-partition"), Some(p.to_string().as_str()));
    }
}

fn a_subscriber_that_disconnects_releases_its_long_poll(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 2);
    let mut c = g.connect();
    c.send_raw(
        format!("GET /v1/msgs/{app1}/t/v1?group=g&wait=60s HTTP/1.1\r\nAppid: {app2}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        g.metric_until("kateway_sub_parked_polls", 50, |v| v >= 1.0),
        1.0
    );
    drop(c);
    // Well before the 60 s deadline, the gateway notices and drops the poll.
    let parked = g.metric_until("kateway_sub_parked_polls", 100, |v| v == 0.0);
    assert_eq!(parked, 0.0, "the vanished subscriber's poll was released");
    // A subscriber that pipelines a second request behind a parked poll is served in order.
    let mut c = g.connect();
    c.send_raw(
        format!("GET /v1/msgs/{app1}/t/v1?group=p&wait=1s HTTP/1.1\r\nAppid: {app2}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.send_raw(b"GET /alive HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 204);
    assert_eq!(c.read_response().unwrap().status, 200);
}
