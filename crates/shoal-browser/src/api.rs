//! The JavaScript class. Errors reject with an `Error` carrying a `code`.

use std::{cell::RefCell, rc::Rc};

use futures::{SinkExt, StreamExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use shoal_proto::WellKnown;
use wasm_bindgen::{JsCast, prelude::*};
use wasm_bindgen_futures::JsFuture;

use crate::{
    bulk,
    config::Config,
    runtime::{self, Command, Event, EventSink, Handle},
};

/// Builds the rejection value: an `Error` with `code` and `message`.
fn error(code: &str, message: impl std::fmt::Display) -> JsValue {
    let error = js_sys::Error::new(&message.to_string());
    let _ = js_sys::Reflect::set(&error, &JsValue::from_str("code"), &JsValue::from_str(code));
    error.into()
}

/// A Shoal peer running in this page.
#[wasm_bindgen]
pub struct ShoalPeer {
    handle: Handle,
    on_event: Rc<RefCell<Option<js_sys::Function>>>,
}

fn init_logging(level: Option<&str>) {
    let level = match level.unwrap_or("info") {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let config = tracing_wasm::WASMLayerConfigBuilder::new().set_max_level(level).build();
    // A second peer in the same page keeps the first subscriber.
    let _ = std::panic::catch_unwind(|| tracing_wasm::set_as_global_default_with_config(config));
}

#[wasm_bindgen]
impl ShoalPeer {
    /// Starts a peer: finds the signalling node, joins `config.swarm` and connects
    /// directly to its other members. `onEvent` receives `{type, ...}` objects.
    pub async fn start(config: JsValue, on_event: Option<js_sys::Function>) -> Result<ShoalPeer, JsValue> {
        let config: Config = serde_wasm_bindgen::from_value(config).map_err(|e| error("invalid-config", e))?;
        config.validate().map_err(|e| error("invalid-config", e))?;
        init_logging(config.log_level.as_deref());

        let nodes = if config.nodes.is_empty() {
            fetch_well_known(config.well_known_url.as_deref()).await?
        } else {
            config.nodes.clone()
        };
        let nodes: Vec<Multiaddr> = nodes
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .filter(|a| a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::WebRTCDirect)))
            .collect();
        if nodes.is_empty() {
            return Err(error("no-node", "no /webrtc-direct signalling node address"));
        }

        let on_event = Rc::new(RefCell::new(on_event));
        let emit: EventSink = {
            let on_event = on_event.clone();
            Rc::new(move |event: Event| {
                let Some(callback) = on_event.borrow().clone() else {
                    return;
                };
                let serializer = serde_wasm_bindgen::Serializer::json_compatible();
                if let Ok(value) = serde::Serialize::serialize(&event, &serializer)
                    && let Err(e) = callback.call1(&JsValue::NULL, &value)
                {
                    tracing::warn!("event handler threw: {e:?}");
                }
            })
        };
        let handle = runtime::start(config, nodes, emit.clone()).map_err(|e| error("start-failed", e))?;
        accept_bulk(handle.control.clone(), emit);
        Ok(ShoalPeer { handle, on_event })
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

    /// Node link, direct connections and counters, as a plain object.
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let serializer = serde_wasm_bindgen::Serializer::json_compatible();
        serde::Serialize::serialize(&*self.handle.snapshot.borrow(), &serializer).map_err(|e| error("internal", e))
    }

    /// Each direct connection as its `RTCPeerConnection` sees it: selected ICE candidate
    /// pair (type and addresses), bytes moved, round trip.
    #[wasm_bindgen(js_name = connectionReport)]
    pub async fn connection_report(&self) -> Result<JsValue, JsValue> {
        let report = shoal_webrtc::connection_report().await;
        let serializer = serde_wasm_bindgen::Serializer::json_compatible();
        serde::Serialize::serialize(&report, &serializer).map_err(|e| error("internal", e))
    }

    /// Streams `bytes` pattern bytes to `peer`, which verifies each one. Resolves to
    /// `{bytes, intact, ms}` once the peer has confirmed.
    #[wasm_bindgen(js_name = sendBulk)]
    pub async fn send_bulk(&self, peer: String, bytes: f64) -> Result<JsValue, JsValue> {
        let peer: PeerId = peer.parse().map_err(|e| error("invalid-peer", e))?;
        if !(0.0..=bulk::MAX_LEN as f64).contains(&bytes) {
            return Err(error("invalid-argument", "bytes out of range"));
        }
        let mut control = self.handle.control.clone();
        let started = js_sys::Date::now();
        let mut stream = control
            .open_stream(peer, StreamProtocol::new(bulk::PROTOCOL))
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
            let (reply, done) = futures::channel::oneshot::channel();
            self.handle
                .commands
                .clone()
                .send(Command::DialRelayed(peer, reply))
                .await
                .map_err(|_| error("stopped", "peer is stopped"))?;
            done.await.map_err(|_| error("stopped", "peer is stopped"))?.map_err(|e| error("dial-failed", e))?;
        }
        let stream =
            self.handle.control.clone().open_stream(peer, protocol).await.map_err(|e| error("stream-failed", e))?;
        Ok(RawStream { stream: Rc::new(futures::lock::Mutex::new(Some(stream))) })
    }

    /// Stops the peer and closes every connection.
    pub async fn stop(&self) {
        let (done, stopped) = futures::channel::oneshot::channel();
        if self.handle.commands.clone().send(Command::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
    }
}

/// Serves incoming bulk transfers for as long as the peer runs.
fn accept_bulk(mut control: libp2p_stream::Control, emit: EventSink) {
    let Ok(mut incoming) = control.accept(StreamProtocol::new(bulk::PROTOCOL)) else {
        return;
    };
    wasm_bindgen_futures::spawn_local(async move {
        while let Some((peer, mut stream)) = incoming.next().await {
            let emit = emit.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let started = js_sys::Date::now();
                match bulk::receive(&mut stream).await {
                    Ok(v) => emit(Event::BulkReceived {
                        peer: peer.to_string(),
                        bytes: v.bytes,
                        intact: v.intact,
                        ms: js_sys::Date::now() - started,
                    }),
                    Err(e) => emit(Event::Error { message: format!("bulk transfer from {peer}: {e}") }),
                }
            });
        }
    });
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
    let fetched =
        |e: JsValue| error("no-node", format!("fetching {url}: {}", e.as_string().unwrap_or_else(|| format!("{e:?}"))));
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
