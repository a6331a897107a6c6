//! Bad input gets a clear 4xx with a JSON error, and the process keeps serving. API errors are
//! checked on both backends; the HTTP/1.1 framing ones (which no backend sees) on the embedded
//! store.

mod support;
use support::{Backend, Gateway};

on_both_backends!(api_errors_have_statuses_and_json_bodies);

fn still_serving(g: &Gateway) {
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
}

#[test]
fn malformed_and_oversized_requests() {
    let g = Gateway::start_with(&[("KATEWAY_LIMITS_MAX_MESSAGE_BYTES", "1KiB")]);
    g.create_topic("app1", "t", 1);

    // A malformed HTTP/1.1 request gets its 400 and the connection closes...
    let mut c = g.connect();
    c.send_raw(b"GET /alive HTTP/1.1\r\nno colon here\r\n\r\n")
        .unwrap();
    let r = c.read_response().unwrap();
    r.assert_error(400);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
    // ...while bytes with no HTTP version at all (another protocol: an invalid HTTP/2
    // preface, say) get no HTTP/1.1 answer, only the close.
    let mut c = g.connect();
    c.send_raw(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    assert!(c.read_response().is_err());
    assert!(c.is_closed());

    let mut c = g.connect();
    let big = format!("GET /alive HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    c.send_raw(big.as_bytes()).unwrap();
    c.read_response().unwrap().assert_error(431);

    // A body over the message limit, announced by Content-Length.
    let r = g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", "app1")],
        &vec![b'x'; 2048],
    );
    r.assert_error(413);

    let mut c = g.connect();
    c.send_raw(b"POST /v1/msgs/t/v1 HTTP/1.1\r\nAppid: app1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").unwrap();
    c.read_response().unwrap().assert_error(400);

    // More header fields than the limit: 431 that says so, however small the head.
    let mut c = g.connect();
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    c.send_raw(format!("GET /alive HTTP/1.1\r\n{many}\r\n").as_bytes())
        .unwrap();
    let r = c.read_response().unwrap();
    r.assert_error(431);
    assert!(r.text().contains("too many header fields"), "{}", r.text());

    // Chunked applied twice, and bare LF line endings: refused (request smuggling).
    for raw in [
        &b"POST /v1/msgs/t/v1 HTTP/1.1\r\nAppid: app1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        &b"POST /v1/msgs/t/v1 HTTP/1.1\r\nAppid: app1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        &b"GET /alive HTTP/1.1\nHost: x\n\n"[..],
        &b"POST /v1/msgs/t/v1 HTTP/1.1\r\nAppid: app1\nContent-Length: 1\r\n\r\nx"[..],
    ] {
        let mut c = g.connect();
        c.send_raw(raw).unwrap();
        let r = c.read_response().unwrap();
        r.assert_error(400);
        assert!(c.is_closed());
    }

    // A valid chunked body is accepted.
    let mut c = g.connect();
    c.send_raw(b"POST /v1/msgs/t/v1 HTTP/1.1\r\nAppid: app1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 201);

    still_serving(&g);
}

fn api_errors_have_statuses_and_json_bodies(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    g.req(
        "POST",
        "/v1/msgs/nope/v1",
        &[("Appid", app1.as_str())],
        b"x",
    )
    .assert_error(404);
    g.req(
        "GET",
        &format!("/v1/msgs/{app1}/nope/v1?group=g"),
        &[("Appid", app2.as_str())],
        b"",
    )
    .assert_error(404);
    g.req(
        "GET",
        &format!("/v1/msgs/{app1}/t/v1"),
        &[("Appid", app2.as_str())],
        b"",
    )
    .assert_error(400);
    g.req(
        "GET",
        &format!("/v1/msgs/{app1}/t/v1?group=bad.name"),
        &[("Appid", app2.as_str())],
        b"",
    )
    .assert_error(400);
    g.req("POST", "/v1/msgs/t/v1", &[], b"x").assert_error(400);
    g.req("POST", "/v1/msgs/t/v1", &[("Appid", app1.as_str())], b"")
        .assert_error(400);
    g.req(
        "POST",
        "/v1/msgs/t/v1?ack=maybe",
        &[("Appid", app1.as_str())],
        b"x",
    )
    .assert_error(400);
    g.req("GET", "/v1/unknown", &[], b"").assert_error(404);
    // An error quoting what the client sent is cut short: a 1 MiB unknown key is not sent back;
    // a member's error names the member.
    let ack = format!("/v1/offsets/{app1}/t/v1/g");
    let huge = format!("[{{\"{}\":0}}]", "k".repeat(1 << 20));
    let r = g.req("PUT", &ack, &[("Appid", app1.as_str())], huge.as_bytes());
    r.assert_error(400);
    assert!(r.body.len() < 2048, "{} bytes", r.body.len());
    let r = g.req(
        "PUT",
        &ack,
        &[("Appid", app1.as_str())],
        br#"[{"partition":null,"offset":0}]"#,
    );
    r.assert_error(400);
    assert!(r.text().contains("`partition`"), "{}", r.text());
    let r = g.req("DELETE", "/v1/msgs/t/v1", &[], b"");
    r.assert_error(405);
    assert_eq!(r.header("allow"), Some("POST"));
    g.req("POST", &format!("/v1/topics/{app1}/t/v1"), &[], b"")
        .assert_error(409);
    // A bad batch line: a truncated binary record.
    g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[
            ("Appid", app1.as_str()),
            ("Content-Type", "application/vnd.kateway.batch"),
        ],
        &[0, 0, 0, 0, 0, 9, b'a'],
    )
    .assert_error(400);
    g.req(
        "GET",
        &format!("/v1/msgs/{app1}/t/v1?group=g&ack=1&wait=1s"),
        &[("Appid", app2.as_str()), ("X-Partition", "0")],
        b"",
    )
    .assert_error(400);
    g.req(
        "GET",
        &format!("/v1/msgs/{app1}/t/v1?group=g&batch=0"),
        &[("Appid", app2.as_str())],
        b"",
    )
    .assert_error(400);
    // Two Appid headers name two callers: refused rather than picking one.
    let r = g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", app1.as_str()), ("Appid", "app9")],
        b"x",
    );
    r.assert_error(400);
    assert!(r.text().contains("more than once"), "{}", r.text());
    // The largest offset cannot be acknowledged (its successor does not exist).
    g.publish(&app1, "t", "", b"m");
    let r = g.req(
        "PUT",
        &format!("/v1/offsets/{app1}/t/v1/g"),
        &[("Appid", app2.as_str())],
        br#"[{"partition":0,"offset":18446744073709551615}]"#,
    );
    r.assert_error(400);
    let st = g
        .req(
            "GET",
            &format!("/v1/status/{app1}/t/v1?group=g"),
            &[("Appid", app2.as_str())],
            b"",
        )
        .json();
    assert_eq!(
        st["groups"][0]["partitions"][0]["committed"],
        serde_json::Value::Null,
        "{st}"
    );
    // A seek beyond the end names the offset it was given.
    let r = g.req(
        "PUT",
        &format!("/v1/offset/{app1}/t/v1/g/0?offset=5"),
        &[("Appid", app2.as_str())],
        b"",
    );
    r.assert_error(400);
    assert!(
        r.text()
            .contains("offset 5 is beyond the end of partition 0 (1)"),
        "{}",
        r.text()
    );
    still_serving(&g);
}

