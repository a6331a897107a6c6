//! `kafka`: what the gateway costs in front of Kafka. Publishes through kateway on the Kafka
//! backend (closed loop, `--conns` HTTP connections) against the same messages produced
//! directly with librdkafka from this process with the same acks and the same number of
//! messages in flight, in alternating rounds (gateway, direct, gateway, ...). Reports messages
//! per second of each, their ratio, and the gateway's CPU time per message beside what the HTTP
//! hop alone costs (the do-nothing server under the same HTTP load) plus what librdkafka costs
//! per message when producing directly.

use crate::client::{self, Count, Load};
use crate::harness::{kateway_binary, machine, median, spread, start, stats};
use crate::scenario::{create_topic, measure};
use futures_util::stream::{FuturesUnordered, StreamExt};
use kateway_kafka_bridge::{Ack, BridgeConfig, Producer};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap brokers.
    #[arg(long, default_value = "127.0.0.1:19092")]
    pub brokers: String,
    /// The kateway binary.
    #[arg(long, default_value = "target/release/kateway")]
    pub kateway: PathBuf,
    /// all (acks=all, idempotent) or local (acks=1).
    #[arg(long, default_value = "all")]
    pub ack: String,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages per HTTP request (an ndjson batch when above 1).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// HTTP connections to the gateway; the direct producer keeps `conns × batch` messages in
    /// flight.
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// Producer linger (`linger.ms`) of both the gateway and the direct producer.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
    /// Gateway cores.
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 2)]
    pub partitions: u32,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 5)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 1)]
    pub warmup_s: u64,
    /// CPU of the HTTP load generator.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-kafka.json")]
    pub out: PathBuf,
}

