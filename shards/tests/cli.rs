//! The admin CLI (`kateway status|topics|groups|tail|keys|reload`) against a real gateway, on
//! both backends: it creates, grows, shows and deletes a topic, follows its messages, shows the
//! group it read with, redrives dead letters in steps, manages an app's keys and reloads the
//! configuration with authentication on, and says why a call failed (exit status 1, the gateway's message on stderr).

mod support;
use std::process::Command;
use support::{Backend, Gateway};

on_both_backends!(
    the_cli_administers_and_follows_a_topic,
    the_cli_manages_keys_with_authentication_on,
    the_cli_redrives_dead_letters_with_progress
);

/// Runs `kateway ARGS` against `addr`; (success, stdout, stderr).
fn kw(addr: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kateway"))
        .args(args)
        .env("KATEWAY_ADDR", addr)
        .env_remove("KATEWAY_KEY")
        .env_remove("KATEWAY_APPID")
        .envs(env.iter().copied())
        .output()
        .expect("run kateway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn the_cli_administers_and_follows_a_topic(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app, reader) = (g.app("app1"), g.app("app2"));
    let topic = format!("{app}/t/v1");
    let owner = [("KATEWAY_APPID", app.as_str())];
    let (ok, out, err) = kw(
        &g.addr,
        &["topics", "create", &topic, "--partitions", "2"],
        &owner,
    );
    assert!(ok, "{err}");
    assert_eq!(out, format!("created {topic}: 2 partitions\n"));
    for (i, v) in ["one", "two", "three"].iter().enumerate() {
        let key = format!("k{i}");
        let r = g.req(
            "POST",
            &format!("/v1/msgs/t/v1?key={key}"),
            &[("Appid", app.as_str())],
            v.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Follow from the oldest: every message, with its partition, offset and key.
    let (ok, out, err) = kw(
        &g.addr,
        &[
            "tail", &topic, "--from", "oldest", "--count", "3", "--group", "cli",
        ],
        &[("KATEWAY_APPID", reader.as_str())],
    );
    assert!(ok, "{err}");
    let mut seen: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let f: Vec<_> = l.split("  ").collect();
            assert_eq!(f.len(), 3, "{l}");
            assert!(f[0].split('/').all(|n| n.parse::<u64>().is_ok()), "{l}");
            (f[1].to_owned(), f[2].to_owned())
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("k0", "one"), ("k1", "two"), ("k2", "three")].map(|(k, v)| (k.into(), v.into()))
    );
    // The group it read with, seen by the topic's owner, one row per partition.
    let (ok, out, err) = kw(&g.addr, &["groups", &topic], &owner);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("APP  ") && out.contains("GROUP") && out.contains("LAG"),
        "{out}"
    );
    // (Kafka lists the partitions a group committed on; the embedded store every partition.)
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.contains(" cli "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(!rows.is_empty(), "{out}");
    assert!(rows.iter().all(|r| r[0] == reader && r[5] == "0"), "{out}");
    let committed: u64 = rows.iter().map(|r| r[3].parse::<u64>().unwrap_or(0)).sum();
    assert_eq!(committed, 3, "{out}");
    // Partitions: the newest offsets add up to the three messages.
    let (ok, out, err) = kw(&g.addr, &["topics", "show", &topic], &owner);
    assert!(ok, "{err}");
    let newest: u64 = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(newest, 3, "{out}");
    let (ok, out, err) = kw(
        &g.addr,
        &["topics", "grow", &topic, "--partitions", "3"],
        &owner,
    );
    assert!(ok, "{err}");
    assert_eq!(out, format!("{topic}: 3 partitions\n"));
    // Status (open with authentication off): the backend in a table.
    let (ok, out, err) = kw(&g.addr, &["status"], &[]);
    assert!(ok, "{err}");
    let backend = if b == Backend::Kafka {
        "kafka"
    } else {
        "embedded"
    };
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["backend", backend]),
        "{out}"
    );
    let (ok, out, err) = kw(&g.addr, &["topics", "delete", &topic], &owner);
    assert!(ok, "{err}");
    assert_eq!(out, format!("deleted {topic}\n"));
    // A failure: exit status 1 and the gateway's answer on stderr.
    let (ok, out, err) = kw(&g.addr, &["topics", "show", &topic], &owner);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.starts_with("kateway: 404: "), "{err}");
    let (ok, _, err) = kw(&g.addr, &["topics", "show", "no-version"], &owner);
    assert!(!ok && err.contains("APP/TOPIC/VER"), "{err}");
    let (ok, _, err) = kw("127.0.0.1:1", &["status"], &[]);
    assert!(!ok && err.contains("cannot reach the gateway"), "{err}");
}

