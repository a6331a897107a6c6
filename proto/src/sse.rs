//! Server-Sent Events: the `text/event-stream` framing of delivered messages. Each message is
//! one event, `id: <partition>:<offset>`, type `message`, and as data the same JSON object a
//! JSON-lines subscribe carries (payload in base64). An idle stream gets a comment line as a
//! heartbeat. A client that reconnects sends the last id it saw as `Last-Event-ID`, which
//! [`parse_id`] reads back.

use crate::reply::RecordFormat;
use bytes::{BufMut, BytesMut};
use kateway_core::Delivered;

/// The media type of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// What a stream starts with: the reconnection delay browsers should use, in milliseconds.
pub const PREAMBLE: &[u8] = b"retry: 1000\n\n";

/// A comment that keeps proxies from closing an idle stream.
pub const HEARTBEAT: &[u8] = b": hb\n\n";

/// Appends one message as an event.
pub fn put_event(out: &mut BytesMut, m: &Delivered) {
    use crate::http1::encode::put_u64;
    out.put_slice(b"id: ");
    put_u64(out, m.partition.into());
    out.put_u8(b':');
    put_u64(out, m.offset);
    out.put_slice(b"\nevent: message\ndata: ");
    // A JSON line without its newline: the event's one data line.
    RecordFormat::NdJson.put(out, m);
    out.truncate(out.len() - 1);
    out.put_slice(b"\n\n");
}

/// Appends an error event (`event: error`, data `{"errmsg","code"}`); the stream ends after it.
pub fn put_error(out: &mut BytesMut, errmsg: &str, code: u32) {
    out.put_slice(b"event: error\ndata: ");
    out.put_slice(&crate::json::error_body(errmsg, code));
    out.put_slice(b"\n\n");
}

/// Reads an event id back: `partition:offset`.
pub fn parse_id(id: &[u8]) -> Option<(u32, u64)> {
    let s = std::str::from_utf8(id).ok()?.trim();
    let (p, o) = s.split_once(':')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(p) || !digits(o) {
        return None;
    }
    Some((p.parse().ok()?, o.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn events_carry_their_position_and_read_back() {
        let m = Delivered {
            partition: 3,
            offset: 17,
            timestamp: 5,
            key: Bytes::from_static(b"k"),
            tags: Bytes::new(),
            value: Bytes::from_static(b"hi"),
            leased: None,
        };
        let mut out = BytesMut::new();
        put_event(&mut out, &m);
        assert_eq!(
            &out[..],
            &b"id: 3:17\nevent: message\ndata: {\"partition\":3,\"offset\":17,\"timestamp\":5,\"key\":\"k\",\"value\":\"aGk=\"}\n\n"[..]
        );
        assert_eq!(parse_id(b"3:17"), Some((3, 17)));
        assert_eq!(parse_id(b" 0:0 "), Some((0, 0)));
        for bad in [
            &b"3"[..],
            b"3:",
            b":1",
            b"a:1",
            b"1:-2",
            b"1:2:3",
            b"99999999999:1",
        ] {
            assert_eq!(parse_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let mut e = BytesMut::new();
        put_error(&mut e, "gone", 40400);
        assert_eq!(
            &e[..],
            &b"event: error\ndata: {\"errmsg\":\"gone\",\"code\":40400}\n\n"[..]
        );
    }
}
