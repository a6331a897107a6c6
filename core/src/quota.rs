//! Rate quotas and concurrency limits, enforced per core with as little sharing as possible.
//!
//! It owns:
//! * [`Rate`], a sustained rate with a burst;
//! * [`Pool`], the process-wide GCRA bucket of one (app, dimension), one `AtomicU64` shared by
//!   the cores through an `Arc`;
//! * [`Local`], one core's allowance for one (app, dimension): a plain integer refilled by
//!   leasing chunks of units from the pool, so that a request costs no atomic operation and a
//!   chunk costs one compare-and-swap. A core holds at most one chunk it has not spent yet, so
//!   the process admits at most `cores × chunk` units more than the pool's own limit;
//! * [`Slots`] and [`SlotGuard`], a counter of concurrent long polls and streams per app;
//! * [`FailLimiter`], a per-core limiter of failed authentications per client IP, in a bounded
//!   map;
//! * [`retry_after_secs`], the whole seconds of a `Retry-After` header.
//!
//! GCRA (the generic cell rate algorithm) keeps one number per bucket, the theoretical arrival
//! time (TAT): taking `n` units moves it to `max(tat, now) + n·T`, where `T` is the interval of
//! one unit, and is allowed while the result lies at most `burst·T` ahead of `now`. Interval
//! arithmetic is done in whole nanoseconds, rounded up, with `u128` intermediates so that byte
//! rates above 10⁹/s neither overflow nor round to zero.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A rate: `per_sec` units per second with a burst of `burst` units (burst >= 1).
///
/// A [`Pool`] or [`FailLimiter`] raises a zero in either field to 1; "no limit" is expressed by
/// having no pool at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Units replenished per second.
    pub per_sec: u64,
    /// Units that may be taken at once from a full bucket.
    pub burst: u64,
}

impl Rate {
    /// The rate with both fields at least 1.
    fn normalized(self) -> Rate {
        Rate {
            per_sec: self.per_sec.max(1),
            burst: self.burst.max(1),
        }
    }

    /// Nanoseconds that `units` units take to replenish, rounded up, saturating at `u64::MAX`.
    fn nanos_for(self, units: u64) -> u64 {
        let per_sec = u128::from(self.per_sec.max(1));
        let nanos = (u128::from(units) * NANOS_PER_SEC).div_ceil(per_sec);
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    /// Whole units replenished in `nanos` nanoseconds, rounded down.
    fn units_in(self, nanos: u64) -> u64 {
        let units = u128::from(nanos) * u128::from(self.per_sec) / NANOS_PER_SEC;
        u64::try_from(units).unwrap_or(u64::MAX)
    }

    /// The size of a [`Local`]'s lease: 5 ms worth of units, at least 1, at most the burst.
    fn chunk(self) -> u64 {
        (self.per_sec / 200).max(1).min(self.burst.max(1))
    }
}

/// The process-wide pool of one (app, dimension): GCRA state in one `AtomicU64`, the
/// theoretical arrival time (TAT) in nanoseconds since the pool's epoch. `Send + Sync`; shared
/// by the cores through an `Arc`.
///
/// Every operation is one load and a compare-and-swap loop on that atomic; `Relaxed` ordering
/// suffices because the TAT publishes nothing but itself.
#[derive(Debug)]
pub struct Pool {
    rate: Rate,
    /// The burst tolerance, `burst·T` in nanoseconds.
    tolerance: u64,
    epoch: Instant,
    tat: AtomicU64,
}

impl Pool {
    /// A full pool for `rate`, its clock starting now.
    pub fn new(rate: Rate) -> Self {
        Self::with_epoch(rate, Instant::now())
    }

    /// A full pool for `rate` whose clock starts at `epoch`; instants before `epoch` count as
    /// `epoch`. For tests that drive time explicitly.
    pub fn with_epoch(rate: Rate, epoch: Instant) -> Self {
        let rate = rate.normalized();
        Pool {
            rate,
            tolerance: rate.nanos_for(rate.burst),
            epoch,
            tat: AtomicU64::new(0),
        }
    }

