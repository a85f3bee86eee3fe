//! Runs one `shoal-core` engine per joined swarm in the page: feeds it what peers send on
//! `/shoal/pieces/1` streams, the page's clock and HTTP results, and carries out what it
//! asks for — frames to peers, `fetch`es, segments to the player, bans.
//!
//! Each direct connection carries one outbound stream per swarm (what we send) and the
//! peer's outbound stream (what it sends). The engine hears of a peer as soon as the
//! connection exists; frames queue until our stream is open.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet},
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures::{
    AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt,
    channel::{mpsc, oneshot},
    select,
};
use futures_timer::Delay;
use libp2p::{PeerId, StreamProtocol};
use shoal_core::{
    Config as EngineConfig, Delivery, Engine, Event as EngineEvent, Instant, Message, PublisherKey, SegmentId,
    Output, SegmentInfo, SignedRecord, StreamId, wire::FrameDecoder,
};

use crate::{
    http::{Fetch, record_url},
    runtime::{Command, Event, EventSink},
    streams::OpenError,
};

/// Protocol of piece-exchange streams.
pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new(shoal_core::wire::PROTOCOL_NAME);

/// Most bytes queued towards one peer before frames are dropped (the engine retries what
/// matters; a peer this far behind is too slow to be useful).
const MAX_QUEUED_PER_PEER: usize = 8 * 1024 * 1024;

/// Milliseconds on the page's monotonic clock.
pub(crate) fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or_else(js_sys::Date::now, |p| p.now())
}

fn now() -> Instant {
    Instant::from_millis_f64(now_ms())
}

/// What JavaScript gets back for a segment.
pub(crate) struct Loaded {
    pub data: Vec<u8>,
    pub from_peers: u64,
    pub from_http: u64,
}

/// Our two outbound streams to one peer: control messages (announcements, requests,
/// cancels) never queue behind chunk data, so a neighbour hears that we started fetching
/// a segment at once, not after the megabytes we are uploading to it.
struct Writer {
    control: mpsc::UnboundedSender<Bytes>,
    data: mpsc::UnboundedSender<Bytes>,
    /// Bytes handed to the data stream and not yet written.
    queued: Rc<Cell<usize>>,
}

/// Counters JavaScript reads through `stats()`.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SwarmStats {
    pub bytes_from_peers: u64,
    pub bytes_from_http: u64,
    pub bytes_uploaded: u64,
    pub segments_loaded: u64,
    pub segments_failed: u64,
    pub chunks_rejected: u64,
    pub peers_banned: u64,
    /// HTTP fetches because nobody had the segment yet / because it was due soon.
    pub http_seeds: u64,
    pub http_urgent: u64,
    pub cached_bytes: u64,
    pub peers: usize,
    /// Per peer: bytes received from it and sent to it.
    pub per_peer: HashMap<String, PeerTraffic>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PeerTraffic {
    pub down: u64,
    pub up: u64,
}

struct Inner {
    engine: Engine<PeerId>,
    writers: HashMap<PeerId, Writer>,
    /// Connected peers that do not speak the pieces protocol (not Shoal pages): not asked
    /// again until they reconnect.
    foreign: HashSet<PeerId>,
    urls: HashMap<SegmentId, String>,
    pending: HashMap<SegmentId, Vec<oneshot::Sender<Result<Delivery, String>>>>,
    fetches: HashMap<u64, Rc<Fetch>>,
    traffic: HashMap<PeerId, PeerTraffic>,
    segments_failed: u64,
    /// Bytes written to peers over the last interval, for the upload backlog estimate.
    sent_window: (f64, u64),
    upload_rate: f64,
}

/// The engine host of one swarm. See the module docs.
pub(crate) struct SwarmHost {
    pub(crate) name: String,
    pub(crate) stream_id: StreamId,
    record_suffix: String,
    corrupt_uploads: bool,
    inner: RefCell<Inner>,
    emit: EventSink,
    commands: mpsc::UnboundedSender<Command>,
    rearm: mpsc::UnboundedSender<()>,
    control: crate::streams::Control,
}

pub(crate) struct HostOptions {
    pub name: String,
    pub publisher: PublisherKey,
    pub engine: EngineConfig,
    pub record_suffix: String,
    pub corrupt_uploads: bool,
    pub swarm_size: usize,
}

