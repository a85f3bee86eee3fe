//! The class JavaScript sees (`ShoalNode`, wrapped by `pkg/index.js` into `Shoal`).
//! Failures reject with an `Error` carrying a `code` and a message.

use std::{cell::RefCell, rc::Rc, time::Duration};

use futures::{SinkExt, channel::oneshot};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Deserialize;
use shoal_core::{Config as EngineConfig, PublisherKey};
use shoal_proto::WellKnown;
use wasm_bindgen::{JsCast, prelude::*};
use wasm_bindgen_futures::JsFuture;

use crate::{
    bulk,
    config::{Config, SwarmOptions, parse_publisher_key},
    pieces::{HostOptions, SwarmHost},
    runtime::{self, Command, Event, EventSink, Handle},
};

/// Builds the rejection value: an `Error` with `code` and `message`.
fn error(code: &str, message: impl std::fmt::Display) -> JsValue {
    let error = js_sys::Error::new(&message.to_string());
    let _ = js_sys::Reflect::set(&error, &JsValue::from_str("code"), &JsValue::from_str(code));
    error.into()
}

fn to_js<T: serde::Serialize>(value: &T) -> Result<JsValue, JsValue> {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    value.serialize(&serializer).map_err(|e| error("internal", e))
}

/// A Shoal peer running in this page.
#[wasm_bindgen]
pub struct ShoalNode {
    handle: Handle,
    config: Config,
    emit: EventSink,
    on_event: Rc<RefCell<Option<js_sys::Function>>>,
}

#[derive(Deserialize)]
struct PlaylistEntry {
    id: f64,
    url: String,
}

