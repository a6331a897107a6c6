//! Unit tests of a partition's delivery window: leases, acks, nacks, expiry, backoff and the
//! watermark; checkpoints and seeded simulations in the files beside this one.

use super::*;

const VIS: u64 = 1_000;

/// No jitter, so that times are exact: 100, 200, 400, … capped at 1 000 ms.
fn policy(max_attempts: u16) -> Policy {
    Policy {
        max_attempts,
        visibility_ms: VIS,
        max_visibility_ms: 10_000,
        backoff: Backoff {
            base_ms: 100,
            max_ms: 1_000,
            jitter: Jitter::None,
            seed: 1,
        },
    }
}

fn queue(capacity: usize) -> PartitionQueue {
    let mut q = PartitionQueue::new(policy(3), capacity, 0, 1);
    assert_eq!(
        q.offer_range(0, 10.min(capacity as u64), 0),
        10.min(capacity as u64)
    );
    q
}

fn offsets(leases: &[Lease]) -> Vec<u64> {
    leases.iter().map(|l| l.offset).collect()
}

fn state(q: &PartitionQueue, offset: u64) -> SlotState {
    q.slot(offset).unwrap().state
}

#[test]
fn a_lower_max_attempts_kills_what_already_spent_them() {
    let mut q = PartitionQueue::new(policy(5), 100, 0, 1);
    q.offer_range(0, 3, 0);
    // Offsets 0 and 1 fail twice; 2 once.
    for round in 0..2 {
        let now = 10_000 * (round + 1);
        let leases = q.lease(3, now, VIS);
        for l in &leases {
            if round == 0 || l.offset < 2 {
                q.nack(l.offset, l.id, Some(0), now).unwrap();
            }
        }
    }
    assert_eq!(q.slot(0).unwrap().attempt, 2);
    assert_eq!(q.slot(2).unwrap().attempt, 2);
    // Offset 2 is leased now: its lease runs on, and its next failure decides.
    q.set_policy(policy(2), 30_000);
    assert_eq!(q.dead_letters(), [0, 1]);
    assert_eq!(q.policy().max_attempts, 2);
    assert!(q.lease(3, 30_000, VIS).is_empty());
    assert!(matches!(state(&q, 2), SlotState::Leased { .. }));
}

#[test]
fn slot_is_small() {
    assert_eq!(std::mem::size_of::<Slot>(), 24);
}

#[test]
fn lease_then_ack() {
    let mut q = queue(100);
    let leases = q.lease(2, 1_000, VIS);
    assert_eq!(offsets(&leases), [0, 1]);
    assert_eq!(leases[0].attempt, 1);
    assert_eq!(leases[0].deadline_ms, 2_000);
    assert_eq!(leases[0].id.generation, 1);
    assert_ne!(leases[0].id, leases[1].id);
    assert_eq!(
        state(&q, 0),
        SlotState::Leased {
            seq: leases[0].id.seq,
            deadline_ms: 2_000
        }
    );
    assert!(q.holds(0, leases[0].id));
    assert!(!q.holds(0, leases[1].id));
    assert_eq!(q.ack(0, Some(leases[0].id)), Ok(Ack::Acked { late: false }));
    assert_eq!(q.watermark(), 1);
    assert_eq!(q.ack(0, Some(leases[0].id)), Ok(Ack::AlreadyDone));
    assert_eq!(q.ack(1, None), Ok(Ack::Acked { late: true }));
    assert_eq!(q.watermark(), 2);
    assert_eq!(
        q.stats(),
        Stats {
            pending: 8,
            ..Stats::default()
        }
    );
    // No lease left: the deadline entries went with the last one.
    assert_eq!(q.next_deadline(), None);
    assert!(q.expire(5_000).is_empty(), "acked leases do not expire");
}

#[test]
fn a_leased_head_does_not_block_the_rest() {
    let mut q = queue(100);
    let head = q.lease(1, 0, VIS)[0];
    let rest = q.lease(100, 0, VIS);
    assert_eq!(offsets(&rest), (1..10).collect::<Vec<_>>());
    for l in &rest {
        assert_eq!(q.ack(l.offset, Some(l.id)), Ok(Ack::Acked { late: false }));
    }
    assert_eq!(q.watermark(), 0, "the head is not done");
    assert_eq!(q.stats().done, 9);
    assert_eq!(q.offer_range(10, 20, 0), 20);
    assert_eq!(offsets(&q.lease(3, 0, VIS)), [10, 11, 12]);
    assert_eq!(q.ack(0, Some(head.id)), Ok(Ack::Acked { late: false }));
    assert_eq!(q.watermark(), 10);
}

