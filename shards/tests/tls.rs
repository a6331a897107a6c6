//! TLS with rustls on the API port, with a certificate made at test time (rcgen) and real
//! clients: curl over h2 (ALPN) and HTTP/1.1, h2spec over TLS, a WebSocket over TLS (wss);
//! SIGHUP swaps the certificate for new handshakes and leaves an open connection alone; a
//! missing or bad certificate stops startup with the file named; a handshake that never
//! finishes is closed while other connections are served; HTTPS-only with a plaintext health
//! listener. The behaviour tests run on both backends; the checks of TLS itself (reload,
//! certificates, handshakes, listeners), which no backend sees, on the embedded store.

mod support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::clients::{cert, curl, root, run, ws_pubsub};
use support::{Backend, Gateway};

on_both_backends!(
    curl_publishes_and_subscribes_over_h2_and_http1_on_tls,
    h2spec_passes_every_case_over_tls,
    a_websocket_works_over_tls,
);

/// A gateway with a fresh certificate named `cn`; returns it and the certificate directory.
fn tls_gateway(b: Backend, cn: &str, env: &[(&str, &str)]) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = cert(dir.path(), cn);
    let (c, k) = (
        c.to_str().unwrap().to_string(),
        k.to_str().unwrap().to_string(),
    );
    let mut all = vec![
        ("KATEWAY_TLS_CERT", c.as_str()),
        ("KATEWAY_TLS_KEY", k.as_str()),
    ];
    all.extend_from_slice(env);
    (Gateway::on(b, &all), dir)
}

fn https(g: &Gateway, path: &str) -> String {
    format!("https://{}{path}", g.addr)
}

fn curl_publishes_and_subscribes_over_h2_and_http1_on_tls(b: Backend) {
    let (g, _dir) = tls_gateway(b, "kateway-test", &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    let appid = format!("Appid: {app1}");
    let url = https(&g, "/v1/msgs/t/v1");
    for (flag, version, msg) in [("--http2", "2", "one"), ("--http1.1", "1.1", "two")] {
        let (body, v, status) = curl(&["-k", flag, "-H", &appid, "-d", msg, &url]);
        assert_eq!((v.as_str(), status), (version, 201), "{flag}: {body}");
    }
    let appid = format!("Appid: {app2}");
    let url = https(
        &g,
        &format!("/v1/msgs/{app1}/t/v1?group=g&batch=10&wait=3s"),
    );
    let (body, v, status) = curl(&[
        "-k",
        "--http2",
        "-H",
        &appid,
        "-H",
        "Accept: application/x-ndjson",
        &url,
    ]);
    assert_eq!((v.as_str(), status), ("2", 200), "{body}");
    assert_eq!(body.lines().count(), 2, "{body}");
    // Plaintext still works beside TLS on the same port.
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
}

fn h2spec_passes_every_case_over_tls(b: Backend) {
    let (g, _dir) = tls_gateway(b, "kateway-test", &[]);
    let (host, port) = g.addr.rsplit_once(':').unwrap();
    let script = root().join("scripts/h2spec");
    let (ok, out) = run(script.to_str().unwrap(), &[host, port, "--tls"]);
    assert!(ok, "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
}

fn a_websocket_works_over_tls(b: Backend) {
    let (g, _dir) = tls_gateway(b, "kateway-test", &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 2);
    let base = format!("wss://{}", g.addr);
    let (ok, out) = ws_pubsub(&base, &app1, "t", &["--count", "50", "--insecure"]);
    assert!(ok, "{out}");
}

/// The subject of the certificate a new handshake gets.
fn served_subject(addr: &str) -> String {
    let (_, out) = run(
        "curl",
        &[
            "-skv",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            &format!("https://{addr}/alive"),
        ],
    );
    out.lines()
        .find(|l| l.contains("subject:"))
        .unwrap_or("")
        .to_string()
}

#[test]
fn sighup_swaps_the_certificate_and_leaves_open_connections_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = cert(dir.path(), "first-cert");
    let (live_c, live_k) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&c, &live_c).unwrap();
    std::fs::copy(&k, &live_k).unwrap();
    let g = Gateway::start_with(&[
        ("KATEWAY_TLS_CERT", live_c.to_str().unwrap()),
        ("KATEWAY_TLS_KEY", live_k.to_str().unwrap()),
    ]);
    assert!(served_subject(&g.addr).contains("first-cert"));
    // An HTTP/1.1 connection over TLS, opened before the reload, used after it.
    let py = root().join(".venv-test/bin/python");
    let script = r#"
import socket, ssl, sys, os
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
host, port = sys.argv[1].rsplit(":", 1)
s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10))
def alive():
    s.sendall(b"GET /alive HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got or not got.endswith(b"}"):
        got += s.recv(4096)
    return got.split(b"\r\n")[0].decode()
