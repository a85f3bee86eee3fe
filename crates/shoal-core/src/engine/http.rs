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
/// Weight of a sample better than the estimate (worse ones are taken whole).
const RECOVER: f64 = 0.1;
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
    /// The last [`RECENT`] samples of each: the slowest of them is what a fallback
    /// plans for (an origin's tail, not its average, is what makes a viewer stall).
    recent_latency: std::collections::VecDeque<Duration>,
    recent_throughput: std::collections::VecDeque<f64>,
}

/// Samples remembered for [`Http::worst_time`].
const RECENT: usize = 32;

impl Default for Http {
    fn default() -> Self {
        Self {
            inflight: BTreeMap::new(),
            next_id: 0,
            latency: INITIAL_LATENCY,
            throughput: INITIAL_THROUGHPUT,
            small: 0,
            large: 0,
            recent_latency: std::collections::VecDeque::new(),
            recent_throughput: std::collections::VecDeque::new(),
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
    /// teach the throughput, over the time past that latency. Both estimates are
    /// pessimistic: a slower sample is taken at once, a faster one only slowly, so one
    /// slow response sends the next segments to HTTP earlier, not later.
    pub fn finished(&mut self, bytes: u64, took: Duration) {
        if bytes <= SMALL {
            push_recent(&mut self.recent_latency, took);
            self.latency = if self.small == 0 || took > self.latency {
                took
            } else {
                self.latency.mul_f64(1.0 - RECOVER) + took.mul_f64(RECOVER)
            };
            self.small = self.small.saturating_add(1);
        } else if bytes >= LARGE {
            let transfer = took.saturating_sub(self.latency).max(took / 4).as_secs_f64().max(1e-3);
            let sample = bytes as f64 / transfer;
            push_recent(&mut self.recent_throughput, sample);
            self.throughput = if self.large == 0 || sample < self.throughput {
                sample
            } else {
                self.throughput * (1.0 - RECOVER) + sample * RECOVER
            };
            self.large = self.large.saturating_add(1);
        }
    }

    /// How long fetching `bytes` takes, as measured so far (on the slow side).
    pub fn expected_time(&self, bytes: u64) -> Duration {
        self.latency + Duration::from_secs_f64(bytes as f64 / self.throughput.max(1.0))
    }

    /// How long fetching `bytes` took at worst lately: the slowest recent time to first
    /// byte plus the slowest recent throughput (no better than the estimates).
    pub fn worst_time(&self, bytes: u64) -> Duration {
        let latency = self.recent_latency.iter().copied().max().unwrap_or(self.latency).max(self.latency);
        let throughput =
            self.recent_throughput.iter().copied().fold(self.throughput, f64::min).max(1.0);
        latency + Duration::from_secs_f64(bytes as f64 / throughput)
    }
}

fn push_recent<T>(ring: &mut std::collections::VecDeque<T>, sample: T) {
    if ring.len() == RECENT {
        ring.pop_front();
    }
    ring.push_back(sample);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_latency_and_throughput() {
        let mut http = Http::default();
        // A 40 ms origin at 5 MB/s; single chunks do not pass for its throughput.
        for _ in 0..40 {
            http.finished(500_000, Duration::from_millis(140));
            http.finished(65_536, Duration::from_millis(53));
            http.finished(20_000, Duration::from_millis(44));
        }
        let t = http.expected_time(1_000_000).as_secs_f64();
        assert!((0.22..0.3).contains(&t), "{t}");
    }

    #[test]
    fn slowness_is_learnt_at_once_and_forgotten_slowly() {
        let mut http = Http::default();
        for _ in 0..40 {
            http.finished(500_000, Duration::from_millis(140));
            http.finished(20_000, Duration::from_millis(40));
        }
        let fast = http.expected_time(500_000);
        http.finished(500_000, Duration::from_millis(1400));
        let slow = http.expected_time(500_000);
        assert!(slow > fast * 5, "{fast:?} then {slow:?}");
        http.finished(500_000, Duration::from_millis(140));
        assert!(http.expected_time(500_000) > fast * 3, "one fast fetch does not undo it");
    }
}
