//! What the runtime tells JavaScript: events as they happen, and the statistics
//! `stats()` reads. Plain serde values; the page sees them as plain objects.

use std::collections::HashMap;

use serde::Serialize;

/// Events delivered to JavaScript, as plain objects with a `type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// The link to the signalling node is up.
    NodeConnected {
        node: String,
        addr: String,
    },
    /// The link to the signalling node dropped (it is redialled with backoff).
    NodeDisconnected {
        node: String,
        reason: String,
    },
    /// The node admitted us to a swarm for the first time.
    Joined {
        swarm: String,
        members: usize,
    },
    /// The node refused a join or our relay reservation; the page is not reachable by
    /// other peers until it succeeds (retried with backoff).
    Refused {
        what: String,
        reason: String,
    },
    /// A direct connection to a peer is up.
    PeerConnected {
        peer: String,
        #[serde(rename = "remoteAddr")]
        remote_addr: String,
        dialer: bool,
    },
    /// The candidate types of a direct connection's selected ICE pair, once known:
    /// `host`, `srflx`, `prflx` (a peer-reflexive address learnt during the checks) or
    /// `relay` (through TURN) for each end.
    PeerPath {
        peer: String,
        local: String,
        remote: String,
        relayed: bool,
    },
    PeerDisconnected {
        peer: String,
        reason: String,
    },
    /// A dial of ours to another page failed. `kind`: `ice-failed` (offer and answer
    /// exchanged, ICE/DTLS never connected), `signalling-timeout` (the other page never
    /// answered), `refused` (no signalling stream: the relay or the page refused it, or
    /// the page is gone) or `other`; `error` says the rest.
    DialFailed {
        peer: String,
        kind: String,
        error: String,
    },
    /// A peer's attempt to connect to us failed (bad signalling, handshake timeout...).
    InboundFailed {
        peer: String,
        error: String,
    },
    /// A peer was cut off: for misbehaving (corrupt data, forged or stale record, bad
    /// messages), or for announcing what it never serves.
    PeerBanned {
        peer: String,
        reason: String,
    },
    /// A record from the origin did not verify (reported once per swarm; every refusal is
    /// counted in `stats().pieces[swarm].recordsRefused`). Segments still play, over
    /// HTTP, but nothing can be shared: `reason` says what to check.
    RecordRefused {
        swarm: String,
        segment: u64,
        reason: String,
    },
    /// The page's timers run late (the device or tab cannot keep up): Shoal sheds its own
    /// load — uploads paused, direct connections closed, what is due within 4 s over HTTP
    /// (the hls.js integration bypasses Shoal altogether) — until they have been on time
    /// for 10 s (`active: false`).
    LoadShedding {
        active: bool,
        /// The page's timer lateness, smoothed over about 2 s.
        #[serde(rename = "timerLateMs")]
        timer_late_ms: f64,
    },
    /// A segment was delivered to the player; `fromPeers`/`fromHttp` count the bytes
    /// that crossed the network for it (0 and 0 when it was already held).
    SegmentLoaded {
        swarm: String,
        segment: u64,
        bytes: u64,
        #[serde(rename = "fromPeers")]
        from_peers: u64,
        #[serde(rename = "fromHttp")]
        from_http: u64,
    },
    ChunkDown {
        swarm: String,
        peer: String,
        segment: u64,
        bytes: u64,
    },
    ChunkUp {
        swarm: String,
        peer: String,
        segment: u64,
        bytes: u64,
    },
    Gossip {
        topic: String,
        from: String,
        #[serde(with = "bytes_as_array")]
        data: Vec<u8>,
    },
    GossipRejected {
        topic: String,
        from: String,
        reason: String,
    },
    BulkReceived {
        peer: String,
        bytes: u64,
        intact: bool,
        ms: f64,
    },
    Error {
        message: String,
    },
}

/// Gossip payloads reach JavaScript as arrays of numbers (turned into `Uint8Array` by the
/// JS wrapper); serde-wasm-bindgen has no byte-buffer type in its JSON-compatible mode.
mod bytes_as_array {
    pub(super) fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(bytes, s)
    }
}

/// One direct connection, as `stats()` reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    pub peer: String,
    pub remote_addr: String,
    /// True for browser-to-browser WebRTC; relayed connections are never listed.
    pub direct: bool,
    pub dialer: bool,
    /// Last ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The selected ICE pair's candidate types, `local/remote` (e.g. `srflx/srflx`,
    /// `relay/prflx`), once known (see the `peer-path` event).
    pub path: Option<String>,
}

/// Gossip counters.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GossipStats {
    pub published: u64,
    pub received: u64,
    pub rejected_oversize: u64,
    pub rejected_invalid: u64,
    /// Dropped past a neighbour's rate limit, or stamped too far from our clock.
    pub rate_limited: u64,
    pub expired: u64,
    pub duplicates: u64,
}

/// Bytes received from and sent to one peer.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerTraffic {
    pub down: u64,
    pub up: u64,
}

/// Piece counters of one swarm.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SwarmStats {
    pub bytes_from_peers: u64,
    pub bytes_from_http: u64,
    pub bytes_uploaded: u64,
    pub segments_loaded: u64,
    pub segments_failed: u64,
    /// Origin records that did not verify (see the `record-refused` event).
    pub records_refused: u64,
    pub chunks_rejected: u64,
    pub peers_banned: u64,
    /// HTTP fetches: early shares of new segments / seeding a segment nobody had / due
    /// soon / duplicates of late fetches.
    pub http_early: u64,
    pub http_seeds: u64,
    pub http_urgent: u64,
    pub http_hedges: u64,
    pub cached_bytes: u64,
    pub peers: usize,
    /// Per peer: bytes received from it and sent to it.
    pub per_peer: HashMap<String, PeerTraffic>,
}

/// What `stats()` returns (with `wasmMemoryBytes` added by the API).
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub node_connected: bool,
    /// Where other browsers reach this peer (`<node>/p2p-circuit/webrtc/p2p/<me>`), while
    /// it holds a relay reservation on its node.
    pub address: Option<String>,
    pub joined: bool,
    pub swarms: Vec<String>,
    pub connections: Vec<ConnectionInfo>,
    pub relayed_connections: usize,
    pub peer_connections_created: u32,
    pub node_reconnects: u32,
    pub banned_peers: usize,
    /// Whether the page sheds load now (see [`Event::LoadShedding`]), the smoothed
    /// lateness of its timers, and how many times it began shedding.
    pub load_shedding: bool,
    pub timer_late_ms: f64,
    pub load_shedding_episodes: u32,
    /// How this page's dials to other pages ended (see [`shoal_proto::ConnectionOutcomes`]).
    pub connection_outcomes: shoal_proto::ConnectionOutcomes,
    pub gossip: GossipStats,
    pub pieces: HashMap<String, SwarmStats>,
}
