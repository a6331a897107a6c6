//! The OpenAPI document against the real gateway: `/openapi.json` serves `docs/openapi.json`,
//! and Schemathesis (`scripts/schemathesis`, an independent fuzzer) finds no 5xx, no answer the
//! document does not describe and no crash, on both backends, with authentication off (every
//! route but the Tenancy API open) and on the operator listener with the operator key.

mod support;
use std::path::Path;
use std::process::Command;
use support::{Backend, Gateway};

on_both_backends!(
    schemathesis_finds_nothing,
    schemathesis_finds_nothing_on_the_operator_api
);

/// The delay clock hook on, webhooks to loopback allowed; a small partition budget (growing a
/// topic to 10 000 partitions is allowed by the API, and takes the embedded store longer than
/// the fuzzer's request timeout); failed authentications not limited (the fuzzer sends bad
/// keys on purpose, and a limited address would answer nothing but 429); a short default
/// subscribe wait.
fn env() -> [(&'static str, &'static str); 6] {
    [
        ("KATEWAY_DELAY_TEST_CLOCK", "true"),
        ("KATEWAY_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "true"),
        ("KATEWAY_STORE_MAX_PARTITIONS", "256"),
        ("KATEWAY_AUTH_FAILED_BURST", "1000000"),
        ("KATEWAY_AUTH_FAILED_PER_SECOND", "1000000"),
        // A fuzzed subscribe without `wait` on a drained group long-polls for the default
        // wait: within Schemathesis's request timeout (10 s), not the shipped 30 s.
        ("KATEWAY_SUBSCRIBE_DEFAULT_WAIT", "2s"),
    ]
}

/// Runs the fuzzer against `base` (with `auth` as the Authorization header, if any).
fn fuzz(base: &str, auth: Option<&str>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(root.join("scripts/schemathesis"));
    cmd.arg(base).env("SCHEMATHESIS_MAX_TIME", "90");
    if let Some(a) = auth {
        cmd.env("SCHEMATHESIS_AUTH", a);
    }
    let out = cmd.output().expect("scripts/schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis against {base}:\n{text}");
    // It ran the checks (a run that tested nothing would also exit 0).
    assert!(text.contains("passed"), "{text}");
}

#[test]
fn the_document_is_served_as_it_is_in_docs() {
    let g = Gateway::start();
    let r = g.req("GET", "/openapi.json", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, kateway_proto::openapi::DOCUMENT.as_bytes());
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(doc["paths"]["/openapi.json"]["get"].is_object());
}

fn schemathesis_finds_nothing(b: Backend) {
    let g = Gateway::on(b, &env());
    fuzz(&format!("http://{}", g.addr), None);
    // The gateway is still there and answers.
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
}

fn schemathesis_finds_nothing_on_the_operator_api(b: Backend) {
    let g = Gateway::secured(b, &env());
    let key = format!("Bearer {}", g.operator_key());
    fuzz(&format!("http://{}", g.op_addr), Some(&key));
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
}
