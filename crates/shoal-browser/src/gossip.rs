//! Runs `shoal-core`'s gossip state machine over `/shoal/gossip/1` streams, one outbound
//! stream per directly connected peer. Carries out what it asks for and answers its
//! checks: the origin's signature (the origin's PeerId embeds its ed25519 key), then the
//! page's validator for the topic.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    rc::Rc,
};

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt, channel::mpsc};
use libp2p::{
    PeerId, StreamProtocol,
    identity::{Keypair, PublicKey},
};
use serde::Serialize;
use shoal_core::gossip::{
    FRAME_OVERHEAD, Gossip, GossipConfig, GossipDecoder, GossipOutput, Publication, Received, Verdict, WireError,
};
use wasm_bindgen::JsValue;

use crate::{
    pieces::now_ms,
    runtime::{Command, Event, EventSink},
    streams::{self, OpenError},
};

/// Protocol of gossip streams.
pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new(shoal_core::gossip::PROTOCOL_NAME);

/// Gossip counters, as `stats().gossip` reports them.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GossipStats {
    pub published: u64,
    pub received: u64,
    pub rejected_oversize: u64,
    pub rejected_invalid: u64,
    /// Dropped past a neighbour's rate limit, or stamped too far from our clock.
    pub rate_limited: u64,
    pub expired: u64,
    pub duplicates: u64,
}

struct Inner {
    gossip: Gossip<PeerId>,
    writers: HashMap<PeerId, mpsc::UnboundedSender<Bytes>>,
    /// Connected peers that do not speak gossip (not Shoal pages): not asked again until
    /// they reconnect.
    foreign: HashSet<PeerId>,
    validators: HashMap<String, Option<js_sys::Function>>,
    stats: GossipStats,
    seqno: u64,
}

/// The page's gossip. See the module docs.
pub(crate) struct GossipHost {
    inner: RefCell<Inner>,
    keypair: Keypair,
    origin: Bytes,
    emit: EventSink,
    commands: mpsc::UnboundedSender<Command>,
    control: streams::Control,
}

fn now() -> shoal_core::Instant {
    shoal_core::Instant::from_millis_f64(now_ms())
}

/// Wall-clock milliseconds at the page's time origin (`performance.now()` = 0).
fn time_origin_ms() -> u64 {
    let origin = web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.time_origin());
    if origin > 0.0 { origin as u64 } else { (js_sys::Date::now() - now_ms()).max(0.0) as u64 }
}

fn origin_string(origin: &[u8]) -> String {
    PeerId::from_bytes(origin).map(|p| p.to_string()).unwrap_or_default()
}

/// The public key a PeerId embeds (ed25519 and other short keys are inlined).
fn public_key_of(origin: &[u8]) -> Option<PublicKey> {
    let peer = PeerId::from_bytes(origin).ok()?;
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Code 0 is the identity hash: the digest is the protobuf-encoded key itself.
    if multihash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(multihash.digest()).ok()
}

impl GossipHost {
    pub(crate) fn new(
        keypair: Keypair,
        max_message_bytes: usize,
        emit: EventSink,
        commands: mpsc::UnboundedSender<Command>,
        control: streams::Control,
    ) -> Rc<Self> {
        let config = GossipConfig { max_message_bytes, ..GossipConfig::default() };
        let seed = (js_sys::Math::random() * u64::MAX as f64) as u64;
        Rc::new(Self {
            origin: Bytes::from(keypair.public().to_peer_id().to_bytes()),
            keypair,
            inner: RefCell::new(Inner {
                gossip: Gossip::new(config, seed, time_origin_ms()),
                writers: HashMap::new(),
                foreign: HashSet::new(),
                validators: HashMap::new(),
                stats: GossipStats::default(),
                seqno: 0,
            }),
            emit,
            commands,
            control,
        })
    }

    pub(crate) fn stats(&self) -> GossipStats {
        self.inner.borrow().stats.clone()
    }

