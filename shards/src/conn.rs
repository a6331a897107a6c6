//! One HTTP/1.1 connection: read into a buffer, decode every complete request, answer them in
//! order (pipelining), write all answers with one write, repeat. A request that has started must
//! finish arriving within `request_timeout` (else 408 and close); an idle keep-alive connection
//! is closed after `idle_timeout` or when shutdown begins.
//!
//! Memory per connection is bounded: answers are written out once 64 KiB are buffered (a client
//! pipelining many large subscribes holds one answer at a time), a write that makes no progress
//! for `write_timeout` closes the connection, the response bytes a subscribe builds are held
//! against the core's budget until they are written ([`crate::shard::Held`]), and buffers that
//! grew for a large request or answer are given back afterwards.

use crate::api;
use crate::metrics;
use crate::shard::{Held, Shard};
use bytes::BytesMut;
use kateway_core::{Error, ErrorKind};
use kateway_proto::http1::encode::write_continue;
use kateway_proto::http1::{Decoder, Event, Limits, Method};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::rc::Rc;
use std::time::Instant;

const READ_CHUNK: usize = 4096;
/// Buffered answers are written out before the next pipelined request once they reach this.
const FLUSH_AT: usize = 64 << 10;
/// A buffer that grew beyond this is replaced by a small one once it is empty.
const KEEP_CAPACITY: usize = 64 << 10;
/// Large answers are written in pieces of this size, each within the write timeout.
const WRITE_PIECE: usize = 256 << 10;

/// The read buffer's spare capacity after what is buffered (made at least half a chunk), for a
/// read that appends.
fn spare(mut rbuf: BytesMut) -> monoio::buf::SliceMut<BytesMut> {
    if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
        rbuf.reserve(READ_CHUNK);
    }
    let filled = rbuf.len();
    rbuf.slice_mut(filled..)
}

