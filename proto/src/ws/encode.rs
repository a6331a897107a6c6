//! Encoding of server frames (RFC 6455 §5.2): one unfragmented frame per call, FIN set, never
//! masked (a server must not mask). Control payloads are cut to the 125 bytes a control frame
//! may carry, so nothing written here is a frame a client must refuse.

use super::Opcode;
use bytes::{BufMut, BytesMut};

/// The most payload a control frame may carry.
pub const MAX_CONTROL: usize = 125;

/// Header bytes of an unmasked frame carrying `payload_len` bytes.
pub fn frame_header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Writes one frame with FIN set. Control frames (close, ping, pong) must carry at most 125
/// bytes; the helpers below see to that.
pub fn write_frame(out: &mut BytesMut, opcode: Opcode, payload: &[u8]) {
    let len = payload.len();
    out.reserve(frame_header_len(len) + len);
    out.put_u8(0x80 | opcode as u8);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.extend_from_slice(payload);
}

/// Writes a text message.
pub fn write_text(out: &mut BytesMut, text: &str) {
    write_frame(out, Opcode::Text, text.as_bytes());
}

/// Writes a binary message.
pub fn write_binary(out: &mut BytesMut, data: &[u8]) {
    write_frame(out, Opcode::Binary, data);
}

/// Writes a ping carrying the first 125 bytes of `payload`.
pub fn write_ping(out: &mut BytesMut, payload: &[u8]) {
    write_frame(
        out,
        Opcode::Ping,
        &payload[..payload.len().min(MAX_CONTROL)],
    );
}

/// Writes a pong carrying the first 125 bytes of `payload` (a ping's payload is never longer).
pub fn write_pong(out: &mut BytesMut, payload: &[u8]) {
    write_frame(
        out,
        Opcode::Pong,
        &payload[..payload.len().min(MAX_CONTROL)],
    );
}

/// Writes a close frame with `code` and `reason`, the reason cut to 123 bytes on a character
/// boundary. The code should be one a peer may send (see
/// [`is_valid_close_code`](super::is_valid_close_code)).
pub fn write_close(out: &mut BytesMut, code: u16, reason: &str) {
    let end = kateway_core::text::prefix(reason, MAX_CONTROL - 2).len();
    let mut payload = [0u8; MAX_CONTROL];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    write_frame(out, Opcode::Close, &payload[..2 + end]);
}

#[cfg(test)]
mod tests;
