//! What the demo's live streams (HLS in [`crate::demo`], DASH in [`crate::dash_live`])
//! share: the clock that plays a VOD rendition out as a live stream, and the publisher
//! that signs each live segment's record when it is first asked for.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use shoal_core::Publisher;

use crate::{NodeError, publish};

/// Segments a live playlist lists (and that exist from the start, so players can begin
/// a few segments back at once).
pub(crate) const WINDOW: u64 = 6;
/// Records kept signed, per swarm.
const RECORDS_PER_SWARM: usize = 64;

/// The live edge: segment 0 became available `WINDOW` segments before the node started,
/// and one more completes every segment duration.
pub(crate) struct LiveClock {
    started: Instant,
    segment: Duration,
}

impl LiveClock {
    pub fn start(segment: Duration) -> Self {
        Self { started: Instant::now(), segment }
    }

    pub fn segment(&self) -> Duration {
        self.segment
    }

    /// The newest live sequence number whose segment is complete.
    pub fn latest(&self) -> u64 {
        (self.started.elapsed().as_secs_f64() / self.segment.as_secs_f64()) as u64 + WINDOW
    }
}

/// The publisher of the demo's streams and the records it signed lately.
pub(crate) struct LiveRecords {
    publisher: Publisher,
    /// By sequence first, so the oldest go first whatever their swarm.
    cache: Mutex<BTreeMap<(u64, String), Bytes>>,
    capacity: usize,
}

impl LiveRecords {
    /// The publisher whose key is at `key_path` (created on first run), for `swarms`
    /// swarms.
    pub fn load(key_path: &Path, swarms: usize) -> Result<Self, NodeError> {
        let secret = publish::load_or_create_secret(key_path)?;
        Ok(Self {
            publisher: Publisher::from_secret(secret),
            cache: Mutex::new(BTreeMap::new()),
            capacity: RECORDS_PER_SWARM * swarms.max(1),
        })
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The signed record of live segment `n` of `swarm`, as one wire frame; `data` gives
    /// the segment's bytes if it must be signed now.
    pub fn record(&self, swarm: &str, n: u64, data: impl FnOnce() -> Bytes) -> Bytes {
        let key = (n, swarm.to_owned());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bytes) = cache.get(&key) {
            return bytes.clone();
        }
        let bytes = publish::sign_segment(&self.publisher, swarm, n, &data(), None);
        cache.insert(key, bytes.clone());
        while cache.len() > self.capacity {
            cache.pop_first();
        }
        bytes
    }

    /// `publisher.json`: what a page of the demo is configured with (the key, and the
    /// swarm or swarm template its integration joins).
    pub fn publisher_json(&self, swarm: &str) -> Response {
        let body = serde_json::json!({ "publicKey": self.publisher.public_key().to_hex(), "swarm": swarm });
        ([(header::CACHE_CONTROL, "no-cache")], axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_oldest_records_go_first_whatever_their_swarm() {
        let dir = tempfile::tempdir().unwrap();
        let records = LiveRecords::load(&dir.path().join("key"), 2).unwrap();
        let signed = std::cell::Cell::new(0);
        let data = || {
            signed.set(signed.get() + 1);
            Bytes::from_static(b"segment")
        };
        for n in 0..RECORDS_PER_SWARM as u64 + 10 {
            records.record("a", n, data);
            records.record("b", n, data);
        }
        let before = signed.get();
        // The newest of both swarms are kept; the oldest of both were dropped.
        records.record("a", RECORDS_PER_SWARM as u64 + 9, data);
        records.record("b", RECORDS_PER_SWARM as u64 + 9, data);
        assert_eq!(signed.get(), before);
        records.record("a", 0, data);
        assert_eq!(signed.get(), before + 1);
    }
}
