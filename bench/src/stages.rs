//! Where a publish's latency goes, from kateway's own histograms: `/metrics` is read before and
//! after a run, and the difference of each histogram gives its p50 and p99 over the run. The
//! stages are `kateway_publish_stage_duration_seconds` (append, write wait, sync wait, and the
//! flusher's write), the group-commit fsync, and the whole request (route `publish`, status
//! 201: from the complete request to the queued reply).

use std::collections::BTreeMap;

/// One histogram: cumulative counts by upper bound (seconds; `+Inf` last).
type Buckets = Vec<(f64, u64)>;

/// The histograms of interest in one `/metrics` reading, by display name.
pub struct Reading(BTreeMap<&'static str, Buckets>);

/// The series read, in display order: (display name, series prefix before `le=`).
const SERIES: [(&str, &str); 6] = [
    (
        "request (publish 201)",
        "kateway_http_request_duration_seconds_bucket{route=\"publish\",status=\"201\",",
    ),
    (
        "append",
        "kateway_publish_stage_duration_seconds_bucket{stage=\"append\",",
    ),
    (
        "write wait",
        "kateway_publish_stage_duration_seconds_bucket{stage=\"write_wait\",",
    ),
    (
        "sync wait",
        "kateway_publish_stage_duration_seconds_bucket{stage=\"sync_wait\",",
    ),
    (
        "flusher write",
        "kateway_publish_stage_duration_seconds_bucket{stage=\"write\",",
    ),
    ("fsync", "kateway_log_fsync_duration_seconds_bucket{"),
];

/// Reads kateway's `/metrics` at `addr`.
pub fn read(addr: &str) -> anyhow::Result<Reading> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Reading {
    let mut out = BTreeMap::new();
    for (name, prefix) in SERIES {
        let b: Buckets = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix)?.strip_prefix("le=\""))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        out.insert(name, b);
    }
    Reading(out)
}

/// The quantile `q` of a histogram's observations (linear within a bucket; the last finite
/// bound for the `+Inf` bucket), in microseconds; `None` without observations.
fn quantile(b: &Buckets, q: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lo, mut below) = (0.0, 0u64);
    for &(le, cum) in b {
        if cum as f64 >= rank && cum > below {
            if le.is_infinite() {
                return Some(lo * 1e6);
            }
            let frac = (rank - below as f64) / (cum - below) as f64;
            return Some((lo + (le - lo) * frac) * 1e6);
        }
        (lo, below) = (le, cum);
    }
    Some(lo * 1e6)
}

/// The p50 and p99 (µs) and count of each stage between two readings, in display order.
pub fn between(before: &Reading, after: &Reading) -> Vec<(&'static str, u64, f64, f64)> {
    SERIES
        .iter()
        .filter_map(|(name, _)| {
            let (a, b) = (after.0.get(name)?, before.0.get(name));
            let d: Buckets = a
                .iter()
                .map(|&(le, cum)| {
                    let was = b
                        .and_then(|b| b.iter().find(|(l, _)| *l == le))
                        .map_or(0, |x| x.1);
                    (le, cum.saturating_sub(was))
                })
                .collect();
            let n = d.last()?.1;
            Some((*name, n, quantile(&d, 0.5)?, quantile(&d, 0.99)?))
        })
        .collect()
}

/// Table rows for `label`.
pub fn rows(label: &str, stages: &[(&'static str, u64, f64, f64)]) -> Vec<String> {
    stages
        .iter()
        .map(|(name, n, p50, p99)| {
            format!("| {label}: {name} | {n} observed | p50 {p50:.0} us | p99 {p99:.0} us | | |")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_the_difference_of_two_readings() {
        let at = |n: u64, m: u64| {
            format!(
                "kateway_log_fsync_duration_seconds_bucket{{le=\"0.0001\"}} {n}\n\
                 kateway_log_fsync_duration_seconds_bucket{{le=\"0.0002\"}} {m}\n\
                 kateway_log_fsync_duration_seconds_bucket{{le=\"+Inf\"}} {m}\n"
            )
        };
        // 100 observations before; then 50 at or under 100 µs and 50 between 100 and 200 µs.
        let s = between(&parse(&at(100, 100)), &parse(&at(150, 200)));
        let (name, n, p50, p99) = s[0];
        assert_eq!((name, n), ("fsync", 100));
        assert!((p50 - 100.0).abs() < 1e-6, "{p50}");
        assert!((p99 - 198.0).abs() < 1e-6, "{p99}");
        assert!(between(&parse(""), &parse("")).is_empty());
    }
}
