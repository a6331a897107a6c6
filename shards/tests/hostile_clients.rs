//! Clients that try to exhaust the gateway: subscribers that never read their answers, a
//! flood of connections beyond the open-file limit. Memory and descriptors stay bounded, and
//! the gateway keeps answering health checks and serving well-behaved clients.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{rss_kib, Backend, Gateway};

#[test]
fn subscribers_that_never_read_cannot_pin_memory() {
    let g = Gateway::start_with(&[
        ("KATEWAY_SUBSCRIBE_MAX_BATCH_BYTES", "16MiB"),
        ("KATEWAY_LIMITS_MAX_RESPONSE_BYTES_PER_CORE", "24MiB"),
        ("KATEWAY_SERVER_WRITE_TIMEOUT", "1s"),
    ]);
    g.create_topic("app", "t", 2);
    let big = vec![b'x'; 512 << 10];
    for _ in 0..64 {
        g.publish("app", "t", "", &big);
    }
    let base = rss_kib(g.pid());
    // Each asks for up to 16 MiB and never reads a byte.
    let stuck: Vec<TcpStream> = (0..8)
        .map(|i| {
            let mut s = TcpStream::connect(&g.addr).unwrap();
            write!(
                s,
                "GET /v1/msgs/app/t/v1?group=s{i}&batch=100 HTTP/1.1\r\nAppid: b\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            s
        })
        .collect();
    let cap = 2 * (24 << 20) + 2 * (512 << 10);
    let mut peak_held = 0.0f64;
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = g.metric("kateway_http_response_bytes_held");
        peak_held = peak_held.max(held);
        peak_rss = peak_rss.max(rss_kib(g.pid()));
        assert!(held <= cap as f64, "{held} bytes held");
        if g.metric("kateway_http_write_timeouts_total") >= 1.0 && held == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck answers were never abandoned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        peak_held > (8 << 20) as f64,
        "the answers were held: {peak_held}"
    );
    assert!(g.metric("kateway_http_responses_refused_total") >= 1.0);
    // Every stuck connection ends: abandoned by the server, or closed after its answer.
    for mut s in stuck {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    // Memory is given back once they are gone (each core returns freed memory every second).
    let mut after = rss_kib(g.pid());
    for _ in 0..40 {
        if after < base + 64 * 1024 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = rss_kib(g.pid());
    }
    eprintln!("RSS: {base} KiB before, {peak_rss} KiB at the peak, {after} KiB after");
    assert!(
        after < base + 64 * 1024,
        "RSS {after} KiB after the slow readers left (base {base} KiB, peak {peak_rss} KiB)"
    );
    // Well-behaved subscribers are served throughout.
    let s = g.sub("b", "app", "t", "group=fine&wait=1s", &[]);
    assert_eq!(s.status, 200);
}

#[test]
fn a_connection_flood_beyond_the_descriptor_limit_leaves_health_checks_and_the_store_working() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(hard >= 4096, "the test needs 4096 descriptors");
    let mut g = Gateway::new_with(&[]);
    g.nofile = Some(512);
    g.spawn();
    g.create_topic("app", "t", 2);
    let mut held = Gateway::connect_to(&g.addr);
    let flood: Vec<TcpStream> = (0..1500)
        .filter_map(|_| TcpStream::connect(&g.addr).ok())
        .collect();
    assert!(flood.len() > 1000);
    std::thread::sleep(Duration::from_millis(500));
    // Health checks are answered.
    for _ in 0..5 {
        let t0 = Instant::now();
        let r = g.req("GET", "/alive", &[], b"");
        assert_eq!(r.status, 200);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
    // Other requests on new connections get 503 with Retry-After, never a hang.
    let r = g.req("GET", "/v1/status", &[], b"");
    if r.status != 200 {
        r.assert_error(503);
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", g.pid()))
        .unwrap()
        .count();
    assert!(fds < 512, "{fds} descriptors");
    // The store keeps working for a connection that was in before the flood.
    let r = held.req("POST", "/v1/msgs/t/v1", &[("Appid", "app")], b"durable");
    assert_eq!(r.status, 201, "{}", r.text());
    drop(flood);
    std::thread::sleep(Duration::from_millis(1500));
    g.publish("app", "t", "", b"after");
    let got = g.drain("b", "app", "t", "group=g&batch=10&wait=1s");
    assert_eq!(got.len(), 2);
}

/// The operator listener has a cap of its own: hundreds of idle connections on the main port
/// (more than the operator's 128 per core) leave operators able to act, and so does the
/// health listener's `/metrics`.
#[test]
fn a_flood_on_the_main_port_leaves_the_operator_listener_working() {
    let g = Gateway::secured(Backend::Embedded, &[]);
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(&g.addr).ok())
        .collect();
    assert_eq!(flood.len(), 600);
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..8 {
        let r = g.op("POST", &format!("/v1/apps/flooded{i}"), b"");
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // The main port still serves within its own cap.
    let r = g.req("GET", "/alive", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    drop(flood);
}

#[test]
fn bodies_that_never_finish_arriving_cannot_exhaust_memory() {
    unfinished_bodies(false);
    unfinished_bodies(true);
}

/// Clients that start large bodies (with a length, or chunked) and stop half-way.
fn unfinished_bodies(chunked: bool) {
    let mut g = Gateway::new_with(&[("KATEWAY_LIMITS_MAX_REQUEST_BYTES_PER_CORE", "2MiB")]);
    g.cores = 1;
    g.spawn();
    g.create_topic("app", "t", 1);
    let base = rss_kib(g.pid());
    // 12 clients announce a 5 MiB batch, send 1 MiB of it and stop: 12 MiB would be buffered.
    let chunk = vec![b'x'; 64 << 10];
    let mut slow: Vec<TcpStream> = Vec::new();
    for _ in 0..12 {
        let mut s = TcpStream::connect(&g.addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {}", 5 << 20)
        };
        write!(
            s,
            "POST /v1/msgs/t/v1 HTTP/1.1\r\nAppid: app\r\nContent-Type: application/x-ndjson\r\n{framing}\r\n\r\n",
        )
        .unwrap();
        for _ in 0..16 {
            let sent = if chunked {
                write!(s, "{:x}\r\n", chunk.len())
                    .and_then(|_| s.write_all(&chunk))
                    .and_then(|_| s.write_all(b"\r\n"))
            } else {
                s.write_all(&chunk)
            };
            if sent.is_err() {
                break;
            }
        }
        slow.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let held = g.metric("kateway_http_request_bytes_held");
    assert!(
        held <= (2 << 20) as f64,
        "chunked {chunked}: {held} request bytes held"
    );
    let refused_total = g.metric("kateway_http_requests_refused_total");
    assert!(
        refused_total >= 8.0,
        "chunked {chunked}: {refused_total} refused"
    );
    // The refused clients read a 503 with Retry-After naming the limit (not a reset).
    let mut refused = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        if text.starts_with("http/1.1 503") {
            assert!(text.contains("retry-after:"), "{text}");
            assert!(text.contains("50308"), "{text}");
            refused += 1;
        }
    }
    assert_eq!(refused as f64, refused_total);
    // The accounting above is the check; RSS is a sanity bound only (the allocator keeps what
    // the read buffers used, 14–19 MiB over the base on these machines).
    let rss = rss_kib(g.pid());
    assert!(rss < base + 24 * 1024, "RSS {rss} KiB (base {base} KiB)");
    drop(slow);
    assert_eq!(g.publish("app", "t", "", b"fine").status, 201);
}
