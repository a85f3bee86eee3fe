//! The class JavaScript sees (`ShoalPeer`, wrapped by `pkg/index.js` into `Shoal`): it
//! checks arguments, turns calls into [`Command`]s for the runtime (a bounded queue:
//! `overloaded` when full) and reads the runtime's snapshot. Failures reject with an
//! `Error` carrying a `code` ([`ShoalError::code`]) and a message.

use std::{cell::RefCell, collections::HashSet, rc::Rc, time::Duration};

use futures::{SinkExt, channel::oneshot};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Deserialize;
use shoal_core::{Config as EngineConfig, Instant, PublisherKey, gossip::Verdict};
use shoal_proto::WellKnown;
use wasm_bindgen::{JsCast, prelude::*};
use wasm_bindgen_futures::JsFuture;

use crate::{
    bulk,
    config::{Config, SwarmOptions, parse_publisher_key},
    error::ShoalError,
    events::Event,
    pieces::{PiecesOptions, SegmentLocation},
    runtime::{self, Command, EventSink, Handle},
};

fn to_js<T: serde::Serialize>(value: &T) -> Result<JsValue, ShoalError> {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    value.serialize(&serializer).map_err(|e| ShoalError::Internal(e.to_string()))
}

fn set(object: &js_sys::Object, key: &str, value: JsValue) {
    let _ = js_sys::Reflect::set(object, &JsValue::from_str(key), &value);
}

/// A Shoal peer running in this page.
#[wasm_bindgen]
pub struct ShoalPeer {
    handle: Handle,
    commands: RefCell<futures::channel::mpsc::Sender<Command>>,
    config: Config,
    on_event: Rc<RefCell<Option<js_sys::Function>>>,
    /// Swarms joined with a publisher key: calls about others fail at once.
    piece_swarms: RefCell<HashSet<String>>,
}

#[derive(Deserialize)]
struct PlaylistEntry {
    id: f64,
    url: String,
    /// Bytes `[start, end)` of `url` (an HLS `EXT-X-BYTERANGE` segment).
    #[serde(default)]
    range: Option<(f64, f64)>,
}

/// A segment's place: `url`, or bytes `[start, end)` of it.
fn segment_location(url: String, range: Option<(f64, f64)>) -> Result<SegmentLocation, ShoalError> {
    let Some((start, end)) = range else { return Ok(SegmentLocation::whole(url)) };
    match (shoal_proto::js_whole_number(start), shoal_proto::js_whole_number(end)) {
        (Some(start), Some(end)) if start < end => Ok(SegmentLocation { url, range: Some((start, end)) }),
        _ => Err(ShoalError::InvalidArgument(format!(
            "byte range [{start}, {end}) is not [start, end) with whole numbers 0 ≤ start < end"
        ))),
    }
}

fn segment_id(id: f64) -> Result<u64, ShoalError> {
    shoal_proto::js_whole_number(id)
        .ok_or_else(|| ShoalError::InvalidArgument(format!("segment id {id} is not a whole number ≥ 0")))
}

