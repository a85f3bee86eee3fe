//! What we know of one neighbour: what it holds and fetches (only inside our window),
//! how fast it delivers to us, and whether it keeps its word.

use std::time::Duration;

use crate::{
    availability::{ChunkSet, SegmentSet},
    integrity::SegmentId,
    time::Instant,
    vecmap::VecMap,
};

/// Most segments a neighbour may describe chunk by chunk at once (a live window holds
/// a handful; VOD prefetch a few more). Past it, the oldest description is dropped.
pub(crate) const MAX_PARTIAL_PER_PEER: usize = 32;

/// Rate assumed for peers not yet measured: optimistic, so new peers get tried.
pub(crate) const UNMEASURED_RATE: f64 = 2_000_000.0;
/// Weight of a new throughput sample.
const RATE_ALPHA: f64 = 0.3;

/// A neighbour is cut off as unhelpful when it has failed at least this many of our
/// requests (timeouts, `Busy`, `Absent` for what it announced) without delivering one
/// chunk, for at least [`UNHELPFUL_AFTER`]: announcing everything and serving nothing
/// would otherwise keep every page it poisons waiting on it.
pub(crate) const UNHELPFUL_FAILURES: u32 = 24;
pub(crate) const UNHELPFUL_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Peer {
    /// Said `Hello` with our stream and version.
    pub hello: bool,
    pub have: SegmentSet,
    /// Segments it fetches from the origin (it defers our requests until they arrive).
    pub fetching: SegmentSet,
    /// Chunks it holds of segments it is still fetching.
    pub partial: VecMap<SegmentId, ChunkSet>,
    /// Chunks it fetches from the origin now (it defers our requests until they arrive).
    pub incoming: VecMap<SegmentId, ChunkSet>,
    /// Bytes per second it delivered to us, exponentially weighted; 0 until measured.
    pub rate: f64,
    /// Not asked anything before this (after a timeout or `Busy`).
    pub cooldown_until: Instant,
    /// Consecutive `Busy` answers: each doubles the next backoff.
    pub busy_streak: u32,
    pub delivered: u64,
    /// Failed requests since its last delivery.
    pub failures: u32,
    /// When the current run of failures started.
    pub failing_since: Option<Instant>,
}

impl Peer {
    pub fn new() -> Self {
        Self {
            hello: false,
            have: SegmentSet::new(),
            fetching: SegmentSet::new(),
            partial: VecMap::new(),
            incoming: VecMap::new(),
            rate: 0.0,
            cooldown_until: Instant::ZERO,
            busy_streak: 0,
            delivered: 0,
            failures: 0,
            failing_since: None,
        }
    }

    /// Holds or is getting at least part of `segment`.
    pub fn offers(&self, segment: SegmentId) -> bool {
        self.have.contains(segment)
            || self.fetching.contains(segment)
            || self.partial.contains_key(&segment)
            || self.incoming.contains_key(&segment)
    }

    /// Holds `chunk` of `segment` now (not just fetching it).
    pub fn holds_chunk(&self, segment: SegmentId, chunk: u32) -> bool {
        // (What it fetches from the origin does not count: it holds it only later.)
        self.have.contains(segment) || self.partial.get(&segment).is_some_and(|c| c.contains(chunk))
    }

    pub fn effective_rate(&self) -> f64 {
        if self.rate == 0.0 { UNMEASURED_RATE } else { self.rate }
    }

    /// How many requests of `chunk_bytes` to keep outstanding with it: half a second of
    /// its measured rate (enough to hide the round trip, not so many that they queue
    /// behind each other for long), 2 until measured, within `1..=max`.
    pub fn request_window(&self, chunk_bytes: f64, max: usize) -> usize {
        if self.rate == 0.0 {
            return 2.min(max);
        }
        ((self.rate * 0.5 / chunk_bytes.max(1.0)).ceil() as usize).clamp(1, max)
    }

    /// Forgets what it said about `segment`.
    pub fn forget(&mut self, segment: SegmentId) {
        self.have.remove(segment);
        self.fetching.remove(segment);
        self.partial.remove(&segment);
        self.incoming.remove(&segment);
    }

