//! The piece engine: one per peer per swarm. It decides which segment comes from which
//! peer or from HTTP and when, serves other peers, checks every chunk, and keeps the
//! cache within bounds.
//!
//! # Driving it
//!
//! Inputs are method calls, each with the current time: peers connecting and leaving,
//! decoded [`Message`]s, the playlist, the player's wants, HTTP results. After each
//! input, drain [`Engine::poll_output`] until `None`, then call
//! [`Engine::handle_timeout`] at [`Engine::poll_timeout`] (or when the next input comes,
//! whichever is first). The engine owns no clock, socket or timer.
//!
//! # Parts
//!
//! - `segment`: the segments we are busy with (bounded: only what the player wants, we
//!   prefetch or hold; never what a neighbour merely mentions);
//! - `peer`: what each neighbour holds and fetches, how fast and how reliably it serves;
//! - `requests`: the one table of our outstanding chunk requests;
//! - `upload`: serving others, the upload cap ([`TokenBucket`]);
//! - `http`: fetches from the origin and its measured speed;
//! - `freshness`: which records a live stream may take from peers;
//! - `schedule`: the policy that ties them together, run after every input.
//!
//! # Policy
//!
//! - A wanted segment comes from HTTP once what is missing of it could only just still
//!   arrive over HTTP before its deadline (at this viewer's measured origin speed, with
//!   room for a retry, never later than [`Config::urgent_window`] before it).
//! - Before that it comes from peers that hold or are fetching it, chunk by chunk,
//!   rarest chunk first, each chunk from the best peer holding that very chunk (holders
//!   announce chunks as they arrive), by outstanding requests and measured throughput.
//!   A request unanswered in time is cancelled and the peer put on cooldown.
//! - A segment nobody has yet is fetched over HTTP by a peer whose randomised patience
//!   runs out first; patience is spread so that about [`Config::seeders_per_segment`]
//!   peers of the whole swarm start before the rest hear of it.
//! - Every chunk from a peer is checked against the publisher-signed record before it
//!   is stored, served or delivered. A peer that sends a bad chunk, a forged or stale
//!   record, or that announces what it never serves, is disconnected.

mod freshness;
mod http;
mod peer;
mod requests;
mod schedule;
mod segment;
mod upload;

use std::{fmt::Debug, hash::Hash, sync::Arc, time::Duration};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use upload::TokenBucket;

use self::{
    freshness::{Freshness, Stale},
    http::Http,
    peer::Peer,
    requests::Requests,
    segment::{ChunkState, Segment, Segments},
    upload::{Deferred, Upload, Uploads},
};
use crate::{
    availability::{ChunkSet, SegmentSet},
    config::Config,
    integrity::{CheckMemo, IntegrityError, PublisherKey, SegmentId, SegmentRecord, SignedRecord, StreamId},
    time::Instant,
    vecmap::VecMap,
    wire::{Message, PROTOCOL_VERSION},
};

/// What identifies a peer to the engine: a libp2p `PeerId` in the browser, a small
/// integer in the simulator.
pub trait PeerKey: Copy + Eq + Ord + Hash + Debug {}
impl<T: Copy + Eq + Ord + Hash + Debug> PeerKey for T {}

/// Why a peer was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Misbehaviour {
    /// Sent a chunk that does not match the signed record.
    CorruptChunk,
    /// Sent a record whose signature does not verify.
    ForgedRecord,
    /// Sent a genuine but stale record (a replay from an earlier run of the stream).
    StaleRecord,
    /// Serves another stream.
    WrongStream,
    /// Speaks another protocol version.
    WrongVersion,
    /// Answered a request with data for another segment or chunk.
    ProtocolViolation,
    /// Announced segments and then failed every request for them.
    Unhelpful,
}

impl Misbehaviour {
    /// Whether the peer proved hostile (bad data, forgery) rather than merely useless.
    pub fn is_hostile(self) -> bool {
        !matches!(self, Self::Unhelpful | Self::WrongVersion | Self::WrongStream)
    }
}

/// Something worth telling the application about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// A peer was cut off (the engine also asks for the disconnect).
    PeerBanned { peer: P, reason: Misbehaviour },
    /// Only with [`Config::chunk_events`].
    ChunkDownloaded { peer: P, segment: SegmentId, bytes: u64 },
    /// Only with [`Config::chunk_events`].
    ChunkUploaded { peer: P, segment: SegmentId, bytes: u64 },
}

/// A complete, verified segment for the player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub segment: SegmentId,
    /// The segment's bytes, chunk by chunk (not concatenated: no copy).
    pub chunks: Vec<Bytes>,
    pub size: u64,
    /// Bytes of it that came over the network from peers / from HTTP for this delivery
    /// (0 and 0 when it was already held, e.g. prefetched or kept from an earlier want).
    pub from_peers: u64,
    pub from_http: u64,
}

impl Delivery {
    /// The segment as one buffer.
    pub fn concat(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size as usize);
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out
    }
}

