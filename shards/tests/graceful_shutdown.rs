//! Graceful shutdown, on both backends: SIGTERM first turns `/ready` to 503 for
//! `server.drain_grace` while everything else is still served (so load balancers stop sending
//! traffic before the listeners close; a reload is refused, a second SIGTERM ends the grace),
//! then answers a parked long poll with 204 + `Connection: close`, lets an in-flight publish
//! finish, answers a connection accepted before the drain whose request comes after it, and
//! exits 0 with everything durable.

mod support;
use std::time::Duration;
use support::{Backend, Gateway};

on_both_backends!(
    sigterm_ends_long_polls_and_finishes_publishes,
    sigterm_turns_ready_off_while_still_serving,
);

fn sigterm_ends_long_polls_and_finishes_publishes(b: Backend) {
    let mut g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 2);
    g.publish(&app1, "t", "ack=local", b"before");
    let addr = g.addr.clone();
    let (a1, a2) = (app1.clone(), app2.clone());
    let poll = std::thread::spawn(move || {
        let mut c = Gateway::connect_to(&addr);
        c.req(
            "GET",
            &format!("/v1/msgs/{a1}/t/v1?group=parked&wait=60s&reset=newest"),
            &[("Appid", a2.as_str())],
            b"",
        )
    });
    // An in-flight publish: the head is sent, the body arrives after SIGTERM.
    let mut pubc = g.connect();
    pubc.send_raw(
        format!(
            "POST /v1/msgs/t/v1?ack=all HTTP/1.1\r\nAppid: {app1}\r\nContent-Length: 8\r\n\r\nin"
        )
        .as_bytes(),
    )
    .unwrap();
    // A connection accepted before the signal whose request comes after it: answered, not
    // dropped (its client had no way to know the server was about to close it).
    let mut fresh = g.connect();
    g.metric_until("kateway_sub_parked_polls", 100, |v| v >= 1.0);
    std::thread::sleep(Duration::from_millis(200));
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
    let r = fresh.req(
        "POST",
        "/v1/msgs/t/v1?ack=local",
        &[("Appid", app1.as_str())],
        b"fresh",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    let s = poll.join().unwrap();
    assert_eq!(s.status, 204);
    assert_eq!(s.header("connection"), Some("close"));
    let code = g.terminate();
    assert_eq!(code, Some(0));
    g.spawn();
    // Drained: one answer may hold one partition's records only (Kafka fetches per partition).
    let values: std::collections::HashSet<Vec<u8>> = g
        .drain(&app2, &app1, "t", "group=after&batch=10&wait=3s")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert!(values.contains(&b"before"[..]), "{values:?}");
    assert!(values.contains(&b"inflight"[..]), "{values:?}");
    assert!(values.contains(&b"fresh"[..]), "{values:?}");
}

fn sigterm_turns_ready_off_while_still_serving(b: Backend) {
    // Longer than `terminate` waits: the second SIGTERM must cut it short.
    let mut g = Gateway::on(b, &[("KATEWAY_SERVER_DRAIN_GRACE", "120s")]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    let mut ready = 0;
    for _ in 0..500 {
        ready = g.req("GET", "/ready", &[], b"").status;
        if ready == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ready, 200, "ready before SIGTERM");
    // A keep-alive connection opened before the signal keeps being served during the grace.
    let mut kept = g.connect();
    assert_eq!(
        kept.req("GET", "/alive", &[], b"").status,
        200,
        "served before SIGTERM"
    );
    let pid = g.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut unready = None;
    for _ in 0..200 {
        let r = g.req("GET", "/ready", &[], b"");
        if r.status == 503 {
            unready = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let unready = unready.expect("/ready answers 503 after SIGTERM");
    assert!(
        unready.text().contains("shutting down"),
        "{}",
        unready.text()
    );
    // Still serving: liveness, a publish on a new connection and one on the kept connection.
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
    let r = g.publish(&app1, "t", "ack=local", b"during the grace");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = kept.req(
        "POST",
        "/v1/msgs/t/v1?ack=local",
        &[("Appid", app1.as_str())],
        b"kept",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        g.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "still running during the grace"
    );
    // A reload is refused while shutting down, and answered at once.
    let r = g.req("POST", "/v1/config/reload", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("shutting down"), "{}", r.text());
    // A second SIGTERM ends the grace: the drain starts at once.
    assert_eq!(g.terminate(), Some(0));
    g.spawn();
    let app2 = g.app("app2");
    let values: std::collections::HashSet<Vec<u8>> = g
        .drain(&app2, &app1, "t", "group=after&batch=10&wait=3s")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert!(values.contains(&b"during the grace"[..]), "{values:?}");
    assert!(values.contains(&b"kept"[..]), "{values:?}");
}
