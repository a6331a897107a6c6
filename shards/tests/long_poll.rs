//! Long polling: 204 after `wait` with nothing to read; a publish wakes a parked poll, also when
//! the message lands on a partition another core owns.

mod support;
use std::time::Duration;
use support::Gateway;

#[test]
fn empty_topic_parks_the_poll_then_answers_204() {
    let g = std::sync::Arc::new(Gateway::start());
    g.create_topic("app1", "t", 2);
    let g2 = g.clone();
    let poll = std::thread::spawn(move || g2.sub("app2", "app1", "t", "group=g&wait=2s", &[]));
    // While the poll waits, the gateway reports it as parked.
    let parked = g.metric_until("kateway_sub_parked_polls", 50, |v| v >= 1.0);
    assert_eq!(parked, 1.0, "the poll is parked, not answered at once");
    let s = poll.join().unwrap();
    assert_eq!(s.status, 204);
    assert!(s.body.is_empty());
    assert_eq!(g.metric("kateway_sub_parked_polls"), 0.0);
}

#[test]
fn publish_wakes_a_parked_poll_on_every_partition() {
    let g = std::sync::Arc::new(Gateway::start());
    g.create_topic("app1", "t", 4);
    // Keys chosen so the messages land on each of the 4 partitions (owned by both cores).
    for p in 0..4u32 {
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| kateway_core::partitioner::partition_for_key(k.as_bytes(), 4) == p)
            .unwrap();
        let g2 = g.clone();
        let poll = std::thread::spawn(move || {
            g2.sub(
                "app2",
                "app1",
                "t",
                &format!("group=g{p}&wait=30s&reset=newest"),
                &[],
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        g.publish(
            "app1",
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

#[test]
fn a_subscriber_that_disconnects_releases_its_long_poll() {
    let g = Gateway::start();
    g.create_topic("app1", "t", 2);
    let mut c = g.connect();
    c.send_raw(b"GET /v1/msgs/app1/t/v1?group=g&wait=60s HTTP/1.1\r\nAppid: app2\r\n\r\n")
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
    c.send_raw(b"GET /v1/msgs/app1/t/v1?group=p&wait=1s HTTP/1.1\r\nAppid: app2\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.send_raw(b"GET /alive HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 204);
    assert_eq!(c.read_response().unwrap().status, 200);
}
