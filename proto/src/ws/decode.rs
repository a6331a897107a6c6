//! Decoding of client frames (RFC 6455 §5) into [`Message`]s. [`Decoder::decode`] takes one
//! complete frame at a time from the front of the connection's read buffer, unmasks it, and
//! assembles fragmented data messages; control frames that arrive between fragments are
//! returned at once. It keeps state between calls, so any split of the input decodes the same.
//!
//! Every violation is a [`CloseError`]: the close code to fail the connection with (RFC 6455
//! §7.4.1) and why. 1002 (protocol error): an unmasked frame, an RSV bit (no extension is
//! negotiated), a reserved opcode, a control frame over 125 bytes or fragmented, a continuation
//! with no message started or a new data frame inside one, a 64-bit length with its top bit set,
//! a one-byte close payload or a close code that may not be sent. 1009 (too big): a frame over
//! `max_frame` or a message over `max_message`, known from the frame header before any of the
//! payload is buffered. 1007 (invalid data): a text message or close reason that is not UTF-8;
//! a fragmented text message fails at the first fragment that makes it invalid.
//!
//! Lengths need not be in their shortest encoding. A complete frame waits in the caller's buffer
//! until all of it is in (at most `max_frame` plus a 14-byte header); the fragments of a message
//! are copied here ([`Decoder::held`]), at most `max_message` bytes.

use super::Opcode;
use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// Frame and message limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame payload.
    pub max_frame: usize,
    /// Largest data message, all its fragments together.
    pub max_message: usize,
}

/// A complete message (or control frame) from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping; answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame: its status code and UTF-8 reason, when the payload had them.
    Close(Option<(u16, Bytes)>),
}

/// Why the connection must be failed: the close code to send and a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseError {
    /// The close code (1002, 1007 or 1009).
    pub code: u16,
    /// What was wrong, short enough for a close frame.
    pub reason: &'static str,
}

impl CloseError {
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// 1007: a text payload was not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// 1009: a frame or message over the limits.
    pub const TOO_BIG: u16 = 1009;

    const fn protocol(reason: &'static str) -> Self {
        Self {
            code: Self::PROTOCOL_ERROR,
            reason,
        }
    }

    const fn invalid_data(reason: &'static str) -> Self {
        Self {
            code: Self::INVALID_DATA,
            reason,
        }
    }

    const fn too_big(reason: &'static str) -> Self {
        Self {
            code: Self::TOO_BIG,
            reason,
        }
    }
}

impl fmt::Display for CloseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close code {})", self.reason, self.code)
    }
}

impl std::error::Error for CloseError {}

/// Whether a peer may send this close code (RFC 6455 §7.4, as the Autobahn testsuite reads it):
/// 1000-1003, 1007-1011 and the private range 3000-4999.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// A frame header, all of it received.
#[derive(Debug, Clone, Copy)]
struct Head {
    fin: bool,
    opcode: Opcode,
    len: usize,
    /// Header bytes, mask key included.
    size: usize,
    key: [u8; 4],
}

/// A fragmented data message being assembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: Vec<u8>,
    /// For text: how much of `data` is known to be valid UTF-8.
    checked: usize,
}

impl Partial {
    /// Appends a fragment; the caller checked that the message stays within `max`.
    fn push(&mut self, fragment: &[u8], max: usize) -> Result<(), CloseError> {
        let need = self.data.len() + fragment.len();
        if need > self.data.capacity() {
            // Grow geometrically for many small fragments, but never past the limit.
            let cap = self.data.capacity().saturating_mul(2).min(max).max(need);
            self.data.reserve_exact(cap - self.data.len());
        }
        self.data.extend_from_slice(fragment);
        if self.text {
            match std::str::from_utf8(&self.data[self.checked..]) {
                Ok(_) => self.checked = self.data.len(),
                // An incomplete sequence at the end may be completed by the next fragment.
                Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
                Err(_) => return Err(CloseError::invalid_data("text message not UTF-8")),
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Message, CloseError> {
        if !self.text {
            return Ok(Message::Binary(self.data.into()));
        }
        if self.checked != self.data.len() {
            return Err(CloseError::invalid_data("text message not UTF-8"));
        }
        Ok(Message::Text(self.data.into()))
    }
}

/// Decoder state for one connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    partial: Option<Partial>,
    failed: Option<CloseError>,
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            partial: None,
            failed: None,
        }
    }