/// Serves a connection until it closes.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let cfg = &shard.cfg;
    let limits = Limits {
        max_head: cfg.limits.max_header_bytes.0 as usize,
        max_body: (cfg
            .limits
            .max_batch_bytes
            .0
            .max(cfg.limits.max_message_bytes.0) as usize)
            .max(1 << 16),
    };
    let mut decoder = Decoder::new(limits);
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut held: Vec<Held> = Vec::new();
    let mut request_started: Option<Instant> = None;
    loop {
        // Answer every complete request in the buffer.
        let mut close = false;
        loop {
            if wbuf.len() >= FLUSH_AT {
                if write_out(&shard, &mut stream, &mut wbuf).await.is_err() {
                    return;
                }
                held.clear();
            }
            match decoder.decode(&mut rbuf) {
                Ok(None) => break,
                Ok(Some(Event::Continue)) => write_continue(&mut wbuf),
                Ok(Some(Event::Request(req))) => {
                    request_started = None;
                    let may_park = req.method == Method::Get && req.path().starts_with("/v1/msgs/");
                    let done = if may_park {
                        handle_watching(&shard, req, &mut wbuf, &mut stream, &mut rbuf).await
                    } else {
                        Some(api::handle(&shard, req, &mut wbuf).await)
                    };
                    match done {
                        // The client went away during a long poll: the poll is dropped.
                        None => return,
                        Some(h) => {
                            held.extend(h.held);
                            if h.close {
                                close = true;
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    let err = api::http_error(&e);
                    let mut out = api::Out::new(&mut wbuf, true, false);
                    api::write_error(&mut out, &err, None);
                    count_error(&shard);
                    close = true;
                    break;
                }
            }
        }
        if !wbuf.is_empty() {
            if write_out(&shard, &mut stream, &mut wbuf).await.is_err() {
                return;
            }
            held.clear();
        }
        if close {
            return;
        }
        if rbuf.is_empty() && rbuf.capacity() > KEEP_CAPACITY {
            rbuf = BytesMut::new();
        }
        // Read more, within the timeout that applies now.
        let partial = decoder.in_progress(&rbuf);
        if shard.shutdown.get() && !partial {
            return;
        }
        // A request must arrive whole within request_timeout of its first byte, however slowly
        // the client trickles it in; between requests the idle timeout applies.
        let timeout = if partial {
            let started = *request_started.get_or_insert_with(Instant::now);
            cfg.server
                .request_timeout
                .0
                .saturating_sub(started.elapsed())
        } else {
            request_started = None;
            cfg.server.idle_timeout.0
        };
        let seen = shard.shutdown_event.epoch();
        let spare = spare(rbuf);
        let read = monoio::select! {
            r = monoio::time::timeout(timeout, stream.read(spare)) => Some(r),
            _ = shard.shutdown_event.wait(seen), if !partial => None,
        };
        match read {
            None => return,
            Some(Err(_elapsed)) => {
                if partial {
                    let err = Error::new(ErrorKind::RequestTimeout, "request not received in time");
                    let mut buf = BytesMut::new();
                    let mut out = api::Out::new(&mut buf, true, false);
                    api::write_error(&mut out, &err, None);
                    count_error(&shard);
                    let _ = stream.write_all(buf).await;
                }
                return;
            }
            Some(Ok((res, buf))) => {
                rbuf = buf.into_inner();
                match res {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Handles a request that may park (a subscribe), watching the socket while it waits: if the
/// client closes the connection, the request is dropped at once, so a vanished subscriber does
/// not hold its long poll (and its place among the parked polls) until the deadline. Bytes of a
/// pipelined next request that arrive meanwhile are kept in `rbuf`. Returns `None` when the
/// client went away, else whether to close after the response.
async fn handle_watching(
    shard: &Rc<Shard>,
    req: kateway_proto::http1::Request,
    wbuf: &mut BytesMut,
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
) -> Option<api::Handled> {
    let mut fut = std::pin::pin!(api::handle(shard, req, wbuf));
    {
        // Most subscribes are answered at once; only a poll that is still waiting after a
        // moment pays for a readiness watch (io_uring poll, which consumes no data).
        let watch = async {
            monoio::time::sleep(WATCH_AFTER).await;
            stream.readable(false).await
        };
        monoio::select! {
            close = &mut fut => return Some(close),
            _ = watch => {}
        }
    }
    // Readable while the poll waits: either the peer closed, or it pipelined another request.
    let (res, buf) = stream.read(spare(std::mem::take(rbuf))).await;
    *rbuf = buf.into_inner();
    match res {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(fut.await),
    }
}

/// How long a subscribe may run before its socket is watched for the client going away.
const WATCH_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes and empties `wbuf`, in pieces that must each make it out within
/// `server.write_timeout`; an error means the connection is to be closed.
async fn write_out(shard: &Shard, stream: &mut TcpStream, wbuf: &mut BytesMut) -> Result<(), ()> {
    let limit = shard.cfg.server.write_timeout.0;
    while !wbuf.is_empty() {
        let piece = if wbuf.len() <= WRITE_PIECE {
            std::mem::take(wbuf)
        } else {
            wbuf.split_to(WRITE_PIECE)
        };
        let whole = wbuf.is_empty();
        match monoio::time::timeout(limit, stream.write_all(piece)).await {
            Ok((Ok(_), buf)) => {
                if whole && buf.capacity() <= KEEP_CAPACITY {
                    // Keep the allocation of a small buffer for the next answers.
                    *wbuf = buf;
                    wbuf.clear();
                }
            }
            Ok((Err(_), _)) => return Err(()),
            Err(_elapsed) => {
                metrics::inc(&shard.metrics.http_write_timeouts_total);
                return Err(());
            }
        }
    }
    Ok(())
}

/// A connection beyond the core's cap: answers one request for `/alive` or `/ready` (health
/// checks keep working when the gateway is full), anything else 503 with `Retry-After`; then
/// closes.
pub async fn serve_over_cap(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut decoder = Decoder::new(Limits {
        max_head: 4096,
        max_body: 0,
    });
    let mut rbuf = BytesMut::with_capacity(1024);
    let mut wbuf = BytesMut::new();
    let deadline = Instant::now() + OVER_CAP_WAIT;
    let req = loop {
        match decoder.decode(&mut rbuf) {
            Ok(Some(Event::Request(r))) => break Some(r),
            Ok(None) => {}
            _ => break None,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, stream.read(spare(rbuf))).await {
            Ok((Ok(n), buf)) if n > 0 => rbuf = buf.into_inner(),
            _ => break None,
        }
    };
    let health = req
        .as_ref()
        .is_some_and(|r| r.method == Method::Get && matches!(r.path(), "/alive" | "/ready"));
    match req {
        Some(mut r) if health => {
            r.keep_alive = false;
            api::handle(&shard, r, &mut wbuf).await;
        }
        _ => write_refusal(&mut api::Out::new(&mut wbuf, true, false)),
    }
    let _ = monoio::time::timeout(OVER_CAP_WAIT, stream.write_all(wbuf)).await;
}

/// A connection beyond the cap whose request is already in the socket: answers it without
/// waiting (`/alive` with 200, anything but `/ready` with 503) and returns true; false when
/// there is no complete request yet, or it is `/ready` (which needs the other cores).
pub fn answer_over_cap_now(stream: &TcpStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut peek = [0u8; 2048];
    let n = match recv(
        stream.as_raw_fd(),
        &mut peek,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) => n,
        Err(_) => return false,
    };
    let head = &peek[..n];
    if !head.windows(4).any(|w| w == b"\r\n\r\n") {
        return false;
    }
    if head.starts_with(b"GET /ready ") {
        return false;
    }
    let mut buf = BytesMut::new();
    let mut out = api::Out::new(&mut buf, true, false);
    if head.starts_with(b"GET /alive ") {
        out.json(200, b"{\"ok\":1}");
    } else {
        write_refusal(&mut out);
    }
    send_now(stream, &buf);
    true
}

/// Refuses a connection beyond the cap at once: 503 with `Retry-After`, written without waiting.
pub fn refuse_now(stream: &TcpStream) {
    let mut buf = BytesMut::new();
    write_refusal(&mut api::Out::new(&mut buf, true, false));
    send_now(stream, &buf);
}

fn write_refusal(out: &mut api::Out<'_>) {
    api::write_error(
        out,
        &Error::new(
            ErrorKind::TooManyConnections,
            "too many connections on this core",
        ),
        None,
    );
}

/// Writes what the socket takes now (a small answer always fits a fresh socket's buffer), after
/// reading what the client sent so far: closing a socket with unread data would reset the
/// connection, and the client could lose the answer.
fn send_now(stream: &TcpStream, buf: &[u8]) {
    use nix::sys::socket::{recv, send, MsgFlags};
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match recv(fd, &mut sink, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if n == sink.len() => continue,
            _ => break,
        }
    }
    let _ = send(fd, buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL);
}

/// How long a connection beyond the cap may take to send its request (a health checker sends
/// it at once; an idle connection of a flood must not hold its slot for long).
const OVER_CAP_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

fn count_error(shard: &Shard) {
    metrics::inc(&shard.metrics.http_requests_total);
    metrics::inc(&shard.metrics.http_responses_4xx_total);
}
