//! Engine settings, with the reasoning behind each default.

use std::time::Duration;

use thiserror::Error;

/// How the engine fetches, shares and stores segments.
#[derive(Debug, Clone)]
pub struct Config {
    /// A wanted segment whose deadline is closer than this is fetched over HTTP, whatever
    /// peers offer. The engine widens it to what is missing of the segment at the
    /// slowest recent origin speed plus once more at the usual speed, so that a slow
    /// response, or a retry, still arrives before the player would stall.
    pub urgent_window: Duration,
    /// How many segments past the newest wanted one are fetched from peers ahead of the
    /// player once neighbours announce them (never from HTTP).
    pub prefetch_ahead: u32,
    /// How long announcements take to reach the neighbours of neighbours. Seeding of
    /// new segments is randomised so that about one peer per this interval fetches a
    /// segment nobody has yet: the others hear of it before their own turn comes.
    pub seed_spread_time: Duration,
    /// How many peers are expected to fetch a brand-new segment nobody announces from
    /// HTTP before the rest hear of it (the fallback when early seeding left a gap).
    pub seeders_per_segment: f64,
    /// Most copies of each chunk of a new segment the swarm fetches from the origin
    /// early, spread over its members: one per 32 members, at least one, at most this.
    /// Each viewer fetches its share (a random run of chunks) as soon as it wants the
    /// segment, so that every chunk enters the swarm at several places at once and
    /// reaches everyone in a few hops. 0 turns early fetching off.
    pub early_copies: f64,
    /// Ceiling of the early share a viewer raises when peers cannot keep up: it fetches
    /// more early (useful to its neighbours too) instead of more at the last moment
    /// (useful to nobody).
    pub max_early_fraction: f64,
    /// The share of segment bytes a viewer accepts fetching at the last moment before
    /// it raises its early share.
    pub late_http_target: f64,
    /// Chunks are handed to the network while what it holds leaves within this (the
    /// rest wait in the engine, where a `Cancel` can still take them back).
    pub upload_handover: Duration,
    /// A chunk request with no answer after this long is cancelled and asked elsewhere;
    /// the peer is put on cooldown. p2p-media-loader uses 2 s for a whole segment.
    pub chunk_timeout: Duration,
    /// How long a peer that failed us is skipped.
    pub peer_cooldown: Duration,
    /// New upload requests are answered `Busy` while what we already handed to the
    /// network needs longer than this to leave (see [`crate::Engine::set_upload_backlog`]):
    /// the asker turns to another peer at once instead of timing out behind our queue.
    pub max_upload_backlog: Duration,
    /// Most chunk requests outstanding to one peer (pipelining hides the round trip).
    pub max_inflight_per_peer: usize,
    /// Most chunk requests outstanding in all. Requests go out earliest deadline first,
    /// so a cap keeps far-ahead fetches from filling the downlink in front of the
    /// segment due next (and of its HTTP fallback).
    pub max_inflight_total: usize,
    /// Serve other peers.
    pub upload_enabled: bool,
    /// Fetch from other peers (off: everything comes over HTTP).
    pub p2p_download_enabled: bool,
    /// Upload cap in bytes per second; `None` for no cap.
    pub upload_rate_limit: Option<u64>,
    /// Most upload requests queued per peer before answering `Busy`.
    pub max_queued_uploads_per_peer: usize,
    /// Bytes of segment data kept in memory. Complete segments beyond this are evicted:
    /// oldest first for live, least recently used for VOD.
    pub cache_capacity: u64,
    /// Live stream (evict oldest first) or VOD (evict least recently used).
    pub live: bool,
    /// HTTP attempts per segment before it is reported failed.
    pub http_attempts: u32,
    /// Emit an event per chunk moved (browser dashboards); off in large simulations.
    pub chunk_events: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            urgent_window: Duration::from_millis(600),
            prefetch_ahead: 2,
            seed_spread_time: Duration::from_millis(150),
            seeders_per_segment: 1.0,
            early_copies: 16.0,
            max_early_fraction: 0.9,
            late_http_target: 0.05,
            upload_handover: Duration::from_millis(100),
            chunk_timeout: Duration::from_millis(1500),
            peer_cooldown: Duration::from_secs(2),
            max_upload_backlog: Duration::from_millis(400),
            max_inflight_per_peer: 16,
            max_inflight_total: 32,
            upload_enabled: true,
            p2p_download_enabled: true,
            upload_rate_limit: None,
            max_queued_uploads_per_peer: 16,
            cache_capacity: 64 * 1024 * 1024,
            live: true,
            http_attempts: 3,
            chunk_events: false,
        }
    }
}

/// A configuration the engine cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("seeders_per_segment must be a positive number")]
    Seeders,
    #[error("early_copies must be non-negative, max_early_fraction and late_http_target within 0..=1")]
    Fraction,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chunk_timeout.is_zero() {
            return Err(ConfigError::Zero("chunk_timeout"));
        }
        if self.max_inflight_per_peer == 0 {
            return Err(ConfigError::Zero("max_inflight_per_peer"));
        }
        if self.max_inflight_total == 0 {
            return Err(ConfigError::Zero("max_inflight_total"));
        }
        if self.http_attempts == 0 {
            return Err(ConfigError::Zero("http_attempts"));
        }
        if self.upload_rate_limit == Some(0) {
            return Err(ConfigError::Zero("upload_rate_limit"));
        }
        if self.seed_spread_time.is_zero() {
            return Err(ConfigError::Zero("seed_spread_time"));
        }
        if !(self.seeders_per_segment.is_finite() && self.seeders_per_segment > 0.0) {
            return Err(ConfigError::Seeders);
        }
        let fractions_ok =
            (0.0..=1.0).contains(&self.max_early_fraction) && (0.0..=1.0).contains(&self.late_http_target);
        if !(self.early_copies.is_finite() && self.early_copies >= 0.0 && fractions_ok) {
            return Err(ConfigError::Fraction);
        }
        Ok(())
    }
}