#[wasm_bindgen]
impl ShoalPeer {
    /// Starts a peer: finds the signalling node and connects to it. `onEvent` receives
    /// `{type, ...}` objects.
    pub async fn start(config: JsValue, on_event: Option<js_sys::Function>) -> Result<ShoalPeer, ShoalError> {
        // No config means an empty one: the same serde defaults, one deserializer.
        let config = if config.is_undefined() || config.is_null() { js_sys::Object::new().into() } else { config };
        let config: Config =
            serde_wasm_bindgen::from_value(config).map_err(|e| ShoalError::InvalidConfig(e.to_string()))?;
        config.validate().map_err(|e| ShoalError::InvalidConfig(e.to_string()))?;
        crate::console_log::init(config.log_level.as_deref());
        if !has_webrtc() {
            return Err(ShoalError::Unsupported);
        }

        let mut config = config;
        let nodes = if config.nodes.is_empty() {
            let doc = fetch_well_known(config.well_known_url.as_deref()).await?;
            // The node's STUN/TURN servers, unless the page names its own.
            if config.ice_servers.is_empty() {
                config.ice_servers = doc
                    .ice_servers
                    .into_iter()
                    .map(|s| crate::config::IceServer {
                        urls: crate::config::OneOrMany::Many(s.urls),
                        username: s.username,
                        credential: s.credential,
                    })
                    .collect();
            }
            // The node that answered and the nodes it federates with: the runtime picks.
            doc.multiaddrs.into_iter().chain(doc.federation).collect()
        } else {
            config.nodes.clone()
        };
        // Addresses we cannot read are skipped, but named if no usable one is left.
        let mut unreadable = Vec::new();
        let nodes: Vec<Multiaddr> = nodes
            .iter()
            .filter_map(|a| shoal_webrtc::addr::parse(a).map_err(|e| unreadable.push(format!("{a}: {e}"))).ok())
            .filter(|a| a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::WebRTCDirect)))
            .collect();
        if nodes.is_empty() {
            let mut message = "no /webrtc-direct signalling node address".to_owned();
            if !unreadable.is_empty() {
                message = format!("{message} (unreadable: {})", unreadable.join("; "));
            }
            return Err(ShoalError::NoNode(message));
        }

        let on_event = Rc::new(RefCell::new(on_event));
        let emit: EventSink = {
            let on_event = on_event.clone();
            Rc::new(move |event: Event| {
                let Some(callback) = on_event.borrow().clone() else { return };
                if let Ok(value) = to_js(&event)
                    && let Err(e) = callback.call1(&JsValue::NULL, &value)
                {
                    tracing::warn!("event handler threw: {e:?}");
                }
            })
        };
        let handle = runtime::start(config.clone(), nodes, emit)?;
        Ok(ShoalPeer {
            commands: RefCell::new(handle.commands.clone()),
            handle,
            config,
            on_event,
            piece_swarms: RefCell::default(),
        })
    }

    fn send(&self, command: Command) -> Result<(), ShoalError> {
        self.commands
            .borrow_mut()
            .try_send(command)
            .map_err(|e| if e.is_full() { ShoalError::Overloaded("command queue") } else { ShoalError::Stopped })
    }

    fn check_joined(&self, swarm: &str) -> Result<(), ShoalError> {
        if self.piece_swarms.borrow().contains(swarm) { Ok(()) } else { Err(ShoalError::NotJoined(swarm.to_owned())) }
    }

    /// Sends `command` and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, ShoalError>>) -> Command,
    ) -> Result<T, ShoalError> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply))?;
        answer.await.map_err(|_| ShoalError::Stopped)?
    }

    /// This peer's PeerId.
    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.handle.peer_id.to_string()
    }

    /// Replaces the event callback.
    #[wasm_bindgen(js_name = setEventHandler)]
    pub fn set_event_handler(&self, on_event: Option<js_sys::Function>) {
        *self.on_event.borrow_mut() = on_event;
    }

    /// Joins `swarm` (one per stream rendition). With `options.publisherKey`, segments
    /// of this swarm are exchanged with its members; without, it carries connections and
    /// gossip only.
    pub fn join(&self, swarm: String, options: JsValue) -> Result<(), ShoalError> {
        shoal_proto::validate_swarm_id(&swarm).map_err(|e| ShoalError::InvalidArgument(e.to_string()))?;
        let options: SwarmOptions = if options.is_undefined() || options.is_null() {
            SwarmOptions::default()
        } else {
            serde_wasm_bindgen::from_value(options).map_err(|e| ShoalError::InvalidArgument(e.to_string()))?
        };
        let pieces = match &options.publisher_key {
            None => None,
            Some(key) => {
                let invalid = |e: &dyn std::fmt::Display| ShoalError::InvalidArgument(e.to_string());
                let bytes = parse_publisher_key(key).map_err(|e| invalid(&e))?;
                let publisher = PublisherKey::from_bytes(&bytes).map_err(|e| invalid(&e))?;
                let mut engine = EngineConfig {
                    upload_enabled: self.config.upload,
                    p2p_download_enabled: self.config.p2p_download,
                    upload_rate_limit: self.config.upload_rate_limit.map(|r| r as u64),
                    cache_capacity: self.config.cache_bytes as u64,
                    live: options.live.unwrap_or(true),
                    chunk_events: self.config.chunk_events,
                    ..EngineConfig::default()
                };
                if let Some(ms) = options.urgent_window_ms {
                    engine.urgent_window = Duration::from_millis(u64::from(ms));
                }
                engine.validate().map_err(|e| invalid(&e))?;
                Some(Box::new(PiecesOptions {
                    name: swarm.clone(),
                    publisher,
                    engine,
                    record_suffix: options.record_suffix.clone().unwrap_or_else(|| ".shoal".into()),
                    corrupt_uploads: self.config.testing.corrupt_uploads,
                }))
            }
        };
        let with_pieces = pieces.is_some();
        self.send(Command::Join(swarm.clone(), pieces))?;
        if with_pieces {
            self.piece_swarms.borrow_mut().insert(swarm);
        }
        Ok(())
    }

    /// Leaves `swarm`: pending fetches fail, its streams close.
    pub fn leave(&self, swarm: String) -> Result<(), ShoalError> {
        self.send(Command::Leave(swarm.clone()))?;
        self.piece_swarms.borrow_mut().remove(&swarm);
        Ok(())
    }

    /// The segments the playlist lists now: `[{id, url, range?}]`, `range` being
    /// `[start, end)` of `url` for a byte-range segment.
    #[wasm_bindgen(js_name = setPlaylist)]
    pub fn set_playlist(&self, swarm: String, segments: JsValue) -> Result<(), ShoalError> {
        self.check_joined(&swarm)?;
        let entries: Vec<PlaylistEntry> =
            serde_wasm_bindgen::from_value(segments).map_err(|e| ShoalError::InvalidArgument(e.to_string()))?;
        let segments = entries
            .into_iter()
            .filter_map(|e| Some((segment_id(e.id).ok()?, segment_location(e.url, e.range).ok()?)))
            .collect();
        self.send(Command::SetPlaylist { swarm, segments })
    }

    /// Fetches segment `id` of `swarm` by `deadlineMs` (on `performance.now()`'s clock):
    /// from peers when there is time, from `url` (bytes `[start, end)` of it if `range`
    /// is given) when not. Resolves to `{data: Uint8Array, fromPeers, fromHttp}` once
    /// every byte is verified.
    #[wasm_bindgen(js_name = fetchSegment)]
    pub async fn fetch_segment(
        &self,
        swarm: String,
        id: f64,
        url: String,
        deadline_ms: f64,
        range: JsValue,
    ) -> Result<JsValue, ShoalError> {
        let id = segment_id(id)?;
        let range: Option<(f64, f64)> = serde_wasm_bindgen::from_value(range)
            .map_err(|e| ShoalError::InvalidArgument(format!("byte range: {e}")))?;
        let location = segment_location(url, range)?;
        if !deadline_ms.is_finite() {
            return Err(ShoalError::InvalidArgument("the deadline must be a finite performance.now() time".into()));
        }
        self.check_joined(&swarm)?;
        let deadline = Instant::from_millis_f64(deadline_ms.max(0.0));
        let delivery = self.ask(|reply| Command::FetchSegment { swarm, id, location, deadline, reply }).await?;
        // The one copy out of wasm memory: chunk by chunk into the buffer the player gets.
        let data = js_sys::Uint8Array::new_with_length(delivery.size as u32);
        let mut offset = 0u32;
        for chunk in &delivery.chunks {
            let end = offset + chunk.len() as u32;
            data.subarray(offset, end).copy_from(chunk);
            offset = end;
        }
        let result = js_sys::Object::new();
        set(&result, "data", data.into());
        set(&result, "fromPeers", JsValue::from_f64(delivery.from_peers as f64));
        set(&result, "fromHttp", JsValue::from_f64(delivery.from_http as f64));
        Ok(result.into())
    }

    /// The player no longer needs segment `id` of `swarm`.
    #[wasm_bindgen(js_name = cancelSegment)]
    pub fn cancel_segment(&self, swarm: String, id: f64) -> Result<(), ShoalError> {
        let id = segment_id(id)?;
        self.check_joined(&swarm)?;
        self.send(Command::CancelSegment { swarm, id })
    }

    /// Segment bytes the page already has, to keep and share; resolves once checked
    /// against the segment's signed record.
    #[wasm_bindgen(js_name = offerSegment)]
    pub async fn offer_segment(&self, swarm: String, id: f64, data: Vec<u8>) -> Result<(), ShoalError> {
        let id = segment_id(id)?;
        self.check_joined(&swarm)?;
        let data = bytes::Bytes::from(data);
        self.ask(|reply| Command::OfferSegment { swarm, id, data, reply }).await
    }

    /// Turns uploading to peers on or off, in every swarm.
    #[wasm_bindgen(js_name = setUploadEnabled)]
    pub fn set_upload_enabled(&self, enabled: bool) -> Result<(), ShoalError> {
        self.send(Command::SetSwitches { upload: Some(enabled), p2p_download: None })
    }

    /// Turns downloading from peers on or off, in every swarm.
    #[wasm_bindgen(js_name = setP2pDownloadEnabled)]
    pub fn set_p2p_download_enabled(&self, enabled: bool) -> Result<(), ShoalError> {
        self.send(Command::SetSwitches { upload: None, p2p_download: Some(enabled) })
    }

    /// Subscribes to a gossip topic. `validate(data, from)` (optional) must return true
    /// for a message to be delivered and forwarded; rejected ones are counted, and a
    /// neighbour that keeps sending them is cut off.
    pub async fn subscribe(&self, topic: String, validate: Option<js_sys::Function>) -> Result<(), ShoalError> {
        let validator = validate.map(|f| -> crate::gossiping::Validator {
            Box::new(move |data: &[u8], from: &str| {
                let data = js_sys::Uint8Array::from(data);
                match f.call2(&JsValue::NULL, &data, &JsValue::from_str(from)) {
                    Ok(v) if v.is_truthy() => Verdict::Accept,
                    Ok(_) => Verdict::Reject("the topic's validator refused it".into()),
                    Err(_) => Verdict::Reject("the topic's validator threw".into()),
                }
            })
        });
        self.ask(|reply| Command::Subscribe { topic, validator, reply }).await
    }

    pub fn unsubscribe(&self, topic: String) -> Result<(), ShoalError> {
        self.send(Command::Unsubscribe(topic))
    }

    /// Publishes `data` on `topic`; resolves to the number of neighbours it was sent to
    /// (0 when no connected peer subscribes to the topic yet).
    pub async fn publish(&self, topic: String, data: Vec<u8>) -> Result<u32, ShoalError> {
        let limit = self.config.gossip_max_bytes;
        if data.len() > limit {
            return Err(ShoalError::MessageTooLarge { len: data.len(), limit });
        }
        let sent = self.ask(|reply| Command::Publish { topic, data, reply }).await?;
        Ok(u32::try_from(sent).unwrap_or(u32::MAX))
    }

    /// Node link, connections, gossip counters, and per-swarm piece statistics.
    pub fn stats(&self) -> Result<JsValue, ShoalError> {
        let snapshot = to_js(&*self.handle.snapshot.borrow())?;
        // The wasm heap only grows; its size is the runtime's memory high-water mark
        // (the segment cache lives in it).
        let memory = wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>();
        let bytes = memory.buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length();
        set(snapshot.unchecked_ref(), "wasmMemoryBytes", JsValue::from_f64(f64::from(bytes)));
        Ok(snapshot)
    }

    /// Each direct connection as its `RTCPeerConnection` sees it: selected ICE candidate
    /// pair (type and addresses), bytes moved, round trip.
    #[wasm_bindgen(js_name = connectionReport)]
    pub async fn connection_report(&self) -> Result<JsValue, ShoalError> {
        to_js(&shoal_webrtc::connection_report().await)
    }

    /// Streams `bytes` pattern bytes to `peer`, which verifies each one. Resolves to
    /// `{bytes, intact, ms}` once the peer has confirmed.
    #[wasm_bindgen(js_name = sendBulk)]
    pub async fn send_bulk(&self, peer: String, bytes: f64) -> Result<JsValue, ShoalError> {
        let peer: PeerId =
            peer.parse().map_err(|e: libp2p::identity::ParseError| ShoalError::InvalidPeer(e.to_string()))?;
        if !(0.0..=bulk::MAX_LEN as f64).contains(&bytes) {
            return Err(ShoalError::InvalidArgument("bytes out of range".into()));
        }
        let started = js_sys::Date::now();
        let mut stream = self
            .handle
            .control
            .open(peer, StreamProtocol::new(bulk::PROTOCOL))
            .await
            .map_err(|e| ShoalError::StreamFailed(e.to_string()))?;
        let seed = js_sys::Math::random().to_bits();
        let verified =
            bulk::send(&mut stream, bytes as u64, seed).await.map_err(|e| ShoalError::TransferFailed(e.to_string()))?;
        let result = js_sys::Object::new();
        set(&result, "bytes", JsValue::from_f64(verified.bytes as f64));
        set(&result, "intact", JsValue::from_bool(verified.intact));
        set(&result, "ms", JsValue::from_f64(js_sys::Date::now() - started));
        Ok(result.into())
    }

    /// Connects directly to the browser peer at `addr`
    /// (`<node>/p2p/<node id>/p2p-circuit/webrtc/p2p/<peer>`, as its `stats().address`
    /// says), which need not be a member of any swarm this peer joined. Resolves once the
    /// direct connection is up.
    pub async fn connect(&self, addr: String) -> Result<(), ShoalError> {
        let addr = shoal_webrtc::addr::parse(&addr).map_err(|e| ShoalError::InvalidAddress(e.to_string()))?;
        let Some(target) = shoal_webrtc::addr::parse_dial_addr(&addr) else {
            return Err(ShoalError::InvalidAddress(
                "not a browser address: expected …/p2p-circuit/webrtc/p2p/<peer>".into(),
            ));
        };
        if target.peer == self.handle.peer_id {
            return Err(ShoalError::InvalidAddress("that is this peer's own address".into()));
        }
        self.ask(|reply| Command::Connect(addr, target.peer, reply)).await
    }

    /// Diagnostics: opens a raw libp2p stream speaking `protocol` to `peer`. With
    /// `viaRelay`, a relayed connection through the signalling node is opened first (the
    /// path WebRTC signalling takes). Tests use it to play a misbehaving peer.
    #[wasm_bindgen(js_name = debugOpenStream)]
    pub async fn debug_open_stream(
        &self,
        peer: String,
        protocol: String,
        via_relay: bool,
    ) -> Result<RawStream, ShoalError> {
        let peer: PeerId =
            peer.parse().map_err(|e: libp2p::identity::ParseError| ShoalError::InvalidPeer(e.to_string()))?;
        let protocol =
            StreamProtocol::try_from_owned(protocol).map_err(|e| ShoalError::InvalidArgument(e.to_string()))?;
        if via_relay {
            self.ask(|reply| Command::DialRelayed(peer, reply)).await?;
        }
        let stream = self
            .handle
            .control
            .open_via(peer, protocol, via_relay)
            .await
            .map_err(|e| ShoalError::StreamFailed(e.to_string()))?;
        Ok(RawStream { stream: Rc::new(futures::lock::Mutex::new(Some(stream))) })
    }

    /// Leaves every swarm and closes every connection.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        let mut commands = self.handle.commands.clone();
        if commands.send(Command::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
    }
}

