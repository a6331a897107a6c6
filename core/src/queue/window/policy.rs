//! A queue's delivery policy: attempts, lease lengths, and exponential backoff with
//! deterministic jitter.

/// How a backoff is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The exponential delay itself.
    None,
    /// Uniform in `[0, delay]`.
    Full,
    /// Uniform in `[delay / 2, delay]`.
    Equal,
}

/// Exponential backoff: `base_ms · 2^(failures − 1)`, capped at `max_ms`, then jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure, before jitter.
    pub base_ms: u64,
    /// The cap, before jitter; also the cap of an explicit nack delay.
    pub max_ms: u64,
    /// How the delay is randomised.
    pub jitter: Jitter,
    /// Seeds the jitter: the same seed, offset and attempt always give the same delay.
    pub seed: u64,
}

impl Backoff {
    /// The delay after `failures` failed attempts (at least 1), jittered with `random`.
    pub fn delay_ms(&self, failures: u16, random: u64) -> u64 {
        let shift = u32::from(failures.max(1) - 1);
        let factor = 1u64.checked_shl(shift).unwrap_or(u64::MAX);
        let raw = self.base_ms.saturating_mul(factor).min(self.max_ms);
        match self.jitter {
            Jitter::None => raw,
            Jitter::Full => uniform(random, raw),
            Jitter::Equal => raw / 2 + uniform(random, raw - raw / 2),
        }
    }

    /// The delay of `offset` after `failures` failed attempts, its jitter drawn from the seed.
    pub fn delay_for(&self, offset: u64, failures: u16) -> u64 {
        let random = mix64(self.seed ^ mix64(offset) ^ u64::from(failures));
        self.delay_ms(failures, random)
    }
}

/// A number in `[0, max]` from `random`.
fn uniform(random: u64, max: u64) -> u64 {
    match max.checked_add(1) {
        Some(n) => random % n,
        None => random,
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
pub(crate) fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A group's delivery policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Deliveries before a message is dead (at least 1).
    pub max_attempts: u16,
    /// The default lease length.
    pub visibility_ms: u64,
    /// The longest lease one call may ask for (leasing and extending).
    pub max_visibility_ms: u64,
    /// The delay between a failed attempt and the next delivery.
    pub backoff: Backoff,
}

impl Default for Policy {
    /// 5 attempts, 30 s leases (at most 12 h), backoff from 1 s to 60 s with equal jitter.
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            visibility_ms: 30_000,
            max_visibility_ms: 12 * 3_600_000,
            backoff: Backoff {
                base_ms: 1_000,
                max_ms: 60_000,
                jitter: Jitter::Equal,
                seed: 0,
            },
        }
    }
}

impl Policy {
    /// The policy with zero limits raised to 1 and the lease cap at least the default lease.
    pub(super) fn normalized(self) -> Self {
        let visibility_ms = self.visibility_ms.max(1);
        Policy {
            max_attempts: self.max_attempts.max(1),
            visibility_ms,
            max_visibility_ms: self.max_visibility_ms.max(visibility_ms),
            backoff: self.backoff,
        }
    }

    /// A requested lease length within `[1, max_visibility_ms]`, as a signed duration.
    pub(super) fn lease_ms(&self, requested: u64) -> i64 {
        to_i64(requested.clamp(1, self.max_visibility_ms))
    }
}

pub(super) fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}
