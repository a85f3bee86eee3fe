//! A deterministic swarm simulator: an HTTP origin publishing a stream, N viewers each
//! running the real `shoal-core` engine and a model of an hls.js player, and a network
//! model (latency, per-peer up/down bandwidth, loss, churn, slow and malicious peers) in
//! virtual time.
//!
//! Same [`Scenario`] (seed included), same [`Report`]: every random choice comes from
//! seeded generators and every collection iterates in a fixed order. Wall-clock figures
//! (`wall_seconds`, memory) are the only fields that vary between runs.
//!
//! What is modelled and what is not:
//! - each viewer draws its access upload and download from a [`RateMix`] (e.g. 30 % at
//!   1×, 50 % at 2×, 20 % at 8× the bitrate), its one-way access latency from a range and
//!   its loss rate from a range; "slow" viewers have their *upload* divided by
//!   [`Scenario::slow_factor`] (a poor uplink, the common case; their download is not);
//! - links are reliable and ordered (libp2p streams over SCTP): loss shows up as a
//!   retransmission delay, not as missing messages;
//! - each peer's uplink and downlink serialise what crosses them (a peer serving ten
//!   others shares its upload between them; HTTP and peer data share the downlink);
//!   latency is the sum of both access latencies;
//! - the origin answers each request after its time to first byte, at its per-request
//!   throughput (never faster than the viewer's downlink);
//! - messages are passed as decoded values; the codec is tested on its own;
//! - payload bytes are real and every chunk and record is checked by every receiver;
//!   honest copies share one buffer (`Bytes`) so ten thousand viewers fit in memory, and
//!   each distinct buffer is hashed once for all of them (`shoal_core::CheckMemo`):
//!   corrupt copies are other buffers and get the full check;
//! - the player requests every segment in its buffer window with the deadline at which
//!   playback reaches it (what the hls.js loader does), starts after its first segment,
//!   and stalls when playback reaches a segment it does not have.

mod queue;
mod world;

use std::{fmt, str::FromStr, time::Duration};

use serde::Serialize;
use shoal_core::Config as EngineConfig;

pub use world::run_one;

/// A rate, absolute or relative to the stream's bitrate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Bps(u64),
    TimesBitrate(f64),
}

impl Rate {
    pub fn bps(self, bitrate_bps: u64) -> u64 {
        match self {
            Self::Bps(bps) => bps,
            Self::TimesBitrate(x) => (bitrate_bps as f64 * x).round() as u64,
        }
        .max(1)
    }
}

/// Rates drawn per viewer: `(weight, rate)` pairs, weights relative to their sum.
/// Written `30%:1x,50%:2x,20%:8x` (multiples of the bitrate) or `1:20mbit` / `2:500kbit`
/// / `1:3000000` (bits per second); one entry alone (`1.5x`) gives every viewer that rate.
#[derive(Debug, Clone, PartialEq)]
pub struct RateMix(pub Vec<(f64, Rate)>);

impl RateMix {
    pub fn fixed(rate: Rate) -> Self {
        Self(vec![(1.0, rate)])
    }

    /// The rate for a uniform draw `u` in `[0, 1)`.
    pub fn pick(&self, u: f64) -> Rate {
        let total: f64 = self.0.iter().map(|(w, _)| w).sum();
        let mut acc = 0.0;
        for (weight, rate) in &self.0 {
            acc += weight / total;
            if u < acc {
                return *rate;
            }
        }
        self.0.last().map_or(Rate::TimesBitrate(1.0), |(_, r)| *r)
    }

    /// The mean rate in bits per second.
    pub fn mean_bps(&self, bitrate_bps: u64) -> f64 {
        let total: f64 = self.0.iter().map(|(w, _)| w).sum();
        self.0.iter().map(|(w, r)| w / total * r.bps(bitrate_bps) as f64).sum()
    }
}

impl FromStr for RateMix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parse_rate = |r: &str| -> Result<Rate, String> {
            let r = r.trim().to_ascii_lowercase();
            let number = |n: &str, what: &str| n.trim().parse::<f64>().map_err(|_| format!("`{r}` is not a {what}"));
            if let Some(x) = r.strip_suffix('x') {
                return Ok(Rate::TimesBitrate(number(x, "multiple like 1.5x")?));
            }
            for (suffix, unit) in [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)] {
                if let Some(n) = r.strip_suffix(suffix) {
                    return Ok(Rate::Bps((number(n, "rate")? * unit) as u64));
                }
            }
            Ok(Rate::Bps(number(&r, "rate in bits per second")? as u64))
        };
        let mut entries = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (weight, rate) = match part.split_once(':') {
                Some((w, r)) => {
                    let w = w.trim();
                    let weight = match w.strip_suffix('%') {
                        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
                        None => w.parse::<f64>(),
                    }
                    .map_err(|_| format!("`{w}` is not a weight"))?;
                    (weight, parse_rate(r)?)
                }
                None => (1.0, parse_rate(part)?),
            };
            if !(weight.is_finite() && weight > 0.0) {
                return Err(format!("weight `{part}` must be positive"));
            }
            entries.push((weight, rate));
        }
        if entries.is_empty() {
            return Err("empty rate mix".into());
        }
        Ok(Self(entries))
    }
}