impl SwarmHost {
    pub(crate) fn new(
        options: HostOptions,
        emit: EventSink,
        commands: mpsc::UnboundedSender<Command>,
        control: crate::streams::Control,
    ) -> Rc<Self> {
        let stream_id = StreamId::from_name(&options.name);
        let seed = (js_sys::Math::random() * u64::MAX as f64) as u64;
        let mut engine = Engine::new(options.engine, stream_id, options.publisher, seed, now());
        engine.set_swarm_size(options.swarm_size);
        let (rearm, rearmed) = mpsc::unbounded();
        let host = Rc::new(Self {
            name: options.name,
            stream_id,
            record_suffix: options.record_suffix,
            corrupt_uploads: options.corrupt_uploads,
            inner: RefCell::new(Inner {
                engine,
                writers: HashMap::new(),
                foreign: HashSet::new(),
                urls: HashMap::new(),
                pending: HashMap::new(),
                fetches: HashMap::new(),
                traffic: HashMap::new(),
                segments_failed: 0,
                sent_window: (now_ms(), 0),
                upload_rate: 0.0,
            }),
            emit,
            commands,
            rearm,
            control,
        });
        wasm_bindgen_futures::spawn_local(run_timer(Rc::downgrade(&host), rearmed));
        host
    }

    /// Applies `f` to the engine, then carries out what it asked for.
    fn with_engine<R>(self: &Rc<Self>, f: impl FnOnce(&mut Engine<PeerId>, Instant) -> R) -> R {
        let result = {
            let mut inner = self.inner.borrow_mut();
            let backlog = inner.upload_backlog();
            inner.engine.set_upload_backlog(backlog);
            f(&mut inner.engine, now())
        };
        self.dispatch();
        result
    }

    // ---- inputs ----------------------------------------------------------------------

    /// A direct connection to `peer` is up: open our stream to it and tell the engine.
    pub(crate) fn peer_connected(self: &Rc<Self>, peer: PeerId) {
        {
            let inner = self.inner.borrow();
            if inner.writers.contains_key(&peer) || inner.foreign.contains(&peer) {
                return;
            }
        }
        let (control, control_frames) = mpsc::unbounded::<Bytes>();
        let (data, data_frames) = mpsc::unbounded::<Bytes>();
        let queued = Rc::new(Cell::new(0usize));
        self.inner.borrow_mut().writers.insert(peer, Writer { control, data, queued: queued.clone() });
        self.spawn_writer(peer, control_frames, None);
        self.spawn_writer(peer, data_frames, Some(queued));
        self.with_engine(|engine, now| engine.peer_connected(peer, now));
    }

    /// Opens one outbound stream to `peer` and writes `frames` to it until either ends.
    /// Every stream starts with `Hello` so the peer can route it.
    fn spawn_writer(
        self: &Rc<Self>,
        peer: PeerId,
        mut frames: mpsc::UnboundedReceiver<Bytes>,
        queued: Option<Rc<Cell<usize>>>,
    ) {
        let control = self.control.clone();
        let host = Rc::downgrade(self);
        let mut hello = BytesMut::new();
        Message::Hello { version: shoal_core::wire::PROTOCOL_VERSION, stream: self.stream_id }.encode(&mut hello);
        wasm_bindgen_futures::spawn_local(async move {
            let result: Result<(), OpenError> = async {
                let mut stream = control.open(peer, PROTOCOL).await?;
                let io = |e: std::io::Error| OpenError::Io(e.to_string());
                if queued.is_some() {
                    stream.write_all(&hello).await.map_err(io)?;
                }
                while let Some(frame) = frames.next().await {
                    stream.write_all(&frame).await.map_err(io)?;
                    if let Some(queued) = &queued {
                        queued.set(queued.get().saturating_sub(frame.len()));
                    }
                    if let Some(host) = host.upgrade() {
                        host.inner.borrow_mut().count_sent(frame.len());
                    }
                }
                let _ = stream.close().await;
                Ok(())
            }
            .await;
            if let (Err(error), Some(host)) = (result, host.upgrade()) {
                tracing::debug!(%peer, %error, "piece stream closed");
                if matches!(error, OpenError::Unsupported) {
                    host.inner.borrow_mut().foreign.insert(peer);
                }
                host.peer_gone(peer);
            }
        });
    }

