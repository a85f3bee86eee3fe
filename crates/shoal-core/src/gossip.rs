//! Gossip: topic messages that reach every subscriber of a swarm, checked before anyone
//! delivers or forwards them.
//!
//! Peers tell each neighbour which topics they subscribe to as soon as a connection is up
//! (and on every change), so a message published a moment after subscribing is not lost
//! to a mesh still forming. A publication carries its origin, a sequence number and the
//! origin's signature; its id is the hash of origin and sequence number. Each peer:
//!
//! 1. drops ids it has seen (a bounded, time-limited cache) and topics it does not
//!    subscribe to;
//! 2. asks the driver to check it (signature, size, the page's validator);
//! 3. if valid, delivers it and forwards it to at most `forward_fanout` random
//!    subscribed neighbours other than the sender and the origin; the origin itself
//!    sends to every subscribed neighbour, so a swarm where everyone is connected to
//!    everyone gets every message in one hop, and a sparser one within a few;
//! 4. if invalid, counts a strike against the neighbour that sent it, and asks for it
//!    to be cut off after `max_strikes`.
//!
//! Unlike gossipsub there is no heartbeat, mesh or IHAVE/IWANT repair: Shoal swarms are
//! small, densely connected neighbourhoods (each page holds up to a few dozen direct
//! connections to members of its own swarm), where flooding with deduplication is both
//! the fastest and the smallest design. It costs the page ~75 KB (gzipped) less code.
//!
//! Sans-IO like the engine: frames and events in, [`GossipAction`]s out.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    hash::Hash,
    sync::Arc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use rand::{SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::{
    Instant,
    wire::{Reader, WireError, peek_varint, put_varint},
};

/// libp2p protocol name of gossip streams.
pub const PROTOCOL_NAME: &str = "/shoal/gossip/1";
/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 256;
/// Most topics one peer may subscribe to (more is a protocol violation).
pub const MAX_TOPICS_PER_PEER: usize = 64;
const MAX_ORIGIN_LEN: usize = 64;
const MAX_SIGNATURE_LEN: usize = 128;
/// Frame bytes beyond the payload: topic, origin, sequence number, signature, headers.
pub const FRAME_OVERHEAD: usize = MAX_TOPIC_LEN + MAX_ORIGIN_LEN + MAX_SIGNATURE_LEN + 32;

mod kind {
    pub(super) const SUBSCRIBE: u8 = 1;
    pub(super) const UNSUBSCRIBE: u8 = 2;
    pub(super) const PUBLISH: u8 = 3;
}

/// One published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub topic: String,
    /// The publisher's identity (a libp2p PeerId, as bytes), whose key signed this.
    pub origin: Bytes,
    pub seqno: u64,
    pub data: Bytes,
    pub signature: Bytes,
}

impl Publication {
    /// The bytes the origin signs: everything but the signature, unambiguously framed.
    pub fn signing_bytes(topic: &str, origin: &[u8], seqno: u64, data: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(data.len() + topic.len() + origin.len() + 40);
        out.extend_from_slice(b"shoal-gossip-v1:");
        put_varint(&mut out, topic.len() as u64);
        out.extend_from_slice(topic.as_bytes());
        put_varint(&mut out, origin.len() as u64);
        out.extend_from_slice(origin);
        put_varint(&mut out, seqno);
        out.extend_from_slice(data);
        out.to_vec()
    }

    /// Its identity for deduplication.
    pub fn id(&self) -> MessageId {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&(self.origin.len() as u64).to_le_bytes());
        hasher.update(&self.origin);
        hasher.update(&self.seqno.to_le_bytes());
        hasher.update(self.topic.as_bytes());
        MessageId(*hasher.finalize().as_bytes())
    }
}

/// Hash of a publication's origin, sequence number and topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(pub [u8; 32]);

/// A message between two neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipMessage {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Publish(Arc<Publication>),
}

