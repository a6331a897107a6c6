//! The layers of settings merged into one TOML tree: the shipped defaults, a file, the
//! `KATEWAY_*` environment.

use super::{DEFAULT_TOML, NOT_SETTINGS, SECTIONS};
use std::path::Path;
use toml::Value;

/// The most a configuration file may hold.
pub(super) const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads a configuration file: a regular file of at most [`MAX_FILE_BYTES`]. It is opened
/// without blocking, so a FIFO or a device named by mistake is refused instead of holding the
/// reader (a reload would wait for a writer forever).
fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "{} bytes; a configuration file holds at most {MAX_FILE_BYTES}",
            meta.len()
        )));
    }
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other("grew past the size limit while read"));
    }
    Ok(text)
}

/// The shipped defaults, overridden by `file` (if any), overridden by `env` pairs named
/// `KATEWAY_<SECTION>_<KEY>`: the settings as one TOML tree, not validated yet.
pub fn tree(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Value, String> {
    let mut base: Value = toml::from_str(DEFAULT_TOML).map_err(|e| e.to_string())?;
    if let Some(path) = file {
        let text = read_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let user: Value = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        merge(&mut base, user);
    }
    for (k, v) in env {
        if let Some(rest) = k.strip_prefix("KATEWAY_") {
            if NOT_SETTINGS.contains(&rest) {
                continue;
            }
            apply_env(&mut base, rest, &v)?;
        }
    }
    Ok(base)
}

pub(crate) fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn apply_env(base: &mut Value, rest: &str, raw: &str) -> Result<(), String> {
    let lower = rest.to_ascii_lowercase();
    let Some(section) = SECTIONS
        .iter()
        .find(|s| lower.starts_with(&format!("{s}_")))
    else {
        return Err(format!("unknown environment override KATEWAY_{rest}"));
    };
    let key = &lower[section.len() + 1..];
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()));
    let table = base
        .get_mut(*section)
        .and_then(Value::as_table_mut)
        .ok_or_else(|| format!("missing section {section}"))?;
    if !table.contains_key(key) {
        return Err(format!(
            "unknown setting {section}.{key} (from KATEWAY_{rest})"
        ));
    }
    table.insert(key.to_owned(), value);
    Ok(())
}
