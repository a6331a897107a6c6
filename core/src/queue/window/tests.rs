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

#[test]
fn checkpoint_and_restore() {
    let mut q = queue(100);
    let l = q.lease(6, 1_000, VIS);
    q.nack(1, l[1].id, None, 1_200).unwrap(); // waiting until 1 300, attempt 1
    q.ack(2, None).unwrap();
    q.bury(3, l[3].id).unwrap();
    q.ack(7, None).unwrap();
    for _ in 0..2 {
        let x = q.lease(1, 5_000, VIS)[0];
        assert_eq!(x.offset, 1);
        q.nack(1, x.id, Some(0), 5_000).unwrap();
    }
    assert_eq!(q.slot(1).unwrap().state, SlotState::Dead);
    q.ack(20, None).unwrap_or_else(|e| panic!("{e}"));
    let before = q.checkpoint();
    assert_eq!(before.watermark, 0);
    assert_eq!(before.done, vec![2..4, 7..8, 20..21]);
    let att: Vec<(u64, u16, bool)> = before
        .attempted
        .iter()
        .map(|a| (a.offset, a.attempt, a.leased))
        .collect();
    assert_eq!(
        att,
        [(0, 1, true), (1, 3, false), (4, 1, true), (5, 1, true)]
    );

    let (mut r, how) = crash(&q, 2);
    assert_eq!(how, Recovery::Checkpoint);
    assert_eq!((r.watermark(), r.fetch_pos(), r.generation()), (0, 0, 2));
    // The restored state survives another checkpoint before anything is read again.
    assert_eq!(r.checkpoint().done, before.done);
    assert_eq!(r.checkpoint().attempted, before.attempted);
    // An ack of a message leased by the previous owner, before it is read again.
    assert_eq!(r.ack(4, Some(l[4].id)), Ok(Ack::Acked { late: true }));
    assert_eq!(r.ack(4, None), Ok(Ack::AlreadyDone));
    let entered: Vec<Entered> = (0..10).map(|o| r.offer(o, 9_000).unwrap()).collect();
    use Entered::*;
    assert_eq!(
        entered,
        [Held, Dead, Done, Done, Done, Held, Ready, Done, Ready, Ready]
    );
    assert_eq!(r.dead_letters(), [1]);
    assert_eq!(r.slot(0).unwrap().attempt, 1);
    assert_eq!(
        r.slot(0).unwrap().state,
        SlotState::Leased {
            seq: 0,
            deadline_ms: 2_000
        }
    );
    // Old leases can ack, not nack; a restored lease expires as a failed attempt.
    assert_eq!(
        r.nack(5, l[5].id, None, 9_000),
        Err(QueueError::StaleLease(5))
    );
    let f = r.expire(9_000);
    assert_eq!(offsets_of(&f), [0, 5]);
    assert_eq!(
        f[0].next,
        Next::Retry {
            visible_at_ms: 2_100
        }
    );
    assert_eq!(r.ack(5, Some(l[5].id)), Ok(Ack::Acked { late: true }));
    let again = r.lease(10, 9_000, VIS);
    assert_eq!(offsets(&again), [0, 6, 8, 9]);
    assert_eq!(again[0].attempt, 2, "attempt counts survive");
    assert_eq!(again[0].first_seen_ms, 0);
    assert_eq!(again[0].id.generation, 2);
    assert_eq!(r.moved(1), Ok(()));
    assert_eq!(r.offer_range(10, 30, 9_000), 30);
    assert_eq!(r.slot(20).unwrap().state, SlotState::Acked);
    assert_eq!(r.watermark(), 0);
}

#[test]
fn acks_ahead_of_reading_are_remembered() {
    let committed = Committed {
        offset: 10,
        generation: 1,
    };
    let (mut q, _) = PartitionQueue::restore(None, committed, policy(3), 100, 2);
    assert_eq!(q.ack(10, None), Ok(Ack::Acked { late: true }));
    assert_eq!(
        (q.watermark(), q.fetch_pos()),
        (11, 11),
        "nothing to wait for"
    );
    assert_eq!(q.ack(12, None), Ok(Ack::Acked { late: true }));
    assert_eq!(q.ack(12, None), Ok(Ack::AlreadyDone));
    assert_eq!(q.ack(111, None), Err(QueueError::NotRead(111)));
    let cp = Checkpoint::decode(&q.checkpoint().encode()).unwrap();
    assert_eq!(cp.watermark, 11);
    assert_eq!(cp.done, [std::ops::Range { start: 12, end: 13 }]);
    assert_eq!(q.offer(10, 0), Ok(Entered::Known));
    assert_eq!(q.offer(11, 0), Ok(Entered::Ready));
    assert_eq!(q.offer(12, 0), Ok(Entered::Done));
    assert_eq!(offsets(&q.lease(10, 0, VIS)), [11]);
    q.ack(11, None).unwrap();
    assert_eq!(q.watermark(), 13);
}

