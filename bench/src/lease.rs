//! `compare --lease` (scenario `subscribe-lease`): what leased delivery costs. On one kateway
//! (one server CPU), in alternating rounds, a fresh topic of messages is consumed whole in
//! batches of 100, by one consumer and then by four at once, with plain offsets (auto-ack: one
//! `GET` per batch) or with leases (one `GET ...&ack=lease` and one `POST .../ack` with either
//! the batch's 100 receipts or its batch receipt): messages per server CPU second, and the
//! ratios to offsets. Then the cost of one ack of 100 receipts and of one ack by batch receipt
//! against one single-message publish and one publish of 100 messages, in server CPU per
//! request.

use crate::client::Outcome;
use crate::compare::CompareArgs;
use crate::harness::{median, stats, Server};
use crate::scenario::{self, measure_whole};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Messages per round and mode.
const N: usize = 200_000;
/// Messages per batch (subscribe and ack).
const BATCH: usize = 100;

/// A keep-alive HTTP/1.1 connection.
pub(crate) struct Conn {
    r: BufReader<TcpStream>,
    /// The last reply's `X-Batch-Receipt`.
    pub(crate) batch: Option<String>,
}

impl Conn {
    pub(crate) fn new(addr: &str) -> anyhow::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Self {
            r: BufReader::new(s),
            batch: None,
        })
    }

    /// One request; the status and the body (`Content-Length` or chunked).
    pub(crate) fn call(&mut self, head: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        self.call_as(head, "application/json", body)
    }

    /// [`Conn::call`] with a body of `content_type`.
    pub(crate) fn call_as(
        &mut self,
        head: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let s = self.r.get_mut();
        write!(
            s,
            "{head} HTTP/1.1\r\nHost: b\r\nAppid: bench\r\nAccept: application/x-ndjson\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        s.write_all(body)?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (mut len, mut chunked) = (0, false);
        self.batch = None;
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            let l = line.to_ascii_lowercase();
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
            chunked |= l.starts_with("transfer-encoding") && l.contains("chunked");
            if l.starts_with("x-batch-receipt:") {
                self.batch = line.split_once(':').map(|(_, v)| v.trim().to_owned());
            }
        }
        if !chunked {
            let mut body = vec![0; len];
            self.r.read_exact(&mut body)?;
            return Ok((status, body));
        }
        let mut body = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)?;
            let mut chunk = vec![0; n + 2];
            self.r.read_exact(&mut chunk)?;
            if n == 0 {
                return Ok((status, body));
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Publishes `n` messages of `size` bytes to `bench.<topic>` in batches (not measured).
pub(crate) fn fill(addr: &str, topic: &str, n: usize, size: usize) -> anyhow::Result<()> {
    scenario::create_topic(addr, "bench", topic, 4)?;
    let mut c = Conn::new(addr)?;
    let line = "x".repeat(size);
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let body = format!("{line}\n").repeat(k);
        let head = format!("POST /v1/msgs/{topic}/v1?ack=local");
        let (st, _) = c.call_as(&head, "application/x-ndjson", body.as_bytes())?;
        anyhow::ensure!(st == 201, "fill: {st}");
        left -= k;
    }
    Ok(())
}

/// The receipts of a leased batch of JSON lines.
fn receipts(body: &[u8]) -> anyhow::Result<Vec<String>> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l)?;
            v["receipt"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no receipt"))
        })
        .collect()
}

/// How messages are consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Plain offsets, auto-ack.
    Offsets,
    /// Leases, each batch acked with its 100 receipts.
    Receipts,
    /// Leases, each batch acked with its batch receipt.
    Batch,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Offsets, Mode::Receipts, Mode::Batch];

    fn name(self) -> &'static str {
        match self {
            Mode::Offsets => "offsets",
            Mode::Receipts => "leases+receipts",
            Mode::Batch => "leases+batch-receipt",
        }
    }
}

/// One consumer's requests and the `(partition, offset)` of each message it got.
type Consumed = (u64, Vec<(u64, u64)>);

