//! `protocols`: what each of the gateway's protocols costs per message. Starts kateway pinned to
//! one CPU, with a certificate generated for the run, and drives it from another CPU in
//! alternating rounds: publish over HTTP/1.1 (the `publish` scenario), HTTP/2 with prior
//! knowledge, HTTP/2 over TLS and WebSocket (optionally `h2load` too), then WebSocket
//! subscribe. Prints and writes (JSON) messages per second, server CPU per message and each
//! one's ratio to HTTP/1.1 publish in the same round. Also runs one of these scenarios for
//! `run --scenario publish-h2|publish-tls|publish-ws|subscribe-ws` against a running server.

use crate::client::{self, Load, Outcome};
use crate::h2client::{self, H2Load};
use crate::h2load::H2load;
use crate::harness::{free_port, kateway_binary, machine, median, start, stats, TempDir};
use crate::scenario::{
    self, create_topic, measure, measure_whole, measure_with, Kind, Measured, RunArgs, Shape,
};
use crate::wsclient::{self, WsLoad, WsSub};
use bytes::{Bytes, BytesMut};
use monoio::io::AsyncWriteRentExt;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How deep each connection of the multiplexed and pipelined scenarios goes.
#[derive(Clone, Debug, clap::Args)]
pub struct Depth {
    /// Requests in flight on each HTTP/2 connection (publish-h2, publish-tls); the gateway
    /// allows 128 by default.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Unacknowledged messages on each WebSocket (publish-ws); the gateway allows 256.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Credit each WebSocket subscriber opens with and grants back as it reads (subscribe-ws).
    #[arg(long, default_value_t = 1024)]
    pub credit: u32,
    /// Messages published before subscribe-ws, which each of its subscribers reads.
    #[arg(long, default_value_t = 500_000)]
    pub messages: u64,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ProtocolsArgs {
    /// The kateway binary.
    #[arg(long, default_value = "target/release/kateway")]
    pub kateway: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 5)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 1)]
    pub warmup_s: u64,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    #[arg(long, default_value = "local")]
    pub ack: String,
    /// HTTP/1.1 connections (publish), one request in flight on each.
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// HTTP/2 connections (publish-h2, publish-tls, h2load), `--streams` in flight on each.
    #[arg(long, default_value_t = 8)]
    pub h2_conns: usize,
    /// WebSockets (publish-ws), `--window` in flight on each.
    #[arg(long, default_value_t = 8)]
    pub ws_conns: usize,
    /// WebSocket subscribers (subscribe-ws), each in a group of its own.
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    #[command(flatten)]
    pub depth: Depth,
    /// Also run nghttp2's h2load with the publish-h2 settings (it must be on the PATH).
    #[arg(long)]
    pub h2load: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-protocols.json")]
    pub out: PathBuf,
}

/// Where and how to run one scenario.
struct Target<'a> {
    addr: &'a str,
    pid: Option<u32>,
    cpus: &'a [usize],
    shape: &'a Shape,
    depth: &'a Depth,
    warmup: Duration,
    duration: Duration,
    /// A folder for h2load's body file.
    scratch: &'a Path,
}