fn offsets_of(f: &[Failure]) -> Vec<u64> {
    f.iter().map(|f| f.offset).collect()
}

#[test]
fn restore_falls_back_to_a_clean_start() {
    let mut q = queue(100);
    let l = q.lease(3, 0, VIS);
    q.ack(0, Some(l[0].id)).unwrap();
    q.ack(2, Some(l[2].id)).unwrap();
    let cp = q.checkpoint();
    assert_eq!(cp.watermark, 1);
    let clean = |committed: Committed| {
        let (mut r, how) = PartitionQueue::restore(Some(&cp), committed, policy(3), 100, 9);
        assert_eq!(r.watermark(), committed.offset);
        assert_eq!(r.offer(committed.offset, 0), Ok(Entered::Ready));
        assert_eq!(r.slot(committed.offset).unwrap().attempt, 0);
        assert!(r.checkpoint().done.is_empty());
        how
    };
    assert_eq!(
        clean(Committed {
            offset: 0,
            generation: 1
        }),
        Recovery::WatermarkMismatch { checkpoint: 1 }
    );
    assert_eq!(
        clean(Committed {
            offset: 1,
            generation: 2
        }),
        Recovery::StaleGeneration { checkpoint: 1 }
    );
    let (r, how) = PartitionQueue::restore(
        None,
        Committed {
            offset: 7,
            generation: 0,
        },
        policy(3),
        100,
        9,
    );
    assert_eq!(
        (how, r.watermark(), r.fetch_pos()),
        (Recovery::NoCheckpoint, 7, 7)
    );
    let (mut r, how) = PartitionQueue::restore(
        Some(&cp),
        Committed {
            offset: 1,
            generation: 1,
        },
        policy(3),
        100,
        9,
    );
    assert_eq!(how, Recovery::Checkpoint);
    assert_eq!(r.offer_range(1, 10, 0), 10);
    assert_eq!(r.slot(2).unwrap().state, SlotState::Acked);
    assert_eq!(r.slot(1).unwrap().attempt, 1);
}

/// A seeded generator for the simulation.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix64(self.0) % n
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    Ack,
    Nack,
    Abandon,
}

/// 10 000 offsets through 4 consumers of 8 leases each: 89 % of deliveries acked, 10 %
/// nacked, 1 % abandoned, processing times up to 1.5 leases (so some acks are late and
/// some messages delivered twice), 1 % poison messages that always fail; a window of 256
/// (back-pressure); optionally a crash and restore through checkpoint bytes every
/// `restart_every` steps. Every message ends acked exactly once or dead-lettered after
/// exactly `max_attempts` deliveries, and the watermark reaches the end.
fn simulate(seed: u64, restart_every: Option<u64>) {
    const N: u64 = 10_000;
    const MAX: u16 = 4;
    let policy = Policy {
        max_attempts: MAX,
        visibility_ms: VIS,
        max_visibility_ms: VIS,
        backoff: Backoff {
            base_ms: 50,
            max_ms: 400,
            jitter: Jitter::Equal,
            seed,
        },
    };
    let mut rng = Rng(seed);
    let poison = |o: u64| mix64(o ^ seed.rotate_left(17)).is_multiple_of(100);
    let mut generation = 1;
    let mut q = PartitionQueue::new(policy, 256, 0, generation);
    let mut deliveries = vec![0u16; N as usize];
    let mut acked = vec![0u32; N as usize];
    let mut dead = vec![0u16; N as usize];
    let mut consumers: Vec<Vec<(Lease, i64, Act)>> = vec![Vec::new(); 4];
    let mut refused_reads = 0;
    let dead_letter = |q: &mut PartitionQueue, f: &Failure, dead: &mut Vec<u16>| {
        if f.next == Next::Dead {
            assert_eq!(f.attempt, MAX);
            dead[f.offset as usize] += 1;
            q.moved(f.offset).unwrap();
        }
    };
    let mut now: i64 = 0;
    let mut step = 0u64;
    while q.watermark() < N {
        step += 1;
        assert!(step < 1_000_000, "stuck at {}", q.watermark());
        now += 10;
        if restart_every.is_some_and(|n| step.is_multiple_of(n)) {
            generation += 1;
            let (r, how) = crash(&q, generation);
            assert_eq!(how, Recovery::Checkpoint);
            q = r;
        }
        let fetch = q.fetch_pos();
        if q.offer_range(fetch, N, now) < N {
            refused_reads += 1;
        }
        for f in q.expire(now) {
            dead_letter(&mut q, &f, &mut dead);
        }
        for held in consumers.iter_mut() {
            let mut i = 0;
            while i < held.len() {
                let (l, finish, act) = held[i];
                if finish > now {
                    i += 1;
                    continue;
                }
                held.swap_remove(i);
                match act {
                    Act::Ack => match q.ack(l.offset, Some(l.id)) {
                        Ok(Ack::Acked { .. }) => acked[l.offset as usize] += 1,
                        Ok(Ack::AlreadyDone) => {}
                        Err(e) => panic!("ack {}: {e}", l.offset),
                    },
                    Act::Nack => {
                        let delay = (rng.below(4) == 0).then(|| rng.below(300));
                        match q.nack(l.offset, l.id, delay, now) {
                            Ok(f) => dead_letter(&mut q, &f, &mut dead),
                            Err(QueueError::StaleLease(_) | QueueError::AlreadyDone(_)) => {}
                            Err(e) => panic!("nack {}: {e}", l.offset),
                        }
                    }
                    Act::Abandon => {}
                }
            }
            for l in q.lease(8 - held.len(), now, VIS) {
                let o = l.offset as usize;
                assert_eq!(acked[o] + u32::from(dead[o]), 0, "{o} delivered when done");
                deliveries[o] += 1;
                assert_eq!(l.attempt, deliveries[o], "attempts of {o}");
                let r = rng.below(100);
                let act = match r {
                    _ if poison(l.offset) => [Act::Nack, Act::Abandon][r as usize % 2],
                    0..=88 => Act::Ack,
                    89..=98 => Act::Nack,
                    _ => Act::Abandon,
                };
                let finish = now + rng.below(VIS * 3 / 2) as i64;
                held.push((l, finish, act));
            }
        }
    }
    assert_eq!(q.watermark(), N);
    assert!(refused_reads > 0, "the window never filled");
    let mut poisoned = 0;
    for o in 0..N as usize {
        if poison(o as u64) {
            poisoned += 1;
            assert_eq!((acked[o], dead[o]), (0, 1), "poison {o}");
        }
        match (acked[o], dead[o]) {
            (1, 0) => assert!(deliveries[o] >= 1 && deliveries[o] <= MAX),
            (0, 1) => assert_eq!(deliveries[o], MAX, "{o}"),
            other => panic!("{o}: acked, dead = {other:?}"),
        }
    }
    assert!((50..200).contains(&poisoned), "{poisoned} poison messages");
    assert!(
        deliveries.iter().filter(|&&d| d > 1).count() > 1_000,
        "nacks and expiries redeliver"
    );
}

