//! Test support: start the real `kateway` binary on a free loopback port with its own data
//! directory, on either backend, and a small blocking HTTP/1.1 client over
//! `std::net::TcpStream` (independent of the server's codec, and able to send malformed bytes on
//! purpose).
//!
//! Behaviour tests are written once, as functions taking a [`Backend`], and run on both by
//! [`on_both_backends!`]. On the Kafka backend every test shares the broker `scripts/test`
//! starts, so names that live in Kafka (topics, consumer groups) come from [`Gateway::app`],
//! which makes them unique to the gateway.

#![allow(dead_code)]

pub mod clients;
mod http;
pub mod kafka;

pub use http::{metric_value, records, Conn, Resp};

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where a gateway keeps its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded log store.
    Embedded,
    /// The Apache Kafka broker `scripts/test` starts (`TEST_KAFKA_BROKERS`).
    Kafka,
}

/// Runs each named function, which takes a [`Backend`], as two tests: `embedded::<name>` and
/// `kafka::<name>`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[test]
            fn $name() {
                super::$name($crate::support::Backend::Embedded)
            })*
        }
        mod kafka {
            $(#[test]
            fn $name() {
                super::$name($crate::support::Backend::Kafka)
            })*
        }
    };
}

pub struct Gateway {
    pub child: Option<Child>,
    pub addr: String,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra_env: Vec<(String, String)>,
    /// Run under this open-file limit (soft and hard).
    pub nofile: Option<u64>,
    /// Reactor cores (2 unless a test says otherwise before spawning).
    pub cores: u32,
    /// The backend it runs on.
    pub backend: Backend,
    /// What [`Gateway::app`] appends to names on the Kafka backend.
    suffix: String,
    /// Authentication on, as shipped ([`Gateway::secured`]); the other tests run with it off,
    /// believing the `Appid` header, so that each tests its own subject.
    pub auth: bool,
    /// The operator listener's address, with authentication on.
    pub op_addr: String,
    /// Where the process's stderr goes (inherited when `None`).
    pub stderr_file: Option<PathBuf>,
    /// A configuration file passed with `--config`.
    pub config: Option<PathBuf>,
    /// With authentication on, whether starting waits for the operator key file (a gateway
    /// joining another's metadata makes none).
    pub makes_operator_key: bool,
    /// With authentication on, whether starting waits for the gateway to be ready.
    pub waits_ready: bool,
}

/// A loopback port nothing listens on, never the same one twice in this process (the kernel may
/// hand a released port out again, and two tests starting together would then share it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Files below `dir` (none if it does not exist).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

