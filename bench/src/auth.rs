//! `compare --auth`: what authentication and quotas cost. The same kateway binary twice, with
//! authentication off (the `Appid` header believed) and on (a publish key as a bearer token, and
//! the app under a quota far above the load, so that every request is charged), single 100-byte
//! publishes at `ack=local`, in alternating rounds on one server CPU: the ratio of requests per
//! server CPU second is the cost.

use crate::client::Count;
use crate::client::{self, Load};
use crate::compare::CompareArgs;
use crate::harness::{free_port, median, start, stats, Server};
use crate::scenario::{self, measure, Measured};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// One HTTP/1.1 request on a fresh connection: status and body.
fn call(
    addr: &str,
    method: &str,
    path: &str,
    auth: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

/// The value of `"key"` in a JSON answer.
fn key_of(body: &str) -> anyhow::Result<String> {
    let v: Value = serde_json::from_str(body)?;
    v["key"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no key in {body}"))
}

/// Starts kateway with authentication on and makes app `bench` with topic `t`, a publish key
/// and a quota; returns the server and the key.
fn secured(a: &CompareArgs, kw: &str, dir: &Path) -> anyhow::Result<(Server, String)> {
    let op = format!("127.0.0.1:{}", free_port());
    let s = start(
        "kateway-auth",
        &a.server_cpu.to_string(),
        kw,
        &[
            "serve".into(),
            "--cores".into(),
            "1".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--data-dir".into(),
            dir.to_string_lossy().into(),
        ],
        &[
            ("KATEWAY_SERVER_PIN_CORES", "false"),
            ("KATEWAY_LOG_LEVEL", "warn"),
            ("KATEWAY_AUTH_ENABLED", "true"),
            ("KATEWAY_AUTH_OPERATOR_LISTEN", &op),
        ],
    )?;
    let file = dir.join("operator.key");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() {
        anyhow::ensure!(Instant::now() < deadline, "no operator key");
        std::thread::sleep(Duration::from_millis(50));
    }
    let opkey = std::fs::read_to_string(&file)?.trim().to_owned();
    let ok = |r: (u16, String), what: &str| {
        anyhow::ensure!(r.0 / 100 == 2, "{what}: {} {}", r.0, r.1);
        Ok(r.1)
    };
    ok(
        call(&op, "POST", "/v1/apps/bench", &opkey, b"")?,
        "create app",
    )?;
    let publish = key_of(&ok(
        call(&op, "POST", "/v1/keys/bench?scope=publish", &opkey, b"")?,
        "publish key",
    )?)?;
    let admin = key_of(&ok(
        call(&op, "POST", "/v1/keys/bench?scope=app_admin", &opkey, b"")?,
        "admin key",
    )?)?;
    let quota = br#"{"publish_messages_per_sec":100000000,"publish_bytes_per_sec":100000000000}"#;
    ok(
        call(&op, "PUT", "/v1/quotas/bench", &opkey, quota)?,
        "quota",
    )?;
    ok(
        call(
            &s.addr,
            "POST",
            "/v1/topics/bench/t/v1?partitions=1",
            &admin,
            b"",
        )?,
        "create topic",
    )?;
    Ok((s, publish))
}

/// Runs the comparison; returns the table rows and the report's scenario.
pub fn run(
    a: &CompareArgs,
    kw: &str,
    open: &Server,
    tmp: &Path,
) -> anyhow::Result<(Vec<String>, Value)> {
    let (secured, key) = secured(a, kw, &tmp.join("kateway-auth"))?;
    let payload = scenario::payload(a.size);
    let path = "/v1/msgs/t/v1?ack=local";
    let bearer = format!("Bearer {key}");
    let servers: [(&Server, Vec<(&str, &str)>); 2] = [
        (open, vec![("Appid", "bench")]),
        (&secured, vec![("Authorization", bearer.as_str())]),
    ];
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(), Vec::new()];
    for round in 0..a.rounds {
        for k in 0..2 {
            let i = (k + round) % 2;
            let (s, headers) = &servers[i];
            eprintln!("[publish ack=local, auth] round {} {}", round + 1, s.name);
            let load = Load {
                addr: s.addr.clone(),
                cpus: vec![a.client_cpu],
                conns_per_cpu: a.conns,
                warmup: Duration::from_secs(a.warmup_s),
                duration: Duration::from_secs(a.duration_s),
                rate: None,
                requests: vec![client::request("POST", path, headers, &payload)],
                count: Count::One,
            };
            let m = measure(&load, Some(s.child.id()));
            eprintln!(
                "    {:.0} req/s, {:.2} us CPU/req, non-2xx {}",
                m.outcome.rps(),
                m.cpu_us_per_req(),
                m.outcome.non_2xx + m.outcome.errors
            );
            runs[i].push(m);
        }
    }
    let pcpu = |i: usize| runs[i].iter().map(|m| m.per_cpu()).collect::<Vec<_>>();
    let us = |i: usize| {
        runs[i]
            .iter()
            .map(|m| m.cpu_us_per_req())
            .collect::<Vec<_>>()
    };
    let rps = |i: usize| runs[i].iter().map(|m| m.outcome.rps()).collect::<Vec<_>>();
    let ratio: Vec<f64> = pcpu(1).iter().zip(pcpu(0)).map(|(x, y)| x / y).collect();
    let mut rows = Vec::new();
    for (i, name) in ["kateway (auth off)", "kateway (auth on, quota)"]
        .iter()
        .enumerate()
    {
        rows.push(format!(
            "| publish ack=local, {} conns | {name} | {:.0} | {:.0} | {:.2} | |",
            a.conns,
            median(&rps(i)),
            median(&pcpu(i)),
            median(&us(i)),
        ));
    }
    rows.push(format!(
        "| publish ack=local | **auth on/auth off** | | ×{:.3} (min {:.3}, max {:.3}) | | |",
        median(&ratio),
        ratio.iter().cloned().fold(f64::INFINITY, f64::min),
        ratio.iter().cloned().fold(0.0, f64::max),
    ));
    let errors: u64 = runs
        .iter()
        .flatten()
        .map(|m| m.outcome.errors + m.outcome.non_2xx)
        .sum();
    let v = json!({
        "auth_off": {"requests_per_cpu_s": stats(&pcpu(0)), "cpu_us_per_request": stats(&us(0))},
        "auth_on": {"requests_per_cpu_s": stats(&pcpu(1)), "cpu_us_per_request": stats(&us(1))},
        "auth_on/auth_off": {"per_cpu_s": stats(&ratio)},
        "errors": errors,
    });
    Ok((rows, v))
}
