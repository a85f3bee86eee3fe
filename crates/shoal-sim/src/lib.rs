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
//! - links are reliable and ordered (libp2p streams over SCTP): loss shows up as a
//!   retransmission delay, not as missing messages;
//! - each peer's uplink and downlink serialise what crosses them (a peer serving ten
//!   others shares its upload between them); latency is the sum of both access latencies;
//! - messages are passed as decoded values; the codec is tested on its own;
//! - payload bytes are real and every chunk is hashed and checked by every receiver, but
//!   honest copies share one buffer (`Bytes`) so ten thousand viewers fit in memory;
//! - the player requests every segment in its buffer window with the deadline at which
//!   playback reaches it (what the hls.js loader does), starts after its first segment,
//!   and stalls when playback reaches a segment it does not have.

mod world;

use std::time::Duration;

use serde::Serialize;
use shoal_core::Config as EngineConfig;

pub use world::run;

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
    /// Access bandwidth of an ordinary peer, bits per second.
    pub upload_bps: u64,
    pub download_bps: u64,
    /// Probability that a message needs a retransmission, and what that costs.
    pub loss: f64,
    pub retransmit_delay: Duration,
    /// Origin: time to first byte and per-request throughput.
    pub origin_ttfb: Duration,
    pub origin_bps: u64,
    /// Fraction of viewers leaving (and as many joining) per minute after the join phase.
    pub churn_per_minute: f64,
    /// Fraction of viewers whose bandwidth is divided by `slow_factor`.
    pub slow_fraction: f64,
    pub slow_factor: u64,
    /// Fraction of viewers that corrupt every chunk they upload and forge records.
    pub malicious_fraction: f64,
    pub engine: EngineConfig,
    /// Segments fully downloaded before the report starts counting offload (warm-up).
    pub warmup: Duration,
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
            max_connections: 40,
            latency_ms: (5, 40),
            upload_bps: 20_000_000,
            download_bps: 50_000_000,
            loss: 0.01,
            retransmit_delay: Duration::from_millis(200),
            origin_ttfb: Duration::from_millis(40),
            origin_bps: 50_000_000,
            churn_per_minute: 0.0,
            slow_fraction: 0.0,
            slow_factor: 10,
            malicious_fraction: 0.0,
            engine: EngineConfig { cache_capacity: 40 * 1024 * 1024, ..EngineConfig::default() },
            warmup: Duration::ZERO,
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
    /// Bytes the origin sent, and that as copies of each published segment.
    pub origin_egress_bytes: u64,
    pub origin_copies_per_segment: f64,
    pub segments_delivered: u64,
    pub segments_failed: u64,
    /// Times playback reached a segment it did not have, and for how long in all.
    pub stalls: u64,
    pub stall_seconds: f64,
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
    /// Why viewers went to the origin: seeding a segment nobody had, or a deadline.
    pub http_seeds: u64,
    pub http_urgent: u64,
    pub messages: u64,
    pub wall_seconds: f64,
    /// Resident memory growth over the run divided by viewers (Linux only).
    pub memory_per_viewer_bytes: u64,
}