/// Consumes all `n` messages of `bench.<topic>`, leased or not, with `consumers` connections
/// at once (each its own thread); the requests made and the messages. Fails unless every
/// message arrived, and each once.
fn consume(
    addr: &str,
    topic: &str,
    n: usize,
    mode: Mode,
    consumers: usize,
) -> anyhow::Result<Outcome> {
    let leased = mode != Mode::Offsets;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let got = AtomicUsize::new(0);
    let t0 = Instant::now();
    let q = if leased {
        "&ack=lease&visibility=10m"
    } else {
        ""
    };
    let one = || -> anyhow::Result<Consumed> {
        let mut c = Conn::new(addr)?;
        let (mut requests, mut seen) = (0u64, Vec::new());
        while got.load(Ordering::Relaxed) < n {
            let (st, body) = c.call(
                &format!("GET /v1/msgs/bench/{topic}/v1?group=g&batch={BATCH}&wait=1s{q}"),
                b"",
            )?;
            requests += 1;
            anyhow::ensure!(st == 200 || st == 204, "subscribe: {st}");
            anyhow::ensure!(t0.elapsed().as_secs() < 300, "only {got:?} of {n} messages");
            if st == 204 {
                continue;
            }
            let lines: Vec<Value> = body
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(serde_json::from_slice)
                .collect::<Result<_, _>>()?;
            got.fetch_add(lines.len(), Ordering::Relaxed);
            for l in &lines {
                seen.push((
                    l["partition"].as_u64().unwrap_or(u64::MAX),
                    l["offset"].as_u64().unwrap_or(u64::MAX),
                ));
            }
            if leased {
                let r: Vec<&str> = lines.iter().filter_map(|l| l["receipt"].as_str()).collect();
                anyhow::ensure!(r.len() == lines.len(), "a leased message without a receipt");
                let ack = if mode == Mode::Batch {
                    let b = c.batch.take();
                    anyhow::ensure!(b.is_some(), "a leased batch without X-Batch-Receipt");
                    serde_json::to_vec(&json!({ "batch_receipt": b }))?
                } else {
                    serde_json::to_vec(&json!({ "receipts": r }))?
                };
                let (st, _) = c.call(&format!("POST /v1/queue/bench/{topic}/v1/g/ack"), &ack)?;
                anyhow::ensure!(st == 200, "ack: {st}");
                requests += 1;
            }
        }
        Ok((requests, seen))
    };
    let results: Vec<anyhow::Result<Consumed>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..consumers.max(1)).map(|_| sc.spawn(one)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("consumer panicked")))
            })
            .collect()
    });
    let (mut requests, mut all) = (0, Vec::new());
    for r in results {
        let (q, seen) = r?;
        requests += q;
        all.extend(seen);
    }
    let delivered = all.len();
    all.sort_unstable();
    all.dedup();
    anyhow::ensure!(
        all.len() == n && delivered == n,
        "{delivered} deliveries of {} distinct messages, not {n}",
        all.len()
    );
    Ok(Outcome {
        requests,
        messages: delivered as u64,
        seconds: t0.elapsed().as_secs_f64(),
        ..Outcome::default()
    })
}

/// Server CPU per request of `n` requests `call` makes (those answered `ok`).
pub(crate) fn cpu_per_request(pid: Option<u32>, n: usize, mut call: impl FnMut() -> bool) -> f64 {
    let m = measure_whole(pid, || {
        let mut o = Outcome::default();
        for _ in 0..n {
            if call() {
                o.requests += 1;
            }
        }
        o
    });
    m.server_cpu_s * 1e6 / m.outcome.requests.max(1) as f64
}