    /// A direct connection to `peer` is up (or our stream to it died): open a stream and
    /// send our subscriptions. A no-op while our stream is up.
    pub(crate) fn peer_connected(self: &Rc<Self>, peer: PeerId) {
        {
            let inner = self.inner.borrow();
            if inner.writers.contains_key(&peer) || inner.foreign.contains(&peer) {
                return;
            }
        }
        let (frames_tx, mut frames) = mpsc::unbounded::<Bytes>();
        self.inner.borrow_mut().writers.insert(peer, frames_tx);
        let control = self.control.clone();
        let host = Rc::downgrade(self);
        wasm_bindgen_futures::spawn_local(async move {
            let result: Result<(), OpenError> = async {
                let mut stream = control.open(peer, PROTOCOL).await?;
                while let Some(frame) = frames.next().await {
                    stream.write_all(&frame).await.map_err(|e| OpenError::Io(e.to_string()))?;
                }
                let _ = stream.close().await;
                Ok(())
            }
            .await;
            if let (Err(error), Some(host)) = (result, host.upgrade()) {
                // The connection it ran on may have been a duplicate that was closed while
                // another stays up: the runtime offers the peer again, and a new stream
                // re-announces our subscriptions. What we know of the peer's stays.
                tracing::debug!(%peer, %error, "gossip stream closed");
                let mut inner = host.inner.borrow_mut();
                inner.writers.remove(&peer);
                if matches!(error, OpenError::Unsupported) {
                    inner.foreign.insert(peer);
                }
            }
        });
        self.inner.borrow_mut().gossip.peer_connected(peer, now());
        self.dispatch();
    }

    /// The peer disconnected, or was cut off.
    pub(crate) fn peer_gone(&self, peer: PeerId) {
        let mut inner = self.inner.borrow_mut();
        inner.writers.remove(&peer);
        inner.foreign.remove(&peer);
        inner.gossip.peer_disconnected(&peer);
    }