impl Target<'_> {
    /// One measured run of `name` (a scenario's name, or `h2load`) with `conns` connections
    /// (per client CPU); `round` keeps subscriber groups apart.
    fn one(&self, name: &str, conns: usize, round: usize) -> anyhow::Result<Measured> {
        let s = self.shape;
        let (warmup, duration, pid) = (self.warmup, self.duration, self.pid);
        let path = format!("/v1/msgs/{}/v1?ack={}", s.topic, s.ack);
        let h2 = |tls: bool| H2Load {
            addr: self.addr.to_owned(),
            tls,
            cpus: self.cpus.to_vec(),
            conns_per_cpu: conns,
            streams: self.depth.streams,
            warmup,
            duration,
            path: path.clone(),
            appid: s.appid.clone(),
            body: Bytes::from(scenario::payload(s.size)),
        };
        Ok(match name {
            "publish" => {
                let (requests, count) = scenario::requests(Kind::Publish, s, "");
                let load = Load {
                    addr: self.addr.to_owned(),
                    cpus: self.cpus.to_vec(),
                    conns_per_cpu: conns,
                    warmup,
                    duration,
                    rate: None,
                    requests,
                    count,
                };
                measure(&load, pid)
            }
            "publish-h2" => {
                let load = h2(false);
                measure_with(warmup, duration, pid, || h2client::run(&load))
            }
            "publish-tls" => {
                let load = h2(true);
                measure_with(warmup, duration, pid, || h2client::run(&load))
            }
            "h2load" => {
                let body = self.scratch.join("h2load-body");
                std::fs::write(&body, scenario::payload(s.size))?;
                let h = H2load {
                    addr: self.addr,
                    tls: false,
                    cpu: self.cpus[0],
                    conns: conns * self.cpus.len(),
                    streams: self.depth.streams,
                    warmup,
                    duration,
                    path: &path,
                    appid: &s.appid,
                    body: &body,
                };
                let m = measure_with(warmup, duration, pid, || {
                    h.run().unwrap_or_else(|e| {
                        eprintln!("h2load: {e}");
                        Outcome {
                            errors: 1,
                            seconds: duration.as_secs_f64(),
                            ..Default::default()
                        }
                    })
                });
                let _ = std::fs::remove_file(&body);
                m
            }
            "publish-ws" => {
                let load = WsLoad {
                    addr: self.addr.to_owned(),
                    cpus: self.cpus.to_vec(),
                    conns_per_cpu: conns,
                    window: self.depth.window,
                    warmup,
                    duration,
                    path: format!("/v1/ws/msgs/{}/v1?appid={}&ack={}", s.topic, s.appid, s.ack),
                    payload: Bytes::from(scenario::payload(s.size)),
                };
                measure_with(warmup, duration, pid, || wsclient::publish(&load))
            }
            "subscribe-ws" => {
                let me = std::process::id();
                let paths = (0..conns)
                    .map(|i| {
                        format!(
                            "/v1/ws/msgs/{}/{}/v1?appid=benchsub&group=ws{me}-{round}-{i}&credit={}",
                            s.appid, s.topic, self.depth.credit
                        )
                    })
                    .collect();
                let load = WsSub {
                    addr: self.addr.to_owned(),
                    cpu: self.cpus[0],
                    paths,
                    credit: self.depth.credit,
                    expect: self.depth.messages,
                    deadline: Duration::from_secs(120),
                };
                measure_whole(pid, || wsclient::subscribe(&load))
            }
            _ => anyhow::bail!("no scenario {name}"),
        })
    }
}

