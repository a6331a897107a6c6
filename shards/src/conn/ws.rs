//! The WebSocket driver (RFC 6455, with the sans-I/O codec of `kateway_proto::ws`). After the
//! upgrade the connection is split: a reader decodes the client's frames into [`Inbox`] items,
//! and the writer turns them into commands and writes every frame the server sends, so only
//! one place writes. What a socket does comes from its route:
//!
//! * **publish** (`/v1/ws/msgs/:topic/:ver`): every text or binary message is published with
//!   the route's options (ack level, key, tags). The messages that arrive together are published
//!   as one batch (one append per partition); batches run concurrently, up to
//!   `websocket.max_in_flight` messages (the reader stops reading beyond it), and the
//!   acknowledgements go back in order, one text frame per message: `{"partition":p,"offset":o}` or
//!   `{"error":{"errmsg":..,"code":..}}`.
//! * **subscribe** (`/v1/ws/msgs/:appid/:topic/:ver?group=`): messages are pushed as text
//!   frames (the JSON object of a JSON-lines subscribe) while the client has credit; it grants
//!   more with `{"credit":n}` and, with `ack=1`, commits with `{"ack":[p,o]}`. A slow client
//!   stops the pushing (no credit, or writes that wait on its socket), never grows memory.
//!
//! Pings go out after `websocket.ping_interval` without a frame from the client; a client
//! silent for two intervals is closed (1000, "idle timeout"). Draining closes with 1001. A
//! frame the codec refuses closes with its code (1002, 1007, 1009).

use super::h1::write_out;
use super::Transport;
use crate::api;
use crate::date::with_date;
use crate::event::Event;
use crate::metrics;
use crate::node::Core;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use kateway_core::{Error, ErrorKind};
use kateway_proto::batch::BatchItem;
use kateway_proto::command::{AckBatch, Caller, Command, Publish, Socket, Subscribe, TopicPath};
use kateway_proto::http1::encode::{put_i64, put_u64, write_reply};
use kateway_proto::http1::Request;
use kateway_proto::query;
use kateway_proto::reply::{Body, Reply, Value};
use kateway_proto::ws::{self, CloseError, Decoder, Message};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The largest message a subscribing client may send (its control frames are a few bytes).
const CONTROL_FRAME: u64 = 4096;

