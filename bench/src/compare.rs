//! `compare`: kateway against the `noop` ceiling and the `baseline-tokio` gateway, measured in the
//! same run, with the servers pinned to one CPU and the client to another, in alternating rounds.

use crate::client::{self, Load};
use crate::harness::{free_port, kateway_binary, machine, median, spread, start, stats, TempDir};
use crate::scenario::{self, create_topic, measure, Kind, Measured, Shape};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    /// The kateway binary.
    #[arg(long, default_value = "target/release/kateway")]
    pub kateway: PathBuf,
    /// Another kateway binary (an earlier commit's) to run beside it in the publish scenarios,
    /// reported as `kateway/before`.
    #[arg(long)]
    pub before: Option<PathBuf>,
    /// Only the single-publish scenarios.
    #[arg(long)]
    pub publish_only: bool,
    /// Only what authentication and quotas cost: kateway with them off against kateway with
    /// them on (a bearer key, a quota charged on every request).
    #[arg(long)]
    pub auth: bool,
    /// Only what leased delivery costs (scenario `subscribe-lease`): consuming a topic with
    /// leases and acks of 100 receipts against consuming it with plain offsets, and one ack of
    /// 100 receipts against one publish.
    #[arg(long)]
    pub lease: bool,
    /// Only what delayed publishes cost (scenario `publish-delayed`): server CPU per delayed
    /// publish against an immediate one, and the memory held per 100 000 pending delays.
    #[arg(long)]
    pub delays: bool,
    /// Only what webhook push costs (scenario `webhook-push`): messages per second and server
    /// CPU per pushed message, against leasing and acking the same messages.
    #[arg(long)]
    pub webhooks: bool,
    /// CPU the servers run on.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// CPU the load generator runs on.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Rounds; each round runs every server once per scenario.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 5)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 1)]
    pub warmup_s: u64,
    /// Connections for the closed-loop `ack=local` runs.
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// Connections for the closed-loop `ack=all` runs: group commit amortises each fsync over
    /// the requests waiting for it, so durable throughput needs more requests in flight.
    #[arg(long, default_value_t = 256)]
    pub conns_all: usize,
    /// Idle connections and parked long polls for the memory scenario (each).
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-report.json")]
    pub out: PathBuf,
    /// Message size.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
}

/// Writes back the page cache's dirty data (`sync`), so that what one scenario wrote is not
/// written back during the next one's measurement.
fn settle_writeback() {
    let t = std::time::Instant::now();
    match std::process::Command::new("sync").status() {
        Ok(s) if s.success() => eprintln!("[sync] dirty pages written back in {:?}", t.elapsed()),
        other => eprintln!("[sync] failed ({other:?}): later scenarios may see writeback"),
    }
}

pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let tmp = TempDir(std::env::temp_dir().join(format!("kateway-bench-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir_all(&tmp.0)?;
    let kw = kateway_binary(&a.kateway)?;
    let port = |_: ()| format!("127.0.0.1:{}", free_port());
    let gateway = |name: &'static str, bin: &str| {
        start(
            name,
            &a.server_cpu.to_string(),
            bin,
            &[
                "serve".into(),
                "--cores".into(),
                "1".into(),
                "--listen".into(),
                port(()),
                "--data-dir".into(),
                tmp.0.join(name).to_string_lossy().into(),
            ],
            &[
                ("KATEWAY_SERVER_PIN_CORES", "false"),
                ("KATEWAY_LOG_LEVEL", "warn"),
                ("KATEWAY_AUTH_ENABLED", "false"),
                ("KATEWAY_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "true"),
            ],
        )
    };
    let kateway = gateway("kateway", &kw)?;
    let before = match &a.before {
        Some(b) => {
            let s = gateway("before", &b.to_string_lossy())?;
            create_topic(&s.addr, "bench", "t", 1)?;
            Some(s)
        }
        None => None,
    };
    let noop = start(
        "noop",
        &a.server_cpu.to_string(),
        &me,
        &[
            "serve-noop".into(),
            "--listen".into(),
            port(()),
            "--cpus".into(),
            a.server_cpu.to_string(),
        ],
        &[],
    )?;
    let baseline = start(
        "baseline-tokio",
        &a.server_cpu.to_string(),
        &me,
        &[
            "serve-baseline".into(),
            "--listen".into(),
            port(()),
            "--threads".into(),
            "1".into(),
            "--data".into(),
            tmp.0.join("baseline").to_string_lossy().into(),
        ],
        &[],
    )?;
    create_topic(&kateway.addr, "bench", "t", 1)?;
    create_topic(&kateway.addr, "bench", "empty", 1)?;
    if a.lease {
        let (rows, v) = crate::lease::run(&a, &kateway)?;
        let report = json!({"machine": machine(), "settings": {
            "rounds": a.rounds, "message_bytes": a.size, "server_cpu": a.server_cpu,
            "client_cpu": a.client_cpu}, "scenarios": {"subscribe-lease": v}});
        return finish(&a, report, &rows);
    }
    if a.webhooks {
        let (rows, v) = crate::webhooks::run(&a, &kateway)?;
        let report = json!({"machine": machine(), "settings": {
            "rounds": a.rounds, "message_bytes": a.size, "server_cpu": a.server_cpu,
            "client_cpu": a.client_cpu}, "scenarios": {"webhook-push": v}});
        return finish(&a, report, &rows);
    }
    if a.delays {
        let (rows, v) = crate::delays::run(&a, &kateway)?;
        let report = json!({"machine": machine(), "settings": {
            "message_bytes": a.size, "server_cpu": a.server_cpu,
            "client_cpu": a.client_cpu}, "scenarios": {"publish-delayed": v}});
        return finish(&a, report, &rows);
    }
    if a.auth {
        let (rows, v) = crate::auth::run(&a, &kw, &kateway, &tmp.0)?;
        let report = json!({"machine": machine(), "settings": {
            "rounds": a.rounds, "duration_s": a.duration_s, "warmup_s": a.warmup_s,
            "conns": a.conns, "message_bytes": a.size, "server_cpu": a.server_cpu,
            "client_cpu": a.client_cpu}, "scenarios": {"auth": v}});
        return finish(&a, report, &rows);
    }
    let mut servers = vec![&kateway, &noop, &baseline];
    servers.extend(before.as_ref());
    let load =
        |addr: &str, kind: Kind, shape: &Shape, group: &str, conns: usize, rate: Option<f64>| {
            let (requests, count) = scenario::requests(kind, shape, group);
            Load {
                addr: addr.to_owned(),
                cpus: vec![a.client_cpu],
                conns_per_cpu: conns,
                warmup: Duration::from_secs(a.warmup_s),
                duration: Duration::from_secs(a.duration_s),
                rate,
                requests,
                count,
            }
        };
    let shape = |ack: &str| Shape {
        size: a.size,
        ack: ack.into(),
        keyed: false,
        batch: 100,
        appid: "bench".into(),
        topic: "t".into(),
    };
    let mut report = json!({"machine": machine(), "settings": {
        "rounds": a.rounds, "duration_s": a.duration_s, "warmup_s": a.warmup_s, "conns_ack_local": a.conns, "conns_ack_all": a.conns_all,
        "message_bytes": a.size, "server_cpu": a.server_cpu, "client_cpu": a.client_cpu,
        "kateway": {"cores": 1, "fsync_interval": "50ms (default)"},
    }, "scenarios": {}});
    let mut rows: Vec<String> = Vec::new();

    // Single publish, both durabilities, the three servers in alternating order.
    let (mut kateway_local_peak, mut kateway_all_peak) = (0.0, 0.0);
    for ack in ["local", "all"] {
        let mut runs: Vec<(&str, Vec<Measured>)> =
            servers.iter().map(|s| (s.name, Vec::new())).collect();
        for round in 0..a.rounds {
            for k in 0..servers.len() {
                let i = (k + round) % servers.len();
                let s = servers[i];
                eprintln!("[publish ack={ack}] round {} {}", round + 1, s.name);
                let m = measure(
                    &load(
                        &s.addr,
                        Kind::Publish,
                        &shape(ack),
                        "",
                        if ack == "all" { a.conns_all } else { a.conns },
                        None,
                    ),
                    Some(s.child.id()),
                );
                eprintln!(
                    "    {:.0} req/s, {:.2} us CPU/req, p99 {} us, foreign CPU {:.2}s",
                    m.outcome.rps(),
                    m.cpu_us_per_req(),
                    m.outcome.p99_us,
                    m.foreign_cpu_s
                );
                runs[i].1.push(m);
            }
        }
        let rps = |i: usize| {
            runs[i]
                .1
                .iter()
                .map(|m| m.outcome.rps())
                .collect::<Vec<_>>()
        };
        let pcpu = |i: usize| runs[i].1.iter().map(|m| m.per_cpu()).collect::<Vec<_>>();
        let ratio = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a / b).collect::<Vec<_>>();
        if ack == "local" {
            kateway_local_peak = median(&rps(0));
        } else {
            kateway_all_peak = median(&rps(0));
        }
        let mut sc = json!({});
        for (i, (name, ms)) in runs.iter().enumerate() {
            sc[*name] = json!({
                "requests_per_s": stats(&rps(i)),
                "requests_per_cpu_s": stats(&pcpu(i)),
                "cpu_us_per_request": stats(&ms.iter().map(|m| m.cpu_us_per_req()).collect::<Vec<_>>()),
                "p99_us": stats(&ms.iter().map(|m| m.outcome.p99_us as f64).collect::<Vec<_>>()),
                "errors": ms.iter().map(|m| m.outcome.errors + m.outcome.non_2xx).sum::<u64>(),
            });
            rows.push(format!(
                "| publish ack={ack}, {} conns | {name} | {:.0} | {:.0} | {:.2} | {:.0} |",
                if ack == "all" { a.conns_all } else { a.conns },
                median(&rps(i)),
                median(&pcpu(i)),
                median(&ms.iter().map(|m| m.cpu_us_per_req()).collect::<Vec<_>>()),
                median(
                    &ms.iter()
                        .map(|m| m.outcome.p99_us as f64)
                        .collect::<Vec<_>>()
                ),
            ));
        }
        let mut r = json!({
            "kateway/noop": {"requests_per_s": stats(&ratio(&rps(0), &rps(1))), "per_cpu_s": stats(&ratio(&pcpu(0), &pcpu(1)))},
            "kateway/baseline-tokio": {"requests_per_s": stats(&ratio(&rps(0), &rps(2))), "per_cpu_s": stats(&ratio(&pcpu(0), &pcpu(2)))},
        });
        if servers.len() > 3 {
            r["kateway/before"] = json!({"requests_per_s": stats(&ratio(&rps(0), &rps(3))), "per_cpu_s": stats(&ratio(&pcpu(0), &pcpu(3)))});
        }
        for (k, v) in r.as_object().unwrap() {
            rows.push(format!(
                "| publish ack={ack} | **{k}** | ×{:.2} | ×{:.2} (min {:.2}, max {:.2}) | | |",
                v["requests_per_s"]["median"].as_f64().unwrap(),
                v["per_cpu_s"]["median"].as_f64().unwrap(),
                v["per_cpu_s"]["min"].as_f64().unwrap(),
                v["per_cpu_s"]["max"].as_f64().unwrap(),
            ));
        }
        sc["ratios"] = r;
        report["scenarios"][format!("publish_ack_{ack}")] = sc;
    }

    if a.publish_only {
        return finish(&a, report, &rows);
    }

    // Batch publish (100 per request) and batch subscribe (100 per response), kateway only.
    settle_writeback();
    for (label, kind, ack) in [
        ("publish-batch ack=local", Kind::PublishBatch, "local"),
        ("subscribe batch=100", Kind::Subscribe, "local"),
    ] {
        let mut ms = Vec::new();
        for round in 0..a.rounds {
            eprintln!("[{label}] round {}", round + 1);
            let group = format!("sub{round}");
            let m = measure(
                &load(&kateway.addr, kind, &shape(ack), &group, 8, None),
                Some(kateway.child.id()),
            );
            eprintln!(
                "    {:.0} msg/s, {:.2} us CPU/req",
                m.outcome.mps(),
                m.cpu_us_per_req()
            );
            ms.push(m);
        }
        let mps: Vec<f64> = ms.iter().map(|m| m.outcome.mps()).collect();
        let per_cpu: Vec<f64> = ms
            .iter()
            .map(|m| m.outcome.messages as f64 / m.server_cpu_s.max(1e-9))
            .collect();
        rows.push(format!(
            "| {label} | kateway | {:.0} msg/s | {:.0} msg/CPU-s | | |",
            median(&mps),
            median(&per_cpu)
        ));
        report["scenarios"][label] =
            json!({"messages_per_s": stats(&mps), "messages_per_cpu_s": stats(&per_cpu)});
    }

    // The batch rounds leave gigabytes of dirty page cache: written back during the latency
    // runs, they would stall kateway's writes (dirty throttling) and take the CPUs.
    settle_writeback();
    // Open-loop latency at half of kateway's peak (ack=local), kateway and the noop ceiling
    // driven identically, so the client's own contribution is visible; alternating round by
    // round, as the other scenarios do, so that the host's moods fall on both alike.
    let rate = (kateway_local_peak / 2.0).max(1000.0);
    let mut lat = json!({"rate": rate});
    let servers = [&kateway, &noop];
    let before = crate::stages::read(&kateway.addr).ok();
    let mut ms: Vec<Vec<Measured>> = vec![Vec::new(); servers.len()];
    for round in 0..a.rounds {
        for (i, s) in servers.iter().enumerate() {
            eprintln!(
                "[latency ack=local at {rate:.0} req/s] round {} {}",
                round + 1,
                s.name
            );
            let m = measure(
                &load(&s.addr, Kind::Publish, &shape("local"), "", 32, Some(rate)),
                Some(s.child.id()),
            );
            eprintln!(
                "    p50 {} us, p99 {} us, p99.9 {} us",
                m.outcome.p50_us, m.outcome.p99_us, m.outcome.p999_us
            );
            ms[i].push(m);
        }
    }
    let q = |ms: &[Measured], f: fn(&client::Outcome) -> u64| {
        ms.iter().map(|m| f(&m.outcome) as f64).collect::<Vec<_>>()
    };
    for (s, ms) in servers.iter().zip(&ms) {
        rows.push(format!(
            "| latency, open loop {rate:.0} req/s ack=local | {} | p50 {:.0} us | p99 {:.0} us | p99.9 {:.0} us | max {:.0} us |",
            s.name,
            median(&q(ms, |o| o.p50_us)),
            median(&q(ms, |o| o.p99_us)),
            median(&q(ms, |o| o.p999_us)),
            median(&q(ms, |o| o.max_us)),
        ));
        lat[s.name] = json!({"p50_us": stats(&q(ms, |o| o.p50_us)), "p90_us": stats(&q(ms, |o| o.p90_us)), "p99_us": stats(&q(ms, |o| o.p99_us)), "p999_us": stats(&q(ms, |o| o.p999_us)), "max_us": stats(&q(ms, |o| o.max_us))});
    }
    // p99 of kateway over noop's, round by round (side by side in time).
    let ratios: Vec<f64> = q(&ms[0], |o| o.p99_us)
        .iter()
        .zip(q(&ms[1], |o| o.p99_us))
        .map(|(k, n)| k / n.max(1.0))
        .collect();
    let (mid, lo, hi) = spread(&ratios);
    rows.push(format!(
        "| latency ack=local p99 | **kateway/noop** | ×{mid:.2} (min {lo:.2}, max {hi:.2}) | | | |"
    ));
    lat["p99_kateway_over_noop"] = stats(&ratios);
    if let Some(b) = before {
        let st = crate::stages::between(&b, &crate::stages::read(&kateway.addr)?);
        rows.extend(crate::stages::rows("stages, ack=local", &st));
        lat["kateway_stages"] = stage_json(&st);
    }
    report["scenarios"]["latency_half_peak"] = lat;

    // The same for ack=all at half of its peak (kateway only): p99 beside the fsync's.
    let rate = (kateway_all_peak / 2.0).max(1000.0);
    let before = crate::stages::read(&kateway.addr).ok();
    let mut ms = Vec::new();
    for round in 0..a.rounds {
        eprintln!("[latency ack=all at {rate:.0} req/s] round {}", round + 1);
        let conns = a.conns_all.max(32);
        let m = measure(
            &load(
                &kateway.addr,
                Kind::Publish,
                &shape("all"),
                "",
                conns,
                Some(rate),
            ),
            Some(kateway.child.id()),
        );
        ms.push(m.outcome.p99_us as f64);
    }
    rows.push(format!(
        "| latency, open loop {rate:.0} req/s ack=all | kateway | | p99 {:.0} us | | |",
        median(&ms)
    ));
    let mut lat_all = json!({"rate": rate, "p99_us": stats(&ms)});
    if let (Some(b), Ok(after)) = (before, crate::stages::read(&kateway.addr)) {
        let st = crate::stages::between(&b, &after);
        rows.extend(crate::stages::rows("stages, ack=all", &st));
        lat_all["kateway_stages"] = stage_json(&st);
    }
    report["scenarios"]["latency_half_peak_ack_all"] = lat_all;

    // End-to-end: publish -> long-polling subscriber.
    let e2e_rate = 10_000.0;
    let mut e2es = Vec::new();
    for round in 0..a.rounds {
        eprintln!("[e2e at {e2e_rate:.0} msg/s] round {}", round + 1);
        let r = crate::e2e::run(
            &kateway.addr,
            a.client_cpu,
            e2e_rate,
            Duration::from_secs(a.warmup_s),
            Duration::from_secs(a.duration_s),
            "t",
        )?;
        eprintln!(
            "    {} messages, p50 {} us, p99 {} us, max {} us",
            r.messages, r.p50_us, r.p99_us, r.max_us
        );
        e2es.push(r);
    }
    let eq = |f: fn(&crate::e2e::E2e) -> u64| e2es.iter().map(|e| f(e) as f64).collect::<Vec<_>>();
    rows.push(format!(
        "| end to end, {e2e_rate:.0} msg/s, publish -> long poll | kateway | p50 {:.0} us | p99 {:.0} us | p99.9 {:.0} us | max {:.0} us |",
        median(&eq(|e| e.p50_us)),
        median(&eq(|e| e.p99_us)),
        median(&eq(|e| e.p999_us)),
        median(&eq(|e| e.max_us)),
    ));
    report["scenarios"]["e2e"] = json!({"rate": e2e_rate, "p50_us": stats(&eq(|e| e.p50_us)), "p99_us": stats(&eq(|e| e.p99_us)), "p999_us": stats(&eq(|e| e.p999_us)), "max_us": stats(&eq(|e| e.max_us)), "messages": eq(|e| e.messages)});

    // Both processes need a descriptor per connection; stay within what this host allows.
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(s, _)| s) as usize;
    let idle = a.idle.min(limit.saturating_sub(512) / 2);
    if idle < a.idle {
        eprintln!(
            "[connections] open-file limit {limit}: measuring {idle} of each instead of {}",
            a.idle
        );
    }
    if idle > 0 {
        let (idle_kib, parked_kib) =
            crate::memory::connections(kateway.child.id(), &kateway.addr, idle)?;
        rows.push(format!(
            "| memory, {} idle connections | kateway | {idle_kib:.1} KiB each | | | |",
            idle
        ));
        rows.push(format!(
            "| memory, {} parked long polls | kateway | {parked_kib:.1} KiB each | | | |",
            idle
        ));
        report["scenarios"]["connections"] = json!({"count": idle, "rss_kib_per_idle_connection": idle_kib, "rss_kib_per_parked_poll": parked_kib});
    }

    finish(&a, report, &rows)
}

/// Prints the table and writes the JSON report (the servers stop as their handles drop).
fn finish(a: &CompareArgs, mut report: Value, rows: &[String]) -> anyhow::Result<()> {
    println!("\n| scenario | server | requests/s (median) | per server CPU second | CPU us/request | p99 us |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    report["table"] = json!(rows);
    std::fs::write(&a.out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("\nreport written to {}", a.out.display());
    Ok(())
}

/// The stage quantiles as JSON: `{stage: {count, p50_us, p99_us}}`.
fn stage_json(st: &[(&'static str, u64, f64, f64)]) -> Value {
    st.iter()
        .map(|(name, n, p50, p99)| {
            (
                name.to_string(),
                json!({"count": n, "p50_us": p50, "p99_us": p99}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}
