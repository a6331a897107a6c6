//! nghttp2's `h2load` against the same server as `publish-h2`, as a second opinion on the HTTP/2
//! numbers: the same connections, streams, body and timing, pinned to the client CPU. Its
//! command line is printed, so it can be rerun by hand.

use crate::client::Outcome;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What to run `h2load` with.
pub struct H2load<'a> {
    pub addr: &'a str,
    pub tls: bool,
    pub cpu: usize,
    pub conns: usize,
    pub streams: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Path and query, e.g. `/v1/msgs/t/v1?ack=local`.
    pub path: &'a str,
    pub appid: &'a str,
    /// A file holding the request body (h2load POSTs it).
    pub body: &'a Path,
}

impl H2load<'_> {
    /// The command line: `taskset -c CPU h2load ...`.
    pub fn command(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        vec![
            "taskset".into(),
            "-c".into(),
            self.cpu.to_string(),
            "h2load".into(),
            "-t1".into(),
            format!("-c{}", self.conns),
            format!("-m{}", self.streams),
            format!("-D{}", self.duration.as_secs().max(1)),
            format!("--warm-up-time={}", self.warmup.as_secs()),
            "-d".into(),
            self.body.to_string_lossy().into_owned(),
            "-H".into(),
            format!("appid: {}", self.appid),
            format!("{scheme}://{}{}", self.addr, self.path),
        ]
    }

    /// Runs it and reads its summary: requests done, 2xx answers, errors and the time.
    pub fn run(&self) -> anyhow::Result<Outcome> {
        let cmd = self.command();
        eprintln!("    {}", shell_words(&cmd));
        let out = Command::new(&cmd[0]).args(&cmd[1..]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "h2load failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        parse(&text).ok_or_else(|| anyhow::anyhow!("unexpected h2load output:\n{text}"))
    }
}

/// Quotes the arguments that need it, for printing.
pub fn shell_words(cmd: &[String]) -> String {
    cmd.iter()
        .map(|a| {
            if a.contains([' ', '?', '&']) {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads `finished in 6.00s, 41432.80 req/s, ...`, `requests: N total, N started, N done, N succeeded, N failed,
/// N errored, N timeout` and `status codes: N 2xx, ...`.
fn parse(text: &str) -> Option<Outcome> {
    let line = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix));
    // "finished in" counts the warm-up too; the rate is over the main duration only.
    let rps: f64 = line("finished in ")?
        .split(", ")
        .nth(1)?
        .strip_suffix(" req/s")?
        .parse()
        .ok()?;
    let counts = |l: &str| -> Vec<u64> {
        l.split(',')
            .filter_map(|f| f.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let req = counts(line("requests:")?);
    let status = counts(line("status codes:")?);
    // `failed` counts answers that are not 2xx or 3xx too; `errored` only the others.
    let (done, errored) = (*req.get(2)?, *req.get(5)?);
    let ok = *status.first()?;
    let seconds = if rps > 0.0 { done as f64 / rps } else { 0.0 };
    Some(Outcome {
        requests: done,
        messages: ok,
        errors: errored,
        non_2xx: done.saturating_sub(ok),
        seconds,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_summary() {
        let text = "finished in 6.00s, 41432.80 req/s, 5.02MB/s\n\
            requests: 207164 total, 207228 started, 207164 done, 207160 succeeded, 4 failed, 0 errored, 0 timeout\n\
            status codes: 207160 2xx, 0 3xx, 4 4xx, 0 5xx\n";
        let o = super::parse(text).unwrap();
        assert_eq!(
            (o.requests, o.messages, o.errors, o.non_2xx),
            (207164, 207160, 0, 4)
        );
        assert!(
            (o.seconds - 5.0).abs() < 1e-3,
            "the main duration: {}",
            o.seconds
        );
    }
}
