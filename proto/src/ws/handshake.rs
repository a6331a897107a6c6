//! The server side of the WebSocket opening handshake (RFC 6455 §4.2): checks that a request
//! asks for an upgrade and is a valid one ([`check_upgrade`]), computes the accept key
//! ([`accept_key`]) and writes the `101 Switching Protocols` answer ([`write_response`]).
//!
//! What the request trait cannot show is left to the caller: that the request is HTTP/1.1 (a
//! `Request`'s `minor`), and that the path names something that may be upgraded. Only the first
//! `Upgrade` and `Connection` header lines are read; a repeated `Sec-WebSocket-Key` or
//! `Sec-WebSocket-Version` is refused (RFC 6455 §11.3.1, §11.3.5).

use crate::command::Parts;
use crate::http1::Method;
use base64::Engine;
use bytes::BytesMut;
use std::fmt;

/// The GUID RFC 6455 §1.3 appends to the client's key.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version there is (RFC 6455 §4.1).
pub const VERSION: &str = "13";

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
}

/// Why an upgrade request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// No `Upgrade: websocket` at all: not a WebSocket request (answer 400, or 426 where only
    /// WebSocket is served).
    NotUpgrade,
    /// The method is not GET.
    NotGet,
    /// `Connection` does not list `upgrade`.
    BadConnection,
    /// `Sec-WebSocket-Version` is missing, repeated or not 13 (answer 426 with
    /// `Sec-WebSocket-Version: 13`).
    BadVersion,
    /// `Sec-WebSocket-Key` is missing, repeated, or not the base64 of 16 bytes.
    BadKey,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::NotUpgrade => "not a WebSocket upgrade request (no Upgrade: websocket)",
            HandshakeError::NotGet => "a WebSocket upgrade must be a GET request",
            HandshakeError::BadConnection => "a WebSocket upgrade needs Connection: Upgrade",
            HandshakeError::BadVersion => "unsupported Sec-WebSocket-Version (only 13 is)",
            HandshakeError::BadKey => {
                "Sec-WebSocket-Key is missing, repeated or not the base64 of 16 bytes"
            }
        })
    }
}

impl std::error::Error for HandshakeError {}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`:
/// base64(SHA-1(key + [`GUID`])).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Whether the request asks for a WebSocket upgrade (its `Upgrade` header lists `websocket`),
/// valid or not.
pub fn is_upgrade(parts: &impl Parts) -> bool {
    parts
        .header("upgrade")
        .is_some_and(|v| has_token(v, b"websocket"))
}

/// Checks an upgrade request and returns the accept key to answer with.
pub fn check_upgrade(parts: &impl Parts) -> Result<Upgrade, HandshakeError> {
    if !is_upgrade(parts) {
        return Err(HandshakeError::NotUpgrade);
    }
    if parts.method() != Method::Get {
        return Err(HandshakeError::NotGet);
    }
    if !parts
        .header("connection")
        .is_some_and(|v| has_token(v, b"upgrade"))
    {
        return Err(HandshakeError::BadConnection);
    }
    match parts.header_first("sec-websocket-version") {
        (Some(v), false) if trim(v) == VERSION.as_bytes() => {}
        _ => return Err(HandshakeError::BadVersion),
    }
    let key = match parts.header_first("sec-websocket-key") {
        (Some(k), false) => trim(k),
        _ => return Err(HandshakeError::BadKey),
    };
    // 16 bytes are 24 base64 characters; anything longer is refused before decoding.
    if key.len() != 24 {
        return Err(HandshakeError::BadKey);
    }
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(Upgrade {
            accept: accept_key(key),
        }),
        _ => Err(HandshakeError::BadKey),
    }
}

/// Writes the `101 Switching Protocols` answer that completes the handshake.
pub fn write_response(out: &mut BytesMut, accept: &str) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Whether the comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests;