    /// The peer's stream to us.
    pub(crate) fn attach_reader(self: &Rc<Self>, peer: PeerId, mut stream: libp2p::Stream) {
        let max_frame = self.inner.borrow().gossip.config().max_message_bytes + FRAME_OVERHEAD;
        let host = Rc::downgrade(self);
        wasm_bindgen_futures::spawn_local(async move {
            let mut decoder = GossipDecoder::with_limit(max_frame);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let Some(host) = host.upgrade() else { return };
                decoder.extend(&buf[..n]);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(message)) => host.on_message(peer, message),
                        Ok(None) => break,
                        Err(error) => {
                            host.on_bad_frame(peer, &error);
                            return;
                        }
                    }
                }
            }
        });
    }

    fn on_bad_frame(&self, peer: PeerId, error: &WireError) {
        if let WireError::TooLarge { .. } = error {
            self.inner.borrow_mut().stats.rejected_oversize += 1;
        }
        tracing::info!(%peer, %error, "malformed gossip frame");
        let _ = self.commands.unbounded_send(Command::Ban(peer, format!("malformed gossip: {error}")));
    }

    fn on_message(self: &Rc<Self>, peer: PeerId, message: shoal_core::gossip::GossipMessage) {
        let outcome = {
            let mut inner = self.inner.borrow_mut();
            let Inner { gossip, validators, .. } = &mut *inner;
            gossip.handle_message(peer, message, now(), |p| check(p, validators))
        };
        if let Some(outcome) = outcome {
            let rejected = match outcome {
                Received::Oversize(p) => {
                    self.inner.borrow_mut().stats.rejected_oversize += 1;
                    Some((p, "larger than gossipMaxBytes".to_owned()))
                }
                Received::Rejected(p, reason) => {
                    self.inner.borrow_mut().stats.rejected_invalid += 1;
                    Some((p, reason))
                }
                Received::Duplicate => {
                    self.inner.borrow_mut().stats.duplicates += 1;
                    None
                }
                Received::RateLimited => {
                    self.inner.borrow_mut().stats.rate_limited += 1;
                    None
                }
                Received::Expired => {
                    self.inner.borrow_mut().stats.expired += 1;
                    None
                }
                Received::Delivered | Received::NotSubscribed | Received::Ignored => None,
            };
            if let Some((publication, reason)) = rejected {
                (self.emit)(Event::GossipRejected {
                    topic: publication.topic.clone(),
                    from: origin_string(&publication.origin),
                    reason,
                });
            }
        }
        self.dispatch();
    }

    pub(crate) fn subscribe(self: &Rc<Self>, topic: String, validator: Option<js_sys::Function>) -> Result<(), String> {
        {
            let mut inner = self.inner.borrow_mut();
            inner.gossip.subscribe(&topic).map_err(|e| e.to_string())?;
            inner.validators.insert(topic, validator);
        }
        self.dispatch();
        Ok(())
    }

    pub(crate) fn unsubscribe(self: &Rc<Self>, topic: &str) {
        {
            let mut inner = self.inner.borrow_mut();
            inner.gossip.unsubscribe(topic);
            inner.validators.remove(topic);
        }
        self.dispatch();
    }

    /// Signs and sends `data` to every subscribed neighbour; returns how many.
    pub(crate) fn publish(self: &Rc<Self>, topic: String, data: Vec<u8>) -> Result<usize, String> {
        let limit = self.inner.borrow().gossip.config().max_message_bytes;
        if data.len() > limit {
            return Err(format!("message of {} bytes exceeds gossipMaxBytes ({limit})", data.len()));
        }
        let (seqno, timestamp_ms) = {
            let mut inner = self.inner.borrow_mut();
            inner.seqno += 1;
            (inner.seqno, inner.gossip.wall_ms(now()))
        };
        let signature = self
            .keypair
            .sign(&Publication::signing_bytes(&topic, &self.origin, seqno, timestamp_ms, &data))
            .map_err(|e| e.to_string())?;
        let publication = Publication {
            topic,
            origin: self.origin.clone(),
            seqno,
            timestamp_ms,
            data: Bytes::from(data),
            signature: signature.into(),
        };
        let sent = {
            let mut inner = self.inner.borrow_mut();
            let sent = inner.gossip.publish(publication, now()).map_err(|e| e.to_string())?;
            inner.stats.published += 1;
            sent
        };
        self.dispatch();
        Ok(sent)
    }

    fn dispatch(&self) {
        loop {
            let Some(action) = self.inner.borrow_mut().gossip.poll_output() else { break };
            match action {
                GossipOutput::Send(peer, frame) => {
                    if let Some(writer) = self.inner.borrow().writers.get(&peer) {
                        let _ = writer.unbounded_send(frame);
                    }
                }
                GossipOutput::Deliver { publication, .. } => {
                    self.inner.borrow_mut().stats.received += 1;
                    (self.emit)(Event::Gossip {
                        topic: publication.topic.clone(),
                        from: origin_string(&publication.origin),
                        data: publication.data.to_vec(),
                    });
                }
                GossipOutput::Disconnect(peer, reason) => {
                    let _ = self.commands.unbounded_send(Command::Ban(peer, reason));
                }
            }
        }
    }
}

/// The driver's half of checking a new publication: the origin's signature, then the
/// page's validator for the topic.
fn check(publication: &Publication, validators: &HashMap<String, Option<js_sys::Function>>) -> Verdict {
    let Some(key) = public_key_of(&publication.origin) else {
        return Verdict::Reject("origin is not a PeerId with an inline key".into());
    };
    let signed =
        Publication::signing_bytes(
            &publication.topic,
            &publication.origin,
            publication.seqno,
            publication.timestamp_ms,
            &publication.data,
        );
    if !key.verify(&signed, &publication.signature) {
        return Verdict::Reject("bad signature".into());
    }
    let Some(Some(validator)) = validators.get(&publication.topic) else { return Verdict::Accept };
    let data = js_sys::Uint8Array::from(&publication.data[..]);
    let from = origin_string(&publication.origin);
    match validator.call2(&JsValue::NULL, &data, &JsValue::from_str(&from)) {
        Ok(v) if v.is_truthy() => Verdict::Accept,
        Ok(_) => Verdict::Reject("the topic's validator refused it".into()),
        Err(_) => Verdict::Reject("the topic's validator threw".into()),
    }
}
