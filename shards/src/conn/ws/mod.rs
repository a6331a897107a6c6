//! The WebSocket driver (RFC 6455, with the sans-I/O codec of `kateway_proto::ws`). After the
//! upgrade the connection is split: a reader decodes the client's frames into [`Inbox`] items,
//! and the writer turns them into commands and writes every frame the server sends, so only
//! one place writes ([`publish`] and [`subscribe`]). What a socket does comes from its route:
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
//! frame the codec refuses closes with its code (1002, 1007, 1009). When the server closes
//! first it shuts its write side and reads (dropping) what the client still sends, for up to
//! [`LINGER`] (an HTTP/1.1 error answer's lingering close), so the client reads the close frame
//! rather than a reset.

use super::h1::{answer_last, write_out, LINGER};
use super::Transport;
use crate::api;
use crate::event::Event;
use crate::metrics;
use crate::node::Core;
use crate::tenancy::edge::lost;
use bytes::{Bytes, BytesMut};
use kateway_core::tenancy::Need;
use kateway_core::{Error, ErrorKind};
use kateway_proto::command::{Caller, Publish, Socket, Subscribe, TopicPath};
use kateway_proto::http1::Request;
use kateway_proto::query;
use kateway_proto::reply::{Body, Reply, Value};
use kateway_proto::ws::{self, CloseError, Decoder, Message};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

mod publish;
mod subscribe;
use publish::publish;
use subscribe::subscribe;

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
    /// The server sent its close frame: the reader drops what it reads.
    closing: Cell<bool>,
    ev: Event,
}

impl Shared {
    /// One queued message or ping taken off: the reader, which may be waiting for room in the
    /// inbox, is woken.
    fn done(&self) {
        self.pending.set(self.pending.get().saturating_sub(1));
        self.ev.notify();
    }

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
    let need = match &socket {
        Socket::Publish(p) => Need::Publish {
            topic: p.topic,
            ver: p.ver,
        },
        Socket::Subscribe(s) => Need::Subscribe(s.topic.as_ref()),
    };
    let up = match ws::handshake::check_upgrade(req) {
        // RFC 6455 §4.1: the upgrade is an HTTP/1.1 request.
        Ok(_) if req.minor == 0 => {
            let e = Error::new(
                ErrorKind::InvalidParam,
                "a WebSocket upgrade needs HTTP/1.1",
            );
            answer_last(&core, &mut stream, Reply::error(&e), t0).await;
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
            answer_last(&core, &mut stream, reply, t0).await;
            return;
        }
    };
    // Everything that can fail before the upgrade is answered in HTTP.
    let mode = match prepare(&core, caller, socket, req).await {
        Ok(m) => m,
        Err(e) => {
            answer_last(&core, &mut stream, Reply::error(&e), t0).await;
            return;
        }
    };
    api::count(&core, "websocket", 101, t0);
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
        closing: Cell::new(false),
        ev: Event::default(),
    };
    let cfg = &core.shard.cfg().websocket;
    // A published message larger than a message may be is refused by the codec (1009) before
    // it is buffered, rather than read whole and answered with an error.
    // A subscriber only sends small control frames ({"credit":n}, {"ack":[p,o]}).
    let (max_frame, max_message) = match mode {
        Mode::Publish(_) => (
            cfg.max_frame_bytes.0,
            cfg.max_message_bytes
                .0
                .min(core.shard.cfg().limits.max_message_bytes.0),
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
    let reader_done = {
        let mut writer = std::pin::pin!(async {
            match mode {
                Mode::Publish(p) => publish(&core, caller, &p, &sh, &mut wr).await,
                Mode::Subscribe { sub, s, credit } => {
                    subscribe(&core, caller, &s, sub, credit, &sh, &mut wr).await
                }
            }
        });
        // A key that loses access (revoked, expired, a grant taken back) closes the socket
        // with 1008, through the writer, like a close of the client's.
        let revoked = async {
            lost(&core.shard, caller.principal(), need).await;
            sh.push(Inbox::Close(1008, "policy violation: the key lost access"));
            sh.ev.notify();
            std::future::pending::<()>().await
        };
        let mut revoked = std::pin::pin!(revoked);
        monoio::select! {
            _ = &mut reader => {
                monoio::select! {
                    _ = &mut writer => {}
                    _ = &mut revoked => {}
                }
                true
            }
            _ = &mut writer => false,
            _ = &mut revoked => false,
        }
    };
    if !reader_done {
        // The server closed first (a protocol error, an idle client, a drain, a lost key).
        // A socket closed with unread data is reset, and a client still writing then fails
        // its write before it reads the close frame: so the write side is shut and the
        // client's bytes are read and dropped until it closes too, for at most LINGER.
        sh.closing.set(true);
        sh.ev.notify();
        let _ = wr.shutdown().await;
        let _ = monoio::time::timeout(LINGER, &mut reader).await;
    }
}

/// What an upgraded socket does (one per socket, so its size does not matter).
#[allow(clippy::large_enum_variant)]
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
            let cfg = &core.shard.cfg().websocket;
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
/// or goes away. Stops reading while `max_pending` data messages wait. Once the server closes
/// (after a protocol error, or [`Shared::closing`]), it reads and drops bytes until the end of
/// the stream.
async fn read_frames<R: AsyncReadRent>(
    mut rd: R,
    mut rbuf: BytesMut,
    sh: &Shared,
    limits: ws::Limits,
    max_pending: usize,
) {
    let mut dec = Decoder::new(limits);
    loop {
        while sh.pending.get() >= max_pending && !sh.closing.get() {
            let seen = sh.ev.epoch();
            sh.ev.wait(seen).await;
        }
        if sh.closing.get() {
            rbuf.clear();
        } else {
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
                    sh.closing.set(true);
                    rbuf.clear();
                }
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
    let limit = core.shard.cfg().server.write_timeout.0;
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
