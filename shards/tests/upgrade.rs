//! Zero-downtime upgrade, on both backends: a successor started with `--upgrade` (or by SIGUSR2)
//! takes the listening sockets over while publishers and subscribers keep going; no request
//! fails, no message is lost or delivered twice, and the old process exits 0. A caller of
//! another user, one that says nothing, a successor on another data directory or with a
//! listener elsewhere is refused and the gateway keeps serving; a successor whose predecessor
//! dies during the drain takes over once the data directory's lock is free.

mod support;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{records, Backend, Conn, Gateway};

on_both_backends!(
    an_upgrade_under_load_fails_no_request,
    sigusr2_starts_the_successor_itself,
    a_successor_that_does_not_fit_leaves_the_gateway_serving,
    a_successor_whose_predecessor_dies_mid_drain_takes_over,
);

/// What the load saw.
#[derive(Default)]
struct Tally {
    published: AtomicU64,
    /// Requests answered with anything but success, or whose connection failed otherwise
    /// than by a close before any answer.
    failed: AtomicU64,
    /// Requests sent again on a new connection after the server closed a kept-alive one
    /// without reading them.
    resent: AtomicU64,
}

/// Sends a request on `c`, opening a new connection when the server closed it unanswered (the
/// request was not read: sending it again is safe). Every other failure counts.
fn send(
    addr: &str,
    c: &mut Option<Conn>,
    t: &Tally,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<support::Resp> {
    for _ in 0..50 {
        let conn = c.get_or_insert_with(|| Gateway::connect_to(addr));
        match conn.try_req(method, path, headers, body) {
            Ok(Some(r)) => {
                if r.header("connection") == Some("close") {
                    *c = None;
                }
                return Some(r);
            }
            Ok(None) => {
                t.resent.fetch_add(1, Ordering::Relaxed);
                *c = None;
            }
            Err(e) => {
                eprintln!("{method} {path}: {e}");
                t.failed.fetch_add(1, Ordering::Relaxed);
                *c = None;
                return None;
            }
        }
    }
    t.failed.fetch_add(1, Ordering::Relaxed);
    None
}

/// Publishers and subscribers running against `g` until `stop`; the messages received.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    subscribers: Vec<std::thread::JoinHandle<()>>,
    stop_subs: Arc<AtomicBool>,
}

fn start_load(g: &Gateway, app: &str) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_subs = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for p in 0..3 {
        let (addr, app, stop, t) = (g.addr.clone(), app.to_string(), stop.clone(), tally.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("m-{p}-{i}");
                let h = [("Appid", app.as_str()), ("Idempotency-Key", id.as_str())];
                match send(
                    &addr,
                    &mut c,
                    &t,
                    "POST",
                    "/v1/msgs/t/v1",
                    &h,
                    id.as_bytes(),
                ) {
                    Some(r) if r.status == 201 => {
                        t.published.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    Some(r) => {
                        eprintln!("publish {id}: {} {}", r.status, r.text());
                        t.failed.fetch_add(1, Ordering::Relaxed);
                        // Sent again: the idempotency key makes it one message.
                    }
                    None => {}
                }
            }
        }));
    }
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let (addr, app, stop, t, got) = (
            g.addr.clone(),
            app.to_string(),
            stop_subs.clone(),
            tally.clone(),
            got.clone(),
        );
        subscribers.push(std::thread::spawn(move || {
            let mut c = None;
            let path = format!("/v1/msgs/{app}/t/v1?group=g&batch=100&wait=1s&reset=oldest");
            while !stop.load(Ordering::Relaxed) {
                let h = [("Appid", app.as_str())];
                match send(&addr, &mut c, &t, "GET", &path, &h, b"") {
                    Some(r) if r.status == 200 => {
                        let mut got = got.lock().unwrap();
                        got.extend(records(&r.body).into_iter().map(|(_, _, v)| v));
                    }
                    Some(r) if r.status == 204 => {}
                    Some(r) => {
                        eprintln!("subscribe: {} {}", r.status, r.text());
                        t.failed.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    None => {}
                }
            }
        }));
    }
    Load {
        stop,
        tally,
        got,
        threads,
        subscribers,
        stop_subs,
    }
}