/// `ack_many` answers every ack as acking one after the other does, and leaves the same
/// window: acks below the watermark, in the window (current, stale, repeated), of offsets
/// not read yet (within the capacity and beyond it), with and without a lease.
#[test]
fn ack_many_is_acks_one_after_the_other() {
    for seed in 0..300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37));
        let mut q = PartitionQueue::new(policy(3), 64, 10, 1);
        let read = 10 + rng.below(60);
        q.offer_range(10, read, 0);
        let mut leases = Vec::new();
        for _ in 0..rng.below(4) {
            leases.extend(q.lease(rng.below(20) as usize, 0, VIS));
        }
        for l in leases.iter().filter(|_| rng.below(4) == 0) {
            let _ = q.nack(l.offset, l.id, Some(0), 0);
        }
        for l in leases.iter().filter(|_| rng.below(3) == 0) {
            let _ = q.ack(l.offset, Some(l.id));
        }
        let items: Vec<(u64, Option<LeaseId>)> = (0..rng.below(40))
            .map(|_| {
                let o = 5 + rng.below(100);
                let lease = match rng.below(3) {
                    0 => None,
                    1 => leases.iter().find(|l| l.offset == o).map(|l| l.id),
                    _ => Some(LeaseId {
                        generation: 1,
                        seq: rng.below(50) as u32 + 1,
                    }),
                };
                (o, lease)
            })
            .collect();
        let (mut one, mut many) = (q.clone(), q);
        let by_one: Vec<_> = items.iter().map(|&(o, l)| (o, one.ack(o, l))).collect();
        let mut by_many = Vec::new();
        many.ack_many(items.iter().copied(), |o, a| by_many.push((o, a)));
        assert_eq!(by_one, by_many, "seed {seed}");
        assert_eq!(one.watermark(), many.watermark(), "seed {seed}");
        assert_eq!(one.stats(), many.stats(), "seed {seed}");
        assert_eq!(one.checkpoint(), many.checkpoint(), "seed {seed}");
        assert_eq!(one.fetch_pos(), many.fetch_pos(), "seed {seed}");
        assert_eq!(
            one.lease(100, 5, VIS),
            many.lease(100, 5, VIS),
            "seed {seed}"
        );
    }
}

#[test]
fn simulation_acks_each_message_once_or_dead_letters_it() {
    simulate(0x5eed, None);
}

#[test]
fn simulation_survives_restores_from_checkpoints() {
    simulate(0xbeef, Some(777));
}
