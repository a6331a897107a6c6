//! The HTTP/2 driver (hyperium `h2` over a monoio stream): h2c with prior knowledge, or h2
//! negotiated by ALPN over TLS. The connection task accepts streams and drives the connection's
//! I/O; each stream is a task of its own that collects its request, turns it into the same
//! command an HTTP/1.1 request becomes, runs it and sends the reply. A long poll is one parked
//! stream: the connection's other streams go on, and a stream the client resets drops its poll.
//!
//! Limits: concurrent streams, frame size, header list size and flow-control windows are
//! announced in SETTINGS (`[http2]`); a client that resets streams faster than they are served
//! (rapid reset) or makes the gateway reset them gets GOAWAY ENHANCE_YOUR_CALM. Replies are sent
//! as the client's window opens, each piece within `write_timeout` (else the stream is reset and
//! its response memory given back). On draining, GOAWAY is sent, parked polls answer 204 and the
//! connection closes once its streams are done.

use crate::api;
use crate::api::stream::EventSource;
use crate::event::Event;
use crate::node::Core;
use crate::shard::HeldRequest;
use crate::tenancy::edge::{admit, lost, refused, Peer};
use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use kateway_core::{Error, ErrorKind};
use kateway_proto::command::{Command, Parts};
use kateway_proto::h2scan::Scanner;
use kateway_proto::http1::Method;
use kateway_proto::reply::{Body, Reply, Value};
use monoio_compat::{AsyncRead, AsyncWrite};
use std::cell::Cell;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::ReadBuf;

/// A reply body up to this size is handed to the connection at once, without waiting for the
/// client's window (the connection buffers it): bounded by this times the open streams.
const SMALL_REPLY: usize = 16 << 10;

/// Serves an HTTP/2 connection until it closes.
pub async fn serve<T>(core: Rc<Core>, io: T, peer: Peer)
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let cfg = core.shard.cfg().clone();
    let h = &cfg.http2;
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(h.max_concurrent_streams)
        .initial_window_size(h.stream_window.0 as u32)
        .initial_connection_window_size(h.connection_window.0 as u32)
        .max_frame_size(h.max_frame_size.0 as u32)
        .max_header_list_size(cfg.limits.max_header_bytes.0 as u32)
        .max_send_buffer_size(h.stream_window.0 as usize)
        .max_pending_accept_reset_streams(h.max_reset_streams as usize)
        .max_local_error_reset_streams(Some(h.max_reset_streams as usize))
        .max_concurrent_reset_streams(h.max_reset_streams as usize);
    let flood = Rc::new(Event::default());
    let io = Scanned {
        io,
        scan: Scanner::new(h.control_frames_per_second, h.control_frame_burst),
        t0: Instant::now(),
        flood: flood.clone(),
    };
    let handshake = monoio::time::timeout(cfg.server.request_timeout.0, b.handshake(io)).await;
    let Ok(Ok(mut conn)) = handshake else {
        return;
    };
    let shard = core.shard.clone();
    crate::metrics::inc(&shard.metrics.http2_connections_total);
    let open = Rc::new(Cell::new(0usize));
    // Told when the last open stream ends, so that the idle timer starts then.
    let quiet = Rc::new(Event::default());
    let mut draining = false;
    let mut forced = false;
    loop {
        if shard.shutdown.get() && !draining {
            draining = true;
            conn.graceful_shutdown();
        }
        let seen = shard.shutdown_event.epoch();
        let quiet_seen = quiet.epoch();
        let idle = open.get() == 0 && !draining;
        let flooded = flood.epoch();
        let next = monoio::select! {
            n = conn.accept() => Some(n),
            _ = flood.wait(0), if flooded == 0 => {
                tracing::debug!("h2 control frame flood: GOAWAY ENHANCE_YOUR_CALM");
                crate::metrics::inc(&shard.metrics.http2_floods_total);
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                draining = true;
                None
            },
            _ = shard.shutdown_event.wait(seen), if !draining => None,
            _ = quiet.wait(quiet_seen), if !idle && !draining => None,
            // (Timers in async blocks: select! builds every branch's future, and a sleep reads
            // the clock when it is made; these are made only for an enabled branch.)
            _ = async { monoio::time::sleep(Duration::from_secs(1)).await }, if draining && !forced => {
                // A client that does not answer the graceful shutdown's PING would hold the
                // connection (and the drain) open: once nothing is in flight, close it.
                if open.get() == 0 {
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                    forced = true;
                }
                None
            },
            _ = async { monoio::time::sleep(core.shard.cfg().server.idle_timeout.0).await }, if idle => {
                // Nothing open for the idle timeout: say goodbye, finish what is in flight.
                draining = true;
                conn.graceful_shutdown();
                None
            },
        };
        match next {
            None => continue,
            Some(Some(Ok((req, respond)))) => {
                open.set(open.get() + 1);
                let (c, o, q) = (core.clone(), open.clone(), quiet.clone());
                monoio::spawn(async move {
                    stream(c, req, respond, peer).await;
                    o.set(o.get() - 1);
                    if o.get() == 0 {
                        q.notify();
                    }
                });
            }
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "h2 connection error");
                break;
            }
            Some(None) => break,
        }
    }
    // Let the connection flush its last frames (GOAWAY, resets).
    let _ = monoio::time::timeout(Duration::from_secs(1), poll_fn(|cx| conn.poll_closed(cx))).await;
}

