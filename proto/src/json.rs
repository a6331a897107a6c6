//! Minimal JSON string escaping for hand-written responses (RFC 8259 §7).

use bytes::{BufMut, BytesMut};

/// Appends `s` as a quoted, escaped JSON string.
pub fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.put_slice(&bytes[start..i]);
        match esc {
            Some(e) => out.put_slice(e),
            None => out.put_slice(format!("\\u{:04x}", b).as_bytes()),
        }
        start = i + 1;
    }
    out.put_slice(&bytes[start..]);
    out.put_u8(b'"');
}

/// `{"errmsg": msg, "code": code}`: the error body of every failed request.
pub fn error_body(msg: &str, code: u32) -> BytesMut {
    let mut out = BytesMut::with_capacity(msg.len() + 32);
    out.put_slice(b"{\"errmsg\":");
    put_str(&mut out, msg);
    out.put_slice(b",\"code\":");
    super::http1::encode::put_u64(&mut out, code.into());
    out.put_u8(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut out = BytesMut::new();
        put_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(&out[..], "\"a\\\"b\\\\c\\nd\\u0001é\"".as_bytes());
        assert_eq!(
            &error_body("x", 40400)[..],
            b"{\"errmsg\":\"x\",\"code\":40400}"
        );
    }
}