/// Why bytes were not a gossip frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GossipWireError {
    #[error("gossip frame of {len} bytes exceeds the {limit} byte limit")]
    TooLarge { len: u64, limit: usize },
    #[error(transparent)]
    Wire(#[from] WireError),
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn read_bytes(reader: &mut Reader, max: usize, what: &'static str) -> Result<Bytes, WireError> {
    let len = reader.varint()?;
    if len > max as u64 {
        return Err(WireError::Invalid(what));
    }
    reader.take(len as usize)
}

fn read_topic(reader: &mut Reader) -> Result<String, WireError> {
    let bytes = read_bytes(reader, MAX_TOPIC_LEN, "topic too long")?;
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Invalid("topic is not UTF-8"))
}

impl GossipMessage {
    /// Appends this message as a frame (varint length, then body) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        match self {
            Self::Subscribe(topics) | Self::Unsubscribe(topics) => {
                body.extend_from_slice(&[if matches!(self, Self::Subscribe(_)) {
                    kind::SUBSCRIBE
                } else {
                    kind::UNSUBSCRIBE
                }]);
                put_varint(&mut body, topics.len() as u64);
                for topic in topics {
                    put_bytes(&mut body, topic.as_bytes());
                }
            }
            Self::Publish(p) => {
                body.extend_from_slice(&[kind::PUBLISH]);
                put_bytes(&mut body, p.topic.as_bytes());
                put_bytes(&mut body, &p.origin);
                put_varint(&mut body, p.seqno);
                put_bytes(&mut body, &p.signature);
                body.extend_from_slice(&p.data);
            }
        }
        put_varint(out, body.len() as u64);
        out.extend_from_slice(&body);
    }

    /// Decodes one frame body.
    pub fn decode(body: Bytes) -> Result<Self, WireError> {
        let mut reader = Reader { body };
        let kind = reader.byte()?;
        match kind {
            kind::SUBSCRIBE | kind::UNSUBSCRIBE => {
                let count = reader.varint()?;
                if count > MAX_TOPICS_PER_PEER as u64 {
                    return Err(WireError::Invalid("too many topics"));
                }
                let topics = (0..count).map(|_| read_topic(&mut reader)).collect::<Result<Vec<_>, _>>()?;
                reader.finish()?;
                Ok(if kind == kind::SUBSCRIBE { Self::Subscribe(topics) } else { Self::Unsubscribe(topics) })
            }
            kind::PUBLISH => {
                let topic = read_topic(&mut reader)?;
                let origin = read_bytes(&mut reader, MAX_ORIGIN_LEN, "origin too long")?;
                let seqno = reader.varint()?;
                let signature = read_bytes(&mut reader, MAX_SIGNATURE_LEN, "signature too long")?;
                // The payload is the rest of the frame.
                let data = std::mem::take(&mut reader.body);
                Ok(Self::Publish(Arc::new(Publication { topic, origin, seqno, data, signature })))
            }
            other => Err(WireError::UnknownType(other)),
        }
    }
}