    /// The peer's stream to us, whose first message (`Hello`) was already read.
    pub(crate) fn attach_reader(
        self: &Rc<Self>,
        peer: PeerId,
        mut stream: libp2p::Stream,
        mut decoder: FrameDecoder,
        first: Message,
    ) {
        self.peer_connected(peer);
        self.with_engine(|engine, now| engine.handle_message(peer, first, now));
        let host = Rc::downgrade(self);
        wasm_bindgen_futures::spawn_local(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let read = stream.read(&mut buf).await;
                let Some(host) = host.upgrade() else { return };
                let n = match read {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(error) => {
                        tracing::debug!(%peer, %error, "piece stream read failed");
                        break;
                    }
                };
                decoder.extend(&buf[..n]);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(message)) => host.on_message(peer, message),
                        Ok(None) => break,
                        Err(error) => {
                            // Not our protocol: cut the peer off.
                            tracing::info!(%peer, %error, "malformed piece message");
                            let _ =
                                host.commands.unbounded_send(Command::Ban(peer, format!("malformed message: {error}")));
                            host.peer_gone(peer);
                            return;
                        }
                    }
                }
            }
            if let Some(host) = host.upgrade() {
                host.peer_gone(peer);
            }
        });
    }

    fn on_message(self: &Rc<Self>, peer: PeerId, message: Message) {
        if let Message::Data { data, .. } = &message {
            self.inner.borrow_mut().traffic.entry(peer).or_default().down += data.len() as u64;
        }
        self.with_engine(|engine, now| engine.handle_message(peer, message, now));
    }

    /// Every connection to `peer` closed: a later connection may be a Shoal page again.
    pub(crate) fn peer_disconnected(self: &Rc<Self>, peer: PeerId) {
        self.inner.borrow_mut().foreign.remove(&peer);
        self.peer_gone(peer);
    }

    /// The connection or a stream to `peer` ended.
    pub(crate) fn peer_gone(self: &Rc<Self>, peer: PeerId) {
        if self.inner.borrow_mut().writers.remove(&peer).is_none() {
            return;
        }
        self.with_engine(|engine, now| engine.peer_disconnected(peer, now));
    }

    pub(crate) fn set_swarm_size(self: &Rc<Self>, size: usize) {
        self.inner.borrow_mut().engine.set_swarm_size(size);
    }

    /// The playlist: segment ids and URLs (records come from peers or next to segments).
    pub(crate) fn set_playlist(self: &Rc<Self>, segments: Vec<(u64, String)>) {
        let infos: Vec<SegmentInfo> = {
            let mut inner = self.inner.borrow_mut();
            // A live playlist slides: forget the URLs of segments that left it (unless a
            // fetch still waits on one), or a day of viewing keeps tens of thousands.
            if let Some(oldest) = segments.iter().map(|(id, _)| *id).min() {
                let Inner { urls, pending, .. } = &mut *inner;
                urls.retain(|id, _| id.0 >= oldest || pending.contains_key(id));
            }
            segments
                .into_iter()
                .map(|(id, url)| {
                    inner.urls.insert(SegmentId(id), url);
                    SegmentInfo { id: SegmentId(id), record: None }
                })
                .collect()
        };
        self.with_engine(|engine, now| engine.update_playlist(infos, now));
    }

    /// Fetches segment `id` by `deadline_ms` (page clock): from peers when there is time,
    /// from `url` when not. Resolves with the verified bytes.
    pub(crate) async fn fetch_segment(
        self: &Rc<Self>,
        id: u64,
        url: String,
        deadline_ms: f64,
    ) -> Result<Loaded, String> {
        let segment = SegmentId(id);
        let (reply, delivered) = oneshot::channel();
        {
            let mut inner = self.inner.borrow_mut();
            inner.urls.insert(segment, url);
            inner.pending.entry(segment).or_default().push(reply);
        }
        self.with_engine(|engine, now| engine.want(segment, Instant::from_millis_f64(deadline_ms), now));
        let delivery = delivered.await.map_err(|_| "swarm left".to_owned())??;
        Ok(Loaded { data: delivery.concat(), from_peers: delivery.from_peers, from_http: delivery.from_http })
    }

    /// The player gave up on segment `id`.
    pub(crate) fn cancel_segment(self: &Rc<Self>, id: u64) {
        let segment = SegmentId(id);
        self.inner.borrow_mut().pending.remove(&segment);
        self.with_engine(|engine, now| engine.unwant(segment, now));
    }

    /// Segment bytes the page already has (e.g. it loaded them itself).
    pub(crate) fn offer_segment(self: &Rc<Self>, id: u64, data: Vec<u8>) -> Result<(), String> {
        self.with_engine(|engine, now| engine.offer_segment(SegmentId(id), Bytes::from(data), now))
            .map_err(|e| e.to_string())
    }

    pub(crate) fn set_switches(self: &Rc<Self>, upload: Option<bool>, p2p_download: Option<bool>) {
        self.with_engine(|engine, now| {
            if let Some(upload) = upload {
                engine.set_upload_enabled(upload, now);
            }
            if let Some(download) = p2p_download {
                engine.set_p2p_download_enabled(download, now);
            }
        });
    }

    pub(crate) fn stats(&self) -> SwarmStats {
        let inner = self.inner.borrow();
        let s = inner.engine.stats();
        SwarmStats {
            bytes_from_peers: s.bytes_from_peers,
            bytes_from_http: s.bytes_from_http,
            bytes_uploaded: s.bytes_uploaded,
            segments_loaded: s.segments_delivered,
            segments_failed: inner.segments_failed,
            chunks_rejected: s.chunks_rejected,
            peers_banned: s.peers_banned,
            http_seeds: s.http_seeds,
            http_urgent: s.http_urgent,
            cached_bytes: inner.engine.cached_bytes(),
            peers: inner.engine.connected_peers(),
            per_peer: inner.traffic.iter().map(|(p, t)| (p.to_string(), t.clone())).collect(),
        }
    }

    /// Ends the swarm: every pending fetch fails, every stream closes.
    pub(crate) fn shutdown(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.writers.clear();
        inner.pending.clear();
        for fetch in inner.fetches.values() {
            fetch.abort();
        }
        inner.fetches.clear();
    }

    // ---- outputs ---------------------------------------------------------------------

    /// Carries out every action the engine queued.
    fn dispatch(self: &Rc<Self>) {
        loop {
            let action = self.inner.borrow_mut().engine.poll_output();
            let Some(action) = action else { break };
            match action {
                Output::Send { peer, message } => self.send(peer, message),
                Output::HttpFetch { id, segment, range } => self.http_fetch(id, segment, range),
                Output::CancelHttp { id } => {
                    if let Some(fetch) = self.inner.borrow_mut().fetches.remove(&id) {
                        fetch.abort();
                    }
                }
                Output::Deliver(delivery) => self.deliver(delivery),
                Output::Failed { segment } => {
                    let waiting = {
                        let mut inner = self.inner.borrow_mut();
                        inner.segments_failed += 1;
                        inner.pending.remove(&segment).unwrap_or_default()
                    };
                    for reply in waiting {
                        let _ = reply.send(Err(format!("segment {} could not be fetched", segment.0)));
                    }
                }
                Output::Disconnect { peer, reason } => {
                    self.inner.borrow_mut().writers.remove(&peer);
                    (self.emit)(Event::PeerBanned { peer: peer.to_string(), reason: format!("{reason:?}") });
                    let _ = self.commands.unbounded_send(Command::Ban(peer, format!("{reason:?}")));
                }
                Output::Event(EngineEvent::ChunkDownloaded { peer, segment, bytes }) => {
                    (self.emit)(Event::ChunkDown {
                        swarm: self.name.clone(),
                        peer: peer.to_string(),
                        segment: segment.0,
                        bytes,
                    });
                }
                Output::Event(EngineEvent::ChunkUploaded { peer, segment, bytes }) => {
                    (self.emit)(Event::ChunkUp {
                        swarm: self.name.clone(),
                        peer: peer.to_string(),
                        segment: segment.0,
                        bytes,
                    });
                }
                Output::Event(EngineEvent::PeerBanned { .. }) => {}
            }
        }
        let _ = self.rearm.unbounded_send(());
    }

    fn send(&self, peer: PeerId, mut message: Message) {
        if let Message::Data { id, segment, chunk, data } = &message {
            self.inner.borrow_mut().traffic.entry(peer).or_default().up += data.len() as u64;
            if self.corrupt_uploads {
                let mut bad = data.to_vec();
                if let Some(b) = bad.first_mut() {
                    *b ^= 0xff;
                }
                message = Message::Data { id: *id, segment: *segment, chunk: *chunk, data: Bytes::from(bad) };
            }
        }
        let bulk = matches!(message, Message::Data { .. } | Message::Record { .. });
        let mut frame = BytesMut::new();
        message.encode(&mut frame);
        let inner = self.inner.borrow();
        let Some(writer) = inner.writers.get(&peer) else { return };
        if !bulk {
            // The engine's own `Hello` travels on the control stream, which it opens.
            let _ = writer.control.unbounded_send(frame.freeze());
            return;
        }
        if writer.queued.get() + frame.len() > MAX_QUEUED_PER_PEER {
            tracing::debug!(%peer, "peer too far behind; dropping a frame");
            return;
        }
        writer.queued.set(writer.queued.get() + frame.len());
        let _ = writer.data.unbounded_send(frame.freeze());
    }

    fn deliver(&self, delivery: Delivery) {
        let waiting = self.inner.borrow_mut().pending.remove(&delivery.segment).unwrap_or_default();
        (self.emit)(Event::SegmentLoaded {
            swarm: self.name.clone(),
            segment: delivery.segment.0,
            bytes: delivery.size,
            from_peers: delivery.from_peers,
            from_http: delivery.from_http,
        });
        for reply in waiting {
            let _ = reply.send(Ok(delivery.clone()));
        }
    }

    fn http_fetch(self: &Rc<Self>, id: u64, segment: SegmentId, range: Option<(u64, u64)>) {
        let (url, need_record) = {
            let inner = self.inner.borrow();
            (inner.urls.get(&segment).cloned(), !inner.engine.has_record(segment))
        };
        let Some(url) = url else {
            // No URL known (a prefetch would never ask): nothing to fetch.
            self.with_engine(|engine, now| engine.http_failed(id, now));
            return;
        };
        let fetch = Rc::new(Fetch::new());
        self.inner.borrow_mut().fetches.insert(id, fetch.clone());
        let host = Rc::downgrade(self);
        let record_url = need_record.then(|| record_url(&url, &self.record_suffix));
        wasm_bindgen_futures::spawn_local(async move {
            // The record comes with the segment so what came over HTTP can be shared.
            let record = async {
                match &record_url {
                    Some(u) => fetch.get(u, None).await.ok().and_then(|bytes| decode_record(&bytes)),
                    None => None,
                }
            };
            let (body, record) = futures::join!(fetch.get(&url, range), record);
            let Some(host) = host.upgrade() else { return };
            if host.inner.borrow_mut().fetches.remove(&id).is_none() {
                return; // cancelled meanwhile
            }
            if let Some(record) = record {
                let _ = host.with_engine(|engine, now| engine.add_record(record, now));
            }
            match body {
                Ok(body) => host.with_engine(|engine, now| engine.http_complete(id, body, now)),
                Err(error) => {
                    tracing::info!(%url, %error, "segment fetch failed");
                    host.with_engine(|engine, now| engine.http_failed(id, now));
                }
            }
        });
    }
}

