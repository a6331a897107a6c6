//! Webhook push subscriptions on both backends, against a receiver written in Python with its
//! own HMAC check (`tests/clients/webhook_receiver.py`): every message delivered through random
//! failures and timeouts, each repeat under the same id, poison messages dead-lettered; order
//! per key under retries; pause, resume and the automatic pause; private addresses refused.

mod support;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Backend, Gateway};

on_both_backends!(
    every_message_arrives_through_failures_and_poison_is_dead_lettered,
    ordered_delivery_keeps_each_keys_order_under_retries,
    pause_resume_and_the_automatic_pause,
    https_endpoints_are_checked_against_the_system_roots,
    interim_answers_are_skipped,
    a_revoked_grant_stops_the_pushes,
    waiting_messages_keep_their_leases_through_a_long_pause,
);

const ENV: &[(&str, &str)] = &[
    ("KATEWAY_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "true"),
    ("KATEWAY_WEBHOOK_PAUSE_AFTER_FAILURES", "0"),
];

/// A gateway with `env` on `b`. On Kafka it has a metadata topic of its own: subscriptions
/// live in the metadata, and the other tests' gateways on the shared broker (a cluster with
/// other peppers) must not take part in its groups.
fn gateway(b: Backend, env: &[(&str, &str)]) -> Gateway {
    let meta = format!(
        "__kateway_meta_wh_{}_{}",
        std::process::id(),
        support::free_port()
    );
    let mut all = env.to_vec();
    if b == Backend::Kafka {
        all.push(("KATEWAY_KAFKA_META_TOPIC", &meta));
        return Gateway::on(b, &all);
    }
    Gateway::on(b, env)
}

/// The Python receiver, its log and its secret file.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    secret: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (out, secret) = (dir.path().join("log.jsonl"), dir.path().join("secret"));
        let port = support::free_port();
        let venv = support::clients::root().join(".venv-test/bin/python");
        let python = if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        };
        let child = Command::new(python)
            .arg(support::clients::root().join("tests/clients/webhook_receiver.py"))
            .args(["--port", &port.to_string()])
            .arg("--out")
            .arg(&out)
            .arg("--secret-file")
            .arg(&secret)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs the webhook receiver");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            out,
            secret,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Every request received so far.
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The bodies acknowledged (answered 2xx in time) so far.
    fn acked(&self) -> HashSet<String> {
        self.lines()
            .iter()
            .filter(|l| l["status"] == 200 && l["hung"] == false)
            .map(|l| l["body"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until every body of `want` was acknowledged.
    fn wait_for(&self, want: &HashSet<String>, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let got = self.acked();
            if want.is_subset(&got) {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "{} of {} messages acknowledged after {limit:?}",
                want.intersection(&got).count(),
                want.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Subscribes group `group` of `app` to its topic `t` with `settings`, and gives the receiver
/// the secret.
fn subscribe(g: &Gateway, app: &str, group: &str, r: &Receiver, settings: Value) -> Value {
    let mut body = settings;
    body["url"] = json!(r.url());
    let resp = g.req(
        "PUT",
        &format!("/v1/webhooks/{app}/t/v1/{group}"),
        &[("Appid", app)],
        body.to_string().as_bytes(),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let v = resp.json();
    let secret = v["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    std::fs::write(&r.secret, secret).unwrap();
    v
}

fn publish(g: &Gateway, app: &str, query: &str, body: &str) {
    let r = g.req(
        "POST",
        &format!("/v1/msgs/t/v1?{query}"),
        &[("Appid", app)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

fn every_message_arrives_through_failures_and_poison_is_dead_lettered(b: Backend) {
    const N: usize = 200;
    const POISON: usize = 5;
    // Enough that a good message does not spend them on the 35% of failures and timeouts
    // (on a loaded machine the receiver's answers can take longer than the 500 ms timeout).
    const ATTEMPTS: u64 = 20;
    let g = gateway(b, ENV);
    let app = g.app("app");
    g.create_topic(&app, "t", 2);
    let r = Receiver::start(&[
        "--fail-rate",
        "0.3",
        "--timeout-rate",
        "0.05",
        "--hang",
        "2",
    ]);
    subscribe(
        &g,
        &app,
        "g",
        &r,
        json!({"timeout": "500ms", "max_attempts": ATTEMPTS, "backoff_base": "20ms",
               "backoff_max": "200ms", "from": "oldest", "max_in_flight": 20}),
    );
    let mut want = HashSet::new();
    for i in 0..N {
        publish(&g, &app, "", &format!("m{i}"));
        want.insert(format!("m{i}"));
        if i % 40 == 0 {
            publish(&g, &app, "", &format!("poison{}", i / 40));
        }
    }
    r.wait_for(&want, Duration::from_secs(90));
    // The poison ones went to the group's dead-letter topic after their attempts.
    let t0 = Instant::now();
    loop {
        let d = g.req("GET", &format!("/v1/dlq/{app}/g"), &[("Appid", &app)], b"");
        assert_eq!(d.status, 200, "{}", d.text());
        if d.json()["messages"] == POISON {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "dead letters: {}",
            d.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = r.lines();
    assert!(
        lines.iter().all(|l| l["sig_ok"] == true),
        "every signature verifies"
    );
    // Each body keeps one id however often it came, and ids are not shared.
    let mut ids: HashMap<&str, HashSet<&str>> = HashMap::new();
    for l in &lines {
        ids.entry(l["body"].as_str().unwrap())
            .or_default()
            .insert(l["id"].as_str().unwrap());
    }
    assert!(ids.values().all(|s| s.len() == 1), "one id per message");
    let distinct: HashSet<&str> = ids.values().flatten().copied().collect();
    assert_eq!(distinct.len(), N + POISON);
    let repeats = lines.len() - (N + POISON);
    assert!(repeats > 0, "the failures made repeats");
    // Each poison message was tried up to its last attempt (an attempt whose lease a
    // rebalance ended counts without reaching the receiver), never more.
    let mut poison: HashMap<&str, (usize, u64)> = HashMap::new();
    for l in lines
        .iter()
        .filter(|l| l["body"].as_str().unwrap().starts_with("poison"))
    {
        let e = poison.entry(l["body"].as_str().unwrap()).or_default();
        e.0 += 1;
        e.1 = e.1.max(l["attempt"].as_str().unwrap().parse().unwrap());
    }
    assert_eq!(poison.len(), POISON);
    for (body, (tries, last)) in &poison {
        assert_eq!(*last, ATTEMPTS, "{body}: its last attempt");
        assert!(*tries as u64 <= ATTEMPTS, "{body}: tried {tries} times");
    }
    // What the endpoint's state and log say.
    let s = g.req(
        "GET",
        &format!("/v1/webhooks/{app}/t/v1/g"),
        &[("Appid", &app)],
        b"",
    );
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["state"]["dead"], POISON);
    assert_eq!(s.json()["state"]["delivered"], N);
    let log = g.req(
        "GET",
        &format!("/v1/webhooks/{app}/t/v1/g/log"),
        &[("Appid", &app)],
        b"",
    );
    let attempts = log.json()["attempts"].as_array().unwrap().clone();
    assert!(!attempts.is_empty());
    assert!(attempts.iter().any(|a| a["status"] == 500));
    assert!(attempts.iter().any(|a| a["status"] == 200));
}

fn ordered_delivery_keeps_each_keys_order_under_retries(b: Backend) {
    const KEYS: usize = 5;
    const PER_KEY: usize = 20;
    let g = gateway(b, ENV);
    let app = g.app("app");
    g.create_topic(&app, "t", 3);
    let r = Receiver::start(&[
        "--fail-rate",
        "0.3",
        "--timeout-rate",
        "0.05",
        "--hang",
        "1",
    ]);
    subscribe(
        &g,
        &app,
        "g",
        &r,
        json!({"timeout": "300ms", "max_attempts": 50, "backoff_base": "10ms",
               "backoff_max": "100ms", "from": "oldest", "ordered": true, "max_in_flight": 20}),
    );
    let mut want = HashSet::new();
    for i in 0..PER_KEY {
        for k in 0..KEYS {
            publish(&g, &app, &format!("key=k{k}"), &format!("k{k}-{i}"));
            want.insert(format!("k{k}-{i}"));
        }
    }
    r.wait_for(&want, Duration::from_secs(90));
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut attempts_per_key: HashMap<String, usize> = HashMap::new();
    for l in r.lines() {
        let body = l["body"].as_str().unwrap();
        let (k, n) = body.split_once('-').unwrap();
        let n: usize = n.parse().unwrap();
        assert_eq!(l["key"], k, "the key travels as kateway-key");
        let prev = last.entry(k.to_owned()).or_insert(0);
        assert!(
            n >= *prev,
            "key {k}: message {n} was sent after message {prev} had started"
        );
        *prev = n;
        *attempts_per_key.entry(k.to_owned()).or_default() += 1;
    }
    assert!(
        attempts_per_key.values().any(|&n| n > PER_KEY),
        "retries happened"
    );
}

fn pause_resume_and_the_automatic_pause(b: Backend) {
    let mut env = ENV.to_vec();
    env[1] = ("KATEWAY_WEBHOOK_PAUSE_AFTER_FAILURES", "5");
    let g = gateway(b, &env);
    let app = g.app("app");
    g.create_topic(&app, "t", 2);
    let r = Receiver::start(&[]);
    let path = format!("/v1/webhooks/{app}/t/v1/g");
    // A body over 64 KiB is refused whether it is gzip-coded or not, and makes nothing.
    let padded = format!("{{\"url\":\"{}\"{}}}", r.url(), " ".repeat(70 << 10));
    let big = format!("/v1/webhooks/{app}/t/v1/big");
    let refused = g.req("PUT", &big, &[("Appid", &app)], padded.as_bytes());
    refused.assert_error(413);
    assert_eq!(g.req("GET", &big, &[("Appid", &app)], b"").status, 404);
    subscribe(&g, &app, "g", &r, json!({"from": "oldest"}));
    let batch = |from: usize| -> HashSet<String> {
        (from..from + 10)
            .map(|i| {
                publish(&g, &app, "", &format!("m{i}"));
                format!("m{i}")
            })
            .collect()
    };
    r.wait_for(&batch(0), Duration::from_secs(30));
    let p = g.req("POST", &format!("{path}/pause"), &[("Appid", &app)], b"");
    assert_eq!(p.status, 200, "{}", p.text());
    assert_eq!(p.json()["paused"], true);
    let second = batch(10);
    // Paused: nothing more arrives (a pause is in force within a second).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(r.lines().len(), 10, "nothing is pushed while paused");
    let q = g.req("POST", &format!("{path}/resume"), &[("Appid", &app)], b"");
    assert_eq!(q.status, 200, "{}", q.text());
    r.wait_for(&second, Duration::from_secs(30));
    // An endpoint that keeps failing is paused by the gateway, which says why.
    let bad = Receiver::start(&["--status", "503"]);
    subscribe(
        &g,
        &app,
        "h",
        &bad,
        json!({"from": "oldest", "backoff_base": "10ms", "backoff_max": "20ms", "max_attempts": 100}),
    );
    let paused = || {
        let t0 = Instant::now();
        loop {
            let s = g.req(
                "GET",
                &format!("/v1/webhooks/{app}/t/v1/h"),
                &[("Appid", &app)],
                b"",
            );
            if s.json()["paused"] == true {
                break s.json();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "not paused: {}",
                s.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let state = paused();
    let why = state["paused_reason"].as_str().unwrap();
    assert!(why.contains("5 failed deliveries in a row"), "{why}");
    assert!(why.contains("503"), "{why}");
    // Resumed while the endpoint still fails, it is paused again after as many failures.
    let q = g.req(
        "POST",
        &format!("/v1/webhooks/{app}/t/v1/h/resume"),
        &[("Appid", &app)],
        b"",
    );
    assert_eq!(q.status, 200, "{}", q.text());
    let again = paused();
    let why = again["paused_reason"].as_str().unwrap();
    assert!(why.contains("5 failed deliveries in a row"), "{why}");
    // Removing it: 204, then 404.
    let d = g.req(
        "DELETE",
        &format!("/v1/webhooks/{app}/t/v1/h"),
        &[("Appid", &app)],
        b"",
    );
    assert_eq!(d.status, 204);
    let d = g.req(
        "GET",
        &format!("/v1/webhooks/{app}/t/v1/h"),
        &[("Appid", &app)],
        b"",
    );
    assert_eq!(d.status, 404);
    // Private addresses are refused unless the operator allows them.
    let strict = gateway(b, &[]);
    let sapp = strict.app("app");
    strict.create_topic(&sapp, "t", 1);
    for url in [
        "http://127.0.0.1:9/x",
        "http://10.1.2.3/x",
        "http://[::1]/x",
        "ftp://a/",
    ] {
        let r = strict.req(
            "PUT",
            &format!("/v1/webhooks/{sapp}/t/v1/g"),
            &[("Appid", &sapp)],
            json!({ "url": url }).to_string().as_bytes(),
        );
        assert_eq!(r.status, 400, "{url}: {}", r.text());
    }
}

/// On Kafka, two gateways of a cluster share a subscription's group: each pushes the messages
/// of the partitions it holds, and in normal operation none is pushed twice.
#[test]
fn kafka_two_gateways_share_the_pushing_and_push_each_message_once() {
    const N: usize = 200;
    let meta = format!("__kateway_meta_wh2_{}", std::process::id());
    let mut env = ENV.to_vec();
    env.push(("KATEWAY_KAFKA_META_TOPIC", &meta));
    let a = Gateway::on(Backend::Kafka, &env);
    let app = a.app("app");
    a.create_topic(&app, "t", 4);
    let pepper = a.data_dir().join("meta").join("pepper");
    env.push(("KATEWAY_AUTH_PEPPER_FILE", pepper.to_str().unwrap()));
    let b = support::kafka::gateway(&support::kafka::shared_brokers(), &env);
    let r = Receiver::start(&[]);
    subscribe(&a, &app, "g", &r, json!({"from": "oldest"}));
    // Both run the endpoint, and the group settles.
    let path = format!("/v1/webhooks/{app}/t/v1/g");
    let t0 = Instant::now();
    while [&a, &b]
        .iter()
        .any(|g| g.req("GET", &path, &[("Appid", &app)], b"").json()["state"].is_null())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "endpoints not running"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(8));
    let mut want = HashSet::new();
    for i in 0..N {
        let via = if i % 2 == 0 { &a } else { &b };
        publish(via, &app, &format!("key=k{i}"), &format!("m{i}"));
        want.insert(format!("m{i}"));
    }
    r.wait_for(&want, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let lines = r.lines();
    assert!(lines.iter().all(|l| l["sig_ok"] == true), "both sign alike");
    assert_eq!(lines.len(), N, "each message pushed once");
    let delivered = |g: &Gateway| {
        g.req("GET", &path, &[("Appid", &app)], b"").json()["state"]["delivered"]
            .as_u64()
            .unwrap()
    };
    let (da, db) = (delivered(&a), delivered(&b));
    assert_eq!(da + db, N as u64);
    assert!(da > 0 && db > 0, "both gateways pushed: {da} and {db}");
}

/// An https endpoint: its certificate is checked against the system's roots (here a test CA
/// given through `SSL_CERT_FILE`, which the system roots loader reads), and one it does not
/// trust gets nothing.
fn https_endpoints_are_checked_against_the_system_roots(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::clients::cert(dir.path(), "receiver");
    let (other, _) = support::clients::cert(dir.path(), "stranger");
    let run = |trusted: &std::path::Path, delivered: bool| {
        let mut env = ENV.to_vec();
        env.push(("SSL_CERT_FILE", trusted.to_str().unwrap()));
        let g = gateway(b, &env);
        let app = g.app("app");
        g.create_topic(&app, "t", 1);
        let r = Receiver::start(&[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        let mut body = json!({"from": "oldest", "timeout": "2s", "backoff_base": "50ms",
            "backoff_max": "100ms", "max_attempts": 1000});
        body["url"] = json!(format!("https://127.0.0.1:{}/hook", r.port));
        let resp = g.req(
            "PUT",
            &format!("/v1/webhooks/{app}/t/v1/g"),
            &[("Appid", &app)],
            body.to_string().as_bytes(),
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        std::fs::write(&r.secret, resp.json()["secret"].as_str().unwrap()).unwrap();
        publish(&g, &app, "", "secure");
        if delivered {
            r.wait_for(
                &HashSet::from(["secure".to_owned()]),
                Duration::from_secs(30),
            );
            assert!(r.lines().iter().all(|l| l["sig_ok"] == true));
        } else {
            let path = format!("/v1/webhooks/{app}/t/v1/g/log");
            let t0 = Instant::now();
            let err = loop {
                let log = g.req("GET", &path, &[("Appid", &app)], b"").json();
                if let Some(a) = log["attempts"].as_array().and_then(|a| a.first()) {
                    break a["error"].as_str().unwrap_or("").to_owned();
                }
                assert!(t0.elapsed() < Duration::from_secs(30), "no attempt logged");
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(err.contains("tls"), "{err}");
            assert!(
                r.lines().is_empty(),
                "nothing reached an untrusted endpoint"
            );
        }
    };
    run(&cert, true);
    run(&other, false);
}

/// An endpoint that sends an interim answer (103 Early Hints) before its 200 has each message
/// delivered once: the interim answer is skipped, not taken for a failure. Then the gateway
/// exits cleanly on SIGTERM.
fn interim_answers_are_skipped(b: Backend) {
    let mut g = gateway(b, ENV);
    let app = g.app("app");
    g.create_topic(&app, "t", 1);
    let r = Receiver::start(&["--interim", "103"]);
    subscribe(
        &g,
        &app,
        "g",
        &r,
        json!({"from": "oldest", "backoff_base": "50ms"}),
    );
    let want: HashSet<String> = (0..5).map(|i| format!("early{i}")).collect();
    for m in &want {
        publish(&g, &app, "", m);
    }
    r.wait_for(&want, Duration::from_secs(30));
    // The receiver logs a request before it answers: the gateway counts it a moment later.
    let t0 = Instant::now();
    let s = loop {
        let s = g
            .req(
                "GET",
                &format!("/v1/webhooks/{app}/t/v1/g"),
                &[("Appid", &app)],
                b"",
            )
            .json();
        if s["state"]["delivered"] == 5 || t0.elapsed() > Duration::from_secs(10) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(s["state"]["delivered"], 5, "{s}");
    assert_eq!(s["state"]["failed_attempts"], 0, "{s}");
    assert_eq!(r.lines().len(), 5, "each message once: {:?}", r.lines());
    // A gateway with a subscription drains and exits on SIGTERM (its dispatcher stops
    // leasing instead of spinning on the empty answers of a draining core).
    assert_eq!(g.terminate(), Some(0), "a clean exit after SIGTERM");
}

/// A subscriber app pushed another app's topic through a grant gets nothing more once the
/// grant is removed, and again once it is given back.
fn a_revoked_grant_stops_the_pushes(b: Backend) {
    let meta = format!(
        "__kateway_meta_whg_{}_{}",
        std::process::id(),
        support::free_port()
    );
    let mut env = ENV.to_vec();
    if b == Backend::Kafka {
        env.push(("KATEWAY_KAFKA_META_TOPIC", &meta));
    }
    let (g, a, ka, z, kz) = Gateway::secured_world(b, &env, "owner", "reader");
    let grant = format!("/v1/grants/{a}/t/v1/{z}");
    assert_eq!(g.req_as(&ka.admin, "PUT", &grant, b"").status, 200);
    let r = Receiver::start(&[]);
    let body = json!({"url": r.url(), "from": "oldest"}).to_string();
    let resp = g.req_as(
        &kz.subscribe,
        "PUT",
        &format!("/v1/webhooks/{a}/t/v1/g"),
        body.as_bytes(),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    std::fs::write(&r.secret, resp.json()["secret"].as_str().unwrap()).unwrap();
    let publish = |m: &str| {
        let p = g.req_as(&ka.publish, "POST", "/v1/msgs/t/v1", m.as_bytes());
        assert_eq!(p.status, 201, "{}", p.text());
    };
    publish("granted");
    r.wait_for(
        &HashSet::from(["granted".to_owned()]),
        Duration::from_secs(30),
    );
    let d = g.req_as(&ka.admin, "DELETE", &grant, b"");
    assert!(d.status == 200 || d.status == 204, "{}", d.text());
    publish("after the revocation");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !r.lines()
            .iter()
            .any(|l| l["body"] == "after the revocation"),
        "nothing is pushed without the grant"
    );
    assert_eq!(g.req_as(&ka.admin, "PUT", &grant, b"").status, 200);
    r.wait_for(
        &HashSet::from(["after the revocation".to_owned()]),
        Duration::from_secs(30),
    );
}

/// Ordered messages waiting behind their key keep their leases while the endpoint is paused
/// for longer than a lease (the endpoint's timeout plus 30 s): after the resume each arrives
/// once, in order, instead of a second copy of each after its lease ran out.
fn waiting_messages_keep_their_leases_through_a_long_pause(b: Backend) {
    let g = gateway(b, ENV);
    let app = g.app("app");
    g.create_topic(&app, "t", 1);
    let down = Receiver::start(&["--status", "503"]);
    let settings = json!({"from": "oldest", "ordered": true, "timeout": "1s",
        "backoff_base": "500ms", "backoff_max": "500ms", "max_attempts": 1000});
    subscribe(&g, &app, "g", &down, settings.clone());
    for i in 0..5 {
        publish(&g, &app, "key=A", &format!("op{i}"));
    }
    // The head fails and retries; the others wait behind it.
    let t0 = Instant::now();
    while down.lines().len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "the head is tried");
        std::thread::sleep(Duration::from_millis(100));
    }
    let path = format!("/v1/webhooks/{app}/t/v1/g");
    let p = g.req("POST", &format!("{path}/pause"), &[("Appid", &app)], b"");
    assert_eq!(p.status, 200, "{}", p.text());
    std::thread::sleep(Duration::from_secs(40));
    let up = Receiver::start(&[]);
    let mut moved = settings;
    moved["url"] = json!(up.url());
    let r = g.req(
        "PUT",
        &path,
        &[("Appid", &app)],
        moved.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::write(&up.secret, std::fs::read(&down.secret).unwrap()).unwrap();
    let q = g.req("POST", &format!("{path}/resume"), &[("Appid", &app)], b"");
    assert_eq!(q.status, 200, "{}", q.text());
    let want: HashSet<String> = (0..5).map(|i| format!("op{i}")).collect();
    up.wait_for(&want, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let bodies: Vec<String> = up
        .lines()
        .iter()
        .map(|l| l["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        bodies,
        ["op0", "op1", "op2", "op3", "op4"],
        "once each, in order"
    );
}