    /// The pool's rate (with zeros raised to 1).
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes `n` units now if the bucket holds them; on refusal returns how long until `n`
    /// units would be available.
    ///
    /// `n` above the burst is taken only from a full bucket (which it leaves in debt), so that
    /// an oversized request is delayed rather than refused forever.
    pub fn try_take(&self, n: u64, now: Instant) -> Result<(), Duration> {
        let now = self.nanos(now);
        let cost = self.rate.nanos_for(n);
        let limit = self.tolerance.max(cost);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(cost);
            let ahead = new_tat - now;
            if ahead > limit {
                return Err(Duration::from_nanos(ahead - limit));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Takes `n` units whatever the bucket holds: it may go into debt (a post-paid charge, for
    /// byte rates whose size is known only after the request was accepted).
    pub fn force_take(&self, n: u64, now: Instant) {
        let now = self.nanos(now);
        let cost = self.rate.nanos_for(n);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(cost);
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(current) => tat = current,
            }
        }
    }

    /// `Err(wait)` while the pool is in debt beyond its burst, `wait` being how long until it
    /// is not (the request should get 429 with `Retry-After` = [`retry_after_secs`]`(wait)`).
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let ahead = self.ahead(now);
        if ahead > self.tolerance {
            Err(Duration::from_nanos(ahead - self.tolerance))
        } else {
            Ok(())
        }
    }

    /// Units available now (for the `RateLimit` header's remaining count), 0 in debt, at most
    /// the burst.
    pub fn available(&self, now: Instant) -> u64 {
        let room = self.tolerance.saturating_sub(self.ahead(now));
        self.rate.units_in(room).min(self.rate.burst)
    }

    /// How far the TAT lies ahead of `now`, in nanoseconds (0 for a full bucket).
    fn ahead(&self, now: Instant) -> u64 {
        self.tat
            .load(Ordering::Relaxed)
            .saturating_sub(self.nanos(now))
    }

    /// `now` in nanoseconds since the epoch.
    fn nanos(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(since).unwrap_or(u64::MAX)
    }
}

/// One core's allowance for one (app, dimension): a plain integer, refilled by leasing chunks
/// (5 ms of the rate, at least 1 unit, at most the burst) from the [`Pool`]. Not `Sync`; it
/// lives in a core's `Cell`/`RefCell`, one per pool: replacing the pool (a changed quota)
/// should replace its `Local`s too.
#[derive(Debug, Default)]
pub struct Local {
    allowance: u64,
}

impl Local {
    /// An empty allowance.
    pub fn new() -> Self {
        Local { allowance: 0 }
    }

    /// The units this core holds and has not spent.
    pub fn allowance(&self) -> u64 {
        self.allowance
    }

    /// Pre-paid: takes `n` from the allowance, leasing `max(chunk, missing)` from the pool when
    /// short; if a chunk-sized lease is refused, leases exactly what is missing before
    /// refusing. On refusal returns the wait, and the allowance is unchanged.
    pub fn take(&mut self, pool: &Pool, n: u64, now: Instant) -> Result<(), Duration> {
        if let Some(left) = self.allowance.checked_sub(n) {
            self.allowance = left;
            return Ok(());
        }
        let missing = n - self.allowance;
        let lease = pool.rate().chunk().max(missing);
        let leased = match pool.try_take(lease, now) {
            Ok(()) => lease,
            Err(_) if lease > missing => pool.try_take(missing, now).map(|()| missing)?,
            Err(wait) => return Err(wait),
        };
        self.allowance = leased - missing;
        Ok(())
    }

    /// Post-paid: spends `n`, from the allowance first; the rest is forced onto the pool (which
    /// may go into debt), rounded up to a chunk so that a run of small charges costs one atomic
    /// operation per chunk, the surplus kept as allowance.
    pub fn charge(&mut self, pool: &Pool, n: u64, now: Instant) {
        let from_allowance = self.allowance.min(n);
        self.allowance -= from_allowance;
        let rest = n - from_allowance;
        if rest == 0 {
            return;
        }
        let lease = pool.rate().chunk().max(rest);
        pool.force_take(lease, now);
        self.allowance = lease - rest;
    }

    /// Whether a request may start: `Ok` when the allowance is positive or the pool is not in
    /// debt beyond its burst, else the wait (see [`Pool::check`]).
    pub fn check(&self, pool: &Pool, now: Instant) -> Result<(), Duration> {
        if self.allowance > 0 {
            Ok(())
        } else {
            pool.check(now)
        }
    }
}

/// Whole seconds for a `Retry-After` header: `wait` rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs();
    let secs = if wait.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    };
    secs.max(1)
}

