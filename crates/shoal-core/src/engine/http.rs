//! HTTP fetches in flight, and how long the origin takes: the scheduler hands a segment
//! to HTTP when what is missing could only just still arrive over HTTP before its
//! deadline, at this viewer's measured origin speed.

use std::{collections::BTreeMap, time::Duration};

use crate::{integrity::SegmentId, time::Instant};

/// Time to first byte assumed before anything is measured.
const INITIAL_LATENCY: Duration = Duration::from_millis(100);
/// Throughput assumed before anything is measured, bytes per second (20 Mbit/s: a
/// modest broadband line; the first fetches measure the real one).
const INITIAL_THROUGHPUT: f64 = 2_500_000.0;
/// Weight of a new sample.
const ALPHA: f64 = 0.3;
/// Fetches at most this large measure latency; at least `LARGE`, throughput.
const SMALL: u64 = 64 * 1024;
const LARGE: u64 = 192 * 1024;

/// Why a fetch went to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Early seeding: a share of a new segment, to spread it.
    Early,
    /// Nobody has the segment.
    Seed,
    /// Due too soon for peers.
    Urgent,
    /// Peer download is off.
    NoP2p,
}

/// One HTTP fetch in flight.
#[derive(Debug, Clone)]
pub(crate) struct Fetch {
    pub segment: SegmentId,
    pub why: Why,
    pub started: Instant,
    /// Byte range, end exclusive; `None`: the whole segment.
    pub range: Option<(u64, u64)>,
}

#[derive(Debug)]
pub(crate) struct Http {
    pub inflight: BTreeMap<u64, Fetch>,
    next_id: u64,
    /// Smoothed time to first byte, and throughput after it.
    latency: Duration,
    throughput: f64,
    small: u32,
    large: u32,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            inflight: BTreeMap::new(),
            next_id: 0,
            latency: INITIAL_LATENCY,
            throughput: INITIAL_THROUGHPUT,
            small: 0,
            large: 0,
        }
    }
}

impl Http {
    pub fn start(&mut self, fetch: Fetch) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.inflight.insert(id, fetch);
        id
    }

    /// A fetch of `bytes` finished after `took`: learn from it. Small fetches (records,
    /// single chunks) are mostly latency: they teach the time to first byte. Large ones
    /// teach the throughput, over the time past that latency.
    pub fn finished(&mut self, bytes: u64, took: Duration) {
        let alpha = |samples: u32| if samples == 0 { 1.0 } else { ALPHA };
        if bytes <= SMALL {
            let a = alpha(self.small);
            self.latency = self.latency.mul_f64(1.0 - a) + took.mul_f64(a);
            self.small = self.small.saturating_add(1);
        } else if bytes >= LARGE {
            let transfer = took.saturating_sub(self.latency).max(took / 4).as_secs_f64().max(1e-3);
            let sample = bytes as f64 / transfer;
            let a = alpha(self.large);
            self.throughput = self.throughput * (1.0 - a) + sample * a;
            self.large = self.large.saturating_add(1);
        }
    }

    /// How long fetching `bytes` takes, as measured so far.
    pub fn expected_time(&self, bytes: u64) -> Duration {
        self.latency + Duration::from_secs_f64(bytes as f64 / self.throughput.max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_latency_and_throughput() {
        let mut http = Http::default();
        // A 40 ms origin at 5 MB/s; single chunks do not pass for its throughput.
        for _ in 0..20 {
            http.finished(500_000, Duration::from_millis(140));
            http.finished(65_536, Duration::from_millis(53));
            http.finished(20_000, Duration::from_millis(44));
        }
        let t = http.expected_time(1_000_000).as_secs_f64();
        assert!((0.22..0.28).contains(&t), "{t}");
    }
}
