//! HTTP/2 on the API port, on both backends, with clients no one here wrote: curl with prior
//! knowledge publishes and subscribes; h2load publishes over multiplexed streams and every
//! message is stored; hyper-h2 shows a parked long poll leaving the connection's other streams
//! free, and a drain answering a parked stream 204 before GOAWAY; h2spec passes every case;
//! frame floods and HPACK bombs end with GOAWAY ENHANCE_YOUR_CALM while the core serves on.
//! Two connection-level checks that no backend sees (the request budget against bodies that
//! never end, the first-bytes sniffer) run on the embedded store.

mod support;
use std::io::{Read, Write};
use support::clients::{curl, python, root, run};
use support::{Backend, Gateway};

on_both_backends!(
    curl_publishes_and_subscribes_over_h2c,
    h2load_publishes_over_multiplexed_streams,
    a_parked_poll_leaves_the_other_streams_free,
    draining_answers_a_parked_stream_then_sends_goaway,
    h2spec_passes_every_case_over_h2c,
    floods_and_hpack_bombs_get_enhance_your_calm,
);

#[test]
fn bodies_that_never_end_count_against_the_request_budget() {
    // 30 streams of one connection, each with 60 KiB of a body that never ends: 1.8 MB against
    // a budget of 1 MiB; the streams beyond it are refused with 503, the core serves on.
    let mut g = Gateway::new_with(&[("KATEWAY_LIMITS_MAX_REQUEST_BYTES_PER_CORE", "1MiB")]);
    g.cores = 1;
    g.spawn();
    g.create_topic("app1", "t", 1);
    let (ok, out) = python(
        "h2_client.py",
        &[
            &g.addr,
            "partial-bodies",
            "--app",
            "app1",
            "--topic",
            "t",
            "--expect-status",
            "503",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
}

#[test]
fn a_lone_first_byte_is_served_as_http1_and_its_connection_released() {
    // `P` could start the HTTP/2 preface or a PUT: the sniffer waits a moment for the second
    // byte, then lets HTTP/1.1 read it. Closed connections must not stay counted (or spin).
    let g = Gateway::start();
    let conns: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&g.addr).unwrap();
            s.write_all(b"P").unwrap();
            s
        })
        .collect();
    drop(conns);
    let active = g.metric_until("kateway_http_connections_active", 200, |v| v <= 1.0);
    assert_eq!(active, 1.0, "only the metrics request itself");
    // A PUT sent a byte at a time still works.
    let mut s = std::net::TcpStream::connect(&g.addr).unwrap();
    for b in b"PUT /alive HTTP/1.1\r\nHost: x\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 405");
}

fn curl_publishes_and_subscribes_over_h2c(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 2);
    let url = format!("http://{}/v1/msgs/t/v1?key=k", g.addr);
    let appid = format!("Appid: {app1}");
    let (body, version, status) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &appid,
        "--data-binary",
        "over h2",
        &url,
    ]);
    assert_eq!((version.as_str(), status), ("2", 201), "{body}");
    assert!(body.contains("\"offset\":0"), "{body}");
    let url = format!("http://{}/v1/msgs/{app1}/t/v1?group=g&wait=5s", g.addr);
    let appid = format!("Appid: {app2}");
    let (body, version, status) = curl(&["--http2-prior-knowledge", "-H", &appid, &url]);
    assert_eq!((version.as_str(), status), ("2", 200));
    assert_eq!(body, "over h2");
    // HEAD gets no body, also for an error.
    for path in ["/nope", "/alive"] {
        let url = format!("http://{}{path}", g.addr);
        let (ok, out) = run(
            "curl",
            &[
                "-sS",
                "-I",
                "--http2-prior-knowledge",
                "--max-time",
                "5",
                &url,
            ],
        );
        assert!(ok, "HEAD {path}: {out}");
    }
    // A bad request gets the same JSON error over h2 as over HTTP/1.1.
    let url = format!("http://{}/v1/msgs/t/v1?ack=never", g.addr);
    let (body, _, status) = curl(&["--http2-prior-knowledge", "-H", "Appid: x", "-d", "m", &url]);
    assert_eq!(status, 400);
    assert!(body.contains("\"code\":40002"), "{body}");
}