    /// Keeps only what lies within `[low, high]`.
    pub fn restrict(&mut self, low: SegmentId, high: SegmentId) {
        for set in [&mut self.have, &mut self.fetching] {
            set.remove_below(low);
            set.remove_above(high);
        }
        self.partial.retain(|id, _| (low..=high).contains(id));
        self.incoming.retain(|id, _| (low..=high).contains(id));
    }

    pub fn set_partial(&mut self, segment: SegmentId, chunks: ChunkSet) {
        self.partial.insert(segment, chunks);
        while self.partial.len() > MAX_PARTIAL_PER_PEER {
            self.partial.pop_first();
        }
    }

    /// It fetches `chunks` of `segment` from the origin (all of it when empty).
    pub fn set_incoming(&mut self, segment: SegmentId, chunks: ChunkSet) {
        if chunks.is_empty() {
            self.fetching.insert(segment);
            return;
        }
        self.incoming.insert(segment, chunks);
        while self.incoming.len() > MAX_PARTIAL_PER_PEER {
            self.incoming.pop_first();
        }
    }

    /// It answered `Busy` and asked to be left alone for `retry`.
    pub fn busy_for(&mut self, now: Instant, retry: Duration) {
        self.busy_streak = self.busy_streak.saturating_add(1);
        self.cooldown_until = now + retry;
    }

    /// A chunk of `bytes` arrived `elapsed` after we asked.
    pub fn delivered(&mut self, bytes: u64, elapsed: Duration) {
        let sample = bytes as f64 / elapsed.as_secs_f64().max(1e-4);
        self.rate = if self.rate == 0.0 { sample } else { self.rate * (1.0 - RATE_ALPHA) + sample * RATE_ALPHA };
        self.delivered += bytes;
        self.failures = 0;
        self.failing_since = None;
        self.busy_streak = 0;
    }

    /// A request failed; returns true when the peer has become unhelpful.
    pub fn failed(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let since = *self.failing_since.get_or_insert(now);
        self.delivered == 0 && self.failures >= UNHELPFUL_FAILURES && now.saturating_since(since) >= UNHELPFUL_AFTER
    }

    /// It answered `Busy`: leave it alone for a while, longer each time in a row.
    pub fn busy(&mut self, now: Instant, base: Duration) {
        self.busy_streak = self.busy_streak.saturating_add(1);
        let backoff = base * 2u32.saturating_pow(self.busy_streak.min(5) - 1);
        self.cooldown_until = now + backoff;
    }

    /// A request timed out: it is slower than it claimed.
    pub fn timed_out(&mut self, now: Instant, cooldown: Duration) {
        self.cooldown_until = now + cooldown;
        self.rate *= 0.5;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcing_and_never_delivering_makes_a_peer_unhelpful() {
        let mut peer = Peer::new();
        let start = Instant::from_micros(1_000_000);
        for i in 0..UNHELPFUL_FAILURES - 1 {
            assert!(!peer.failed(start + Duration::from_secs(u64::from(i))));
        }
        assert!(peer.failed(start + UNHELPFUL_AFTER));
        // One delivery resets the count: a busy but honest peer is never cut off.
        let mut honest = Peer::new();
        for i in 0..100 {
            if i % 30 == 0 {
                honest.delivered(1000, Duration::from_millis(10));
            }
            assert!(!honest.failed(start + Duration::from_secs(i)));
        }
    }

    #[test]
    fn busy_backoff_doubles_and_is_capped() {
        let mut peer = Peer::new();
        let now = Instant::ZERO;
        let base = Duration::from_millis(100);
        let mut seen = Vec::new();
        for _ in 0..8 {
            peer.busy(now, base);
            seen.push(peer.cooldown_until.saturating_since(now).as_millis());
        }
        assert_eq!(seen, vec![100, 200, 400, 800, 1600, 1600, 1600, 1600]);
    }

    #[test]
    fn restrict_keeps_the_window_only() {
        let mut peer = Peer::new();
        for id in [1, 5, 9, 700] {
            peer.have.insert(SegmentId(id));
            peer.set_partial(SegmentId(id), ChunkSet::new());
        }
        peer.restrict(SegmentId(5), SegmentId(9));
        assert_eq!(peer.have.iter().collect::<Vec<_>>(), vec![SegmentId(5), SegmentId(9)]);
        assert_eq!(peer.partial.keys().copied().collect::<Vec<_>>(), vec![SegmentId(5), SegmentId(9)]);
    }
}