    /// Bytes held here for a fragmented message being assembled (the allocation that holds
    /// them); never more than `max_message`.
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.capacity())
    }

    /// Decodes the next message from `buf`, consuming the frames it used. `Ok(None)` means more
    /// input is needed. After an error the connection must be failed with its close code; the
    /// decoder then returns the same error again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, CloseError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = self.decode_frames(buf);
        if let Err(e) = r {
            self.failed = Some(e);
            self.partial = None;
        }
        r
    }

    fn decode_frames(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, CloseError> {
        loop {
            let Some(head) = self.head(buf)? else {
                return Ok(None);
            };
            if buf.len() - head.size < head.len {
                return Ok(None);
            }
            buf.advance(head.size);
            let mut payload = buf.split_to(head.len);
            unmask(&mut payload, head.key);
            let message = match head.opcode {
                Opcode::Ping => Message::Ping(payload.freeze()),
                Opcode::Pong => Message::Pong(payload.freeze()),
                Opcode::Close => close(payload.freeze())?,
                Opcode::Text | Opcode::Binary if head.fin => {
                    let payload = payload.freeze();
                    if head.opcode == Opcode::Binary {
                        Message::Binary(payload)
                    } else if std::str::from_utf8(&payload).is_ok() {
                        Message::Text(payload)
                    } else {
                        return Err(CloseError::invalid_data("text message not UTF-8"));
                    }
                }
                Opcode::Text | Opcode::Binary => {
                    let mut p = Partial {
                        text: head.opcode == Opcode::Text,
                        data: Vec::new(),
                        checked: 0,
                    };
                    p.push(&payload, self.limits.max_message)?;
                    self.partial = Some(p);
                    continue;
                }
                Opcode::Continuation => {
                    // head() refused a continuation with no message started.
                    let Some(mut p) = self.partial.take() else {
                        return Err(CloseError::protocol("continuation with no message started"));
                    };
                    p.push(&payload, self.limits.max_message)?;
                    if !head.fin {
                        self.partial = Some(p);
                        continue;
                    }
                    p.finish()?
                }
            };
            return Ok(Some(message));
        }
    }

    /// The header of the frame at the front of `buf`, checked as far as it has arrived;
    /// `Ok(None)` while it is incomplete.
    fn head(&self, buf: &[u8]) -> Result<Option<Head>, CloseError> {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(CloseError::protocol("reserved bit set"));
        }
        let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(CloseError::protocol("reserved opcode"))?;
        if b1 & 0x80 == 0 {
            return Err(CloseError::protocol("client frame not masked"));
        }
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(CloseError::protocol("fragmented control frame"));
            }
            if len7 > 125 {
                return Err(CloseError::protocol("control frame over 125 bytes"));
            }
        } else if opcode == Opcode::Continuation && self.partial.is_none() {
            return Err(CloseError::protocol("continuation with no message started"));
        } else if opcode != Opcode::Continuation && self.partial.is_some() {
            return Err(CloseError::protocol("new message inside a fragmented one"));
        }
        let (len, at) = match len7 {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(b);
                    let n = u64::from_be_bytes(n);
                    if n >> 63 != 0 {
                        return Err(CloseError::protocol("64-bit length with its top bit set"));
                    }
                    (n, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if len > self.limits.max_frame as u64 {
            return Err(CloseError::too_big("frame too big"));
        }
        let held = self.partial.as_ref().map_or(0, |p| p.data.len());
        if !opcode.is_control() && held as u64 + len > self.limits.max_message as u64 {
            return Err(CloseError::too_big("message too big"));
        }
        let Some(&[k0, k1, k2, k3]) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        Ok(Some(Head {
            fin,
            opcode,
            // Within max_frame, so it fits.
            len: len as usize,
            size: at + 4,
            key: [k0, k1, k2, k3],
        }))
    }
}

/// The message of a close frame's (unmasked) payload.
fn close(payload: Bytes) -> Result<Message, CloseError> {
    let code = match payload[..] {
        [] => return Ok(Message::Close(None)),
        [_] => return Err(CloseError::protocol("close payload of one byte")),
        [a, b, ..] => u16::from_be_bytes([a, b]),
    };
    if !is_valid_close_code(code) {
        return Err(CloseError::protocol("invalid close code"));
    }
    let reason = payload.slice(2..);
    if std::str::from_utf8(&reason).is_err() {
        return Err(CloseError::invalid_data("close reason not UTF-8"));
    }
    Ok(Message::Close(Some((code, reason))))
}

/// Unmasks (or masks) `data` with `key` (RFC 6455 §5.3).
fn unmask(data: &mut [u8], key: [u8; 4]) {
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        for (b, k) in c.iter_mut().zip(key) {
            *b ^= k;
        }
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests;
