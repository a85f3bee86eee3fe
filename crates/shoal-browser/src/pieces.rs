//! One swarm's piece exchange in the page: the `shoal-core` engine, the segment URLs the
//! playlist gave, the player's pending fetches, and traffic per peer.
//!
//! Plain data, owned by the runtime: inputs are method calls with the current time,
//! outputs are [`Effect`]s drained with [`Pieces::poll_effect`] (frames to write, HTTP
//! fetches to make, peers to cut off, events). Nothing here touches the browser, so the
//! tests drive it natively, with integer peers.

use std::{collections::VecDeque, fmt::Display, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::channel::oneshot;
use shoal_core::{
    Config as EngineConfig, Delivery, Engine, Event as EngineEvent, Instant, Message, Misbehaviour, Output,
    PublisherKey, SegmentId, SegmentInfo, SignedRecord, StreamId,
    codec::Frame,
    engine::PeerKey,
    vecmap::{VecMap, VecSet},
    wire::FrameDecoder,
};
pub use shoal_proto::record_url;

use crate::{
    error::ShoalError,
    events::{Event, PeerTraffic, SwarmStats},
};

/// Where the answer to `fetchSegment` goes: the verified segment, chunk by chunk (the
/// API copies it once, into the buffer the player gets).
pub type Reply = oneshot::Sender<Result<Delivery, ShoalError>>;

/// How to run one swarm's piece exchange.
#[derive(Debug, Clone)]
pub struct PiecesOptions {
    pub name: String,
    pub publisher: PublisherKey,
    pub engine: EngineConfig,
    /// A segment's signed record lives at its URL plus this.
    pub record_suffix: String,
    /// Testing only: flip a byte of every chunk uploaded.
    pub corrupt_uploads: bool,
}

/// What the runtime must do for a [`Pieces`].
#[derive(Debug)]
pub enum Effect<P> {
    /// Write `frame` to `peer`: chunks and records (`bulk`) on the data link, everything
    /// else on the control link (so announcements never wait behind megabytes).
    Send {
        peer: P,
        frame: Bytes,
        bulk: bool,
    },
    /// Fetch `url` (bytes `range`), and the record at `record_url` beside it; report with
    /// [`Pieces::fetch_done`] under `id`.
    Fetch {
        id: u64,
        url: String,
        range: Option<(u64, u64)>,
        record_url: Option<String>,
    },
    /// Abort fetch `id`; its result is no longer wanted.
    CancelFetch {
        id: u64,
    },
    /// Cut `peer` off: it misbehaved (see `reason`). The engine already forgot it.
    Disconnect {
        peer: P,
        reason: Misbehaviour,
    },
    Event(Event),
}

/// See the module docs.
pub struct Pieces<P: PeerKey> {
    pub name: String,
    pub stream_id: StreamId,
    engine: Engine<P>,
    record_suffix: String,
    corrupt_uploads: bool,
    urls: VecMap<SegmentId, SegmentLocation>,
    pending: VecMap<SegmentId, Vec<Reply>>,
    traffic: VecMap<P, PeerTraffic>,
    segments_failed: u64,
    /// Origin records that did not verify, and whether the page has been told.
    records_refused: u64,
    refusal_reported: bool,
    /// Peers the engine knows.
    peers: VecSet<P>,
    effects: VecDeque<Effect<P>>,
    /// Uploads as the page asked (`setUploadEnabled`); paused anyway while shedding load.
    upload_wanted: bool,
    shedding: bool,
    urgent_window: Duration,
}

/// The urgent window while the page sheds load: what is due within it comes over HTTP,
/// about two segments, instead of waiting on peers while the page cannot keep up.
pub const SHED_URGENT_WINDOW: Duration = Duration::from_secs(4);

/// Most player fetches waiting on one segment (a player asks once; this bounds a page
/// that asks in a loop).
const MAX_PENDING_PER_SEGMENT: usize = 16;

impl<P: PeerKey + Display> Pieces<P> {
    pub fn new(options: PiecesOptions, seed: u64, now: Instant) -> Self {
        let stream_id = StreamId::from_name(&options.name);
        let upload_wanted = options.engine.upload_enabled;
        let urgent_window = options.engine.urgent_window;
        Self {
            upload_wanted,
            shedding: false,
            urgent_window,
            engine: Engine::new(options.engine, stream_id, options.publisher, seed, now),
            name: options.name,
            stream_id,
            record_suffix: options.record_suffix,
            corrupt_uploads: options.corrupt_uploads,
            urls: VecMap::new(),
            pending: VecMap::new(),
            traffic: VecMap::new(),
            segments_failed: 0,
            records_refused: 0,
            refusal_reported: false,
            peers: VecSet::new(),
            effects: VecDeque::new(),
        }
    }

    pub fn engine(&self) -> &Engine<P> {
        &self.engine
    }

    /// Whether the engine knows `peer`.
    pub fn knows(&self, peer: &P) -> bool {
        self.peers.contains(peer)
    }

    // ---- inputs ----------------------------------------------------------------------

    /// A direct connection to `peer` is up (or its links were reopened): the engine
    /// greets it.
    pub fn peer_connected(&mut self, peer: P, now: Instant) {
        if self.peers.insert(peer) {
            self.engine.peer_connected(peer, now);
        }
    }

    /// `peer` is gone (disconnected, cut off, or its links died).
    pub fn peer_gone(&mut self, peer: P, now: Instant) {
        if self.peers.remove(&peer) {
            self.engine.peer_disconnected(peer, now);
        }
    }

    /// A decoded message from `peer`.
    pub fn on_message(&mut self, peer: P, message: Message, now: Instant) {
        if let Message::Data { data, .. } = &message {
            self.traffic.get_or_default(peer).down += data.len() as u64;
        }
        self.engine.handle_message(peer, message, now);
    }

    pub fn set_swarm_size(&mut self, size: usize) {
        self.engine.set_swarm_size(size);
    }

    /// What our uplink holds (time to drain) and its measured rate, bytes per second.
    pub fn set_uplink(&mut self, backlog: Duration, rate: f64) {
        self.engine.set_uplink(backlog, rate);
    }

    /// The playlist: segment ids and where they are (records come from peers or beside
    /// segments).
    pub fn set_playlist(&mut self, segments: Vec<(u64, SegmentLocation)>, now: Instant) {
        // A live playlist slides: forget the URLs of segments that left it (unless a
        // fetch still waits on one), or a day of viewing keeps tens of thousands.
        if let Some(oldest) = segments.iter().map(|(id, _)| *id).min() {
            let pending = &self.pending;
            self.urls.retain(|id, _| id.0 >= oldest || pending.contains_key(id));
        }
        let infos: Vec<SegmentInfo> = segments
            .into_iter()
            .map(|(id, location)| {
                self.urls.insert(SegmentId(id), location);
                SegmentInfo { id: SegmentId(id), record: None }
            })
            .collect();
        self.engine.update_playlist(infos, now);
    }

    /// The player needs segment `id` (at `location`) by `deadline`; `reply` gets it.
    pub fn fetch_segment(&mut self, id: u64, location: SegmentLocation, deadline: Instant, reply: Reply, now: Instant) {
        let segment = SegmentId(id);
        let waiting = self.pending.get_or_default(segment);
        if waiting.len() >= MAX_PENDING_PER_SEGMENT {
            let _ = reply.send(Err(ShoalError::Overloaded("fetches of one segment")));
            return;
        }
        waiting.push(reply);
        self.urls.insert(segment, location);
        self.engine.want(segment, deadline, now);
    }

    /// The player gave up on segment `id`.
    pub fn cancel_segment(&mut self, id: u64, now: Instant) {
        let segment = SegmentId(id);
        self.pending.remove(&segment);
        self.engine.unwant(segment, now);
    }

    /// Segment bytes the page already has (it loaded them itself).
    pub fn offer_segment(&mut self, id: u64, data: Bytes, now: Instant) -> Result<(), ShoalError> {
        self.engine.offer_segment(SegmentId(id), data, now).map_err(|e| ShoalError::Integrity(e.to_string()))
    }

    pub fn set_switches(&mut self, upload: Option<bool>, p2p_download: Option<bool>, now: Instant) {
        if let Some(upload) = upload {
            self.upload_wanted = upload;
            self.engine.set_upload_enabled(upload && !self.shedding, now);
        }
        if let Some(download) = p2p_download {
            self.engine.set_p2p_download_enabled(download, now);
        }
    }

    /// The page is starved of CPU (see `load`): uploads pause and what is due within
    /// [`SHED_URGENT_WINDOW`] comes over HTTP; or it recovered.
    pub fn set_shedding(&mut self, shedding: bool, now: Instant) {
        if self.shedding == shedding {
            return;
        }
        self.shedding = shedding;
        self.engine.set_upload_enabled(self.upload_wanted && !shedding, now);
        let window = if shedding { self.urgent_window.max(SHED_URGENT_WINDOW) } else { self.urgent_window };
        self.engine.set_urgent_window(window, now);
    }

    /// Fetch `id` ended: its body (or why not), and its record if one was fetched.
    pub fn fetch_done(&mut self, id: u64, body: Result<Bytes, String>, record: Option<Bytes>, now: Instant) {
        if let Some(record) = record.as_deref().and_then(decode_record) {
            // A bad record from the origin is not the end: the body still reaches the
            // player (unchecked records are simply not used to share it).
            let segment = record.record.segment.0;
            if let Err(error) = self.engine.add_record(record, now) {
                tracing::info!(swarm = %self.name, %error, "origin record refused");
                self.records_refused += 1;
                // Once per swarm: the same mistake refuses every record, and without
                // records nothing is shared (offload stays at 0 with no other sign).
                if !self.refusal_reported {
                    self.refusal_reported = true;
                    self.effects.push_back(Effect::Event(Event::RecordRefused {
                        swarm: self.name.clone(),
                        segment,
                        reason: refusal_reason(&error),
                    }));
                }
            }
        }
        match body {
            Ok(body) => self.engine.http_complete(id, body, now),
            Err(error) => {
                tracing::info!(swarm = %self.name, %error, "segment fetch failed");
                self.engine.http_failed(id, now);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
    }

    /// When [`Pieces::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    /// Ends the swarm: every pending fetch fails. Returns the HTTP fetches to abort.
    pub fn shutdown(&mut self) {
        for (_, replies) in self.pending.drain() {
            for reply in replies {
                let _ = reply.send(Err(ShoalError::Stopped));
            }
        }
    }

    // ---- outputs ---------------------------------------------------------------------

    /// The next thing to do; `None` once everything from the last inputs is out.
    pub fn poll_effect(&mut self) -> Option<Effect<P>> {
        loop {
            if let Some(effect) = self.effects.pop_front() {
                return Some(effect);
            }
            let output = self.engine.poll_output()?;
            self.translate(output);
        }
    }

    fn translate(&mut self, output: Output<P>) {
        match output {
            Output::Send { peer, message } => self.send(peer, message),
            Output::HttpFetch { id, segment, range } => {
                let Some(location) = self.urls.get(&segment) else {
                    // No URL known (a prefetch never asks): nothing to fetch.
                    let now = self.engine_now();
                    self.engine.http_failed(id, now);
                    return;
                };
                let record_url = (!self.engine.has_record(segment))
                    .then(|| record_url(&location.url, location.range, &self.record_suffix));
                let range = location.file_range(range);
                let url = location.url.clone();
                self.effects.push_back(Effect::Fetch { id, url, range, record_url });
            }
            Output::CancelHttp { id } => self.effects.push_back(Effect::CancelFetch { id }),
            Output::Deliver(delivery) => {
                self.effects.push_back(Effect::Event(Event::SegmentLoaded {
                    swarm: self.name.clone(),
                    segment: delivery.segment.0,
                    bytes: delivery.size,
                    from_peers: delivery.from_peers,
                    from_http: delivery.from_http,
                }));
                for reply in self.pending.remove(&delivery.segment).unwrap_or_default() {
                    let _ = reply.send(Ok(delivery.clone()));
                }
            }
            Output::Failed { segment } => {
                self.segments_failed += 1;
                for reply in self.pending.remove(&segment).unwrap_or_default() {
                    let _ = reply.send(Err(ShoalError::SegmentUnavailable(format!(
                        "segment {} could not be fetched",
                        segment.0
                    ))));
                }
            }
            Output::Disconnect { peer, reason } => {
                self.peers.remove(&peer);
                self.effects.push_back(Effect::Disconnect { peer, reason });
            }
            Output::Event(EngineEvent::PeerBanned { peer, reason }) => {
                self.effects.push_back(Effect::Event(Event::PeerBanned {
                    peer: peer.to_string(),
                    reason: format!("{reason:?}"),
                }));
            }
            Output::Event(EngineEvent::ChunkDownloaded { peer, segment, bytes }) => {
                self.effects.push_back(Effect::Event(Event::ChunkDown {
                    swarm: self.name.clone(),
                    peer: peer.to_string(),
                    segment: segment.0,
                    bytes,
                }));
            }
            Output::Event(EngineEvent::ChunkUploaded { peer, segment, bytes }) => {
                self.effects.push_back(Effect::Event(Event::ChunkUp {
                    swarm: self.name.clone(),
                    peer: peer.to_string(),
                    segment: segment.0,
                    bytes,
                }));
            }
        }
    }

    /// The engine's idea of now (the last input's time), for inputs made while
    /// translating its outputs.
    fn engine_now(&self) -> Instant {
        self.engine.now()
    }

    fn send(&mut self, peer: P, mut message: Message) {
        if let Message::Data { id, segment, chunk, data } = &message {
            self.traffic.get_or_default(peer).up += data.len() as u64;
            if self.corrupt_uploads {
                let mut bad = data.to_vec();
                if let Some(b) = bad.first_mut() {
                    *b ^= 0xff;
                }
                message = Message::Data { id: *id, segment: *segment, chunk: *chunk, data: Bytes::from(bad) };
            }
        }
        let bulk = matches!(message, Message::Data { .. } | Message::Record { .. });
        self.effects.push_back(Effect::Send { peer, frame: message.to_frame(), bulk });
    }

    pub fn stats(&self) -> SwarmStats {
        let s = self.engine.stats();
        SwarmStats {
            bytes_from_peers: s.bytes_from_peers,
            bytes_from_http: s.bytes_from_http,
            bytes_uploaded: s.bytes_uploaded,
            segments_loaded: s.segments_delivered,
            segments_failed: self.segments_failed,
            records_refused: self.records_refused,
            chunks_rejected: s.chunks_rejected,
            peers_banned: s.peers_banned,
            http_early: s.http_early,
            http_seeds: s.http_seeds,
            http_urgent: s.http_urgent,
            http_hedges: s.http_hedges,
            cached_bytes: self.engine.cached_bytes(),
            peers: self.engine.connected_peers(),
            per_peer: self.traffic.iter().map(|(p, t)| (p.to_string(), t.clone())).collect(),
        }
    }
}

/// A record file: one wire frame holding a `Record` message.
/// What a page's developer should check when the origin's records do not verify.
fn refusal_reason(error: &shoal_core::integrity::IntegrityError) -> String {
    use shoal_core::integrity::IntegrityError;
    match error {
        IntegrityError::WrongStream => "the origin's records were signed for another swarm id: the page's swarm id \
             (ShoalHls `swarmId`, `join(swarm)`) must equal the `--swarm` the publisher signed with"
            .into(),
        IntegrityError::BadSignature => {
            "the origin's records are not signed by `publisherKey`: check the key the page is given".into()
        }
        other => format!("the origin's record is invalid: {other}"),
    }
}

pub fn decode_record(bytes: &[u8]) -> Option<Arc<SignedRecord>> {
    let mut decoder = FrameDecoder::new();
    decoder.extend(bytes);
    match decoder.next_frame() {
        Ok(Some(Message::Record { record })) => Some(record),
        _ => None,
    }
}

/// Where a segment's bytes are: a whole file, or bytes `start..end` of one (an HLS
/// `EXT-X-BYTERANGE` segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLocation {
    pub url: String,
    pub range: Option<(u64, u64)>,
}

impl SegmentLocation {
    pub fn whole(url: impl Into<String>) -> Self {
        Self { url: url.into(), range: None }
    }

    /// The bytes of the file to fetch for bytes `part` of the segment (all of it if none).
    pub fn file_range(&self, part: Option<(u64, u64)>) -> Option<(u64, u64)> {
        match (self.range, part) {
            (Some((base, _)), Some((start, end))) => Some((base + start, base + end)),
            (Some(range), None) => Some(range),
            (None, part) => part,
        }
    }
}
