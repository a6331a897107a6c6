//! Connections: each core's acceptor, the cap on connections a core serves at once, and what a
//! connection beyond the cap gets (503, except that health checks are still answered). A
//! connection's first bytes tell its protocol (`sniff`): a TLS handshake ([`tls`], then ALPN
//! picks HTTP/2 or HTTP/1.1), the HTTP/2 connection preface (h2c with prior knowledge), or
//! else HTTP/1.1. Each protocol is a driver of its own that turns its bytes into commands and
//! writes the replies: [`h1`] for HTTP/1.1 (and the WebSocket and event-stream upgrades of its
//! requests), [`h2`] for HTTP/2.

pub mod h1;
pub mod h2;
mod push;
pub mod tls;
mod ws;

use crate::date::with_date;
use crate::metrics;
use crate::node::Core;
pub use crate::tenancy::edge::Peer;
use bytes::BytesMut;
use kateway_core::config::Config;
use kateway_core::{Error, ErrorKind};
use kateway_proto::command::{Command, Parts};
use kateway_proto::http1::encode::write_reply;
use kateway_proto::http1::{Decoder, Event, Limits, Method};
use kateway_proto::reply::Reply;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A byte stream a protocol driver serves: plaintext TCP, or TLS over it.
pub trait Transport: AsyncReadRent + AsyncWriteRent + monoio::io::Split + 'static {
    /// Resolves once the peer has sent more bytes or closed the connection, consuming nothing
    /// (a long poll's watch); never, for a transport that cannot tell without reading (TLS).
    fn watch(&self) -> impl Future<Output = ()>;
}

impl Transport for TcpStream {
    async fn watch(&self) {
        let _ = self.readable(false).await;
    }
}

impl Transport for monoio_rustls::ServerTlsStream<TcpStream> {
    async fn watch(&self) {
        std::future::pending::<()>().await
    }
}

/// Makes a reply's response-memory hold count what its encoding takes: the encoded body (base64
/// JSON lines, events, frames) is what waits for a slow client, not the payloads it came from.
pub fn hold_encoded(hold: &mut Option<Box<dyn std::any::Any>>, bytes: usize) {
    if let Some(h) = hold
        .as_mut()
        .and_then(|h| h.downcast_mut::<crate::shard::Held>())
    {
        h.resize(bytes);
    }
}

/// `reply` gzip-coded when `req` accepts it (replies of at least `server.gzip_min_bytes`),
/// 64 KiB at a time with the core yielding in between, so that coding a large batch does not
/// hold up the core's other connections.
pub async fn gzip(core: &Core, req: &impl Parts, reply: Reply) -> Reply {
    if !kateway_proto::gzip::accepted(req) {
        return reply;
    }
    let min = core.shard.cfg().server.gzip_min_bytes.0 as usize;
    let Some(mut g) = kateway_proto::gzip::Gzip::of(&reply, min) else {
        return reply;
    };
    while !g.step(64 << 10) {
        crate::event::yield_now().await;
    }
    g.into_reply(reply)
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The API, in every protocol.
    Main,
    /// Plaintext HTTP/1.1 health checks only (`/alive`, `/ready`, `/metrics`).
    Health,
    /// The operator API, for operator keys only (`auth.operator_listen`).
    Operator,
}

impl Listener {
    /// The listeners a configuration asks for: each kind with its address and the key that
    /// names it (the main one always; the operator's with authentication on and
    /// `auth.operator_listen` set; the health checkers' with `tls.health_listen` set).
    pub fn configured(cfg: &Config) -> Vec<(Listener, &str, &'static str)> {
        let mut out = vec![(Listener::Main, cfg.server.listen.as_str(), "server.listen")];
        if cfg.auth.enabled && !cfg.auth.operator_listen.is_empty() {
            out.push((
                Listener::Operator,
                cfg.auth.operator_listen.as_str(),
                "auth.operator_listen",
            ));
        }
        if !cfg.tls.health_listen.is_empty() {
            out.push((
                Listener::Health,
                cfg.tls.health_listen.as_str(),
                "tls.health_listen",
            ));
        }
        out
    }
}

/// The protocol a connection's first bytes announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Http1,
    H2c,
    Tls,
}

/// Connections beyond the cap that may wait for their one request (`/alive`, `/ready`) at once;
/// more are refused at once.
pub const OVER_CAP: usize = 128;

/// How long a connection beyond the cap may take to send its request (a health checker sends
/// it at once; an idle connection of a flood must not hold its slot for long).
const OVER_CAP_WAIT: Duration = Duration::from_millis(100);

/// The decoder limits for a connection beyond the cap: a health check's head, no body.
const OVER_CAP_LIMITS: Limits = Limits {
    max_head: 4096,
    max_body: 0,
};

