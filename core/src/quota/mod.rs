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
mod tests;
