//! Handshake tests: the RFC's accept key, each refusal, and the 101 answer. Requests go through
//! the HTTP/1.1 decoder, as they do in the gateway.

use super::*;
use crate::http1::{Decoder, Event, Limits, Request};

fn request(head: &str) -> Request {
    let mut d = Decoder::new(Limits {
        max_head: 8192,
        max_body: 1024,
    });
    let mut buf = BytesMut::from(head.as_bytes());
    match d.decode(&mut buf) {
        Ok(Some(Event::Request(r))) => r,
        other => panic!("not a request: {other:?}"),
    }
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
// RFC 6455 §1.3 (checked against an independent SHA-1).
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A valid upgrade request with `extra` header lines; `skip` names a header left out.
fn upgrade(method: &str, extra: &str, skip: &str) -> Request {
    let mut head = format!("{method} /ws HTTP/1.1\r\nHost: h\r\n");
    for (name, value) in [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", KEY),
    ] {
        if name != skip {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(extra);
    head.push_str("\r\n");
    request(&head)
}

#[test]
fn accept_key_of_the_rfc_example() {
    assert_eq!(accept_key(KEY.as_bytes()), ACCEPT);
}

#[test]
fn valid_request_yields_the_accept_key() {
    let r = upgrade("GET", "", "");
    assert!(is_upgrade(&r));
    assert_eq!(
        check_upgrade(&r),
        Ok(Upgrade {
            accept: ACCEPT.into()
        })
    );
}

#[test]
fn token_lists_and_case_are_accepted() {
    let r = request(&format!(
        "GET / HTTP/1.1\r\nupgrade: foo/2, WebSocket\r\nconnection: keep-alive,\tUPGRADE \r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: {KEY}\r\n\r\n"
    ));
    assert_eq!(check_upgrade(&r).map(|u| u.accept), Ok(ACCEPT.to_string()));
}

#[test]
fn not_an_upgrade() {
    let r = request("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(!is_upgrade(&r));
    assert_eq!(check_upgrade(&r), Err(HandshakeError::NotUpgrade));
    // A token that merely contains the word does not count.
    let r = upgrade("GET", "", "Upgrade");
    let r2 = request("GET / HTTP/1.1\r\nUpgrade: websocketx, h2c\r\n\r\n");
    for r in [r, r2] {
        assert!(!is_upgrade(&r));
        assert_eq!(check_upgrade(&r), Err(HandshakeError::NotUpgrade));
    }
}

#[test]
fn method_must_be_get() {
    let r = upgrade("POST", "Content-Length: 0\r\n", "");
    assert!(is_upgrade(&r));
    assert_eq!(check_upgrade(&r), Err(HandshakeError::NotGet));
}

#[test]
fn connection_must_list_upgrade() {
    assert_eq!(
        check_upgrade(&upgrade("GET", "", "Connection")),
        Err(HandshakeError::BadConnection)
    );
    assert_eq!(
        check_upgrade(&upgrade("GET", "Connection: keep-alive\r\n", "Connection")),
        Err(HandshakeError::BadConnection)
    );
    assert_eq!(
        check_upgrade(&upgrade("GET", "Connection: upgraded\r\n", "Connection")),
        Err(HandshakeError::BadConnection)
    );
}

#[test]
fn version_must_be_13_once() {
    for extra in [
        "",
        "Sec-WebSocket-Version: 8\r\n",
        "Sec-WebSocket-Version: 13, 8\r\n",
    ] {
        let r = upgrade("GET", extra, "Sec-WebSocket-Version");
        assert_eq!(
            check_upgrade(&r),
            Err(HandshakeError::BadVersion),
            "{extra:?}"
        );
    }
    let r = upgrade("GET", "Sec-WebSocket-Version: 13\r\n", "");
    assert_eq!(check_upgrade(&r), Err(HandshakeError::BadVersion));
}

#[test]
fn key_must_be_16_bytes_of_base64_once() {
    for extra in [
        "".to_string(),
        "Sec-WebSocket-Key: not base64 at all!!!!!!!\r\n".into(),
        // 15 and 17 bytes.
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n".into(),
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n".into(),
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA\r\n".into(),
        format!("Sec-WebSocket-Key: {KEY}{KEY}\r\n"),
    ] {
        let r = upgrade("GET", &extra, "Sec-WebSocket-Key");
        assert_eq!(check_upgrade(&r), Err(HandshakeError::BadKey), "{extra:?}");
    }
    let r = upgrade("GET", &format!("Sec-WebSocket-Key: {KEY}\r\n"), "");
    assert_eq!(check_upgrade(&r), Err(HandshakeError::BadKey));
}

#[test]
fn errors_read_as_text() {
    for e in [
        HandshakeError::NotUpgrade,
        HandshakeError::NotGet,
        HandshakeError::BadConnection,
        HandshakeError::BadVersion,
        HandshakeError::BadKey,
    ] {
        assert!(e.to_string().len() > 10);
    }
    assert!(HandshakeError::BadVersion.to_string().contains("13"));
}

#[test]
fn response_is_101() {
    let mut out = BytesMut::new();
    write_response(&mut out, ACCEPT);
    assert_eq!(
        &out[..],
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        )
        .as_bytes()
    );
}
