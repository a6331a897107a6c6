//! The HTTP/1.1 driver: the only code that knows HTTP/1.1 bytes. It reads into a buffer, decodes
//! every complete request, turns each into a command, runs it and writes its reply, in order
//! (pipelining), with one write for what is ready, then reads again. A request that has started
//! must finish arriving within `request_timeout` (else 408 and close); an idle keep-alive
//! connection is closed after `idle_timeout` or when draining begins. A request that may park
//! (a long poll) watches its socket, so a client that goes away drops its poll at once.
//!
//! Memory per connection is bounded: replies are written out once 64 KiB are buffered (a client
//! pipelining many large subscribes holds one reply at a time), a write that makes no progress
//! for `write_timeout` closes the connection, a reply's hold (its response-memory budget) is
//! kept until it is written, buffers that grew for a large request or reply are given back, and
//! a request buffer beyond 64 KiB counts against the core's `limits.max_request_bytes_per_core`
//! (past it: 503 and close).

use super::Transport;
use crate::api;
use crate::date::with_date;
use crate::metrics;
use crate::node::Core;
use crate::shard::HeldRequest;
use crate::tenancy::edge::{admit, lost, refused, Peer};
use bytes::BytesMut;
use kateway_core::{Error, ErrorKind};
use kateway_proto::command::Command;
use kateway_proto::http1::encode::{write_continue, write_reply};
use kateway_proto::http1::{Decoder, Event, HttpError, Limits, Method, Request};
use kateway_proto::reply::Reply;
use monoio::buf::IoBufMut;
use monoio::io::AsyncWriteRentExt;
use std::any::Any;
use std::rc::Rc;
use std::time::{Duration, Instant};

const READ_CHUNK: usize = 4096;
/// Buffered replies are written out before the next pipelined request once they reach this.
const FLUSH_AT: usize = 64 << 10;
/// A buffer that grew beyond this is replaced by a small one once it is empty.
const KEEP_CAPACITY: usize = 64 << 10;
/// Large replies are written in pieces of this size, each within the write timeout.
const WRITE_PIECE: usize = 256 << 10;
/// A connection closed after an error answer reads and drops what its client still sends for
/// at most this long, and this much (a WebSocket the server closes first lingers as long).
pub(super) const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 4 << 20;
/// How long a connection that has not sent its first request yet is still waited for once
/// draining begins: it was accepted, so its client is about to send a request that must be
/// answered (closing it would fail a request that no other process will see).
pub(super) const FIRST_REQUEST_IN_DRAIN: Duration = Duration::from_secs(1);
/// How long a request that may park runs before its socket is watched.
const WATCH_AFTER: Duration = Duration::from_millis(100);

/// The read buffer's spare capacity after what is buffered (made at least half a chunk), for a
/// read that appends.
pub fn spare(mut rbuf: BytesMut) -> monoio::buf::SliceMut<BytesMut> {
    if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
        rbuf.reserve(READ_CHUNK);
    }
    let filled = rbuf.len();
    rbuf.slice_mut(filled..)
}

/// Maps a decoding failure to the error taxonomy.
pub fn http_error(e: &HttpError) -> Error {
    match e {
        HttpError::Malformed(m) => {
            Error::new(ErrorKind::MalformedHttp, format!("malformed request: {m}"))
        }
        HttpError::HeadersTooLarge => {
            Error::new(ErrorKind::HeadersTooLarge, "request headers too large")
        }
        HttpError::TooManyHeaders(n) => Error::new(
            ErrorKind::HeadersTooLarge,
            format!("too many header fields: at most {n}"),
        ),
        HttpError::BodyTooLarge => Error::new(ErrorKind::PayloadTooLarge, "request body too large"),
        HttpError::UnsupportedTransferEncoding => Error::new(
            ErrorKind::NotImplemented,
            "only chunked transfer coding is supported",
        ),
        HttpError::NotHttp => Error::new(ErrorKind::MalformedHttp, "not an HTTP/1.1 request"),
    }
}

/// Encodes `reply` into `wbuf`; returns whether the connection closes after it, and its hold.
pub fn encode(
    core: &Core,
    wbuf: &mut BytesMut,
    reply: Reply,
    head: bool,
    keep_alive: bool,
    t0: Instant,
) -> (bool, Option<Box<dyn Any>>) {
    let close = !keep_alive || reply.close || core.shard.shutdown.get();
    let n = with_date(|d| write_reply(wbuf, &reply, d, head, close));
    api::count(core, reply.route, reply.status, t0);
    let mut hold = reply.hold;
    super::hold_encoded(&mut hold, n);
    (close, hold)
}

/// The limits of this core's HTTP/1.1 decoder.
pub fn limits(core: &Core) -> Limits {
    let l = &core.shard.cfg().limits;
    Limits {
        max_head: l.max_header_bytes.0 as usize,
        max_body: (l.max_batch_bytes.0.max(l.max_message_bytes.0) as usize).max(1 << 16),
    }
}

