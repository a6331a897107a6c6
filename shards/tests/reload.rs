//! Hot configuration reload, on both backends: `POST /v1/config/reload` and SIGHUP read the
//! configuration file again and put the settings that may change live in force on every core
//! (limits, timeouts, the log level); a file that changes a setting that cannot change live,
//! holds an invalid value, names an unknown key or does not parse is refused with 422 (42201)
//! naming the key, and changes nothing. Command-line flags keep winning over the file.

mod support;
use std::path::PathBuf;
use std::time::Duration;
use support::{Backend, Gateway};

on_both_backends!(
    a_reload_applies_live_settings_on_every_core,
    a_bad_file_changes_nothing,
    the_operator_reloads_with_authentication_on
);

/// A gateway started with `--config` on a file holding `text`.
fn start(b: Backend, text: &str) -> (Gateway, PathBuf, tempfile::TempDir) {
    start_with(b, text, false)
}

fn start_with(b: Backend, text: &str, auth: bool) -> (Gateway, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kateway.toml");
    std::fs::write(&path, text).unwrap();
    let mut g = Gateway::new_on(b, &[]);
    g.auth = auth;
    g.config = Some(path.clone());
    g.stderr_file = Some(dir.path().join("stderr"));
    g.spawn();
    (g, path, dir)
}

/// The statuses of 16 publishes of `n` bytes, each on a connection of its own (so that both
/// cores take some).
fn publishes(g: &Gateway, app: &str, n: usize) -> Vec<u16> {
    (0..16)
        .map(|_| {
            let mut c = g.connect();
            c.req("POST", "/v1/msgs/t/v1", &[("Appid", app)], &vec![b'x'; n])
                .status
        })
        .collect()
}

fn reload(g: &Gateway) -> support::Resp {
    g.req("POST", "/v1/config/reload", &[], b"")
}

fn a_reload_applies_live_settings_on_every_core(b: Backend) {
    let (g, path, dir) = start(
        b,
        "[limits]\nmax_message_bytes = \"1KiB\"\n[log]\nlevel = \"warn\"\n",
    );
    let app = g.app("app1");
    g.create_topic(&app, "t", 2);
    assert_eq!(publishes(&g, &app, 2000), [413; 16]);
    // Idle keep-alive connections stay open (120 s as shipped).
    let mut idle = g.connect();
    assert_eq!(idle.req("GET", "/alive", &[], b"").status, 200);
    assert!(!idle.is_closed(), "open before the reload");

    std::fs::write(
        &path,
        "[limits]\nmax_message_bytes = \"4KiB\"\n[server]\nidle_timeout = \"1s\"\n[log]\nlevel = \"info\"\n",
    )
    .unwrap();
    let r = reload(&g);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["changed"],
        serde_json::json!([
            "limits.max_message_bytes",
            "log.level",
            "server.idle_timeout"
        ])
    );
    assert_eq!(publishes(&g, &app, 2000), [201; 16]);
    // The connection opened before the reload waits under the new idle timeout from its next
    // request on.
    assert_eq!(idle.req("GET", "/alive", &[], b"").status, 200);
    assert!(idle.is_closed(), "closed after the new 1 s idle timeout");
    // The log filter changed: the reload's own info line is written, the start's was not.
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(!log.contains("kateway serving"), "{log}");

    // SIGHUP does the same.
    std::fs::write(
        &path,
        "[limits]\nmax_message_bytes = \"1KiB\"\n[server]\nidle_timeout = \"1s\"\n[log]\nlevel = \"info\"\n",
    )
    .unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &g.pid().to_string()])
        .status()
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        got = publishes(&g, &app, 2000);
        if got == [413; 16] {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, [413; 16], "SIGHUP put the 1 KiB limit back");
}

fn a_bad_file_changes_nothing(b: Backend) {
    let (g, path, _dir) = start(b, "[limits]\nmax_message_bytes = \"1KiB\"\n");
    let app = g.app("app1");
    g.create_topic(&app, "t", 2);
    let refused = |text: &str, names: &str| {
        std::fs::write(&path, text).unwrap();
        let r = reload(&g);
        r.assert_error(422);
        assert_eq!(r.json()["code"], 42201, "{}", r.text());
        let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
        assert!(msg.contains(names), "{names}: {msg}");
        // Nothing changed: the 4 KiB limit each of these files also asks for is not in force.
        assert_eq!(publishes(&g, &app, 2000), [413; 16], "{text}");
        msg
    };
    // A setting that cannot change live (with a live one beside it: neither is applied).
    let msg = refused(
        "[limits]\nmax_message_bytes = \"4KiB\"\n[store]\nsegment_bytes = \"8MiB\"\n",
        "store.segment_bytes",
    );
    assert!(
        msg.contains("cannot change while the gateway runs"),
        "{msg}"
    );
    assert!(!msg.contains("limits."), "{msg}");
    // An invalid value.
    refused(
        "[limits]\nmax_message_bytes = \"4KiB\"\nmax_batch_messages = 0\n",
        "limits.max_batch_messages",
    );
    // An unknown key.
    refused(
        "[limits]\nmax_message_bytes = \"4KiB\"\nmax_mesage_bytes = 1\n",
        "max_mesage_bytes",
    );
    // Not TOML.
    refused("[limits\nmax_message_bytes = \"4KiB\"\n", "kateway.toml");
    // A file that cannot be read.
    std::fs::remove_file(&path).unwrap();
    let r = reload(&g);
    r.assert_error(422);
    assert!(r.text().contains("cannot read"), "{}", r.text());
    // The command line wins over the file: another address in the file changes nothing.
    std::fs::write(
        &path,
        "[limits]\nmax_message_bytes = \"1KiB\"\n[server]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let r = reload(&g);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], serde_json::json!([]));
    // After all that, a good file still applies.
    std::fs::write(&path, "[limits]\nmax_message_bytes = \"4KiB\"\n").unwrap();
    assert_eq!(reload(&g).status, 200);
    assert_eq!(publishes(&g, &app, 2000), [201; 16]);
}

/// With authentication on, the operator reloads on the operator listener (the walk over every
/// route in `tenancy.rs` shows that everyone else is refused).
fn the_operator_reloads_with_authentication_on(b: Backend) {
    let (g, path, _dir) = start_with(b, "[limits]\nmax_message_bytes = \"1KiB\"\n", true);
    std::fs::write(&path, "[limits]\nmax_message_bytes = \"4KiB\"\n").unwrap();
    let r = g.op("POST", "/v1/config/reload", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["changed"],
        serde_json::json!(["limits.max_message_bytes"])
    );
}
