//! End-to-end latency: a publisher at a fixed rate stamps each message with its send time; a
//! long-polling batch subscriber in the same process records, for every message, the time from
//! the stamp to its arrival in a subscribe response.

use crate::client;
use bytes::BytesMut;
use hdrhistogram::Histogram;
use monoio::io::AsyncWriteRentExt;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the subscriber saw.
#[derive(Debug, serde::Serialize)]
pub struct E2e {
    pub messages: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs for `warmup + duration` on `cpu`, publishing `rate` messages per second to `topic`.
pub fn run(
    addr: &str,
    cpu: usize,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    topic: &str,
) -> anyhow::Result<E2e> {
    let addr = addr.to_owned();
    let topic = topic.to_owned();
    let t = std::thread::spawn(move || -> anyhow::Result<E2e> {
        if let Some(id) =
            core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == cpu))
        {
            core_affinity::set_for_current(id);
        }
        let mut rt = client::runtime();
        rt.block_on(async move {
            let hist = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(
                1, 60_000_000, 3,
            )?));
            let start = Instant::now();
            let measure_from = start + warmup;
            let end = measure_from + duration;
            let group = format!("e2e{}", std::process::id());
            // Position the group at the end before publishing starts.
            let mut sub = monoio::net::TcpStream::connect(addr.as_str()).await?;
            let poll0 = client::request(
                "GET",
                &format!("/v1/msgs/bench/{topic}/v1?group={group}&reset=newest&wait=0s"),
                &[("Appid", "benchsub")],
                b"",
            );
            let (r, _) = sub.write_all(poll0).await;
            r?;
            let mut sbuf = BytesMut::with_capacity(1 << 20);
            client::read_response(&mut sub, &mut sbuf).await?;
            let h = hist.clone();
            let poll = client::request(
                "GET",
                &format!("/v1/msgs/bench/{topic}/v1?group={group}&batch=1000&wait=1s"),
                &[("Appid", "benchsub")],
                b"",
            );
            let subscriber = monoio::spawn(async move {
                while Instant::now() < end + Duration::from_millis(500) {
                    let (r, _) = sub.write_all(poll.clone()).await;
                    r?;
                    let (_, body) = client::read_response(&mut sub, &mut sbuf).await?;
                    let arrived = now_ns();
                    for (_, _, payload) in kateway_proto::batch::records(&body) {
                        let stamp: u64 = payload
                            .get(..20)
                            .and_then(|d| std::str::from_utf8(d).ok())
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        let sent =
                            Instant::now() - Duration::from_nanos(arrived.saturating_sub(stamp));
                        if sent >= measure_from && sent < end {
                            let _ = h
                                .borrow_mut()
                                .record((arrived.saturating_sub(stamp) / 1000).max(1));
                        }
                    }
                }
                anyhow::Ok(())
            });
            let mut publ = monoio::net::TcpStream::connect(addr.as_str()).await?;
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut next = Instant::now();
            let mut rbuf = BytesMut::with_capacity(4096);
            while next < end {
                let now = Instant::now();
                if next > now {
                    monoio::time::sleep(next - now).await;
                }
                next += interval;
                let mut payload = format!("{:020}", now_ns()).into_bytes();
                payload.resize(100, b'.');
                let req = client::request(
                    "POST",
                    &format!("/v1/msgs/{topic}/v1?ack=local"),
                    &[("Appid", "bench")],
                    &payload,
                );
                let (r, _) = publ.write_all(req).await;
                r?;
                client::read_response(&mut publ, &mut rbuf).await?;
            }
            subscriber.await?;
            let h = hist.borrow();
            Ok(E2e {
                messages: h.len(),
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
            })
        })
    });
    t.join()
        .map_err(|_| anyhow::anyhow!("e2e thread panicked"))?
}