#[test]
fn nack_waits_out_its_backoff_or_delay() {
    let mut q = queue(100);
    let l = q.lease(1, 0, VIS)[0];
    let f = q.nack(0, l.id, None, 500).unwrap();
    assert_eq!(f.attempt, 1);
    assert_eq!(f.next, Next::Retry { visible_at_ms: 600 });
    assert_eq!(state(&q, 0), SlotState::Waiting { visible_at_ms: 600 });
    assert_eq!(q.next_visible(), Some(600));
    // Others flow meanwhile; offset 0 comes back, first, when its time comes.
    assert_eq!(offsets(&q.lease(1, 599, VIS)), [1]);
    assert!(q.has_deliverable(599));
    let again = q.lease(1, 600, VIS)[0];
    assert_eq!((again.offset, again.attempt), (0, 2));
    // The second failure's backoff doubles; an explicit delay replaces it, capped.
    let f = q.nack(0, again.id, Some(50), 700).unwrap();
    assert_eq!(f.next, Next::Retry { visible_at_ms: 750 });
    let third = q.lease(1, 750, VIS)[0];
    assert_eq!(third.attempt, 3);
    let mut q2 = queue(100);
    let l = q2.lease(1, 0, VIS)[0];
    let f = q2.nack(0, l.id, Some(1_000_000), 0).unwrap();
    assert_eq!(
        f.next,
        Next::Retry {
            visible_at_ms: 1_000
        }
    );
}

#[test]
fn nack_extend_and_bury_need_the_current_lease() {
    let mut q = queue(100);
    let l = q.lease(1, 0, VIS)[0];
    let forged = LeaseId {
        generation: 1,
        seq: l.id.seq + 100,
    };
    let other_owner = LeaseId {
        generation: 2,
        seq: l.id.seq,
    };
    for bad in [forged, other_owner] {
        assert_eq!(q.nack(0, bad, None, 0), Err(QueueError::StaleLease(0)));
        assert_eq!(q.extend(0, bad, 10, 0), Err(QueueError::StaleLease(0)));
        assert_eq!(q.bury(0, bad), Err(QueueError::StaleLease(0)));
    }
    assert_eq!(q.nack(5, l.id, None, 0), Err(QueueError::StaleLease(5)));
    assert_eq!(q.nack(50, l.id, None, 0), Err(QueueError::NotRead(50)));
    assert_eq!(q.moved(0), Err(QueueError::NotDead(0)));
    assert_eq!(
        state(&q, 0),
        SlotState::Leased {
            seq: l.id.seq,
            deadline_ms: 1_000
        }
    );
}

#[test]
fn extend_moves_the_deadline() {
    let mut q = queue(100);
    let l = q.lease(1, 0, VIS)[0];
    assert_eq!(q.extend(0, l.id, 5_000, 900), Ok(5_900));
    assert!(q.expire(1_000).is_empty(), "the old deadline is gone");
    assert_eq!(q.extend(0, l.id, 1_000_000, 1_000), Ok(11_000), "capped");
    assert!(q.expire(10_999).is_empty());
    assert_eq!(
        q.extend(0, l.id, 10, 11_000),
        Err(QueueError::StaleLease(0))
    );
    let f = q.expire(11_000);
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].next,
        Next::Retry {
            visible_at_ms: 11_100
        }
    );
    assert_eq!(
        q.extend(0, l.id, 10, 11_000),
        Err(QueueError::StaleLease(0))
    );
    assert!(q.leases.len() == 0);
}

#[test]
fn bury_moves_at_once() {
    let mut q = queue(100);
    let l = q.lease(2, 0, VIS);
    assert_eq!(q.bury(1, l[1].id), Ok(()));
    assert_eq!(state(&q, 1), SlotState::Moved);
    assert_eq!(q.watermark(), 0);
    assert_eq!(q.bury(0, l[0].id), Ok(()));
    assert_eq!(q.watermark(), 2);
    assert_eq!(q.bury(0, l[0].id), Err(QueueError::AlreadyDone(0)));
    assert_eq!(q.ack(1, None), Ok(Ack::AlreadyDone));
}

#[test]
fn expiry_redelivers_with_the_next_attempt_after_backoff() {
    let mut q = queue(100);
    let l = q.lease(1, 0, VIS)[0];
    assert_eq!(q.next_deadline(), Some(1_000));
    assert!(q.expire(999).is_empty());
    let f = q.expire(1_500);
    assert_eq!(
        f,
        [Failure {
            offset: 0,
            attempt: 1,
            first_seen_ms: 0,
            next: Next::Retry {
                visible_at_ms: 1_100
            }
        }],
        "the backoff runs from the deadline, whenever expire is called"
    );
    assert!(q.expire(1_500).is_empty());
    assert_eq!(q.nack(0, l.id, None, 1_500), Err(QueueError::StaleLease(0)));
    let l2 = q.lease(1, 1_500, VIS)[0];
    assert_eq!((l2.offset, l2.attempt), (0, 2));
    // The expired lease's holder may still ack it.
    assert_eq!(q.ack(0, Some(l.id)), Ok(Ack::Acked { late: true }));
    assert_eq!(q.ack(0, Some(l2.id)), Ok(Ack::AlreadyDone));
    assert_eq!(q.watermark(), 1);
}