/// Reassembles gossip frames from a stream, refusing frames over `max_frame`.
#[derive(Debug)]
pub struct GossipDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl GossipDecoder {
    pub fn new(max_frame: usize) -> Self {
        Self { buf: BytesMut::new(), max_frame }
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message; `Ok(None)` if more bytes are needed. After an error
    /// the stream is unusable.
    pub fn next_message(&mut self) -> Result<Option<GossipMessage>, GossipWireError> {
        let Some((len, prefix)) = peek_varint(&self.buf)? else { return Ok(None) };
        if len > self.max_frame as u64 {
            return Err(GossipWireError::TooLarge { len, limit: self.max_frame });
        }
        if self.buf.len() < prefix + len as usize {
            return Ok(None);
        }
        let _ = self.buf.split_to(prefix);
        let body = self.buf.split_to(len as usize).freeze();
        Ok(Some(GossipMessage::decode(body)?))
    }
}

/// Settings of [`Gossip`].
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Largest payload accepted or published.
    pub max_message_bytes: usize,
    /// Subscribed neighbours a received message is forwarded to (the origin sends to all).
    pub forward_fanout: usize,
    /// How long a message id is remembered.
    pub seen_ttl: Duration,
    /// Most ids remembered (the oldest go first).
    pub max_seen: usize,
    /// Invalid messages from one neighbour before it is cut off.
    pub max_strikes: u32,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            forward_fanout: 6,
            seen_ttl: Duration::from_secs(120),
            max_seen: 10_000,
            max_strikes: 3,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipAction<P> {
    /// Write this frame to the neighbour.
    Send(P, Bytes),
    /// Hand a checked message to the page (received from neighbour `from`).
    Deliver { from: P, publication: Arc<Publication> },
    /// Cut the neighbour off (repeated invalid messages or a protocol violation).
    Ban(P, String),
}

/// What the driver's check decided about a new publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refused; counts a strike against the neighbour that sent it.
    Reject(String),
    /// Dropped without holding it against the sender (e.g. the page's own rate limit).
    Ignore,
}

/// What happened to a received publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Delivered,
    Duplicate,
    NotSubscribed,
    Oversize(Arc<Publication>),
    Rejected(Arc<Publication>, String),
    Ignored,
}

#[derive(Debug, Default)]
struct Neighbour {
    topics: BTreeSet<String>,
    strikes: u32,
}

/// Gossip state of one page. See the module docs.
#[derive(Debug)]
pub struct Gossip<P> {
    config: GossipConfig,
    topics: BTreeSet<String>,
    neighbours: HashMap<P, Neighbour>,
    seen: HashMap<MessageId, Instant>,
    seen_order: VecDeque<(MessageId, Instant)>,
    rng: ChaCha8Rng,
    actions: Vec<GossipAction<P>>,
}

