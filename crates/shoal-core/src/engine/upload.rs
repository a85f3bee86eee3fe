//! Serving other peers: the queue of chunks to send, the requests waiting for a chunk
//! still on its way to us, and the upload cap.
//!
//! Bounded everywhere, with what happens when full:
//! - a peer with [`super::Config::max_queued_uploads_per_peer`] chunks queued or waiting
//!   gets `Busy` for more;
//! - past [`super::Config::max_upload_backlog`] of unsent data (the driver measures it)
//!   everyone gets `Busy`: the asker turns to another peer at once instead of queueing
//!   behind a slow uplink;
//! - requests waiting for a chunk still arriving are capped per segment; past that,
//!   `Busy`.

use std::{collections::VecDeque, time::Duration};

use bytes::Bytes;

use super::PeerKey;
use crate::{integrity::SegmentId, time::Instant};

/// A token bucket: `rate` bytes per second, bursts of up to `burst` bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        Self { rate: rate.max(1) as f64, burst, tokens: burst, refilled: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = self.refilled.max(now);
    }

    /// Takes `amount` tokens if there are enough. An amount larger than the burst is
    /// allowed once the bucket is full (so nothing is too large to ever pass).
    pub fn try_take(&mut self, amount: u64, now: Instant) -> bool {
        self.refill(now);
        let amount = amount as f64;
        if self.tokens >= amount || self.tokens >= self.burst {
            self.tokens -= amount;
            return true;
        }
        false
    }

    /// How long until [`TokenBucket::try_take`] of `amount` would succeed.
    pub fn time_until(&self, amount: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_since(self.refilled).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let need = (amount as f64).min(self.burst) - tokens;
        if need <= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(need / self.rate) }
    }
}

/// A chunk on its way out.
#[derive(Debug, Clone)]
pub(crate) struct Upload<P> {
    pub peer: P,
    pub id: u32,
    pub segment: SegmentId,
    pub chunk: u32,
    pub data: Bytes,
}

/// A request for a chunk we do not hold yet but are fetching from the origin.
#[derive(Debug, Clone)]
pub(crate) struct Deferred<P> {
    pub peer: P,
    pub id: u32,
    pub segment: SegmentId,
    pub chunk: u32,
    /// Send the record first (we had none when asked).
    pub with_record: bool,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Uploads<P> {
    pub queue: VecDeque<Upload<P>>,
    pub deferred: Vec<Deferred<P>>,
    pub bucket: Option<TokenBucket>,
}

impl<P: PeerKey> Uploads<P> {
    pub fn new(rate_limit: Option<u64>, now: Instant) -> Self {
        Self { queue: VecDeque::new(), deferred: Vec::new(), bucket: rate_limit.map(|r| Self::bucket(r, now)) }
    }

    /// Bursts of a quarter second's worth (a larger chunk still passes once the bucket
    /// is full, and is paid for after).
    fn bucket(rate: u64, now: Instant) -> TokenBucket {
        TokenBucket::new(rate, (rate / 4).max(16 * 1024), now)
    }

    pub fn set_rate_limit(&mut self, rate_limit: Option<u64>, now: Instant) {
        self.bucket = rate_limit.map(|r| Self::bucket(r, now));
    }

    /// Chunks queued for or waiting on behalf of `peer`.
    pub fn pending_for(&self, peer: &P) -> usize {
        self.queue.iter().filter(|u| u.peer == *peer).count() + self.deferred.iter().filter(|d| d.peer == *peer).count()
    }

    /// Bytes queued, plus `deferred_chunk` for each deferred request.
    pub fn promised_bytes(&self, deferred_chunk: u64) -> u64 {
        self.queue.iter().map(|u| u.data.len() as u64).sum::<u64>() + self.deferred.len() as u64 * deferred_chunk
    }

    pub fn deferred_for_segment(&self, segment: SegmentId) -> usize {
        self.deferred.iter().filter(|d| d.segment == segment).count()
    }

