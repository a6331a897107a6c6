//! Server-sent events, on both backends: curl streams a subscribe as events over HTTP/1.1 and
//! over h2c, with the retry preamble, `id: partition:offset` ids and heartbeats; a reconnect
//! with `Last-Event-ID` resumes right after that event (even one the group has passed); a bad
//! id is a 400; an `EventSource` in headless Chromium receives events and resumes after a
//! disconnect, beside a browser WebSocket that publishes.

mod support;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::clients::{python, run};
use support::{Backend, Gateway};

on_both_backends!(
    curl_streams_events_over_http1_and_h2c,
    last_event_id_resumes_right_after_that_event,
    a_leased_stream_carries_receipts_settled_over_http,
    eventsource_and_websocket_in_chromium,
);

/// The events of a stream `curl` read for `secs` seconds: (id, data) pairs, and heartbeats.
fn curl_events(args: &[&str], secs: &str) -> (Vec<(String, serde_json::Value)>, usize, String) {
    let mut all = vec!["-sN", "--max-time", secs, "-H", "Accept: text/event-stream"];
    all.extend_from_slice(args);
    let (_, out) = run("curl", &all);
    let mut events = Vec::new();
    for block in out.split("\n\n") {
        let id = block.lines().find_map(|l| l.strip_prefix("id: "));
        let data = block.lines().find_map(|l| l.strip_prefix("data: "));
        if let (Some(id), Some(data)) = (id, data) {
            events.push((id.to_string(), serde_json::from_str(data).unwrap()));
        }
    }
    let heartbeats = out.matches(": hb\n").count();
    (events, heartbeats, out)
}

fn curl_streams_events_over_http1_and_h2c(b: Backend) {
    let g = Gateway::on(b, &[("KATEWAY_SSE_HEARTBEAT", "200ms")]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 2);
    for i in 0..6 {
        g.publish(&app1, "t", &format!("key=k{i}"), format!("m{i}").as_bytes());
    }
    let appid = format!("Appid: {app2}");
    for (proto, group) in [("--http1.1", "g1"), ("--http2-prior-knowledge", "g2")] {
        let url = format!("http://{}/v1/msgs/{app1}/t/v1?group={group}", g.addr);
        let (events, heartbeats, out) = curl_events(&[proto, "-H", &appid, &url], "3");
        assert!(out.starts_with("retry: 1000\n\n"), "{proto}: {out}");
        assert_eq!(events.len(), 6, "{proto}: {out}");
        for (id, data) in &events {
            assert_eq!(*id, format!("{}:{}", data["partition"], data["offset"]));
        }
        let mut values: Vec<String> = events
            .iter()
            .map(|(_, d)| {
                use base64::Engine;
                let v = base64::engine::general_purpose::STANDARD
                    .decode(d["value"].as_str().unwrap())
                    .unwrap();
                String::from_utf8(v).unwrap()
            })
            .collect();
        values.sort();
        assert_eq!(values, ["m0", "m1", "m2", "m3", "m4", "m5"], "{proto}");
        assert!(heartbeats >= 3, "{proto}: heartbeats while idle: {out}");
    }
}

/// Opens an event stream over a raw HTTP/1.1 connection; returns a line reader past the head.
fn stream(g: &Gateway, path: &str, app: &str, last: Option<&str>) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(&g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let last = last.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAppid: {app}\r\nAccept: text/event-stream\r\n{last}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    while line != "\r\n" {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    r
}

/// The id of the next event on a stream (chunk framing lines skipped).
fn next_id(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(id) = line.strip_prefix("id: ") {
            return id.trim().to_string();
        }
    }
}

/// The data of the next event on a stream.
fn next_data(r: &mut BufReader<TcpStream>) -> serde_json::Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(d) = line.strip_prefix("data: ") {
            return serde_json::from_str(d.trim()).unwrap();
        }
    }
}

/// `ack=lease` on an event stream: each event carries a receipt and its attempt; receipts are
/// settled over plain HTTP (any connection); an unsettled message comes back when its lease ends.
fn a_leased_stream_carries_receipts_settled_over_http(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    for i in 0..3 {
        g.publish(&app1, "t", "", format!("m{i}").as_bytes());
    }
    let path = format!("/v1/msgs/{app1}/t/v1?group=g&ack=lease&visibility=2s");
    let mut r = stream(&g, &path, &app2, None);
    let events: Vec<serde_json::Value> = (0..3).map(|_| next_data(&mut r)).collect();
    drop(r);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["offset"], i as u64, "{e}");
        assert_eq!(e["attempt"], 1, "{e}");
    }
    let receipts: Vec<&str> = events[..2]
        .iter()
        .map(|e| e["receipt"].as_str().unwrap())
        .collect();
    let ack = g.req(
        "POST",
        &format!("/v1/queue/{app1}/t/v1/g/ack"),
        &[("Appid", app2.as_str())],
        serde_json::json!({ "receipts": receipts })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(ack.status, 200, "{}", ack.text());
    assert_eq!(ack.json()["results"][1]["status"], "acked");
    // The third was never settled: it comes back.
    let mut r = stream(&g, &path, &app2, None);
    let again = next_data(&mut r);
    assert_eq!(again["offset"], 2, "{again}");
    // At least its second delivery (the closed stream may have taken it once more before it
    // noticed the client was gone).
    assert!(again["attempt"].as_u64().unwrap() >= 2, "{again}");
}

fn last_event_id_resumes_right_after_that_event(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    for i in 0..5 {
        g.publish(&app1, "t", "", format!("m{i}").as_bytes());
    }
    let path = format!("/v1/msgs/{app1}/t/v1?group=g");
    let mut r = stream(&g, &path, &app2, None);
    let seen: Vec<String> = (0..5).map(|_| next_id(&mut r)).collect();
    assert_eq!(seen, ["0:0", "0:1", "0:2", "0:3", "0:4"]);
    drop(r);
    // The client only processed up to 0:1 before it lost the connection (the rest was read
    // from the log, and auto-acked, while in flight): it resumes after 0:1.
    g.publish(&app1, "t", "", b"m5");
    let mut r = stream(&g, &path, &app2, Some("0:1"));
    let resumed: Vec<String> = (0..4).map(|_| next_id(&mut r)).collect();
    assert_eq!(resumed, ["0:2", "0:3", "0:4", "0:5"]);
    drop(r);
    // An id that is no partition:offset is refused.
    let bad = g.sub(
        &app2,
        &app1,
        "t",
        "group=g",
        &[("Accept", "text/event-stream"), ("Last-Event-ID", "x")],
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let beyond = g.sub(
        &app2,
        &app1,
        "t",
        "group=g",
        &[("Accept", "text/event-stream"), ("Last-Event-ID", "7:0")],
    );
    assert_eq!(
        beyond.status,
        400,
        "partition 7 does not exist: {}",
        beyond.text()
    );
}

fn eventsource_and_websocket_in_chromium(b: Backend) {
    let g = Gateway::on(b, &[("KATEWAY_SSE_HEARTBEAT", "1s")]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    let shot = std::env::temp_dir().join(format!("kateway-browser-{b:?}.png"));
    let (ok, out) = python(
        "browser.py",
        &[
            "--http",
            &format!("http://{}", g.addr),
            "--app",
            &app1,
            "--sub-app",
            &app2,
            "--topic",
            "t",
            "--screenshot",
            shot.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    eprintln!("browser screenshot: {}", shot.display());
}
