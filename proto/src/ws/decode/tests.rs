//! Decoder tests: masking, the three length forms, fragmentation, every split of the input, and
//! each rule that fails the connection with 1002, 1007 or 1009.

use super::*;
use crate::ws::testing::{buf, client_frame as frame};

const LIMITS: Limits = Limits {
    max_frame: 1 << 17,
    max_message: 1 << 18,
};

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Everything `input` decodes to, fed whole, and the error that ended it, if any.
fn run(limits: Limits, parts: &[&[u8]]) -> (Vec<Message>, Option<CloseError>) {
    let mut d = Decoder::new(limits);
    let mut b = BytesMut::new();
    let mut out = Vec::new();
    for part in parts {
        b.extend_from_slice(part);
        loop {
            let r = d.decode(&mut b);
            assert!(d.held() <= limits.max_message);
            match r {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

/// Decodes `input` whole, split in two at every point and fed a byte at a time, checks that all
/// agree, and returns the result.
fn decode_all(limits: Limits, input: &[u8]) -> (Vec<Message>, Option<CloseError>) {
    let whole = run(limits, &[input]);
    for split in 0..=input.len() {
        let got = run(limits, &[&input[..split], &input[split..]]);
        assert_eq!(got, whole, "split at {split}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(limits, &bytes), whole, "byte at a time");
    whole
}

fn messages(input: &[u8]) -> Vec<Message> {
    match decode_all(LIMITS, input) {
        (m, None) => m,
        (_, Some(e)) => panic!("unexpected {e}"),
    }
}

/// The close code `input` fails with.
fn code(input: &[u8]) -> u16 {
    code_with(LIMITS, input)
}

fn code_with(limits: Limits, input: &[u8]) -> u16 {
    match run(limits, &[input]) {
        (_, Some(e)) => e.code,
        (m, None) => panic!("no error, got {m:?}"),
    }
}

fn text(s: &str) -> Message {
    Message::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn binary(b: &[u8]) -> Message {
    Message::Binary(Bytes::copy_from_slice(b))
}

#[test]
fn rfc_masked_example_is_unmasked() {
    // RFC 6455 §5.7: a single-frame masked text message.
    let input = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(messages(&input), [text("Hello")]);
    assert_eq!(frame(FIN | TEXT, b"Hello"), input);
}

#[test]
fn unmasked_frames_are_refused() {
    assert_eq!(code(b"\x81\x05Hello"), 1002);
    assert_eq!(code(b"\x89\x00"), 1002);
    // Refused from the first two bytes.
    assert_eq!(run(LIMITS, &[b"\x82\x7f"]).1.map(|e| e.code), Some(1002));
}

#[test]
fn all_three_length_forms() {
    for len in [0, 1, 125, 126, 127, 0xFFFF, 0x1_0000, 100_000] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let input = frame(FIN | BINARY, &data);
        let at = match len {
            0..=125 => 1,
            126..=0xFFFF => 3,
            _ => 9,
        };
        assert_eq!(input.len(), at + 5 + len, "{len}");
        // Byte-at-a-time feeding of the larger ones would be slow; split them at the edges.
        let limits = LIMITS;
        let whole = run(limits, &[&input]);
        assert_eq!(whole, (vec![binary(&data)], None), "{len}");
        for split in [1, 2, at + 1, at + 4, at + 5, input.len() - 1] {
            let got = run(limits, &[&input[..split], &input[split..]]);
            assert_eq!(got, whole, "{len} split at {split}");
        }
    }
}

#[test]
fn lengths_need_not_be_minimal() {
    let key = crate::ws::testing::KEY;
    let masked: Vec<u8> = b"abc".iter().zip(key).map(|(b, k)| b ^ k).collect();
    let mut sixteen = vec![FIN | BINARY, 0x80 | 126, 0, 3];
    sixteen.extend_from_slice(&key);
    sixteen.extend_from_slice(&masked);
    let mut sixty_four = vec![FIN | BINARY, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 3];
    sixty_four.extend_from_slice(&key);
    sixty_four.extend_from_slice(&masked);
    assert_eq!(messages(&sixteen), [binary(b"abc")]);
    assert_eq!(messages(&sixty_four), [binary(b"abc")]);
}

#[test]
fn sixty_four_bit_length_with_top_bit_is_a_protocol_error() {
    let big = Limits {
        max_frame: usize::MAX,
        max_message: usize::MAX,
    };
    let head = [FIN | BINARY, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(code_with(big, &head), 1002);
    assert_eq!(code(&head), 1002);
}

#[test]
fn several_frames_at_every_split() {
    let mut input = frame(FIN | TEXT, "héllo ✓".as_bytes());
    input.extend(frame(FIN | BINARY, &[0, 1, 2]));
    input.extend(frame(FIN | PING, b"p"));
    input.extend(frame(FIN | PONG, b""));
    input.extend(frame(FIN | CLOSE, b"\x03\xe8ok"));
    assert_eq!(
        messages(&input),
        [
            text("héllo ✓"),
            binary(&[0, 1, 2]),
            Message::Ping(Bytes::from_static(b"p")),
            Message::Pong(Bytes::new()),
            Message::Close(Some((1000, Bytes::from_static(b"ok")))),
        ]
    );
}

#[test]
fn incomplete_frame_waits_untouched() {
    let input = frame(FIN | BINARY, b"abcdef");
    let mut d = Decoder::new(LIMITS);
    let mut b = buf(&input[..input.len() - 1]);
    assert_eq!(d.decode(&mut b), Ok(None));
    assert_eq!(&b[..], &input[..input.len() - 1]);
    b.extend_from_slice(&input[input.len() - 1..]);
    assert_eq!(d.decode(&mut b), Ok(Some(binary(b"abcdef"))));
    assert!(b.is_empty());
}

#[test]
fn fragments_with_interleaved_control_frames() {
    let mut input = frame(TEXT, b"Hel");
    input.extend(frame(FIN | PING, b"p1"));
    input.extend(frame(0, b""));
    input.extend(frame(0, b"lo "));
    input.extend(frame(FIN | PONG, b"p2"));
    input.extend(frame(FIN, "wörld".as_bytes()));
    input.extend(frame(BINARY, &[1]));
    input.extend(frame(FIN, &[2, 3]));
    assert_eq!(
        messages(&input),
        [
            Message::Ping(Bytes::from_static(b"p1")),
            Message::Pong(Bytes::from_static(b"p2")),
            text("Hello wörld"),
            binary(&[1, 2, 3]),
        ]
    );
}

#[test]
fn held_counts_the_fragments_and_stays_within_the_limit() {
    let limits = Limits {
        max_frame: 10,
        max_message: 25,
    };
    let mut d = Decoder::new(limits);
    let mut b = BytesMut::new();
    let mut total = 0;
    // The third fragment needs more room than the second left; doubling would overshoot 25.
    for (i, n) in [10, 10, 3, 2].into_iter().enumerate() {
        let fin = if i == 3 { FIN } else { 0 };
        let op = if i == 0 { BINARY } else { 0 };
        b.extend_from_slice(&frame(fin | op, &vec![i as u8; n]));
        total += n;
        let r = d.decode(&mut b).unwrap();
        if i < 3 {
            assert_eq!(r, None);
            assert!(d.held() >= total && d.held() <= 25, "{}", d.held());
        } else {
            assert_eq!(
                r.map(|m| matches!(m, Message::Binary(b) if b.len() == 25)),
                Some(true)
            );
            assert_eq!(d.held(), 0);
        }
    }
}

#[test]
fn reserved_bits_are_protocol_errors() {
    for rsv in [0x40, 0x20, 0x10] {
        assert_eq!(code(&frame(FIN | rsv | TEXT, b"a")), 1002, "{rsv:x}");
        assert_eq!(code(&frame(FIN | rsv | PING, b"")), 1002, "{rsv:x}");
    }
}

#[test]
fn reserved_opcodes_are_protocol_errors() {
    for op in (3..=7).chain(0xB..=0xF) {
        assert_eq!(code(&frame(FIN | op, b"")), 1002, "{op:x}");
    }
}

#[test]
fn control_frames_must_be_short_and_final() {
    for op in [CLOSE, PING, PONG] {
        assert_eq!(code(&frame(FIN | op, &[0x03; 126])), 1002, "{op:x}");
        assert_eq!(code(&frame(op, b"")), 1002, "{op:x}");
    }
    // 125 is fine.
    assert_eq!(
        messages(&frame(FIN | PING, &[7; 125])),
        [Message::Ping(Bytes::from(vec![7; 125]))]
    );
}

#[test]
fn continuation_needs_a_started_message() {
    assert_eq!(code(&frame(FIN, b"a")), 1002);
    assert_eq!(code(&frame(0, b"a")), 1002);
    // Refused from the header, before the payload arrives.
    assert_eq!(code(&[FIN, 0x80 | 5]), 1002);
    // Also once the previous message is complete.
    let mut input = frame(TEXT, b"a");
    input.extend(frame(FIN, b"b"));
    input.extend(frame(FIN, b"c"));
    assert_eq!(code(&input), 1002);
}

#[test]
fn new_data_frame_inside_a_fragmented_message() {
    for op in [TEXT, BINARY] {
        for fin in [0, FIN] {
            let mut input = frame(BINARY, b"a");
            input.extend(frame(fin | op, b"b"));
            assert_eq!(code(&input), 1002, "{op} {fin}");
            // From the header alone.
            let mut input = frame(BINARY, b"a");
            input.extend([fin | op, 0x80 | 5]);
            assert_eq!(code(&input), 1002, "{op} {fin}");
        }
    }
}

#[test]
fn close_payloads() {
    assert_eq!(messages(&frame(FIN | CLOSE, b"")), [Message::Close(None)]);
    assert_eq!(
        messages(&frame(FIN | CLOSE, b"\x0f\xa0")),
        [Message::Close(Some((4000, Bytes::new())))]
    );
    assert_eq!(code(&frame(FIN | CLOSE, b"\x03")), 1002);
    assert_eq!(code(&frame(FIN | CLOSE, b"\x03\xe8\xff\xfe")), 1007);
}

#[test]
fn close_codes() {
    let valid = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ];
    let invalid = [
        0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    for c in valid {
        assert!(is_valid_close_code(c), "{c}");
        let m = messages(&frame(FIN | CLOSE, &c.to_be_bytes()));
        assert_eq!(m, [Message::Close(Some((c, Bytes::new())))]);
    }
    for c in invalid {
        assert!(!is_valid_close_code(c), "{c}");
        assert_eq!(code(&frame(FIN | CLOSE, &c.to_be_bytes())), 1002, "{c}");
    }
}

#[test]
fn text_must_be_utf8() {
    assert_eq!(code(&frame(FIN | TEXT, b"ok\xff")), 1007);
    // Cut short in the middle of a character.
    assert_eq!(code(&frame(FIN | TEXT, &"✓".as_bytes()[..2])), 1007);
    // Binary is not checked.
    assert_eq!(messages(&frame(FIN | BINARY, b"\xff")), [binary(b"\xff")]);
    // A character split across fragments is fine...
    let check = "✓".as_bytes();
    let mut input = frame(TEXT, &check[..1]);
    input.extend(frame(0, &check[1..2]));
    input.extend(frame(FIN, &check[2..]));
    assert_eq!(messages(&input), [text("✓")]);
    // ...a message that ends inside one is not.
    let mut input = frame(TEXT, b"a");
    input.extend(frame(FIN, &check[..2]));
    assert_eq!(code(&input), 1007);
}

#[test]
fn invalid_text_fails_at_the_first_bad_fragment() {
    let mut d = Decoder::new(LIMITS);
    let mut b = buf(&frame(TEXT, b"ok\xc0\xaf"));
    assert_eq!(d.decode(&mut b).map_err(|e| e.code), Err(1007));
}

#[test]
fn frame_over_the_limit_fails_from_its_header() {
    let small = Limits {
        max_frame: 100,
        max_message: 1000,
    };
    assert_eq!(code_with(small, &frame(FIN | BINARY, &[0; 101])), 1009);
    assert_eq!(
        run(small, &[&frame(FIN | BINARY, &[0; 100])]),
        (vec![binary(&[0; 100])], None)
    );
    // Only the header of a 1 GiB frame, no mask key nor payload: refused at once.
    let gib = [FIN | BINARY, 0x80 | 127, 0, 0, 0, 0, 0x40, 0, 0, 0];
    assert_eq!(code_with(LIMITS, &gib), 1009);
    // 16-bit form, header only.
    assert_eq!(
        code_with(small, &[FIN | TEXT, 0x80 | 126, 0x01, 0x00]),
        1009
    );
}

#[test]
fn message_over_the_limit_fails_from_the_fragment_header() {
    let limits = Limits {
        max_frame: 10,
        max_message: 25,
    };
    let mut input = frame(TEXT, b"0123456789");
    input.extend(frame(0, b"0123456789"));
    // The third fragment's header alone says the message would be 26 bytes.
    input.extend([0x80, 0x80 | 6]);
    assert_eq!(code_with(limits, &input), 1009);
    // A single frame over max_message but within max_frame.
    let limits = Limits {
        max_frame: 100,
        max_message: 10,
    };
    assert_eq!(code_with(limits, &[FIN | BINARY, 0x80 | 11]), 1009);
}

#[test]
fn errors_stick_and_read_as_text() {
    let mut d = Decoder::new(LIMITS);
    let mut b = buf(b"\x81\x05Hello");
    let e = d.decode(&mut b).unwrap_err();
    assert_eq!(e.code, 1002);
    b.clear();
    b.extend_from_slice(&frame(FIN | TEXT, b"ok"));
    assert_eq!(d.decode(&mut b), Err(e));
    assert_eq!(e.to_string(), "client frame not masked (close code 1002)");
}
