//! Clients no one on the project wrote, run against a test gateway: the Python scripts in
//! `tests/clients` (hyper-h2, websockets, Selenium with Chromium) from the virtualenv that
//! `scripts/deps` makes, curl, h2load, h2spec; and test certificates made with rcgen.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn checked(what: &str, out: std::io::Result<Output>) -> (bool, String) {
    let out = out.unwrap_or_else(|e| panic!("cannot run {what} ({e}): run scripts/deps"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `tests/clients/<script>` with the test virtualenv; (success, stdout and stderr).
pub fn python(script: &str, args: &[&str]) -> (bool, String) {
    let py = root().join(".venv-test/bin/python");
    assert!(py.exists(), "{} is missing: run scripts/deps", py.display());
    let out = Command::new(py)
        .arg(root().join("tests/clients").join(script))
        .args(args)
        .output();
    checked(script, out)
}

/// Runs `tests/clients/ws_pubsub.py` (Python's websockets) against the gateway at `base`
/// (`ws://` or `wss://`) for `app`'s topic `topic`, with `extra` options.
pub fn ws_pubsub(base: &str, app: &str, topic: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--base", base, "--app", app, "--topic", topic];
    args.extend_from_slice(extra);
    python("ws_pubsub.py", &args)
}

/// Runs a program; (success, stdout and stderr).
pub fn run(program: &str, args: &[&str]) -> (bool, String) {
    checked(program, Command::new(program).args(args).output())
}

/// curl's body, then a last line `<http_version> <status>`.
pub fn curl(args: &[&str]) -> (String, String, u16) {
    let mut all = vec![
        "-s",
        "-S",
        "--max-time",
        "20",
        "-w",
        "\n%{http_version} %{http_code}",
    ];
    all.extend_from_slice(args);
    let (_, out) = run("curl", &all);
    let (body, last) = out.rsplit_once('\n').unwrap_or(("", &out));
    let mut it = last.split_whitespace();
    let version = it.next().unwrap_or("").to_string();
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (body.to_string(), version, status)
}

/// A self-signed certificate for `localhost` and 127.0.0.1, with a common name, written as PEM
/// files into `dir`: (cert, key).
pub fn cert(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let c = params.self_signed(&key).unwrap();
    let (cp, kp) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    std::fs::write(&cp, c.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    (cp, kp)
}
