//! LEB128 varints of the queue's binary forms (checkpoints and batch receipts): 7 bits a byte,
//! low bits first, at most 10 bytes for a `u64`.

/// Why no varint could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Short {
    /// The bytes end inside it.
    Truncated,
    /// Its tenth byte carries more than a `u64` holds.
    Overflow,
}

/// Appends `v`.
pub(super) fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one from the front of `buf`, moving `buf` past it.
pub(super) fn take(buf: &mut &[u8]) -> Result<u64, Short> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return Err(Short::Overflow);
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Ok(v);
        }
    }
    Err(Short::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_short_or_oversized() {
        let mut b = Vec::new();
        let values = [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        for v in values {
            put(&mut b, v);
        }
        let mut r = &b[..];
        for v in values {
            assert_eq!(take(&mut r), Ok(v));
        }
        assert_eq!(take(&mut r), Err(Short::Truncated));
        assert_eq!(take(&mut &[0x80u8][..]), Err(Short::Truncated));
        assert_eq!(
            take(&mut &[0xffu8; 9].iter().chain(&[2]).copied().collect::<Vec<_>>()[..]),
            Err(Short::Overflow)
        );
    }
}
