//! Query strings: find a parameter, percent-decode it.

use std::borrow::Cow;

/// A value whose percent-encoding is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEncoding;

/// The raw (still percent-encoded) value of the first `name` parameter; `Some("")` for a bare
/// `name` or `name=`.
pub fn raw<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The percent-decoded value of `name`; `Err` if the encoding is broken.
pub fn get<'a>(query: &'a str, name: &str) -> Result<Option<Cow<'a, [u8]>>, BadEncoding> {
    match raw(query, name) {
        None => Ok(None),
        Some(v) => decode(v).map(Some),
    }
}

/// Percent-decodes `s` (and `+` as space, as HTML forms encode it).
pub fn decode(s: &str) -> Result<Cow<'_, [u8]>, BadEncoding> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s.as_bytes()));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(BadEncoding)?;
                let h = std::str::from_utf8(hex).map_err(|_| BadEncoding)?;
                out.push(u8::from_str_radix(h, 16).map_err(|_| BadEncoding)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_decodes() {
        let q = "group=g1&key=a%2Fb+c&batch=10&flag";
        assert_eq!(raw(q, "group"), Some("g1"));
        assert_eq!(raw(q, "flag"), Some(""));
        assert_eq!(raw(q, "nope"), None);
        assert_eq!(get(q, "key").unwrap().unwrap().as_ref(), b"a/b c");
        assert!(get("key=%zz", "key").is_err());
        assert!(get("key=%4", "key").is_err());
    }
}
