//! Connections: each core's acceptor, the cap on connections a core serves at once, and what a
//! connection beyond the cap gets (503, except that health checks are still answered). Each
//! protocol is a driver of its own that turns its bytes into commands and writes the replies:
//! [`h1`] for HTTP/1.1.

pub mod h1;

use crate::date::with_date;
use crate::metrics;
use crate::node::Core;
use bytes::BytesMut;
use kateway_core::{Error, ErrorKind};
use kateway_proto::command::{Caller, Command};
use kateway_proto::http1::encode::write_reply;
use kateway_proto::http1::{Decoder, Event, Limits, Method};
use kateway_proto::reply::Reply;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

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

/// Accepts connections until draining begins; at most `max` are served at once.
pub async fn accept(core: Rc<Core>, listener: TcpListener, max: usize) {
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
        let Ok((stream, _peer)) = accepted else {
            // EMFILE and friends: back off instead of spinning.
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let m = &shard.metrics;
        metrics::inc(&m.http_connections_accepted_total);
        if m.http_connections_active.get() as usize >= max {
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
        let c = core.clone();
        monoio::spawn(async move {
            h1::serve(c.clone(), stream).await;
            metrics::dec(&c.shard.metrics.http_connections_active);
        });
    }
}

fn refusal() -> BytesMut {
    let err = Error::new(
        ErrorKind::TooManyConnections,
        "too many connections on this core",
    );
    let mut buf = BytesMut::new();
    with_date(|d| write_reply(&mut buf, &Reply::error(&err), d, false, true));
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
        Command::parse(r, &core.shard.limits)
            .ok()
            .filter(|c| matches!(c, Command::Alive | Command::Ready))
            .map(|c| (r, c))
    });
    match health {
        Some((r, cmd)) => {
            let reply = crate::api::execute(&core, Caller::of(r), cmd).await;
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
    match Command::parse(&req, &core.shard.limits) {
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
