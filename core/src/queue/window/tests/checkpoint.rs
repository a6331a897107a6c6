//! Checkpoints: a window put through its checkpoint's bytes and restored, and what a restore
//! does with damaged or stale ones.

use super::*;

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