/// Serves a connection until it closes.
pub async fn serve<S: Transport>(core: Rc<Core>, mut stream: S, peer: Peer) {
    let mut decoder = Decoder::new(limits(&core));
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut holds: Vec<Box<dyn Any>> = Vec::new();
    let mut request_started: Option<Instant> = None;
    let mut held = HeldRequest::new(&core.shard);
    // Until its first request, a connection is not closed as idle when draining begins.
    let mut fresh = true;
    let mut drain_cut: Option<Instant> = None;
    loop {
        // Answer every complete request in the buffer.
        let mut close = false;
        let mut linger = false;
        loop {
            if wbuf.len() >= FLUSH_AT {
                if write_out(&core, &mut stream, &mut wbuf).await.is_err() {
                    return;
                }
                holds.clear();
            }
            match decoder.decode(&mut rbuf) {
                Ok(None) => break,
                Ok(Some(Event::Continue)) => write_continue(&mut wbuf),
                Ok(Some(Event::Request(req))) => {
                    request_started = None;
                    fresh = false;
                    let t0 = Instant::now();
                    let (head, keep_alive) = (req.method == Method::Head, req.keep_alive);
                    let answered = answer(&core, req, &mut stream, &mut rbuf, peer).await;
                    let reply = match answered {
                        Answered::Reply(r) => r,
                        // The client went away during a long poll: the poll is dropped.
                        Answered::Gone => return,
                        Answered::Stream(req) => {
                            // An event stream or a WebSocket takes the connection over, after
                            // the replies to the requests before it.
                            if write_out(&core, &mut stream, &mut wbuf).await.is_err() {
                                return;
                            }
                            drop((holds, held, decoder, wbuf));
                            // Boxed: a stream's future is large, and every connection's task
                            // would be sized by it.
                            Box::pin(super::push::serve(core, stream, rbuf, req, t0, peer)).await;
                            return;
                        }
                    };
                    let (c, hold) = encode(&core, &mut wbuf, reply, head, keep_alive, t0);
                    holds.extend(hold);
                    if c {
                        close = true;
                        break;
                    }
                }
                // A peer that speaks no HTTP at all gets no HTTP answer.
                Err(HttpError::NotHttp) => return,
                Err(e) => {
                    let reply = Reply::error(&http_error(&e));
                    encode(&core, &mut wbuf, reply, false, false, Instant::now());
                    close = true;
                    linger = true;
                    break;
                }
            }
        }
        if !wbuf.is_empty() {
            if write_out(&core, &mut stream, &mut wbuf).await.is_err() {
                return;
            }
            holds.clear();
        }
        if close {
            if linger {
                drop(held);
                lingering_close(stream).await;
            }
            return;
        }
        if rbuf.is_empty() && rbuf.capacity() > KEEP_CAPACITY {
            rbuf = BytesMut::new();
        }
        // Read more, within the timeout that applies now.
        let partial = decoder.in_progress(&rbuf);
        let draining = core.shard.shutdown.get();
        if draining && !partial && !fresh {
            return;
        }
        // A request must arrive whole within request_timeout of its first byte, however slowly
        // the client trickles it in; between requests the idle timeout applies (both as in
        // force now: a reload changes them for open connections too).
        let cfg = core.shard.cfg();
        let timeout = if partial {
            let started = *request_started.get_or_insert_with(Instant::now);
            cfg.server
                .request_timeout
                .0
                .saturating_sub(started.elapsed())
        } else {
            request_started = None;
            decoder.set_limits(limits(&core));
            match draining {
                true => drain_cut
                    .get_or_insert_with(|| Instant::now() + FIRST_REQUEST_IN_DRAIN)
                    .saturating_duration_since(Instant::now()),
                false => cfg.server.idle_timeout.0,
            }
        };
        let seen = core.shard.shutdown_event.epoch();
        let spare = spare(rbuf);
        // A request growing past the allowance counts against the core's budget for requests
        // still arriving; beyond it the connection is refused rather than memory exhausted. A
        // chunked body is held by the decoder as it is decoded: it counts too.
        let buffered = spare.get_ref().capacity() + decoder.held();
        let counted = if buffered > KEEP_CAPACITY {
            buffered
        } else {
            0
        };
        if let Err(e) = held.resize(counted) {
            // What the request holds is given back before the (lingering) refusal.
            drop((spare, held, decoder));
            refuse(&core, stream, &e).await;
            return;
        }
        // Biased: a read that completed in the same turn as the drain's start is taken.
        let read = monoio::select! {
            biased;
            r = monoio::time::timeout(timeout, stream.read(spare)) => Some(r),
            _ = core.shard.shutdown_event.wait(seen), if !partial => None,
        };
        match read {
            // Draining began: a fresh connection waits a moment for its request (it had none
            // buffered, so the read's buffer is simply replaced).
            None if fresh => {
                rbuf = BytesMut::new();
                continue;
            }
            None => return,
            Some(Err(_elapsed)) => {
                if partial {
                    let err = Error::new(ErrorKind::RequestTimeout, "request not received in time");
                    drop((held, decoder));
                    refuse(&core, stream, &err).await;
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

/// Writes `reply` as the connection's last answer (`connection: close`), for a stream that
/// could not start (an event stream or a WebSocket refused before it began).
pub(super) async fn answer_last<S: Transport>(
    core: &Core,
    stream: &mut S,
    reply: Reply,
    t0: Instant,
) {
    let mut out = BytesMut::new();
    let (_, hold) = encode(core, &mut out, reply, false, false, t0);
    let _ = write_out(core, stream, &mut out).await;
    drop(hold);
}

/// Answers a request that will not be read to its end with `err`, then closes the connection
/// gracefully ([`lingering_close`]).
async fn refuse<S: Transport>(core: &Core, mut stream: S, err: &Error) {
    let mut buf = BytesMut::new();
    encode(
        core,
        &mut buf,
        Reply::error(err),
        false,
        false,
        Instant::now(),
    );
    let limit = core.shard.cfg().server.write_timeout.0;
    if let Ok((Ok(_), _)) = monoio::time::timeout(limit, stream.write_all(buf)).await {
        lingering_close(stream).await;
    }
}

/// Closes after an error answer while the client may still be sending: the write side is shut
/// down and what arrives is read and dropped (at most [`LINGER_BYTES`] for [`LINGER`]) before
/// the socket closes, so the client reads the answer rather than a reset that its unread
/// request bytes would otherwise provoke.
async fn lingering_close<S: Transport>(mut stream: S) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut dropped = 0;
    let mut buf = vec![0u8; READ_CHUNK * 4];
    while dropped < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                dropped += n;
                buf = b;
            }
            _ => return,
        }
    }
}

/// What answering a request came to.
enum Answered {
    Reply(Reply),
    /// The client went away during a long poll.
    Gone,
    /// The request turns the connection into a stream: server-sent events or a WebSocket.
    Stream(Request),
}

/// Runs a request. One that may park (a long poll) watches its socket while it waits: if the
/// client closes the connection, the request is dropped at once (`None`), so a vanished
/// subscriber does not hold its poll (and its place among the parked polls) until the deadline.
/// Bytes of a pipelined next request that arrive meanwhile are kept in `rbuf`.
async fn answer<S: Transport>(
    core: &Rc<Core>,
    req: Request,
    stream: &mut S,
    rbuf: &mut BytesMut,
    peer: Peer,
) -> Answered {
    let cmd = match Command::parse(&req, &core.shard.limits()) {
        Ok(cmd) => cmd,
        Err(e) => return Answered::Reply(Reply::error(&refused(&core.shard, &req, peer, e))),
    };
    let health_only = peer.listener == super::Listener::Health;
    if health_only && !matches!(cmd, Command::Alive | Command::Ready | Command::Metrics) {
        let e = Error::new(
            ErrorKind::UnknownRoute,
            "this listener answers health checks only",
        );
        return Answered::Reply(Reply::error(&e));
    }
    if cmd.events() || matches!(cmd, Command::Socket(_)) {
        return Answered::Stream(req);
    }
    let admitted = match admit(&core.shard, &req, &cmd, peer) {
        Ok(a) => a,
        Err(e) => return Answered::Reply(Reply::error(&e)),
    };
    let caller = admitted.caller(&req);
    let (park, need) = (cmd.may_park(), cmd.need());
    // One execution future for both paths: two would each take a slot in this function's
    // state, and every connection's task is as large as that state.
    let mut fut = std::pin::pin!(api::execute(core, caller, cmd));
    if !park {
        let reply = (&mut fut).await;
        return Answered::Reply(super::gzip(core, &req, reply).await);
    }
    let lost = lost(&core.shard, admitted.principal.as_ref(), need);
    let mut lost = std::pin::pin!(lost);
    {
        // Most subscribes are answered at once; only a poll that is still waiting after a
        // moment pays for a readiness watch (io_uring poll, which consumes no data).
        let watch = async {
            monoio::time::sleep(WATCH_AFTER).await;
            stream.watch().await
        };
        monoio::select! {
            reply = &mut fut => return Answered::Reply(super::gzip(core, &req, reply).await),
            e = &mut lost => return Answered::Reply(Reply::error(&e)),
            _ = watch => {}
        }
    }
    // Readable while the poll waits: either the peer closed, or it pipelined another request.
    let (res, buf) = stream.read(spare(std::mem::take(rbuf))).await;
    *rbuf = buf.into_inner();
    match res {
        Ok(0) | Err(_) => Answered::Gone,
        Ok(_) => Answered::Reply(super::gzip(core, &req, fut.await).await),
    }
}

/// Writes and empties `wbuf`, in pieces that must each make it out within
/// `server.write_timeout`; an error means the connection is to be closed.
pub(super) async fn write_out<S: Transport>(
    core: &Core,
    stream: &mut S,
    wbuf: &mut BytesMut,
) -> Result<(), ()> {
    let limit = core.shard.cfg().server.write_timeout.0;
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
                    // Keep the allocation of a small buffer for the next replies.
                    *wbuf = buf;
                    wbuf.clear();
                }
            }
            Ok((Err(_), _)) => return Err(()),
            Err(_elapsed) => {
                metrics::inc(&core.shard.metrics.http_write_timeouts_total);
                return Err(());
            }
        }
    }
    Ok(())
}
