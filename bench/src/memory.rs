//! The memory scenario: the server's resident memory per idle keep-alive connection and per
//! parked long poll.

use crate::{client, procstat};
use std::time::Duration;

/// Opens `n` idle keep-alive connections, then `n` parked long polls on `bench/empty/v1`; returns
/// the server's RSS growth per connection and per poll, in KiB.
pub fn connections(pid: u32, addr: &str, n: usize) -> anyhow::Result<(f64, f64)> {
    let addr = addr.to_owned();
    let (tx, rx) = std::sync::mpsc::channel::<(u64, u64, u64)>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut rt = client::runtime();
        rt.block_on(async move {
            use monoio::io::AsyncWriteRentExt;
            std::thread::sleep(Duration::from_millis(500));
            let base = procstat::rss_bytes(pid).unwrap_or(0);
            let mut idle = Vec::with_capacity(n);
            let alive = client::request("GET", "/alive", &[], b"");
            for _ in 0..n {
                let mut s = monoio::net::TcpStream::connect(addr.as_str())
                    .await
                    .expect("connect");
                let (r, _) = s.write_all(alive.clone()).await;
                r.expect("write");
                let mut buf = bytes::BytesMut::with_capacity(512);
                client::read_response(&mut s, &mut buf)
                    .await
                    .expect("alive");
                idle.push(s);
            }
            monoio::time::sleep(Duration::from_millis(500)).await;
            let with_idle = procstat::rss_bytes(pid).unwrap_or(0);
            let poll = client::request(
                "GET",
                "/v1/msgs/bench/empty/v1?group=mem&wait=300s",
                &[("Appid", "benchsub")],
                b"",
            );
            let mut parked = Vec::with_capacity(n);
            for _ in 0..n {
                let mut s = monoio::net::TcpStream::connect(addr.as_str())
                    .await
                    .expect("connect");
                let (r, _) = s.write_all(poll.clone()).await;
                r.expect("write");
                parked.push(s);
            }
            monoio::time::sleep(Duration::from_millis(1500)).await;
            let with_parked = procstat::rss_bytes(pid).unwrap_or(0);
            let _ = tx.send((base, with_idle, with_parked));
            let _ = done_rx.recv();
            drop(idle);
            drop(parked);
        })
    });
    let (base, with_idle, with_parked) = rx.recv()?;
    let _ = done_tx.send(());
    let kib = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1024.0 / n as f64;
    eprintln!(
        "[connections] rss base {} KiB, +{n} idle {} KiB, +{n} parked {} KiB",
        base / 1024,
        with_idle / 1024,
        with_parked / 1024
    );
    Ok((kib(base, with_idle), kib(with_idle, with_parked)))
}
