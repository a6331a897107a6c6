//! A thread-per-core HTTP/1.1 load generator on monoio: each thread is pinned to a CPU and runs
//! `conns` keep-alive connections, each with one request in flight (no pipelining). Closed loop
//! sends the next request when the previous answer arrives; open loop sends at a fixed rate and
//! measures latency from when each request *should* have been sent, which corrects for
//! coordinated omission.

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use kateway_proto::http1::chunked::ChunkedDecoder;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What to do with each response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// One message per 2xx response.
    One,
    /// `n` messages per 2xx response (batch publish).
    Fixed(u64),
    /// Count binary subscribe records in the body.
    Records,
}

/// A load to generate.
#[derive(Clone)]
pub struct Load {
    pub addr: String,
    pub cpus: Vec<usize>,
    pub conns_per_cpu: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Total requests per second over all connections; `None` = closed loop.
    pub rate: Option<f64>,
    /// Request bytes; connection `i` cycles through them starting at `i`.
    pub requests: Vec<Bytes>,
    pub count: Count,
}

/// What a load produced during the measured window.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub requests: u64,
    pub messages: u64,
    pub errors: u64,
    pub non_2xx: u64,
    pub seconds: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    #[serde(skip)]
    pub hist: Option<Histogram<u64>>,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    pub fn mps(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
}

/// What one client thread counted; [`merge`] adds them up into an [`Outcome`].
pub struct ThreadStats {
    pub hist: Histogram<u64>,
    pub requests: u64,
    pub messages: u64,
    pub errors: u64,
    pub non_2xx: u64,
}

impl Default for ThreadStats {
    fn default() -> Self {
        ThreadStats {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram"),
            requests: 0,
            messages: 0,
            errors: 0,
            non_2xx: 0,
        }
    }
}

impl ThreadStats {
    /// Records one answer that took `took`.
    pub fn record(&mut self, took: Duration) {
        self.requests += 1;
        let us = took.as_micros().max(1) as u64;
        let _ = self.hist.record(us.min(120_000_000));
    }
}

/// Pins the calling thread to `cpu` (when it exists).
pub fn pin(cpu: usize) {
    if let Some(id) =
        core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == cpu))
    {
        core_affinity::set_for_current(id);
    }
}

/// Adds up the threads' counts over a window of `seconds`.
pub fn merge(threads: impl IntoIterator<Item = ThreadStats>, seconds: f64) -> Outcome {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram");
    let mut out = Outcome {
        seconds,
        ..Default::default()
    };
    for s in threads {
        hist.add(&s.hist).expect("same bounds");
        out.requests += s.requests;
        out.messages += s.messages;
        out.errors += s.errors;
        out.non_2xx += s.non_2xx;
    }
    out.p50_us = hist.value_at_quantile(0.5);
    out.p90_us = hist.value_at_quantile(0.9);
    out.p99_us = hist.value_at_quantile(0.99);
    out.p999_us = hist.value_at_quantile(0.999);
    out.max_us = hist.max();
    out.hist = Some(hist);
    out
}

/// A run's moments: when the client threads start (200 ms from now, so that all are ready),
/// when measuring starts (after the warm-up), and when the run ends.
pub fn window(warmup: Duration, duration: Duration) -> (Instant, Instant, Instant) {
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + warmup;
    (start, measure_from, measure_from + duration)
}

/// Runs the load and returns the merged outcome.
pub fn run(load: &Load) -> Outcome {
    let (start, measure_from, end) = window(load.warmup, load.duration);
    let threads: Vec<_> = load
        .cpus
        .iter()
        .enumerate()
        .map(|(t, &cpu)| {
            let load = load.clone();
            std::thread::spawn(move || {
                pin(cpu);
                let mut rt = runtime();
                rt.block_on(thread_main(load, t, start, measure_from, end))
            })
        })
        .collect();
    merge(
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread")),
        load.duration.as_secs_f64(),
    )
}

/// A monoio runtime with the same ring flags as the gateway.
pub fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_single_issuer().setup_defer_taskrun();
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(4096)
        .uring_builder(urb)
        .enable_timer()
        .build()
        .expect("io_uring runtime")
}