/// What the driver must do. Each variant says when it is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P> {
    /// Send `message` to `peer`: announcements, requests and answers, as they arise.
    Send {
        peer: P,
        message: Message,
    },
    /// Fetch the segment over HTTP (`range`: bytes `[start, end)`; `None`: all of it),
    /// then call [`Engine::http_complete`] or [`Engine::http_failed`] with `id`.
    /// Produced when a wanted segment must come from the origin (due soon, nobody has
    /// it, peer download off, an early share of it), and as a duplicate of a fetch the
    /// player waits on that is late (the first answer wins; the other is cancelled).
    HttpFetch {
        id: u64,
        segment: SegmentId,
        range: Option<(u64, u64)>,
    },
    /// Abort HTTP fetch `id`; no result is expected any more (the player gave up).
    CancelHttp {
        id: u64,
    },
    /// A wanted segment is complete and verified.
    Deliver(Delivery),
    /// A wanted segment could not be fetched (HTTP failed every attempt).
    Failed {
        segment: SegmentId,
    },
    /// Close the connection to `peer`; it is already forgotten here. Follows a
    /// [`Event::PeerBanned`].
    Disconnect {
        peer: P,
        reason: Misbehaviour,
    },
    Event(Event<P>),
}

/// Counters since the engine started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Segment bytes received from peers / over HTTP (each byte once, as it crossed the
    /// network; a segment delivered twice from the cache counts nothing the second time).
    pub bytes_from_peers: u64,
    pub bytes_from_http: u64,
    pub bytes_uploaded: u64,
    pub http_fetches: u64,
    pub segments_delivered: u64,
    pub chunks_rejected: u64,
    pub peers_banned: u64,
    pub chunk_timeouts: u64,
    /// HTTP fetches started early to spread a new segment (a share of it) / because
    /// nobody had the segment (seeding) / because it was due soon (urgent) / because
    /// peer download is off.
    pub http_early: u64,
    pub http_seeds: u64,
    pub http_urgent: u64,
    pub http_no_p2p: u64,
    /// Records from peers refused as stale (replays).
    pub stale_records: u64,
    /// Of `bytes_from_http`: fetched early (shares of new segments, seeding) / at the
    /// last moment (the segment was due) / with peer download off.
    pub http_bytes_early: u64,
    pub http_bytes_late: u64,
    pub http_bytes_no_p2p: u64,
    /// Duplicates sent for HTTP fetches that were late (see [`Output::HttpFetch`]).
    pub http_hedges: u64,
}

/// A segment the playlist lists.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub id: SegmentId,
    pub record: Option<Arc<SignedRecord>>,
}

/// How many segments past the newest the playlist lists that neighbours may announce:
/// their playlists refresh at other moments than ours.
const ANNOUNCE_AHEAD: u64 = 16;
/// Most wants held at once (a player asks for a buffer's worth).
const MAX_WANTS: usize = 128;
/// Most trusted records kept for segments we hold no entry for.
const MAX_SPARE_RECORDS: usize = 256;
/// Most requests waiting for a chunk that is still on its way to us, per segment.
const MAX_DEFERRED_PER_SEGMENT: usize = 64;
/// Segments wanted in the engine's first seconds do not teach the early share.
const LEARN_AFTER: Duration = Duration::from_secs(10);
/// How long a peer that answered `Busy` is left alone at first: its queue drains in
/// well under a second, and a segment's whole peer-to-peer window is a few seconds.
const BUSY_BACKOFF: Duration = Duration::from_millis(150);

/// See the module docs.
pub struct Engine<P: PeerKey> {
    config: Config,
    stream: StreamId,
    publisher: PublisherKey,
    rng: ChaCha8Rng,
    now: Instant,
    peers: VecMap<P, Peer>,
    segments: Segments,
    wants: VecMap<SegmentId, Instant>,
    requests: Requests<P>,
    http: Http,
    uploads: Uploads<P>,
    freshness: Freshness,
    /// Trusted records of segments we hold no entry for (yet): attached when we do.
    records: VecMap<SegmentId, Arc<SignedRecord>>,
    /// The playlist's first and last segment, once known.
    playlist: Option<(SegmentId, SegmentId)>,
    outputs: std::collections::VecDeque<Output<P>>,
    swarm_size: usize,
    upload_backlog: Duration,
    /// Our uplink's rate as the driver measures it, bytes per second (0: unknown).
    uplink_rate: f64,
    /// Bytes handed to the network since the driver last reported the backlog.
    handed_over: u64,
    /// What this viewer adds to its early share of each new segment (learnt).
    early_extra: f64,
    /// When the engine started: the first seconds (no neighbours yet, everything due at
    /// once) teach nothing about what peers can carry.
    started: Instant,
    /// Segments whose state changed since neighbours were last told.
    dirty: Vec<SegmentId>,
    /// Segments whose plan an input may have changed; everything if `replan_all`.
    /// Most inputs concern one segment (an announcement, a chunk): re-planning every
    /// wanted segment against every neighbour after each would cost a swarm of
    /// thousands most of its time.
    replan: VecMap<SegmentId, ()>,
    replan_all: bool,
    /// (peer, segment) pairs where only that peer's offer changed (it announced chunks,
    /// or a request slot of it freed): asking it alone is enough.
    ask: Vec<(P, SegmentId)>,
    stats: Stats,
    next_wake: Option<Instant>,
    /// Checks shared with other engines of this process (the simulator), if any.
    checks: Option<Arc<CheckMemo>>,
    /// No neighbour's cooldown lasts past this: the wake-up needs no look at each
    /// neighbour before then (that look, on every input, was a visible share of a
    /// 10,000-viewer simulation).
    cooldowns_end: Instant,
}