print(alive(), flush=True)
sys.stdin.readline()
print(alive(), flush=True)
"#;
    let mut open = std::process::Command::new(py)
        .args(["-c", script, &g.addr])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = open.stdout.take().unwrap();
    let mut first = [0u8; 15];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    // A broken file: the reload fails, the first certificate stays.
    std::fs::write(&live_c, b"not a certificate").unwrap();
    run("kill", &["-HUP", &g.pid().to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(served_subject(&g.addr).contains("first-cert"));
    let (c2, k2) = cert(dir.path(), "second-cert");
    std::fs::copy(&c2, &live_c).unwrap();
    std::fs::copy(&k2, &live_k).unwrap();
    run("kill", &["-HUP", &g.pid().to_string()]);
    let mut subject = String::new();
    for _ in 0..50 {
        subject = served_subject(&g.addr);
        if subject.contains("second-cert") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(subject.contains("second-cert"), "{subject}");
    open.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(open.wait().unwrap().success());
    assert_eq!(
        rest.trim(),
        "HTTP/1.1 200 OK",
        "the open connection was left alone"
    );
}

#[test]
fn a_missing_or_bad_certificate_stops_startup_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, k) = cert(dir.path(), "c");
    let bad = dir.path().join("bad.crt");
    std::fs::write(
        &bad,
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.crt");
    for path in [&missing, &bad] {
        let mut g = Gateway::new_with(&[
            ("KATEWAY_TLS_CERT", path.to_str().unwrap()),
            ("KATEWAY_TLS_KEY", k.to_str().unwrap()),
        ]);
        let (code, err) = g.run_to_exit();
        assert_ne!(code, Some(0));
        assert!(
            err.contains(path.to_str().unwrap()),
            "names the file: {err}"
        );
    }
}

#[test]
fn a_handshake_that_never_finishes_is_closed_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = cert(dir.path(), "c");
    let mut g = Gateway::new_with(&[
        ("KATEWAY_TLS_CERT", c.to_str().unwrap()),
        ("KATEWAY_TLS_KEY", k.to_str().unwrap()),
        ("KATEWAY_SERVER_REQUEST_TIMEOUT", "1s"),
    ]);
    g.cores = 1;
    g.spawn();
    // The first bytes of a ClientHello record, then nothing.
    let mut stuck: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&g.addr).unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
            s
        })
        .collect();
    // Served meanwhile, on the same (only) core, over TLS and in plaintext.
    let (_, v, status) = curl(&["-k", "--http2", &format!("https://{}/alive", g.addr)]);
    assert_eq!((v.as_str(), status), ("2", 200));
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
    for s in &mut stuck {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        // Closed by the gateway after the request timeout: EOF or a reset, not a timeout.
        match s.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "no answer to half a handshake"),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
        }
    }
    assert!(g.metric("kateway_tls_handshakes_failed_total") >= 20.0);
}

#[test]
fn https_only_refuses_plaintext_and_the_health_listener_answers_health_checks_only() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = cert(dir.path(), "c");
    let health = format!("127.0.0.1:{}", support::free_port());
    let mut g = Gateway::new_with(&[
        ("KATEWAY_TLS_CERT", c.to_str().unwrap()),
        ("KATEWAY_TLS_KEY", k.to_str().unwrap()),
        ("KATEWAY_TLS_HTTPS_ONLY", "true"),
        ("KATEWAY_TLS_HEALTH_LISTEN", health.as_str()),
    ]);
    g.addr = format!("127.0.0.1:{}", support::free_port());
    // spawn() waits for a plaintext /alive, which this gateway refuses on its main port.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kateway"))
        .args(["serve", "--cores", "2", "--listen", &g.addr, "--data-dir"])
        .arg(g.data_dir())
        .env("KATEWAY_TLS_CERT", c.to_str().unwrap())
        .env("KATEWAY_TLS_KEY", k.to_str().unwrap())
        .env("KATEWAY_TLS_HTTPS_ONLY", "true")
        .env("KATEWAY_TLS_HEALTH_LISTEN", &health)
        .env("KATEWAY_AUTH_ENABLED", "false")
        .spawn()
        .unwrap();
    g.child = Some(child);
    let mut up = false;
    for _ in 0..500 {
        if TcpStream::connect(&health).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(up, "the health listener came up");
    let (body, _, status) = curl(&[&format!("http://{}/v1/status", g.addr)]);
    assert_eq!(status, 400, "plaintext refused: {body}");
    assert!(body.contains("HTTPS only"), "{body}");
    let (_, v, status) = curl(&["-k", &format!("https://{}/v1/status", g.addr)]);
    assert_eq!((v.as_str(), status), ("2", 200));
    let (_, _, status) = curl(&[&format!("http://{health}/alive")]);
    assert_eq!(status, 200);
    let (_, _, status) = curl(&[&format!("http://{health}/ready")]);
    assert_eq!(status, 200);
    let (body, _, status) = curl(&[&format!("http://{health}/v1/status")]);
    assert_eq!(status, 404, "health checks only: {body}");
}
