//! The writer of a subscribing socket: messages are pushed while the client has credit; its
//! frames grant more credit and, with explicit acknowledgement, commit.

use super::{ack_text, flush, keepalive, Inbox, Shared};
use crate::api;
use crate::delivery::{Batch, Subscription};
use crate::metrics;
use crate::node::Core;
use bytes::BytesMut;
use kateway_core::{Error, ErrorKind};
use kateway_proto::command::{AckBatch, Caller, Command, Subscribe};
use kateway_proto::reply::{RecordFormat, Reply};
use kateway_proto::ws;
use monoio::io::AsyncWriteRent;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A subscriber's frame: `{"credit":n}`, `{"ack":[p,o]}`, or both.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    credit: Option<u32>,
    ack: Option<(u32, u64)>,
}

/// The writer of a subscribing socket.
pub(super) async fn subscribe<W: AsyncWriteRent>(
    core: &Rc<Core>,
    caller: Caller<'_>,
    s: &Subscribe<'_>,
    mut sub: Subscription,
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
                    sh.done();
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
                }
                Inbox::Ping(p) => {
                    sh.done();
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
            Ok(Batch { records, mut held }) => {
                for m in &records {
                    let mut line = BytesMut::with_capacity(m.value.len() * 4 / 3 + 96);
                    RecordFormat::NdJson.put(&mut line, m);
                    // The JSON line without its newline.
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
