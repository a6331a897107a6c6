//! WebSocket publish and subscribe sockets, on both backends: Python's `websockets` publishes
//! pipelined messages and gets their acks in order, then reads them back over a subscribe
//! socket (with credit, and with explicit acks); raw frames check the RFC 6455 failures (an
//! unmasked frame 1002, bad UTF-8 1007, over the limit 1009), the 426 for a plain GET, the
//! idle ping and timeout, 1001 on drain, and that a subscriber that does not read holds the
//! gateway to its credit and is cut off by the write timeout.

mod support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::clients::ws_pubsub;
use support::{rss_kib, Backend, Gateway};

on_both_backends!(
    websockets_publishes_pipelined_and_subscribes_with_credit,
    explicit_acks_commit_the_group,
    a_leased_subscribe_settles_with_frames,
    a_leased_socket_refuses_offset_acks,
    a_message_over_the_limit_closes_with_1009,
    protocol_errors_close_with_their_codes,
    a_plain_get_on_a_websocket_route_is_426,
    a_silent_client_is_pinged_then_closed,
    draining_closes_sockets_with_1001,
    a_subscriber_that_does_not_read_is_held_to_its_credit,
    a_ping_flood_on_a_subscribe_socket_stays_bounded,
    pings_beyond_the_inbox_are_all_answered,
);

/// Opens a WebSocket with a raw HTTP/1.1 upgrade; panics unless the answer is 101.
fn open(addr: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the handshake");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// A client frame (FIN set), masked unless `masked` is false.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if masked {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Reads one server frame: (opcode, payload).
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x0f, p)
}

/// Reads frames until a close frame; returns its code.
fn close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (op, p) = read_frame(s);
        if op == 0x8 {
            return u16::from_be_bytes([p[0], p[1]]);
        }
    }
}

fn websockets_publishes_pipelined_and_subscribes_with_credit(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 4);
    let base = format!("ws://{}", g.addr);
    let (ok, out) = ws_pubsub(&base, &app1, "t", &["--count", "300", "--credit", "7"]);
    assert!(ok, "{out}");
    // The acknowledged messages are stored: HTTP/1.1 reads them all back.
    let got = g.drain(&g.app("app2"), &app1, "t", "group=h1&batch=500&wait=2s");
    assert_eq!(got.len(), 300);
}

fn explicit_acks_commit_the_group(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    let base = format!("ws://{}", g.addr);
    let (ok, out) = ws_pubsub(
        &base,
        &app1,
        "t",
        &["--count", "20", "--group", "acked", "--sub-ack"],
    );
    assert!(ok, "{out}");
    // Everything was acknowledged over the socket: the group has nothing left.
    let left = g.sub(&app1, &app1, "t", "group=acked&ack=1&wait=1s", &[]);
    assert_eq!(left.status, 204, "{}", left.text());
}

/// `ack=lease` over a WebSocket (Python's websockets): receipts and attempts on every message,
/// a `{"settle":"nack"}` brings one back as attempt 2, `{"settle":"ack"}` settles the rest, and
/// nothing comes back after; a plain group then finds nothing unacked either.
fn a_leased_subscribe_settles_with_frames(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 2);
    let base = format!("ws://{}", g.addr);
    let (ok, out) = ws_pubsub(
        &base,
        &app1,
        "t",
        &[
            "--count", "40", "--group", "leased", "--lease", "--settle", "2",
        ],
    );
    assert!(ok, "{out}");
    // Every message was acked: a leased long poll of the group finds nothing.
    let r = g.req(
        "GET",
        &format!("/v1/msgs/{app1}/t/v1?group=leased&ack=lease&wait=1s"),
        &[("Appid", app1.as_str())],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
}