impl fmt::Display for RateMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: f64 = self.0.iter().map(|(w, _)| w).sum();
        for (i, (w, r)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let pct = w / total * 100.0;
            match r {
                Rate::Bps(bps) => write!(f, "{pct:.0}%:{bps}")?,
                Rate::TimesBitrate(x) => write!(f, "{pct:.0}%:{x}x")?,
            }
        }
        Ok(())
    }
}

/// Runs `scenario`, and beside it the same scenario (same seed: same viewers, rates,
/// joins and churn) with peer-to-peer off, whose stalls it reports as the baseline.
pub fn run(scenario: &Scenario) -> Report {
    let mut report = run_one(scenario);
    if scenario.http_only_baseline && scenario.engine.p2p_download_enabled {
        let mut baseline = scenario.clone();
        baseline.engine.p2p_download_enabled = false;
        baseline.engine.upload_enabled = false;
        let http_only = run_one(&baseline);
        report.http_only_stalls = Some(http_only.stalls);
        report.http_only_stall_seconds = Some(http_only.stall_seconds);
        report.wall_seconds += http_only.wall_seconds;
    }
    report
}

/// Everything that defines a run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    /// Viewers present at the end of the join phase (churn keeps the count steady).
    pub viewers: usize,
    /// Viewers join uniformly over this period.
    pub join_over: Duration,
    /// How long the run lasts (viewers watch until the end).
    pub duration: Duration,
    pub segment_duration: Duration,
    /// Media bitrate; segment size = bitrate × duration.
    pub bitrate_bps: u64,
    pub chunk_size: u32,
    /// Live stream, or VOD of `vod_segments` segments.
    pub live: bool,
    pub vod_segments: u64,
    /// How far behind the live edge playback starts, in segments (hls.js default: 3).
    pub live_sync_segments: u64,
    /// How far ahead of playback the loader fetches.
    pub max_buffer: Duration,
    /// Connections each peer tries to hold, and the most it accepts.
    pub neighbours: usize,
    pub max_connections: usize,
    /// Access latency of a peer, drawn uniformly from this range (one way).
    pub latency_ms: (u64, u64),
    /// Access upload and download of each viewer, drawn from these mixes.
    pub upload: RateMix,
    pub download: RateMix,
    /// Probability that a message needs a retransmission, drawn per viewer uniformly
    /// from this range (a link's loss is its two ends' combined), and what a
    /// retransmission costs.
    pub loss: (f64, f64),
    pub retransmit_delay: Duration,
    /// Origin: time to first byte and per-request throughput. Each request's time to
    /// first byte is `origin_ttfb` × (0.5 + an exponential draw of mean 0.5), and
    /// `origin_slow_fraction` of requests are `origin_slow_factor` times slower still
    /// (a cache miss, a congested edge): an origin is never perfectly steady.
    pub origin_ttfb: Duration,
    pub origin_bps: u64,
    pub origin_slow_fraction: f64,
    pub origin_slow_factor: u32,
    /// Fraction of viewers leaving (and as many joining) per minute after the join phase.
    pub churn_per_minute: f64,
    /// Fraction of viewers whose upload is divided by `slow_factor`.
    pub slow_fraction: f64,
    pub slow_factor: u64,
    /// Fraction of viewers that corrupt every chunk they upload and forge records.
    pub malicious_fraction: f64,
    pub engine: EngineConfig,
    /// Segments fully downloaded before the report starts counting offload (warm-up).
    pub warmup: Duration,
    /// Also run the scenario with peer-to-peer off and report its stalls ([`run`]).
    pub http_only_baseline: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            seed: 1,
            viewers: 100,
            join_over: Duration::from_secs(30),
            duration: Duration::from_secs(300),
            segment_duration: Duration::from_secs(2),
            bitrate_bps: 1_000_000,
            chunk_size: 64 * 1024,
            live: true,
            vod_segments: 300,
            live_sync_segments: 3,
            max_buffer: Duration::from_secs(30),
            neighbours: 20,
            max_connections: 24,
            latency_ms: (5, 40),
            upload: RateMix::fixed(Rate::Bps(20_000_000)),
            download: RateMix::fixed(Rate::Bps(50_000_000)),
            loss: (0.01, 0.01),
            retransmit_delay: Duration::from_millis(200),
            origin_ttfb: Duration::from_millis(40),
            origin_bps: 50_000_000,
            origin_slow_fraction: 0.02,
            origin_slow_factor: 5,
            churn_per_minute: 0.0,
            slow_fraction: 0.0,
            slow_factor: 10,
            malicious_fraction: 0.0,
            engine: EngineConfig { cache_capacity: 40 * 1024 * 1024, ..EngineConfig::default() },
            warmup: Duration::ZERO,
            http_only_baseline: true,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub viewers_total: usize,
    pub segments_published: u64,
    pub segment_bytes: u64,
    /// Segment bytes viewers received from peers / from the origin.
    pub bytes_from_peers: u64,
    pub bytes_from_http: u64,
    /// `bytes_from_peers / (bytes_from_peers + bytes_from_http)`.
    pub offload: f64,
    /// `(N−1)/N` for the steady-state viewer count.
    pub offload_ceiling: f64,
    /// The offload bound of this run: the bytes the viewers' uplinks could carry while
    /// they were present (honest viewers only), over the bytes their players needed,
    /// capped by the ceiling. No scheduler can do better (peers cannot upload more than
    /// their uplinks carry, and each segment must come from the origin once).
    pub offload_bound: f64,
    /// `offload / offload_bound`.
    pub offload_vs_bound: f64,
    /// Bytes uploaded over what the uplinks could carry.
    pub upload_utilisation: f64,
    /// Mean upload over the bitrate.
    pub upload_bitrate_ratio: f64,
    /// Bytes the origin sent, and that as copies of each published segment.
    pub origin_egress_bytes: u64,
    pub origin_copies_per_segment: f64,
    pub segments_delivered: u64,
    pub segments_failed: u64,
    /// Times playback reached a segment it did not have, and for how long in all.
    pub stalls: u64,
    pub stall_seconds: f64,
    /// The same, in the HTTP-only run with the same seed (see [`run`]).
    pub http_only_stalls: Option<u64>,
    pub http_only_stall_seconds: Option<f64>,
    /// Join → first frame.
    pub startup_median_ms: f64,
    pub startup_p95_ms: f64,
    pub startup_max_ms: f64,
    /// Mean distance of playback behind the live edge while playing.
    pub live_latency_seconds: f64,
    pub malicious_viewers: usize,
    /// Malicious viewers that sent at least one corrupt chunk or forged record…
    pub corrupting_viewers: usize,
    /// …and of those, how many were cut off by every honest peer they sent one to.
    pub corrupting_viewers_cut_off: usize,
    /// Corrupt deliveries to honest viewers' players (must be 0), and bytes in them.
    pub corrupt_deliveries: u64,
    pub corrupt_bytes_delivered: u64,
    pub bans: u64,
    pub chunk_timeouts: u64,
    /// Why viewers went to the origin: an early share of a new segment, seeding a
    /// segment nobody had, or a deadline.
    pub http_early: u64,
    pub http_seeds: u64,
    /// Origin bytes by why they were fetched: early (shares of new segments, seeds) or
    /// at the last moment (due).
    pub http_bytes_early: u64,
    pub http_bytes_late: u64,
    /// Duplicates sent for late origin fetches.
    pub http_hedges: u64,
    pub http_urgent: u64,
    pub messages: u64,
    /// Messages by type (what the swarm's chatter is made of).
    pub messages_by_kind: std::collections::BTreeMap<&'static str, u64>,
    pub wall_seconds: f64,
    /// Resident memory growth over the run divided by viewers (Linux only).
    pub memory_per_viewer_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_mixes_parse_and_pick() {
        let mix: RateMix = "30%:1x, 50%:2x, 20%:8x".parse().unwrap();
        assert_eq!(mix.pick(0.0), Rate::TimesBitrate(1.0));
        assert_eq!(mix.pick(0.5), Rate::TimesBitrate(2.0));
        assert_eq!(mix.pick(0.85), Rate::TimesBitrate(8.0));
        assert!((mix.mean_bps(1_000_000) - 2_900_000.0).abs() < 1.0);
        let abs: RateMix = "1:20mbit,1:500kbit".parse().unwrap();
        assert_eq!(abs.pick(0.9), Rate::Bps(500_000));
        assert_eq!("1.5x".parse::<RateMix>().unwrap(), RateMix::fixed(Rate::TimesBitrate(1.5)));
        assert!("".parse::<RateMix>().is_err());
        assert!("0:1x".parse::<RateMix>().is_err());
        assert!("fast".parse::<RateMix>().is_err());
        assert_eq!(mix.to_string().parse::<RateMix>().unwrap().pick(0.6), Rate::TimesBitrate(2.0));
    }
}
