//! Encoder tests: exact header bytes, and round trips through the test-only masking client side
//! into the decoder.

use super::*;
use crate::ws::testing::{buf, mask, KEY};
use crate::ws::{Decoder, Limits, Message};
use bytes::Bytes;

/// Masks the single frame in `frame` and decodes it.
fn round_trip(frame: &[u8]) -> Message {
    let mut d = Decoder::new(Limits {
        max_frame: 1 << 20,
        max_message: 1 << 20,
    });
    let mut b = buf(&mask(frame, KEY));
    let m = d.decode(&mut b).unwrap().unwrap();
    assert!(b.is_empty());
    m
}

#[test]
fn header_bytes_for_each_length_form() {
    for (len, header) in [
        (0, vec![0x82, 0]),
        (125, vec![0x82, 125]),
        (126, vec![0x82, 126, 0, 126]),
        (0xFFFF, vec![0x82, 126, 0xFF, 0xFF]),
        (0x1_0000, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
    ] {
        let mut out = BytesMut::new();
        write_binary(&mut out, &vec![7; len]);
        assert_eq!(frame_header_len(len), header.len(), "{len}");
        assert_eq!(&out[..header.len()], &header[..], "{len}");
        assert_eq!(out.len(), header.len() + len);
    }
}

#[test]
fn opcodes_and_fin() {
    let mut out = BytesMut::new();
    write_text(&mut out, "hi");
    assert_eq!(&out[..], b"\x81\x02hi");
    for (write, op) in [
        (write_ping as fn(&mut BytesMut, &[u8]), 0x89),
        (write_pong, 0x8A),
    ] {
        let mut out = BytesMut::new();
        write(&mut out, b"p");
        assert_eq!(&out[..], &[op, 1, b'p']);
    }
    let mut out = BytesMut::new();
    write_close(&mut out, 1000, "bye");
    assert_eq!(&out[..], b"\x88\x05\x03\xe8bye");
}

#[test]
fn round_trips_through_the_decoder() {
    for len in [0, 1, 125, 126, 1000, 0xFFFF, 0x1_0000, 70_000] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut out = BytesMut::new();
        write_binary(&mut out, &data);
        assert_eq!(round_trip(&out), Message::Binary(Bytes::from(data)));
    }
    let text = "héllo wörld ✓".repeat(20);
    let mut out = BytesMut::new();
    write_text(&mut out, &text);
    assert_eq!(round_trip(&out), Message::Text(Bytes::from(text)));
    let mut out = BytesMut::new();
    write_ping(&mut out, b"ping");
    assert_eq!(round_trip(&out), Message::Ping(Bytes::from_static(b"ping")));
    let mut out = BytesMut::new();
    write_pong(&mut out, b"");
    assert_eq!(round_trip(&out), Message::Pong(Bytes::new()));
    let mut out = BytesMut::new();
    write_close(&mut out, 4000, "done");
    assert_eq!(
        round_trip(&out),
        Message::Close(Some((4000, Bytes::from_static(b"done"))))
    );
}

#[test]
fn control_payloads_are_cut_to_fit() {
    let mut out = BytesMut::new();
    write_ping(&mut out, &[1; 300]);
    assert_eq!(out.len(), 2 + 125);
    assert_eq!(round_trip(&out), Message::Ping(Bytes::from(vec![1; 125])));

    // 'é' is two bytes: 123 would split the 62nd, so the reason keeps 61 of them.
    let reason = "é".repeat(70);
    let mut out = BytesMut::new();
    write_close(&mut out, 1001, &reason);
    assert_eq!(out.len(), 2 + 2 + 122);
    assert_eq!(
        round_trip(&out),
        Message::Close(Some((1001, Bytes::from("é".repeat(61)))))
    );
    // An ASCII reason keeps exactly 123 bytes.
    let mut out = BytesMut::new();
    write_close(&mut out, 1000, &"x".repeat(200));
    assert_eq!(out.len(), 2 + 125);
}
