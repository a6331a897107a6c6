//! Test-only client side: builds masked frames, as a browser would send them.

use bytes::BytesMut;

/// The mask key the helpers use unless told otherwise.
pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame with the given first byte (FIN, RSV and opcode) and payload.
pub fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    out
}

/// The masked form of one unmasked (server) frame: the mask bit set, the key inserted after the
/// length and the payload masked.
pub fn mask(frame: &[u8], key: [u8; 4]) -> Vec<u8> {
    assert_eq!(frame[1] & 0x80, 0, "already masked");
    let at = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mut out = frame[..at].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&key);
    out.extend(frame[at..].iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// `bytes` in a `BytesMut`.
pub fn buf(bytes: &[u8]) -> BytesMut {
    BytesMut::from(bytes)
}