impl Gateway {
    /// Starts a gateway with 2 cores on a fresh data directory.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let mut g = Self::new_with(env);
        g.spawn();
        g
    }

    /// A started gateway on backend `b`, with extra `KATEWAY_*` settings.
    pub fn on(b: Backend, env: &[(&str, &str)]) -> Self {
        let mut g = Self::new_on(b, env);
        g.spawn();
        g
    }

    /// A gateway on backend `b` and a fresh data directory, not started yet.
    pub fn new_on(b: Backend, env: &[(&str, &str)]) -> Self {
        match b {
            Backend::Embedded => Self::new_with(env),
            Backend::Kafka => kafka::new_gateway(&kafka::shared_brokers(), env),
        }
    }

    /// An app name for this gateway: `name` itself on the embedded store; on Kafka, where every
    /// test shares one broker, `name` with a suffix unique to this gateway (so its topics and
    /// groups, `<app>.<topic>.<ver>` and `<app>.<group>`, are its own).
    pub fn app(&self, name: &str) -> String {
        format!("{name}{}", self.suffix)
    }

    /// Where partition logs live under the data directory: `topics`, or `handoff` (the
    /// hinted-handoff buffer) on the Kafka backend.
    pub fn log_root(&self) -> PathBuf {
        self.data.join(match self.backend {
            Backend::Embedded => "topics",
            Backend::Kafka => "handoff",
        })
    }

    /// Marks this gateway as one on the Kafka backend (names from [`Gateway::app`] get a
    /// suffix unique to it).
    pub fn use_kafka(&mut self) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        self.backend = Backend::Kafka;
        self.suffix = format!(
            "-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
    }

    /// A gateway on a fresh data directory, not started yet.
    pub fn new_with(env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        Gateway {
            child: None,
            addr: String::new(),
            data,
            _tmp: Some(tmp),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            nofile: None,
            cores: 2,
            backend: Backend::Embedded,
            suffix: String::new(),
            auth: false,
            op_addr: String::new(),
            stderr_file: None,
            config: None,
            makes_operator_key: true,
            waits_ready: true,
        }
    }

    /// A started gateway on backend `b` with authentication on, as shipped: every request
    /// needs a key; [`Gateway::operator_key`] is the key it made on its first start.
    pub fn secured(b: Backend, env: &[(&str, &str)]) -> Self {
        let mut g = Self::new_on(b, env);
        g.auth = true;
        g.spawn();
        g
    }

    /// A fresh secured gateway with app `owner`, which has topic `t` (1 partition, created with
    /// its app-admin key), and app `other`, which owns nothing: the gateway, then each app's
    /// name and keys.
    pub fn secured_world(
        b: Backend,
        env: &[(&str, &str)],
        owner: &str,
        other: &str,
    ) -> (Gateway, String, AppKeys, String, AppKeys) {
        let g = Gateway::secured(b, env);
        let (a, z) = (g.app(owner), g.app(other));
        let ka = g.make_app(&a);
        let kz = g.make_app(&z);
        let r = g.req_as(
            &ka.admin,
            "POST",
            &format!("/v1/topics/{a}/t/v1?partitions=1"),
            b"",
        );
        assert_eq!(r.status, 201, "{}", r.text());
        (g, a, ka, z, kz)
    }

    /// The operator key the gateway made on its first start.
    pub fn operator_key(&self) -> String {
        std::fs::read_to_string(self.data.join("operator.key"))
            .expect("the operator key file")
            .trim()
            .to_owned()
    }

    /// A request to the operator listener with the operator key.
    pub fn op(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        let auth = format!("Bearer {}", self.operator_key());
        let mut c = Self::connect_to(&self.op_addr);
        c.req(method, path, &[("Authorization", &auth)], body)
    }

    /// Creates app `app` with a publish, a subscribe and an app-admin key.
    pub fn make_app(&self, app: &str) -> AppKeys {
        let r = self.op("POST", &format!("/v1/apps/{app}"), b"");
        assert_eq!(r.status, 201, "{}", r.text());
        let key = |scope: &str| {
            let r = self.op("POST", &format!("/v1/keys/{app}?scope={scope}"), b"");
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["key"].as_str().unwrap().to_owned()
        };
        AppKeys {
            publish: key("publish"),
            subscribe: key("subscribe"),
            admin: key("app_admin"),
        }
    }

    /// One request on a fresh connection with `key` as a bearer token.
    pub fn req_as(&self, key: &str, method: &str, path: &str, body: &[u8]) -> Resp {
        let auth = format!("Bearer {key}");
        self.req(method, path, &[("Authorization", &auth)], body)
    }

    /// A gateway on data directory `data` (which the caller owns), not started yet.
    pub fn at(data: PathBuf, env: &[(&str, &str)]) -> Self {
        let mut g = Self::new_with(env);
        g.data = data;
        g
    }

    /// The process id of the running gateway.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Runs the gateway on its data directory expecting it to refuse to start: returns its exit
    /// code and what it wrote to stderr.
    pub fn run_to_exit(&mut self) -> (Option<i32>, String) {
        self.run_to_exit_at(&format!("127.0.0.1:{}", free_port()))
    }

    /// [`Gateway::run_to_exit`] listening on `addr`.
    pub fn run_to_exit_at(&mut self, addr: &str) -> (Option<i32>, String) {
        self.addr = addr.to_owned();
        let mut cmd = self.command();
        cmd.stderr(Stdio::piped());
        let child = cmd.spawn().expect("start kateway");
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Spawns the gateway listening on `addr` with stderr piped, without waiting for anything.
    pub fn spawn_at(&mut self, addr: &str) -> std::process::Child {
        self.addr = addr.to_owned();
        let mut cmd = self.command();
        cmd.stderr(Stdio::piped());
        cmd.spawn().expect("start kateway")
    }

    fn command(&self) -> Command {
        self.command_for(&self.data)
    }

    fn command_for(&self, data: &Path) -> Command {
        let bin = env!("CARGO_BIN_EXE_kateway");
        let mut cmd = match self.nofile {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
        };
        cmd.args([
            "serve",
            "--cores",
            &self.cores.to_string(),
            "--listen",
            &self.addr,
            "--data-dir",
        ])
        .arg(data);
        // A test with a configuration file sets the log level there (a reload may change it).
        match &self.config {
            Some(f) => cmd.arg("--config").arg(f),
            None => cmd.env("KATEWAY_LOG_LEVEL", "warn"),
        };
        cmd.env(
            "KATEWAY_AUTH_ENABLED",
            if self.auth { "true" } else { "false" },
        )
        .env("KATEWAY_AUTH_OPERATOR_LISTEN", &self.op_addr)
        // SIGTERM drains at once (the grace before it has a test of its own).
        .env("KATEWAY_SERVER_DRAIN_GRACE", "0s")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        if self.backend == Backend::Kafka {
            cmd.env(
                "KATEWAY_KAFKA_META_TOPIC",
                format!("__kateway_meta{}", self.suffix),
            );
        }
        if let Some(f) = &self.stderr_file {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .expect("stderr file");
            cmd.stderr(f);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Replaces the extra environment the next [`Gateway::spawn`] starts the process with.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.extra_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// (Re)starts the process on the same data directory and a new port.
    pub fn spawn(&mut self) {
        self.addr = format!("127.0.0.1:{}", free_port());
        self.op_addr = if self.auth {
            format!("127.0.0.1:{}", free_port())
        } else {
            String::new()
        };
        self.child = Some(self.command().spawn().expect("start kateway"));
        // Wait (up to about 20 s) for the gateway to answer, and with authentication on (up to
        // 60 s) to have loaded its metadata.
        for _ in 0..1000 {
            if let Ok(r) = self.try_request("GET", "/alive", &[], b"") {
                assert_eq!(r.status, 200);
                if !self.auth || !self.waits_ready {
                    // Any answer to /ready (200, or 503 with a store fault) comes after every
                    // core answered it: each core has recovered its partitions by then, while
                    // /alive is answered by whichever core's listener is bound first.
                    let _ = self.try_request("GET", "/ready", &[], b"");
                    return;
                }
                for _ in 0..3000 {
                    let key = self.data.join("operator.key");
                    let key = key.exists() || !self.makes_operator_key;
                    if self.req("GET", "/ready", &[], b"").status == 200 && key {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                panic!("gateway did not get ready");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not come up");
    }

    /// Starts a successor with `--upgrade` on the same address and data directory and returns
    /// the process it takes over from (still draining). The successor is this gateway's
    /// process from now on.
    pub fn upgrade(&mut self) -> Child {
        let old = self.child.take().expect("running");
        let mut cmd = self.command();
        cmd.arg("--upgrade");
        self.child = Some(cmd.spawn().expect("start kateway"));
        old
    }

    /// Starts `kateway serve --upgrade` the way [`Gateway::upgrade`] does, but with `env` added,
    /// on `data` (or this gateway's directory) and stderr piped, and without making it this
    /// gateway's process: for a successor that is to be refused.
    pub fn successor(&self, env: &[(&str, &str)], data: Option<&Path>) -> Child {
        let mut cmd = self.command_for(data.unwrap_or(&self.data));
        cmd.arg("--upgrade").stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("start kateway")
    }

    /// The id of the process that answers `/v1/status` now.
    pub fn serving_pid(&self) -> u64 {
        let s = self.req("GET", "/v1/status", &[], b"").json();
        s["pid"].as_u64().expect("status names its pid")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        // Wait (up to about 30 s) for the drain to finish.
        for _ in 0..1500 {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not exit after SIGTERM");
    }

    pub fn connect(&self) -> Conn {
        Self::connect_to(&self.addr)
    }

    pub fn connect_to(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = Conn { s, buf: Vec::new() };
        c.send(method, path, headers, body)?;
        c.read_reply(method == "HEAD")
    }

    /// One request on a fresh connection.
    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_request(method, path, headers, body).unwrap()
    }

    pub fn create_topic(&self, appid: &str, topic: &str, partitions: u32) {
        let r = self.req(
            "POST",
            &format!("/v1/topics/{appid}/{topic}/v1?partitions={partitions}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }

    pub fn publish(&self, appid: &str, topic: &str, query: &str, body: &[u8]) -> Resp {
        let r = self.req(
            "POST",
            &format!("/v1/msgs/{topic}/v1?{query}"),
            &[("Appid", appid)],
            body,
        );
        assert!(
            r.status == 201 || r.status == 202,
            "publish: {} {}",
            r.status,
            r.text()
        );
        r
    }

    pub fn sub(
        &self,
        me: &str,
        owner: &str,
        topic: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut h = vec![("Appid", me)];
        h.extend_from_slice(headers);
        self.req(
            "GET",
            &format!("/v1/msgs/{owner}/{topic}/v1?{query}"),
            &h,
            b"",
        )
    }

    /// Subscribes with `query` until the answer is 204; every record of the 200 answers (binary
    /// batch format).
    pub fn drain(
        &self,
        me: &str,
        owner: &str,
        topic: &str,
        query: &str,
    ) -> Vec<(u32, u64, Vec<u8>)> {
        let mut all = Vec::new();
        loop {
            let s = self.sub(me, owner, topic, query, &[]);
            if s.status == 204 {
                return all;
            }
            assert_eq!(s.status, 200, "{}", s.text());
            all.extend(records(&s.body));
        }
    }

    /// The current value of metric `name`.
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.req("GET", "/metrics", &[], b"").text(), name)
    }

    /// Reads metric `name` every 20 ms, at most `tries` times, until `ok` holds; returns the
    /// last value read.
    pub fn metric_until(&self, name: &str, tries: usize, ok: impl Fn(f64) -> bool) -> f64 {
        let mut v = f64::NAN;
        for _ in 0..tries {
            std::thread::sleep(Duration::from_millis(20));
            v = self.metric(name);
            if ok(v) {
                break;
            }
        }
        v
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The keys [`Gateway::make_app`] made.
#[derive(Debug, Clone)]
pub struct AppKeys {
    pub publish: String,
    pub subscribe: String,
    pub admin: String,
}