impl Load {
    /// Stops publishing, lets the subscribers catch up, and checks that each message arrived
    /// exactly once and no request failed.
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let published = self.tally.published.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while (self.got.lock().unwrap().len() as u64) < published && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // A moment more, for anything delivered twice.
        std::thread::sleep(Duration::from_millis(1500));
        self.stop_subs.store(true, Ordering::Relaxed);
        for t in self.subscribers {
            t.join().unwrap();
        }
        let got = self.got.lock().unwrap();
        let distinct: HashSet<_> = got.iter().collect();
        let (failed, resent) = (
            self.tally.failed.load(Ordering::Relaxed),
            self.tally.resent.load(Ordering::Relaxed),
        );
        eprintln!(
            "published {published}, received {} ({} distinct), {resent} sent again, {failed} failed",
            got.len(),
            distinct.len()
        );
        assert!(published > 100, "the load ran: {published}");
        assert_eq!(failed, 0, "no request failed");
        assert_eq!(distinct.len() as u64, published, "no message lost");
        assert_eq!(got.len(), distinct.len(), "no message delivered twice");
    }
}

/// A gateway whose notify socket (`NOTIFY_SOCKET`, as systemd's) is the returned one, in a
/// directory kept as long as the first value is.
fn notified(b: Backend) -> (tempfile::TempDir, std::os::unix::net::UnixDatagram, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let g = Gateway::on(b, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    (dir, notify, g)
}

/// Waits (up to about 60 s) until a process other than `old` answers.
fn wait_for_successor(g: &Gateway, old: u64) -> u64 {
    for _ in 0..600 {
        let pid = g.serving_pid();
        if pid != old {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no successor took over from {old}");
}

fn an_upgrade_under_load_fails_no_request(b: Backend) {
    let mut g = Gateway::on(b, &[]);
    let app = g.app("up");
    g.create_topic(&app, "t", 2);
    let before = g.serving_pid();
    let load = start_load(&g, &app);
    std::thread::sleep(Duration::from_millis(1500));
    let mut old = g.upgrade();
    let after = wait_for_successor(&g, before);
    assert_eq!(after, u64::from(g.pid()));
    let status = old.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the old process exits cleanly");
    std::thread::sleep(Duration::from_millis(1500));
    load.finish();
    // The successor is a gateway like any other: it drains and exits on SIGTERM.
    assert_eq!(g.terminate(), Some(0));
}

/// The systemd flow (`Type=notify`, `systemctl kill -s USR2`): SIGUSR2 starts the successor,
/// which tells the notify socket it is the main process as soon as it holds the sockets, then
/// that it is ready.
fn sigusr2_starts_the_successor_itself(b: Backend) {
    let (_dir, notify, mut g) = notified(b);
    let app = g.app("up");
    g.create_topic(&app, "t", 1);
    g.publish(&app, "t", "", b"before");
    let before = g.serving_pid();
    let mut old = g.child.take().unwrap();
    std::process::Command::new("kill")
        .args(["-USR2", &before.to_string()])
        .status()
        .unwrap();
    let after = wait_for_successor(&g, before);
    assert_eq!(old.wait().unwrap().code(), Some(0));
    // The same store, now served by the successor.
    g.publish(&app, "t", "", b"after");
    let got: Vec<_> = g
        .drain(&app, &app, "t", "group=g&batch=10&wait=3s&reset=oldest")
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(got, vec![b"before".to_vec(), b"after".to_vec()]);
    let mut said = Vec::new();
    for _ in 0..3 {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notification");
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        said,
        [
            format!("READY=1\nMAINPID={before}\n"),
            format!("MAINPID={after}\n"),
            format!("READY=1\nMAINPID={after}\n"),
        ]
    );
    // Not this test's child: stopped by its pid.
    std::process::Command::new("kill")
        .args(["-TERM", &after.to_string()])
        .status()
        .unwrap();
    for _ in 0..1500 {
        // Gone, or a zombie its new parent has not reaped yet.
        match std::fs::read_to_string(format!("/proc/{after}/stat")) {
            Err(_) => return,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') =>
            {
                return
            }
            Ok(_) => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the successor did not exit on SIGTERM");
}

/// Connects to the upgrade socket of the gateway on `addr`.
fn upgrade_socket(addr: &str) -> std::os::unix::net::UnixStream {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("kateway-listen:{addr}");
    let at = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    std::os::unix::net::UnixStream::connect_addr(&at).expect("the upgrade socket")
}

/// Waits for a refused successor and returns its stderr.
fn refused(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(
        out.status.code(),
        Some(0),
        "the successor is refused: {err}"
    );
    err
}

fn a_successor_that_does_not_fit_leaves_the_gateway_serving(b: Backend) {
    let health = format!("127.0.0.1:{}", support::free_port());
    let mut g = Gateway::on(b, &[("KATEWAY_TLS_HEALTH_LISTEN", health.as_str())]);
    let app = g.app("up");
    g.create_topic(&app, "t", 1);
    g.publish(&app, "t", "", b"before");
    let pid = g.serving_pid();
    // A caller that connects and says nothing holds no one up: it is dropped after a few
    // seconds, and signals and requests are handled meanwhile (it stays open to the end).
    let silent = upgrade_socket(&g.addr);
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
    // A process of another user is refused (needs root to be another user).
    if nix_euid() == 0 {
        let script = format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect('\\0kateway-listen:{}'); \
             s.sendall(b'upgrade\\n'); print(s.recv(4096).decode())",
            g.addr
        );
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
            ])
            .arg(&script)
            .output()
            .expect("setpriv");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.starts_with("failed") && said.contains("uid 65534"),
            "another user is refused: {said:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("not root: the other-user case is not run");
    }
    // Another data directory.
    let other = tempfile::tempdir().unwrap();
    let err = refused(g.successor(&[], Some(other.path())));
    assert!(err.contains("another data directory"), "{err}");
    // A listener that the running gateway has elsewhere.
    let elsewhere = format!("127.0.0.1:{}", support::free_port());
    let err = refused(g.successor(&[("KATEWAY_TLS_HEALTH_LISTEN", elsewhere.as_str())], None));
    assert!(err.contains("tls.health_listen"), "{err}");
    // Still the same process, serving everything.
    assert_eq!(g.serving_pid(), pid);
    g.publish(&app, "t", "", b"after");
    let mut h = Gateway::connect_to(&health);
    assert_eq!(h.req("GET", "/alive", &[], b"").status, 200);
    let got: Vec<_> = g
        .drain(&app, &app, "t", "group=g&batch=10&wait=3s&reset=oldest")
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(got, vec![b"before".to_vec(), b"after".to_vec()]);
    // And a fitting successor still takes over.
    let mut old = g.upgrade();
    wait_for_successor(&g, pid);
    assert_eq!(old.wait().unwrap().code(), Some(0));
    assert_eq!(g.terminate(), Some(0));
    drop(silent);
}

fn nix_euid() -> u32 {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn a_successor_whose_predecessor_dies_mid_drain_takes_over(b: Backend) {
    let (_dir, notify, mut g) = notified(b);
    let app = g.app("up");
    g.create_topic(&app, "t", 1);
    g.publish(&app, "t", "ack=all", b"before");
    let before = g.serving_pid();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], format!("READY=1\nMAINPID={before}\n").as_bytes());
    // A request whose body has not arrived keeps the drain going (up to request_timeout).
    let mut slow = g.connect();
    slow.send_raw(
        format!("POST /v1/msgs/t/v1 HTTP/1.1\r\nAppid: {app}\r\nContent-Length: 10\r\n\r\nab")
            .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut old = g.upgrade();
    // The successor holds the sockets once it says it is the main process.
    let n = notify.recv(&mut buf).unwrap();
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.starts_with("MAINPID="), "{said}");
    assert_ne!(said, format!("MAINPID={before}\n"));
    // The old process dies mid-drain, without releasing anything.
    old.kill().unwrap();
    old.wait().unwrap();
    let after = wait_for_successor(&g, before);
    assert_eq!(after, u64::from(g.pid()));
    g.publish(&app, "t", "ack=all", b"after");
    let got: Vec<_> = g
        .drain(&app, &app, "t", "group=g&batch=10&wait=3s&reset=oldest")
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(got, vec![b"before".to_vec(), b"after".to_vec()]);
    drop(slow);
    assert_eq!(g.terminate(), Some(0));
}
