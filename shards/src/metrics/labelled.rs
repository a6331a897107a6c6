//! Labelled metrics: publish and consume counts per topic (`app`, `topic`, `ver`), and request
//! latency per route and status. Each core counts in `Cell`s (the topic's counters hang off its
//! catalog entry, so counting costs no lookup); a scrape sums the cores by label set and caps the
//! series: the first `metrics.max_topic_series` topics by name keep their labels, the rest are
//! summed into `app="other",topic="other",ver="other"`, so the number of series stays bounded
//! however many topics there are. Consumer-group lag ([`super::lag`]) is capped the same way
//! by `metrics.max_group_series`.

use super::{HistSnapshot, Histogram};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// One topic's counters on one core.
#[derive(Default, Debug)]
pub struct TopicStats {
    pub_messages: Cell<u64>,
    pub_bytes: Cell<u64>,
    sub_messages: Cell<u64>,
    sub_bytes: Cell<u64>,
}

impl TopicStats {
    /// Counts `n` messages of `bytes` payload bytes published.
    pub fn published(&self, n: u64, bytes: u64) {
        self.pub_messages.set(self.pub_messages.get() + n);
        self.pub_bytes.set(self.pub_bytes.get() + bytes);
    }

    /// Counts `n` messages of `bytes` payload bytes delivered to subscribers.
    pub fn delivered(&self, n: u64, bytes: u64) {
        self.sub_messages.set(self.sub_messages.get() + n);
        self.sub_bytes.set(self.sub_bytes.get() + bytes);
    }

    /// The counters: published messages and bytes, delivered messages and bytes.
    pub fn get(&self) -> [u64; 4] {
        [
            self.pub_messages.get(),
            self.pub_bytes.get(),
            self.sub_messages.get(),
            self.sub_bytes.get(),
        ]
    }
}

/// Request latency per (route, status) on one core.
#[derive(Default)]
pub struct Routes {
    map: RefCell<HashMap<(&'static str, u16), Histogram>>,
}

impl Routes {
    /// Records one answered request.
    pub fn observe(&self, route: &'static str, status: u16, d: std::time::Duration) {
        let mut m = self.map.borrow_mut();
        match m.get(&(route, status)) {
            Some(h) => h.observe(d),
            None => m.entry((route, status)).or_default().observe(d),
        }
    }

    fn snapshot(&self) -> BTreeMap<(&'static str, u16), HistSnapshot> {
        self.map
            .borrow()
            .iter()
            .map(|(k, h)| (*k, h.snapshot()))
            .collect()
    }
}

/// Labelled series of one core or summed over cores.
#[derive(Debug, Clone, Default)]
pub struct Labelled {
    /// Per topic name: published messages and bytes, delivered messages and bytes.
    pub topics: BTreeMap<String, [u64; 4]>,
    /// Per (route, status): latency.
    pub routes: BTreeMap<(&'static str, u16), HistSnapshot>,
    /// Per (topic name, group name): lag (core 0's measurement).
    pub lags: super::lag::Lags,
}

impl Labelled {
    /// One core's series: its topics' counters and its routes' latencies.
    pub fn of<'a>(
        topics: impl Iterator<Item = (&'a str, &'a TopicStats)>,
        routes: &Routes,
        lags: &super::lag::Lags,
    ) -> Self {
        Labelled {
            topics: topics
                .map(|(n, s)| (n.to_string(), s.get()))
                .filter(|(_, v)| v.iter().any(|&x| x > 0))
                .collect(),
            routes: routes.snapshot(),
            lags: lags.clone(),
        }
    }

    /// Adds another core's series.
    pub fn add(&mut self, o: &Labelled) {
        for (name, v) in &o.topics {
            let t = self.topics.entry(name.clone()).or_default();
            for (a, b) in t.iter_mut().zip(v) {
                *a += b;
            }
        }
        for (k, h) in &o.routes {
            self.routes.entry(*k).or_default().add(h);
        }
        for (k, v) in &o.lags {
            *self.lags.entry(k.clone()).or_default() += v;
        }
    }

