//! The page's gossip: `shoal-core`'s gossip state machine plus what only the page can do
//! for it — sign our publications with the page's key, check the origin's signature on
//! received ones (a PeerId carries its ed25519 key), and ask the page's validator for
//! the topic.
//!
//! Plain data owned by the runtime, like [`crate::pieces::Pieces`]: method calls in,
//! [`GossipEffect`]s out. Natively testable (validators are closures).

use std::collections::VecDeque;

use bytes::Bytes;
use libp2p_identity::{Keypair, PeerId, PublicKey};
use shoal_core::{
    Instant,
    gossip::{Gossip, GossipConfig, GossipMessage, GossipOutput, Publication, PublishError, Received, Verdict},
    vecmap::VecMap,
};

use crate::{
    error::ShoalError,
    events::{Event, GossipStats},
};

/// The page's check of a publication on a topic: `(data, origin PeerId) -> verdict`.
pub type Validator = Box<dyn Fn(&[u8], &str) -> Verdict>;

/// What the runtime must do for [`Gossiping`].
#[derive(Debug, PartialEq)]
pub enum GossipEffect {
    /// Write this frame on our gossip link to the peer.
    Send(PeerId, Bytes),
    /// Cut the peer off (invalid messages, protocol violations).
    Disconnect(PeerId, String),
    Event(Event),
}

/// See the module docs.
pub struct Gossiping {
    gossip: Gossip<PeerId>,
    keypair: Keypair,
    origin: Bytes,
    validators: VecMap<String, Option<Validator>>,
    stats: GossipStats,
    seqno: u64,
    effects: VecDeque<GossipEffect>,
}

fn origin_string(origin: &[u8]) -> String {
    PeerId::from_bytes(origin).map(|p| p.to_string()).unwrap_or_default()
}

/// The public key a PeerId embeds (ed25519 and other short keys are inlined): its bytes
/// are a multihash whose code 0 (identity) means the digest is the protobuf-encoded key.
fn public_key_of(origin: &[u8]) -> Option<PublicKey> {
    PeerId::from_bytes(origin).ok()?;
    let (&code, rest) = origin.split_first()?;
    if code != 0 {
        return None;
    }
    let (&len, digest) = rest.split_first()?;
    if len >= 0x80 || digest.len() != usize::from(len) {
        return None;
    }
    PublicKey::try_decode_protobuf(digest).ok()
}

impl Gossiping {
    /// `clock_offset_ms`: the wall clock at `Instant::ZERO` (publication stamps are
    /// compared with it).
    pub fn new(keypair: Keypair, max_message_bytes: usize, seed: u64, clock_offset_ms: u64) -> Self {
        let config = GossipConfig { max_message_bytes, ..GossipConfig::default() };
        Self {
            origin: Bytes::from(keypair.public().to_peer_id().to_bytes()),
            keypair,
            gossip: Gossip::new(config, seed, clock_offset_ms),
            validators: VecMap::new(),
            stats: GossipStats::default(),
            seqno: 0,
            effects: VecDeque::new(),
        }
    }

    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    pub fn max_message_bytes(&self) -> usize {
        self.gossip.config().max_message_bytes
    }

