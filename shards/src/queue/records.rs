//! The records a partition's window holds, by offset: a ring that starts at the lowest held
//! offset, with a slot per offset up to the highest (the window bounds that span). Records
//! arrive in offset order and leave in any order; the ring's front moves past the ones gone.
//! It replaces a hash map whose inserts and removals were a visible share of leasing and
//! acking.

use kateway_core::Delivered;
use std::collections::VecDeque;

/// One partition's held records.
#[derive(Default)]
pub struct Records {
    /// The offset of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<Delivered>>,
    len: usize,
}

impl Records {
    /// The record at `offset`, if held.
    pub fn get(&self, offset: u64) -> Option<&Delivered> {
        let i = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        self.slots.get(i)?.as_ref()
    }

    /// Holds `r` at its offset (replacing one held there).
    pub fn insert(&mut self, r: Delivered) {
        let offset = r.offset;
        if self.len == 0 {
            self.slots.clear();
            self.base = offset;
        }
        if offset < self.base {
            // Before the front (not expected: records arrive in order): open slots for it.
            for _ in offset..self.base {
                self.slots.push_front(None);
            }
            self.base = offset;
        }
        let i = (offset - self.base) as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(r).is_none() {
            self.len += 1;
        }
    }

    /// Removes and answers the record at `offset`.
    #[cfg(test)]
    pub fn remove(&mut self, offset: u64) -> Option<Delivered> {
        let i = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        let r = self.slots.get_mut(i)?.take()?;
        self.forgotten();
        Some(r)
    }

    /// Drops the record at `offset` where it lies (no copy of it out); answers its payload's
    /// length.
    pub fn forget(&mut self, offset: u64) -> Option<usize> {
        let i = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        let slot = self.slots.get_mut(i)?;
        let n = slot.as_ref()?.value.len();
        *slot = None;
        self.forgotten();
        Some(n)
    }

    /// One record fewer: the ring's front moves past the empty slots.
    fn forgotten(&mut self) {
        self.len -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// The payload bytes held.
    pub fn bytes(&self) -> usize {
        self.slots.iter().flatten().map(|r| r.value.len()).sum()
    }

    /// How many records are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: u64) -> Delivered {
        Delivered {
            partition: 0,
            offset,
            timestamp: 0,
            key: bytes::Bytes::new(),
            tags: bytes::Bytes::new(),
            value: bytes::Bytes::from(vec![0; offset as usize % 7]),
            leased: None,
        }
    }

    #[test]
    fn a_slot_is_128_bytes() {
        // The memory docs/performance.md gives per slot.
        assert_eq!(std::mem::size_of::<Option<Delivered>>(), 128);
    }

    #[test]
    fn holds_by_offset_and_forgets_in_any_order() {
        let mut r = Records::default();
        for o in [10, 11, 13, 14] {
            r.insert(rec(o));
        }
        assert_eq!(r.len(), 4);
        assert!(r.get(12).is_none() && r.get(9).is_none() && r.get(15).is_none());
        assert_eq!(r.get(13).map(|d| d.offset), Some(13));
        assert_eq!(r.remove(13).map(|d| d.offset), Some(13));
        assert!(r.remove(13).is_none());
        assert_eq!(r.remove(10).map(|d| d.offset), Some(10));
        assert_eq!(r.bytes(), 4, "11 holds 4 bytes, 14 none");
        // Forgotten in place: its payload's length comes back.
        assert_eq!(r.forget(11), Some(4));
        assert_eq!(r.forget(11), None);
        assert_eq!(r.remove(14).map(|d| d.offset), Some(14));
        assert_eq!((r.len(), r.slots.len()), (0, 0));
        // Empty, it starts again wherever the next record is.
        r.insert(rec(100));
        r.insert(rec(98));
        assert_eq!(r.get(98).map(|d| d.offset), Some(98));
        assert_eq!(r.get(100).map(|d| d.offset), Some(100));
        assert_eq!(r.len(), 2);
        r.insert(rec(100));
        assert_eq!(r.len(), 2);
    }
}
