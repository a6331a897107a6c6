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
use kateway_proto::http1::{Decoder, Event, Limits};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::rc::Rc;
use std::time::Instant;

const READ_CHUNK: usize = 4096;

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
                    if api::handle(&shard, req, &mut wbuf).await {
                        close = true;
                        break;
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
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
            rbuf.reserve(READ_CHUNK);
        }
        let seen = shard.shutdown_event.epoch();
        let filled = rbuf.len();
        // Read into the spare capacity after what is buffered.
        let spare = rbuf.slice_mut(filled..);
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

fn count_error(shard: &Shard) {
    metrics::inc(&shard.metrics.http_requests_total);
    metrics::inc(&shard.metrics.http_responses_4xx_total);
}