/// What the reader hands the writer.
enum Inbox {
    Data(Bytes),
    Ping(Bytes),
    /// The client closed (with this code to echo) or broke the protocol (this code to send).
    Close(u16, &'static str),
    /// The connection is gone.
    Gone,
}

/// State shared by the reader and the writer of one socket.
struct Shared {
    inbox: RefCell<VecDeque<Inbox>>,
    /// Messages and pings queued, or publishes in flight: the reader stops reading at its
    /// limit (`max_in_flight` for a publish socket), so a client cannot queue without bound.
    pending: Cell<usize>,
    heard: Cell<Instant>,
    ev: Event,
}

impl Shared {
    fn push(&self, item: Inbox) {
        if matches!(item, Inbox::Data(_) | Inbox::Ping(_)) {
            self.pending.set(self.pending.get() + 1);
        }
        self.inbox.borrow_mut().push_back(item);
        self.ev.notify();
    }
}

/// Upgrades the connection and runs its socket until it closes; a request that is no valid
/// upgrade, or whose subscription cannot open, gets an HTTP answer instead.
pub async fn serve<S: Transport>(
    core: Rc<Core>,
    mut stream: S,
    rbuf: BytesMut,
    req: &Request,
    caller: Caller<'_>,
    socket: Socket<'_>,
    t0: Instant,
) {
    let refuse = |reply: Reply| {
        let mut out = BytesMut::new();
        api::count(&core, reply.status, t0);
        with_date(|d| write_reply(&mut out, &reply, d, false, true));
        out
    };
    let up = match ws::handshake::check_upgrade(req) {
        // RFC 6455 §4.1: the upgrade is an HTTP/1.1 request.
        Ok(_) if req.minor == 0 => {
            let e = Error::new(
                ErrorKind::InvalidParam,
                "a WebSocket upgrade needs HTTP/1.1",
            );
            let _ = write_out(&core, &mut stream, &mut refuse(Reply::error(&e))).await;
            return;
        }
        Ok(up) => up,
        Err(e) => {
            let kind = match e {
                ws::handshake::HandshakeError::NotUpgrade
                | ws::handshake::HandshakeError::BadVersion => ErrorKind::UpgradeRequired,
                _ => ErrorKind::InvalidParam,
            };
            let reply = Reply::error(&Error::new(kind, e.to_string()))
                .header("upgrade", Value::Static("websocket"))
                .header(
                    "sec-websocket-version",
                    Value::Static(ws::handshake::VERSION),
                );
            let _ = write_out(&core, &mut stream, &mut refuse(reply)).await;
            return;
        }
    };
    // Everything that can fail before the upgrade is answered in HTTP.
    let mode = match prepare(&core, caller, socket, req).await {
        Ok(m) => m,
        Err(e) => {
            let _ = write_out(&core, &mut stream, &mut refuse(Reply::error(&e))).await;
            return;
        }
    };
    api::count(&core, 101, t0);
    metrics::inc(&core.shard.metrics.websocket_connections_total);
    let mut out = BytesMut::new();
    ws::handshake::write_response(&mut out, &up.accept);
    if write_out(&core, &mut stream, &mut out).await.is_err() {
        return;
    }
    let (rd, mut wr) = stream.into_split();
    let sh = Shared {
        inbox: RefCell::new(VecDeque::new()),
        pending: Cell::new(0),
        heard: Cell::new(Instant::now()),
        ev: Event::default(),
    };
    let cfg = &core.shard.cfg.websocket;
    // A published message larger than a message may be is refused by the codec (1009) before
    // it is buffered, rather than read whole and answered with an error.
    // A subscriber only sends small control frames ({"credit":n}, {"ack":[p,o]}).
    let (max_frame, max_message) = match mode {
        Mode::Publish(_) => (
            cfg.max_frame_bytes.0,
            cfg.max_message_bytes
                .0
                .min(core.shard.cfg.limits.max_message_bytes.0),
        ),
        Mode::Subscribe { .. } => (CONTROL_FRAME, CONTROL_FRAME),
    };
    let limits = ws::Limits {
        max_frame: max_frame as usize,
        max_message: max_message as usize,
    };
    let max_pending = match mode {
        Mode::Publish(_) => cfg.max_in_flight as usize,
        Mode::Subscribe { .. } => 64,
    };
    let mut reader = std::pin::pin!(read_frames(rd, rbuf, &sh, limits, max_pending));
    let mut writer = std::pin::pin!(async {
        match mode {
            Mode::Publish(p) => publish(&core, caller, &p, &sh, &mut wr).await,
            Mode::Subscribe { sub, s, credit } => {
                subscribe(&core, caller, &s, sub, credit, &sh, &mut wr).await
            }
        }
    });
    monoio::select! {
        _ = &mut reader => writer.await,
        _ = &mut writer => {}
    }
}

/// What an upgraded socket does.
enum Mode<'a> {
    Publish(Publish<'a>),
    Subscribe {
        sub: crate::delivery::Subscription,
        s: Subscribe<'a>,
        credit: u32,
    },
}

/// Checks what the socket needs before the upgrade: the caller, and for a subscribe its
/// credit and an open subscription.
async fn prepare<'a>(
    core: &Rc<Core>,
    caller: Caller<'_>,
    socket: Socket<'a>,
    req: &Request,
) -> Result<Mode<'a>, Error> {
    caller.appid()?;
    match socket {
        Socket::Publish(p) => {
            // An unknown topic is a 404 before the upgrade, not an error frame per message.
            let topic = TopicPath {
                appid: caller.appid()?,
                topic: p.topic,
                ver: p.ver,
            };
            core.backend.resolve(&topic).await?;
            Ok(Mode::Publish(p))
        }
        Socket::Subscribe(s) => {
            let cfg = &core.shard.cfg.websocket;
            let credit = match query::raw(req.query(), "credit") {
                None => cfg.default_credit,
                Some(c) => match c.parse::<u32>() {
                    Ok(n) if n >= 1 && n <= cfg.max_credit => n,
                    _ => {
                        return Err(Error::param(format!(
                            "invalid credit {c:?}: use 1..={}",
                            cfg.max_credit
                        )))
                    }
                },
            };
            let batch = s.batch.unwrap_or(100);
            let sub = api::subscribe::open(core, caller, &s, batch).await?;
            Ok(Mode::Subscribe { sub, s, credit })
        }
    }
}