/// A limit on concurrent long polls and streams of one app, shared by the cores through an
/// `Arc`: one atomic operation when a stream starts and one when it ends.
#[derive(Debug)]
pub struct Slots {
    limit: AtomicU64,
    in_use: AtomicU64,
}

impl Slots {
    /// `limit` slots, none in use.
    pub fn new(limit: u64) -> Self {
        Slots {
            limit: AtomicU64::new(limit),
            in_use: AtomicU64::new(0),
        }
    }

    /// The number of slots.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the number of slots; those in use stay counted (a lower limit refuses new
    /// streams until enough have ended).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The slots in use now.
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// A slot, held until the guard is dropped, or `None` when all are in use.
    pub fn try_acquire(self: &Arc<Self>) -> Option<SlotGuard> {
        self.in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used < self.limit.load(Ordering::Relaxed)).then_some(used + 1)
            })
            .ok()?;
        Some(SlotGuard {
            slots: Arc::clone(self),
        })
    }
}

/// One slot of a [`Slots`], released when dropped (on any thread).
#[derive(Debug)]
pub struct SlotGuard {
    slots: Arc<Slots>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The default rate of [`FailLimiter`]: a burst of 20 failures, then 1 a second.
pub const FAIL_RATE: Rate = Rate {
    per_sec: 1,
    burst: 20,
};

/// The default number of client IPs a [`FailLimiter`] tracks.
pub const FAIL_CAP: usize = 4096;

/// A limiter of failed authentications per client IP, local to one core (nothing shared): GCRA
/// per `IpAddr` in a map of at most `cap` entries.
///
/// When the map is full, entries whose TAT has passed (they hold no failure any more) are
/// dropped; if that frees less than a sixteenth of the map, arbitrary entries go too, so that
/// the sweep is paid once per `cap / 16` new IPs at worst.
#[derive(Debug)]
pub struct FailLimiter {
    rate: Rate,
    interval: Duration,
    tolerance: Duration,
    cap: usize,
    tats: HashMap<IpAddr, Instant>,
}

impl FailLimiter {
    /// A limiter allowing `rate` failures per IP, tracking at most `cap` IPs (at least 1).
    pub fn new(rate: Rate, cap: usize) -> Self {
        let rate = rate.normalized();
        FailLimiter {
            rate,
            interval: Duration::from_nanos(rate.nanos_for(1)),
            tolerance: Duration::from_nanos(rate.nanos_for(rate.burst)),
            cap: cap.max(1),
            tats: HashMap::new(),
        }
    }

    /// The limiter's rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The number of IPs tracked now.
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    /// Whether no IP is tracked.
    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }

    /// Records a failed authentication from `ip`. Failures beyond the limit do not extend it:
    /// an IP may try again one interval after its last failure, however many it had.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if !self.tats.contains_key(&ip) && self.tats.len() >= self.cap {
            self.make_room(now);
        }
        let ceiling = now + self.tolerance;
        let tat = self.tats.entry(ip).or_insert(now);
        *tat = ((*tat).max(now) + self.interval).min(ceiling);
    }

    /// `Ok` when `ip` may try again (one more failure would be within the limit), else how
    /// long until it may.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(&tat) = self.tats.get(&ip) else {
            return Ok(());
        };
        let next = tat.max(now) + self.interval;
        let ahead = next.saturating_duration_since(now);
        if ahead > self.tolerance {
            Err(ahead - self.tolerance)
        } else {
            Ok(())
        }
    }

    /// Frees at least one entry, and up to a sixteenth of the map.
    fn make_room(&mut self, now: Instant) {
        self.tats.retain(|_, tat| *tat > now);
        let target = self.cap - (self.cap / 16).max(1);
        if self.tats.len() > target {
            let excess = self.tats.len() - target;
            let victims: Vec<IpAddr> = self.tats.keys().take(excess).copied().collect();
            for ip in victims {
                self.tats.remove(&ip);
            }
        }
    }
}

impl Default for FailLimiter {
    /// [`FAIL_RATE`] over at most [`FAIL_CAP`] IPs.
    fn default() -> Self {
        Self::new(FAIL_RATE, FAIL_CAP)
    }
}

#[cfg(test)]
mod tests {
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
}
