//! The piece engine: one per peer per swarm. It decides which segment comes from which
//! peer or from HTTP and when, serves other peers, checks every chunk, and keeps the
//! cache within bounds.
//!
//! # Driving it
//!
//! Inputs are method calls, each with the current time: peers connecting and leaving,
//! decoded [`Message`]s, the playlist, the player's wants, HTTP results. After each
//! input, drain [`Engine::poll_action`] until `None`, then call
//! [`Engine::handle_timeout`] at [`Engine::poll_timeout`] (or when the next input comes,
//! whichever is first). The engine owns no clock, socket or timer.
//!
//! # Policy
//!
//! - A wanted segment due within [`Config::urgent_window`] comes from HTTP.
//! - Further ahead it comes from peers that hold it or are fetching it, chunk by chunk,
//!   each chunk from the best peer holding that very chunk (holders announce chunks as
//!   they arrive), by outstanding requests and measured
//!   throughput first. A request unanswered after [`Config::chunk_timeout`] is cancelled
//!   and the peer put on cooldown; the urgent window catches whatever is left late.
//! - A segment nobody has yet is fetched over HTTP by a peer whose randomised patience
//!   runs out first; patience is spread so that about [`Config::seeders_per_segment`]
//!   peers of the whole swarm start before the rest hear of it (see [`Engine::set_swarm_size`]).
//! - Every chunk from a peer is checked against the publisher-signed record before it
//!   is stored, served or delivered. A peer that sends a bad chunk or a forged record is
//!   disconnected at once.

use std::{
    collections::{BTreeMap, HashMap, VecDeque, hash_map::DefaultHasher},
    fmt::Debug,
    hash::{BuildHasherDefault, Hash},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

use crate::{
    availability::{ChunkSet, SegmentSet},
    config::Config,
    integrity::{IntegrityError, PublisherKey, SegmentId, SignedRecord, StreamId},
    time::Instant,
    wire::{Message, PROTOCOL_VERSION},
};

/// A hash map with a fixed hasher: iteration order depends only on what was inserted,
/// which keeps simulations deterministic.
type Map<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;

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
    /// Serves another stream.
    WrongStream,
    /// Speaks another protocol version.
    WrongVersion,
    /// Answered a request with data for another segment or chunk.
    ProtocolViolation,
}

/// Something worth telling the application about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    PeerBanned {
        peer: P,
        reason: Misbehaviour,
    },
    /// Only with [`Config::chunk_events`].
    ChunkDownloaded {
        peer: P,
        segment: SegmentId,
        bytes: u64,
    },
    /// Only with [`Config::chunk_events`].
    ChunkUploaded {
        peer: P,
        segment: SegmentId,
        bytes: u64,
    },
}

/// A complete, verified segment for the player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub segment: SegmentId,
    /// The segment's bytes, chunk by chunk (not concatenated: no copy).
    pub chunks: Vec<Bytes>,
    pub size: u64,
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

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Send `message` to `peer`.
    Send {
        peer: P,
        message: Message,
    },
    /// Fetch the segment over HTTP (`range`: bytes `[start, end)`; `None`: all of it),
    /// then call [`Engine::http_complete`] or [`Engine::http_failed`] with `id`.
    HttpFetch {
        id: u64,
        segment: SegmentId,
        range: Option<(u64, u64)>,
    },
    /// Abort HTTP fetch `id`; no result is expected any more.
    CancelHttp {
        id: u64,
    },
    /// A wanted segment is ready.
    Deliver(Delivery),
    /// A wanted segment could not be fetched (HTTP failed every attempt).
    Failed {
        segment: SegmentId,
    },
    /// Close the connection to `peer`; it is already forgotten here.
    Disconnect {
        peer: P,
        reason: Misbehaviour,
    },
    Event(Event<P>),
}

/// Counters since the engine started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes_from_peers: u64,
    pub bytes_from_http: u64,
    pub bytes_uploaded: u64,
    pub http_fetches: u64,
    pub segments_delivered: u64,
    pub chunks_rejected: u64,
    pub peers_banned: u64,
    pub chunk_timeouts: u64,
    /// HTTP fetches started because nobody had the segment (seeding) / because it was
    /// due soon (urgent) / because peer download is off.
    pub http_seeds: u64,
    pub http_urgent: u64,
    pub http_no_p2p: u64,
}

/// A known segment: from the playlist, a want, or a peer's announcement of it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub id: SegmentId,
    pub record: Option<Arc<SignedRecord>>,
}

#[derive(Debug, Clone)]
enum Chunk<P> {
    Missing,
    Requested { peer: P },
    Http,
    Have(Bytes),
}

#[derive(Debug)]
struct Deferred<P> {
    peer: P,
    id: u32,
    chunk: u32,
    /// Send the record first (deferred while we had none ourselves).
    with_record: bool,
}

#[derive(Debug)]
struct Segment<P> {
    record: Option<Arc<SignedRecord>>,
    chunks: Vec<Chunk<P>>,
    have: u32,
    /// When this peer fetches the segment from HTTP itself if nobody else has it.
    seed_at: Instant,
    http: Option<u64>,
    http_attempts: u32,
    from_peers: u64,
    from_http: u64,
    /// Requests from peers for chunks we are still fetching.
    deferred: Vec<Deferred<P>>,
    /// Peers that told us they lack this segment.
    absent: Vec<P>,
    /// What neighbours were last told about this segment.
    announced: Announced,
    last_used: Instant,
    /// A request that asked for the record (sent while we had none).
    record_request: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Announced {
    /// `Fetching` was sent (an HTTP fetch is under way).
    http: bool,
    /// Chunks covered by the last `HaveChunks`.
    chunks: u32,
    /// `Have` was sent.
    complete: bool,
}

impl Announced {
    fn anything(&self) -> bool {
        self.http || self.chunks > 0 || self.complete
    }
}

impl<P: PeerKey> Segment<P> {
    fn complete(&self) -> bool {
        !self.chunks.is_empty() && self.have as usize == self.chunks.len()
    }