/// Publishes at least `n` messages of the shape to its topic, in ndjson batches of 100 over one
/// HTTP/1.1 connection.
pub fn prefill(addr: &str, shape: &Shape, n: u64) -> anyhow::Result<()> {
    let batch = Shape {
        batch: 100,
        ..shape.clone()
    };
    let (reqs, _) = scenario::requests(Kind::PublishBatch, &batch, "");
    let (addr, req) = (addr.to_owned(), reqs[0].clone());
    std::thread::spawn(move || {
        client::runtime().block_on(async move {
            let mut s = monoio::net::TcpStream::connect(addr.as_str()).await?;
            let mut rbuf = BytesMut::with_capacity(4096);
            for _ in 0..n.div_ceil(100) {
                let (r, _) = s.write_all(req.clone()).await;
                r?;
                let (status, body) = client::read_response(&mut s, &mut rbuf).await?;
                anyhow::ensure!(
                    (200..300).contains(&status),
                    "prefill answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("prefill thread panicked"))?
}

/// `run` for the scenarios of this module.
pub fn run_cli(a: &RunArgs) -> anyhow::Result<()> {
    use clap::ValueEnum;
    let name = a
        .scenario
        .to_possible_value()
        .expect("a named scenario")
        .get_name()
        .to_owned();
    let scratch =
        TempDir(std::env::temp_dir().join(format!("kateway-bench-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    let t = Target {
        addr: &a.addr,
        pid: a.pid,
        cpus: &a.cpus,
        shape: &a.shape,
        depth: &a.depth,
        warmup: Duration::from_secs(a.warmup_s),
        duration: Duration::from_secs(a.duration_s),
        scratch: &scratch.0,
    };
    if a.scenario == Kind::SubscribeWs {
        eprintln!("publishing {} messages first...", a.depth.messages);
        prefill(&a.addr, &a.shape, a.depth.messages)?;
    }
    let mut names = vec![name];
    if a.h2load && a.scenario == Kind::PublishH2 {
        names.push("h2load".into());
    }
    for name in names {
        if a.scenario == Kind::SubscribeWs {
            eprintln!(
                "running {name} against {}: {} subscribers, {} messages each...",
                a.addr, a.conns, a.depth.messages
            );
        } else {
            eprintln!(
                "running {name} against {} for {}s (+{}s warm-up)...",
                a.addr, a.duration_s, a.warmup_s
            );
        }
        let m = t.one(&name, a.conns, 0)?;
        let o = &m.outcome;
        print!(
            "{name}: messages/s {:.0}  errors {}  non-2xx {}",
            o.mps(),
            o.errors,
            o.non_2xx
        );
        // Neither h2load's summary nor the subscribers time single messages.
        if o.max_us > 0 {
            print!(
                "  p50 {}us  p99 {}us  p99.9 {}us  max {}us",
                o.p50_us, o.p99_us, o.p999_us, o.max_us
            );
        }
        println!();
        if a.pid.is_some() {
            println!(
                "server CPU {:.2}s  {:.2}us/message  {:.0} messages per CPU second",
                m.server_cpu_s,
                m.cpu_us_per_msg(),
                m.outcome.messages as f64 / m.server_cpu_s.max(1e-9)
            );
        }
    }
    Ok(())
}

/// The `protocols` command.
pub fn run(a: ProtocolsArgs) -> anyhow::Result<()> {
    let tmp = TempDir(
        std::env::temp_dir().join(format!("kateway-bench-protocols-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir_all(&tmp.0)?;
    let (cert, key) = crate::tls::self_signed(&tmp.0)?;
    let kw = kateway_binary(&a.kateway)?;
    let addr = format!("127.0.0.1:{}", free_port());
    let kateway = start(
        "kateway",
        &a.server_cpu.to_string(),
        &kw,
        &[
            "serve".into(),
            "--cores".into(),
            "1".into(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            tmp.0.join("kateway").to_string_lossy().into(),
        ],
        &[
            ("KATEWAY_SERVER_PIN_CORES", "false"),
            ("KATEWAY_LOG_LEVEL", "warn"),
            ("KATEWAY_AUTH_ENABLED", "false"),
            ("KATEWAY_TLS_CERT", &cert.to_string_lossy()),
            ("KATEWAY_TLS_KEY", &key.to_string_lossy()),
        ],
    )?;
    create_topic(&addr, "bench", "t", 1)?;
    create_topic(&addr, "bench", "wsub", 1)?;
    let shape = |topic: &str| Shape {
        size: a.size,
        ack: a.ack.clone(),
        keyed: false,
        batch: 100,
        appid: "bench".into(),
        topic: topic.into(),
    };
    let (pub_shape, sub_shape) = (shape("t"), shape("wsub"));
    eprintln!(
        "[subscribe-ws] publishing {} messages first",
        a.depth.messages
    );
    prefill(&addr, &sub_shape, a.depth.messages)?;
    let cpus = [a.client_cpu];
    let publishing = Target {
        addr: &addr,
        pid: Some(kateway.child.id()),
        cpus: &cpus,
        shape: &pub_shape,
        depth: &a.depth,
        warmup: Duration::from_secs(a.warmup_s),
        duration: Duration::from_secs(a.duration_s),
        scratch: &tmp.0,
    };
    let subscribing = Target {
        shape: &sub_shape,
        ..publishing
    };
    let d = &a.depth;
    let mut rows: Vec<(&str, usize, String, Vec<Measured>)> = vec![
        (
            "publish",
            a.conns,
            format!("{} connections", a.conns),
            vec![],
        ),
        (
            "publish-h2",
            a.h2_conns,
            format!("{} connections × {} streams", a.h2_conns, d.streams),
            vec![],
        ),
        (
            "publish-tls",
            a.h2_conns,
            format!("{} TLS h2 connections × {} streams", a.h2_conns, d.streams),
            vec![],
        ),
        (
            "publish-ws",
            a.ws_conns,
            format!("{} sockets × window {}", a.ws_conns, d.window),
            vec![],
        ),
    ];
    if a.h2load {
        rows.push((
            "h2load",
            a.h2_conns,
            format!("h2load, {} connections × {} streams", a.h2_conns, d.streams),
            vec![],
        ));
    }
    let publishes = rows.len();
    rows.push((
        "subscribe-ws",
        a.subscribers,
        format!(
            "{} subscribers × {} messages, credit {}",
            a.subscribers, d.messages, d.credit
        ),
        vec![],
    ));
    for round in 0..a.rounds {
        for k in 0..rows.len() {
            // The publishes in rotating order, then the subscribers.
            let i = if k < publishes {
                (k + round) % publishes
            } else {
                k
            };
            let (name, conns) = (rows[i].0, rows[i].1);
            eprintln!("[{name}] round {}", round + 1);
            let t = if name == "subscribe-ws" {
                &subscribing
            } else {
                &publishing
            };
            let m = t.one(name, conns, round)?;
            eprintln!(
                "    {:.0} msg/s, {:.2} us CPU/msg, p99 {} us, errors {}, non-2xx {}, foreign CPU {:.2}s",
                m.outcome.mps(),
                m.cpu_us_per_msg(),
                m.outcome.p99_us,
                m.outcome.errors,
                m.outcome.non_2xx,
                m.foreign_cpu_s
            );
            rows[i].3.push(m);
        }
    }
    let mps = |ms: &[Measured]| ms.iter().map(|m| m.outcome.mps()).collect::<Vec<_>>();
    let us = |ms: &[Measured]| ms.iter().map(|m| m.cpu_us_per_msg()).collect::<Vec<_>>();
    let ratio = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a / b).collect::<Vec<_>>();
    let (base_mps, base_us) = (mps(&rows[0].3), us(&rows[0].3));
    let mut report = json!({"machine": machine(), "settings": {
        "rounds": a.rounds, "duration_s": a.duration_s, "warmup_s": a.warmup_s,
        "message_bytes": a.size, "ack": a.ack, "server_cpu": a.server_cpu, "client_cpu": a.client_cpu,
        "kateway": {"cores": 1, "tls": "self-signed, generated for the run"},
        "tls_client": "rustls (ring), ALPN h2, certificate not verified",
    }, "scenarios": {}});
    let mut table = Vec::new();
    for (name, _, what, ms) in &rows {
        let (m, u) = (mps(ms), us(ms));
        let (rm, ru) = (ratio(&m, &base_mps), ratio(&u, &base_us));
        report["scenarios"][*name] = json!({
            "load": what,
            "messages_per_s": stats(&m),
            "cpu_us_per_message": stats(&u),
            "messages_per_cpu_s": stats(&ms.iter().map(|m| m.outcome.messages as f64 / m.server_cpu_s.max(1e-9)).collect::<Vec<_>>()),
            "p99_us": stats(&ms.iter().map(|m| m.outcome.p99_us as f64).collect::<Vec<_>>()),
            "errors": ms.iter().map(|m| m.outcome.errors + m.outcome.non_2xx).sum::<u64>(),
            "ratio_to_publish": {"messages_per_s": stats(&rm), "cpu_us_per_message": stats(&ru)},
        });
        table.push(format!(
            "| {name} | {what} | {:.0} | {:.2} | ×{:.2} | ×{:.2} |",
            median(&m),
            median(&u),
            median(&rm),
            median(&ru)
        ));
    }
    println!("\n| scenario | load | messages/s (median) | server CPU us/message | messages/s ÷ publish | CPU/message ÷ publish |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in &table {
        println!("{r}");
    }
    report["table"] = json!(table);
    std::fs::write(&a.out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("\nreport written to {}", a.out.display());
    Ok(())
}
