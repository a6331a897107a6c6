//! Leases and settles: the calls that take messages out of the windows and put their outcomes
//! back.

use super::{Part, QueueGroup, PREFETCH};
use crate::queue::{dead, Outcome};
use crate::shard::now_ms;
use kateway_core::queue::{Ack, Next, QueueError, Receipt};
use kateway_core::{Delivered, Error, ErrorKind, Leased};
use kateway_proto::command::SettleOp;
use std::time::{Duration, Instant};

impl QueueGroup {
    /// Leases up to `max` messages (about `max_bytes`), waiting until `deadline` for one.
    pub async fn lease(
        &self,
        max: usize,
        max_bytes: usize,
        visibility: Option<Duration>,
        deadline: Instant,
    ) -> Result<Vec<Delivered>, Error> {
        let _use = self.used();
        let vis = visibility.map_or(self.policy.get().visibility_ms, |v| v.as_millis() as u64);
        loop {
            self.expire();
            let got = self.take_leases(max, max_bytes, vis);
            if !got.is_empty() && self.deliverable() < PREFETCH {
                // The pump reads ahead again.
                self.room.notify();
            }
            if !got.is_empty() {
                // Room was made for the pump only by settles; leasing changes nothing it waits on.
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline || self.shard.shutdown.get() || self.closed.get() {
                return Ok(Vec::new());
            }
            let soonest = self
                .parts
                .borrow()
                .values()
                .filter_map(|p| {
                    let a = p.q.next_visible();
                    let b = p.q.next_deadline();
                    a.into_iter().chain(b).min()
                })
                .min();
            let mut wait = deadline - now;
            if let Some(t) = soonest {
                let ms = (t - now_ms()).max(1) as u64;
                wait = wait.min(Duration::from_millis(ms));
            }
            let seen = self.changed.epoch();
            let stop = self.shard.shutdown_event.epoch();
            monoio::select! {
                _ = self.changed.wait(seen) => {}
                _ = monoio::time::sleep(wait) => {}
                _ = self.shard.shutdown_event.wait(stop) => {}
            }
        }
    }

    /// Takes back the leases of `records`, which never reached a client.
    pub fn release(&self, records: &[Delivered]) {
        let mut parts = self.parts.borrow_mut();
        for m in records {
            let (Some(l), Some(part)) = (&m.leased, parts.get_mut(&m.partition)) else {
                continue;
            };
            if part.q.release(m.offset, l.lease).is_ok() {
                part.dirty = true;
            }
        }
        drop(parts);
        self.changed.notify();
    }

    fn take_leases(&self, max: usize, max_bytes: usize, vis: u64) -> Vec<Delivered> {
        let now = now_ms();
        let mut out = Vec::with_capacity(max.min(1000));
        let mut bytes = 0;
        let mut parts = self.parts.borrow_mut();
        let n = parts.len();
        if n == 0 {
            return out;
        }
        let start = self.turn.get() as usize % n;
        self.turn.set(self.turn.get().wrapping_add(1));
        let keys: Vec<u32> = parts.keys().copied().collect();
        for i in 0..n {
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
            let p = keys[(start + i) % n];
            let part = parts.get_mut(&p).expect("listed");
            // One at a time, so the byte budget holds.
            while out.len() < max && bytes < max_bytes {
                let Some(l) = part.q.lease_one(now, vis) else {
                    break;
                };
                part.dirty = true;
                let Some(r) = part.records.get(l.offset) else {
                    // No record for a leased offset cannot happen; settle it so it never stalls.
                    let _ = part.q.ack(l.offset, Some(l.id));
                    continue;
                };
                let receipt = Receipt::of_lease(self.fingerprint, p, &l).encode_text(&self.key);
                let mut m = r.clone();
                bytes += m.value.len();
                m.leased = Some(Box::new(Leased {
                    receipt,
                    attempt: l.attempt,
                    lease: l.id,
                }));
                out.push(m);
            }
        }
        out
    }

    /// Settles the messages of the call's receipts (already checked to be this group's); those
    /// of partitions another gateway holds are handed on to it, unless the call was itself
    /// handed on.
    pub async fn settle(&self, mut c: crate::queue::SettleCall) -> Vec<Outcome> {
        let _use = self.used();
        let (op, delay, visibility) = (c.op, c.delay, c.visibility);
        let error = c.error.clone();
        let receipts = std::mem::take(&mut c.receipts);
        let mut out = Vec::with_capacity(receipts.len());
        let mut bury = Vec::new();
        let mut elsewhere: Vec<(usize, String)> = Vec::new();
        let now = now_ms();
        // The common case, acks of messages whose windows are open here, in one pass.
        let receipts = if op == SettleOp::Ack
            && self.burying.borrow().is_empty()
            && self.all_open(&receipts)
        {
            self.ack_open(receipts, &mut out);
            Vec::new()
        } else {
            receipts
        };
        for (i, r) in receipts.into_iter().enumerate() {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    out.push(Outcome::Failed(e));
                    continue;
                }
            };
            // Most receipts name an open window: no future to build for them.
            let open = if self.parts.borrow().contains_key(&r.partition) {
                Ok((true, false))
            } else {
                self.ensure(r.partition).await
            };
            match open {
                Ok((true, _)) => {}
                Ok((false, _)) if !c.forwarded => {
                    elsewhere.push((i, r.encode(&self.key)));
                    out.push(Outcome::Forwarded);
                    continue;
                }
                Ok((false, _)) => {
                    out.push(Outcome::Failed(Error::new(
                        ErrorKind::StaleLease,
                        format!(
                            "partition {} is leased out by another gateway of the group",
                            r.partition
                        ),
                    )));
                    continue;
                }
                Err(e) => {
                    out.push(Outcome::Failed(e));
                    continue;
                }
            }
            let mut parts = self.parts.borrow_mut();
            let Some(part) = parts.get_mut(&r.partition) else {
                // Closed while another receipt's window opened.
                out.push(Outcome::Failed(closed_here(r.partition)));
                continue;
            };
            let o = r.offset;
            // A message being copied to the dead letters is settled by that bury alone: an ack
            // meanwhile would be answered `acked` for a message that still ends up dead.
            let being_buried = {
                let b = self.burying.borrow();
                !b.is_empty() && b.contains(&(r.partition, o))
            };
            let res = match op {
                _ if being_buried => Err(QueueError::StaleLease(o)),
                SettleOp::Ack => self.ack_in(part, &r),
                SettleOp::Nack => {
                    let d = delay.map(|d| d.as_millis() as u64);
                    let res = part.q.nack(o, r.lease, d, now);
                    if let (Ok(_), Some(e)) = (&res, &error) {
                        part.errors.insert(o, e.clone());
                    }
                    res.map(|f| match f.next {
                        Next::Retry { visible_at_ms } => Outcome::Retry { visible_at_ms },
                        Next::Dead => Outcome::Dead,
                    })
                }
                SettleOp::Extend => {
                    let by = visibility.map_or(0, |v| v.as_millis() as u64);
                    part.q
                        .extend(o, r.lease, by, now)
                        .map(|deadline_ms| Outcome::Extended { deadline_ms })
                }
                SettleOp::Bury => {
                    if part.q.holds(o, r.lease) {
                        if let (Some(rec), Some(v)) = (part.records.get(o), part.q.slot(o)) {
                            self.burying.borrow_mut().insert((r.partition, o));
                            bury.push((
                                i,
                                r,
                                dead::item(
                                    &self.topic.name,
                                    rec,
                                    v.attempt,
                                    v.first_seen_ms,
                                    error.as_deref(),
                                ),
                            ));
                        }
                        Ok(Outcome::Buried)
                    } else {
                        Err(QueueError::StaleLease(o))
                    }
                }
            };
            part.dirty = true;
            match res {
                Ok(outcome) => out.push(outcome),
                Err(e) => out.push(Outcome::Failed(queue_err(e, r.partition))),
            }
            drop(parts);
        }
        if !bury.is_empty() {
            let items = bury.iter().map(|(_, _, it)| it.clone()).collect();
            let sent = dead::send(&self.shard, &self.backend, &self.group, items).await;
            {
                let mut burying = self.burying.borrow_mut();
                for (_, r, _) in &bury {
                    burying.remove(&(r.partition, r.offset));
                }
            }
            match sent {
                Ok(()) => {
                    for (_, r, _) in &bury {
                        let (p, o, lease) = (r.partition, r.offset, r.lease);
                        // Buried, or acked if its lease ended while it was copied.
                        self.finish(p, o, |q| {
                            q.bury(o, lease).or_else(|_| q.ack(o, None).map(|_| ()))
                        });
                    }
                }
                Err(e) => {
                    for (i, _, _) in &bury {
                        out[*i] = Outcome::Failed(e.clone());
                    }
                }
            }
        }
        if !elsewhere.is_empty() {
            let strings = elsewhere.iter().map(|(_, s)| s.clone()).collect();
            let f = crate::queue::forward::record(&c, strings);
            if let Err(e) = crate::queue::forward::send(&self.backend, &self.shard.cfg(), &f).await
            {
                for (i, _) in &elsewhere {
                    out[*i] = Outcome::Failed(e.clone());
                }
            }
        }
        // Nacked messages may be deliverable at once: leasers look again.
        if out
            .iter()
            .any(|o| matches!(o, Outcome::Retry { .. } | Outcome::Dead))
        {
            self.changed.notify();
        }
        // A pump waiting for room reads on (an ack or a burial moved a watermark or freed bytes).
        if self.overflowed() > 0 || self.bytes.get() >= self.max_bytes() {
            self.room.notify();
        }
        out
    }

    /// Whether the window of every partition `receipts` name is open here.
    fn all_open(&self, receipts: &[Result<Receipt, Error>]) -> bool {
        let parts = self.parts.borrow();
        let mut last = None;
        receipts.iter().flatten().all(|r| {
            last == Some(r.partition) || {
                last = Some(r.partition);
                parts.contains_key(&r.partition)
            }
        })
    }

    /// Acks `receipts`, whose windows are all open, adding each outcome to `out`: each run of
    /// receipts of one partition in one pass of its window ([`PartitionQueue::ack_many`]),
    /// dropping the records of the messages now done.
    fn ack_open(&self, receipts: Vec<Result<Receipt, Error>>, out: &mut Vec<Outcome>) {
        let mut parts = self.parts.borrow_mut();
        let mut freed = 0;
        let mut rest = &receipts[..];
        while let Some(first) = rest.first() {
            let p = match first {
                Ok(r) => r.partition,
                Err(e) => {
                    out.push(Outcome::Failed(e.clone()));
                    rest = &rest[1..];
                    continue;
                }
            };
            let n = rest
                .iter()
                .take_while(|r| matches!(r, Ok(r) if r.partition == p))
                .count();
            let (run, tail) = rest.split_at(n);
            rest = tail;
            let Some(part) = parts.get_mut(&p) else {
                // Not reached: every window was open before the first ack.
                out.extend(run.iter().map(|_| Outcome::Failed(closed_here(p))));
                continue;
            };
            part.dirty = true;
            let Part {
                q, records, errors, ..
            } = part;
            let items = run.iter().flatten().map(|r| (r.offset, Some(r.lease)));
            q.ack_many(items, |o, answer| {
                out.push(match answer {
                    Ok(a) => {
                        // Done now or before: its record is not needed any more.
                        freed += records.forget(o).unwrap_or(0);
                        if !errors.is_empty() {
                            errors.remove(&o);
                        }
                        outcome(a)
                    }
                    Err(e) => Outcome::Failed(queue_err(e, p)),
                })
            });
        }
        self.bytes.set(self.bytes.get().saturating_sub(freed));
    }

    /// Acks the message `r` names in its partition's window and drops its record if it is
    /// done.
    fn ack_in(&self, part: &mut Part, r: &Receipt) -> Result<Outcome, QueueError> {
        let a = part.q.ack(r.offset, Some(r.lease))?;
        self.forget_if_done(part, r.offset);
        Ok(outcome(a))
    }
}

/// The outcome of an ack the window took.
fn outcome(a: Ack) -> Outcome {
    match a {
        Ack::Acked { .. } => Outcome::Acked,
        Ack::AlreadyDone => Outcome::AlreadyDone,
    }
}

/// A settle of a message whose partition's window closed here meanwhile.
fn closed_here(p: u32) -> Error {
    Error::new(
        ErrorKind::StaleLease,
        format!("partition {p} is no longer open here"),
    )
}

/// A window's refusal as the error its receipt gets.
fn queue_err(e: QueueError, p: u32) -> Error {
    match e {
        QueueError::StaleLease(o) => Error::new(
            ErrorKind::StaleLease,
            format!("the lease on partition {p} offset {o} ended: the message was delivered again, settled, or is being buried, or was leased before a restart"),
        ),
        QueueError::AlreadyDone(o) => Error::new(
            ErrorKind::StaleLease,
            format!("partition {p} offset {o} is already done"),
        ),
        QueueError::NotRead(o) => Error::new(
            ErrorKind::StaleLease,
            format!("partition {p} offset {o} is not leased"),
        ),
        e => Error::new(ErrorKind::Internal, e.to_string()),
    }
}