#[wasm_bindgen]
impl ShoalNode {
    /// Starts a peer: finds the signalling node and connects to it. `onEvent` receives
    /// `{type, ...}` objects.
    pub async fn start(config: JsValue, on_event: Option<js_sys::Function>) -> Result<ShoalNode, JsValue> {
        // No config means an empty one: the same serde defaults, one deserializer.
        let config = if config.is_undefined() || config.is_null() { js_sys::Object::new().into() } else { config };
        let config: Config = serde_wasm_bindgen::from_value(config).map_err(|e| error("invalid-config", e))?;
        config.validate().map_err(|e| error("invalid-config", e))?;
        crate::console_log::init(config.log_level.as_deref());

        let nodes = if config.nodes.is_empty() {
            fetch_well_known(config.well_known_url.as_deref()).await?
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
            return Err(error("no-node", message));
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
        let handle = runtime::start(config.clone(), nodes, emit.clone()).map_err(|e| error("start-failed", e))?;
        Ok(ShoalNode { handle, config, emit, on_event })
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
    pub fn join(&self, swarm: String, options: JsValue) -> Result<(), JsValue> {
        shoal_proto::validate_swarm_id(&swarm).map_err(|e| error("invalid-argument", e))?;
        let options: SwarmOptions = if options.is_undefined() || options.is_null() {
            SwarmOptions::default()
        } else {
            serde_wasm_bindgen::from_value(options).map_err(|e| error("invalid-argument", e))?
        };
        let host = match &options.publisher_key {
            None => None,
            Some(key) => {
                let bytes = parse_publisher_key(key).map_err(|e| error("invalid-argument", e))?;
                let publisher = PublisherKey::from_bytes(&bytes).map_err(|e| error("invalid-argument", e))?;
                let live = options.live.unwrap_or(true);
                let mut engine = EngineConfig {
                    upload_enabled: self.config.upload,
                    p2p_download_enabled: self.config.p2p_download,
                    upload_rate_limit: self.config.upload_rate_limit.map(|r| r as u64),
                    cache_capacity: self.config.cache_bytes as u64,
                    live,
                    chunk_events: self.config.chunk_events,
                    ..EngineConfig::default()
                };
                if let Some(ms) = options.urgent_window_ms {
                    engine.urgent_window = Duration::from_millis(u64::from(ms));
                }
                engine.validate().map_err(|e| error("invalid-argument", e))?;
                let swarm_size = 1;
                Some(SwarmHost::new(
                    HostOptions {
                        name: swarm.clone(),
                        publisher,
                        engine,
                        record_suffix: options.record_suffix.clone().unwrap_or_else(|| ".shoal".into()),
                        corrupt_uploads: self.config.testing.corrupt_uploads,
                        swarm_size,
                    },
                    self.emit.clone(),
                    self.handle.commands.clone(),
                    self.handle.control.clone(),
                ))
            }
        };
        // Registered now, not when the runtime gets to the command: calls right after
        // `join` (setPlaylist, fetchSegment) must find the swarm.
        if let Some(host) = &host {
            self.handle.hosts.borrow_mut().insert(swarm.clone(), host.clone());
        }
        self.handle.commands.unbounded_send(Command::Join(swarm, host)).map_err(|_| error("stopped", "peer is stopped"))
    }

    /// Leaves `swarm`: pending fetches fail, its streams close.
    pub fn leave(&self, swarm: String) {
        let _ = self.handle.commands.unbounded_send(Command::Leave(swarm));
    }

    fn host(&self, swarm: &str) -> Result<Rc<SwarmHost>, JsValue> {
        self.handle
            .hosts
            .borrow()
            .get(swarm)
            .cloned()
            .ok_or_else(|| error("not-joined", format!("not in swarm {swarm} with a publisher key")))
    }

    /// The segments the playlist lists now: `[{id, url}]`.
    #[wasm_bindgen(js_name = setPlaylist)]
    pub fn set_playlist(&self, swarm: String, segments: JsValue) -> Result<(), JsValue> {
        let entries: Vec<PlaylistEntry> =
            serde_wasm_bindgen::from_value(segments).map_err(|e| error("invalid-argument", e))?;
        let host = self.host(&swarm)?;
        host.set_playlist(entries.into_iter().filter(|e| e.id >= 0.0).map(|e| (e.id as u64, e.url)).collect());
        Ok(())
    }

    /// Fetches segment `id` of `swarm` by `deadlineMs` (on `performance.now()`'s clock):
    /// from peers when there is time, from `url` when not. Resolves to
    /// `{data: Uint8Array, fromPeers, fromHttp}` once every byte is verified.
    #[wasm_bindgen(js_name = fetchSegment)]
    pub async fn fetch_segment(
        &self,
        swarm: String,
        id: f64,
        url: String,
        deadline_ms: f64,
    ) -> Result<JsValue, JsValue> {
        if !(id >= 0.0 && id.fract() == 0.0 && deadline_ms.is_finite()) {
            return Err(error("invalid-argument", "segment id must be a whole number and the deadline finite"));
        }
        let host = self.host(&swarm)?;
        let loaded =
            host.fetch_segment(id as u64, url, deadline_ms).await.map_err(|e| error("segment-unavailable", e))?;
        let result = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&result, &JsValue::from_str(k), &v);
        let _ = set("data", js_sys::Uint8Array::from(&loaded.data[..]).into());
        let _ = set("fromPeers", JsValue::from_f64(loaded.from_peers as f64));
        let _ = set("fromHttp", JsValue::from_f64(loaded.from_http as f64));
        Ok(result.into())
    }

    /// The player no longer needs segment `id` of `swarm`.
    #[wasm_bindgen(js_name = cancelSegment)]
    pub fn cancel_segment(&self, swarm: String, id: f64) {
        if let Ok(host) = self.host(&swarm) {
            host.cancel_segment(id as u64);
        }
    }

    /// Segment bytes the page already has, to keep and share (checked against the
    /// segment's signed record first).
    #[wasm_bindgen(js_name = offerSegment)]
    pub fn offer_segment(&self, swarm: String, id: f64, data: Vec<u8>) -> Result<(), JsValue> {
        self.host(&swarm)?.offer_segment(id as u64, data).map_err(|e| error("integrity", e))
    }

    /// Turns uploading to peers on or off, in every swarm.
    #[wasm_bindgen(js_name = setUploadEnabled)]
    pub fn set_upload_enabled(&self, enabled: bool) {
        for host in self.handle.hosts.borrow().values() {
            host.set_switches(Some(enabled), None);
        }
    }

    /// Turns downloading from peers on or off, in every swarm.
    #[wasm_bindgen(js_name = setP2pDownloadEnabled)]
    pub fn set_p2p_download_enabled(&self, enabled: bool) {
        for host in self.handle.hosts.borrow().values() {
            host.set_switches(None, Some(enabled));
        }
    }

    /// Subscribes to a gossip topic. `validate(data, from)` (optional) must return true
    /// for a message to be delivered and forwarded; rejected ones are counted, and a
    /// neighbour that keeps sending them is cut off.
    pub async fn subscribe(&self, topic: String, validate: Option<js_sys::Function>) -> Result<(), JsValue> {
        self.handle.gossip.subscribe(topic, validate).map_err(|e| error("gossip", e))
    }

    pub fn unsubscribe(&self, topic: String) {
        self.handle.gossip.unsubscribe(&topic);
    }

    /// Publishes `data` on `topic`; resolves to the number of neighbours it was sent to
    /// (0 when no connected peer subscribes to the topic yet).
    pub async fn publish(&self, topic: String, data: Vec<u8>) -> Result<u32, JsValue> {
        self.handle.gossip.publish(topic, data).map(|n| n as u32).map_err(|e| {
            let code = if e.contains("gossipMaxBytes") { "message-too-large" } else { "gossip" };
            error(code, e)
        })
    }

    /// Node link, connections, gossip counters, and per-swarm piece statistics.
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let snapshot = to_js(&*self.handle.snapshot.borrow())?;
        let swarms = js_sys::Object::new();
        for (name, host) in self.handle.hosts.borrow().iter() {
            let _ = js_sys::Reflect::set(&swarms, &JsValue::from_str(name), &to_js(&host.stats())?);
        }
        let _ = js_sys::Reflect::set(&snapshot, &JsValue::from_str("pieces"), &swarms);
        // The wasm heap only grows; its size is the runtime's memory high-water mark
        // (the segment cache lives in it).
        let memory = wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>();
        let bytes = memory.buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length();
        let _ = js_sys::Reflect::set(
            &snapshot,
            &JsValue::from_str("wasmMemoryBytes"),
            &JsValue::from_f64(f64::from(bytes)),
        );
        Ok(snapshot)
    }