#[test]
fn silent_client_gets_408_and_is_disconnected() {
    let g = Gateway::start_with(&[("KATEWAY_SERVER_REQUEST_TIMEOUT", "1s")]);
    let mut c = g.connect();
    c.send_raw(b"POST /v1/msgs/t/v1 HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    c.read_response().unwrap().assert_error(408);
    assert!(c.is_closed());
    still_serving(&g);
}

/// The idle timeout counts from a connection's last answer, not from when it opened: one that
/// keeps asking stays open past it, and one that stops asking is closed after it.
#[test]
fn the_idle_timeout_counts_from_the_last_answer() {
    let g = Gateway::start_with(&[("KATEWAY_SERVER_IDLE_TIMEOUT", "1s")]);
    let mut c = g.connect();
    // Three idle timeouts' worth of requests on one connection, 300 ms apart.
    for i in 0..10 {
        assert_eq!(c.req("GET", "/alive", &[], b"").status, 200, "request {i}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(c.is_closed(), "closed once it stopped asking");
    still_serving(&g);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let g = Gateway::start();
    g.create_topic("app1", "t", 1);
    let mut c = g.connect();
    let one = "POST /v1/msgs/t/v1?ack=local HTTP/1.1\r\nAppid: app1\r\nContent-Length: 1\r\n\r\nx";
    c.send_raw(format!("{one}{one}{one}").as_bytes()).unwrap();
    for want in 0..3 {
        let r = c.read_response().unwrap();
        assert_eq!(r.header("x-offset"), Some(want.to_string().as_str()));
    }
    // Expect: 100-continue gets an interim response before the body is sent.
    c.send_raw(b"POST /v1/msgs/t/v1 HTTP/1.1\r\nAppid: app1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 100);
    c.send_raw(b"ok").unwrap();
    assert_eq!(c.read_response().unwrap().status, 201);
}

#[test]
fn trickling_client_cannot_hold_a_connection_past_the_request_timeout() {
    let g = Gateway::start_with(&[("KATEWAY_SERVER_REQUEST_TIMEOUT", "1s")]);
    let mut c = g.connect();
    let head = b"POST /v1/msgs/t/v1 HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
    c.send_raw(head).unwrap();
    // One byte every 200 ms: each read is quick, but the request as a whole is too slow.
    let writer = c.s.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let mut w = writer;
        for sent in 0..99 {
            if std::io::Write::write_all(&mut w, b"x").is_err() {
                return sent;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        99
    });
    c.read_response().unwrap().assert_error(408);
    let sent = t.join().unwrap();
    assert!(
        sent < 99,
        "the server closed the connection while the client was still trickling"
    );
}

#[test]
fn head_gets_headers_without_a_body() {
    let g = Gateway::start();
    let mut c = g.connect();
    c.send_raw(b"HEAD /alive HTTP/1.1\r\n\r\nGET /alive HTTP/1.1\r\n\r\n")
        .unwrap();
    // The HEAD response carries GET's Content-Length but no body, so the next response follows
    // immediately.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while raw.windows(8).filter(|w| w == b"HTTP/1.1").count() < 2 || !raw.ends_with(b"{\"ok\":1}") {
        let n = std::io::Read::read(&mut c.s, &mut buf).unwrap();
        assert!(n > 0);
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, get) = text.split_at(text.rfind("HTTP/1.1 200").unwrap());
    assert!(head.ends_with("content-length: 8\r\n\r\n"), "{head}");
    assert!(get.ends_with("{\"ok\":1}"));
}

#[test]
fn connections_beyond_the_core_limit_get_503_with_retry_after() {
    let g = Gateway::start_with(&[("KATEWAY_SERVER_MAX_CONNECTIONS_PER_CORE", "2")]);
    // Hold connections on both cores (2 each), then one more must be refused.
    // (The kernel spreads connections over the cores at random: after 30, both are full.)
    let mut held: Vec<_> = Vec::new();
    let mut refused = None;
    for _ in 0..30 {
        let mut c = g.connect();
        c.send_raw(b"GET /v1/status HTTP/1.1\r\n\r\n").unwrap();
        let r = c.read_response().unwrap();
        if r.status == 503 {
            refused = Some(r);
            continue;
        }
        assert_eq!(r.status, 200);
        held.push(c);
    }
    let r = refused.expect("a connection beyond the limit was refused");
    r.assert_error(503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(held.len() <= 4);
    // Health checks, however written, are still answered beyond the limit, on connections that
    // then close.
    for (method, path) in [
        ("GET", "/alive"),
        ("GET", "/ready"),
        ("HEAD", "/alive"),
        ("HEAD", "/ready"),
        ("GET", "/alive?probe=1"),
        ("GET", "/ready?probe=1"),
    ] {
        for _ in 0..3 {
            let mut c = g.connect();
            c.send_raw(format!("{method} {path} HTTP/1.1\r\n\r\n").as_bytes())
                .unwrap();
            let r = c.read_reply(method == "HEAD").unwrap();
            assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
            assert!(c.is_closed());
        }
    }
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(200));
    still_serving(&g);
}