#[test]
fn dead_exactly_once_after_max_attempts() {
    let mut q = queue(100);
    let mut now = 0;
    for attempt in 1..=3u16 {
        let l = q.lease(1, now, VIS)[0];
        assert_eq!((l.offset, l.attempt), (0, attempt));
        now = l.deadline_ms;
        let f = q.expire(now);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].attempt, attempt);
        // While offset 0 waits out its backoff (or is dead), the next one flows.
        assert_eq!(q.lease(1, now, 10 * VIS)[0].offset, u64::from(attempt));
        if attempt < 3 {
            let Next::Retry { visible_at_ms } = f[0].next else {
                panic!("dead too early");
            };
            now = visible_at_ms;
        } else {
            assert_eq!(f[0].next, Next::Dead);
        }
    }
    assert_eq!(state(&q, 0), SlotState::Dead);
    assert!(q.expire(i64::MAX - 1).iter().all(|f| f.offset != 0));
    assert!(offsets(&q.lease(100, i64::MAX - 1, VIS))
        .iter()
        .all(|&o| o != 0));
    assert_eq!(q.dead_letters(), [0]);
    assert_eq!(q.watermark(), 0, "dead is not done until moved");
    assert_eq!(q.moved(0), Ok(()));
    assert_eq!(q.moved(0), Err(QueueError::AlreadyDone(0)));
    assert!(q.dead_letters().is_empty());
    assert!(q.watermark() >= 1);

    // Through nacks, with an ack racing the dead-letter copy.
    let mut q = queue(100);
    for attempt in 1..=3u16 {
        let l = q.lease(1, i64::from(attempt) * 10_000, VIS)[0];
        let f = q.nack(0, l.id, Some(0), l.deadline_ms - 1).unwrap();
        assert_eq!(f.next == Next::Dead, attempt == 3);
    }
    assert_eq!(q.ack(0, None), Ok(Ack::Acked { late: true }));
    assert_eq!(q.moved(0), Err(QueueError::AlreadyDone(0)));
}

#[test]
fn watermark_advances_only_over_done_slots() {
    let mut q = queue(100);
    let l = q.lease(5, 0, VIS);
    q.nack(0, l[0].id, None, 0).unwrap(); // waiting
    q.ack(2, None).unwrap();
    q.bury(3, l[3].id).unwrap();
    assert_eq!(q.watermark(), 0);
    assert_eq!(
        q.stats(),
        Stats {
            pending: 5,
            leased: 2,
            waiting: 1,
            dead: 0,
            done: 2
        }
    );
    q.ack(0, None).unwrap();
    assert_eq!(q.watermark(), 1, "1 is still leased");
    q.ack(1, Some(l[1].id)).unwrap();
    assert_eq!(q.watermark(), 4, "over acked 2 and moved 3");
    q.ack(9, None).unwrap();
    assert_eq!(q.watermark(), 4);
    for o in 4..9 {
        q.ack(o, None).unwrap();
    }
    assert_eq!(q.watermark(), 10);
    assert_eq!(q.fetch_pos(), 10);
    assert_eq!(q.stats(), Stats::default());
}

#[test]
fn acks_are_idempotent() {
    let mut q = queue(100);
    assert_eq!(q.ack(3, None), Ok(Ack::Acked { late: true }));
    assert_eq!(q.ack(3, None), Ok(Ack::AlreadyDone));
    let leases = q.lease(10, 0, VIS);
    assert!(
        !offsets(&leases).contains(&3),
        "an acked offset is never leased"
    );
    q.ack(0, None).unwrap();
    assert_eq!(q.ack(0, Some(leases[0].id)), Ok(Ack::AlreadyDone));
    q.ack(1, None).unwrap();
    q.ack(2, None).unwrap();
    assert_eq!(q.watermark(), 4);
    assert_eq!(q.ack(1, None), Ok(Ack::AlreadyDone), "below the watermark");
    assert_eq!(
        q.nack(1, leases[1].id, None, 0),
        Err(QueueError::AlreadyDone(1))
    );
    assert_eq!(q.ack(10_000, None), Err(QueueError::NotRead(10_000)));
}