/// `{"ack":[p,o]}` commits a group's offset, which a leased group's queue keeps itself: on a
/// leased socket it is answered with an error frame, and the socket stays open. A settle frame
/// is read as one even with its key written in escapes; on a socket that is not leased it is
/// refused the same way.
fn a_leased_socket_refuses_offset_acks(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    let path = format!("/v1/ws/msgs/{app1}/t/v1?appid={app2}&group=g&ack=lease");
    let mut s = open(&g.addr, &path);
    s.write_all(&frame(0x1, br#"{"ack":[0,0]}"#, true)).unwrap();
    let (op, text) = read_frame(&mut s);
    assert_eq!(op, 0x1);
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["error"]["code"], 40002, "{v}");
    // Still open: credit is taken as before.
    s.write_all(&frame(0x1, br#"{"credit":1}"#, true)).unwrap();
    s.write_all(&frame(0x9, b"still", true)).unwrap();
    let (op, p) = read_frame(&mut s);
    assert_eq!((op, p.as_slice()), (0xA, &b"still"[..]));
    // `\u0073ettle` is `settle`: the frame settles (its receipt is no receipt, and says so).
    let escaped = br#"{"\u0073ettle":"ack","receipts":["AQnotareceipt"]}"#;
    s.write_all(&frame(0x1, escaped, true)).unwrap();
    let (_, text) = read_frame(&mut s);
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let why = v["error"]["errmsg"].as_str().unwrap_or_default();
    assert!(
        why.contains("receipt") && v["error"]["code"] != 40006,
        "{v}"
    );
    // A socket that commits offsets has no leases to settle.
    let path = format!("/v1/ws/msgs/{app1}/t/v1?appid={app2}&group=g2&ack=1");
    let mut s = open(&g.addr, &path);
    s.write_all(&frame(0x1, br#"{"settle":"ack","receipts":["AQx"]}"#, true))
        .unwrap();
    let (_, text) = read_frame(&mut s);
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["error"]["code"], 40002, "{v}");
}

fn a_message_over_the_limit_closes_with_1009(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    let base = format!("ws://{}", g.addr);
    let (ok, out) = ws_pubsub(
        &base,
        &app1,
        "t",
        &["--send-oversize", "600000", "--expect-close-code", "1009"],
    );
    assert!(ok, "{out}");
}

fn protocol_errors_close_with_their_codes(b: Backend) {
    let mut g = Gateway::new_on(b, &[]);
    g.cores = 1;
    g.spawn();
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    let path = format!("/v1/ws/msgs/t/v1?appid={app1}");
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("unmasked", frame(0x2, b"m", false), 1002),
        ("bad UTF-8", frame(0x1, &[0xff, 0xfe], true), 1007),
        ("reserved opcode", frame(0x3, b"", true), 1002),
        (
            "frame over the limit",
            frame(0x2, &vec![0; 2 << 20], true),
            1009,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut s = open(&g.addr, &path);
        // A write may fail once the gateway has closed (the limit is seen in the header).
        let _ = s.write_all(&bytes);
        assert_eq!(close_code(&mut s), code, "{what}");
    }
    // A client still writing a message far over the limit can write all of it (the gateway
    // reads and drops it after its close frame, instead of resetting the connection under
    // the write) and then reads the close.
    let mut s = open(&g.addr, &path);
    s.write_all(&frame(0x2, &vec![0; 32 << 20], true))
        .expect("the gateway reads what follows its close frame");
    assert_eq!(close_code(&mut s), 1009, "after a 32 MiB frame");
    // Nothing of it was published, and the gateway serves on.
    let mut s = open(&g.addr, &path);
    s.write_all(&frame(0x1, b"fine", true)).unwrap();
    let (op, ack) = read_frame(&mut s);
    assert_eq!(op, 0x1);
    assert_eq!(ack, br#"{"partition":0,"offset":0}"#);
}

fn a_plain_get_on_a_websocket_route_is_426(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    // An upgrade over HTTP/1.0 is refused (RFC 6455 §4.1).
    let mut s = TcpStream::connect(&g.addr).unwrap();
    write!(
        s,
        "GET /v1/ws/msgs/t/v1?appid={app1} HTTP/1.0\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let r = g.req("GET", &format!("/v1/ws/msgs/t/v1?appid={app1}"), &[], b"");
    assert_eq!(r.status, 426, "{}", r.text());
    assert_eq!(r.json()["code"], 42600);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    // A subscribe socket for a topic that does not exist is refused before the upgrade.
    let mut s = TcpStream::connect(&g.addr).unwrap();
    write!(
        s,
        "GET /v1/ws/msgs/{app1}/nope/v1?appid={app1}&group=g HTTP/1.1\r\nHost: x\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
}

fn a_silent_client_is_pinged_then_closed(b: Backend) {
    let g = Gateway::on(b, &[("KATEWAY_WEBSOCKET_PING_INTERVAL", "300ms")]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    let mut s = open(&g.addr, &format!("/v1/ws/msgs/t/v1?appid={app1}"));
    let (op, _) = read_frame(&mut s);
    assert_eq!(op, 0x9, "a ping first");
    let (op, p) = read_frame(&mut s);
    assert_eq!(op, 0x8, "then, unanswered, the close");
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1000);
    assert_eq!(&p[2..], b"idle timeout");
    // A client that answers the pings stays.
    let mut s = open(&g.addr, &format!("/v1/ws/msgs/t/v1?appid={app1}"));
    for _ in 0..4 {
        let (op, p) = read_frame(&mut s);
        assert_eq!(op, 0x9);
        s.write_all(&frame(0xA, &p, true)).unwrap();
    }
    s.write_all(&frame(0x1, b"still here", true)).unwrap();
    let (op, ack) = read_frame(&mut s);
    assert_eq!((op, ack.starts_with(b"{\"partition\"")), (0x1, true));
}

fn draining_closes_sockets_with_1001(b: Backend) {
    let mut g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    let mut publ = open(&g.addr, &format!("/v1/ws/msgs/t/v1?appid={app1}"));
    let mut subs = open(
        &g.addr,
        &format!("/v1/ws/msgs/{app1}/t/v1?appid={app1}&group=g"),
    );
    publ.write_all(&frame(0x1, b"before drain", true)).unwrap();
    assert_eq!(read_frame(&mut publ).0, 0x1);
    let (op, m) = read_frame(&mut subs);
    assert_eq!(op, 0x1);
    assert!(String::from_utf8_lossy(&m).contains("\"offset\":0"));
    let pid = g.pid();
    let t = std::thread::spawn(move || (close_code(&mut publ), close_code(&mut subs)));
    std::thread::sleep(Duration::from_millis(200));
    support::clients::run("kill", &["-TERM", &pid.to_string()]);
    assert_eq!(t.join().unwrap(), (1001, 1001));
    assert_eq!(g.terminate(), Some(0));
}

fn a_subscriber_that_does_not_read_is_held_to_its_credit(b: Backend) {
    // One core: the stalled socket and the others share it.
    let mut g = Gateway::new_on(b, &[("KATEWAY_SERVER_WRITE_TIMEOUT", "1s")]);
    g.cores = 1;
    g.spawn();
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    let big = vec![b'x'; 100_000];
    // More than the socket buffers of a loopback connection hold (about 20 MB as frames).
    for _ in 0..150 {
        g.publish(&app1, "t", "ack=local", &big);
    }
    let out = |g: &Gateway| g.metric("kateway_websocket_messages_out_total");
    // Credit 5: five messages, then nothing until the client grants more.
    let mut s = open(
        &g.addr,
        &format!("/v1/ws/msgs/{app1}/t/v1?appid={app1}&group=c&credit=5"),
    );
    for _ in 0..5 {
        assert_eq!(read_frame(&mut s).0, 0x1);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(out(&g), 5.0, "no more than the credit");
    s.write_all(&frame(0x1, br#"{"credit":2}"#, true)).unwrap();
    for _ in 0..2 {
        assert_eq!(read_frame(&mut s).0, 0x1);
    }
    // A subscriber with credit that does not read: the gateway's writes stall and the write
    // timeout closes the socket; the other sockets are served meanwhile.
    let idle = open(
        &g.addr,
        &format!("/v1/ws/msgs/{app1}/t/v1?appid={app1}&group=d&credit=4096"),
    );
    let timeouts = g.metric_until("kateway_http_write_timeouts_total", 500, |v| v >= 1.0);
    assert_eq!(timeouts, 1.0, "the stalled socket was cut off");
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
    drop(idle);
    s.write_all(&frame(0x1, br#"{"credit":1}"#, true)).unwrap();
    assert_eq!(read_frame(&mut s).0, 0x1, "the reading subscriber goes on");
}

fn a_ping_flood_on_a_subscribe_socket_stays_bounded(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    let s = open(
        &g.addr,
        &format!("/v1/ws/msgs/{app1}/t/v1?appid={app1}&group=p"),
    );
    let mut r = s.try_clone().unwrap();
    // Pongs are read as fast as they come; pings are sent faster than the subscription's
    // writer (which waits for messages) takes its inbox.
    let reader = std::thread::spawn(move || {
        let mut pongs = 0u64;
        while let Ok((op, _)) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_frame(&mut r)))
        {
            if op == 0xA {
                pongs += 1;
            }
            if op == 0x8 {
                break;
            }
        }
        pongs
    });
    let ping = frame(0x9, &[7u8; 125], true);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    let mut w = s.try_clone().unwrap();
    // The gateway stops reading while its inbox is full: the writes then stall.
    w.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if w.write_all(&burst).is_err() {
            break;
        }
    }
    let rss = rss_kib(g.pid());
    let _ = s.shutdown(std::net::Shutdown::Both);
    drop((w, s));
    let pongs = reader.join().unwrap();
    assert!(pongs > 0, "pings were answered");
    assert!(rss < 200 * 1024, "memory stayed bounded: {rss} KiB");
}

fn pings_beyond_the_inbox_are_all_answered(b: Backend) {
    // More pings at once than a subscribe socket's inbox holds, with nothing to deliver: the
    // reader waits for room, and each batch the writer takes makes room again.
    let g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    let mut s = open(
        &g.addr,
        &format!("/v1/ws/msgs/{app1}/t/v1?appid={app1}&group=q"),
    );
    let ping = frame(0x9, b"are you there", true);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 200)
        .collect();
    s.write_all(&burst).unwrap();
    for i in 0..200 {
        let (op, p) = read_frame(&mut s);
        assert_eq!((op, p.as_slice()), (0xA, &b"are you there"[..]), "pong {i}");
    }
}
