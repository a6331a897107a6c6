//! Query strings: find a parameter, percent-decode it.

use std::borrow::Cow;

/// A value whose percent-encoding is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEncoding;

/// The raw (still percent-encoded) value of the first `name` parameter; `Some("")` for a bare
/// `name` or `name=`.
pub fn raw<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    // Byte-wise: this runs several times per request on the hot path.
    let q = query.as_bytes();
    let n = name.as_bytes();
    let mut start = 0;
    while start <= q.len() {
        let end = q[start..]
            .iter()
            .position(|&b| b == b'&')
            .map_or(q.len(), |i| start + i);
        let pair = &q[start..end];
        if pair.len() >= n.len() && &pair[..n.len()] == n {
            if pair.len() == n.len() {
                return Some("");
            }
            if pair[n.len()] == b'=' {
                // Both ends are at ASCII bytes ('=' and '&' or the end), so this is a char boundary.
                return Some(&query[start + n.len() + 1..end]);
            }
        }
        start = end + 1;
    }
    None
}

/// The percent-decoded value of `name`; `Err` if the encoding is broken.
pub fn get<'a>(query: &'a str, name: &str) -> Result<Option<Cow<'a, [u8]>>, BadEncoding> {
    match raw(query, name) {
        None => Ok(None),
        Some(v) => decode(v).map(Some),
    }
}

/// Most parameters a query may have (the API uses at most nine).
pub const MAX_PARAMS: usize = 32;

/// What makes a query ambiguous.
#[derive(Debug, PartialEq, Eq)]
pub enum Ambiguous<'a> {
    /// This parameter is given more than once (which one would count?).
    Repeated(&'a str),
    /// More than [`MAX_PARAMS`] parameters.
    TooMany,
}

/// Whether a query is ambiguous: a repeated parameter is refused rather than its first value
/// taken.
pub fn ambiguous(query: &str) -> Option<Ambiguous<'_>> {
    // Most requests have one parameter: nothing to compare.
    if !query.as_bytes().contains(&b'&') {
        return None;
    }
    if query.bytes().filter(|&b| b == b'&').count() >= MAX_PARAMS {
        return Some(Ambiguous::TooMany);
    }
    let name = |pair: &'_ str| pair.split_once('=').map_or(pair, |(n, _)| n).len();
    let mut rest = query;
    while let Some((pair, after)) = rest.split_once('&') {
        let n = &pair[..name(pair)];
        if !n.is_empty() && after.split('&').any(|p| &p[..name(p)] == n) {
            return Some(Ambiguous::Repeated(n));
        }
        rest = after;
    }
    None
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
        assert_eq!(raw(q, "grou"), None, "a prefix of a name is not the name");
        assert_eq!(raw("", "a"), None);
        assert_eq!(raw("a=1&b=2&a=3", "a"), Some("1"));
        assert_eq!(raw("x=é&k=ü", "k"), Some("ü"));
        assert_eq!(raw("&&k=v&", "k"), Some("v"));
        assert_eq!(get(q, "key").unwrap().unwrap().as_ref(), b"a/b c");
        assert!(get("key=%zz", "key").is_err());
        assert!(get("key=%4", "key").is_err());
    }
}
