//! The one table of our outstanding chunk requests to peers. Everything else asks it:
//! whether a chunk is requested and from whom, how many requests a peer holds, which
//! requests have run out of time. Nothing else records a request, so nothing can drift
//! out of step with it.

use super::PeerKey;
use crate::{integrity::SegmentId, time::Instant, vecmap::VecMap};

/// One chunk asked of one peer.
#[derive(Debug, Clone)]
pub(crate) struct Request<P> {
    pub peer: P,
    pub segment: SegmentId,
    pub chunk: u32,
    pub sent: Instant,
    /// When it is given up as lost.
    pub expires: Instant,
    /// It asked for the segment's record first.
    pub with_record: bool,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Requests<P> {
    by_id: VecMap<u32, Request<P>>,
    by_chunk: VecMap<(SegmentId, u32), u32>,
    per_peer: VecMap<P, usize>,
    next_id: u32,
}

impl<P: PeerKey> Default for Requests<P> {
    fn default() -> Self {
        Self { by_id: VecMap::new(), by_chunk: VecMap::new(), per_peer: VecMap::new(), next_id: 0 }
    }
}

impl<P: PeerKey> Requests<P> {
    /// Records a new request and returns its id.
    pub fn insert(&mut self, request: Request<P>) -> u32 {
        // Ids wrap after 2^32 requests; skip one still outstanding (never more than a
        // few dozen are).
        while self.by_id.contains_key(&self.next_id) {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.by_chunk.insert((request.segment, request.chunk), id);
        *self.per_peer.get_or_default(request.peer) += 1;
        self.by_id.insert(id, request);
        id
    }

    pub fn get(&self, id: u32) -> Option<&Request<P>> {
        self.by_id.get(&id)
    }

    /// Forgets request `id` (answered, refused, cancelled, expired).
    pub fn remove(&mut self, id: u32) -> Option<Request<P>> {
        let request = self.by_id.remove(&id)?;
        if self.by_chunk.get(&(request.segment, request.chunk)) == Some(&id) {
            self.by_chunk.remove(&(request.segment, request.chunk));
        }
        if let Some(count) = self.per_peer.get_mut(&request.peer) {
            *count -= 1;
            if *count == 0 {
                self.per_peer.remove(&request.peer);
            }
        }
        Some(request)
    }

    pub fn is_requested(&self, segment: SegmentId, chunk: u32) -> bool {
        self.by_chunk.contains_key(&(segment, chunk))
    }

    /// Requests outstanding to `peer`.
    pub fn inflight(&self, peer: &P) -> usize {
        self.per_peer.get(peer).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Ids of the requests to `peer`.
    pub fn of_peer(&self, peer: &P) -> Vec<u32> {
        if !self.per_peer.contains_key(peer) {
            return Vec::new();
        }
        self.by_id.iter().filter(|(_, r)| r.peer == *peer).map(|(id, _)| *id).collect()
    }

    /// Ids of the requests for chunks of `segment`.
    pub fn of_segment(&self, segment: SegmentId) -> Vec<u32> {
        self.by_chunk.range((segment, 0)..=(segment, u32::MAX)).map(|(_, id)| *id).collect()
    }

    /// Whether any chunk of `segment` is requested.
    pub fn any_for_segment(&self, segment: SegmentId) -> bool {
        self.by_chunk.range((segment, 0)..=(segment, u32::MAX)).next().is_some()
    }

    /// Ids of requests expired at `now`.
    pub fn expired(&self, now: Instant) -> Vec<u32> {
        self.by_id.iter().filter(|(_, r)| r.expires <= now).map(|(id, _)| *id).collect()
    }

    /// The earliest expiry.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_id.values().map(|r| r.expires).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn request(peer: u8, segment: u64, chunk: u32, at_ms: u64) -> Request<u8> {
        let sent = Instant::from_micros(at_ms * 1000);
        Request {
            peer,
            segment: SegmentId(segment),
            chunk,
            sent,
            expires: sent + Duration::from_secs(1),
            with_record: false,
        }
    }

    #[test]
    fn indexes_stay_in_step() {
        let mut table = Requests::default();
        let a = table.insert(request(1, 5, 0, 0));
        let b = table.insert(request(1, 5, 1, 0));
        let c = table.insert(request(2, 6, 0, 500));
        assert_eq!(table.inflight(&1), 2);
        assert_eq!(table.of_segment(SegmentId(5)), vec![a, b]);
        assert!(table.is_requested(SegmentId(6), 0) && table.get(c).is_some());
        assert_eq!(table.expired(Instant::from_micros(1_000_000)), vec![a, b]);
        assert_eq!(table.next_expiry(), Some(Instant::from_micros(1_000_000)));
        table.remove(a);
        assert_eq!(table.inflight(&1), 1);
        assert!(!table.is_requested(SegmentId(5), 0));
        assert_eq!(table.of_peer(&1), vec![b]);
        table.remove(b);
        table.remove(c);
        assert_eq!(table.len(), 0);
        assert_eq!(table.inflight(&1), 0);
        assert!(table.per_peer.is_empty() && table.by_chunk.is_empty());
    }

    #[test]
    fn ids_skip_outstanding_ones_when_they_wrap() {
        let mut table = Requests::default();
        let first = table.insert(request(1, 1, 0, 0));
        table.next_id = first;
        let second = table.insert(request(1, 1, 1, 0));
        assert_ne!(first, second);
    }
}
