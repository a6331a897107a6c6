//! An HTTP/2 load generator: the `h2` crate's client on a single-threaded tokio runtime per
//! client CPU (pinned, like the HTTP/1.1 generator), `conns` connections per CPU and `streams`
//! requests in flight on each, closed loop: each stream sends its next POST when the previous
//! answer has been read. Plaintext connections use prior knowledge (h2c); TLS ones ALPN h2.

use crate::client::{self, Outcome, ThreadStats};
use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, Uri};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// An HTTP/2 publish load.
#[derive(Clone)]
pub struct H2Load {
    pub addr: String,
    pub tls: bool,
    pub cpus: Vec<usize>,
    pub conns_per_cpu: usize,
    pub streams: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Path and query of every request, e.g. `/v1/msgs/t/v1?ack=local`.
    pub path: String,
    pub appid: String,
    pub body: Bytes,
}

/// Runs the load and returns the merged outcome (one message per 2xx answer).
pub fn run(load: &H2Load) -> Outcome {
    let (start, measure_from, end) = client::window(load.warmup, load.duration);
    let threads: Vec<_> = load
        .cpus
        .iter()
        .map(|&cpu| {
            let load = load.clone();
            std::thread::spawn(move || {
                client::pin(cpu);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                tokio::task::LocalSet::new()
                    .block_on(&rt, thread_main(load, start, measure_from, end))
            })
        })
        .collect();
    client::merge(
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread")),
        load.duration.as_secs_f64(),
    )
}

async fn thread_main(
    load: H2Load,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> ThreadStats {
    let stats = Rc::new(RefCell::new(ThreadStats::default()));
    let tls = match load.tls.then(crate::tls::connector).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tls: {e}");
            stats.borrow_mut().errors += 1;
            return stats.take();
        }
    };
    let scheme = if load.tls { "https" } else { "http" };
    let uri: Uri = format!("{scheme}://{}{}", load.addr, load.path)
        .parse()
        .expect("request uri");
    let mut conns = Vec::new();
    for c in 0..load.conns_per_cpu {
        let load = load.clone();
        let (tls, uri, stats) = (tls.clone(), uri.clone(), stats.clone());
        conns.push(tokio::task::spawn_local(async move {
            let send = match connect(&load.addr, tls.as_ref()).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("connection {c}: {e}");
                    stats.borrow_mut().errors += 1;
                    return;
                }
            };
            tokio::time::sleep_until(start.into()).await;
            let mut streams = Vec::new();
            for _ in 0..load.streams {
                let (send, load, uri, stats) =
                    (send.clone(), load.clone(), uri.clone(), stats.clone());
                streams.push(tokio::task::spawn_local(async move {
                    if let Err(e) = stream_main(send, &load, uri, measure_from, end, &stats).await {
                        stats.borrow_mut().errors += 1;
                        eprintln!("connection {c}: {e}");
                    }
                }));
            }
            for s in streams {
                let _ = s.await;
            }
        }));
    }
    for c in conns {
        let _ = c.await;
    }
    stats.take()
}

/// Opens a connection (TLS when `tls` is given) and starts driving it.
async fn connect(
    addr: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> anyhow::Result<SendRequest<Bytes>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => handshake(tcp).await,
        Some(c) => handshake(crate::tls::connect(c, tcp).await?).await,
    }
}

async fn handshake<T>(io: T) -> anyhow::Result<SendRequest<Bytes>>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (send, conn) = h2::client::handshake(io).await?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            eprintln!("h2 connection: {e}");
        }
    });
    Ok(send)
}

/// One stream slot: POST, read the whole answer, repeat until `end`.
async fn stream_main(
    mut send: SendRequest<Bytes>,
    load: &H2Load,
    uri: Uri,
    measure_from: Instant,
    end: Instant,
    stats: &RefCell<ThreadStats>,
) -> anyhow::Result<()> {
    let appid = HeaderValue::from_str(&load.appid)?;
    let len = HeaderValue::from(load.body.len());
    loop {
        let sent = Instant::now();
        if sent >= end {
            return Ok(());
        }
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        req.headers_mut().insert("appid", appid.clone());
        req.headers_mut().insert("content-length", len.clone());
        send = send.ready().await?;
        let (resp, mut body) = send.send_request(req, false)?;
        body.send_data(load.body.clone(), true)?;
        let resp = resp.await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let done = Instant::now();
        if sent >= measure_from && done < end {
            let mut s = stats.borrow_mut();
            s.record(done - sent);
            if (200..300).contains(&status) {
                s.messages += 1;
            } else {
                s.non_2xx += 1;
            }
        }
    }
}