    /// Renders the series, at most `cap` topics and `group_cap` groups with their own labels.
    pub fn render(&self, out: &mut String, cap: usize, group_cap: usize) {
        const NAMES: [(&str, &str); 4] = [
            (
                "kateway_topic_published_messages_total",
                "Messages published, per topic.",
            ),
            (
                "kateway_topic_published_bytes_total",
                "Payload bytes published, per topic.",
            ),
            (
                "kateway_topic_delivered_messages_total",
                "Messages delivered to subscribers, per topic.",
            ),
            (
                "kateway_topic_delivered_bytes_total",
                "Payload bytes delivered to subscribers, per topic.",
            ),
        ];
        let mut rows: Vec<(String, [u64; 4])> = Vec::new();
        let mut other = [0u64; 4];
        for (i, (name, v)) in self.topics.iter().enumerate() {
            if i < cap {
                rows.push((labels(name), *v));
            } else {
                for (a, b) in other.iter_mut().zip(v) {
                    *a += b;
                }
            }
        }
        if self.topics.len() > cap {
            rows.push((
                "app=\"other\",topic=\"other\",ver=\"other\"".to_string(),
                other,
            ));
        }
        for (i, (name, help)) in NAMES.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, v) in &rows {
                let _ = writeln!(out, "{name}{{{l}}} {}", v[i]);
            }
        }
        let name = "kateway_group_lag_messages";
        let _ = writeln!(
            out,
            "# HELP {name} Messages of a topic a consumer group has not consumed (committed) yet, summed over partitions.\n# TYPE {name} gauge"
        );
        let mut other = None;
        for (i, ((topic, group), lag)) in self.lags.iter().enumerate() {
            if i < group_cap {
                let (sub, g) = group.split_once('.').unwrap_or(("", group));
                let _ = writeln!(
                    out,
                    "{name}{{{},subscriber=\"{sub}\",group=\"{g}\"}} {lag}",
                    labels(topic)
                );
            } else {
                *other.get_or_insert(0) += lag;
            }
        }
        if let Some(lag) = other {
            let _ = writeln!(
                out,
                "{name}{{app=\"other\",topic=\"other\",ver=\"other\",subscriber=\"other\",group=\"other\"}} {lag}"
            );
        }
        let name = "kateway_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Request latency, from complete request to response queued, per route and status.\n# TYPE {name} histogram"
        );
        for ((route, status), h) in &self.routes {
            h.render_series(out, name, &format!("route=\"{route}\",status=\"{status}\""));
        }
    }
}

/// `app="…",topic="…",ver="…"` of a topic's full name (`<app>.<topic>.<ver>`; names are
/// `[A-Za-z0-9_-]`, so nothing needs escaping).
fn labels(name: &str) -> String {
    let mut it = name.splitn(3, '.');
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(t), Some(v)) => format!("app=\"{a}\",topic=\"{t}\",ver=\"{v}\""),
        _ => format!("app=\"\",topic=\"{name}\",ver=\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_beyond_the_cap_are_summed_into_other() {
        let stats: Vec<(String, TopicStats)> = ["a.t1.v1", "a.t2.v1", "b.t3.v2"]
            .iter()
            .map(|n| (n.to_string(), TopicStats::default()))
            .collect();
        for (i, (_, s)) in stats.iter().enumerate() {
            s.published(i as u64 + 1, 10);
            s.delivered(1, 5);
        }
        let routes = Routes::default();
        routes.observe("publish", 201, std::time::Duration::from_micros(30));
        let lags: super::super::lag::Lags = [
            (("a.t1.v1".to_string(), "b.g1".to_string()), 7),
            (("a.t1.v1".to_string(), "b.g2".to_string()), 1),
            (("a.t2.v1".to_string(), "c.g".to_string()), 2),
        ]
        .into();
        let none = Default::default();
        let mut total = Labelled::of(stats.iter().map(|(n, s)| (n.as_str(), s)), &routes, &lags);
        total.add(&Labelled::of(
            stats.iter().map(|(n, s)| (n.as_str(), s)),
            &routes,
            &none,
        ));
        let mut out = String::new();
        total.render(&mut out, 2, 1);
        assert!(out.contains(
            "kateway_group_lag_messages{app=\"a\",topic=\"t1\",ver=\"v1\",subscriber=\"b\",group=\"g1\"} 7\n"
        ));
        assert!(out.contains(
            "kateway_group_lag_messages{app=\"other\",topic=\"other\",ver=\"other\",subscriber=\"other\",group=\"other\"} 3\n"
        ));
        assert!(out.contains(
            "kateway_topic_published_messages_total{app=\"a\",topic=\"t1\",ver=\"v1\"} 2\n"
        ));
        assert!(out.contains(
            "kateway_topic_published_messages_total{app=\"a\",topic=\"t2\",ver=\"v1\"} 4\n"
        ));
        assert!(out.contains(
            "kateway_topic_published_messages_total{app=\"other\",topic=\"other\",ver=\"other\"} 6\n"
        ));
        assert!(!out.contains("topic=\"t3\""));
        assert!(out.contains(
            "kateway_http_request_duration_seconds_count{route=\"publish\",status=\"201\"} 2\n"
        ));
    }

    #[test]
    fn idle_topics_have_no_series() {
        let s = TopicStats::default();
        let l = Labelled::of(
            [("a.t.v1", &s)].into_iter(),
            &Routes::default(),
            &Default::default(),
        );
        assert!(l.topics.is_empty());
    }
}
