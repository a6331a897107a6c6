use super::layers::MAX_FILE_BYTES;
use super::*;
use std::time::Duration;

#[test]
fn defaults_parse() {
    let c = Config::defaults();
    assert_eq!(c.server.listen, "127.0.0.1:9191");
    assert_eq!(c.limits.max_message_bytes.0, 512 * 1024);
    assert_eq!(c.store.fsync_interval.0, Duration::from_millis(50));
    assert_eq!(c.store.data_dir, PathBuf::from("./data"));
}

#[test]
fn time_limits_and_log_levels_that_would_break_serving_are_refused() {
    let load = |k: &str, v: &str| Config::load(None, vec![(k.to_string(), v.to_string())]);
    for k in [
        "KATEWAY_SERVER_IDLE_TIMEOUT",
        "KATEWAY_SERVER_REQUEST_TIMEOUT",
        "KATEWAY_SERVER_WRITE_TIMEOUT",
    ] {
        let e = load(k, "0s").unwrap_err();
        assert!(e.contains("out of range"), "{k}: {e}");
        assert!(load(k, "2s").is_ok(), "{k}");
    }
    assert!(load("KATEWAY_SERVER_DRAIN_GRACE", "1h")
        .unwrap_err()
        .contains("server.drain_grace"));
    assert!(load("KATEWAY_SERVER_DRAIN_GRACE", "30s").is_ok());
    for bad in ["", "garbage", "info,kateway=loud", "=debug", "a b=info"] {
        let e = load("KATEWAY_LOG_LEVEL", bad).unwrap_err();
        assert!(e.contains("log.level"), "{bad:?}: {e}");
    }
    for good in ["info", "WARN", "warn,kateway_shards::conn=trace", "off"] {
        assert!(load("KATEWAY_LOG_LEVEL", good).is_ok(), "{good:?}");
    }
}

#[test]
fn a_fifo_or_an_oversized_file_is_refused_without_waiting() {
    let dir = std::env::temp_dir().join(format!("kw-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.toml");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // With a blocking open this would wait for a writer forever.
    let e = Config::load(Some(&fifo), Vec::new()).unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
    let big = dir.join("big.toml");
    std::fs::write(&big, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
    let e = Config::load(Some(&big), Vec::new()).unwrap_err();
    assert!(e.contains("at most"), "{e}");
    let ok = dir.join("ok.toml");
    std::fs::write(&ok, "[server]\ncores = 2\n").unwrap();
    assert_eq!(Config::load(Some(&ok), Vec::new()).unwrap().server.cores, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn env_overrides_and_validation() {
    let env = vec![
        (
            "KATEWAY_SERVER_LISTEN".to_string(),
            "0.0.0.0:1234".to_string(),
        ),
        ("KATEWAY_SERVER_CORES".to_string(), "3".to_string()),
        (
            "KATEWAY_STORE_FSYNC_INTERVAL".to_string(),
            "5ms".to_string(),
        ),
        ("HOME".to_string(), "/x".to_string()),
    ];
    let c = Config::load(None, env).unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:1234");
    assert_eq!(c.server.cores, 3);
    assert_eq!(c.store.fsync_interval.0, Duration::from_millis(5));
    let bad = vec![("KATEWAY_SERVER_RING_ENTRIES".to_string(), "1".to_string())];
    let err = Config::load(None, bad).unwrap_err();
    assert!(err.contains("server.ring_entries"), "{err}");
    let unknown = vec![("KATEWAY_SERVER_NOPE".to_string(), "1".to_string())];
    assert!(Config::load(None, unknown)
        .unwrap_err()
        .contains("server.nope"));
}

#[test]
fn file_overrides() {
    let dir = std::env::temp_dir().join(format!("kwcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("k.toml");
    std::fs::write(&f, "[limits]\nmax_message_bytes = \"1KiB\"\n").unwrap();
    let c = Config::load(Some(&f), std::iter::empty()).unwrap();
    assert_eq!(c.limits.max_message_bytes.0, 1024);
    std::fs::write(&f, "[limits]\nmax_mesage_bytes = 1\n").unwrap();
    assert!(Config::load(Some(&f), std::iter::empty()).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
