use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn ms(t0: Instant, x: u64) -> Instant {
    t0 + Duration::from_millis(x)
}

fn rate(per_sec: u64, burst: u64) -> Rate {
    Rate { per_sec, burst }
}

#[test]
fn burst_then_rate() {
    let t0 = Instant::now();
    let pool = Pool::with_epoch(rate(10, 5), t0);
    assert_eq!(pool.available(t0), 5);
    for _ in 0..5 {
        assert_eq!(pool.try_take(1, t0), Ok(()));
    }
    assert_eq!(pool.available(t0), 0);
    assert_eq!(pool.try_take(1, t0), Err(Duration::from_millis(100)));
    assert_eq!(pool.try_take(1, ms(t0, 40)), Err(Duration::from_millis(60)));
    assert_eq!(pool.try_take(3, t0), Err(Duration::from_millis(300)));
    assert_eq!(pool.try_take(1, ms(t0, 100)), Ok(()));
    assert!(pool.try_take(1, ms(t0, 150)).is_err());
    assert_eq!(pool.try_take(1, ms(t0, 200)), Ok(()));
    // A second later 10 units have come back, but the bucket holds only 5.
    assert_eq!(pool.available(ms(t0, 1200)), 5);
}

#[test]
fn oversized_take_waits_for_a_full_bucket() {
    let t0 = Instant::now();
    let pool = Pool::with_epoch(rate(10, 5), t0);
    assert_eq!(pool.try_take(2, t0), Ok(()));
    // 8 > burst: refused until the 2 units taken have come back.
    assert_eq!(pool.try_take(8, t0), Err(Duration::from_millis(200)));
    assert_eq!(pool.try_take(8, ms(t0, 200)), Ok(()));
    assert_eq!(pool.available(ms(t0, 200)), 0);
    assert_eq!(pool.check(ms(t0, 200)), Err(Duration::from_millis(300)));
}

#[test]
fn debt_blocks_until_paid_by_time() {
    let t0 = Instant::now();
    let pool = Pool::with_epoch(rate(1000, 100), t0);
    assert_eq!(pool.check(t0), Ok(()));
    pool.force_take(600, t0);
    // 600 taken from 100: 500 units (500 ms) of debt.
    assert_eq!(pool.check(t0), Err(Duration::from_millis(500)));
    assert_eq!(pool.available(t0), 0);
    assert_eq!(pool.check(ms(t0, 499)), Err(Duration::from_millis(1)));
    assert_eq!(pool.check(ms(t0, 500)), Ok(()));
    assert_eq!(pool.available(ms(t0, 500)), 0);
    assert_eq!(pool.available(ms(t0, 550)), 50);
    assert_eq!(pool.available(ms(t0, 5000)), 100);
    assert_eq!(retry_after_secs(Duration::from_millis(500)), 1);
}

#[test]
fn retry_after_rounds_up() {
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
    assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
}

/// Round-robin requests by `cores` `Local`s, `attempts` per core per ms, from 0 to 10
/// simulated seconds; `serve` answers one (the units it was granted); returns the units
/// granted in all.
fn simulate(
    cores: usize,
    r: Rate,
    attempts: usize,
    serve: impl Fn(&mut Local, &Pool, Instant) -> u64,
) -> u64 {
    let t0 = Instant::now();
    let pool = Pool::with_epoch(r, t0);
    let mut locals: Vec<Local> = (0..cores).map(|_| Local::new()).collect();
    let mut granted = 0;
    for step in 0..=10_000 {
        let now = ms(t0, step);
        for _ in 0..attempts {
            for local in &mut locals {
                granted += serve(local, &pool, now);
            }
        }
    }
    granted
}

/// Pre-paid takes of 1 unit.
fn simulate_prepaid(cores: usize, r: Rate, attempts: usize) -> u64 {
    simulate(cores, r, attempts, |local, pool, now| {
        u64::from(local.take(pool, 1, now).is_ok())
    })
}

/// Requests of `size` units checked first and charged post-paid.
fn simulate_postpaid(cores: usize, r: Rate, attempts: usize, size: u64) -> u64 {
    simulate(cores, r, attempts, |local, pool, now| {
        if local.check(pool, now).is_ok() {
            local.charge(pool, size, now);
            size
        } else {
            0
        }
    })
}

