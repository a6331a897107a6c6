//! The monitoring kit in `docs/monitoring/`: the Prometheus alert rules pass `promtool check`
//! and their unit tests, the Grafana dashboard's queries are valid PromQL, and every metric
//! either names exists in a live gateway's `/metrics` on both backends (so a renamed metric
//! breaks this test, not a dashboard in production).

mod support;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{Backend, Gateway};

on_both_backends!(every_metric_the_kit_names_is_exported);

fn kit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring")
}

/// Runs promtool (Debian's `prometheus` package, which `scripts/deps` installs).
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (scripts/deps installs the prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The dashboard's queries, with Grafana's variables given values Prometheus accepts.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(kit().join("grafana-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "the dashboard has its panels");
    let mut out = Vec::new();
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            let e = t["expr"].as_str().expect("expr");
            out.push(
                e.replace("$__rate_interval", "5m")
                    .replace("$instance", ".*"),
            );
        }
    }
    out
}

fn alert_queries() -> String {
    std::fs::read_to_string(kit().join("alerts.yml")).unwrap()
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let check = promtool(&kit(), &["check", "rules", "alerts.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let test = promtool(&kit(), &["test", "rules", "alerts.test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries().iter().enumerate() {
        let q = serde_json::to_string(q).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {q}\n"
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    promtool(dir.path(), &["check", "rules", "dashboard.yml"]);
}

/// `kateway_…` names in `text`, histogram series named by their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("kateway_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        out.insert(family);
    }
    out
}

fn every_metric_the_kit_names_is_exported(b: Backend) {
    let mut named = metric_names(&alert_queries());
    named.extend(metric_names(&dashboard_queries().join("\n")));
    assert!(named.len() >= 15, "{named:?}");
    let g = Gateway::on(b, &[]);
    let scrape = g.req("GET", "/metrics", &[], b"").text();
    let exported: BTreeSet<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let missing: Vec<_> = named
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
}