/// The connection's bytes, scanned as they are read for a flood of control frames; once it is
/// one, nothing more is read and the connection loop is told (it closes with GOAWAY).
struct Scanned<T> {
    io: T,
    scan: Scanner,
    t0: Instant,
    flood: Rc<Event>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Scanned<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.scan.flooded() {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let now = this.t0.elapsed().as_millis() as u64;
        if this.scan.feed(&buf.filled()[before..], now) {
            this.flood.notify();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Scanned<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request of an HTTP/2 stream, as the commands see any request.
struct H2Request {
    method: Method,
    head: http::request::Parts,
    body: Bytes,
}

impl Parts for H2Request {
    fn method(&self) -> Method {
        self.method
    }
    fn path(&self) -> &str {
        self.head.uri.path()
    }
    fn query(&self) -> &str {
        self.head.uri.query().unwrap_or("")
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.headers.get(name).map(|v| v.as_bytes())
    }
    fn header_first(&self, name: &str) -> (Option<&[u8]>, bool) {
        let mut all = self.head.headers.get_all(name).iter();
        let first = all.next().map(|v| v.as_bytes());
        (first, all.next().is_some())
    }
    fn body(&self) -> &Bytes {
        &self.body
    }
}

/// Serves one stream: collect, parse, run, reply.
async fn stream(
    core: Rc<Core>,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: Peer,
) {
    let t0 = Instant::now();
    let (head, body) = req.into_parts();
    let method = Method::parse(head.method.as_str());
    let head_only = method == Method::Head;
    let body = match collect(&core, body).await {
        Ok(b) => b,
        Err(e) => {
            send(&core, &mut respond, Reply::error(&e), head_only, t0).await;
            return;
        }
    };
    let req = H2Request { method, head, body };
    let cmd = match Command::parse(&req, &core.shard.limits()) {
        Ok(c) => c,
        Err(e) => {
            let e = refused(&core.shard, &req, peer, e);
            send(&core, &mut respond, Reply::error(&e), head_only, t0).await;
            return;
        }
    };
    let admitted = match admit(&core.shard, &req, &cmd, peer) {
        Ok(a) => a,
        Err(e) => {
            send(&core, &mut respond, Reply::error(&e), head_only, t0).await;
            return;
        }
    };
    let caller = admitted.caller(&req);
    let lost = lost(&core.shard, admitted.principal.as_ref(), cmd.need());
    if let Command::Subscribe(sub) = &cmd {
        if sub.events {
            match api::stream::events(&core, caller, sub).await {
                Ok(events) => stream_events(&core, respond, events, t0, lost).await,
                Err(e) => send(&core, &mut respond, Reply::error(&e), head_only, t0).await,
            }
            return;
        }
    }
    if let Command::Dashboard { events: true, app } = &cmd {
        let snapshots = api::dashboard::Snapshots::new(core.clone(), app.map(str::to_owned));
        return stream_events(&core, respond, snapshots, t0, lost).await;
    }
    let reply = if cmd.may_park() {
        // A parked poll whose stream the client resets is dropped at once; one whose key
        // loses access is answered 401 or 403.
        let run = api::execute(&core, caller, cmd);
        monoio::select! {
            r = run => r,
            e = lost => Reply::error(&e),
            _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
        }
    } else {
        api::execute(&core, caller, cmd).await
    };
    let reply = super::gzip(&core, &req, reply).await;
    send(&core, &mut respond, reply, head_only, t0).await;
}

/// The request body, whole, within the request timeout and the body limit; what it holds
/// counts against the core's request budget while it arrives (all of it: a connection may have
/// many streams sending at once, so there is no per-stream allowance as HTTP/1.1 has per
/// connection).
async fn collect(core: &Rc<Core>, mut body: RecvStream) -> Result<Bytes, Error> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let max = super::h1::limits(core).max_body;
    // Most bodies came in one DATA frame with the headers: taken without arming a timer.
    let first = poll_fn(|cx| Poll::Ready(body.poll_data(cx))).await;
    if let Poll::Ready(Some(Ok(chunk))) = &first {
        if body.is_end_stream() && chunk.len() <= max {
            let _ = body.flow_control().release_capacity(chunk.len());
            return Ok(chunk.clone());
        }
    }
    let mut held = HeldRequest::new(&core.shard);
    let mut data = BytesMut::new();
    let read = async {
        match first {
            Poll::Ready(Some(chunk)) => take(&mut body, &mut data, &mut held, chunk, max)?,
            Poll::Ready(None) => return Ok(()),
            Poll::Pending => {}
        }
        while let Some(chunk) = body.data().await {
            take(&mut body, &mut data, &mut held, chunk, max)?;
        }
        Ok(())
    };
    match monoio::time::timeout(core.shard.cfg().server.request_timeout.0, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::RequestTimeout,
                "request not received in time",
            ))
        }
    }
    Ok(data.freeze())
}

