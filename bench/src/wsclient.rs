//! WebSocket loads on monoio, with a minimal client codec: masked client frames out, the
//! server's unmasked frames in.
//!
//! * publish: each socket keeps `window` messages unacknowledged, sending one more for every
//!   acknowledgement (`{"partition":..}` counts as a message, `{"error":..}` as a non-2xx);
//!   latency is from a message's send to its acknowledgement, which come back in order.
//! * subscribe: each socket reads until it has `expect` messages, granting credit back
//!   (`{"credit":n}`) each time it has consumed half of its grant.

use crate::client::{self, Outcome, ThreadStats};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One client frame (FIN set, masked with `key`).
pub fn client_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 14);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.put_u8(0x80 | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(0x80 | 127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out.freeze()
}

/// Takes one whole server frame `(opcode, payload)` off `buf`, or `None` until one has arrived.
/// Server frames are never masked; a fragment's opcode is taken as it is (the gateway sends
/// each message as one frame).
pub fn decode(buf: &mut BytesMut) -> anyhow::Result<Option<(u8, Bytes)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    anyhow::ensure!(buf[1] & 0x80 == 0, "the server masked a frame");
    let (head, len) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => {
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            (10, usize::try_from(n)?)
        }
        126 | 127 => return Ok(None),
        n => (2, n as usize),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0F;
    buf.advance(head);
    Ok(Some((opcode, buf.split_to(len).freeze())))
}

/// Opens a socket on `path`; returns it with whatever followed the 101 answer.
async fn upgrade(addr: &str, path: &str) -> anyhow::Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = client::request(
        "GET",
        path,
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    );
    let (r, _) = s.write_all(req).await;
    r?;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let (status, body) = client::read_response(&mut s, &mut rbuf).await?;
    anyhow::ensure!(
        status == 101,
        "upgrade answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok((s, rbuf))
}

async fn write(s: &mut TcpStream, out: &mut BytesMut) -> anyhow::Result<()> {
    let (r, mut b) = s.write_all(std::mem::take(out)).await;
    r?;
    b.clear();
    *out = b;
    Ok(())
}

/// A WebSocket publish load.
#[derive(Clone)]
pub struct WsLoad {
    pub addr: String,
    pub cpus: Vec<usize>,
    pub conns_per_cpu: usize,
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// `/v1/ws/msgs/:topic/:ver?appid=..&ack=..`
    pub path: String,
    pub payload: Bytes,
}