    /// Drops what was queued or deferred for request `id` of `peer`; true if anything was.
    pub fn cancel(&mut self, peer: &P, id: u32) -> bool {
        let before = self.queue.len() + self.deferred.len();
        self.queue.retain(|u| !(u.peer == *peer && u.id == id));
        self.deferred.retain(|d| !(d.peer == *peer && d.id == id));
        before != self.queue.len() + self.deferred.len()
    }

    /// Forgets everything for `peer`.
    pub fn forget_peer(&mut self, peer: &P) {
        self.queue.retain(|u| u.peer != *peer);
        self.deferred.retain(|d| d.peer != *peer);
    }

    /// Forgets the deferred requests for `segment`, returning them (to be refused).
    pub fn take_deferred_segment(&mut self, segment: SegmentId) -> Vec<Deferred<P>> {
        let (taken, kept) = std::mem::take(&mut self.deferred).into_iter().partition(|d| d.segment == segment);
        self.deferred = kept;
        taken
    }

    /// The deferred requests `chunk` of `segment` answers.
    pub fn take_deferred_chunk(&mut self, segment: SegmentId, chunk: u32) -> Vec<Deferred<P>> {
        let (taken, kept) =
            std::mem::take(&mut self.deferred).into_iter().partition(|d| d.segment == segment && d.chunk == chunk);
        self.deferred = kept;
        taken
    }

    /// The next chunk the upload cap lets out now.
    pub fn next(&mut self, now: Instant) -> Option<Upload<P>> {
        let len = self.queue.front()?.data.len() as u64;
        if let Some(bucket) = &mut self.bucket
            && !bucket.try_take(len, now)
        {
            return None;
        }
        self.queue.pop_front()
    }

    /// When the cap lets the next chunk out, if something waits on it.
    pub fn next_release(&self, now: Instant) -> Option<Instant> {
        let front = self.queue.front()?;
        let bucket = self.bucket.as_ref()?;
        Some(now + bucket.time_until(front.data.len() as u64, now).max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    #[test]
    fn a_bucket_paces_to_its_rate_after_the_burst() {
        let mut bucket = TokenBucket::new(1000, 500, at(0));
        assert!(bucket.try_take(500, at(0)));
        assert!(!bucket.try_take(100, at(0)));
        assert_eq!(bucket.time_until(100, at(0)), Duration::from_millis(100));
        assert!(!bucket.try_take(100, at(99)));
        assert!(bucket.try_take(100, at(100)));
        // Never more than the burst, however long it waits.
        assert!(bucket.try_take(500, at(10_000)));
        assert!(!bucket.try_take(1, at(10_000)));
    }

    #[test]
    fn an_amount_over_the_burst_passes_from_a_full_bucket() {
        let mut bucket = TokenBucket::new(1000, 100, at(0));
        assert!(bucket.try_take(1000, at(0)));
        assert!(!bucket.try_take(1, at(500)));
        assert_eq!(bucket.time_until(1000, at(900)), Duration::from_millis(100));
        assert!(!bucket.try_take(1000, at(999)));
        assert!(bucket.try_take(1000, at(1000)));
    }

    #[test]
    fn cancel_and_forget_only_touch_their_peer() {
        let mut uploads: Uploads<u8> = Uploads::new(None, at(0));
        for (peer, id) in [(1, 1), (1, 2), (2, 1)] {
            uploads.queue.push_back(Upload {
                peer,
                id,
                segment: SegmentId(1),
                chunk: 0,
                data: Bytes::from_static(b"x"),
            });
        }
        uploads.deferred.push(Deferred { peer: 2, id: 9, segment: SegmentId(2), chunk: 0, with_record: false });
        assert!(uploads.cancel(&1, 2));
        assert!(!uploads.cancel(&1, 2));
        assert_eq!(uploads.pending_for(&1), 1);
        assert_eq!(uploads.pending_for(&2), 2);
        uploads.forget_peer(&2);
        assert_eq!(uploads.pending_for(&2), 0);
        assert_eq!(uploads.queue.len(), 1);
    }
}