    /// When the gossip state machine wants the time again (it has no timers today: its
    /// clocks advance with inputs).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.gossip.poll_timeout()
    }

    /// A gossip link to `peer` is up: tell it our topics.
    pub fn peer_connected(&mut self, peer: PeerId, now: Instant) {
        self.gossip.peer_connected(peer, now);
    }

    pub fn peer_gone(&mut self, peer: &PeerId) {
        self.gossip.peer_disconnected(peer);
    }

    pub fn subscribe(&mut self, topic: String, validator: Option<Validator>) -> Result<(), ShoalError> {
        self.gossip.subscribe(&topic).map_err(|e| ShoalError::Gossip(e.to_string()))?;
        self.validators.insert(topic, validator);
        Ok(())
    }

    pub fn unsubscribe(&mut self, topic: &str) {
        self.gossip.unsubscribe(topic);
        self.validators.remove(topic);
    }

    /// Signs and sends `data` to every subscribed neighbour; returns how many.
    pub fn publish(&mut self, topic: String, data: Vec<u8>, now: Instant) -> Result<usize, ShoalError> {
        let limit = self.max_message_bytes();
        if data.len() > limit {
            return Err(ShoalError::MessageTooLarge { len: data.len(), limit });
        }
        self.seqno += 1;
        let (seqno, timestamp_ms) = (self.seqno, self.gossip.wall_ms(now));
        let signature = self
            .keypair
            .sign(&Publication::signing_bytes(&topic, &self.origin, seqno, timestamp_ms, &data))
            .map_err(|e| ShoalError::Internal(e.to_string()))?;
        let publication = Publication {
            topic,
            origin: self.origin.clone(),
            seqno,
            timestamp_ms,
            data: Bytes::from(data),
            signature: signature.into(),
        };
        let sent = self.gossip.publish(publication, now).map_err(|e| match e {
            PublishError::TooLarge { len, limit } => ShoalError::MessageTooLarge { len, limit },
            other => ShoalError::Gossip(other.to_string()),
        })?;
        self.stats.published += 1;
        Ok(sent)
    }

    /// A frame `peer` sent could not be decoded (or was over the size limit).
    pub fn on_bad_frame(&mut self, peer: PeerId, error: &shoal_core::codec::WireError) {
        if let shoal_core::codec::WireError::TooLarge { .. } = error {
            self.stats.rejected_oversize += 1;
        }
        self.effects.push_back(GossipEffect::Disconnect(peer, format!("malformed gossip: {error}")));
    }

    /// A decoded message from `peer`.
    pub fn on_message(&mut self, peer: PeerId, message: GossipMessage, now: Instant) {
        let Self { gossip, validators, .. } = self;
        let outcome = gossip.handle_message(peer, message, now, |p| check(p, validators));
        let rejected = match outcome {
            Some(Received::Oversize(p)) => {
                self.stats.rejected_oversize += 1;
                Some((p, "larger than gossipMaxBytes".to_owned()))
            }
            Some(Received::Rejected(p, reason)) => {
                self.stats.rejected_invalid += 1;
                Some((p, reason))
            }
            Some(Received::Duplicate) => {
                self.stats.duplicates += 1;
                None
            }
            Some(Received::RateLimited) => {
                self.stats.rate_limited += 1;
                None
            }
            Some(Received::Expired) => {
                self.stats.expired += 1;
                None
            }
            Some(Received::Delivered | Received::NotSubscribed | Received::Ignored) | None => None,
        };
        if let Some((publication, reason)) = rejected {
            self.effects.push_back(GossipEffect::Event(Event::GossipRejected {
                topic: publication.topic.clone(),
                from: origin_string(&publication.origin),
                reason,
            }));
        }
    }

    /// The next thing to do; `None` once everything is out.
    pub fn poll_effect(&mut self) -> Option<GossipEffect> {
        if let Some(effect) = self.effects.pop_front() {
            return Some(effect);
        }
        Some(match self.gossip.poll_output()? {
            GossipOutput::Send(peer, frame) => GossipEffect::Send(peer, frame),
            GossipOutput::Disconnect(peer, reason) => GossipEffect::Disconnect(peer, reason),
            GossipOutput::Deliver { publication, .. } => {
                self.stats.received += 1;
                GossipEffect::Event(Event::Gossip {
                    topic: publication.topic.clone(),
                    from: origin_string(&publication.origin),
                    data: publication.data.to_vec(),
                })
            }
        })
    }
}

/// The page's half of checking a new publication: the origin's signature, then the
/// page's validator for the topic.
fn check(publication: &Publication, validators: &VecMap<String, Option<Validator>>) -> Verdict {
    let Some(key) = public_key_of(&publication.origin) else {
        return Verdict::Reject("origin is not a PeerId with an inline key".into());
    };
    let signed = Publication::signing_bytes(
        &publication.topic,
        &publication.origin,
        publication.seqno,
        publication.timestamp_ms,
        &publication.data,
    );
    if !key.verify(&signed, &publication.signature) {
        return Verdict::Reject("bad signature".into());
    }
    match validators.get(&publication.topic) {
        Some(Some(validator)) => validator(&publication.data, &origin_string(&publication.origin)),
        _ => Verdict::Accept,
    }
}
