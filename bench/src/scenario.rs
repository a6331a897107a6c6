//! Scenarios: the requests each one sends and how its responses count as messages, plus the
//! `run` command that drives one of them against a running server.

use crate::client::{self, Count, Load, Outcome};
use crate::procstat;
use bytes::{Bytes, BytesMut};
use std::time::{Duration, Instant};

/// Which load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Kind {
    /// One message per request.
    Publish,
    /// `--batch` messages per request (ndjson).
    PublishBatch,
    /// Batch subscribe (`--batch` per response) from the oldest message.
    Subscribe,
    /// `--idle` idle keep-alive connections, then as many parked long polls: server RSS per each.
    Connections,
    /// Publish at `--rate` (default 10 000/s) and measure publish-to-delivery latency through a
    /// long-polling subscriber.
    E2e,
    /// One message per request over HTTP/2 with prior knowledge (h2c): `--conns` connections
    /// per client CPU, `--streams` requests in flight on each.
    PublishH2,
    /// As publish-h2, over TLS (ALPN h2). The server must have a certificate (`protocols`
    /// starts one that has); the client does not verify it.
    PublishTls,
    /// One message per WebSocket frame: `--conns` sockets per client CPU, `--window`
    /// unacknowledged messages in flight on each.
    PublishWs,
    /// `--messages` are published first (ndjson batches), then `--conns` WebSocket subscribers
    /// in distinct groups each read them all, granting `--credit` as they go.
    SubscribeWs,
}

/// Shape of the messages and the target topic.
#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct Shape {
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// ack=all or ack=local.
    #[arg(long, default_value = "local")]
    pub ack: String,
    /// Use a partition key (cycling over 1024 keys).
    #[arg(long)]
    pub keyed: bool,
    /// Messages per request (publish-batch) or per response (subscribe).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Topic owner app.
    #[arg(long, default_value = "bench")]
    pub appid: String,
    /// Topic.
    #[arg(long, default_value = "t")]
    pub topic: String,
}

/// The payload of every message: `size` letters.
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Requests and counting rule for a scenario.
pub fn requests(kind: Kind, shape: &Shape, group: &str) -> (Vec<Bytes>, Count) {
    let payload = payload(shape.size);
    let app = [("Appid", shape.appid.as_str())];
    match kind {
        Kind::Publish => {
            let keys = if shape.keyed { 1024 } else { 1 };
            let reqs = (0..keys)
                .map(|k| {
                    let key = if shape.keyed {
                        format!("&key=k{k}")
                    } else {
                        String::new()
                    };
                    let path = format!("/v1/msgs/{}/v1?ack={}{key}", shape.topic, shape.ack);
                    client::request("POST", &path, &app, &payload)
                })
                .collect();
            (reqs, Count::One)
        }
        Kind::PublishBatch => {
            let mut body = BytesMut::new();
            for _ in 0..shape.batch {
                body.extend_from_slice(&payload);
                body.extend_from_slice(b"\n");
            }
            let path = format!("/v1/msgs/{}/v1?ack={}", shape.topic, shape.ack);
            let h = [
                ("Appid", shape.appid.as_str()),
                ("Content-Type", "application/x-ndjson"),
            ];
            (
                vec![client::request("POST", &path, &h, &body)],
                Count::Fixed(shape.batch as u64),
            )
        }
        Kind::Connections
        | Kind::E2e
        | Kind::PublishH2
        | Kind::PublishTls
        | Kind::PublishWs
        | Kind::SubscribeWs => unreachable!("not an HTTP/1.1 request loop"),
        Kind::Subscribe => {
            let path = format!(
                "/v1/msgs/{}/{}/v1?group={group}&batch={}&wait=0s",
                shape.appid, shape.topic, shape.batch
            );
            (
                vec![client::request("GET", &path, &[("Appid", "benchsub")], b"")],
                Count::Records,
            )
        }
    }
}

/// Arguments of `run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "publish")]
    pub scenario: Kind,
    #[arg(long, default_value = "127.0.0.1:9191")]
    pub addr: String,
    /// The server's pid, to report its CPU time per request.
    #[arg(long)]
    pub pid: Option<u32>,
    #[command(flatten)]
    pub shape: Shape,
    /// Connections per client CPU.
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// Client CPUs.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub cpus: Vec<usize>,
    #[arg(long, default_value = "10")]
    pub duration_s: u64,
    #[arg(long, default_value = "2")]
    pub warmup_s: u64,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Create the topic first (kateway only).
    #[arg(long)]
    pub create_topic: bool,
    /// Connections (and parked polls) for the `connections` scenario.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    #[command(flatten)]
    pub depth: crate::protocols::Depth,
    /// After publish-h2, run h2load (nghttp2) with the same connections, streams and body
    /// against the same server, for comparison.
    #[arg(long)]
    pub h2load: bool,
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub outcome: Outcome,
    pub server_cpu_s: f64,
    pub foreign_cpu_s: f64,
}

impl Measured {
    /// Requests per server CPU second.
    pub fn per_cpu(&self) -> f64 {
        self.outcome.requests as f64 / self.server_cpu_s.max(1e-9)
    }
    pub fn cpu_us_per_req(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.outcome.requests.max(1) as f64
    }
    /// Server CPU microseconds per message counted.
    pub fn cpu_us_per_msg(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.outcome.messages.max(1) as f64
    }
}

/// Runs a load while measuring the server's CPU time over the measured window.
pub fn measure(load: &Load, pid: Option<u32>) -> Measured {
    measure_with(load.warmup, load.duration, pid, || client::run(load))
}