/// Server CPU microseconds per ack of 100 receipts, per ack by the batch receipt of 100
/// messages, per single-message publish and per publish of 100 messages (`ack=local`), and the
/// ratios of the acks to the publishes measured right after them. `cycles` times up to 16 000
/// messages are leased, then acked (alternately by receipts and by batch receipts) in chunks of
/// [`CHUNK`], each followed by as many single publishes; then as many publishes of 100 are
/// made.
fn ack_cost(s: &Server, size: usize, cycles: usize) -> anyhow::Result<AckCost> {
    let pid = Some(s.child.id());
    let mut cost = AckCost::default();
    let payload = scenario::payload(size);
    let line = format!("{}\n", "x".repeat(size));
    let batch_body = line.repeat(BATCH);
    for cycle in 0..cycles {
        let by_batch = cycle % 2 == 1;
        let topic = format!("ack{cycle}");
        fill(&s.addr, &topic, 16_000, size)?;
        let mut c = Conn::new(&s.addr)?;
        // Lease what the windows hold (a partition's window takes `queue.window` offsets).
        let mut batches = Vec::new();
        loop {
            let (st, body) = c.call(
                &format!("GET /v1/msgs/bench/{topic}/v1?group=g&batch={BATCH}&wait=500ms&ack=lease&visibility=10m"),
                b"",
            )?;
            anyhow::ensure!(st == 200 || st == 204, "lease: {st}");
            if st == 204 {
                break;
            }
            let r = receipts(&body)?;
            batches.push(if by_batch {
                let b = c.batch.take();
                anyhow::ensure!(b.is_some(), "a leased batch without X-Batch-Receipt");
                serde_json::to_vec(&json!({ "batch_receipt": b }))?
            } else {
                serde_json::to_vec(&json!({ "receipts": r }))?
            });
        }
        let head = format!("POST /v1/queue/bench/{topic}/v1/g/ack");
        // Acks and single publishes alternate in chunks, so that both meet the same moments of
        // a noisy machine; each chunk's CPU is read once the server is idle again (what an ack
        // sets off in the background counts for the acks).
        let (mut ack_s, mut publish_s, mut acks, mut publishes) = (0.0, 0.0, 0, 0);
        let server_s = || -> f64 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            pid.and_then(|p| crate::procstat::cpu_time(p).ok())
                .map_or(0.0, |t| t.as_secs_f64())
        };
        for chunk in batches.chunks(CHUNK) {
            let t0 = server_s();
            for b in chunk {
                anyhow::ensure!(matches!(c.call(&head, b), Ok((200, _))), "ack failed");
            }
            let t1 = server_s();
            for _ in chunk {
                let r = c.call("POST /v1/msgs/t/v1?ack=local", &payload);
                anyhow::ensure!(matches!(r, Ok((201, _))), "publish failed");
            }
            let t2 = server_s();
            (ack_s, publish_s) = (ack_s + t1 - t0, publish_s + t2 - t1);
            (acks, publishes) = (acks + chunk.len(), publishes + chunk.len());
        }
        let ack = ack_s * 1e6 / acks.max(1) as f64;
        let publish = publish_s * 1e6 / publishes.max(1) as f64;
        let publish_100 = cpu_per_request(pid, batches.len(), || {
            let head = "POST /v1/msgs/t/v1?ack=local";
            let r = c.call_as(head, "application/x-ndjson", batch_body.as_bytes());
            matches!(r, Ok((201, _)))
        });
        if by_batch {
            cost.batch.push(ack);
            cost.batch_ratio.push(ack / publish);
        } else {
            cost.receipts.push(ack);
            cost.receipts_ratio.push(ack / publish);
        }
        cost.publish.push(publish);
        cost.publish_100.push(publish_100);
    }
    Ok(cost)
}

/// Server CPU microseconds per request, one entry per measurement, and the ratio of each ack
/// measurement to the single publishes measured right after it.
#[derive(Default)]
struct AckCost {
    /// Acks of 100 receipts.
    receipts: Vec<f64>,
    receipts_ratio: Vec<f64>,
    /// Acks by the batch receipt of 100 messages.
    batch: Vec<f64>,
    batch_ratio: Vec<f64>,
    /// Single-message publishes.
    publish: Vec<f64>,
    /// Publishes of 100 messages.
    publish_100: Vec<f64>,
}

/// Runs the scenario on `kateway`; returns the table rows and the report's scenario.
pub fn run(a: &CompareArgs, kateway: &Server) -> anyhow::Result<(Vec<String>, Value)> {
    let mut rows = Vec::new();
    let mut report = serde_json::Map::new();
    for consumers in CONSUMERS {
        let (r, v) = ratio(a, kateway, consumers)?;
        rows.extend(r);
        report.insert(format!("consumers_{consumers}"), v);
    }
    eprintln!("[subscribe-lease] ack of {BATCH} receipts against one publish");
    let cost = ack_cost(kateway, a.size, 12)?;
    let m = crate::harness::spread;
    let us = |v: &[f64]| {
        let (med, lo, hi) = m(v);
        format!("{med:.1} µs server CPU (min {lo:.1}, max {hi:.1})")
    };
    let ratio = |v: &[f64]| {
        let (med, lo, hi) = m(v);
        format!("×{med:.2} (min {lo:.2}, max {hi:.2})")
    };
    rows.extend([
        format!("| one ack of {BATCH} receipts | {} |", us(&cost.receipts)),
        format!(
            "| one ack by the batch receipt of {BATCH} messages | {} |",
            us(&cost.batch)
        ),
        format!(
            "| one single-message publish (ack=local) | {} |",
            us(&cost.publish)
        ),
        format!(
            "| one publish of {BATCH} messages (ack=local) | {} |",
            us(&cost.publish_100)
        ),
        format!(
            "| **ack of {BATCH} receipts ÷ single publish** (each against the publishes right after it) | {} |",
            ratio(&cost.receipts_ratio)
        ),
        format!(
            "| **ack by batch receipt ÷ single publish** | {} |",
            ratio(&cost.batch_ratio)
        ),
    ]);
    report.insert("ack_100_cpu_us".into(), json!(cost.receipts));
    report.insert("ack_batch_receipt_100_cpu_us".into(), json!(cost.batch));
    report.insert("publish_cpu_us".into(), json!(cost.publish));
    report.insert("publish_100_cpu_us".into(), json!(cost.publish_100));
    report.insert("ack_100_per_publish".into(), json!(cost.receipts_ratio));
    report.insert(
        "ack_batch_receipt_per_publish".into(),
        json!(cost.batch_ratio),
    );
    report.insert("messages_per_round".into(), json!(N));
    report.insert("batch".into(), json!(BATCH));
    Ok((rows, Value::Object(report)))
}

