//! Long polling: 204 after `wait` with nothing to read; a publish wakes a parked poll, also when
//! the message lands on a partition another core owns.

mod support;
use std::time::{Duration, Instant};
use support::Gateway;

#[test]
fn empty_topic_answers_204_after_wait() {
    let g = Gateway::start();
    g.create_topic("app1", "t", 2);
    let t0 = Instant::now();
    let s = g.sub("app2", "app1", "t", "group=g&wait=1s", &[]);
    assert_eq!(s.status, 204);
    assert!(s.body.is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "it waited before answering"
    );
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
