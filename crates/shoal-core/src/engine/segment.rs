//! The segments this peer is busy with: wanted, prefetched, or kept to share. Entries
//! exist only for segments the player wants, we prefetch, or we hold — never because a
//! neighbour mentioned one — and there are never more than [`MAX_SEGMENTS`].

use std::sync::Arc;

use crate::vecmap::VecMap;

use bytes::Bytes;

use crate::{
    availability::ChunkSet,
    integrity::{SegmentId, SignedRecord},
    time::Instant,
};

/// Most segment entries held. A live window is a handful; VOD with a long buffer a few
/// dozen. Past this, the least recently used entry that nothing waits on goes.
pub(crate) const MAX_SEGMENTS: usize = 256;

#[derive(Debug, Clone)]
pub(crate) enum ChunkState {
    Missing,
    /// Covered by HTTP fetch `id`.
    Http(u64),
    Have(Bytes),
}

/// What neighbours were last told about a segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Announced {
    /// Chunks announced as coming from the origin (`Fetching`).
    pub fetching: ChunkSet,
    /// `Fetching` of the whole segment (before its record was known) was sent.
    pub fetching_whole: bool,
    /// Chunks covered by the last `HaveChunks`.
    pub held: ChunkSet,
    /// `Have` was sent.
    pub complete: bool,
}

impl Announced {
    pub fn anything(&self) -> bool {
        self.fetching_whole || !self.fetching.is_empty() || !self.held.is_empty() || self.complete
    }
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub record: Option<Arc<SignedRecord>>,
    /// One state per chunk; empty until the record is known.
    pub chunks: Vec<ChunkState>,
    pub held: u32,
    pub held_bytes: u64,
    pub from_peers: u64,
    pub from_http: u64,
    /// When this peer fetches the segment from HTTP itself if nobody else has it.
    pub seed_at: Instant,
    pub http_attempts: u32,
    /// HTTP fetches of (parts of) this segment in flight.
    pub http: Vec<u64>,
    pub announced: Announced,
    pub last_used: Instant,
    /// Early seeding was decided for it (done, or none needed).
    pub early_done: bool,
    /// Bytes of it that came by last-moment HTTP (feedback for the early share).
    pub late_bytes: u64,
    /// Whether peers had a fair chance at it: wanted well before HTTP had to take over.
    pub p2p_window: bool,
}

impl Segment {
    pub fn new(now: Instant, seed_at: Instant) -> Self {
        Self {
            record: None,
            chunks: Vec::new(),
            held: 0,
            held_bytes: 0,
            from_peers: 0,
            from_http: 0,
            seed_at,
            http_attempts: 0,
            http: Vec::new(),
            announced: Announced::default(),
            last_used: now,
            early_done: false,
            late_bytes: 0,
            p2p_window: false,
        }
    }

    pub fn complete(&self) -> bool {
        !self.chunks.is_empty() && self.held as usize == self.chunks.len()
    }

    pub fn size(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.record.size)
    }

    pub fn held_chunks(&self) -> ChunkSet {
        ChunkSet::from_chunks(
            self.chunks.iter().enumerate().filter(|(_, c)| matches!(c, ChunkState::Have(_))).map(|(i, _)| i as u32),
        )
    }

    /// Chunks an HTTP fetch covers now.
    pub fn http_chunks(&self) -> ChunkSet {
        ChunkSet::from_chunks(
            self.chunks.iter().enumerate().filter(|(_, c)| matches!(c, ChunkState::Http(_))).map(|(i, _)| i as u32),
        )
    }

    /// Chunks neither held nor covered by an HTTP fetch.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().enumerate().filter(|(_, c)| matches!(c, ChunkState::Missing)).map(|(i, _)| i as u32)
    }

    /// Bytes not held yet.
    pub fn missing_bytes(&self) -> u64 {
        self.size().saturating_sub(self.held_bytes)
    }

    /// The segment's chunks, in order (only when complete).
    pub fn data(&self) -> Vec<Bytes> {
        self.chunks.iter().filter_map(|c| if let ChunkState::Have(d) = c { Some(d.clone()) } else { None }).collect()
    }

    /// Stores a verified chunk; false if it was already held.
    pub fn store(&mut self, index: u32, data: Bytes) -> bool {
        let Some(slot) = self.chunks.get_mut(index as usize) else { return false };
        if matches!(slot, ChunkState::Have(_)) {
            return false;
        }
        self.held_bytes += data.len() as u64;
        *slot = ChunkState::Have(data);
        self.held += 1;
        true
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    pub map: VecMap<SegmentId, Segment>,
    /// Bytes of chunk data held, in all.
    pub cached_bytes: u64,
}

impl Segments {
    pub fn get(&self, id: SegmentId) -> Option<&Segment> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: SegmentId) -> Option<&mut Segment> {
        self.map.get_mut(&id)
    }

    /// Chunk size of the newest segment with a record (64 KiB before any).
    pub fn typical_chunk(&self) -> u64 {
        self.map
            .values()
            .rev()
            .find_map(|s| s.record.as_ref().map(|r| u64::from(r.record.chunk_size)))
            .unwrap_or(65_536)
    }

    pub fn contains(&self, id: SegmentId) -> bool {
        self.map.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Removes an entry, returning it; keeps the byte count right.
    pub fn remove(&mut self, id: SegmentId) -> Option<Segment> {
        let entry = self.map.remove(&id)?;
        self.cached_bytes -= entry.held_bytes;
        Some(entry)
    }

    /// Stores a verified chunk; false if it was already held.
    pub fn store(&mut self, id: SegmentId, index: u32, data: Bytes) -> bool {
        let len = data.len() as u64;
        let stored = self.map.get_mut(&id).is_some_and(|s| s.store(index, data));
        if stored {
            self.cached_bytes += len;
        }
        stored
    }
}
