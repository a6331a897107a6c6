//! One HTTP/1.1 connection: read into a buffer, decode every complete request, answer them in
//! order (pipelining), write all answers with one write, repeat. A request that has started must
//! finish arriving within `request_timeout` (else 408 and close); an idle keep-alive connection
//! is closed after `idle_timeout` or when shutdown begins.

use crate::api;
use crate::metrics;
use crate::shard::Shard;
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
    let mut request_started: Option<Instant> = None;
    loop {
        // Answer every complete request in the buffer.
        let mut close = false;
        loop {
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
                        Some(true) => {
                            close = true;
                            break;
                        }
                        Some(false) => {}
                    }
                }
                Err(e) => {
                    let err = api::http_error(&e);
                    let mut out = api::Out {
                        buf: &mut wbuf,
                        close: true,
                        head: false,
                    };
                    api::write_error(&mut out, &err, None);
                    count_error(&shard);
                    close = true;
                    break;
                }
            }
        }
        if !wbuf.is_empty() {
            let (res, buf) = stream.write_all(wbuf).await;
            wbuf = buf;
            wbuf.clear();
            if res.is_err() {
                return;
            }
        }
        if close {
            return;
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
                    let mut out = api::Out {
                        buf: &mut buf,
                        close: true,
                        head: false,
                    };
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
) -> Option<bool> {
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

fn count_error(shard: &Shard) {
    metrics::inc(&shard.metrics.http_requests_total);
    metrics::inc(&shard.metrics.http_responses_4xx_total);
}