/// A raw libp2p stream (see `debugOpenStream`).
#[wasm_bindgen]
pub struct RawStream {
    stream: Rc<futures::lock::Mutex<Option<libp2p::Stream>>>,
}

#[wasm_bindgen]
impl RawStream {
    /// Writes and flushes `bytes`.
    pub async fn write(&self, bytes: Vec<u8>) -> Result<(), ShoalError> {
        use futures::AsyncWriteExt;
        let mut guard = self.stream.lock().await;
        let stream = guard.as_mut().ok_or(ShoalError::Closed)?;
        stream.write_all(&bytes).await.map_err(|e| ShoalError::Io(e.to_string()))?;
        stream.flush().await.map_err(|e| ShoalError::Io(e.to_string()))
    }

    /// Reads what is available; `undefined` at end of stream.
    pub async fn read(&self) -> Result<Option<Vec<u8>>, ShoalError> {
        use futures::AsyncReadExt;
        let mut guard = self.stream.lock().await;
        let stream = guard.as_mut().ok_or(ShoalError::Closed)?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf).await.map_err(|e| ShoalError::Io(e.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(buf))
    }

    /// Closes the write half.
    pub async fn close(&self) -> Result<(), ShoalError> {
        use futures::AsyncWriteExt;
        let mut guard = self.stream.lock().await;
        if let Some(stream) = guard.as_mut() {
            stream.close().await.map_err(|e| ShoalError::Io(e.to_string()))?;
        }
        Ok(())
    }