    /// Each direct connection as its `RTCPeerConnection` sees it: selected ICE candidate
    /// pair (type and addresses), bytes moved, round trip.
    #[wasm_bindgen(js_name = connectionReport)]
    pub async fn connection_report(&self) -> Result<JsValue, JsValue> {
        to_js(&shoal_webrtc::connection_report().await)
    }

    /// Streams `bytes` pattern bytes to `peer`, which verifies each one. Resolves to
    /// `{bytes, intact, ms}` once the peer has confirmed.
    #[wasm_bindgen(js_name = sendBulk)]
    pub async fn send_bulk(&self, peer: String, bytes: f64) -> Result<JsValue, JsValue> {
        let peer: PeerId = peer.parse().map_err(|e| error("invalid-peer", e))?;
        if !(0.0..=bulk::MAX_LEN as f64).contains(&bytes) {
            return Err(error("invalid-argument", "bytes out of range"));
        }
        let started = js_sys::Date::now();
        let mut stream = self
            .handle
            .control
            .open(peer, StreamProtocol::new(bulk::PROTOCOL))
            .await
            .map_err(|e| error("stream-failed", e))?;
        let seed = js_sys::Math::random().to_bits();
        let verified = bulk::send(&mut stream, bytes as u64, seed).await.map_err(|e| error("transfer-failed", e))?;
        let ms = js_sys::Date::now() - started;
        let result = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&result, &JsValue::from_str(k), &v);
        let _ = set("bytes", JsValue::from_f64(verified.bytes as f64));
        let _ = set("intact", JsValue::from_bool(verified.intact));
        let _ = set("ms", JsValue::from_f64(ms));
        Ok(result.into())
    }

    /// Connects directly to the browser peer at `addr`
    /// (`<node>/p2p/<node id>/p2p-circuit/webrtc/p2p/<peer>`, as its `stats().address`
    /// says), which need not be a member of any swarm this peer joined. Resolves once the
    /// direct connection is up.
    pub async fn connect(&self, addr: String) -> Result<(), JsValue> {
        let addr = shoal_webrtc::addr::parse(&addr).map_err(|e| error("invalid-address", e))?;
        let Some(target) = shoal_webrtc::addr::parse_dial_addr(&addr) else {
            return Err(error("invalid-address", "not a browser address: expected …/p2p-circuit/webrtc/p2p/<peer>"));
        };
        if target.peer == self.handle.peer_id {
            return Err(error("invalid-address", "that is this peer's own address"));
        }
        let (reply, done) = oneshot::channel();
        self.handle
            .commands
            .unbounded_send(Command::Connect(addr, target.peer, reply))
            .map_err(|_| error("stopped", "peer is stopped"))?;
        done.await.map_err(|_| error("stopped", "peer is stopped"))?.map_err(|e| error("dial-failed", e))
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
    ) -> Result<RawStream, JsValue> {
        let peer: PeerId = peer.parse().map_err(|e| error("invalid-peer", e))?;
        let protocol = StreamProtocol::try_from_owned(protocol).map_err(|e| error("invalid-argument", e))?;
        if via_relay {
            let (reply, done) = oneshot::channel();
            self.handle
                .commands
                .unbounded_send(Command::DialRelayed(peer, reply))
                .map_err(|_| error("stopped", "peer is stopped"))?;
            done.await.map_err(|_| error("stopped", "peer is stopped"))?.map_err(|e| error("dial-failed", e))?;
        }
        let stream =
            self.handle.control.open_via(peer, protocol, via_relay).await.map_err(|e| error("stream-failed", e))?;
        Ok(RawStream { stream: Rc::new(futures::lock::Mutex::new(Some(stream))) })
    }

    /// Leaves every swarm and closes every connection.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.handle.commands.clone().send(Command::Stop(done)).await.is_ok() {
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
    pub async fn write(&self, bytes: Vec<u8>) -> Result<(), JsValue> {
        use futures::AsyncWriteExt;
        let mut guard = self.stream.lock().await;
        let stream = guard.as_mut().ok_or_else(|| error("closed", "stream closed"))?;
        stream.write_all(&bytes).await.map_err(|e| error("io", e))?;
        stream.flush().await.map_err(|e| error("io", e))
    }

    /// Reads what is available; `undefined` at end of stream.
    pub async fn read(&self) -> Result<Option<Vec<u8>>, JsValue> {
        use futures::AsyncReadExt;
        let mut guard = self.stream.lock().await;
        let stream = guard.as_mut().ok_or_else(|| error("closed", "stream closed"))?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf).await.map_err(|e| error("io", e))?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(buf))
    }

    /// Closes the write half.
    pub async fn close(&self) -> Result<(), JsValue> {
        use futures::AsyncWriteExt;
        let mut guard = self.stream.lock().await;
        if let Some(stream) = guard.as_mut() {
            stream.close().await.map_err(|e| error("io", e))?;
        }
        Ok(())
    }

    /// Drops the stream without closing it (a reset, as a crashing peer would).
    pub async fn reset(&self) {
        self.stream.lock().await.take();
    }
}

async fn fetch_well_known(url: Option<&str>) -> Result<Vec<String>, JsValue> {
    let window = web_sys::window().ok_or_else(|| error("no-window", "not running in a page"))?;
    let url = match url {
        Some(url) => url.to_owned(),
        None => format!(
            "{}{}",
            window.location().origin().map_err(|e| error("no-node", format!("{e:?}")))?,
            shoal_proto::WELL_KNOWN_PATH
        ),
    };
    let fetched = |e: JsValue| error("no-node", format!("fetching {url}: {}", crate::js_text(e)));
    let response: web_sys::Response =
        JsFuture::from(window.fetch_with_str(&url)).await.map_err(fetched)?.dyn_into().map_err(fetched)?;
    if !response.ok() {
        return Err(error("no-node", format!("fetching {url}: HTTP {}", response.status())));
    }
    let json = JsFuture::from(response.json().map_err(fetched)?).await.map_err(fetched)?;
    let doc: WellKnown = serde_wasm_bindgen::from_value(json)
        .map_err(|e| error("no-node", format!("{url} is not a Shoal well-known document: {e}")))?;
    Ok(doc.multiaddrs)
}
