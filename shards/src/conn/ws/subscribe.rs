//! The writer of a subscribing socket: messages are pushed while the client has credit; its
//! frames grant more credit and, with explicit acknowledgement, commit; with `ack=lease`,
//! `{"settle":"ack"|"nack"|"extend"|"bury","receipts":[...],...}` settles leased messages (as
//! `POST /v1/queue/...` does; the answer comes back as a frame when a receipt failed).

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

/// Runs a `{"settle":op, ...}` frame (`None` for another frame), answering the frame to send
/// back: the error, or the outcomes when a receipt failed (none when all went well).
async fn settle_frame(
    core: &Rc<Core>,
    caller: Caller<'_>,
    s: &Subscribe<'_>,
    m: &[u8],
) -> Option<Option<Vec<u8>>> {
    if !names_settle(m) {
        return None;
    }
    let settle = match s.lease {
        // Receipts come from leases: an offset-committing socket has none to settle.
        None => Err(Error::param(
            "{\"settle\":op,...} settles leased messages: subscribe with ack=lease",
        )),
        Some(_) => kateway_proto::command::settle_frame(s.topic, s.group, m),
    };
    let reply = match settle {
        Ok(c) => api::execute(core, caller, Command::Settle(c)).await,
        Err(e) => Reply::error(&e),
    };
    let text = ack_text(reply);
    let failed = text.starts_with(b"{\"error\"") || text.windows(8).any(|w| w == b"\"failed\"");
    Some(failed.then(|| text.to_vec()))
}

/// Whether a frame has a `settle` member. Other frames (`{"credit":n}`, `{"ack":[p,o]}`) never
/// name "settle", so the bytes tell, unless a key is written with escapes (`"\u0073ettle"`):
/// only then are the frame's keys read.
fn names_settle(m: &[u8]) -> bool {
    m.windows(8).any(|w| w == b"\"settle\"")
        || (m.contains(&b'\\')
            && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(m)
                .is_ok_and(|o| o.contains_key("settle")))
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
    let cfg = &shard.cfg().websocket;
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
                    if let Some(answer) = settle_frame(core, caller, s, &m).await {
                        if let Some(t) = answer {
                            ws::encode::write_frame(&mut out, ws::Opcode::Text, &t);
                        }
                        continue;
                    }
                    match serde_json::from_slice::<kateway_proto::json::Obj<Control>>(&m) {
                        Ok(kateway_proto::json::Obj(c)) => {
                            if let Some(n) = c.credit {
                                credit = credit.saturating_add(n).min(cfg.max_credit);
                            }
                            if c.ack.is_some() && s.lease.is_some() {
                                // An offset commit would move the committed offset under
                                // the queue, which keeps it itself.
                                let e = Error::param(
                                    "a leased socket settles with {\"settle\":op,\"receipts\":[...]}, not {\"ack\":[p,o]}",
                                );
                                let t = ack_text(Reply::error(&e));
                                ws::encode::write_frame(&mut out, ws::Opcode::Text, &t);
                            } else if let Some(a) = c.ack {
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
                                format!("expected {{\"credit\":n}}, {{\"ack\":[p,o]}} or {{\"settle\":op,\"receipts\":[...]}}: {e}"),
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
