//! HTTP fetches in flight, and how long the origin takes: the scheduler hands a segment
//! to HTTP when what is missing could only just still arrive over HTTP before its
//! deadline, at this viewer's measured origin speed.

use std::time::Duration;

use crate::{integrity::SegmentId, time::Instant, vecmap::VecMap};

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
    /// The duplicate sent because this one was late (on the original), or the original
    /// this one duplicates.
    pub hedge: Option<u64>,
    pub original: Option<u64>,
    /// A duplicate was sent once: never again.
    pub hedged: bool,
    /// When it is late enough to hedge, fixed when it starts (estimates learnt while it
    /// runs must not move it past the deadline it was planned for).
    pub hedge_at: Instant,
}

impl Fetch {
    pub fn new(segment: SegmentId, why: Why, started: Instant, range: Option<(u64, u64)>) -> Self {
        Self { segment, why, started, range, hedge: None, original: None, hedged: false, hedge_at: started }
    }

    fn hedgeable(&self) -> bool {
        self.why != Why::Early && !self.hedged && self.original.is_none()
    }

    pub fn bytes(&self, segment_size: u64) -> u64 {
        self.range.map_or(segment_size, |(start, end)| end.saturating_sub(start))
    }
}

/// What a finished fetch settles.
pub(crate) struct Settled {
    pub fetch: Fetch,
    /// The id chunk states name (the original's, if this was its duplicate).
    pub canonical: u64,
    /// The other copy, still in flight: to be cancelled.
    pub other: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Http {
    pub inflight: VecMap<u64, Fetch>,
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
    /// The slowest of each, kept as samples come: the scheduler asks for it on every
    /// input, samples come a few times per segment.
    slowest_latency: Duration,
    slowest_throughput: f64,
}

/// Samples remembered for [`Http::worst_time`].
const RECENT: usize = 32;

impl Default for Http {
    fn default() -> Self {
        Self {
            inflight: VecMap::new(),
            next_id: 0,
            latency: INITIAL_LATENCY,
            throughput: INITIAL_THROUGHPUT,
            small: 0,
            large: 0,
            recent_latency: std::collections::VecDeque::new(),
            recent_throughput: std::collections::VecDeque::new(),
            slowest_latency: Duration::ZERO,
            slowest_throughput: f64::INFINITY,
        }
    }
}

impl Http {
    /// Starts tracking `fetch` of a segment of `segment_size` bytes that the player wants
    /// by `deadline` (if it does); returns its id.
    ///
    /// The duplicate goes out when the fetch is late against what the origin usually
    /// takes (twice its expected time), or earlier if waiting that long would leave it
    /// too little time to arrive before the deadline: the slowest recent fetch of twice
    /// its bytes, since the late copy still shares this viewer's downlink with it. A
    /// fetch that starts with less time than that left keeps the usual rule: sending its
    /// duplicate at once would double every late takeover (measured: 8 Mbit/s swarms
    /// with upload twice the bitrate fell from 0.92 to 0.79 of their offload bound), for
    /// the rare slow response it would save.
    pub fn start(&mut self, mut fetch: Fetch, segment_size: u64, deadline: Option<Instant>) -> u64 {
        let bytes = fetch.bytes(segment_size);
        fetch.hedge_at = fetch.started + self.hedge_delay(bytes);
        if let Some(deadline) = deadline {
            let latest = deadline - self.worst_time(bytes * 2);
            if latest > fetch.started + self.latency {
                fetch.hedge_at = fetch.hedge_at.min(latest);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.inflight.insert(id, fetch);
        id
    }

    /// How late a fetch of `bytes` is when it has not answered: twice its expected time,
    /// plus a little.
    pub fn hedge_delay(&self, bytes: u64) -> Duration {
        self.expected_time(bytes) * 2 + Duration::from_millis(50)
    }

    /// The fetches a player waits on that are late and have no duplicate yet.
    pub fn hedges_due(&self, now: Instant) -> Vec<u64> {
        self.inflight.iter().filter(|(_, f)| f.hedgeable() && now >= f.hedge_at).map(|(id, _)| *id).collect()
    }

    /// The earliest moment a fetch becomes late enough to hedge.
    pub fn next_hedge(&self) -> Option<Instant> {
        self.inflight.values().filter(|f| f.hedgeable()).map(|f| f.hedge_at).min()
    }

    /// Sends a duplicate of fetch `id`; returns the duplicate's id and the fetch.
    pub fn start_hedge(&mut self, id: u64, now: Instant) -> Option<(u64, Fetch)> {
        let original = self.inflight.get(&id)?.clone();
        let copy = Fetch { started: now, hedge: None, original: Some(id), hedged: true, hedge_at: now, ..original };
        let hedge = self.next_id;
        self.next_id += 1;
        self.inflight.insert(hedge, copy.clone());
        if let Some(f) = self.inflight.get_mut(&id) {
            f.hedge = Some(hedge);
            f.hedged = true;
        }
        Some((hedge, copy))
    }

    /// Fetch `id` delivered its body.
    pub fn complete(&mut self, id: u64) -> Option<Settled> {
        let fetch = self.inflight.remove(&id)?;
        let (canonical, other) = match (fetch.original, fetch.hedge) {
            (Some(original), _) => (original, Some(original)),
            (None, hedge) => (id, hedge),
        };
        let other = other.filter(|o| self.inflight.remove(o).is_some());
        Some(Settled { fetch, canonical, other })
    }

    /// Fetch `id` failed: the fetch to give up on (its canonical id), unless its other
    /// copy is still running and may yet deliver.
    pub fn fail(&mut self, id: u64) -> Option<(u64, Fetch)> {
        let fetch = self.inflight.remove(&id)?;
        if let Some(partner) = fetch.original.or(fetch.hedge)
            && let Some(p) = self.inflight.get_mut(&partner)
        {
            // The survivor carries on alone. (A surviving duplicate keeps naming the
            // original, whose id the chunk states carry.)
            if p.hedge == Some(id) {
                p.hedge = None;
            }
            return None;
        }
        Some((fetch.original.unwrap_or(id), fetch))
    }

    /// Forgets fetch `id` and its duplicate; returns every id to cancel.
    pub fn remove(&mut self, id: u64) -> Vec<u64> {
        let Some(fetch) = self.inflight.remove(&id) else { return Vec::new() };
        let mut ids = vec![id];
        if let Some(other) = fetch.hedge.or(fetch.original)
            && self.inflight.remove(&other).is_some()
        {
            ids.push(other);
        }
        ids
    }

    /// A fetch of `bytes` finished after `took`: learn from it. Small fetches (records,
    /// single chunks) are mostly latency: they teach the time to first byte. Large ones
    /// teach the throughput, over the time past that latency. Both estimates are
    /// pessimistic: a slower sample is taken at once, a faster one only slowly, so one
    /// slow response sends the next segments to HTTP earlier, not later.
    pub fn finished(&mut self, bytes: u64, took: Duration) {
        if bytes <= SMALL {
            push_recent(&mut self.recent_latency, took);
            self.slowest_latency = self.recent_latency.iter().copied().max().unwrap_or(Duration::ZERO);
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
            self.slowest_throughput = self.recent_throughput.iter().copied().fold(f64::INFINITY, f64::min);
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
        let latency = self.slowest_latency.max(self.latency);
        let throughput = self.slowest_throughput.min(self.throughput).max(1.0);
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
    fn a_late_fetch_is_hedged_once_and_the_first_answer_settles_both() {
        let mut http = Http::default();
        let start = Instant::from_micros(1_000_000);
        let id = http.start(Fetch::new(SegmentId(1), Why::Urgent, start, Some((0, 1000))), 2000, None);
        let early = http.start(Fetch::new(SegmentId(1), Why::Early, start, Some((1000, 2000))), 2000, None);
        assert!(http.hedges_due(start).is_empty());
        let due = http.next_hedge().unwrap();
        // What is learnt meanwhile does not move it.
        http.finished(1000, Duration::from_secs(5));
        assert_eq!(http.next_hedge(), Some(due));
        assert_eq!(http.hedges_due(due), vec![id], "early fetches are never hedged");
        let (hedge, _) = http.start_hedge(id, due).unwrap();
        assert!(http.hedges_due(due + Duration::from_secs(10)).is_empty(), "once only");
        // The duplicate answers first: it settles the original's chunks and cancels it.
        let settled = http.complete(hedge).unwrap();
        assert_eq!((settled.canonical, settled.other), (id, Some(id)));
        assert!(http.complete(id).is_none());
        // A failure with the other copy still running is not final.
        let a = http.start(Fetch::new(SegmentId(2), Why::Urgent, start, None), 2000, None);
        let (b, _) = http.start_hedge(a, start).unwrap();
        assert!(http.fail(a).is_none());
        assert_eq!(http.fail(b).map(|(canonical, _)| canonical), Some(a));
        assert_eq!(http.remove(early), vec![early]);
    }

    #[test]
    fn a_fetch_due_soon_is_hedged_early_enough_to_arrive() {
        let mut http = Http::default();
        for _ in 0..40 {
            http.finished(500_000, Duration::from_millis(140));
            http.finished(20_000, Duration::from_millis(40));
        }
        let start = Instant::from_micros(1_000_000);
        let usual = start + http.hedge_delay(500_000);
        let worst_pair = http.worst_time(1_000_000);
        // Plenty of time: the usual rule.
        let relaxed =
            http.start(Fetch::new(SegmentId(1), Why::Urgent, start, None), 500_000, Some(usual + worst_pair * 3));
        assert_eq!(http.inflight.get(&relaxed).map(|f| f.hedge_at), Some(usual));
        // Due right after the usual hedge time: the duplicate goes out in time to arrive
        // beside the late copy.
        let deadline = usual + Duration::from_millis(100);
        let tight = http.start(Fetch::new(SegmentId(2), Why::Urgent, start, None), 500_000, Some(deadline));
        let hedge_at = http.inflight.get(&tight).map(|f| f.hedge_at).unwrap();
        assert!(hedge_at < usual && hedge_at + worst_pair <= deadline, "{hedge_at:?}");
        // Too late for that: not at once, but the usual rule.
        let late = http.start(Fetch::new(SegmentId(3), Why::Urgent, start, None), 500_000, Some(start + worst_pair));
        assert_eq!(http.inflight.get(&late).map(|f| f.hedge_at), Some(usual));
    }

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
