//! A leased group's delivery policy in force: the gateway's `[queue]` settings, with what the
//! group's policy record (set through `/v1/policies/:app/:group`, kept in the tenancy
//! metadata) overrides.

use kateway_core::config::QueueConfig;
use kateway_core::queue::{Backoff, Jitter, Policy};
use kateway_core::tenancy::QueuePolicySpec;
use serde_json::{json, Value};

/// The policy of a group with `spec` (none: the settings alone); `seed` varies its jitter.
pub fn resolve(cfg: &QueueConfig, spec: Option<&QueuePolicySpec>, seed: u64) -> Policy {
    let s = spec.copied().unwrap_or_default();
    let ms = |d: std::time::Duration| d.as_millis().min(u64::MAX.into()) as u64;
    let max_visibility_ms = ms(cfg.max_visibility.0);
    let mut base_ms = s.backoff_base_ms.unwrap_or(ms(cfg.backoff_base.0));
    let mut max_ms = s.backoff_max_ms.unwrap_or(ms(cfg.backoff_max.0));
    // What the group names wins over the setting it would contradict.
    if s.backoff_base_ms.is_none() {
        base_ms = base_ms.min(max_ms);
    } else {
        max_ms = max_ms.max(base_ms);
    }
    Policy {
        max_attempts: s
            .max_attempts
            .unwrap_or(cfg.max_attempts)
            .min(u16::MAX.into()) as u16,
        // Within the gateway's cap on leases.
        visibility_ms: s
            .visibility_ms
            .unwrap_or(ms(cfg.visibility.0))
            .min(max_visibility_ms),
        max_visibility_ms,
        backoff: Backoff {
            base_ms,
            max_ms,
            jitter: Jitter::Full,
            seed,
        },
    }
}

/// What the policy API shows of a policy in force.
pub fn json(p: &Policy) -> Value {
    json!({
        "max_attempts": p.max_attempts,
        "visibility_ms": p.visibility_ms,
        "max_visibility_ms": p.max_visibility_ms,
        "backoff_base_ms": p.backoff.base_ms,
        "backoff_max_ms": p.backoff.max_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_overrides_what_it_names() {
        let cfg = kateway_core::config::Config::defaults().queue;
        let d = resolve(&cfg, None, 7);
        assert_eq!(d.max_attempts as u32, cfg.max_attempts);
        assert_eq!(d.backoff.seed, 7);
        let spec = QueuePolicySpec {
            max_attempts: Some(9),
            backoff_base_ms: Some(120_000),
            visibility_ms: Some(u64::MAX),
            ..Default::default()
        };
        let p = resolve(&cfg, Some(&spec), 7);
        assert_eq!(p.max_attempts, 9);
        assert_eq!(p.backoff.base_ms, 120_000);
        // The cap rises to the base; the lease stays within the gateway's cap.
        assert_eq!(p.backoff.max_ms, 120_000);
        assert_eq!(p.visibility_ms, d.max_visibility_ms);
        assert_eq!(json(&p)["max_attempts"], 9);
        // A cap below the gateway's base lowers the base with it.
        let spec = QueuePolicySpec {
            backoff_max_ms: Some(10),
            ..Default::default()
        };
        let p = resolve(&cfg, Some(&spec), 7);
        assert_eq!((p.backoff.base_ms, p.backoff.max_ms), (10, 10));
    }
}
