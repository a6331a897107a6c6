//! Seeded simulations: many consumers acking, nacking and abandoning leases, with and without
//! restores from checkpoints; and `ack_many` against acks one after the other.

use super::*;

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