fn assert_close(granted: u64, r: Rate, cores: u64, size: u64) {
    let expected = r.per_sec * 10 + r.burst;
    // What the cores may hold in leases, plus one request each beyond a post-paid limit.
    let slack = cores * (r.chunk() + size);
    assert!(
        granted + slack >= expected && granted <= expected + slack,
        "granted {granted}, expected {expected} ± {slack}"
    );
    let error = granted.abs_diff(expected) as f64 / expected as f64;
    assert!(error < 0.10, "granted {granted}, expected {expected}");
}

#[test]
fn locals_sharing_a_pool_stay_within_the_rate() {
    let r = rate(10_000, 500);
    for cores in [2, 8] {
        let granted = simulate_prepaid(cores, r, 20);
        assert_close(granted, r, cores as u64, 0);
    }
}

#[test]
fn locals_charging_bytes_post_paid_stay_within_the_rate() {
    let r = rate(2_000_000, 200_000);
    for cores in [2, 8] {
        let granted = simulate_postpaid(cores, r, 4, 1000);
        assert_close(granted, r, cores as u64, 1000);
    }
}

#[test]
fn small_rates_lease_one_unit() {
    let r = rate(5, 2);
    assert_eq!(r.chunk(), 1);
    for cores in [2, 8] {
        let granted = simulate_prepaid(cores, r, 3);
        assert_eq!(granted, 5 * 10 + 2);
    }
}

#[test]
fn chunk_is_bounded_by_the_burst() {
    assert_eq!(rate(1_000_000, 100).chunk(), 100);
    assert_eq!(rate(1_000_000, 100_000).chunk(), 5000);
    assert_eq!(rate(0, 0).normalized(), rate(1, 1));
}

#[test]
fn a_short_local_leases_only_what_is_missing_when_a_chunk_is_refused() {
    let t0 = Instant::now();
    let r = rate(100_000, 1000); // chunk 500
    let pool = Pool::with_epoch(r, t0);
    let mut local = Local::new();
    assert_eq!(pool.try_take(800, t0), Ok(()));
    assert_eq!(local.take(&pool, 150, t0), Ok(()));
    assert_eq!(local.allowance(), 0);
    assert_eq!(pool.available(t0), 50);
    assert!(local.take(&pool, 51, t0).is_err());
    assert_eq!(local.allowance(), 0);
    assert_eq!(local.take(&pool, 50, t0), Ok(()));
    // 10 ms later 1000 units have come back (the bucket holds 1000): a whole chunk.
    assert_eq!(local.take(&pool, 1, ms(t0, 10)), Ok(()));
    assert_eq!(local.allowance(), 499);
    assert_eq!(pool.available(ms(t0, 10)), 500);
}

#[test]
fn large_byte_rates_do_not_overflow() {
    let t0 = Instant::now();
    let r = rate(5_000_000_000, 10_000_000_000);
    let pool = Pool::with_epoch(r, t0);
    assert_eq!(pool.available(t0), 10_000_000_000);
    assert_eq!(pool.try_take(10_000_000_000, t0), Ok(()));
    assert_eq!(
        pool.try_take(5_000_000_000, t0),
        Err(Duration::from_secs(1))
    );
    assert_eq!(pool.available(ms(t0, 1000)), 5_000_000_000);
    pool.force_take(u64::MAX, t0);
    assert!(pool.check(t0).is_err());
    assert_eq!(pool.available(t0), 0);

    let granted = simulate_postpaid(2, rate(5_000_000_000, 1_000_000_000), 1, 64 << 20);
    let expected = 5_000_000_000u64 * 10 + 1_000_000_000;
    assert!(granted.abs_diff(expected) < expected / 10, "{granted}");
}

#[test]
fn times_before_the_epoch_count_as_the_epoch() {
    let t0 = Instant::now();
    let pool = Pool::with_epoch(rate(10, 1), t0 + Duration::from_secs(1));
    assert_eq!(pool.try_take(1, t0), Ok(()));
    assert!(pool.try_take(1, t0).is_err());
}