impl Inner {
    fn count_sent(&mut self, bytes: usize) {
        let now = now_ms();
        let (since, sent) = &mut self.sent_window;
        *sent += bytes as u64;
        let elapsed = now - *since;
        if elapsed >= 500.0 {
            let rate = *sent as f64 * 1000.0 / elapsed;
            self.upload_rate = if self.upload_rate == 0.0 { rate } else { self.upload_rate * 0.7 + rate * 0.3 };
            *since = now;
            *sent = 0;
        }
    }

    /// How long what we queued for peers needs to leave, at the rate we have been
    /// sending (at least 1 MB/s assumed until measured).
    fn upload_backlog(&self) -> Duration {
        let queued: usize = self.writers.values().map(|w| w.queued.get()).sum();
        Duration::from_secs_f64(queued as f64 / self.upload_rate.max(1_000_000.0))
    }
}

/// A record file: one wire frame holding a `Record` message.
pub(crate) fn decode_record(bytes: &[u8]) -> Option<Arc<SignedRecord>> {
    let mut decoder = FrameDecoder::new();
    decoder.extend(bytes);
    match decoder.next_frame() {
        Ok(Some(Message::Record { record })) => Some(record),
        _ => None,
    }
}

/// Calls the engine when its next timer is due; woken early whenever an input may
/// have moved that time.
async fn run_timer(host: std::rc::Weak<SwarmHost>, mut rearmed: mpsc::UnboundedReceiver<()>) {
    loop {
        let due = match host.upgrade() {
            Some(h) => h.inner.borrow().engine.poll_timeout(),
            None => return,
        };
        let wait = due.map(|t| Duration::from_micros(t.as_micros().saturating_sub(now().as_micros())));
        let mut sleep = match wait {
            Some(w) => Delay::new(w).fuse(),
            None => Delay::new(Duration::from_secs(3600)).fuse(),
        };
        select! {
            () = sleep => {
                let Some(h) = host.upgrade() else { return };
                h.with_engine(|engine, now| engine.handle_timeout(now));
            }
            woken = rearmed.next() => if woken.is_none() { return },
        }
    }
}