async fn thread_main(
    load: Load,
    t: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> ThreadStats {
    let stats = Rc::new(RefCell::new(ThreadStats::default()));
    let total_conns = load.cpus.len() * load.conns_per_cpu;
    let interval = load
        .rate
        .map(|r| Duration::from_secs_f64(total_conns as f64 / r));
    let mut tasks = Vec::new();
    for c in 0..load.conns_per_cpu {
        let idx = t * load.conns_per_cpu + c;
        // Spread the open-loop schedule of the connections over one interval.
        let first = start
            + interval.map_or(Duration::ZERO, |i| {
                i.mul_f64(idx as f64 / total_conns as f64)
            });
        let load = load.clone();
        let stats = stats.clone();
        tasks.push(monoio::spawn(async move {
            if let Err(e) = conn_main(&load, idx, first, interval, measure_from, end, &stats).await
            {
                stats.borrow_mut().errors += 1;
                eprintln!("connection {idx}: {e}");
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(stats)
        .ok()
        .expect("all tasks done")
        .into_inner()
}

async fn conn_main(
    load: &Load,
    idx: usize,
    first: Instant,
    interval: Option<Duration>,
    measure_from: Instant,
    end: Instant,
    stats: &RefCell<ThreadStats>,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(load.addr.as_str()).await?;
    stream.set_nodelay(true)?;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut next = first;
    let mut prev_done = first;
    let mut i = idx;
    if let Some(d) = first.checked_duration_since(Instant::now()) {
        monoio::time::sleep(d).await;
    }
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        let intended = match interval {
            None => now,
            Some(iv) => {
                let t = next;
                next += iv;
                if t > now {
                    monoio::time::sleep(t - now).await;
                }
                // Coordinated omission: a request that had to wait for the previous answer is
                // measured from when it should have been sent. One sent late only because the
                // client's millisecond timer fired late is measured from when it was sent, so
                // the client's timer granularity is not charged to the server.
                if prev_done > t {
                    t
                } else {
                    Instant::now()
                }
            }
        };
        let req = load.requests[i % load.requests.len()].clone();
        i += 1;
        let (res, _) = stream.write_all(req).await;
        res?;
        let (status, body) = read_response(&mut stream, &mut rbuf).await?;
        let done = Instant::now();
        prev_done = done;
        if intended >= measure_from && done < end {
            let mut s = stats.borrow_mut();
            s.record(done.duration_since(intended));
            if (200..300).contains(&status) {
                s.messages += match load.count {
                    Count::One => u64::from(status != 204),
                    Count::Fixed(n) => n,
                    Count::Records => count_records(&body),
                };
            } else {
                s.non_2xx += 1;
            }
        }
    }
}

/// Counts `[partition i32][offset i64][length i32][payload]` records.
pub fn count_records(b: &[u8]) -> u64 {
    kateway_proto::batch::records(b).count() as u64
}

/// Reads one response; returns its status and body.
pub async fn read_response(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
) -> anyhow::Result<(u16, Bytes)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = resp.parse(rbuf)? {
            let status = resp.code.unwrap_or(0);
            let mut len: Option<usize> = None;
            let mut chunked = false;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.parse().ok());
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = true;
                }
            }
            let _ = rbuf.split_to(n);
            if chunked {
                let mut dec = ChunkedDecoder::new(usize::MAX);
                loop {
                    if dec
                        .decode(rbuf)
                        .map_err(|e| anyhow::anyhow!("chunked: {e:?}"))?
                    {
                        return Ok((status, dec.take_body().freeze()));
                    }
                    fill(stream, rbuf).await?;
                }
            }
            let len = len.unwrap_or(0);
            while rbuf.len() < len {
                fill(stream, rbuf).await?;
            }
            return Ok((status, rbuf.split_to(len).freeze()));
        }
        fill(stream, rbuf).await?;
    }
}

/// Reads more of the stream into `rbuf`; an error when the server closed it.
pub async fn fill(stream: &mut TcpStream, rbuf: &mut BytesMut) -> anyhow::Result<()> {
    if rbuf.capacity() - rbuf.len() < 16 * 1024 {
        rbuf.reserve(64 * 1024);
    }
    let buf = std::mem::take(rbuf);
    let len = buf.len();
    let (res, slice) = stream.read(buf.slice_mut(len..)).await;
    *rbuf = slice.into_inner();
    if res? == 0 {
        anyhow::bail!("server closed the connection");
    }
    Ok(())
}

/// Builds an HTTP/1.1 request.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Bytes {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("\r\n");
    let mut b = s.into_bytes();
    b.extend_from_slice(body);
    Bytes::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_records_and_builds_requests() {
        let mut b = BytesMut::new();
        kateway_proto::batch::put_record(&mut b, 0, 1, b"abc");
        kateway_proto::batch::put_record(&mut b, 1, 2, b"");
        assert_eq!(count_records(&b), 2);
        assert_eq!(
            count_records(&b[..b.len() - 1]),
            1,
            "a truncated record is not counted"
        );
        let r = request("POST", "/v1/msgs/t/v1", &[("Appid", "a")], b"xy");
        assert_eq!(&r[..], b"POST /v1/msgs/t/v1 HTTP/1.1\r\nHost: bench\r\nAppid: a\r\nContent-Length: 2\r\n\r\nxy");
    }
}
