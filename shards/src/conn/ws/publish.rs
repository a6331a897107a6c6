//! The writer of a publishing socket: the messages of one read become one batch publish, the
//! batches run concurrently up to the socket's in-flight limit, and each message's
//! acknowledgement goes back in order.

use super::{ack_text, flush, keepalive, Inbox, Shared};
use crate::api;
use crate::metrics;
use crate::node::Core;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use kateway_core::{Error, ErrorKind};
use kateway_proto::batch::BatchItem;
use kateway_proto::command::{Caller, Publish};
use kateway_proto::http1::encode::{put_i64, put_u64};
use kateway_proto::reply::Reply;
use kateway_proto::ws;
use monoio::io::AsyncWriteRent;
use std::rc::Rc;
use std::time::{Duration, Instant};

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
    // The app's quota, charged like an HTTP publish of the same messages.
    let bytes: usize = items.iter().map(|i| i.value.len()).sum();
    let charged = match caller.appid() {
        Ok(app) => {
            crate::tenancy::edge::charge_publish(&core.shard, app, items.len() as u64, bytes as u64)
        }
        Err(e) => Err(e),
    };
    let done = match charged {
        Err(e) => Err(e),
        Ok(()) => match api::publish::resolve(core, caller, template).await {
            Ok(meta) => api::publish::publish_all(core, &meta, template, items).await,
            Err(e) => Err(e),
        },
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
pub(super) async fn publish<W: AsyncWriteRent>(
    core: &Rc<Core>,
    caller: Caller<'_>,
    template: &Publish<'_>,
    sh: &Shared,
    wr: &mut W,
) {
    let shard = &core.shard;
    let every = shard.cfg().websocket.ping_interval.0;
    let mut out = BytesMut::new();
    let mut in_flight = FuturesOrdered::new();
    let max_batch = shard.cfg().limits.max_batch_messages as usize;
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
                Inbox::Data(_) => sh.done(),
                Inbox::Ping(p) => {
                    sh.done();
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
                    sh.done();
                    metrics::inc(&shard.metrics.websocket_messages_out_total);
                    ws::encode::write_frame(&mut out, ws::Opcode::Text, &text);
                }
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