#[test]
fn slots_are_bounded_and_freed_on_drop() {
    let slots = Arc::new(Slots::new(3));
    let mut guards: Vec<SlotGuard> = (0..3).filter_map(|_| slots.try_acquire()).collect();
    assert_eq!(guards.len(), 3);
    assert_eq!(slots.in_use(), 3);
    assert!(slots.try_acquire().is_none());
    let freed = guards.pop();
    std::thread::spawn(move || drop(freed))
        .join()
        .expect("the dropping thread panicked");
    assert_eq!(slots.in_use(), 2);
    assert!(slots.try_acquire().is_some());
    drop(guards);
    assert_eq!(slots.in_use(), 0);
    assert!(Arc::new(Slots::new(0)).try_acquire().is_none());
}

#[test]
fn fail_limiter_allows_a_burst_then_one_a_second() {
    let t0 = Instant::now();
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let other = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let mut limiter = FailLimiter::default();
    for _ in 0..20 {
        assert_eq!(limiter.check(ip, t0), Ok(()));
        limiter.failed(ip, t0);
    }
    assert_eq!(limiter.check(ip, t0), Err(Duration::from_secs(1)));
    assert_eq!(limiter.check(other, t0), Ok(()));
    assert_eq!(
        limiter.check(ip, ms(t0, 400)),
        Err(Duration::from_millis(600))
    );
    assert_eq!(limiter.check(ip, ms(t0, 1000)), Ok(()));
    limiter.failed(ip, ms(t0, 1000));
    assert!(limiter.check(ip, ms(t0, 1000)).is_err());
    // Hammering while refused does not extend the wait beyond one interval.
    for _ in 0..1000 {
        limiter.failed(ip, ms(t0, 1000));
    }
    assert_eq!(limiter.check(ip, ms(t0, 2000)), Ok(()));
    // A quiet IP gets its whole burst back.
    let later = t0 + Duration::from_secs(60);
    for _ in 0..20 {
        assert_eq!(limiter.check(ip, later), Ok(()));
        limiter.failed(ip, later);
    }
    assert!(limiter.check(ip, later).is_err());
}

#[test]
fn fail_limiter_map_stays_bounded() {
    let t0 = Instant::now();
    let cap = 4096;
    let mut limiter = FailLimiter::new(FAIL_RATE, cap);
    for i in 0..100_000u32 {
        let now = ms(t0, u64::from(i / 100));
        limiter.failed(IpAddr::V4(Ipv4Addr::from(i)), now);
        assert!(limiter.len() <= cap);
    }
    assert!(limiter.len() > cap / 2);
    let mut tiny = FailLimiter::new(FAIL_RATE, 0);
    tiny.failed(IpAddr::V4(Ipv4Addr::LOCALHOST), t0);
    tiny.failed(IpAddr::V6(Ipv6Addr::LOCALHOST), t0);
    assert_eq!(tiny.len(), 1);
}

#[test]
fn fail_limiter_sweeps_expired_entries_first() {
    let t0 = Instant::now();
    let mut limiter = FailLimiter::new(FAIL_RATE, 64);
    let old = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    for i in 0..63u32 {
        limiter.failed(IpAddr::V4(Ipv4Addr::from(i)), t0);
    }
    // 20 failures: a TAT 20 s ahead.
    for _ in 0..20 {
        limiter.failed(old, t0);
    }
    let later = t0 + Duration::from_secs(10);
    limiter.failed(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), later);
    // The 63 single failures had expired; the busy IP is still tracked.
    assert_eq!(limiter.len(), 2);
    assert!(limiter.check(old, t0 + Duration::from_millis(500)).is_err());
}

#[test]
fn threads_sharing_a_pool_do_not_lose_units() {
    // Real threads and time; asserts only what does not depend on timing.
    let pool = Arc::new(Pool::new(rate(1_000_000, 1_000_000)));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let mut local = Local::new();
                let start = Instant::now();
                let mut granted = 0u64;
                while start.elapsed() < Duration::from_millis(200) {
                    if local.take(&pool, 1, Instant::now()).is_ok() {
                        granted += 1;
                    }
                }
                (granted, local.allowance())
            })
        })
        .collect();
    let mut granted = 0;
    for handle in handles {
        let (g, left) = handle.join().expect("a taking thread panicked");
        granted += g + left;
    }
    // Everything granted or held was leased in whole numbers from the pool, whose clock
    // had at most `elapsed` to refill it.
    let elapsed = pool.nanos(Instant::now());
    let ceiling = 1_000_000 + pool.rate().units_in(elapsed) + 1;
    assert!(granted <= ceiling, "{granted} > {ceiling}");
}