/// Messages per second produced directly, keeping `conns × batch` messages in flight, and this
/// process's CPU microseconds per message produced (librdkafka's threads and the loop driving
/// them; the HTTP client threads are idle meanwhile).
fn direct(a: &KafkaArgs, topic: &str, payload: &[u8]) -> anyhow::Result<(f64, f64)> {
    let me = std::process::id();
    let cpu0 = crate::procstat::cpu_time(me)?;
    let mut cfg = BridgeConfig::new(a.brokers.clone());
    cfg.linger = Duration::from_millis(a.linger_ms);
    let producer = Producer::new(&cfg, 999).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Delivery reports are served on a thread of their own, as librdkafka's threaded
    // producers do.
    kateway_kafka_bridge::serve_reports_on_thread(producer.reports(), "bench-reports".into())?;
    let ack = if a.ack == "all" { Ack::All } else { Ack::Local };
    let send = || producer.send(topic, None, b"", b"", payload, ack);
    futures_executor::block_on(async {
        let mut inflight = FuturesUnordered::new();
        for _ in 0..a.conns * a.batch.max(1) {
            inflight.push(send().map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        let from = Instant::now() + Duration::from_secs(a.warmup_s);
        let until = from + Duration::from_secs(a.duration_s);
        let (mut counted, mut all) = (0u64, 0u64);
        while let Some(r) = inflight.next().await {
            r.map_err(|e| anyhow::anyhow!("direct produce: {e}"))?;
            all += 1;
            let now = Instant::now();
            if now >= from && now < until {
                counted += 1;
            }
            if now < until {
                inflight.push(send().map_err(|e| anyhow::anyhow!("{e}"))?);
            }
        }
        let cpu = crate::procstat::cpu_time(me)?.saturating_sub(cpu0);
        Ok((
            counted as f64 / a.duration_s as f64,
            cpu.as_secs_f64() * 1e6 / all.max(1) as f64,
        ))
    })
}

pub fn run(a: KafkaArgs) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("kateway-bench-kafka-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let kw = kateway_binary(&a.kateway)?;
    let addr = format!("127.0.0.1:{}", crate::harness::free_port());
    let cpus = format!(
        "0-{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    );
    let linger = format!("{}ms", a.linger_ms);
    let gw = start(
        "kateway",
        &cpus,
        &kw,
        &[
            "serve".into(),
            "--backend".into(),
            "kafka".into(),
            "--brokers".into(),
            a.brokers.clone(),
            "--cores".into(),
            a.cores.to_string(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            tmp.join("kateway").to_string_lossy().into(),
        ],
        &[
            ("KATEWAY_SERVER_PIN_CORES", "false"),
            ("KATEWAY_LOG_LEVEL", "warn"),
            ("KATEWAY_AUTH_ENABLED", "false"),
            ("KATEWAY_KAFKA_LINGER", &linger),
        ],
    )?;
    // The do-nothing HTTP server under the same load: the HTTP hop's own cost.
    let noop_addr = format!("127.0.0.1:{}", crate::harness::free_port());
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let noop = start(
        "noop",
        &cpus,
        &me,
        &[
            "serve-noop".into(),
            "--listen".into(),
            noop_addr.clone(),
            "--cpus".into(),
            "0".into(),
        ],
        &[],
    )?;
    let topic = format!("k{}", std::process::id());
    create_topic(&addr, "bench", &topic, a.partitions)?;
    let kafka_topic = format!("bench.{topic}.v1");
    let payload: Vec<u8> = (0..a.size).map(|i| b'a' + (i % 26) as u8).collect();
    let path = format!("/v1/msgs/{topic}/v1?ack={}", a.ack);
    let (request, count) = if a.batch > 1 {
        let mut body = Vec::with_capacity((a.size + 1) * a.batch);
        for _ in 0..a.batch {
            body.extend_from_slice(&payload);
            body.push(b'\n');
        }
        let h = [("Appid", "bench"), ("Content-Type", "application/x-ndjson")];
        (
            client::request("POST", &path, &h, &body),
            Count::Fixed(a.batch as u64),
        )
    } else {
        (
            client::request("POST", &path, &[("Appid", "bench")], &payload),
            Count::One,
        )
    };
    let load = Load {
        addr: addr.clone(),
        cpus: vec![a.client_cpu],
        conns_per_cpu: a.conns,
        warmup: Duration::from_secs(a.warmup_s),
        duration: Duration::from_secs(a.duration_s),
        rate: None,
        requests: vec![request],
        count,
    };
    let (mut gw_mps, mut gw_cpu_us, mut direct_mps, mut ratios) = (vec![], vec![], vec![], vec![]);
    let (mut direct_cpu_us, mut noop_cpu_us, mut cost_ratios) = (vec![], vec![], vec![]);
    let (mut paced_noop_us, mut paced_ratios) = (vec![], vec![]);
    for round in 0..a.rounds {
        let n = measure(
            &Load {
                addr: noop_addr.clone(),
                ..load.clone()
            },
            Some(noop.child.id()),
        );
        let noop_us = n.cpu_us_per_req() / a.batch as f64;
        let m = measure(&load, Some(gw.child.id()));
        anyhow::ensure!(
            m.outcome.non_2xx == 0 && m.outcome.errors == 0,
            "gateway answered {} non-2xx, {} errors",
            m.outcome.non_2xx,
            m.outcome.errors
        );
        // The do-nothing server again, paced at the gateway's request rate over the same
        // connections: the HTTP hop's cost at the rate the gateway ran at. A saturated server
        // takes many requests per wake-up; one at a third of its peak takes fewer.
        let paced = measure(
            &Load {
                addr: noop_addr.clone(),
                rate: Some(m.outcome.requests as f64 / a.duration_s as f64),
                ..load.clone()
            },
            Some(noop.child.id()),
        );
        let paced_us = paced.cpu_us_per_req() / a.batch as f64;
        let (d, d_us) = direct(&a, &kafka_topic, &payload)?;
        let g = m.outcome.mps();
        let g_us = m.cpu_us_per_msg();
        eprintln!(
            "round {}: gateway {g:.0} msg/s ({g_us:.1} us CPU/msg), direct librdkafka {d:.0} msg/s ({d_us:.1} us CPU/msg), ratio {:.2}; noop {noop_us:.1} us CPU per message's share of a request, {paced_us:.1} us at the gateway's rate",
            round + 1,
            g / d
        );
        gw_mps.push(g);
        gw_cpu_us.push(g_us);
        direct_mps.push(d);
        ratios.push(g / d);
        direct_cpu_us.push(d_us);
        noop_cpu_us.push(noop_us);
        cost_ratios.push(g_us / (noop_us + d_us));
        paced_noop_us.push(paced_us);
        paced_ratios.push(g_us / (paced_us + d_us));
    }
    let buffered = client_metric(&addr, "kateway_handoff_buffered_messages_total")?;
    anyhow::ensure!(
        buffered == 0.0,
        "the gateway buffered {buffered} messages: Kafka was not reachable throughout"
    );
    let (ratio, ratio_lo, ratio_hi) = spread(&ratios);
    println!(
        "kafka ack={} batch={}: gateway {:.0} msg/s, direct librdkafka {:.0} msg/s, ratio {ratio:.2} (min {ratio_lo:.2}, max {ratio_hi:.2}); gateway CPU {:.1} us/msg",
        a.ack,
        a.batch,
        median(&gw_mps),
        median(&direct_mps),
        median(&gw_cpu_us),
    );
    let (cost, cost_lo, cost_hi) = spread(&cost_ratios);
    println!(
        "CPU per message: gateway {:.1} us, HTTP hop (noop) {:.1} us + librdkafka directly {:.1} us; gateway / (noop + direct) {cost:.2} (min {cost_lo:.2}, max {cost_hi:.2})",
        median(&gw_cpu_us),
        median(&noop_cpu_us),
        median(&direct_cpu_us),
    );
    let (paced, paced_lo, paced_hi) = spread(&paced_ratios);
    println!(
        "the same with noop paced at the gateway's request rate: noop {:.1} us; gateway / (noop + direct) {paced:.2} (min {paced_lo:.2}, max {paced_hi:.2})",
        median(&paced_noop_us),
    );
    let report = json!({
        "machine": machine(),
        "settings": {
            "brokers": a.brokers, "ack": a.ack, "size": a.size, "batch": a.batch, "conns": a.conns,
            "gateway_cores": a.cores, "linger_ms": a.linger_ms, "partitions": a.partitions, "rounds": a.rounds,
            "duration_s": a.duration_s, "warmup_s": a.warmup_s,
        },
        "gateway_msgs_per_s": stats(&gw_mps),
        "gateway_cpu_us_per_msg": stats(&gw_cpu_us),
        "direct_msgs_per_s": stats(&direct_mps),
        "ratio": stats(&ratios),
        "direct_cpu_us_per_msg": stats(&direct_cpu_us),
        "noop_cpu_us_per_msg": stats(&noop_cpu_us),
        "gateway_cpu_per_noop_plus_direct": stats(&cost_ratios),
        "noop_paced_cpu_us_per_msg": stats(&paced_noop_us),
        "gateway_cpu_per_paced_noop_plus_direct": stats(&paced_ratios),
    });
    std::fs::write(&a.out, serde_json::to_string_pretty(&report)?)?;
    drop(gw);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn client_metric(addr: &str, name: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN))
}
