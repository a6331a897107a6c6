//! Named failpoints, in the manner of raft-engine's: every file operation of the log engine (and
//! the fsyncs the shards issue for it) passes a named point that a test can make fail. Points are
//! configured with a spec such as
//!
//! ```text
//! log::write=200*off->3*enospc->off;log::fsync=eio
//! ```
//!
//! One `name=actions` per `;`; actions run in order, each `N*` times (forever without a count):
//! `off` (pass), `eio`, `enospc` (fail with that OS error), `short(N)` (write only the first N
//! bytes, then fail with ENOSPC), `torn(N)` (write the first N bytes, then abort the process, as
//! a power cut in the middle of a write), `panic`, `hang` (an fsync issued through io_uring never
//! completes, as on a disk that stopped answering; a blocking fsync passes, and other operations
//! fail as with `eio`), `delay(N)` (an fsync issued through io_uring completes after N ms, as on
//! a slow disk; otherwise as `hang`). The gateway reads a spec from the
//! `KATEWAY_FAILPOINTS` environment variable at start (tests only); nothing is configured
//! otherwise, and an unconfigured point costs one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What a failpoint makes the operation do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail with this OS error number, writing nothing.
    Errno(i32),
    /// Write only this many bytes, then fail with ENOSPC.
    Short(usize),
    /// Write this many bytes, then abort the process.
    Torn(usize),
    /// Panic.
    Panic,
    /// Never complete (the gateway's asynchronous fsyncs; a blocking fsync passes, anything
    /// else fails with EIO).
    Hang,
    /// Complete after this many milliseconds (the gateway's asynchronous fsyncs; otherwise as
    /// [`Action::Hang`]).
    Delay(u64),
}

impl Action {
    /// The I/O error this action reports.
    pub fn error(self) -> std::io::Error {
        match self {
            Action::Errno(e) => std::io::Error::from_raw_os_error(e),
            Action::Short(_) | Action::Torn(_) => std::io::Error::from_raw_os_error(ENOSPC),
            Action::Panic => std::io::Error::other("failpoint panic"),
            Action::Hang | Action::Delay(_) => std::io::Error::from_raw_os_error(EIO),
        }
    }
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

#[derive(Debug, Clone)]
struct Step {
    times: Option<u64>,
    action: Option<Action>,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static POINTS: Mutex<Option<HashMap<String, Vec<Step>>>> = Mutex::new(None);

/// Evaluates failpoint `name`: `None` means the operation proceeds normally.
#[inline]
pub fn eval(name: &str) -> Option<Action> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    eval_slow(name)
}

#[cold]
fn eval_slow(name: &str) -> Option<Action> {
    #[cfg(test)]
    if !test_owner::is_current() {
        return None;
    }
    let mut guard = POINTS.lock().unwrap_or_else(|e| e.into_inner());
    let steps = guard.as_mut()?.get_mut(name)?;
    let step = steps.first_mut()?;
    let action = step.action;
    if let Some(n) = step.times.as_mut() {
        *n -= 1;
        if *n == 0 {
            steps.remove(0);
        }
    }
    if action == Some(Action::Panic) {
        drop(guard);
        panic!("failpoint {name}");
    }
    action
}

/// Configures points from a spec (see the module docs), replacing what was configured.
pub fn configure(spec: &str) -> Result<(), String> {
    let mut map = HashMap::new();
    for part in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, actions) = part
            .split_once('=')
            .ok_or_else(|| format!("failpoint {part:?}: expected name=actions"))?;
        map.insert(name.trim().to_owned(), parse_steps(actions)?);
    }
    let any = !map.is_empty();
    #[cfg(test)]
    test_owner::set_current();
    *POINTS.lock().unwrap_or_else(|e| e.into_inner()) = Some(map);
    ENABLED.store(any, Ordering::Relaxed);
    Ok(())
}

/// Sets one point's actions (same syntax as the right-hand side of a spec).
pub fn set(name: &str, actions: &str) -> Result<(), String> {
    let steps = parse_steps(actions)?;
    #[cfg(test)]
    test_owner::set_current();
    let mut guard = POINTS.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .get_or_insert_with(HashMap::new)
        .insert(name.to_owned(), steps);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Removes every configured point.
pub fn clear() {
    *POINTS.lock().unwrap_or_else(|e| e.into_inner()) = None;
    ENABLED.store(false, Ordering::Relaxed);
}

fn parse_steps(s: &str) -> Result<Vec<Step>, String> {
    s.split("->").map(|t| parse_step(t.trim())).collect()
}

fn parse_step(s: &str) -> Result<Step, String> {
    let (times, act) = match s.split_once('*') {
        Some((n, a)) => (
            Some(
                n.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("failpoint step {s:?}: bad count"))?,
            ),
            a.trim(),
        ),
        None => (None, s),
    };
    let arg = |a: &str| -> Result<usize, String> {
        a.strip_suffix(')')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("failpoint step {s:?}: bad argument"))
    };
    let action = match act {
        "off" => None,
        "eio" => Some(Action::Errno(EIO)),
        "enospc" => Some(Action::Errno(ENOSPC)),
        "panic" => Some(Action::Panic),
        "hang" => Some(Action::Hang),
        a if a.starts_with("short(") => Some(Action::Short(arg(&a[6..])?)),
        a if a.starts_with("torn(") => Some(Action::Torn(arg(&a[5..])?)),
        a if a.starts_with("delay(") => Some(Action::Delay(arg(&a[6..])? as u64)),
        _ => return Err(format!("failpoint step {s:?}: unknown action")),
    };
    Ok(Step { times, action })
}

/// In this crate's unit tests, points fire only on the thread that configured them: the tests
/// run in parallel, and one test's failpoint must not hit another test's files.
#[cfg(test)]
mod test_owner {
    use std::sync::Mutex;
    use std::thread::ThreadId;

    static OWNER: Mutex<Option<ThreadId>> = Mutex::new(None);

    pub fn set_current() {
        *OWNER.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current().id());
    }

    pub fn is_current() -> bool {
        *OWNER.lock().unwrap_or_else(|e| e.into_inner()) == Some(std::thread::current().id())
    }
}

/// Serialises the tests of a process that configure failpoints (the registry is global).
pub fn test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    clear();
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_and_counts() {
        let _g = test_lock();
        assert_eq!(eval("x"), None);
        configure("x=2*off->1*enospc->short(7)->off").unwrap();
        assert_eq!(eval("x"), None);
        assert_eq!(eval("x"), None);
        assert_eq!(eval("x"), Some(Action::Errno(ENOSPC)));
        assert_eq!(eval("x"), Some(Action::Short(7)));
        assert_eq!(eval("x"), Some(Action::Short(7)), "no count: forever");
        assert_eq!(eval("y"), None);
        set("x", "off").unwrap();
        assert_eq!(eval("x"), None);
        set("x", "1*delay(250)->hang").unwrap();
        assert_eq!(eval("x"), Some(Action::Delay(250)));
        assert_eq!(eval("x"), Some(Action::Hang));
        assert!(configure("x=bogus").is_err());
        assert!(configure("x=delay(x)").is_err());
        assert!(configure("x=0*eio").is_err());
        assert!(configure("noequals").is_err());
        clear();
        assert_eq!(eval("x"), None);
    }
}
