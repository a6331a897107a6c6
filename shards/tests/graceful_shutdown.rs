//! Graceful shutdown: SIGTERM answers a parked long poll with 204 + `Connection: close`, lets an
//! in-flight publish finish, and exits 0 with everything durable.

mod support;
use std::time::Duration;
use support::Gateway;

#[test]
fn sigterm_ends_long_polls_and_finishes_publishes() {
    let mut g = Gateway::start();
    g.create_topic("app1", "t", 2);
    g.publish("app1", "t", "ack=local", b"before");
    let addr = g.addr.clone();
    let poll = std::thread::spawn(move || {
        let mut c = Gateway::connect_to(&addr);
        c.req(
            "GET",
            "/v1/msgs/app1/t/v1?group=parked&wait=60s&reset=newest",
            &[("Appid", "app2")],
            b"",
        )
    });
    // An in-flight publish: the head is sent, the body arrives after SIGTERM.
    let mut pubc = g.connect();
    pubc.send_raw(
        b"POST /v1/msgs/t/v1?ack=all HTTP/1.1\r\nAppid: app1\r\nContent-Length: 8\r\n\r\nin",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = g.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    pubc.send_raw(b"flight").unwrap();
    let r = pubc.read_response().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    let s = poll.join().unwrap();
    assert_eq!(s.status, 204);
    assert_eq!(s.header("connection"), Some("close"));
    let code = g.terminate();
    assert_eq!(code, Some(0));
    g.spawn();
    let s = g.sub("app2", "app1", "t", "group=after&batch=10&wait=2s", &[]);
    let values: std::collections::HashSet<Vec<u8>> =
        support::records(&s.body).into_iter().map(|r| r.2).collect();
    assert!(values.contains(&b"before"[..]));
    assert!(values.contains(&b"inflight"[..]), "{values:?}");
}