/// Accepts connections until draining begins; at most `max` of this kind of listener are served
/// at once on the core.
pub async fn accept(core: Rc<Core>, listener: TcpListener, max: usize, kind: Listener) {
    let shard = core.shard.clone();
    let over_cap = Rc::new(Cell::new(0usize));
    loop {
        let seen = shard.shutdown_event.epoch();
        if shard.shutdown.get() {
            return;
        }
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = shard.shutdown_event.wait(seen) => return,
        };
        let Ok((stream, addr)) = accepted else {
            // EMFILE and friends: back off instead of spinning.
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let m = &shard.metrics;
        metrics::inc(&m.http_connections_accepted_total);
        let serving = &core.serving[kind as usize];
        if serving.get() >= max {
            metrics::inc(&m.http_connections_rejected_total);
            // Answered at once when its request is already there (a health check queued behind
            // a flood), else given a moment to send one if a slot is free, else refused.
            if !answer_over_cap_now(&core, &stream) {
                if over_cap.get() < OVER_CAP {
                    over_cap.set(over_cap.get() + 1);
                    let (c, n) = (core.clone(), over_cap.clone());
                    monoio::spawn(async move {
                        serve_over_cap(c, stream).await;
                        n.set(n.get() - 1);
                    });
                } else {
                    send_now(&stream, &refusal());
                }
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        metrics::inc(&m.http_connections_active);
        serving.set(serving.get() + 1);
        let c = core.clone();
        let peer = Peer {
            ip: addr.ip(),
            listener: kind,
        };
        monoio::spawn(async move {
            match kind {
                Listener::Main | Listener::Operator => serve(c.clone(), stream, peer).await,
                Listener::Health => h1::serve(c.clone(), stream, peer).await,
            }
            metrics::dec(&c.shard.metrics.http_connections_active);
            let serving = &c.serving[kind as usize];
            serving.set(serving.get() - 1);
        });
    }
}

/// Serves a connection of the main listener in the protocol its first bytes announce.
async fn serve(core: Rc<Core>, stream: TcpStream, peer: Peer) {
    let Some(proto) = sniff(&core, &stream).await else {
        return;
    };
    let https_only = core.shard.cfg().tls.https_only;
    match proto {
        // In a box of its own: a connection's task is as large as the largest future it may
        // hold, and TLS's (the handshake, the session) would double a plain connection's.
        Sniffed::Tls => Box::pin(serve_tls(core, stream, peer)).await,
        _ if https_only => {
            let err = Error::new(ErrorKind::MalformedHttp, "this port speaks HTTPS only");
            send_now(&stream, &closing_answer(&err));
        }
        Sniffed::H2c => h2::serve(core, monoio_compat::StreamWrapper::new(stream), peer).await,
        Sniffed::Http1 => h1::serve(core, stream, peer).await,
    }
}

/// Serves a connection that starts with a TLS handshake: HTTP/2 or HTTP/1.1 by ALPN.
async fn serve_tls(core: Rc<Core>, stream: TcpStream, peer: Peer) {
    let Some(acceptor) = tls::acceptor() else {
        // Not configured: HTTP/1.1 answers the bytes with 400.
        return h1::serve(core, stream, peer).await;
    };
    let limit = core.shard.cfg().server.request_timeout.0;
    let Ok(Ok(tls)) = monoio::time::timeout(limit, acceptor.accept(stream)).await else {
        metrics::inc(&core.shard.metrics.tls_handshakes_failed_total);
        return;
    };
    if tls.alpn_protocol().as_deref() == Some(b"h2") {
        h2::serve(core, monoio_compat::StreamWrapper::new(tls), peer).await
    } else {
        h1::serve(core, tls, peer).await
    }
}

/// Waits for a connection's first bytes and tells its protocol without consuming them: a TLS
/// record starts with 0x16, the HTTP/2 preface with `PR` (no HTTP/1.1 method does); anything
/// else is HTTP/1.1. `None`: the client closed or sent nothing within the idle timeout, or
/// within [`h1::FIRST_REQUEST_IN_DRAIN`] of the core's draining.
async fn sniff(core: &Core, stream: &TcpStream) -> Option<Sniffed> {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let shard = &core.shard;
    let deadline = Instant::now() + shard.cfg().server.idle_timeout.0;
    // After a lone `P`, the next byte is waited for a few times (1, 2, 4 ... 64 ms); a client
    // that sends one byte and stops (or closes: a peeked byte hides the end of the stream)
    // is then served as HTTP/1.1, which reads the byte and sees the rest.
    let mut pause = Duration::from_millis(1);
    let mut deadline = deadline;
    let mut cut = false;
    loop {
        let seen = shard.shutdown_event.epoch();
        // Draining: the client was accepted and is about to send its request; it is waited
        // for a moment (and answered with `connection: close`), not dropped.
        if shard.shutdown.get() && !cut {
            cut = true;
            deadline = deadline.min(Instant::now() + h1::FIRST_REQUEST_IN_DRAIN);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ready = monoio::select! {
            r = monoio::time::timeout(left, stream.readable(false)) => matches!(r, Ok(Ok(()))),
            _ = shard.shutdown_event.wait(seen), if !cut => false,
        };
        if !ready && !cut && shard.shutdown.get() {
            continue;
        }
        if !ready {
            return None;
        }
        let mut b = [0u8; 2];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        match recv(stream.as_raw_fd(), &mut b, flags) {
            Ok(0) => return None,
            Ok(_) if b[0] == 0x16 => return Some(Sniffed::Tls),
            Ok(_) if b[0] != b'P' => return Some(Sniffed::Http1),
            Ok(2) if b[1] == b'R' => return Some(Sniffed::H2c),
            Ok(2) => return Some(Sniffed::Http1),
            Ok(_) if pause > Duration::from_millis(64) => return Some(Sniffed::Http1),
            Ok(_) => {
                monoio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(_) => return None,
        }
    }
}

/// The answer to a connection beyond the cap.
fn refusal() -> BytesMut {
    closing_answer(&Error::new(
        ErrorKind::TooManyConnections,
        "too many connections on this core",
    ))
}

/// `err` as an HTTP/1.1 answer that closes the connection.
fn closing_answer(err: &Error) -> BytesMut {
    let mut buf = BytesMut::new();
    with_date(|d| write_reply(&mut buf, &Reply::error(err), d, false, true));
    buf
}

/// A connection beyond the cap: answers one request for `/alive` or `/ready`, anything else
/// 503 with `Retry-After`; then closes.
async fn serve_over_cap(core: Rc<Core>, mut stream: TcpStream) {
    let mut decoder = Decoder::new(OVER_CAP_LIMITS);
    let mut rbuf = BytesMut::with_capacity(1024);
    let deadline = Instant::now() + OVER_CAP_WAIT;
    let req = loop {
        match decoder.decode(&mut rbuf) {
            Ok(Some(Event::Request(r))) => break Some(r),
            Ok(None) => {}
            _ => break None,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, stream.read(h1::spare(rbuf))).await {
            Ok((Ok(n), buf)) if n > 0 => rbuf = buf.into_inner(),
            _ => break None,
        }
    };
    let mut wbuf = BytesMut::new();
    // A health check however it is written (GET or HEAD, a query, a trailing slash): what the
    // router makes of it, not its bytes.
    let health = req.as_ref().and_then(|r| {
        Command::parse(r, &core.shard.limits())
            .ok()
            .filter(|c| matches!(c, Command::Alive | Command::Ready))
            .map(|c| (r, c))
    });
    match health {
        Some((r, cmd)) => {
            let reply = crate::api::alive_or_ready(&core, &cmd).await;
            let head = r.method == Method::Head;
            h1::encode(&core, &mut wbuf, reply, head, false, Instant::now());
        }
        None => wbuf = refusal(),
    }
    let _ = monoio::time::timeout(OVER_CAP_WAIT, stream.write_all(wbuf)).await;
}

/// A connection beyond the cap whose request is already in the socket: decodes and routes it
/// as any request is; answers `/alive` at once (200), anything that is no health check with 503,
/// and returns true; false when there is no complete request yet, or it is `/ready` (which
/// needs the other cores: [`serve_over_cap`] answers it).
fn answer_over_cap_now(core: &Core, stream: &TcpStream) -> bool {
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
    let mut buf = BytesMut::from(&peek[..n]);
    let req = match Decoder::new(OVER_CAP_LIMITS).decode(&mut buf) {
        Ok(Some(Event::Request(r))) => r,
        Ok(_) => return false,
        Err(_) => {
            send_now(stream, &refusal());
            return true;
        }
    };
    match Command::parse(&req, &core.shard.limits()) {
        Ok(Command::Alive) => {
            let mut out = BytesMut::new();
            let head = req.method == Method::Head;
            with_date(|d| write_reply(&mut out, &crate::api::alive(), d, head, true));
            send_now(stream, &out);
        }
        Ok(Command::Ready) => return false,
        _ => send_now(stream, &refusal()),
    }
    true
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` makes, without making it.
    fn future_size<A, F: std::future::Future>(_: &impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connection's task holds its serving future whole, whatever its requests turn out
    /// to need: what a rare route or protocol needs goes in a box of its own, so that 10 000
    /// idle connections cost what the performance targets say (16 KiB each at most).
    #[test]
    fn a_connection_future_stays_small() {
        let serve = future_size(&|(c, s, p): (Rc<Core>, TcpStream, Peer)| serve(c, s, p));
        let h1 = future_size(&|(c, s, p): (Rc<Core>, TcpStream, Peer)| h1::serve(c, s, p));
        assert!(serve <= 8 << 10, "serve: {serve} bytes");
        assert!(h1 <= 8 << 10, "h1::serve: {h1} bytes");
    }
}