/// Runs `drive`, a load that starts 200 ms from now and counts what happens after `warmup` for
/// `duration`, while measuring the server's CPU time over that window.
pub fn measure_with(
    warmup: Duration,
    duration: Duration,
    pid: Option<u32>,
    drive: impl FnOnce() -> Outcome,
) -> Measured {
    let me = std::process::id();
    let exclude: Vec<u32> = [Some(me), pid].into_iter().flatten().collect();
    let sampler = pid.map(|pid| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200) + warmup);
            let t0 = Instant::now();
            let c0 = procstat::cpu_time(pid).unwrap_or_default();
            let f0 = procstat::foreign_cpu(&exclude);
            std::thread::sleep(duration);
            let c1 = procstat::cpu_time(pid).unwrap_or_default();
            let f1 = procstat::foreign_cpu(&exclude);
            let scale = duration.as_secs_f64() / t0.elapsed().as_secs_f64();
            (
                (c1 - c0).as_secs_f64() * scale,
                (f1.saturating_sub(f0)).as_secs_f64(),
            )
        })
    });
    let outcome = drive();
    let (server_cpu_s, foreign_cpu_s) = sampler
        .map(|s| s.join().unwrap_or((0.0, 0.0)))
        .unwrap_or((0.0, 0.0));
    Measured {
        outcome,
        server_cpu_s,
        foreign_cpu_s,
    }
}

/// Runs `drive`, a fixed amount of work, measuring the server's CPU time over all of it.
pub fn measure_whole(pid: Option<u32>, drive: impl FnOnce() -> Outcome) -> Measured {
    let exclude: Vec<u32> = [Some(std::process::id()), pid]
        .into_iter()
        .flatten()
        .collect();
    let c0 = pid.map(|p| procstat::cpu_time(p).unwrap_or_default());
    let f0 = procstat::foreign_cpu(&exclude);
    let outcome = drive();
    let server_cpu_s = match (pid, c0) {
        (Some(p), Some(c0)) => (procstat::cpu_time(p).unwrap_or_default() - c0).as_secs_f64(),
        _ => 0.0,
    };
    Measured {
        outcome,
        server_cpu_s,
        foreign_cpu_s: procstat::foreign_cpu(&exclude)
            .saturating_sub(f0)
            .as_secs_f64(),
    }
}

/// Creates a topic on kateway (409 when it exists is fine).
pub fn create_topic(addr: &str, appid: &str, topic: &str, partitions: u32) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "POST /v1/topics/{appid}/{topic}/v1?partitions={partitions} HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    anyhow::ensure!(
        resp.starts_with("HTTP/1.1 201") || resp.starts_with("HTTP/1.1 409"),
        "create topic: {resp}"
    );
    Ok(())
}

pub fn run_cli(a: RunArgs) -> anyhow::Result<()> {
    if a.create_topic {
        create_topic(&a.addr, &a.shape.appid, &a.shape.topic, 1)?;
    }
    match a.scenario {
        Kind::Connections => {
            let pid = a
                .pid
                .ok_or_else(|| anyhow::anyhow!("the connections scenario needs --pid"))?;
            create_topic(&a.addr, "bench", "empty", 1)?;
            let (idle, parked) = crate::memory::connections(pid, &a.addr, a.idle)?;
            println!("server RSS per idle connection {idle:.1} KiB, per parked long poll {parked:.1} KiB ({} each)", a.idle);
            return Ok(());
        }
        Kind::E2e => {
            let rate = a.rate.unwrap_or(10_000.0);
            let cpu = a.cpus.first().copied().unwrap_or(1);
            let warmup = Duration::from_secs(a.warmup_s);
            let r = crate::e2e::run(
                &a.addr,
                cpu,
                rate,
                warmup,
                Duration::from_secs(a.duration_s),
                &a.shape.topic,
            )?;
            println!(
                "end to end at {rate:.0} msg/s: {} messages, p50 {}us  p99 {}us  p99.9 {}us  max {}us",
                r.messages, r.p50_us, r.p99_us, r.p999_us, r.max_us
            );
            return Ok(());
        }
        Kind::PublishH2 | Kind::PublishTls | Kind::PublishWs | Kind::SubscribeWs => {
            return crate::protocols::run_cli(&a);
        }
        _ => {}
    }
    let (requests, count) = requests(a.scenario, &a.shape, &format!("g{}", std::process::id()));
    let load = Load {
        addr: a.addr.clone(),
        cpus: a.cpus.clone(),
        conns_per_cpu: a.conns,
        warmup: Duration::from_secs(a.warmup_s),
        duration: Duration::from_secs(a.duration_s),
        rate: a.rate,
        requests,
        count,
    };
    eprintln!(
        "running {:?} against {} for {}s (+{}s warm-up)...",
        a.scenario, a.addr, a.duration_s, a.warmup_s
    );
    let m = measure(&load, a.pid);
    let o = &m.outcome;
    println!(
        "requests/s {:.0}  messages/s {:.0}  errors {}  non-2xx {}  p50 {}us  p90 {}us  p99 {}us  p99.9 {}us  max {}us",
        o.rps(), o.mps(), o.errors, o.non_2xx, o.p50_us, o.p90_us, o.p99_us, o.p999_us, o.max_us
    );
    if a.pid.is_some() {
        println!(
            "server CPU {:.2}s  {:.2}us/request  {:.0} requests per CPU second",
            m.server_cpu_s,
            m.cpu_us_per_req(),
            m.per_cpu()
        );
    }
    Ok(())
}