fn sensitive(mut v: http::HeaderValue) -> http::HeaderValue {
    v.set_sensitive(true);
    v
}

/// Adds a received DATA chunk to the body, within the limit and the core's request budget.
fn take(
    body: &mut RecvStream,
    data: &mut BytesMut,
    held: &mut HeldRequest,
    chunk: Result<Bytes, h2::Error>,
    max: usize,
) -> Result<(), Error> {
    let chunk =
        chunk.map_err(|e| Error::new(ErrorKind::MalformedHttp, format!("request body: {e}")))?;
    let _ = body.flow_control().release_capacity(chunk.len());
    if data.len() + chunk.len() > max {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            "request body too large",
        ));
    }
    data.extend_from_slice(&chunk);
    held.resize(data.len())?;
    Ok(())
}

/// The response head of a reply.
fn head(reply: &Reply, body: Option<(&'static str, &Bytes)>) -> http::Response<()> {
    use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
    let mut r = http::Response::new(());
    *r.status_mut() = http::StatusCode::from_u16(reply.status).unwrap_or_default();
    let h = r.headers_mut();
    for (name, v) in &reply.headers {
        // Values that differ from reply to reply (offsets, keys) are sent as never-indexed
        // literals: indexing them would only churn the HPACK table.
        let value = match v {
            Value::Bytes(b) => HeaderValue::from_bytes(b).ok().map(sensitive),
            Value::Static(s) => Some(HeaderValue::from_static(s)),
            Value::Int(i) => Some(sensitive(HeaderValue::from(*i))),
        };
        if let (Some(value), Ok(name)) = (value, HeaderName::from_bytes(name.as_bytes())) {
            h.append(name, value);
        }
    }
    if let Some((ct, data)) = body {
        if let Ok(ct) = HeaderValue::from_str(ct) {
            h.insert(CONTENT_TYPE, ct);
        }
        h.insert(CONTENT_LENGTH, sensitive(data.len().into()));
    } else if reply.status != 204 && reply.status != 304 {
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    r
}

/// Sends a reply on a stream; its hold is kept until the body is out.
async fn send(
    core: &Core,
    respond: &mut SendResponse<Bytes>,
    reply: Reply,
    head_only: bool,
    t0: Instant,
) {
    api::count(core, reply.route, reply.status, t0);
    let mut reply = reply;
    // Encoded once, and the records it came from let go at once.
    let body = std::mem::replace(&mut reply.body, Body::Empty).encode();
    super::hold_encoded(&mut reply.hold, body.as_ref().map_or(0, |(_, d)| d.len()));
    let resp = head(&reply, body.as_ref().map(|(ct, d)| (*ct, d)));
    let data = body.map(|(_, d)| d).filter(|d| !d.is_empty() && !head_only);
    let Ok(mut out) = respond.send_response(resp, data.is_none()) else {
        return;
    };
    if let Some(data) = data {
        if send_data(core, &mut out, data, true).await.is_err() {
            out.send_reset(Reason::CANCEL);
        }
    }
    drop(reply.hold);
}

/// Sends `data` as the client's window allows, each piece within the write timeout.
pub(super) async fn send_data(
    core: &Core,
    out: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), ()> {
    if end && data.len() <= SMALL_REPLY {
        // The last piece of a reply, and small: the connection buffers it beyond the window,
        // with no timer per reply. (A stream that goes on, like server-sent events, always
        // waits for the window, so a client that does not read holds back its writer.)
        return out.send_data(data, end).map_err(|_| ());
    }
    let limit = core.shard.cfg().server.write_timeout.0;
    while !data.is_empty() {
        out.reserve_capacity(data.len());
        match monoio::time::timeout(limit, poll_fn(|cx| out.poll_capacity(cx))).await {
            Ok(Some(Ok(n))) if n > 0 => {
                let piece = data.split_to(n.min(data.len()));
                out.send_data(piece, end && data.is_empty())
                    .map_err(|_| ())?;
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => return Err(()),
            Err(_) => {
                crate::metrics::inc(&core.shard.metrics.http_write_timeouts_total);
                return Err(());
            }
        }
    }
    Ok(())
}

/// Streams server-sent events on a stream until the client resets it or the core drains.
async fn stream_events(
    core: &Rc<Core>,
    mut respond: SendResponse<Bytes>,
    mut events: impl EventSource,
    t0: Instant,
    lost: impl std::future::Future<Output = Error>,
) {
    let mut lost = std::pin::pin!(lost);
    api::count(core, "events", 200, t0);
    crate::metrics::inc(&core.shard.metrics.sse_streams_total);
    let head = http::Response::builder()
        .status(200)
        .header("content-type", kateway_proto::sse::CONTENT_TYPE)
        .header("cache-control", "no-cache")
        .body(())
        .unwrap_or_default();
    let Ok(mut out) = respond.send_response(head, false) else {
        return;
    };
    let mut data = BytesMut::from(kateway_proto::sse::PREAMBLE);
    let mut hold = None;
    loop {
        if send_data(core, &mut out, data.freeze(), false)
            .await
            .is_err()
        {
            out.send_reset(Reason::CANCEL);
            return;
        }
        drop(hold.take());
        let next = monoio::select! {
            n = events.next() => n,
            _ = poll_fn(|cx| out.poll_reset(cx)) => return,
            // The key lost access: an error event, and the stream ends.
            e = &mut lost => {
                let chunk = api::stream::Chunk::error(&e);
                let _ = send_data(core, &mut out, chunk.data.freeze(), true).await;
                return;
            }
        };
        match next {
            // The chunk's hold is given back once it is sent.
            Some(chunk) => (data, hold) = (chunk.data, chunk.hold),
            None => {
                let _ = out.send_data(Bytes::new(), true);
                return;
            }
        }
    }
}