impl<P: PeerKey> Engine<P> {
    /// An engine for `stream`, trusting records signed with `publisher`. `seed` makes
    /// its random choices reproducible.
    pub fn new(config: Config, stream: StreamId, publisher: PublisherKey, seed: u64, now: Instant) -> Self {
        Self {
            uploads: Uploads::new(config.upload_rate_limit, now),
            config,
            stream,
            publisher,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            peers: VecMap::new(),
            segments: Segments::default(),
            wants: VecMap::new(),
            requests: Requests::default(),
            http: Http::default(),
            freshness: Freshness::default(),
            records: VecMap::new(),
            playlist: None,
            outputs: std::collections::VecDeque::new(),
            swarm_size: 1,
            upload_backlog: Duration::ZERO,
            uplink_rate: 0.0,
            handed_over: 0,
            early_extra: 0.0,
            started: now,
            dirty: Vec::new(),
            replan: VecMap::new(),
            replan_all: true,
            ask: Vec::new(),
            stats: Stats::default(),
            next_wake: None,
            checks: None,
            cooldowns_end: Instant::ZERO,
        }
    }

    /// Shares chunk and record checks with other engines of this process that see the
    /// same buffers (see [`CheckMemo`]); results are the same, only cheaper.
    pub fn share_checks(&mut self, memo: Arc<CheckMemo>) {
        self.checks = Some(memo);
    }

    // ---- getters -------------------------------------------------------------------

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes of segment data held.
    pub fn cached_bytes(&self) -> u64 {
        self.segments.cached_bytes
    }

    /// Segment entries held (bounded; see the module docs).
    pub fn segment_entries(&self) -> usize {
        self.segments.len()
    }

    pub fn connected_peers(&self) -> usize {
        self.peers.len()
    }

    /// The time of the latest input.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Whether the signed record of a segment is known.
    pub fn has_record(&self, id: SegmentId) -> bool {
        self.segments.get(id).is_some_and(|s| s.record.is_some())
    }

    /// Whether the whole segment is held.
    pub fn has_segment(&self, id: SegmentId) -> bool {
        self.segments.get(id).is_some_and(Segment::complete)
    }

    // ---- outputs -------------------------------------------------------------------

