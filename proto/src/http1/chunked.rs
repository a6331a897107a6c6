//! Incremental decoder for `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1).
//! It consumes what it can from the input buffer, keeps its place between calls, and works the
//! same however the input is split.

use bytes::{Buf, BytesMut};

/// Why a chunked body was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkedError {
    /// The framing is broken.
    Invalid(&'static str),
    /// The decoded body exceeds the limit.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCrlf,
    Trailers,
    Done,
}

/// Decoder state for one chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    body: BytesMut,
    max: usize,
}

const MAX_LINE: usize = 4096;

impl ChunkedDecoder {
    /// The body bytes decoded so far (the allocation that holds them).
    pub fn held(&self) -> usize {
        self.body.capacity()
    }

    /// A decoder that refuses bodies over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            state: State::Size,
            body: BytesMut::new(),
            max,
        }
    }

    /// Consumes input from `buf`. Returns `Ok(true)` once the whole body (and trailers) is read.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<bool, ChunkedError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    let hex = line.split(|&b| b == b';').next().unwrap_or(&[]);
                    let hex = trim(hex);
                    if hex.is_empty() || hex.len() > 15 {
                        return Err(ChunkedError::Invalid("invalid chunk size"));
                    }
                    let mut n: u64 = 0;
                    for &b in hex {
                        let d = (b as char)
                            .to_digit(16)
                            .ok_or(ChunkedError::Invalid("invalid chunk size"))?;
                        n = n * 16 + d as u64;
                    }
                    if n == 0 {
                        self.state = State::Trailers;
                    } else {
                        if self.body.len() as u64 + n > self.max as u64 {
                            return Err(ChunkedError::TooLarge);
                        }
                        self.state = State::Data(n);
                    }
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let n = (left as usize).min(buf.len());
                    self.body.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCrlf
                    } else {
                        State::Data(left)
                    };
                }
                State::DataCrlf => {
                    if buf.len() < 2 {
                        if buf.len() == 1 && buf[0] != b'\r' {
                            return Err(ChunkedError::Invalid("missing CRLF after chunk data"));
                        }
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkedError::Invalid("missing CRLF after chunk data"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
                State::Done => return Ok(true),
            }
        }
    }

    /// The decoded body; call once `decode` returned `Ok(true)`.
    pub fn take_body(&mut self) -> BytesMut {
        std::mem::take(&mut self.body)
    }
}

/// Takes one CRLF-terminated line (without the CRLF), or `None` if it is not complete yet.
fn take_line(buf: &mut BytesMut) -> Result<Option<Vec<u8>>, ChunkedError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(ChunkedError::Invalid("chunk line not terminated by CRLF"));
            }
            let line = buf[..i - 1].to_vec();
            buf.advance(i + 1);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(ChunkedError::Invalid("chunk line too long")),
        None => Ok(None),
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Encodes `data` as one chunk of a chunked response body.
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Encodes the last chunk that ends a chunked response body.
pub fn encode_last(out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_split(input: &[u8], max: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkedError> {
        let mut whole = None;
        for split in 0..=input.len() {
            let mut d = ChunkedDecoder::new(max);
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&input[..split]);
            let mut done = d.decode(&mut buf)?;
            buf.extend_from_slice(&input[split..]);
            if !done {
                done = d.decode(&mut buf)?;
            }
            assert!(done, "split {split}");
            let got = (d.take_body().to_vec(), buf.to_vec());
            if let Some(w) = &whole {
                assert_eq!(w, &got, "split {split}");
            }
            whole = Some(got);
        }
        Ok(whole.unwrap())
    }

    #[test]
    fn decodes_at_every_split() {
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (body, rest) = run_split(input, 1024).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn rejects_bad_framing() {
        let mut d = ChunkedDecoder::new(1024);
        let mut b = BytesMut::from(&b"zz\r\n"[..]);
        assert!(matches!(d.decode(&mut b), Err(ChunkedError::Invalid(_))));
        let mut d = ChunkedDecoder::new(1024);
        let mut b = BytesMut::from(&b"3\r\nabcXY"[..]);
        assert!(matches!(d.decode(&mut b), Err(ChunkedError::Invalid(_))));
        let mut d = ChunkedDecoder::new(4);
        let mut b = BytesMut::from(&b"5\r\nhello\r\n0\r\n\r\n"[..]);
        assert_eq!(d.decode(&mut b), Err(ChunkedError::TooLarge));
    }

    #[test]
    fn encodes_round_trip() {
        let mut out = BytesMut::new();
        encode_chunk(&mut out, b"abc");
        encode_chunk(&mut out, &[7u8; 300]);
        encode_last(&mut out);
        let mut d = ChunkedDecoder::new(1 << 20);
        assert!(d.decode(&mut out).unwrap());
        let body = d.take_body();
        assert_eq!(&body[..3], b"abc");
        assert_eq!(body.len(), 303);
    }
}
