//! Streams that take an HTTP/1.1 connection over after its request: server-sent events (a
//! subscribe with `Accept: text/event-stream`, as a chunked body that never ends on its own)
//! and WebSockets ([`super::ws`]). The connection closes when the stream ends: the client goes
//! away, a write makes no progress within `write_timeout`, or the core drains.

use super::h1::{answer_last, write_out};
use super::Transport;
use crate::api;
use crate::api::stream::EventSource;
use crate::date::with_date;
use crate::node::Core;
use crate::tenancy::edge::{admit, lost, Peer};
use bytes::BytesMut;
use kateway_core::Error;
use kateway_proto::command::Command;
use kateway_proto::http1::chunked::{encode_chunk, encode_last};
use kateway_proto::http1::encode::Response;
use kateway_proto::http1::Request;
use kateway_proto::reply::Reply;
use kateway_proto::sse;
use std::future::Future;
use std::rc::Rc;
use std::time::Instant;

/// Runs the stream a request asked for.
pub async fn serve<S: Transport>(
    core: Rc<Core>,
    mut stream: S,
    rbuf: BytesMut,
    req: Request,
    t0: Instant,
    peer: Peer,
) {
    let Ok(cmd) = Command::parse(&req, &core.shard.limits()) else {
        return;
    };
    // Held until the stream ends: its slot among the app's streams.
    let admitted = match admit(&core.shard, &req, &cmd, peer) {
        Ok(a) => a,
        Err(e) => return answer_last(&core, &mut stream, Reply::error(&e), t0).await,
    };
    let caller = admitted.caller(&req);
    let need = cmd.need();
    match cmd {
        Command::Socket(socket) => {
            super::ws::serve(core, stream, rbuf, &req, caller, socket, t0).await
        }
        Command::Subscribe(s) => match api::stream::events(&core, caller, &s).await {
            Ok(events) => {
                let lost = lost(&core.shard, admitted.principal.as_ref(), need);
                events_h1(&core, stream, events, t0, lost).await
            }
            Err(e) => answer_last(&core, &mut stream, Reply::error(&e), t0).await,
        },
        Command::Dashboard { app, .. } => {
            let lost = lost(&core.shard, admitted.principal.as_ref(), need);
            let snapshots = api::dashboard::Snapshots::new(core.clone(), app.map(str::to_owned));
            events_h1(&core, stream, snapshots, t0, lost).await
        }
        _ => {}
    }
}

/// Streams server-sent events as a chunked body until the client goes away or the core drains.
async fn events_h1<S: Transport>(
    core: &Core,
    mut stream: S,
    mut events: impl EventSource,
    t0: Instant,
    lost: impl Future<Output = Error>,
) {
    let mut lost = std::pin::pin!(lost);
    api::count(core, "events", 200, t0);
    crate::metrics::inc(&core.shard.metrics.sse_streams_total);
    let mut out = BytesMut::new();
    with_date(|d| {
        Response::new(&mut out, 200, d)
            .header("cache-control", b"no-cache")
            .chunked(sse::CONTENT_TYPE)
    });
    encode_chunk(&mut out, sse::PREAMBLE);
    let mut hold = None;
    loop {
        if write_out(core, &mut stream, &mut out).await.is_err() {
            return;
        }
        drop(hold.take());
        // A client of an event stream sends nothing more: readable means it went away.
        let next = monoio::select! {
            n = events.next() => n,
            _ = stream.watch() => return,
            // The key lost access: an error event, and the stream ends.
            e = &mut lost => {
                encode_chunk(&mut out, &api::stream::Chunk::error(&e).data);
                encode_last(&mut out);
                let _ = write_out(core, &mut stream, &mut out).await;
                return;
            }
        };
        match next {
            Some(chunk) => {
                encode_chunk(&mut out, &chunk.data);
                hold = chunk.hold;
            }
            None => {
                encode_last(&mut out);
                let _ = write_out(core, &mut stream, &mut out).await;
                return;
            }
        }
    }
}
