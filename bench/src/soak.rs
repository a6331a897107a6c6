//! `soak`: a long run of mixed load against a running kateway, sampling the server's resident
//! memory, open descriptors and latency once per interval, to show that they stay flat. The load
//! is an open loop at a fixed rate cycling through single publishes (`ack=local` and `ack=all`,
//! keyed and not), batch publishes, batch subscribes of two groups, explicit acks and status
//! calls; the topic has a small retention so the disk stays bounded too. Each interval opens new
//! connections, so connection churn is part of the load.

use crate::client::{self, Count, Load};
use crate::procstat;
use std::time::{Duration, Instant};

/// Arguments of `soak`.
#[derive(Clone, Debug, clap::Args)]
pub struct SoakArgs {
    #[arg(long, default_value = "127.0.0.1:9191")]
    pub addr: String,
    /// The server's pid (required: its memory and descriptors are what is sampled).
    #[arg(long)]
    pub pid: u32,
    /// Total duration (`1h`, `10m`, `90s`).
    #[arg(long, default_value = "1h")]
    pub duration: String,
    /// Sampling interval.
    #[arg(long, default_value = "30s")]
    pub interval: String,
    /// Requests per second over all connections.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Connections per client CPU.
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Client CPUs.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub cpus: Vec<usize>,
    /// Where to write the samples (JSON).
    #[arg(long, default_value = "soak-report.json")]
    pub out: std::path::PathBuf,
}

/// One interval's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub t_s: u64,
    pub rss_mib: f64,
    pub fds: usize,
    pub requests: u64,
    pub errors: u64,
    pub non_2xx: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

fn requests() -> Vec<bytes::Bytes> {
    let app = [("Appid", "soak")];
    let sub = [("Appid", "soaksub")];
    let small = vec![b'm'; 100];
    let large = vec![b'L'; 8 << 10];
    let batch: Vec<u8> = (0..50)
        .flat_map(|i| format!("batch message {i:04}\n").into_bytes())
        .collect();
    let nd = [("Appid", "soak"), ("Content-Type", "application/x-ndjson")];
    vec![
        client::request("POST", "/v1/msgs/soak/v1?ack=local", &app, &small),
        client::request("POST", "/v1/msgs/soak/v1?ack=all&key=k1", &app, &small),
        client::request("POST", "/v1/msgs/soak/v1?ack=local&key=k2", &app, &large),
        client::request("POST", "/v1/msgs/soak/v1?ack=all", &nd, &batch),
        client::request(
            "GET",
            "/v1/msgs/soak/soak/v1?group=a&batch=200&wait=0s",
            &sub,
            b"",
        ),
        client::request(
            "GET",
            "/v1/msgs/soak/soak/v1?group=b&batch=50&wait=0s&ack=1",
            &sub,
            b"",
        ),
        client::request(
            "PUT",
            "/v1/offsets/soak/soak/v1/b",
            &sub,
            b"[{\"partition\":0,\"offset\":0}]",
        ),
        client::request("GET", "/v1/status/soak/soak/v1?group=a", &sub, b""),
        client::request("GET", "/v1/status", &[], b""),
    ]
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

pub fn run(a: SoakArgs) -> anyhow::Result<()> {
    let total = kateway_core::units::parse_duration(&a.duration).map_err(anyhow::Error::msg)?;
    let every = kateway_core::units::parse_duration(&a.interval).map_err(anyhow::Error::msg)?;
    // Two partitions, 32 MiB of retention each: the disk stays bounded over the run.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&a.addr)?;
        write!(s, "POST /v1/topics/soak/soak/v1?partitions=2&retention.bytes=32MiB HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        anyhow::ensure!(
            resp.starts_with("HTTP/1.1 201") || resp.starts_with("HTTP/1.1 409"),
            "create topic: {resp}"
        );
    }
    let t0 = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    println!("   t_s   RSS MiB    fds   requests  errors  non-2xx   p50 us   p99 us   max us");
    while t0.elapsed() < total {
        let load = Load {
            addr: a.addr.clone(),
            cpus: a.cpus.clone(),
            conns_per_cpu: a.conns,
            warmup: Duration::ZERO,
            duration: every,
            rate: Some(a.rate),
            requests: requests(),
            count: Count::One,
        };
        let o = client::run(&load);
        let s = Sample {
            t_s: t0.elapsed().as_secs(),
            rss_mib: procstat::rss_bytes(a.pid)? as f64 / (1 << 20) as f64,
            fds: fds(a.pid),
            requests: o.requests,
            errors: o.errors,
            non_2xx: o.non_2xx,
            p50_us: o.p50_us,
            p99_us: o.p99_us,
            max_us: o.max_us,
        };
        println!(
            "{:>6} {:>9.1} {:>6} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8}",
            s.t_s, s.rss_mib, s.fds, s.requests, s.errors, s.non_2xx, s.p50_us, s.p99_us, s.max_us
        );
        samples.push(s);
    }
    // Flat: judged on the second half, after caches and the page-cache-backed log warmed up.
    let half = &samples[samples.len() / 2..];
    let xs: Vec<f64> = half.iter().map(|s| s.t_s as f64 / 3600.0).collect();
    let rss: Vec<f64> = half.iter().map(|s| s.rss_mib).collect();
    let fd: Vec<f64> = half.iter().map(|s| s.fds as f64).collect();
    let p99: Vec<f64> = half.iter().map(|s| s.p99_us as f64).collect();
    let summary = serde_json::json!({
        "duration_s": t0.elapsed().as_secs(),
        "rate": a.rate,
        "requests": samples.iter().map(|s| s.requests).sum::<u64>(),
        "errors": samples.iter().map(|s| s.errors).sum::<u64>(),
        "non_2xx": samples.iter().map(|s| s.non_2xx).sum::<u64>(),
        "rss_mib_first": samples.first().map(|s| s.rss_mib),
        "rss_mib_last": samples.last().map(|s| s.rss_mib),
        "rss_mib_per_hour_second_half": slope(&xs, &rss),
        "fds_per_hour_second_half": slope(&xs, &fd),
        "p99_us_per_hour_second_half": slope(&xs, &p99),
        "samples": samples,
    });
    println!(
        "second half: RSS {:+.1} MiB/h, descriptors {:+.1}/h, p99 {:+.0} us/h",
        summary["rss_mib_per_hour_second_half"]
            .as_f64()
            .unwrap_or(0.0),
        summary["fds_per_hour_second_half"].as_f64().unwrap_or(0.0),
        summary["p99_us_per_hour_second_half"]
            .as_f64()
            .unwrap_or(0.0),
    );
    std::fs::write(&a.out, serde_json::to_vec_pretty(&summary)?)?;
    println!("wrote {}", a.out.display());
    Ok(())
}