#[test]
fn a_full_window_refuses_records() {
    let mut q = queue(4);
    assert_eq!(q.room(), 0);
    assert_eq!(q.offer(4, 0), Err(QueueError::Full { capacity: 4 }));
    assert_eq!(q.offer_range(4, 10, 0), 4);
    assert_eq!(q.offer(2, 0), Ok(Entered::Known));
    // A done slot behind a leased head still takes room.
    let l = q.lease(2, 0, VIS);
    q.ack(1, None).unwrap();
    assert_eq!(q.offer_range(4, 10, 0), 4);
    q.ack(0, Some(l[0].id)).unwrap();
    assert_eq!(q.room(), 2);
    assert_eq!(q.offer_range(4, 10, 0), 6);
    assert_eq!(q.fetch_pos(), 6);
}

#[test]
fn skipped_offsets_count_as_done() {
    let mut q = PartitionQueue::new(policy(3), 100, 0, 1);
    q.offer(0, 0).unwrap();
    assert_eq!(q.offer(5, 0), Ok(Entered::Ready));
    assert_eq!(q.slot(3).unwrap().state, SlotState::Acked);
    assert_eq!(offsets(&q.lease(10, 0, VIS)), [0, 5]);
    q.ack(0, None).unwrap();
    assert_eq!(q.watermark(), 5);
    q.ack(5, None).unwrap();
    // An empty window jumps any gap.
    assert_eq!(q.offer(1_000_000, 0), Ok(Entered::Ready));
    assert_eq!(q.watermark(), 1_000_000);
    assert_eq!(q.fetch_pos(), 1_000_001);
    // A non-empty one only within capacity.
    assert_eq!(
        q.offer(1_000_100, 0),
        Err(QueueError::Full { capacity: 100 })
    );
}

#[test]
fn backoff_is_exponential_capped_and_jittered() {
    let mut b = Backoff {
        base_ms: 100,
        max_ms: 1_000,
        jitter: Jitter::None,
        seed: 3,
    };
    let plain: Vec<u64> = (1..=6).map(|n| b.delay_ms(n, 12_345)).collect();
    assert_eq!(plain, [100, 200, 400, 800, 1_000, 1_000]);
    assert_eq!(b.delay_ms(0, 0), 100);
    assert_eq!(b.delay_ms(u16::MAX, 0), 1_000);
    b.max_ms = u64::MAX;
    assert_eq!(b.delay_ms(200, 0), u64::MAX, "saturates");
    b.max_ms = 1_000;
    for jitter in [Jitter::Full, Jitter::Equal] {
        b.jitter = jitter;
        let mut seen = std::collections::HashSet::new();
        for offset in 0..1_000 {
            for n in 1..=6u16 {
                let raw = plain[usize::from(n) - 1];
                let d = b.delay_for(offset, n);
                let low = if jitter == Jitter::Full { 0 } else { raw / 2 };
                assert!((low..=raw).contains(&d), "{jitter:?} {n}: {d}");
                assert_eq!(d, b.delay_for(offset, n), "deterministic");
                seen.insert(d);
            }
        }
        assert!(seen.len() > 300, "spread: {}", seen.len());
    }
    b.jitter = Jitter::Full;
    assert_eq!(b.delay_ms(1, 7), 7);
    assert_eq!(b.delay_ms(1, 101), 0);
    b.jitter = Jitter::Equal;
    assert_eq!(b.delay_ms(1, 7), 57);
    b.max_ms = u64::MAX;
    b.jitter = Jitter::Full;
    assert_eq!(b.delay_ms(200, 5), 5, "no overflow at the top");
}

#[test]
fn stale_heap_entries_are_bounded() {
    let mut q = queue(100);
    let l = q.lease(1, 0, VIS)[0];
    for i in 0..10_000 {
        q.extend(0, l.id, VIS, i).unwrap();
    }
    assert!(q.leases.len() <= 2 + HEAP_SLACK + 1, "{}", q.leases.len());
    assert!(q.next_deadline().is_some_and(|t| t <= 10_999));
    let f = q.expire(10_999);
    assert_eq!(f.len(), 1);
}

/// Puts `q` through a checkpoint's bytes and restores it under a new generation.
fn crash(q: &PartitionQueue, generation: u32) -> (PartitionQueue, Recovery) {
    let cp = Checkpoint::decode(&q.checkpoint().encode()).unwrap();
    PartitionQueue::restore(
        Some(&cp),
        Committed {
            offset: q.watermark(),
            generation: q.generation(),
        },
        *q.policy(),
        q.capacity(),
        generation,
    )
}

mod checkpoint;
mod simulation;