fn the_cli_manages_keys_with_authentication_on(b: Backend) {
    let g = Gateway::secured(b, &[]);
    let app = g.app("app1");
    let keys = g.make_app(&app);
    let op = g.operator_key();
    let as_op = [("KATEWAY_KEY", op.as_str())];
    let (ok, out, err) = kw(&g.op_addr, &["keys", "create", &app, "publish"], &as_op);
    assert!(ok, "{err}");
    let key = out.lines().next().unwrap().to_owned();
    assert!(key.starts_with("kwp_"), "{out}");
    // The new key works.
    let r = g.req_as(
        &keys.admin,
        "POST",
        &format!("/v1/topics/{app}/t/v1?partitions=1"),
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = g.req_as(&key, "POST", "/v1/msgs/t/v1", b"x");
    assert_eq!(r.status, 201, "{}", r.text());
    let keyid = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_owned();
    let (ok, out, err) = kw(&g.op_addr, &["keys", "list", &app], &as_op);
    assert!(ok, "{err}");
    assert!(out.starts_with("KEYID"), "{out}");
    // The three keys the app was made with, and this one.
    assert_eq!(out.lines().count(), 5, "{out}");
    let row = out.lines().find(|l| l.starts_with(&keyid)).expect("listed");
    assert_eq!(row.split_whitespace().nth(2), Some("false"), "{row}");
    let (ok, out, err) = kw(&g.op_addr, &["keys", "revoke", &app, &keyid], &as_op);
    assert!(ok, "{err}");
    assert_eq!(out, format!("revoked {keyid}\n"));
    let r = g.req_as(&key, "POST", "/v1/msgs/t/v1", b"x");
    assert_eq!(r.status, 401, "{}", r.text());
    let (_, out, _) = kw(&g.op_addr, &["keys", "list", &app], &as_op);
    let row = out.lines().find(|l| l.starts_with(&keyid)).expect("listed");
    assert_eq!(row.split_whitespace().nth(2), Some("true"), "{row}");
    let (ok, out, err) = kw(&g.op_addr, &["reload"], &as_op);
    assert!(ok, "{err}");
    assert_eq!(out, "reloaded: nothing changed\n");
    // Without a key: refused, and said so.
    let (ok, _, err) = kw(&g.op_addr, &["status"], &[]);
    assert!(!ok && err.starts_with("kateway: 401: "), "{err}");
}

/// 150 dead letters redriven in steps of 100, with progress on stderr.
fn the_cli_redrives_dead_letters_with_progress(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    for i in 0..150 {
        let r = g.publish(&app1, "t", "", format!("m{i}").as_bytes());
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let mut c = g.connect();
    let mut receipts = Vec::new();
    while receipts.len() < 150 {
        let r = c.req(
            "GET",
            &format!("/v1/msgs/{app1}/t/v1?group=g&ack=lease&batch=100&wait=5s"),
            &[("Appid", app2.as_str()), ("Accept", "application/x-ndjson")],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        for l in r.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            receipts.push(v["receipt"].as_str().unwrap().to_owned());
        }
    }
    let r = c.req(
        "POST",
        &format!("/v1/queue/{app1}/t/v1/g/bury"),
        &[("Appid", app2.as_str())],
        serde_json::json!({ "receipts": receipts })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let waiting = |c: &mut support::Conn| {
        let r = c.req(
            "GET",
            &format!("/v1/dlq/{app2}/g"),
            &[("Appid", app2.as_str())],
            b"",
        );
        r.json()["messages"].as_u64().unwrap()
    };
    assert_eq!(waiting(&mut c), 150);
    let (ok, out, err) = kw(
        &g.addr,
        &["redrive", &app2, "g"],
        &[("KATEWAY_APPID", app2.as_str())],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "redriven 150 of 150 waiting\n");
    assert!(
        err.contains("redriven 100/150") && err.contains("redriven 150/150"),
        "{err:?}"
    );
    assert_eq!(waiting(&mut c), 0);
    // Published again: the topic holds each message twice now.
    let r = g.req(
        "GET",
        &format!("/v1/partitions/{app1}/t/v1"),
        &[("Appid", app1.as_str())],
        b"",
    );
    assert_eq!(r.json()["offsets"][0]["newest"], 300, "{}", r.text());
}