fn h2load_publishes_over_multiplexed_streams(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 4);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, b"h2load message").unwrap();
    let url = format!("http://{}/v1/msgs/t/v1", g.addr);
    let appid = format!("Appid: {app1}");
    let (ok, out) = run(
        "h2load",
        &[
            "-n",
            "400",
            "-c",
            "2",
            "-m",
            "20",
            "-d",
            body.to_str().unwrap(),
            "-H",
            &appid,
            &url,
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("400 succeeded"), "{out}");
    assert!(
        out.contains("status codes: 400 2xx"),
        "every publish answered 2xx: {out}"
    );
    let got = g.drain(&app2, &app1, "t", "group=g&batch=500&wait=2s");
    assert_eq!(got.len(), 400, "every acknowledged message is stored");
    assert!(got.iter().all(|(_, _, v)| v == b"h2load message"));
    // And h2load subscribes: 20 polls of up to 10 messages each, all answered 2xx; what they
    // took is no longer there for the group.
    let url = format!(
        "http://{}/v1/msgs/{app1}/t/v1?group=h2&batch=10&wait=1s",
        g.addr
    );
    let appid = format!("Appid: {app2}");
    let (ok, out) = run(
        "h2load",
        &["-n", "20", "-c", "1", "-m", "1", "-H", &appid, &url],
    );
    assert!(ok, "{out}");
    assert!(out.contains("status codes: 20 2xx"), "{out}");
    let left = g.drain(&app2, &app1, "t", "group=h2&batch=500&wait=2s");
    assert!(left.len() < 400, "h2load's polls consumed messages");
}

fn a_parked_poll_leaves_the_other_streams_free(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    let (ok, out) = python(
        "h2_client.py",
        &[
            &g.addr,
            "multiplex",
            "--app",
            &app1,
            "--sub",
            &app2,
            "--topic",
            "t",
        ],
    );
    assert!(ok, "{out}");
}

fn draining_answers_a_parked_stream_then_sends_goaway(b: Backend) {
    let mut g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    let py = root().join(".venv-test/bin/python");
    let client = std::process::Command::new(py)
        .arg(root().join("tests/clients/h2_client.py"))
        .args([
            &g.addr, "parked", "--app", &app1, "--sub", &app2, "--topic", "t",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the poll is parked, then drain.
    g.metric_until("kateway_sub_parked_polls", 500, |v| v >= 1.0);
    assert_eq!(g.terminate(), Some(0));
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok: 204"), "{text}");
}

fn h2spec_passes_every_case_over_h2c(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (host, port) = g.addr.rsplit_once(':').unwrap();
    let script = root().join("scripts/h2spec");
    let (ok, out) = run(script.to_str().unwrap(), &[host, port]);
    assert!(ok, "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
}

fn floods_and_hpack_bombs_get_enhance_your_calm(b: Backend) {
    // One core: the attacks and the requests served meanwhile share it.
    let mut g = Gateway::new_on(b, &[]);
    g.cores = 1;
    g.spawn();
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    for attack in [
        "rapid-reset",
        "continuation",
        "hpack-bomb",
        "settings-flood",
        "ping-flood",
    ] {
        let (ok, out) = python("h2_client.py", &[&g.addr, attack, "--expect-goaway", "11"]);
        assert!(ok, "{attack}: {out}");
        // The cores serve on.
        assert_eq!(g.req("GET", "/alive", &[], b"").status, 200, "{attack}");
        g.publish(&app1, "t", "", attack.as_bytes());
    }
    assert!(g.metric("kateway_http2_floods_total") >= 2.0);
    let rss = support::rss_kib(g.pid());
    assert!(rss < 512 * 1024, "memory stayed bounded: {rss} KiB");
}

/// A connection whose last stream ended and that then says nothing gets GOAWAY and is closed
/// after the idle timeout (it was held open until the client spoke again).
#[test]
fn a_connection_quiet_after_its_last_stream_is_closed_when_idle() {
    let g = Gateway::start_with(&[("KATEWAY_SERVER_IDLE_TIMEOUT", "1s")]);
    let (ok, out) = python("h2_client.py", &[&g.addr, "idle-after-request"]);
    assert!(ok, "{out}");
}

/// 20 000 acknowledgements of pings the gateway never sent cost the log nothing: the `h2` crate
/// logs each at WARN, which would let one client fill the disk.
#[test]
fn frames_a_peer_should_not_send_do_not_fill_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut g = Gateway::new_with(&[]);
    g.stderr_file = Some(log.clone());
    g.spawn();
    let (ok, out) = python("h2_client.py", &[&g.addr, "ping-ack-flood"]);
    assert!(ok, "{out}");
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().filter(|l| l.contains("PING")).count();
    assert!(lines < 10, "{lines} log lines about pings");
}