    fn held_chunks(&self) -> ChunkSet {
        let mut set = ChunkSet::new();
        for (i, c) in self.chunks.iter().enumerate() {
            if matches!(c, Chunk::Have(_)) {
                set.insert(i as u32);
            }
        }
        set
    }

    fn size(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.record.size)
    }
}

#[derive(Debug)]
struct Peer {
    hello: bool,
    have: SegmentSet,
    /// Segments it fetches from the origin (it defers our requests until they arrive).
    fetching: SegmentSet,
    /// Chunks it holds of segments it is still fetching.
    partial: BTreeMap<SegmentId, ChunkSet>,
    inflight: usize,
    /// Bytes per second, exponentially weighted; 0 until measured.
    rate: f64,
    cooldown_until: Instant,
    queued_uploads: usize,
}

#[derive(Debug)]
struct Upload<P> {
    peer: P,
    id: u32,
    segment: SegmentId,
    chunk: u32,
    data: Bytes,
}

#[derive(Debug)]
struct Request<P> {
    peer: P,
    segment: SegmentId,
    chunk: u32,
    at: Instant,
}

/// Rate assumed for peers not yet measured: optimistic, so new peers get tried.
const UNMEASURED_RATE: f64 = 2_000_000.0;
/// Weight of a new throughput sample.
const RATE_ALPHA: f64 = 0.3;
/// How long a peer that answered `Busy` is left alone: its queue drains in well under
/// a second, and a segment's whole peer-to-peer window is only a few seconds.
const BUSY_BACKOFF: Duration = Duration::from_millis(150);
/// Most deferred requests held per segment.
const MAX_DEFERRED: usize = 256;

/// One HTTP fetch in flight.
struct HttpInFlight {
    segment: SegmentId,
    started: Instant,
    /// Byte range, end exclusive; `None`: the whole segment.
    range: Option<(u64, u64)>,
}

/// See the module docs.
pub struct Engine<P: PeerKey> {
    config: Config,
    stream: StreamId,
    publisher: PublisherKey,
    rng: ChaCha8Rng,
    now: Instant,
    peers: BTreeMap<P, Peer>,
    segments: BTreeMap<SegmentId, Segment<P>>,
    wants: BTreeMap<SegmentId, Instant>,
    requests: Map<u32, Request<P>>,
    /// HTTP fetches in flight.
    http: Map<u64, HttpInFlight>,
    /// Smoothed duration of an HTTP fetch.
    http_time: Duration,
    uploads: VecDeque<Upload<P>>,
    upload_tokens: f64,
    upload_refilled: Instant,
    actions: VecDeque<Action<P>>,
    next_request: u32,
    next_http: u64,
    swarm_size: usize,
    upload_backlog: Duration,
    cached_bytes: u64,
    /// Segments whose state changed since neighbours were last told.
    dirty: Vec<SegmentId>,
    stats: Stats,
    next_wake: Option<Instant>,
}

