//! The simulator's event queue: events in (time, sequence) order, in a calendar of
//! one-millisecond buckets.
//!
//! A run of 10,000 viewers keeps a few hundred thousand events pending and pops tens of
//! millions; a binary heap that large misses the cache on every level it sifts through.
//! Nearly every event lands within seconds of now, so it goes into the bucket of its
//! millisecond in a ring, and a bucket is sorted once, when time reaches it. Events
//! beyond the ring wait in a heap. The order is exactly a heap's: earliest first, and
//! among equal times, first scheduled first, so runs stay reproducible.

use std::{cmp::Reverse, collections::BinaryHeap};

use shoal_core::Instant;

/// Milliseconds the ring covers (a power of two).
const RING_MS: u64 = 8192;

/// A pending event: when, its scheduling order, and the event.
#[derive(Debug)]
pub struct Scheduled<T> {
    pub at: Instant,
    pub seq: u64,
    pub event: T,
}

impl<T> Scheduled<T> {
    fn key(&self) -> (Instant, u64) {
        (self.at, self.seq)
    }
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<T> Eq for Scheduled<T> {}
impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Scheduled<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

fn millisecond(at: Instant) -> u64 {
    at.as_micros() / 1000
}

pub struct EventQueue<T> {
    /// Bucket `m % RING_MS` holds the events of millisecond `m`, for
    /// `current_ms < m < current_ms + RING_MS`, unsorted.
    ring: Vec<Vec<Scheduled<T>>>,
    /// Events in the ring.
    in_ring: usize,
    /// The millisecond being drained.
    current_ms: u64,
    /// Its events, sorted latest first (the next one is at the end).
    current: Vec<Scheduled<T>>,
    /// Events at or beyond the ring's end when scheduled.
    later: BinaryHeap<Reverse<Scheduled<T>>>,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        Self {
            ring: (0..RING_MS).map(|_| Vec::new()).collect(),
            in_ring: 0,
            current_ms: 0,
            current: Vec::new(),
            later: BinaryHeap::new(),
        }
    }
}

impl<T> EventQueue<T> {
    /// Adds an event. `event.seq` must grow with every call, and `event.at` must not be
    /// earlier than the last event popped.
    pub fn push(&mut self, event: Scheduled<T>) {
        let ms = millisecond(event.at).max(self.current_ms);
        if ms == self.current_ms {
            let key = event.key();
            let at = self.current.partition_point(|e| e.key() > key);
            self.current.insert(at, event);
        } else if ms < self.current_ms + RING_MS {
            self.ring[(ms % RING_MS) as usize].push(event);
            self.in_ring += 1;
        } else {
            self.later.push(Reverse(event));
        }
    }

    /// The earliest event, if any.
    pub fn pop(&mut self) -> Option<Scheduled<T>> {
        loop {
            if let Some(event) = self.current.pop() {
                return Some(event);
            }
            if self.in_ring == 0 {
                // Nothing within the ring: jump straight to the next later event.
                let Reverse(next) = self.later.peek()?;
                self.current_ms = millisecond(next.at);
            } else {
                self.current_ms += 1;
            }
            let bucket = &mut self.ring[(self.current_ms % RING_MS) as usize];
            self.in_ring -= bucket.len();
            std::mem::swap(&mut self.current, bucket);
            while let Some(Reverse(next)) = self.later.peek()
                && millisecond(next.at) <= self.current_ms
            {
                let Reverse(next) = self.later.pop().expect("peeked");
                self.current.push(next);
            }
            self.current.sort_unstable_by_key(|e| Reverse(e.key()));
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Pops in the same order as a binary heap under a random mix of pushes and pops,
    /// with times from "now" to far beyond the ring.
    #[test]
    fn pops_in_the_order_a_heap_does() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut queue = EventQueue::default();
        let mut heap = BinaryHeap::new();
        let mut now = 0u64;
        let mut seq = 0u64;
        for round in 0..200_000u32 {
            if rng.gen_bool(0.55) {
                seq += 1;
                let ahead = match rng.gen_range(0..10) {
                    0 => 0,
                    1 => rng.gen_range(0..1_000),
                    2 => rng.gen_range(0..60_000_000),
                    _ => rng.gen_range(0..50_000),
                };
                let at = Instant::from_micros(now + ahead);
                queue.push(Scheduled { at, seq, event: round });
                heap.push(Reverse((at, seq, round)));
            } else {
                let expected = heap.pop().map(|Reverse(e)| e);
                assert_eq!(queue.pop().map(|e| (e.at, e.seq, e.event)), expected);
                if let Some((at, _, _)) = expected {
                    now = at.as_micros();
                }
            }
        }
        while let Some(Reverse(expected)) = heap.pop() {
            assert_eq!(queue.pop().map(|e| (e.at, e.seq, e.event)), Some(expected));
        }
        assert!(queue.pop().is_none());
    }
}