/// Runs a publish load and returns the merged outcome.
pub fn publish(load: &WsLoad) -> Outcome {
    let (start, measure_from, end) = client::window(load.warmup, load.duration);
    let threads: Vec<_> = load
        .cpus
        .iter()
        .map(|&cpu| {
            let load = load.clone();
            std::thread::spawn(move || {
                client::pin(cpu);
                client::runtime().block_on(async move {
                    let stats = Rc::new(RefCell::new(ThreadStats::default()));
                    let tasks: Vec<_> = (0..load.conns_per_cpu)
                        .map(|c| {
                            let (load, stats) = (load.clone(), stats.clone());
                            monoio::spawn(async move {
                                let r = publish_conn(&load, c, start, measure_from, end, &stats);
                                if let Err(e) = r.await {
                                    stats.borrow_mut().errors += 1;
                                    eprintln!("socket {c}: {e}");
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await;
                    }
                    stats.take()
                })
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

async fn publish_conn(
    load: &WsLoad,
    c: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    stats: &RefCell<ThreadStats>,
) -> anyhow::Result<()> {
    let (mut s, mut rbuf) = upgrade(&load.addr, &load.path).await?;
    let frame = client_frame(
        TEXT,
        &load.payload,
        (c as u32).wrapping_mul(0x9E37_79B9).to_be_bytes(),
    );
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(load.window);
    let mut out = BytesMut::with_capacity(frame.len() * load.window);
    if let Some(d) = start.checked_duration_since(Instant::now()) {
        monoio::time::sleep(d).await;
    }
    loop {
        let now = Instant::now();
        if now < end {
            while sent.len() < load.window {
                out.extend_from_slice(&frame);
                sent.push_back(now);
            }
        } else if sent.is_empty() {
            return Ok(());
        }
        if !out.is_empty() {
            write(&mut s, &mut out).await?;
        }
        client::fill(&mut s, &mut rbuf).await?;
        while let Some((op, payload)) = decode(&mut rbuf)? {
            match op {
                TEXT => {
                    let at = sent
                        .pop_front()
                        .ok_or_else(|| anyhow::anyhow!("an answer to nothing"))?;
                    let done = Instant::now();
                    if at >= measure_from && done < end {
                        let mut st = stats.borrow_mut();
                        st.record(done - at);
                        if payload.starts_with(b"{\"partition\"") {
                            st.messages += 1;
                        } else {
                            st.non_2xx += 1;
                        }
                    }
                }
                PING => out.extend_from_slice(&client_frame(PONG, &payload, [1, 2, 3, 4])),
                CLOSE => anyhow::bail!("closed by the server: {payload:?}"),
                _ => {}
            }
        }
    }
}

/// A WebSocket subscribe load: `conns` sockets on `cpu`, the i-th on `paths[i]`, each until it
/// has `expect` messages or `deadline` passes.
pub struct WsSub {
    pub addr: String,
    pub cpu: usize,
    pub paths: Vec<String>,
    pub credit: u32,
    pub expect: u64,
    pub deadline: Duration,
}

/// Runs a subscribe load; its outcome's `seconds` run from the first connect to the last
/// socket's last message.
pub fn subscribe(load: &WsSub) -> Outcome {
    let t0 = Instant::now();
    let deadline = t0 + load.deadline;
    let (addr, cpu, paths, credit, expect) = (
        load.addr.clone(),
        load.cpu,
        load.paths.clone(),
        load.credit,
        load.expect,
    );
    let (stats, last) = std::thread::spawn(move || {
        client::pin(cpu);
        client::runtime().block_on(async move {
            let stats = Rc::new(RefCell::new(ThreadStats::default()));
            let tasks: Vec<_> = paths
                .into_iter()
                .enumerate()
                .map(|(c, path)| {
                    let (addr, stats) = (addr.clone(), stats.clone());
                    monoio::spawn(async move {
                        let r = subscribe_conn(&addr, &path, credit, expect, deadline, &stats);
                        if let Err(e) = r.await {
                            stats.borrow_mut().errors += 1;
                            eprintln!("subscriber {c}: {e}");
                        }
                        Instant::now()
                    })
                })
                .collect();
            let mut last = t0;
            for t in tasks {
                last = last.max(t.await);
            }
            (stats.take(), last)
        })
    })
    .join()
    .expect("subscriber thread");
    client::merge([stats], (last - t0).as_secs_f64())
}

async fn subscribe_conn(
    addr: &str,
    path: &str,
    credit: u32,
    expect: u64,
    deadline: Instant,
    stats: &RefCell<ThreadStats>,
) -> anyhow::Result<()> {
    let (mut s, mut rbuf) = upgrade(addr, path).await?;
    let (mut got, mut ungranted) = (0u64, 0u32);
    let mut out = BytesMut::new();
    while got < expect {
        let late = || anyhow::anyhow!("only {got} of {expect} messages in time");
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or_else(late)?;
        monoio::time::timeout(left, client::fill(&mut s, &mut rbuf))
            .await
            .map_err(|_| late())??;
        while let Some((op, payload)) = decode(&mut rbuf)? {
            match op {
                TEXT if payload.starts_with(b"{\"error\"") => {
                    anyhow::bail!("{}", String::from_utf8_lossy(&payload))
                }
                TEXT => {
                    got += 1;
                    ungranted += 1;
                    let mut st = stats.borrow_mut();
                    st.requests += 1;
                    st.messages += 1;
                }
                PING => out.extend_from_slice(&client_frame(PONG, &payload, [1, 2, 3, 4])),
                CLOSE => anyhow::bail!("closed by the server after {got} messages: {payload:?}"),
                _ => {}
            }
        }
        if ungranted >= credit.div_ceil(2) {
            let grant = format!("{{\"credit\":{ungranted}}}");
            out.extend_from_slice(&client_frame(TEXT, grant.as_bytes(), [5, 6, 7, 8]));
            ungranted = 0;
        }
        if !out.is_empty() {
            write(&mut s, &mut out).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = client_frame(TEXT, b"hello", [1, 2, 3, 4]);
        assert_eq!(&f[..2], &[0x81, 0x85]);
        let unmasked: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(unmasked, b"hello");
        let long = client_frame(TEXT, &[b'x'; 300], [0; 4]);
        assert_eq!(&long[..4], &[0x81, 0x80 | 126, 1, 44]);

        let mut b = BytesMut::from(&[0x81, 0x02, b'o', b'k', 0x81, 126, 0, 200][..]);
        assert_eq!(
            decode(&mut b).unwrap(),
            Some((TEXT, Bytes::from_static(b"ok")))
        );
        assert_eq!(decode(&mut b).unwrap(), None, "a frame not yet whole");
        b.extend_from_slice(&[b'y'; 200]);
        let (op, p) = decode(&mut b).unwrap().unwrap();
        assert_eq!((op, p.len(), b.len()), (TEXT, 200, 0));
        assert!(decode(&mut BytesMut::from(&[0x81, 0x81, 0, 0, 0, 0, 0][..])).is_err());
    }
}