/// Acks (then as many single publishes) measured together in the ack cost.
const CHUNK: usize = 16;

/// Consumers per round: one keep-alive connection (every request wakes the server), and four
/// competing ones (a work queue's usual shape).
const CONSUMERS: [usize; 2] = [1, 4];

/// Rounds of offsets, leases acked by receipts and leases acked by batch receipt (in an order
/// that turns each round) with `consumers` connections: the table rows and the report.
fn ratio(
    a: &CompareArgs,
    kateway: &Server,
    consumers: usize,
) -> anyhow::Result<(Vec<String>, Value)> {
    let pid = Some(kateway.child.id());
    let mut per_cpu: [Vec<f64>; 3] = Default::default();
    for round in 0..a.rounds {
        for k in 0..3 {
            let mode = Mode::ALL[(k + round) % 3];
            let topic = format!("sub{consumers}x{round}{}", mode.name().replace('+', "-"));
            fill(&kateway.addr, &topic, N, a.size)?;
            eprintln!(
                "[subscribe-lease] {consumers} consumer(s), round {} {}",
                round + 1,
                mode.name()
            );
            let mut err = None;
            let m = measure_whole(pid, || {
                match consume(&kateway.addr, &topic, N, mode, consumers) {
                    Ok(o) => o,
                    Err(e) => {
                        err = Some(e);
                        Outcome::default()
                    }
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            let v = m.outcome.messages as f64 / m.server_cpu_s.max(1e-9);
            eprintln!(
                "    {:.0} msg/s, {v:.0} msg per server CPU s, {} requests",
                m.outcome.messages as f64 / m.outcome.seconds.max(1e-9),
                m.outcome.requests
            );
            per_cpu[mode as usize].push(v);
        }
    }
    let ratio = |i: usize| -> Vec<f64> {
        per_cpu[i]
            .iter()
            .zip(&per_cpu[0])
            .map(|(l, o)| l / o)
            .collect()
    };
    let (by_receipts, by_batch) = (ratio(1), ratio(2));
    let range = |r: &[f64]| {
        format!(
            "×{:.3} (min {:.3}, max {:.3})",
            median(r),
            r.iter().cloned().fold(f64::INFINITY, f64::min),
            r.iter().cloned().fold(0.0, f64::max)
        )
    };
    let rows = vec![
        format!(
            "| {consumers} consumer(s), batch={BATCH}, offsets (auto-ack) | {:.0} msg per server CPU s |",
            median(&per_cpu[0])
        ),
        format!(
            "| {consumers} consumer(s), batch={BATCH}, leases + ack of {BATCH} receipts | {:.0} msg per server CPU s |",
            median(&per_cpu[1])
        ),
        format!(
            "| {consumers} consumer(s), batch={BATCH}, leases + ack by batch receipt | {:.0} msg per server CPU s |",
            median(&per_cpu[2])
        ),
        format!(
            "| **{consumers} consumer(s): leases (receipts)/offsets** | {} |",
            range(&by_receipts)
        ),
        format!(
            "| **{consumers} consumer(s): leases (batch receipt)/offsets** | {} |",
            range(&by_batch)
        ),
    ];
    let v = json!({
        "offsets": {"messages_per_cpu_s": stats(&per_cpu[0])},
        "leases_receipts": {"messages_per_cpu_s": stats(&per_cpu[1])},
        "leases_batch_receipt": {"messages_per_cpu_s": stats(&per_cpu[2])},
        "leases_receipts/offsets": stats(&by_receipts),
        "leases_batch_receipt/offsets": stats(&by_batch),
    });
    Ok((rows, v))
}
