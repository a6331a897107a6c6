//! WebSocket (RFC 6455), sans-I/O: the opening handshake ([`handshake`]), the decoder of client
//! frames ([`decode`]) and the encoder of server frames ([`encode`]). Like [`crate::http1`], it
//! works on byte buffers only; the connection loop in the shards does the I/O, answers pings and
//! closes the connection.
//!
//! No extension (such as permessage-deflate) and no subprotocol is negotiated, so every RSV bit
//! must be clear and every frame is one of the opcodes of [`Opcode`].

pub mod decode;
pub mod encode;
pub mod handshake;

#[cfg(test)]
mod testing;

pub use decode::{is_valid_close_code, CloseError, Decoder, Limits, Message};
pub use encode::{
    frame_header_len, write_binary, write_close, write_frame, write_ping, write_pong, write_text,
};
pub use handshake::{
    accept_key, check_upgrade, is_upgrade, write_response, HandshakeError, Upgrade,
};

/// The frame opcodes of RFC 6455 §5.2 (the others are reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// A later fragment of a fragmented data message.
    Continuation = 0x0,
    /// A UTF-8 text message (or its first fragment).
    Text = 0x1,
    /// A binary message (or its first fragment).
    Binary = 0x2,
    /// Close (control).
    Close = 0x8,
    /// Ping (control).
    Ping = 0x9,
    /// Pong (control).
    Pong = 0xA,
}

impl Opcode {
    /// The opcode with these four bits, or `None` for a reserved one.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}