    /// Drops the stream without closing it (a reset, as a crashing peer would).
    pub async fn reset(&self) {
        self.stream.lock().await.take();
    }
}

async fn fetch_well_known(url: Option<&str>) -> Result<WellKnown, ShoalError> {
    let window = web_sys::window().ok_or(ShoalError::NoWindow)?;
    let url = match url {
        Some(url) => url.to_owned(),
        None => format!(
            "{}{}",
            window.location().origin().map_err(|e| ShoalError::NoNode(crate::js_text(e)))?,
            shoal_proto::WELL_KNOWN_PATH
        ),
    };
    let fetched = |e: JsValue| ShoalError::NoNode(format!("fetching {url}: {}", crate::js_text(e)));
    let response: web_sys::Response =
        JsFuture::from(window.fetch_with_str(&url)).await.map_err(fetched)?.dyn_into().map_err(fetched)?;
    if !response.ok() {
        return Err(ShoalError::NoNode(format!("fetching {url}: HTTP {}", response.status())));
    }
    let json = JsFuture::from(response.json().map_err(fetched)?).await.map_err(fetched)?;
    let doc: WellKnown = serde_wasm_bindgen::from_value(json)
        .map_err(|e| ShoalError::NoNode(format!("{url} is not a Shoal well-known document: {e}")))?;
    Ok(doc)
}

/// Diagnostics: the 32-byte stream id a swarm's piece streams name in their `Hello`
/// (tests use it to play a misbehaving peer).
#[wasm_bindgen(js_name = debugStreamId)]
pub fn debug_stream_id(swarm: &str) -> Vec<u8> {
    shoal_core::StreamId::from_name(swarm).0.to_vec()
}

/// Whether this browser can make peer connections (some embedded views and hardened
/// profiles remove `RTCPeerConnection`).
fn has_webrtc() -> bool {
    js_sys::Reflect::has(&js_sys::global(), &JsValue::from_str("RTCPeerConnection")).unwrap_or(false)
}
