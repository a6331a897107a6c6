//! Crash safety: everything acknowledged with `ack=all` survives `kill -9`, committed offsets
//! are intact, and a torn log tail is truncated on recovery.

mod support;
use support::{records, Gateway};

#[test]
fn acked_messages_and_offsets_survive_kill_9() {
    let mut g = Gateway::start();
    g.create_topic("app1", "t", 3);
    let n = 300;
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let addr = g.addr.clone();
            std::thread::spawn(move || {
                let mut c = support::Gateway::connect_to(&addr);
                for i in 0..n / 3 {
                    let r = c.req(
                        "POST",
                        "/v1/msgs/t/v1?ack=all",
                        &[("Appid", "app1")],
                        format!("{t}-{i}").as_bytes(),
                    );
                    assert_eq!(r.status, 201);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Consume and commit 100 of them.
    let mut consumed = 0;
    while consumed < 100 {
        let s = g.sub(
            "app2",
            "app1",
            "t",
            &format!("group=g&ack=1&batch={}&wait=2s", 100 - consumed),
            &[],
        );
        let recs = records(&s.body);
        for (p, o, _) in &recs {
            let r = g.req(
                "PUT",
                "/v1/offsets/app1/t/v1/g",
                &[("Appid", "app2")],
                format!("[{{\"partition\":{p},\"offset\":{o}}}]").as_bytes(),
            );
            assert_eq!(r.status, 200);
        }
        consumed += recs.len();
    }
    let before = g
        .req(
            "GET",
            "/v1/status/app1/t/v1?group=g",
            &[("Appid", "app2")],
            b"",
        )
        .json();
    g.kill9();
    g.spawn();
    let after = g
        .req(
            "GET",
            "/v1/status/app1/t/v1?group=g",
            &[("Appid", "app2")],
            b"",
        )
        .json();
    assert_eq!(before, after, "offsets and log ends are intact");
    let total: u64 = after["groups"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["newest"].as_u64().unwrap())
        .sum();
    assert_eq!(total, n as u64);
    assert_eq!(after["groups"][0]["lag"], 200);
    // Every acknowledged message is readable by a new group.
    let seen: std::collections::HashSet<Vec<u8>> = g
        .drain("app2", "app1", "t", "group=fresh&batch=500&wait=1s")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(seen.len(), n);
}

#[test]
fn torn_tail_is_truncated_and_the_partition_keeps_working() {
    let mut g = Gateway::start();
    g.create_topic("app1", "t", 1);
    for i in 0..10 {
        g.publish("app1", "t", "", format!("m{i}").as_bytes());
    }
    g.kill9();
    let seg = g
        .data_dir()
        .join("topics/app1.t.v1/0/00000000000000000000.log");
    // Where the records end: zeros written ahead of the appends follow them.
    let data = std::fs::read(&seg).unwrap();
    let good = data.iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
    // A half-written record after them, as a crash in the middle of a write leaves it.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let torn = [0, 0, 0, 200, 0xde, 0xad, 0xbe, 0xef, 1, 0, 0, 0];
    std::os::unix::fs::FileExt::write_all_at(&f, &torn, good).unwrap();
    drop(f);
    g.spawn();
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        good,
        "torn tail truncated"
    );
    let r = g.publish("app1", "t", "", b"after");
    assert_eq!(r.header("x-offset"), Some("10"));
    let s = g.sub("app2", "app1", "t", "group=g&batch=20&wait=2s", &[]);
    let recs = records(&s.body);
    assert_eq!(recs.len(), 11);
    assert_eq!(recs[10].2, b"after");
}