impl<P: Clone + Eq + Hash + Ord> Gossip<P> {
    pub fn new(config: GossipConfig, seed: u64) -> Self {
        Self {
            config,
            topics: BTreeSet::new(),
            neighbours: HashMap::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            actions: Vec::new(),
        }
    }

    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Actions produced since the last call.
    pub fn take_actions(&mut self) -> Vec<GossipAction<P>> {
        std::mem::take(&mut self.actions)
    }

    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.topics.contains(topic)
    }

    /// Neighbours known to subscribe to `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.neighbours.values().filter(|n| n.topics.contains(topic)).count()
    }

    fn send(&mut self, peer: P, message: &GossipMessage) {
        let mut frame = BytesMut::new();
        message.encode(&mut frame);
        self.actions.push(GossipAction::Send(peer, frame.freeze()));
    }

    /// A connection (or a new stream) to `peer` is up: tell it what we subscribe to.
    /// What we know of the peer's own subscriptions is kept until it disconnects.
    pub fn peer_connected(&mut self, peer: P) {
        self.neighbours.entry(peer.clone()).or_default();
        if !self.topics.is_empty() {
            let topics = self.topics.iter().cloned().collect();
            self.send(peer, &GossipMessage::Subscribe(topics));
        }
    }

    pub fn peer_disconnected(&mut self, peer: &P) {
        self.neighbours.remove(peer);
    }

    /// Subscribes; returns false if already subscribed. Errors for an invalid topic.
    pub fn subscribe(&mut self, topic: &str) -> Result<bool, GossipWireError> {
        if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
            return Err(WireError::Invalid("topic must be 1 to 256 bytes").into());
        }
        if self.topics.contains(topic) {
            return Ok(false);
        }
        if self.topics.len() >= MAX_TOPICS_PER_PEER {
            return Err(WireError::Invalid("too many topics").into());
        }
        self.topics.insert(topic.to_owned());
        let message = GossipMessage::Subscribe(vec![topic.to_owned()]);
        for peer in self.neighbours.keys().cloned().collect::<Vec<_>>() {
            self.send(peer, &message);
        }
        Ok(true)
    }

    pub fn unsubscribe(&mut self, topic: &str) {
        if !self.topics.remove(topic) {
            return;
        }
        let message = GossipMessage::Unsubscribe(vec![topic.to_owned()]);
        for peer in self.neighbours.keys().cloned().collect::<Vec<_>>() {
            self.send(peer, &message);
        }
    }

    /// Remembers `id`; false if it was already known.
    fn remember(&mut self, id: MessageId, now: Instant) -> bool {
        while let Some(&(old, at)) = self.seen_order.front() {
            let expired = now.saturating_since(at) > self.config.seen_ttl;
            if !expired && self.seen_order.len() < self.config.max_seen {
                break;
            }
            self.seen_order.pop_front();
            if self.seen.get(&old) == Some(&at) {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&id) {
            return false;
        }
        self.seen.insert(id, now);
        self.seen_order.push_back((id, now));
        true
    }

    /// Publishes our own signed message to every subscribed neighbour. Returns how many
    /// neighbours it was sent to.
    pub fn publish(&mut self, publication: Publication, now: Instant) -> Result<usize, GossipWireError> {
        if publication.data.len() > self.config.max_message_bytes {
            return Err(GossipWireError::TooLarge {
                len: publication.data.len() as u64,
                limit: self.config.max_message_bytes,
            });
        }
        if publication.topic.is_empty() || publication.topic.len() > MAX_TOPIC_LEN {
            return Err(WireError::Invalid("topic must be 1 to 256 bytes").into());
        }
        self.remember(publication.id(), now);
        let message = GossipMessage::Publish(Arc::new(publication));
        let GossipMessage::Publish(p) = &message else { unreachable!() };
        let targets: Vec<P> =
            self.neighbours.iter().filter(|(_, n)| n.topics.contains(&p.topic)).map(|(k, _)| k.clone()).collect();
        for peer in &targets {
            self.send(peer.clone(), &message);
        }
        Ok(targets.len())
    }

    /// A message from neighbour `from`. `check` is called once per new publication on a
    /// subscribed topic (signature, page validator); duplicates never reach it.
    pub fn handle_message(
        &mut self,
        from: P,
        message: GossipMessage,
        now: Instant,
        check: impl FnOnce(&Publication) -> Verdict,
    ) -> Option<Received> {
        let neighbour = self.neighbours.entry(from.clone()).or_default();
        match message {
            GossipMessage::Subscribe(topics) => {
                neighbour.topics.extend(topics);
                if neighbour.topics.len() > MAX_TOPICS_PER_PEER {
                    self.neighbours.remove(&from);
                    self.actions
                        .push(GossipAction::Ban(from, format!("subscribed to over {MAX_TOPICS_PER_PEER} topics")));
                }
                None
            }
            GossipMessage::Unsubscribe(topics) => {
                for topic in &topics {
                    neighbour.topics.remove(topic);
                }
                None
            }
            GossipMessage::Publish(publication) => Some(self.on_publication(from, publication, now, check)),
        }
    }

    fn on_publication(
        &mut self,
        from: P,
        publication: Arc<Publication>,
        now: Instant,
        check: impl FnOnce(&Publication) -> Verdict,
    ) -> Received {
        if !self.topics.contains(&publication.topic) {
            // A race with our unsubscribe, or a neighbour ignoring it: not worth a strike.
            return Received::NotSubscribed;
        }
        if !self.remember(publication.id(), now) {
            return Received::Duplicate;
        }
        let verdict = if publication.data.len() > self.config.max_message_bytes {
            Verdict::Reject(format!(
                "{} bytes exceeds the {} byte limit",
                publication.data.len(),
                self.config.max_message_bytes
            ))
        } else {
            check(&publication)
        };
        match verdict {
            Verdict::Accept => {
                let mut targets: Vec<P> = self
                    .neighbours
                    .iter()
                    .filter(|(peer, n)| **peer != from && n.topics.contains(&publication.topic))
                    .map(|(peer, _)| peer.clone())
                    .collect();
                // Sorted first so a seed gives the same choice whatever the map's order.
                targets.sort();
                targets.shuffle(&mut self.rng);
                targets.truncate(self.config.forward_fanout);
                let message = GossipMessage::Publish(publication.clone());
                for peer in targets {
                    self.send(peer, &message);
                }
                self.actions.push(GossipAction::Deliver { from, publication });
                Received::Delivered
            }
            Verdict::Ignore => Received::Ignored,
            Verdict::Reject(reason) => {
                let oversize = publication.data.len() > self.config.max_message_bytes;
                if let Some(neighbour) = self.neighbours.get_mut(&from) {
                    neighbour.strikes += 1;
                    if neighbour.strikes >= self.config.max_strikes {
                        self.neighbours.remove(&from);
                        self.actions.push(GossipAction::Ban(from, format!("repeated invalid gossip: {reason}")));
                    }
                }
                if oversize { Received::Oversize(publication) } else { Received::Rejected(publication, reason) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn publication(origin: &str, seqno: u64, topic: &str, data: &[u8]) -> Publication {
        Publication {
            topic: topic.into(),
            origin: Bytes::copy_from_slice(origin.as_bytes()),
            seqno,
            data: Bytes::copy_from_slice(data),
            signature: Bytes::from_static(&[7; 64]),
        }
    }

    fn frames_to(actions: &[GossipAction<u32>]) -> Vec<(u32, GossipMessage)> {
        actions
            .iter()
            .filter_map(|a| match a {
                GossipAction::Send(peer, frame) => {
                    let mut decoder = GossipDecoder::new(1 << 20);
                    decoder.extend(frame);
                    Some((*peer, decoder.next_message().unwrap().unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    fn t(secs: u64) -> Instant {
        Instant::from_micros(secs * 1_000_000)
    }

    #[test]
    fn messages_round_trip() {
        for message in [
            GossipMessage::Subscribe(vec!["a".into(), "chat/room-1".into()]),
            GossipMessage::Unsubscribe(vec![]),
            GossipMessage::Publish(Arc::new(publication("peer", 9, "t", b"hello"))),
            GossipMessage::Publish(Arc::new(publication("peer", u64::MAX, "t", b""))),
        ] {
            let mut frame = BytesMut::new();
            message.encode(&mut frame);
            let mut decoder = GossipDecoder::new(1024);
            // Split anywhere: streams cut frames arbitrarily.
            let (a, b) = frame.split_at(frame.len() / 2);
            decoder.extend(a);
            if frame.len() > 2 {
                assert_eq!(decoder.next_message().unwrap(), None);
            }
            decoder.extend(b);
            assert_eq!(decoder.next_message().unwrap(), Some(message));
        }
    }

    #[test]
    fn oversize_frames_and_bad_fields_are_errors() {
        let mut frame = BytesMut::new();
        GossipMessage::Publish(Arc::new(publication("p", 1, "t", &[0; 2000]))).encode(&mut frame);
        let mut decoder = GossipDecoder::new(1000);
        decoder.extend(&frame);
        assert!(matches!(decoder.next_message(), Err(GossipWireError::TooLarge { limit: 1000, .. })));

        assert_eq!(GossipMessage::decode(Bytes::from_static(&[9])), Err(WireError::UnknownType(9)));
        // A topic that is not UTF-8.
        assert!(GossipMessage::decode(Bytes::from_static(&[kind::SUBSCRIBE, 1, 2, 0xff, 0xfe])).is_err());
        // Trailing bytes after a subscription list.
        assert!(GossipMessage::decode(Bytes::from_static(&[kind::SUBSCRIBE, 0, 1])).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = GossipMessage::decode(Bytes::from(bytes.clone()));
            let mut decoder = GossipDecoder::new(512);
            decoder.extend(&bytes);
            while let Ok(Some(_)) = decoder.next_message() {}
        }
    }

    /// Subscribers hear of each other's topics when they connect and when they change.
    #[test]
    fn subscriptions_travel_on_connect_and_change() {
        let mut g = Gossip::<u32>::new(GossipConfig::default(), 1);
        assert!(g.subscribe("news").unwrap());
        assert!(!g.subscribe("news").unwrap());
        g.peer_connected(2);
        assert_eq!(frames_to(&g.take_actions()), vec![(2, GossipMessage::Subscribe(vec!["news".into()]))]);
        g.subscribe("chat").unwrap();
        g.unsubscribe("news");
        assert_eq!(
            frames_to(&g.take_actions()),
            vec![
                (2, GossipMessage::Subscribe(vec!["chat".into()])),
                (2, GossipMessage::Unsubscribe(vec!["news".into()]))
            ]
        );
        assert!(g.subscribe("").is_err());
        assert!(g.subscribe(&"x".repeat(300)).is_err());
    }

    #[test]
    fn publish_goes_to_subscribed_neighbours_only() {
        let mut g = Gossip::<u32>::new(GossipConfig::default(), 1);
        for peer in 2..6 {
            g.peer_connected(peer);
        }
        for peer in [2, 3] {
            g.handle_message(peer, GossipMessage::Subscribe(vec!["news".into()]), t(0), |_| Verdict::Accept);
        }
        g.take_actions();
        assert_eq!(g.publish(publication("me", 1, "news", b"x"), t(0)).unwrap(), 2);
        let mut to: Vec<u32> = frames_to(&g.take_actions()).into_iter().map(|(p, _)| p).collect();
        to.sort();
        assert_eq!(to, vec![2, 3]);
        let too_big = publication("me", 2, "news", &vec![0; 64 * 1024 + 1]);
        assert!(matches!(g.publish(too_big, t(0)), Err(GossipWireError::TooLarge { .. })));
    }

    #[test]
    fn received_messages_are_checked_once_delivered_and_forwarded() {
        let config = GossipConfig { forward_fanout: 2, ..GossipConfig::default() };
        let mut g = Gossip::<u32>::new(config, 1);
        g.subscribe("news").unwrap();
        for peer in 2..7 {
            g.peer_connected(peer);
            g.handle_message(peer, GossipMessage::Subscribe(vec!["news".into()]), t(0), |_| Verdict::Accept);
        }
        g.take_actions();
        let p = Arc::new(publication("origin", 1, "news", b"hi"));
        let mut checks = 0;
        let got = g.handle_message(2, GossipMessage::Publish(p.clone()), t(1), |_| {
            checks += 1;
            Verdict::Accept
        });
        assert_eq!(got, Some(Received::Delivered));
        let actions = g.take_actions();
        assert!(actions.contains(&GossipAction::Deliver { from: 2, publication: p.clone() }));
        let forwarded: Vec<u32> = frames_to(&actions).into_iter().map(|(peer, _)| peer).collect();
        assert_eq!(forwarded.len(), 2, "forwarded to fanout neighbours");
        assert!(!forwarded.contains(&2), "never back to the sender");
        // The same message from another neighbour: a duplicate, not checked again.
        let again = g.handle_message(3, GossipMessage::Publish(p), t(2), |_| {
            checks += 1;
            Verdict::Accept
        });
        assert_eq!(again, Some(Received::Duplicate));
        assert_eq!(checks, 1);
        assert!(g.take_actions().is_empty());
    }

    #[test]
    fn unsubscribed_topics_are_dropped_quietly() {
        let mut g = Gossip::<u32>::new(GossipConfig::default(), 1);
        g.peer_connected(2);
        let got =
            g.handle_message(2, GossipMessage::Publish(Arc::new(publication("o", 1, "other", b"x"))), t(0), |_| {
                panic!("not checked")
            });
        assert_eq!(got, Some(Received::NotSubscribed));
        assert!(g.take_actions().is_empty());
    }

    #[test]
    fn invalid_messages_earn_strikes_and_then_a_ban() {
        let mut g = Gossip::<u32>::new(GossipConfig::default(), 1);
        g.subscribe("news").unwrap();
        g.peer_connected(2);
        g.take_actions();
        for seqno in 0..3 {
            let p = Arc::new(publication("o", seqno, "news", b"bad"));
            let got =
                g.handle_message(2, GossipMessage::Publish(p.clone()), t(0), |_| Verdict::Reject("refused".into()));
            assert_eq!(got, Some(Received::Rejected(p, "refused".into())));
            let actions = g.take_actions();
            assert!(!actions.iter().any(|a| matches!(a, GossipAction::Deliver { .. } | GossipAction::Send(..))));
            assert_eq!(actions.iter().any(|a| matches!(a, GossipAction::Ban(2, _))), seqno == 2);
        }
        // Oversize counts as invalid, without calling the check.
        let mut g = Gossip::<u32>::new(GossipConfig { max_message_bytes: 4, ..GossipConfig::default() }, 1);
        g.subscribe("news").unwrap();
        g.peer_connected(2);
        let big = Arc::new(publication("o", 1, "news", b"12345"));
        let got = g.handle_message(2, GossipMessage::Publish(big.clone()), t(0), |_| panic!("not checked"));
        assert_eq!(got, Some(Received::Oversize(big)));
        // Ignored messages cost nothing.
        let got =
            g.handle_message(2, GossipMessage::Publish(Arc::new(publication("o", 2, "news", b"1"))), t(0), |_| {
                Verdict::Ignore
            });
        assert_eq!(got, Some(Received::Ignored));
    }

    #[test]
    fn subscribing_to_too_many_topics_is_a_violation() {
        let mut g = Gossip::<u32>::new(GossipConfig::default(), 1);
        g.peer_connected(2);
        for chunk in 0..2 {
            let topics = (0..40).map(|i| format!("t{chunk}-{i}")).collect();
            g.handle_message(2, GossipMessage::Subscribe(topics), t(0), |_| Verdict::Accept);
        }
        assert!(g.take_actions().iter().any(|a| matches!(a, GossipAction::Ban(2, _))));
    }

    #[test]
    fn seen_ids_expire_and_stay_bounded() {
        let config = GossipConfig { max_seen: 10, seen_ttl: Duration::from_secs(5), ..GossipConfig::default() };
        let mut g = Gossip::<u32>::new(config, 1);
        g.subscribe("news").unwrap();
        g.peer_connected(2);
        let p = Arc::new(publication("o", 1, "news", b"x"));
        assert_eq!(
            g.handle_message(2, GossipMessage::Publish(p.clone()), t(0), |_| Verdict::Accept),
            Some(Received::Delivered)
        );
        assert_eq!(
            g.handle_message(2, GossipMessage::Publish(p.clone()), t(3), |_| Verdict::Accept),
            Some(Received::Duplicate)
        );
        for seqno in 100..150 {
            let q = Arc::new(publication("o", seqno, "news", b"x"));
            g.handle_message(2, GossipMessage::Publish(q), t(4), |_| Verdict::Accept);
        }
        assert!(g.seen.len() <= 10 && g.seen_order.len() <= 10);
        // Long after, the first id is forgotten.
        assert_eq!(
            g.handle_message(2, GossipMessage::Publish(p), t(60), |_| Verdict::Accept),
            Some(Received::Delivered)
        );
    }

    #[test]
    fn signing_bytes_separate_fields() {
        assert_ne!(Publication::signing_bytes("ab", b"c", 1, b""), Publication::signing_bytes("a", b"bc", 1, b""));
        assert_ne!(publication("o", 1, "a", b"").id(), publication("o", 2, "a", b"").id());
        assert_eq!(publication("o", 1, "a", b"x").id(), publication("o", 1, "a", b"y").id());
    }
}