impl<P: PeerKey> Engine<P> {
    /// An engine for `stream`, trusting records signed with `publisher`. `seed` makes
    /// its random choices reproducible.
    pub fn new(config: Config, stream: StreamId, publisher: PublisherKey, seed: u64, now: Instant) -> Self {
        Self {
            config,
            stream,
            publisher,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            peers: BTreeMap::new(),
            segments: BTreeMap::new(),
            wants: BTreeMap::new(),
            requests: Map::default(),
            http: Map::default(),
            http_time: Duration::ZERO,
            uploads: VecDeque::new(),
            upload_tokens: 0.0,
            upload_refilled: now,
            actions: VecDeque::new(),
            next_request: 0,
            next_http: 0,
            swarm_size: 1,
            upload_backlog: Duration::ZERO,
            cached_bytes: 0,
            dirty: Vec::new(),
            stats: Stats::default(),
            next_wake: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes of segment data held.
    pub fn cached_bytes(&self) -> u64 {
        self.cached_bytes
    }

    pub fn connected_peers(&self) -> usize {
        self.peers.len()
    }

    /// Whether the signed record of a segment is known.
    pub fn has_record(&self, id: SegmentId) -> bool {
        self.segments.get(&id).is_some_and(|s| s.record.is_some())
    }

    /// Whether the whole segment is held.
    pub fn has_segment(&self, id: SegmentId) -> bool {
        self.segments.get(&id).is_some_and(Segment::complete)
    }

    /// Turns uploading on or off at runtime.
    pub fn set_upload_enabled(&mut self, enabled: bool, now: Instant) {
        self.config.upload_enabled = enabled;
        self.drive(now);
    }

    /// Turns downloading from peers on or off at runtime.
    pub fn set_p2p_download_enabled(&mut self, enabled: bool, now: Instant) {
        self.config.p2p_download_enabled = enabled;
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
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_wake
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.drive(now);
    }

    // ---- peers ----------------------------------------------------------------------

    pub fn peer_connected(&mut self, peer: P, now: Instant) {
        self.now = now;
        if self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                hello: false,
                have: SegmentSet::new(),
                fetching: SegmentSet::new(),
                partial: BTreeMap::new(),
                inflight: 0,
                rate: 0.0,
                cooldown_until: Instant::ZERO,
                queued_uploads: 0,
            },
        );
        self.send(peer, Message::Hello { version: PROTOCOL_VERSION, stream: self.stream });
        let (have, fetching) = self.availability();
        self.send(peer, Message::Availability { have, fetching });
        if self.config.upload_enabled {
            let partial: Vec<(SegmentId, ChunkSet)> = self
                .segments
                .iter()
                .filter(|(_, s)| !s.complete() && s.have > 0)
                .map(|(id, s)| (*id, s.held_chunks()))
                .collect();
            for (segment, chunks) in partial {
                self.send(peer, Message::HaveChunks { segment, chunks });
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
        let lost: Vec<u32> = self.requests.iter().filter(|(_, r)| r.peer == peer).map(|(id, _)| *id).collect();
        for id in lost {
            if let Some(r) = self.requests.remove(&id) {
                self.release_chunk(r.segment, r.chunk);
            }
        }
        self.uploads.retain(|u| u.peer != peer);
        for segment in self.segments.values_mut() {
            segment.deferred.retain(|d| d.peer != peer);
            segment.absent.retain(|p| *p != peer);
        }
    }

    fn ban(&mut self, peer: P, reason: Misbehaviour) {
        self.stats.peers_banned += 1;
        self.forget_peer(peer);
        self.actions.push_back(Action::Disconnect { peer, reason });
        self.actions.push_back(Action::Event(Event::PeerBanned { peer, reason }));
    }

    fn availability(&self) -> (SegmentSet, SegmentSet) {
        let mut have = SegmentSet::new();
        let mut fetching = SegmentSet::new();
        if self.config.upload_enabled {
            for (id, segment) in &self.segments {
                if segment.complete() {
                    have.insert(*id);
                } else if segment.http.is_some() {
                    fetching.insert(*id);
                }
            }
        }
        (have, fetching)
    }

    // ---- playlist, records, player -------------------------------------------------

    /// The segments the playlist lists now. For live streams, segments older than the
    /// first listed one are forgotten by neighbours' availability (not evicted here:
    /// the cache policy does that).
    pub fn update_playlist(&mut self, segments: impl IntoIterator<Item = SegmentInfo>, now: Instant) {
        self.now = now;
        let mut oldest = None;
        for info in segments {
            oldest = Some(oldest.map_or(info.id, |o: SegmentId| o.min(info.id)));
            self.learn_segment(info.id);
            if let Some(record) = info.record {
                self.accept_record(record);
            }
        }
        if self.config.live
            && let Some(oldest) = oldest
        {
            for peer in self.peers.values_mut() {
                peer.have.remove_below(oldest);
                peer.fetching.remove_below(oldest);
                peer.partial = peer.partial.split_off(&oldest);
            }
        }
        self.drive(now);
    }

    /// Adds a publisher-signed record obtained out of band (e.g. from the origin).
    pub fn add_record(&mut self, record: Arc<SignedRecord>, now: Instant) -> Result<(), IntegrityError> {
        self.publisher.verify(&self.stream, &record)?;
        self.now = now;
        self.learn_segment(record.record.segment);
        self.accept_record(record);
        self.drive(now);
        Ok(())
    }

    /// The player needs `segment` by `deadline`. The engine answers with
    /// [`Action::Deliver`] or [`Action::Failed`].
    pub fn want(&mut self, segment: SegmentId, deadline: Instant, now: Instant) {
        self.now = now;
        self.learn_segment(segment);
        self.wants.insert(segment, deadline);
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
        self.learn_segment(segment);
        let entry = self.segments.get(&segment).ok_or(IntegrityError::Inconsistent("unknown segment"))?;
        let record = entry.record.clone().ok_or(IntegrityError::Inconsistent("no record for this segment"))?;
        if data.len() as u64 != record.record.size {
            return Err(IntegrityError::WrongSize { got: data.len() as u64, expected: record.record.size });
        }
        for index in 0..record.record.chunk_count() {
            let start = record.record.chunk_offset(index) as usize;
            let chunk = data.slice(start..start + record.record.chunk_len(index));
            record.record.verify_chunk(index, &chunk)?;
            self.store_chunk(segment, index, chunk, None);
        }
        self.drive(now);
        Ok(())
    }

    fn learn_segment(&mut self, id: SegmentId) {
        if self.segments.contains_key(&id) {
            return;
        }
        let patience = self.draw_patience();
        self.segments.insert(
            id,
            Segment {
                record: None,
                chunks: Vec::new(),
                have: 0,
                seed_at: self.now + patience,
                http: None,
                http_attempts: 0,
                from_peers: 0,
                from_http: 0,
                deferred: Vec::new(),
                absent: Vec::new(),
                announced: Announced::default(),
                last_used: self.now,
                record_request: None,
            },
        );
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
        let Some(segment) = self.segments.get_mut(&record.record.segment) else { return };
        if segment.record.is_some() {
            return;
        }
        // An HTTP fetch started before the record was known covers the whole segment.
        let initial = if segment.http.is_some() { Chunk::Http } else { Chunk::Missing };
        let count = record.record.chunk_count();
        segment.chunks = vec![initial; count as usize];
        segment.record = Some(record);
        // Requests deferred before we knew how many chunks there are.
        let (valid, invalid): (Vec<_>, Vec<_>) =
            std::mem::take(&mut segment.deferred).into_iter().partition(|d| d.chunk < count);
        segment.deferred = valid;
        for d in invalid {
            self.send(d.peer, Message::Absent { id: d.id });
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
                    return self.ban(peer, Misbehaviour::WrongVersion);
                }
                if stream != self.stream {
                    return self.ban(peer, Misbehaviour::WrongStream);
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.hello = true;
                }
            }
            Message::Availability { have, fetching } => {
                for id in have.iter().chain(fetching.iter()) {
                    self.learn_segment(id);
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.have = have;
                    p.fetching = fetching;
                }
            }
            Message::Have { segment } => {
                self.learn_segment(segment);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.have.insert(segment);
                    p.fetching.remove(segment);
                    p.partial.remove(&segment);
                }
            }
            Message::HaveChunks { segment, chunks } => {
                self.learn_segment(segment);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.partial.insert(segment, chunks);
                }
            }
            Message::Fetching { segment } => {
                self.learn_segment(segment);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.fetching.insert(segment);
                }
            }
            Message::Dropped { segment } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.have.remove(segment);
                    p.fetching.remove(segment);
                    p.partial.remove(&segment);
                }
            }
            Message::Request { id, segment, chunk, with_record } => {
                self.on_request(peer, id, segment, chunk, with_record)
            }
            Message::Data { id, segment, chunk, data } => self.on_data(peer, id, segment, chunk, data),
            Message::Record { record } => {
                if self.publisher.verify(&self.stream, &record).is_err() {
                    self.stats.chunks_rejected += 1;
                    return self.ban(peer, Misbehaviour::ForgedRecord);
                }
                let id = record.record.segment;
                self.learn_segment(id);
                self.accept_record(record);
            }
            Message::Absent { id } => self.on_refused(peer, id, true),
            Message::Busy { id } => self.on_refused(peer, id, false),
            Message::Cancel { id } => {
                let before = self.uploads.len();
                self.uploads.retain(|u| !(u.peer == peer && u.id == id));
                if self.uploads.len() < before
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    p.queued_uploads = p.queued_uploads.saturating_sub(1);
                }
                for segment in self.segments.values_mut() {
                    segment.deferred.retain(|d| !(d.peer == peer && d.id == id));
                }
            }
        }
        self.drive(now);
    }

    fn on_request(&mut self, peer: P, id: u32, segment: SegmentId, chunk: u32, with_record: bool) {
        enum Answer {
            Serve(Bytes),
            Defer,
            Absent,
        }
        if !self.config.upload_enabled {
            return self.send(peer, Message::Busy { id });
        }
        let Some(entry) = self.segments.get_mut(&segment) else {
            return self.send(peer, Message::Absent { id });
        };
        let Some(record) = entry.record.clone() else {
            // Fetching from the origin before its record arrived: the record comes with
            // the segment, so answer then. Answering `Absent` would have the asker seed
            // the same segment from the origin a second time.
            if entry.http.is_some() && entry.deferred.len() < MAX_DEFERRED {
                entry.deferred.push(Deferred { peer, id, chunk, with_record });
                return;
            }
            return self.send(peer, Message::Absent { id });
        };
        entry.last_used = self.now;
        let answer = match entry.chunks.get(chunk as usize) {
            Some(Chunk::Have(data)) => Answer::Serve(data.clone()),
            // Coming from the origin: answer when it arrives. (Not for chunks we fetch
            // from peers: waiting on a peer that waits on a peer builds chains that
            // time out.)
            Some(Chunk::Http) => Answer::Defer,
            _ => Answer::Absent,
        };
        match answer {
            Answer::Absent => self.send(peer, Message::Absent { id }),
            Answer::Serve(data) => {
                let queued = self.peers.get(&peer).map_or(0, |p| p.queued_uploads);
                if queued >= self.config.max_queued_uploads_per_peer
                    || self.upload_backlog > self.config.max_upload_backlog
                {
                    return self.send(peer, Message::Busy { id });
                }
                if with_record {
                    self.send(peer, Message::Record { record: record.clone() });
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.queued_uploads += 1;
                }
                self.uploads.push_back(Upload { peer, id, segment, chunk, data });
            }
            Answer::Defer => {
                if entry.deferred.len() >= MAX_DEFERRED || self.upload_backlog > self.config.max_upload_backlog {
                    return self.send(peer, Message::Busy { id });
                }
                entry.deferred.push(Deferred { peer, id, chunk, with_record: false });
                if with_record {
                    self.send(peer, Message::Record { record: record.clone() });
                }
            }
        }
    }

    fn on_data(&mut self, peer: P, id: u32, segment: SegmentId, chunk: u32, data: Bytes) {
        let Some(request) = self.requests.get(&id) else {
            // A late answer to a cancelled request; harmless.
            return;
        };
        if request.peer != peer {
            return;
        }
        if request.segment != segment || request.chunk != chunk {
            self.requests.remove(&id);
            return self.ban(peer, Misbehaviour::ProtocolViolation);
        }
        let request = self.requests.remove(&id).expect("checked above");
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight = p.inflight.saturating_sub(1);
        }
        let Some(entry) = self.segments.get_mut(&segment) else { return };
        if entry.record_request == Some(id) {
            entry.record_request = None;
        }
        let Some(record) = entry.record.clone() else {
            // Asked for the record with this chunk and did not get it first.
            return self.ban(peer, Misbehaviour::ProtocolViolation);
        };
        if record.record.verify_chunk(chunk, &data).is_err() {
            self.stats.chunks_rejected += 1;
            self.release_chunk(segment, chunk);
            return self.ban(peer, Misbehaviour::CorruptChunk);
        }
        if !matches!(entry.chunks.get(chunk as usize), Some(Chunk::Requested { peer: p, .. }) if *p == peer) {
            // The chunk was meanwhile fetched another way; keep nothing twice.
            return;
        }
        let bytes = data.len() as u64;
        let elapsed = self.now.saturating_since(request.at).as_secs_f64().max(1e-4);
        if let Some(p) = self.peers.get_mut(&peer) {
            let sample = bytes as f64 / elapsed;
            p.rate = if p.rate == 0.0 { sample } else { p.rate * (1.0 - RATE_ALPHA) + sample * RATE_ALPHA };
        }
        self.stats.bytes_from_peers += bytes;
        if self.config.chunk_events {
            self.actions.push_back(Action::Event(Event::ChunkDownloaded { peer, segment, bytes }));
        }
        self.store_chunk(segment, chunk, data, Some(peer));
    }

    fn on_refused(&mut self, peer: P, id: u32, absent: bool) {
        let Some(request) = self.requests.remove(&id) else { return };
        if request.peer != peer {
            self.requests.insert(id, request);
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight = p.inflight.saturating_sub(1);
            if absent {
                p.have.remove(request.segment);
                p.fetching.remove(request.segment);
                p.partial.remove(&request.segment);
            } else {
                p.cooldown_until = self.now + BUSY_BACKOFF;
            }
        }
        if let Some(entry) = self.segments.get_mut(&request.segment)
            && absent
            && !entry.absent.contains(&peer)
        {
            entry.absent.push(peer);
        }
        self.release_chunk(request.segment, request.chunk);
    }

    // ---- HTTP ----------------------------------------------------------------------

    /// The body of HTTP fetch `id` (the requested range, or the whole segment).
    pub fn http_complete(&mut self, id: u64, body: Bytes, now: Instant) {
        self.now = now;
        let Some(HttpInFlight { segment, started, range }) = self.http.remove(&id) else { return };
        let took = now.saturating_since(started);
        self.http_time = if self.http_time.is_zero() { took } else { self.http_time.mul_f64(0.7) + took.mul_f64(0.3) };
        let Some(entry) = self.segments.get_mut(&segment) else { return };
        entry.http = None;
        let Some(record) = entry.record.clone() else {
            // No record: nothing to check against and nothing to share, but the player
            // still gets what the origin sent.
            self.stats.bytes_from_http += body.len() as u64;
            entry.from_http += body.len() as u64;
            if self.wants.remove(&segment).is_some() {
                self.stats.segments_delivered += 1;
                let size = body.len() as u64;
                self.actions.push_back(Action::Deliver(Delivery {
                    segment,
                    chunks: vec![body],
                    size,
                    from_peers: 0,
                    from_http: size,
                }));
            }
            return self.drive(now);
        };
        // Which bytes the fetch asked for: the body must be exactly those.
        let (start, end) = range.unwrap_or((0, record.record.size));
        let mut bad = body.len() as u64 != end.saturating_sub(start);
        let mut pieces = Vec::new();
        for index in 0..record.record.chunk_count() {
            if bad {
                break;
            }
            let offset = record.record.chunk_offset(index);
            let len = record.record.chunk_len(index) as u64;
            if offset < start || offset + len > end || matches!(entry.chunks[index as usize], Chunk::Have(_)) {
                continue;
            }
            let chunk = body.slice((offset - start) as usize..(offset - start + len) as usize);
            if record.record.verify_chunk(index, &chunk).is_err() {
                bad = true;
            } else {
                pieces.push((index, chunk));
            }
        }
        if bad {
            // The origin sent something that is not the signed segment: try again.
            self.stats.chunks_rejected += 1;
            self.abandon_http(segment);
            return self.drive(now);
        }
        for (index, chunk) in pieces {
            let len = chunk.len() as u64;
            self.stats.bytes_from_http += len;
            if let Some(e) = self.segments.get_mut(&segment) {
                e.from_http += len;
            }
            self.store_chunk(segment, index, chunk, None);
        }
        if let Some(entry) = self.segments.get_mut(&segment) {
            for chunk in entry.chunks.iter_mut() {
                if matches!(chunk, Chunk::Http) {
                    *chunk = Chunk::Missing;
                }
            }
        }
        self.drive(now);
    }

    /// HTTP fetch `id` failed. The segment is retried up to [`Config::http_attempts`].
    pub fn http_failed(&mut self, id: u64, now: Instant) {
        self.now = now;
        if let Some(HttpInFlight { segment, .. }) = self.http.remove(&id) {
            self.abandon_http(segment);
        }
        self.drive(now);
    }

    /// Puts the chunks an HTTP fetch covered back in the pool; gives the segment up if
    /// that was the last attempt.
    fn abandon_http(&mut self, segment: SegmentId) {
        self.dirty.push(segment);
        let Some(entry) = self.segments.get_mut(&segment) else { return };
        entry.http = None;
        for chunk in entry.chunks.iter_mut() {
            if matches!(chunk, Chunk::Http) {
                *chunk = Chunk::Missing;
            }
        }
        if entry.http_attempts >= self.config.http_attempts && self.wants.remove(&segment).is_some() {
            self.actions.push_back(Action::Failed { segment });
        }
    }

    fn start_http(&mut self, segment: SegmentId) {
        let Some(entry) = self.segments.get_mut(&segment) else { return };
        if entry.http.is_some() || entry.http_attempts >= self.config.http_attempts {
            return;
        }
        let id = self.next_http;
        self.next_http += 1;
        entry.http = Some(id);
        entry.http_attempts += 1;
        self.stats.http_fetches += 1;
        let range = match &entry.record {
            None => None,
            Some(record) => {
                let missing: Vec<u32> = entry
                    .chunks
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c, Chunk::Missing | Chunk::Requested { .. }))
                    .map(|(i, _)| i as u32)
                    .collect();
                let (Some(&first), Some(&last)) = (missing.first(), missing.last()) else {
                    entry.http = None;
                    return;
                };
                // One contiguous range: chunks in it we already hold are skipped on arrival.
                for index in first..=last {
                    let chunk = &mut entry.chunks[index as usize];
                    match chunk {
                        Chunk::Have(_) => {}
                        _ => *chunk = Chunk::Http,
                    }
                }
                let start = record.record.chunk_offset(first);
                let end = record.record.chunk_offset(last) + record.record.chunk_len(last) as u64;
                (start > 0 || end < record.record.size).then_some((start, end))
            }
        };
        // Peer requests for chunks HTTP now covers are cancelled.
        let cancelled: Vec<u32> = self
            .requests
            .iter()
            .filter(|(_, r)| r.segment == segment)
            .filter(|(_, r)| matches!(self.segments[&segment].chunks.get(r.chunk as usize), Some(Chunk::Http)))
            .map(|(id, _)| *id)
            .collect();
        for request_id in cancelled {
            if let Some(r) = self.requests.remove(&request_id) {
                if let Some(p) = self.peers.get_mut(&r.peer) {
                    p.inflight = p.inflight.saturating_sub(1);
                }
                self.send(r.peer, Message::Cancel { id: request_id });
            }
        }
        self.http.insert(id, HttpInFlight { segment, started: self.now, range });
        self.dirty.push(segment);
        self.actions.push_back(Action::HttpFetch { id, segment, range });
    }

    // ---- storage -------------------------------------------------------------------

    fn store_chunk(&mut self, segment: SegmentId, index: u32, data: Bytes, from: Option<P>) {
        let Some(entry) = self.segments.get_mut(&segment) else { return };
        let Some(slot) = entry.chunks.get_mut(index as usize) else { return };
        if matches!(slot, Chunk::Have(_)) {
            return;
        }
        let len = data.len() as u64;
        *slot = Chunk::Have(data.clone());
        entry.have += 1;
        self.dirty.push(segment);
        if from.is_some() {
            entry.from_peers += len;
        }
        self.cached_bytes += len;
        // Answer the peers that were waiting for this chunk.
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut entry.deferred).into_iter().partition(|d| d.chunk == index);
        entry.deferred = waiting;
        let record = entry.record.clone();
        for d in ready {
            if self.peers.contains_key(&d.peer) {
                if d.with_record
                    && let Some(record) = &record
                {
                    self.send(d.peer, Message::Record { record: record.clone() });
                }
                if let Some(p) = self.peers.get_mut(&d.peer) {
                    p.queued_uploads += 1;
                }
                self.uploads.push_back(Upload { peer: d.peer, id: d.id, segment, chunk: index, data: data.clone() });
            }
        }
    }

    /// Puts a chunk we were fetching from a peer back in the pool.
    fn release_chunk(&mut self, segment: SegmentId, chunk: u32) {
        if let Some(entry) = self.segments.get_mut(&segment)
            && let Some(slot) = entry.chunks.get_mut(chunk as usize)
            && matches!(slot, Chunk::Requested { .. })
        {
            *slot = Chunk::Missing;
        }
    }

    fn evict_if_needed(&mut self) {
        while self.cached_bytes > self.config.cache_capacity {
            let victim = self
                .segments
                .iter()
                .filter(|(id, s)| s.complete() && !self.wants.contains_key(id) && s.deferred.is_empty())
                .min_by_key(|(id, s)| if self.config.live { (Instant::ZERO, **id) } else { (s.last_used, **id) })
                .map(|(id, _)| *id);
            let Some(victim) = victim else { break };
            self.drop_segment(victim);
        }
    }

    fn drop_segment(&mut self, id: SegmentId) {
        let Some(entry) = self.segments.remove(&id) else { return };
        let held: u64 = entry.chunks.iter().map(|c| if let Chunk::Have(d) = c { d.len() as u64 } else { 0 }).sum();
        self.cached_bytes -= held;
        if entry.announced.anything() {
            self.broadcast(Message::Dropped { segment: id });
        }
    }

    // ---- the scheduler -------------------------------------------------------------

    /// Runs after every input: expires stalled requests, advances every wanted segment,
    /// serves uploads, announces changes, and works out the next wake-up.
    fn drive(&mut self, now: Instant) {
        self.now = now;
        self.expire_requests();
        let wanted: Vec<(SegmentId, Instant)> = self.wants.iter().map(|(s, d)| (*s, *d)).collect();
        for (segment, deadline) in wanted {
            self.advance(segment, Some(deadline));
        }
        for segment in self.prefetch_candidates() {
            self.advance(segment, None);
        }
        self.pump_uploads();
        self.announce_changes();
        self.evict_if_needed();
        self.next_wake = self.compute_wake();
    }

    fn expire_requests(&mut self) {
        let timeout = self.config.chunk_timeout;
        let now = self.now;
        if !self.requests.values().any(|r| now.saturating_since(r.at) >= timeout) {
            return;
        }
        let expired: Vec<u32> =
            self.requests.iter().filter(|(_, r)| now.saturating_since(r.at) >= timeout).map(|(id, _)| *id).collect();
        for id in expired {
            let Some(r) = self.requests.remove(&id) else { continue };
            self.stats.chunk_timeouts += 1;
            if let Some(p) = self.peers.get_mut(&r.peer) {
                p.inflight = p.inflight.saturating_sub(1);
                p.cooldown_until = now + self.config.peer_cooldown;
                p.rate *= 0.5;
            }
            self.send(r.peer, Message::Cancel { id });
            self.release_chunk(r.segment, r.chunk);
        }
    }

    /// Moves one segment forward. `deadline` is `None` for a prefetch: peers only, no
    /// HTTP, nothing delivered (it waits in the cache for the player's want).
    fn advance(&mut self, segment: SegmentId, deadline: Option<Instant>) {
        let now = self.now;
        let urgent_window = self.urgent_window();
        let Some(entry) = self.segments.get_mut(&segment) else { return };
        entry.last_used = now;
        if entry.complete() {
            if deadline.is_some() {
                self.wants.remove(&segment);
                self.stats.segments_delivered += 1;
                let chunks = entry
                    .chunks
                    .iter()
                    .filter_map(|c| if let Chunk::Have(d) = c { Some(d.clone()) } else { None })
                    .collect();
                self.actions.push_back(Action::Deliver(Delivery {
                    segment,
                    chunks,
                    size: entry.size(),
                    from_peers: entry.from_peers,
                    from_http: entry.from_http,
                }));
            }
            return;
        }
        if entry.http.is_some() {
            return;
        }
        if let Some(deadline) = deadline {
            if !self.config.p2p_download_enabled {
                self.stats.http_no_p2p += 1;
                return self.start_http(segment);
            }
            if deadline.saturating_since(now) <= urgent_window {
                self.stats.http_urgent += 1;
                return self.start_http(segment);
            }
        } else if !self.config.p2p_download_enabled {
            return;
        }
        let record_pending = entry.record_request.is_some_and(|id| self.requests.contains_key(&id));
        if entry.record.is_none() {
            // Without the record nothing from a peer can be checked: ask a holder for
            // it, or fall back to HTTP when patience runs out.
            if record_pending {
                return;
            }
            if let Some(peer) = self.sources(segment).first().copied() {
                let id = self.request(peer, segment, 0, true);
                if let Some(e) = self.segments.get_mut(&segment) {
                    e.record_request = Some(id);
                }
            } else if deadline.is_some() && now >= self.segments[&segment].seed_at && !self.has_source(segment) {
                self.stats.http_seeds += 1;
                self.start_http(segment);
            }
            return;
        }
        if !self.has_source(segment) {
            let entry = &self.segments[&segment];
            let nothing_requested = !entry.chunks.iter().any(|c| matches!(c, Chunk::Requested { .. }));
            if deadline.is_some() && now >= entry.seed_at && nothing_requested {
                // Nobody we know has it or is getting it: seed it.
                self.stats.http_seeds += 1;
                self.start_http(segment);
            }
            return;
        }
        self.request_missing(segment);
    }

    /// Segments just past the newest wanted one that neighbours already hold or fetch:
    /// fetched from them ahead of the player, so a live segment spreads before every
    /// viewer's playlist lists it.
    fn prefetch_candidates(&self) -> Vec<SegmentId> {
        let Some((&newest, _)) = self.wants.last_key_value() else { return Vec::new() };
        let last = SegmentId(newest.0 + u64::from(self.config.prefetch_ahead));
        self.segments.range(SegmentId(newest.0 + 1)..=last).filter(|(_, s)| !s.complete()).map(|(id, _)| *id).collect()
    }

    /// How close to its deadline a segment must be before HTTP takes over: the
    /// configured window, or more when the origin has been slow (three measured fetch
    /// times, so one retry still fits).
    fn urgent_window(&self) -> Duration {
        self.config.urgent_window.max(self.http_time.mul_f64(3.0))
    }

    /// Whether `peer` can take a request now.
    fn usable(&self, peer: &P, p: &Peer, segment: SegmentId) -> bool {
        p.hello
            && self.now >= p.cooldown_until
            && p.inflight < self.config.max_inflight_per_peer
            && !self.segments.get(&segment).is_some_and(|s| s.absent.contains(peer))
    }

    /// Whether any peer holds or is getting part of `segment`. A peer whose request
    /// pipeline is full, or that we are leaving alone for a moment after a `Busy` or a
    /// timeout, still counts: the segment is in the swarm, and seeding it from the origin
    /// again would fetch it twice. (If that peer never delivers, the urgent window does.)
    fn has_source(&self, segment: SegmentId) -> bool {
        let absent = self.segments.get(&segment).map(|s| s.absent.as_slice()).unwrap_or_default();
        self.peers.iter().any(|(peer, p)| {
            p.hello
                && !absent.contains(peer)
                && (p.have.contains(segment) || p.fetching.contains(segment) || p.partial.contains_key(&segment))
        })
    }

    /// Peers that hold or are getting at least part of `segment` and can take a request.
    fn sources(&mut self, segment: SegmentId) -> Vec<P> {
        let mut found: Vec<P> = self
            .peers
            .iter()
            .filter(|(peer, p)| self.usable(peer, p, segment))
            .filter(|(_, p)| {
                p.have.contains(segment) || p.fetching.contains(segment) || p.partial.contains_key(&segment)
            })
            .map(|(peer, _)| *peer)
            .collect();
        found.shuffle(&mut self.rng);
        found
    }

    /// Requests missing chunks, each from the best peer holding that very chunk:
    /// fewest of our requests outstanding, then best measured throughput (with jitter so
    /// load spreads); peers fetching from the origin come last, as they answer late.
    fn request_missing(&mut self, segment: SegmentId) {
        struct Candidate<P> {
            peer: P,
            whole: bool,
            from_origin: bool,
            rate: f64,
            inflight: usize,
        }
        let entry = &self.segments[&segment];
        let mut missing: Vec<u32> = entry
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, Chunk::Missing))
            .map(|(i, _)| i as u32)
            .collect();
        if missing.is_empty() {
            return;
        }
        let mut candidates: Vec<Candidate<P>> = self
            .peers
            .iter()
            .filter(|(peer, p)| self.usable(peer, p, segment))
            .filter(|(_, p)| {
                p.have.contains(segment) || p.fetching.contains(segment) || p.partial.contains_key(&segment)
            })
            .map(|(peer, p)| Candidate {
                peer: *peer,
                whole: p.have.contains(segment),
                from_origin: p.fetching.contains(segment),
                rate: if p.rate == 0.0 { UNMEASURED_RATE } else { p.rate },
                inflight: p.inflight,
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        // Random order: peers fetching the same segment from the same holder then hold
        // different chunks, which they trade with each other.
        missing.shuffle(&mut self.rng);
        let max_inflight = self.config.max_inflight_per_peer;
        for chunk in missing {
            if self.requests.len() >= self.config.max_inflight_total {
                return;
            }
            let mut best: Option<(f64, usize)> = None;
            for (i, c) in candidates.iter().enumerate() {
                if c.inflight >= max_inflight {
                    continue;
                }
                let holds = c.whole
                    || self
                        .peers
                        .get(&c.peer)
                        .and_then(|p| p.partial.get(&segment))
                        .is_some_and(|set| set.contains(chunk));
                if !holds && !c.from_origin {
                    continue;
                }
                let mut score = c.rate * (0.8 + 0.4 * self.rng.r#gen::<f64>()) / (1 + c.inflight) as f64;
                if !holds {
                    score *= 0.1;
                }
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, i));
                }
            }
            if let Some((_, i)) = best {
                candidates[i].inflight += 1;
                let peer = candidates[i].peer;
                self.request(peer, segment, chunk, false);
            }
        }
    }

    fn request(&mut self, peer: P, segment: SegmentId, chunk: u32, with_record: bool) -> u32 {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        let now = self.now;
        self.requests.insert(id, Request { peer, segment, chunk, at: now });
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight += 1;
        }
        if let Some(entry) = self.segments.get_mut(&segment)
            && let Some(slot) = entry.chunks.get_mut(chunk as usize)
        {
            *slot = Chunk::Requested { peer };
        }
        self.send(peer, Message::Request { id, segment, chunk, with_record });
        id
    }

    fn pump_uploads(&mut self) {
        if let Some(rate) = self.config.upload_rate_limit {
            let elapsed = self.now.saturating_since(self.upload_refilled).as_secs_f64();
            // Allow bursts of a quarter second's worth.
            let cap = rate as f64 / 4.0;
            self.upload_tokens = (self.upload_tokens + elapsed * rate as f64).min(cap.max(256.0 * 1024.0));
            self.upload_refilled = self.now;
        }
        while let Some(upload) = self.uploads.front() {
            let len = upload.data.len() as f64;
            if self.config.upload_rate_limit.is_some() {
                if self.upload_tokens < len {
                    break;
                }
                self.upload_tokens -= len;
            }
            let Some(upload) = self.uploads.pop_front() else { break };
            let bytes = upload.data.len() as u64;
            if let Some(p) = self.peers.get_mut(&upload.peer) {
                p.queued_uploads = p.queued_uploads.saturating_sub(1);
            }
            self.stats.bytes_uploaded += bytes;
            if self.config.chunk_events {
                self.actions.push_back(Action::Event(Event::ChunkUploaded {
                    peer: upload.peer,
                    segment: upload.segment,
                    bytes,
                }));
            }
            self.send(
                upload.peer,
                Message::Data { id: upload.id, segment: upload.segment, chunk: upload.chunk, data: upload.data },
            );
        }
    }

    /// Tells neighbours what changed: an origin fetch started, chunks arrived, a
    /// segment completed or was abandoned.
    fn announce_changes(&mut self) {
        if !self.config.upload_enabled {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort();
        dirty.dedup();
        let mut changes = Vec::new();
        for segment in dirty {
            let Some(entry) = self.segments.get_mut(&segment) else { continue };
            let before = entry.announced;
            if entry.complete() {
                if !before.complete {
                    changes.push(Message::Have { segment });
                    entry.announced = Announced { complete: true, ..before };
                }
                continue;
            }
            let mut now_state = before;
            if entry.http.is_some() && !before.http {
                changes.push(Message::Fetching { segment });
                now_state.http = true;
            }
            if entry.have > before.chunks {
                changes.push(Message::HaveChunks { segment, chunks: entry.held_chunks() });
                now_state.chunks = entry.have;
            }
            if entry.http.is_none() && entry.have == 0 && before.anything() {
                // Gave up (HTTP failed, requests cancelled): don't keep attracting requests.
                changes.push(Message::Dropped { segment });
                now_state = Announced::default();
            }
            entry.announced = now_state;
        }
        for message in changes {
            self.broadcast(message);
        }
    }

    /// The earliest future moment something time-based happens: a request times out, a
    /// want becomes urgent, patience runs out, a cooldown ends, upload tokens suffice.
    fn compute_wake(&self) -> Option<Instant> {
        let now = self.now;
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if t > now {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        for request in self.requests.values() {
            consider(request.at + self.config.chunk_timeout);
        }
        let mut waiting_on_peers = false;
        for (segment, deadline) in &self.wants {
            let Some(entry) = self.segments.get(segment) else { continue };
            if entry.http.is_some() || entry.complete() {
                continue;
            }
            consider(*deadline - self.urgent_window());
            consider(entry.seed_at);
            waiting_on_peers = true;
        }
        if waiting_on_peers
            && let Some(cooldown) = self.peers.values().map(|p| p.cooldown_until).filter(|c| *c > now).min()
        {
            consider(cooldown);
        }
        if !self.uploads.is_empty()
            && let Some(rate) = self.config.upload_rate_limit
        {
            let need = self.uploads.front().map_or(0.0, |u| u.data.len() as f64) - self.upload_tokens;
            consider(now + Duration::from_secs_f64((need.max(0.0) / rate as f64).max(0.001)));
        }
        wake
    }

    // ---- output --------------------------------------------------------------------

    fn send(&mut self, peer: P, message: Message) {
        self.actions.push_back(Action::Send { peer, message });
    }

    fn broadcast(&mut self, message: Message) {
        let peers: Vec<P> = self.peers.keys().copied().collect();
        for peer in peers {
            self.send(peer, message.clone());
        }
    }
}