    /// The next thing to do; `None` once everything from the last input is out.
    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.outputs.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_wake
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.drive(now);
    }

    /// Marks `segment` for re-planning at the end of this input.
    fn replan(&mut self, segment: SegmentId) {
        if !self.replan_all {
            self.replan.insert(segment, ());
        }
    }

    /// `peer` now offers (more of) `segment`: ask it for what we miss, at the end of
    /// this input.
    fn ask(&mut self, peer: P, segment: SegmentId) {
        if !self.replan_all && !self.replan.contains_key(&segment) {
            self.ask.push((peer, segment));
        }
    }

    /// A request slot of `peer` freed: ask it for what we miss of what it offers.
    fn replan_offered_by(&mut self, peer: P) {
        let Some(p) = self.peers.get(&peer) else { return };
        let offered: Vec<SegmentId> = self.wants.keys().copied().filter(|id| p.offers(*id)).collect();
        for id in offered {
            self.ask(peer, id);
        }
    }

    // ---- settings ------------------------------------------------------------------

    /// Turns uploading on or off at runtime.
    pub fn set_upload_enabled(&mut self, enabled: bool, now: Instant) {
        self.config.upload_enabled = enabled;
        self.drive(now);
    }

    /// Changes the urgent window at runtime ([`Config::urgent_window`]): a page that
    /// cannot keep up widens it so that more of what is due soon comes over HTTP.
    pub fn set_urgent_window(&mut self, window: Duration, now: Instant) {
        self.config.urgent_window = window;
        self.drive(now);
    }

    /// Turns downloading from peers on or off at runtime.
    pub fn set_p2p_download_enabled(&mut self, enabled: bool, now: Instant) {
        self.config.p2p_download_enabled = enabled;
        self.drive(now);
    }

    /// Changes the upload cap (bytes per second) at runtime.
    pub fn set_upload_rate_limit(&mut self, limit: Option<u64>, now: Instant) {
        self.config.upload_rate_limit = limit;
        self.uploads.set_rate_limit(limit, now);
        self.drive(now);
    }

    /// How many peers are in the swarm (the signalling node knows). Sets how patient this
    /// peer is before seeding a new segment from HTTP.
    pub fn set_swarm_size(&mut self, size: usize) {
        self.swarm_size = size.max(1);
    }

    /// How long what this peer already sent needs to leave its uplink (the driver knows:
    /// data-channel `bufferedAmount` over the send rate in a browser, the link model in
    /// the simulator). Past [`Config::max_upload_backlog`], new requests get `Busy`.
    pub fn set_upload_backlog(&mut self, backlog: Duration) {
        self.upload_backlog = backlog;
        self.handed_over = 0;
    }

    /// The uplink as the driver measures it: how long what it already sent needs to
    /// leave, and the rate it leaves at (bytes per second; 0 when unknown). With the
    /// rate, chunks promised but not yet handed over (queued, or awaited from the
    /// origin) count against [`Config::max_upload_backlog`] too, so a peer never
    /// accepts more than it can send in time.
    pub fn set_uplink(&mut self, backlog: Duration, rate: f64) {
        self.upload_backlog = backlog;
        self.handed_over = 0;
        self.uplink_rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
    }

    /// How long it would take to send everything already promised, plus `extra` bytes.
    fn upload_commitment(&self, extra: u64) -> Duration {
        if self.uplink_rate <= 0.0 {
            return self.upload_backlog;
        }
        let promised = self.uploads.promised_bytes(self.segments.typical_chunk());
        self.handover_backlog() + Duration::from_secs_f64((promised + extra) as f64 / self.uplink_rate)
    }

    // ---- peers ---------------------------------------------------------------------

    pub fn peer_connected(&mut self, peer: P, now: Instant) {
        self.now = now;
        if self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(peer, Peer::new());
        self.send(peer, Message::Hello { version: PROTOCOL_VERSION, stream: self.stream });
        let (have, fetching) = self.availability();
        self.send(peer, Message::Availability { have, fetching });
        if self.config.upload_enabled {
            let mut partial = Vec::new();
            for (id, s) in self.segments.map.iter().filter(|(_, s)| !s.complete() && s.record.is_some()) {
                if s.held > 0 {
                    partial.push(Message::HaveChunks { segment: *id, chunks: s.held_chunks() });
                }
                let coming = s.http_chunks();
                if !coming.is_empty() {
                    partial.push(Message::Fetching { segment: *id, chunks: coming });
                }
            }
            for message in partial {
                self.send(peer, message);
            }
        }
        self.drive(now);
    }

    pub fn peer_disconnected(&mut self, peer: P, now: Instant) {
        self.forget_peer(peer);
        self.drive(now);
    }

    fn forget_peer(&mut self, peer: P) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        // Our requests to it go back to the pool.
        for id in self.requests.of_peer(&peer) {
            self.requests.remove(id);
        }
        self.uploads.forget_peer(&peer);
    }

    fn cut_off(&mut self, peer: P, reason: Misbehaviour) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        self.replan_all = true;
        self.stats.peers_banned += 1;
        self.forget_peer(peer);
        self.outputs.push_back(Output::Event(Event::PeerBanned { peer, reason }));
        self.outputs.push_back(Output::Disconnect { peer, reason });
    }

    /// What we announce: complete segments, and those we fetch whole from the origin
    /// (record unknown). Chunks of the others go in `HaveChunks`/`Fetching` of their own.
    fn availability(&self) -> (SegmentSet, SegmentSet) {
        let mut have = SegmentSet::new();
        let mut fetching = SegmentSet::new();
        if self.config.upload_enabled {
            for (id, segment) in self.segments.map.iter() {
                if segment.complete() {
                    have.insert(*id);
                } else if !segment.http.is_empty() && segment.record.is_none() {
                    fetching.insert(*id);
                }
            }
        }
        (have, fetching)
    }

    /// Whether an announcement of `id` is worth remembering: within the playlist (a few
    /// past its end for neighbours whose playlist is newer), or anything before we have
    /// a playlist (what peers may remember is bounded anyway).
    fn in_window(&self, id: SegmentId) -> bool {
        match self.playlist {
            Some((low, high)) => id >= low && id.0 <= high.0.saturating_add(ANNOUNCE_AHEAD),
            None => true,
        }
    }

    // ---- playlist, records, player -------------------------------------------------

    /// The segments the playlist lists now. For live streams, what came before the
    /// first listed one is forgotten (neighbours' announcements, and entries the
    /// player no longer waits for).
    pub fn update_playlist(&mut self, segments: impl IntoIterator<Item = SegmentInfo>, now: Instant) {
        self.now = now;
        let mut bounds: Option<(SegmentId, SegmentId)> = None;
        for info in segments {
            bounds = Some(bounds.map_or((info.id, info.id), |(lo, hi)| (lo.min(info.id), hi.max(info.id))));
            if let Some(record) = info.record {
                let _ = self.trusted_record(record);
            }
        }
        if let Some((low, high)) = bounds {
            self.playlist = Some((low, high));
            let top = SegmentId(high.0.saturating_add(ANNOUNCE_AHEAD));
            for peer in self.peers.values_mut() {
                peer.restrict(low, top);
            }
            if self.config.live {
                self.records.remove_below(&low);
                let stale: Vec<SegmentId> = self
                    .segments
                    .map
                    .range(..low)
                    .filter(|(id, s)| !self.wants.contains_key(id) && s.http.is_empty())
                    .map(|(id, _)| *id)
                    .collect();
                // Neighbours forget what left their playlist too: no `Dropped` for these.
                for id in stale {
                    self.drop_segment_quietly(id);
                }
            }
        }
        self.drive(now);
    }

    /// Adds a publisher-signed record obtained from a trusted source (the origin).
    pub fn add_record(&mut self, record: Arc<SignedRecord>, now: Instant) -> Result<(), IntegrityError> {
        self.now = now;
        self.trusted_record(record)?;
        self.drive(now);
        Ok(())
    }

    fn trusted_record(&mut self, record: Arc<SignedRecord>) -> Result<(), IntegrityError> {
        let id = record.record.segment;
        // A playlist lists the same records again at every reload: verify each once.
        let known = self.segments.get(id).and_then(|s| s.record.as_ref()).or_else(|| self.records.get(&id));
        if known.is_some_and(|k| Arc::ptr_eq(k, &record) || **k == *record) {
            return Ok(());
        }
        verify_record(self.checks.as_deref(), &self.publisher, &self.stream, &record)?;
        self.freshness.anchor(id, record.record.published_at_ms);
        if self.segments.contains(id) {
            self.accept_record(record);
        } else if self.in_window(id) {
            self.records.insert(id, record);
            while self.records.len() > MAX_SPARE_RECORDS {
                self.records.pop_first();
            }
        }
        Ok(())
    }

    /// The player needs `segment` by `deadline`. The engine answers with
    /// [`Output::Deliver`] or [`Output::Failed`].
    pub fn want(&mut self, segment: SegmentId, deadline: Instant, now: Instant) {
        self.now = now;
        if !self.wants.contains_key(&segment) && self.wants.len() >= MAX_WANTS {
            // The furthest want waits: the player will ask again.
            if let Some((&last, _)) = self.wants.last_key_value()
                && last > segment
            {
                self.wants.remove(&last);
            } else {
                return;
            }
        }
        self.ensure_segment(segment);
        self.wants.insert(segment, deadline);
        // Peers had a chance at it only if it was wanted a while before HTTP must take
        // over; a start-up segment due at once says nothing about what peers can carry.
        let window = self.http_start(segment, deadline).saturating_since(now);
        let settled = now.saturating_since(self.started) >= LEARN_AFTER;
        if let Some(entry) = self.segments.get_mut(segment)
            && window >= Duration::from_secs(1)
            && settled
        {
            entry.p2p_window = true;
        }
        self.drive(now);
    }

    /// The player no longer needs `segment`.
    pub fn unwant(&mut self, segment: SegmentId, now: Instant) {
        self.wants.remove(&segment);
        self.drive(now);
    }

    /// The application already has this segment (e.g. loaded it itself): keep and share
    /// it. Refused if it does not match its record.
    pub fn offer_segment(&mut self, segment: SegmentId, data: Bytes, now: Instant) -> Result<(), IntegrityError> {
        self.now = now;
        let record = match self.segments.get(segment) {
            Some(entry) => entry.record.clone(),
            None => self.records.get(&segment).cloned(),
        };
        let record = record.ok_or(IntegrityError::Inconsistent("no record for this segment"))?;
        if data.len() as u64 != record.record.size {
            return Err(IntegrityError::WrongSize { got: data.len() as u64, expected: record.record.size });
        }
        let mut chunks = Vec::with_capacity(record.record.chunk_count() as usize);
        for index in 0..record.record.chunk_count() {
            let start = record.record.chunk_offset(index) as usize;
            let chunk = data.slice(start..start + record.record.chunk_len(index));
            verify_chunk(self.checks.as_deref(), &record.record, index, &chunk)?;
            chunks.push(chunk);
        }
        self.ensure_segment(segment);
        for (index, chunk) in chunks.into_iter().enumerate() {
            self.store_chunk(segment, index as u32, chunk);
        }
        self.drive(now);
        Ok(())
    }

    /// Creates the entry of a segment we now care about, with its seeding patience.
    fn ensure_segment(&mut self, id: SegmentId) {
        if self.segments.contains(id) {
            return;
        }
        let patience = self.draw_patience();
        let now = self.now;
        self.segments.map.insert(id, Segment::new(now, now + patience));
        if let Some(record) = self.records.remove(&id) {
            self.accept_record(record);
        }
        self.evict_entries();
    }

    /// Patience before seeding a segment nobody has: uniform over a window that grows
    /// with the swarm, so that about `seeders_per_segment` peers start within each
    /// `seed_spread_time` — by which time the rest have heard of them.
    fn draw_patience(&mut self) -> Duration {
        let window =
            self.config.seed_spread_time.as_secs_f64() * self.swarm_size as f64 / self.config.seeders_per_segment;
        Duration::from_secs_f64(window * self.rng.r#gen::<f64>())
    }

    fn accept_record(&mut self, record: Arc<SignedRecord>) {
        let id = record.record.segment;
        let Some(segment) = self.segments.get_mut(id) else { return };
        if segment.record.is_some() {
            return;
        }
        // A whole-segment HTTP fetch started before the record was known covers it all.
        let initial = match segment.http.first() {
            Some(fetch) => ChunkState::Http(*fetch),
            None => ChunkState::Missing,
        };
        let count = record.record.chunk_count();
        segment.chunks = vec![initial; count as usize];
        segment.record = Some(record);
        // Requests deferred before we knew how many chunks there are.
        for d in self.uploads.take_deferred_segment(id) {
            if d.chunk < count {
                self.uploads.deferred.push(d);
            } else {
                self.send(d.peer, Message::Absent { id: d.id });
            }
        }
    }

    // ---- messages ------------------------------------------------------------------

    /// A message from `peer`.
    pub fn handle_message(&mut self, peer: P, message: Message, now: Instant) {
        self.now = now;
        if !self.peers.contains_key(&peer) {
            return;
        }
        match message {
            Message::Hello { version, stream } => {
                if version != PROTOCOL_VERSION {
                    return self.cut_off(peer, Misbehaviour::WrongVersion);
                }
                if stream != self.stream {
                    return self.cut_off(peer, Misbehaviour::WrongStream);
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.hello = true;
                }
                self.replan_all = true;
            }
            Message::Availability { have, fetching } => {
                let window = self.playlist.map(|(low, high)| (low, SegmentId(high.0.saturating_add(ANNOUNCE_AHEAD))));
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.have = have;
                    p.fetching = fetching;
                    if let Some((low, high)) = window {
                        p.restrict(low, high);
                    }
                }
                self.replan_all = true;
            }
            Message::Have { segment } => {
                if self.in_window(segment)
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    p.have.insert(segment);
                    p.fetching.remove(segment);
                    p.partial.remove(&segment);
                    p.incoming.remove(&segment);
                }
                self.ask(peer, segment);
            }
            Message::HaveChunks { segment, chunks } => {
                if self.in_window(segment)
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    p.set_partial(segment, chunks);
                }
                self.ask(peer, segment);
            }
            Message::Fetching { segment, chunks } => {
                if self.in_window(segment)
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    p.set_incoming(segment, chunks);
                }
                self.ask(peer, segment);
            }
            Message::Dropped { segment } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.forget(segment);
                }
                self.replan(segment);
            }
            Message::Request { id, segment, chunk, with_record } => {
                self.on_request(peer, id, segment, chunk, with_record)
            }
            Message::Data { id, segment, chunk, data } => {
                let before = self.segments.get(segment).map(|s| s.held);
                self.on_data(peer, id, segment, chunk, data);
                // Stored: it may be complete now (the full plan delivers it).
                if self.segments.get(segment).map(|s| s.held) != before {
                    self.replan(segment);
                }
                self.replan_offered_by(peer);
            }
            Message::Record { record } => {
                let segment = record.record.segment;
                self.on_record(peer, record);
                self.replan(segment);
            }
            Message::Absent { id } | Message::Busy { id, .. } => {
                let segment = self.requests.get(id).map(|r| r.segment);
                let retry = match message {
                    Message::Busy { retry_ms, .. } => Some(Duration::from_millis(u64::from(retry_ms))),
                    _ => None,
                };
                self.on_refused(peer, id, retry);
                if let Some(segment) = segment {
                    self.replan(segment);
                }
                self.replan_offered_by(peer);
            }
            Message::Cancel { id } => {
                self.uploads.cancel(&peer, id);
            }
        }
        self.run(now);
    }

    fn on_record(&mut self, peer: P, record: Arc<SignedRecord>) {
        if verify_record(self.checks.as_deref(), &self.publisher, &self.stream, &record).is_err() {
            self.stats.chunks_rejected += 1;
            return self.cut_off(peer, Misbehaviour::ForgedRecord);
        }
        let id = record.record.segment;
        if self.config.live {
            match self.freshness.check(id, record.record.published_at_ms) {
                Ok(()) => {}
                Err(Stale::TooOld) => {
                    self.stats.stale_records += 1;
                    return self.cut_off(peer, Misbehaviour::StaleRecord);
                }
                // Genuine, but nothing to judge it by yet: not used, not held against it.
                Err(Stale::NoAnchor) => return,
            }
        }
        self.accept_record(record);
    }

    fn on_request(&mut self, peer: P, id: u32, segment: SegmentId, chunk: u32, with_record: bool) {
        if !self.config.upload_enabled {
            return self.busy(peer, id);
        }
        // Accept while what is already promised leaves within the backlog limit: on a slow
        // uplink one chunk may take longer than that, and the next must already wait.
        let busy = self.uploads.pending_for(&peer) >= self.config.max_queued_uploads_per_peer
            || self.upload_commitment(0) > self.config.max_upload_backlog;
        let deferred_here = self.uploads.deferred_for_segment(segment);
        let Some(entry) = self.segments.get_mut(segment) else {
            return self.send(peer, Message::Absent { id });
        };
        let Some(record) = entry.record.clone() else {
            // Fetching from the origin before its record arrived: the record comes with
            // the segment, so answer then. Answering `Absent` would have the asker seed
            // the same segment from the origin a second time.
            if !entry.http.is_empty() && !busy && deferred_here < MAX_DEFERRED_PER_SEGMENT {
                self.uploads.deferred.push(Deferred { peer, id, segment, chunk, with_record });
                return;
            }
            return if busy { self.busy(peer, id) } else { self.send(peer, Message::Absent { id }) };
        };
        entry.last_used = self.now;
        match entry.chunks.get(chunk as usize) {
            Some(ChunkState::Have(data)) => {
                if busy {
                    return self.busy(peer, id);
                }
                let data = data.clone();
                if with_record {
                    self.send(peer, Message::Record { record });
                }
                self.uploads.queue.push_back(Upload { peer, id, segment, chunk, data });
            }
            // Coming from the origin: answer when it arrives. (Not for chunks we fetch
            // from peers: waiting on a peer that waits on a peer builds chains that
            // time out.)
            Some(ChunkState::Http(_)) => {
                if busy || deferred_here >= MAX_DEFERRED_PER_SEGMENT {
                    return self.busy(peer, id);
                }
                self.uploads.deferred.push(Deferred { peer, id, segment, chunk, with_record: false });
                if with_record {
                    self.send(peer, Message::Record { record });
                }
            }
            _ => {
                // It asked for the record with a chunk we lack: the record still helps.
                if with_record {
                    self.send(peer, Message::Record { record });
                }
                self.send(peer, Message::Absent { id });
            }
        }
    }

    /// Answers request `id` of `peer` with `Busy`, saying when our uplink will have room.
    fn busy(&mut self, peer: P, id: u32) {
        let over = self.upload_commitment(0).saturating_sub(self.config.max_upload_backlog);
        let retry_ms = over.as_millis().clamp(50, 2000) as u32;
        self.send(peer, Message::Busy { id, retry_ms });
    }

    fn on_data(&mut self, peer: P, id: u32, segment: SegmentId, chunk: u32, data: Bytes) {
        let Some(request) = self.requests.get(id) else {
            // A late answer to a cancelled request; harmless.
            return;
        };
        if request.peer != peer {
            return;
        }
        if request.segment != segment || request.chunk != chunk {
            self.requests.remove(id);
            return self.cut_off(peer, Misbehaviour::ProtocolViolation);
        }
        let Some(request) = self.requests.remove(id) else { return };
        let Some(entry) = self.segments.get(segment) else { return };
        let Some(record) = entry.record.clone() else {
            // Asked for the record with this chunk and did not get it first (or it was
            // not fresh enough to use): nothing to check the chunk against.
            if request.with_record && self.config.live && !self.freshness_known(segment) {
                return;
            }
            return self.cut_off(peer, Misbehaviour::ProtocolViolation);
        };
        if verify_chunk(self.checks.as_deref(), &record.record, chunk, &data).is_err() {
            self.stats.chunks_rejected += 1;
            return self.cut_off(peer, Misbehaviour::CorruptChunk);
        }
        if !matches!(entry.chunks.get(chunk as usize), Some(ChunkState::Missing)) {
            // The chunk was meanwhile fetched another way; keep nothing twice.
            return;
        }
        let bytes = data.len() as u64;
        let elapsed = self.now.saturating_since(request.sent);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.delivered(bytes, elapsed);
        }
        self.stats.bytes_from_peers += bytes;
        if let Some(e) = self.segments.get_mut(segment) {
            e.from_peers += bytes;
        }
        if self.config.chunk_events {
            self.outputs.push_back(Output::Event(Event::ChunkDownloaded { peer, segment, bytes }));
        }
        self.store_chunk(segment, chunk, data);
    }

    /// Whether a record for `segment` could be judged fresh now (an anchor below it).
    fn freshness_known(&self, segment: SegmentId) -> bool {
        !matches!(self.freshness.check(segment, u64::MAX), Err(Stale::NoAnchor))
    }

    /// `retry`: the peer answered `Busy` and asked to be left alone that long; `None`:
    /// it answered `Absent`.
    fn on_refused(&mut self, peer: P, id: u32, retry: Option<Duration>) {
        let absent = retry.is_none();
        let Some(request) = self.requests.get(id) else { return };
        if request.peer != peer {
            return;
        }
        let Some(request) = self.requests.remove(id) else { return };
        let now = self.now;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let announced = p.holds_chunk(request.segment, request.chunk);
        match retry {
            None => p.forget(request.segment),
            // Its hint, within sane bounds; the old doubling backoff if it gave none.
            Some(retry) if !retry.is_zero() => p.busy_for(now, retry.clamp(BUSY_BACKOFF / 3, Duration::from_secs(2))),
            Some(_) => p.busy(now, BUSY_BACKOFF),
        }
        // `Absent` for what it never claimed to hold is fine (it was fetching and gave
        // up); for what it announced, and `Busy` every time, it is not.
        let unhelpful = (announced || !absent) && p.failed(now);
        self.cooldowns_end = self.cooldowns_end.max(p.cooldown_until);
        if unhelpful {
            self.cut_off(peer, Misbehaviour::Unhelpful);
        }
    }

    // ---- HTTP ----------------------------------------------------------------------

    /// The body of HTTP fetch `id` (the requested range, or the whole segment).
    pub fn http_complete(&mut self, id: u64, body: Bytes, now: Instant) {
        self.now = now;
        self.on_http_body(id, body);
        self.drive(now);
    }

    /// HTTP fetch `id` failed. The segment is retried up to [`Config::http_attempts`].
    pub fn http_failed(&mut self, id: u64, now: Instant) {
        self.now = now;
        if let Some((canonical, fetch)) = self.http.fail(id) {
            self.abandon_http(fetch.segment, canonical);
        }
        self.drive(now);
    }

    // ---- storage -------------------------------------------------------------------

    /// Stores a verified chunk and answers the peers that were waiting for it.
    fn store_chunk(&mut self, segment: SegmentId, index: u32, data: Bytes) {
        if !self.segments.store(segment, index, data.clone()) {
            return;
        }
        self.dirty.push(segment);
        self.replan(segment);
        let record = self.segments.get(segment).and_then(|s| s.record.clone());
        for d in self.uploads.take_deferred_chunk(segment, index) {
            if !self.peers.contains_key(&d.peer) {
                continue;
            }
            if d.with_record
                && let Some(record) = &record
            {
                self.send(d.peer, Message::Record { record: record.clone() });
            }
            self.uploads.queue.push_back(Upload { peer: d.peer, id: d.id, segment, chunk: index, data: data.clone() });
        }
    }

    /// Forgets a segment entirely, telling neighbours if they were told about it.
    fn drop_segment(&mut self, id: SegmentId) {
        if let Some(announced) = self.forget_segment(id)
            && announced
        {
            self.broadcast(Message::Dropped { segment: id });
        }
    }

    /// Forgets a segment that left the live window (neighbours drop it too).
    fn drop_segment_quietly(&mut self, id: SegmentId) {
        self.forget_segment(id);
    }

    /// Forgets a segment: cancels what is under way for it. Returns whether neighbours
    /// had been told about it, if it was held.
    fn forget_segment(&mut self, id: SegmentId) -> Option<bool> {
        let entry = self.segments.remove(id)?;
        for request in self.requests.of_segment(id) {
            if let Some(r) = self.requests.remove(request) {
                self.send(r.peer, Message::Cancel { id: request });
            }
        }
        for fetch in entry.http {
            for id in self.http.remove(fetch) {
                self.outputs.push_back(Output::CancelHttp { id });
            }
        }
        for d in self.uploads.take_deferred_segment(id) {
            self.send(d.peer, Message::Absent { id: d.id });
        }
        Some(entry.announced.anything())
    }

    // ---- output helpers ------------------------------------------------------------

    fn send(&mut self, peer: P, message: Message) {
        self.outputs.push_back(Output::Send { peer, message });
    }

    fn broadcast(&mut self, message: Message) {
        let peers: Vec<P> = self.peers.keys().copied().collect();
        for peer in peers {
            self.send(peer, message.clone());
        }
    }

    /// Tells what we hold or fetch of `segment` to the neighbours that may still want
    /// it: not to those that announced holding all of it (in a swarm that has the
    /// segment, most of a page's announcements would otherwise go to peers that need
    /// nothing).
    fn announce(&mut self, segment: SegmentId, message: Message) {
        let peers: Vec<P> =
            self.peers.iter().filter(|(_, p)| !p.have.contains(segment)).map(|(peer, _)| *peer).collect();
        for peer in peers {
            self.send(peer, message.clone());
        }
    }
}

/// A chunk's check, through `memo` when the engine shares one.
pub(crate) fn verify_chunk(
    memo: Option<&CheckMemo>,
    record: &SegmentRecord,
    index: u32,
    data: &Bytes,
) -> Result<(), IntegrityError> {
    match memo {
        Some(memo) => memo.verify_chunk(record, index, data),
        None => record.verify_chunk(index, data),
    }
}

/// A record's check, through `memo` when the engine shares one.
fn verify_record(
    memo: Option<&CheckMemo>,
    key: &PublisherKey,
    stream: &StreamId,
    record: &Arc<SignedRecord>,
) -> Result<(), IntegrityError> {
    match memo {
        Some(memo) => memo.verify_record(key, stream, record),
        None => key.verify(stream, record),
    }
}
