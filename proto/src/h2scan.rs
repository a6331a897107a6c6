//! A scanner of the HTTP/2 frames a client sends, beside the HTTP/2 implementation: it reads
//! only frame headers (after the connection preface) and counts the control frames that cost
//! the server work without ever producing a request (SETTINGS and PING, which must each be
//! acknowledged, and empty DATA or CONTINUATION frames; WINDOW_UPDATE is not counted, since a
//! client reading a large reply sends many). A token bucket allows
//! `rate` of them per second with a burst of `burst`; beyond it the connection is a flood and
//! the driver closes it with GOAWAY ENHANCE_YOUR_CALM. Sans-I/O: it is fed the bytes as they
//! are read.

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADER: usize = 9;

/// Frame types.
const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
#[cfg(test)]
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const ACK: u8 = 0x1;

/// Counts a client's control frames against a budget.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Preface bytes still to skip.
    preface: usize,
    /// A frame header being assembled.
    head: [u8; HEADER],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    tokens: f64,
    rate: f64,
    burst: f64,
    /// Milliseconds of the last refill.
    last_ms: u64,
    flooded: bool,
}

impl Scanner {
    /// A scanner allowing `rate` control frames per second, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            preface: PREFACE.len(),
            head: [0; HEADER],
            have: 0,
            skip: 0,
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last_ms: 0,
            flooded: false,
        }
    }

    /// Whether the budget was exceeded (it stays so).
    pub fn flooded(&self) -> bool {
        self.flooded
    }

    /// Scans `bytes` read at `now_ms` (a monotonic clock in milliseconds); returns whether the
    /// connection is a flood.
    pub fn feed(&mut self, mut bytes: &[u8], now_ms: u64) -> bool {
        if self.flooded {
            return true;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if elapsed > 0 {
            self.tokens = (self.tokens + self.rate * elapsed as f64 / 1000.0).min(self.burst);
            self.last_ms = now_ms;
        }
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER {
                self.have = 0;
                let h = self.head;
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                self.skip = len;
                if Self::costly(h[3], h[4], len) {
                    self.tokens -= 1.0;
                    if self.tokens < 0.0 {
                        self.flooded = true;
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Whether a frame costs work without progress: a SETTINGS or PING to acknowledge, or an
    /// empty DATA or CONTINUATION frame that ends nothing.
    fn costly(kind: u8, flags: u8, len: usize) -> bool {
        match kind {
            SETTINGS | PING => flags & ACK == 0,
            DATA => len == 0 && flags & 0x1 == 0,
            CONTINUATION => len == 0 && flags & 0x4 == 0,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let l = (payload.len() as u32).to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_burst_of_pings_beyond_the_budget_is_a_flood_at_any_split() {
        let mut input = PREFACE.to_vec();
        for _ in 0..10 {
            input.extend(frame(PING, 0, &[0; 8]));
        }
        for split in 0..input.len() {
            let mut s = Scanner::new(1, 9);
            let first = s.feed(&input[..split], 0);
            let second = s.feed(&input[split..], 0);
            // The 10th ping's header ends 9 frames of 17 bytes and a header after the preface.
            let tenth = PREFACE.len() + 9 * 17 + 9;
            assert_eq!(first, split >= tenth, "split {split}");
            assert!(second, "split {split}: the 10th ping floods");
        }
        let mut s = Scanner::new(1, 10);
        assert!(!s.feed(&input, 0), "10 pings fit a burst of 10");
    }

    #[test]
    fn acks_headers_and_data_do_not_count_and_the_budget_refills() {
        let mut s = Scanner::new(100, 2);
        let mut input = PREFACE.to_vec();
        for _ in 0..100 {
            input.extend(frame(PING, ACK, &[0; 8]));
            input.extend(frame(SETTINGS, ACK, &[]));
            input.extend(frame(0x1, 0x4, &[0x82; 20]));
            input.extend(frame(DATA, 0, b"payload"));
            input.extend(frame(DATA, 0x1, b""));
        }
        assert!(!s.feed(&input, 0));
        // Two settings fit the burst; the third only after time refills a token.
        assert!(!s.feed(&frame(SETTINGS, 0, &[]), 0));
        assert!(!s.feed(&frame(SETTINGS, 0, &[]), 0));
        assert!(!s.feed(&frame(SETTINGS, 0, &[]), 10));
        assert!(s.feed(&frame(SETTINGS, 0, &[]), 10));
        assert!(s.flooded() && s.feed(&[], 10_000), "a flood stays a flood");
        // Empty DATA and CONTINUATION frames that end nothing count; WINDOW_UPDATEs do not.
        let mut s = Scanner::new(1, 2);
        let mut e = PREFACE.to_vec();
        e.extend(frame(DATA, 0, b""));
        for _ in 0..100 {
            e.extend(frame(WINDOW_UPDATE, 0, &[0, 0, 0, 1]));
        }
        e.extend(frame(CONTINUATION, 0, b""));
        assert!(!s.feed(&e, 0));
        assert!(s.feed(&frame(DATA, 0, b""), 0));
    }

    #[test]
    fn large_payloads_are_skipped_not_parsed() {
        let mut s = Scanner::new(1, 1);
        let mut input = PREFACE.to_vec();
        // A DATA payload full of bytes that would look like PING headers.
        let fake: Vec<u8> = (0..100).flat_map(|_| frame(PING, 0, &[0; 8])).collect();
        input.extend(frame(DATA, 0, &fake));
        assert!(!s.feed(&input, 0));
    }
}