/// Reads and decodes the client's frames into the inbox until it closes, breaks the protocol
/// or goes away. Stops reading while `max_pending` data messages wait.
async fn read_frames<R: AsyncReadRent>(
    mut rd: R,
    mut rbuf: BytesMut,
    sh: &Shared,
    limits: ws::Limits,
    max_pending: usize,
) {
    let mut dec = Decoder::new(limits);
    loop {
        while sh.pending.get() >= max_pending {
            let seen = sh.ev.epoch();
            sh.ev.wait(seen).await;
        }
        match dec.decode(&mut rbuf) {
            Ok(Some(m)) => {
                sh.heard.set(Instant::now());
                match m {
                    Message::Text(b) | Message::Binary(b) => sh.push(Inbox::Data(b)),
                    // A copy: the payload would otherwise keep its whole read buffer alive.
                    Message::Ping(p) => sh.push(Inbox::Ping(Bytes::copy_from_slice(&p))),
                    Message::Pong(_) => {}
                    Message::Close(c) => {
                        let code = c.map_or(1000, |(code, _)| code);
                        sh.push(Inbox::Close(code, ""));
                        return;
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(CloseError { code, reason }) => {
                sh.push(Inbox::Close(code, reason));
                return;
            }
        }
        let (res, buf) = rd.read(super::h1::spare(rbuf)).await;
        rbuf = buf.into_inner();
        if !matches!(res, Ok(n) if n > 0) {
            sh.push(Inbox::Gone);
            return;
        }
    }
}

/// Writes what `out` holds within the write timeout; false when the connection is to be
/// closed.
async fn flush<W: AsyncWriteRent>(core: &Core, wr: &mut W, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let limit = core.shard.cfg.server.write_timeout.0;
    let buf = std::mem::take(out);
    match monoio::time::timeout(limit, wr.write_all(buf)).await {
        Ok((Ok(_), mut b)) => {
            b.clear();
            *out = b;
            true
        }
        Ok((Err(_), _)) => false,
        Err(_) => {
            metrics::inc(&core.shard.metrics.http_write_timeouts_total);
            false
        }
    }
}

/// What the writer does on a timer tick: ping a quiet client, close a silent one.
fn keepalive(sh: &Shared, every: Duration, out: &mut BytesMut, last_ping: &mut Instant) -> bool {
    let quiet = sh.heard.get().elapsed();
    if quiet >= every * 2 {
        ws::encode::write_close(out, 1000, "idle timeout");
        return false;
    }
    if quiet >= every && last_ping.elapsed() >= every {
        ws::encode::write_ping(out, b"kateway");
        *last_ping = Instant::now();
    }
    true
}

/// The text of one publish's acknowledgement.
fn ack_text(reply: Reply) -> Bytes {
    let body = match reply.body {
        Body::Full { data, .. } => data,
        _ => Bytes::from_static(b"{}"),
    };
    if reply.status < 300 {
        return body;
    }
    let mut t = BytesMut::with_capacity(body.len() + 10);
    t.extend_from_slice(b"{\"error\":");
    t.extend_from_slice(&body);
    t.extend_from_slice(b"}");
    t.freeze()
}

/// Publishes the messages that arrived together as one batch with the socket's options (one
/// append per partition, not one per message); returns each message's acknowledgement text, in
/// order. A message that is empty gets its own error; a batch that fails gives its error to
/// each of its messages.
async fn publish_many(
    core: &Rc<Core>,
    caller: Caller<'_>,
    template: &Publish<'_>,
    msgs: Vec<Bytes>,
) -> Vec<Bytes> {
    let mut acks = vec![Bytes::new(); msgs.len()];
    let mut items = Vec::with_capacity(msgs.len());
    let mut slots = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.into_iter().enumerate() {
        if m.is_empty() {
            let e = Error::new(ErrorKind::InvalidBody, "empty message");
            acks[i] = ack_text(Reply::error(&e));
        } else {
            items.push(BatchItem {
                key: None,
                value: m,
            });
            slots.push(i);
        }
    }
    if items.is_empty() {
        return acks;
    }
    let done = match api::publish::resolve(core, caller, template).await {
        Ok(meta) => api::publish::publish_all(core, &meta, template, items).await,
        Err(e) => Err(e),
    };
    match done {
        Ok((results, _)) => {
            for (slot, (p, o)) in slots.into_iter().zip(results) {
                let mut t = BytesMut::with_capacity(40);
                t.extend_from_slice(b"{\"partition\":");
                put_u64(&mut t, p.into());
                t.extend_from_slice(b",\"offset\":");
                put_i64(&mut t, o);
                t.extend_from_slice(b"}");
                acks[slot] = t.freeze();
            }
        }
        Err(e) => {
            let t = ack_text(Reply::error(&e));
            for slot in slots {
                acks[slot] = t.clone();
            }
        }
    }
    acks
}

/// The writer of a publishing socket.
async fn publish<W: AsyncWriteRent>(
    core: &Rc<Core>,
    caller: Caller<'_>,
    template: &Publish<'_>,
    sh: &Shared,
    wr: &mut W,
) {
    let shard = &core.shard;
    let every = shard.cfg.websocket.ping_interval.0;
    let mut out = BytesMut::new();
    let mut in_flight = FuturesOrdered::new();
    let max_batch = shard.cfg.limits.max_batch_messages as usize;
    let mut closing: Option<(u16, &'static str)> = None;
    let mut last_ping = Instant::now();
    loop {
        // Taken before the inbox is read: what arrives later (even during a write below)
        // moves the epoch, so the wait at the end of the loop cannot miss it.
        let seen = sh.ev.epoch();
        let drain = shard.shutdown_event.epoch();
        let items: Vec<Inbox> = sh.inbox.borrow_mut().drain(..).collect();
        let mut batch = Vec::new();
        for item in items {
            match item {
                Inbox::Data(m) if closing.is_none() => {
                    metrics::inc(&shard.metrics.websocket_messages_in_total);
                    batch.push(m);
                    if batch.len() == max_batch {
                        let b = std::mem::take(&mut batch);
                        in_flight.push_back(publish_many(core, caller, template, b));
                    }
                }
                Inbox::Data(_) => sh.pending.set(sh.pending.get() - 1),
                Inbox::Ping(p) => {
                    sh.pending.set(sh.pending.get() - 1);
                    ws::encode::write_pong(&mut out, &p);
                }
                Inbox::Close(code, reason) => closing = closing.or(Some((code, reason))),
                Inbox::Gone => return,
            }
        }
        if !batch.is_empty() {
            in_flight.push_back(publish_many(core, caller, template, batch));
        }
        if let Some((code, reason)) = closing {
            if in_flight.is_empty() {
                ws::encode::write_close(&mut out, code, reason);
                flush(core, wr, &mut out).await;
                return;
            }
        }
        if !flush(core, wr, &mut out).await {
            return;
        }
        let tick = every
            .saturating_sub(sh.heard.get().elapsed())
            .max(Duration::from_millis(10));
        monoio::select! {
            acks = in_flight.next(), if !in_flight.is_empty() => {
                for text in acks.unwrap_or_default() {
                    sh.pending.set(sh.pending.get() - 1);
                    metrics::inc(&shard.metrics.websocket_messages_out_total);
                    ws::encode::write_frame(&mut out, ws::Opcode::Text, &text);
                }
                sh.ev.notify();
            }
            _ = sh.ev.wait(seen) => {}
            _ = shard.shutdown_event.wait(drain), if closing.is_none() => {
                closing = Some((1001, "going away"));
            }
            _ = monoio::time::sleep(tick) => {
                if !keepalive(sh, every, &mut out, &mut last_ping) {
                    flush(core, wr, &mut out).await;
                    return;
                }
            }
        }
        if shard.shutdown.get() && closing.is_none() {
            closing = Some((1001, "going away"));
        }
    }
}

/// A subscriber's frame: `{"credit":n}`, `{"ack":[p,o]}`, or both.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    credit: Option<u32>,
    ack: Option<(u32, u64)>,
}

/// The writer of a subscribing socket.
async fn subscribe<W: AsyncWriteRent>(
    core: &Rc<Core>,
    caller: Caller<'_>,
    s: &Subscribe<'_>,
    mut sub: crate::delivery::Subscription,
    mut credit: u32,
    sh: &Shared,
    wr: &mut W,
) {
    let shard = &core.shard;
    let cfg = &shard.cfg.websocket;
    let every = cfg.ping_interval.0;
    let batch = s.batch.unwrap_or(100);
    let mut out = BytesMut::new();
    let mut last_ping = Instant::now();
    loop {
        // Taken before the inbox is read: what arrives later (even during a write below)
        // moves the epoch, so the wait at the end of the loop cannot miss it.
        let seen = sh.ev.epoch();
        let drain = shard.shutdown_event.epoch();
        let items: Vec<Inbox> = sh.inbox.borrow_mut().drain(..).collect();
        for item in items {
            match item {
                Inbox::Data(m) => {
                    sh.pending.set(sh.pending.get() - 1);
                    metrics::inc(&shard.metrics.websocket_messages_in_total);
                    match serde_json::from_slice::<Control>(&m) {
                        Ok(c) => {
                            if let Some(n) = c.credit {
                                credit = credit.saturating_add(n).min(cfg.max_credit);
                            }
                            if let Some(a) = c.ack {
                                let cmd = Command::AckBatch(AckBatch {
                                    topic: s.topic,
                                    group: s.group,
                                    acks: vec![a],
                                });
                                let r = api::execute(core, caller, cmd).await;
                                if r.status >= 300 {
                                    let t = ack_text(r);
                                    ws::encode::write_frame(&mut out, ws::Opcode::Text, &t);
                                }
                            }
                        }
                        Err(e) => {
                            let e = Error::new(
                                ErrorKind::InvalidBody,
                                format!("expected {{\"credit\":n}} or {{\"ack\":[p,o]}}: {e}"),
                            );
                            let t = ack_text(Reply::error(&e));
                            ws::encode::write_frame(&mut out, ws::Opcode::Text, &t);
                        }
                    }
                    sh.ev.notify();
                }
                Inbox::Ping(p) => {
                    sh.pending.set(sh.pending.get() - 1);
                    ws::encode::write_pong(&mut out, &p);
                }
                Inbox::Close(code, reason) => {
                    ws::encode::write_close(&mut out, code, reason);
                    flush(core, wr, &mut out).await;
                    return;
                }
                Inbox::Gone => return,
            }
        }
        if shard.shutdown.get() {
            ws::encode::write_close(&mut out, 1001, "going away");
            flush(core, wr, &mut out).await;
            return;
        }
        if !keepalive(sh, every, &mut out, &mut last_ping) || !flush(core, wr, &mut out).await {
            flush(core, wr, &mut out).await;
            return;
        }
        if credit == 0 {
            monoio::select! {
                _ = sh.ev.wait(seen) => {}
                _ = shard.shutdown_event.wait(drain) => {}
                _ = monoio::time::sleep(every) => {}
            }
            continue;
        }
        // Not raced against the inbox: a read that is cut short could lose what it took
        // (auto-ack commits on delivery), so control frames wait at most a second.
        sub.set_max((credit as usize).min(batch));
        let deadline = Instant::now() + every.min(Duration::from_secs(1));
        match sub.next(deadline).await {
            Ok(crate::delivery::Batch { records, mut held }) => {
                for m in &records {
                    let mut line = BytesMut::with_capacity(m.value.len() * 4 / 3 + 96);
                    kateway_proto::batch::put_json_line(
                        &mut line,
                        m.partition,
                        m.offset,
                        m.timestamp,
                        &m.key,
                        &m.tags,
                        &m.value,
                    );
                    ws::encode::write_frame(&mut out, ws::Opcode::Text, &line[..line.len() - 1]);
                    metrics::inc(&shard.metrics.websocket_messages_out_total);
                }
                credit -= (records.len() as u32).min(credit);
                // The frames wait for the client, not the records they came from.
                drop(records);
                if let Some(h) = &mut held {
                    h.resize(out.len());
                }
                let ok = flush(core, wr, &mut out).await;
                drop(held);
                if !ok {
                    return;
                }
            }
            Err(e) => {
                let t = ack_text(Reply::error(&e));
                ws::encode::write_frame(&mut out, ws::Opcode::Text, &t);
                ws::encode::write_close(&mut out, 1011, "subscription failed");
                flush(core, wr, &mut out).await;
                return;
            }
        }
    }
}
