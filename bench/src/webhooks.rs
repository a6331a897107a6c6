//! `compare --webhooks` (scenario `webhook-push`): what webhook push costs. On one kateway (one
//! server CPU), a topic of 100-byte messages is pushed whole to a receiver on the client CPU
//! (keep-alive HTTP/1.1, a 200 for every POST, one thread per connection): messages per second
//! and server CPU per delivered message, against consuming the same messages with leases and
//! acks by batch receipt in batches of 100 (the work the push replaces).

use crate::compare::CompareArgs;
use crate::harness::{median, Server};
use crate::lease::{cpu_per_request, Conn};
use crate::scenario::measure_whole;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages per round.
const N: usize = 50_000;

/// A receiver answering 200 to every POST; counts them.
fn receiver(count: Arc<AtomicU64>) -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || serve(s, &count));
        }
    });
    Ok(port)
}

fn serve(s: TcpStream, count: &AtomicU64) {
    let _ = s.set_nodelay(true);
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        let mut len = 0usize;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        count.fetch_add(1, Ordering::Relaxed);
        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// Runs the scenario on `kateway`; returns the table rows and the report's scenario.
pub fn run(a: &CompareArgs, kateway: &Server) -> anyhow::Result<(Vec<String>, Value)> {
    let pid = kateway.child.id();
    let count = Arc::new(AtomicU64::new(0));
    let port = receiver(count.clone())?;
    let (mut push_rate, mut push_cpu, mut lease_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let topic = format!("wh{round}");
        crate::lease::fill(&kateway.addr, &topic, N, a.size)?;
        let before = count.load(Ordering::Relaxed);
        let mut c = Conn::new(&kateway.addr)?;
        let body = json!({"url": format!("http://127.0.0.1:{port}/hook"), "from": "oldest",
            "max_in_flight": 64});
        let m = measure_whole(Some(pid), || {
            let t0 = Instant::now();
            let (st, _) = c
                .call(
                    &format!("PUT /v1/webhooks/bench/{topic}/v1/g"),
                    body.to_string().as_bytes(),
                )
                .unwrap_or((0, Vec::new()));
            let mut o = crate::client::Outcome::default();
            if st != 201 {
                eprintln!("[webhook-push] subscribe answered {st}");
                return o;
            }
            while count.load(Ordering::Relaxed) - before < N as u64
                && t0.elapsed() < Duration::from_secs(300)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            o.messages = count.load(Ordering::Relaxed) - before;
            o.seconds = t0.elapsed().as_secs_f64();
            o
        });
        anyhow::ensure!(
            m.outcome.messages >= N as u64,
            "only {} pushed",
            m.outcome.messages
        );
        let (st, _) = c.call(&format!("DELETE /v1/webhooks/bench/{topic}/v1/g"), b"")?;
        anyhow::ensure!(st == 204, "unsubscribe: {st}");
        let rate = m.outcome.messages as f64 / m.outcome.seconds;
        let cpu = m.server_cpu_s * 1e6 / m.outcome.messages as f64;
        eprintln!(
            "[webhook-push] round {}: {rate:.0} msg/s, {cpu:.1} µs server CPU per message",
            round + 1
        );
        push_rate.push(rate);
        push_cpu.push(cpu);
        // The same messages leased and acked by batch receipt, 100 at a time.
        let lease_head = format!(
            "GET /v1/msgs/bench/{topic}/v1?group=l&batch=100&wait=200ms&ack=lease&reset=oldest"
        );
        let ack_head = format!("POST /v1/queue/bench/{topic}/v1/l/ack");
        let mut taken = 0usize;
        let per_batch = cpu_per_request(Some(pid), N / 100, || {
            let Ok((200, _)) = c.call(&lease_head, b"") else {
                return false;
            };
            let Some(b) = c_batch(&mut c) else {
                return false;
            };
            taken += 100;
            matches!(
                c.call(
                    &ack_head,
                    json!({"batch_receipt": b}).to_string().as_bytes()
                ),
                Ok((200, _))
            )
        });
        lease_cpu.push(per_batch / 100.0);
        eprintln!(
            "[webhook-push] round {}: lease + ack {:.1} µs per message ({taken} taken)",
            round + 1,
            per_batch / 100.0
        );
    }
    let rows = vec![
        format!(
            "| webhook push, 1 core, max_in_flight 64 | {:.0} msg/s, {:.1} µs server CPU per message |",
            median(&push_rate),
            median(&push_cpu)
        ),
        format!(
            "| leases of 100 + ack by batch receipt, same messages | {:.1} µs server CPU per message |",
            median(&lease_cpu)
        ),
    ];
    let v = json!({"messages": N, "push_msgs_per_s": push_rate, "push_cpu_us_per_msg": push_cpu,
        "lease_ack_cpu_us_per_msg": lease_cpu});
    Ok((rows, v))
}

fn c_batch(c: &mut Conn) -> Option<String> {
    c.batch.take()
}
