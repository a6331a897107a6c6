//! A min-priority queue for values that mostly arrive in order: a deque takes each value not
//! below its last (no sifting: offsets read in order, leases of one visibility, backoffs of
//! one length), a binary heap takes the rest, and the smaller front of the two comes out
//! first. Pops and pushes in order cost O(1) instead of a heap's O(log n) sift; anything else
//! costs what a heap costs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Smallest first.
#[derive(Debug, Clone)]
pub struct MinQueue<T: Ord + Copy> {
    run: VecDeque<T>,
    rest: BinaryHeap<Reverse<T>>,
}

impl<T: Ord + Copy> Default for MinQueue<T> {
    fn default() -> Self {
        Self {
            run: VecDeque::new(),
            rest: BinaryHeap::new(),
        }
    }
}

impl<T: Ord + Copy> MinQueue<T> {
    pub fn push(&mut self, v: T) {
        match self.run.back() {
            Some(&last) if v < last => self.rest.push(Reverse(v)),
            _ => self.run.push_back(v),
        }
    }

    /// The smallest value.
    pub fn peek(&self) -> Option<T> {
        match (self.run.front(), self.rest.peek()) {
            (Some(&a), Some(&Reverse(b))) => Some(a.min(b)),
            (Some(&a), None) => Some(a),
            (None, Some(&Reverse(b))) => Some(b),
            (None, None) => None,
        }
    }

    /// Removes and answers the smallest value.
    pub fn pop(&mut self) -> Option<T> {
        match (self.run.front(), self.rest.peek()) {
            (Some(&a), Some(&Reverse(b))) if b < a => self.rest.pop().map(|r| r.0),
            (Some(_), _) => self.run.pop_front(),
            (None, _) => self.rest.pop().map(|r| r.0),
        }
    }

    pub fn len(&self) -> usize {
        self.run.len() + self.rest.len()
    }

    /// Removes every value, keeping the memory.
    pub fn clear(&mut self) {
        self.run.clear();
        self.rest.clear();
    }
}

impl<T: Ord + Copy> FromIterator<T> for MinQueue<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut q = Self::default();
        for v in iter {
            q.push(v);
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order_whatever_the_push_order() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut q = MinQueue::default();
        let mut want = Vec::new();
        for i in 0..5000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly ascending, sometimes back in time, with repeats.
            let v = if x.is_multiple_of(5) { x % 1000 } else { i };
            q.push(v);
            want.push(v);
            if x.is_multiple_of(7) {
                want.sort_unstable();
                assert_eq!(q.peek(), Some(want[0]));
                assert_eq!(q.pop(), Some(want.remove(0)));
            }
        }
        want.sort_unstable();
        assert_eq!(q.len(), want.len());
        let mut got = Vec::new();
        while let Some(v) = q.pop() {
            got.push(v);
        }
        assert_eq!(got, want);
        assert!(q.len() == 0 && q.peek().is_none());
    }
}
