//! Gossip: topic messages that reach every subscriber of a swarm, checked before anyone
//! delivers or forwards them.
//!
//! Peers tell each neighbour which topics they subscribe to as soon as a connection is up
//! (and on every change), so a message published a moment after subscribing is not lost
//! to a mesh still forming. A publication carries its origin, a sequence number and the
//! origin's signature; its id is the hash of origin and sequence number. Each peer:
//!
//! 1. drops ids it has seen (a bounded, time-limited cache), topics it does not
//!    subscribe to, publications stamped outside [`GossipConfig::max_age`] of its own
//!    clock (so a replay can never outlive the seen cache), and whatever a neighbour
//!    sends past its rate limit;
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
//! Sans-IO like the engine: frames and events in, [`GossipOutput`]s out through
//! [`Gossip::poll_output`].

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

pub use crate::codec::WireError;
use crate::{
    Instant,
    codec::{Frame, FrameDecoder, Reader, put_varint, varint_len},
    engine::TokenBucket,
};

/// libp2p protocol name of gossip streams.
pub const PROTOCOL_NAME: &str = "/shoal/gossip/2";
/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 256;
/// Most topics one peer may subscribe to (more is a protocol violation).
pub const MAX_TOPICS_PER_PEER: usize = 64;
const MAX_ORIGIN_LEN: usize = 64;
const MAX_SIGNATURE_LEN: usize = 128;
/// Frame bytes beyond the payload: topic, origin, sequence number, time, signature,
/// headers.
pub const FRAME_OVERHEAD: usize = MAX_TOPIC_LEN + MAX_ORIGIN_LEN + MAX_SIGNATURE_LEN + 48;

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
    /// When the origin published it, in milliseconds since the Unix epoch (its clock).
    pub timestamp_ms: u64,
    pub data: Bytes,
    pub signature: Bytes,
}

impl Publication {
    /// The bytes the origin signs: everything but the signature, unambiguously framed.
    pub fn signing_bytes(topic: &str, origin: &[u8], seqno: u64, timestamp_ms: u64, data: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(data.len() + topic.len() + origin.len() + 48);
        out.extend_from_slice(b"shoal-gossip-v2:");
        put_varint(&mut out, topic.len() as u64);
        out.extend_from_slice(topic.as_bytes());
        put_varint(&mut out, origin.len() as u64);
        out.extend_from_slice(origin);
        put_varint(&mut out, seqno);
        put_varint(&mut out, timestamp_ms);
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

/// Why a publication could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishError {
    #[error("message of {len} bytes exceeds the {limit} byte limit (gossipMaxBytes)")]
    TooLarge { len: usize, limit: usize },
    #[error("topic must be 1 to {MAX_TOPIC_LEN} bytes")]
    BadTopic,
    #[error("already subscribed to {MAX_TOPICS_PER_PEER} topics")]
    TooManyTopics,
}

fn topic_list_len(topics: &[String]) -> usize {
    varint_len(topics.len() as u64) + topics.iter().map(|t| varint_len(t.len() as u64) + t.len()).sum::<usize>()
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn read_topic(reader: &mut Reader) -> Result<String, WireError> {
    let bytes = reader.bytes(MAX_TOPIC_LEN, "topic too long")?;
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Invalid("topic is not UTF-8"))
}

impl Frame for GossipMessage {
    /// The default limit; a page's own is `gossipMaxBytes` + [`FRAME_OVERHEAD`].
    const MAX_BODY: usize = 64 * 1024 + FRAME_OVERHEAD;

    fn body_len(&self) -> usize {
        1 + match self {
            Self::Subscribe(topics) | Self::Unsubscribe(topics) => topic_list_len(topics),
            Self::Publish(p) => {
                varint_len(p.topic.len() as u64)
                    + p.topic.len()
                    + varint_len(p.origin.len() as u64)
                    + p.origin.len()
                    + varint_len(p.seqno)
                    + varint_len(p.timestamp_ms)
                    + varint_len(p.signature.len() as u64)
                    + p.signature.len()
                    + p.data.len()
            }
        }
    }

    fn encode_body(&self, body: &mut BytesMut) {
        match self {
            Self::Subscribe(topics) | Self::Unsubscribe(topics) => {
                body.extend_from_slice(&[if matches!(self, Self::Subscribe(_)) {
                    kind::SUBSCRIBE
                } else {
                    kind::UNSUBSCRIBE
                }]);
                put_varint(body, topics.len() as u64);
                for topic in topics {
                    put_bytes(body, topic.as_bytes());
                }
            }
            Self::Publish(p) => {
                body.extend_from_slice(&[kind::PUBLISH]);
                put_bytes(body, p.topic.as_bytes());
                put_bytes(body, &p.origin);
                put_varint(body, p.seqno);
                put_varint(body, p.timestamp_ms);
                put_bytes(body, &p.signature);
                body.extend_from_slice(&p.data);
            }
        }
    }

    fn decode_body(body: Bytes) -> Result<Self, WireError> {
        let mut reader = Reader::new(body);
        let kind = reader.byte().map_err(|_| WireError::Empty)?;
        match kind {
            kind::SUBSCRIBE | kind::UNSUBSCRIBE => {
                let count = reader.length(MAX_TOPICS_PER_PEER, "too many topics")?;
                let topics = (0..count).map(|_| read_topic(&mut reader)).collect::<Result<Vec<_>, _>>()?;
                reader.finish()?;
                Ok(if kind == kind::SUBSCRIBE { Self::Subscribe(topics) } else { Self::Unsubscribe(topics) })
            }
            kind::PUBLISH => {
                let topic = read_topic(&mut reader)?;
                let origin = reader.bytes(MAX_ORIGIN_LEN, "origin too long")?;
                let seqno = reader.varint()?;
                let timestamp_ms = reader.varint()?;
                let signature = reader.bytes(MAX_SIGNATURE_LEN, "signature too long")?;
                // The payload is the rest of the frame.
                let data = reader.rest();
                Ok(Self::Publish(Arc::new(Publication { topic, origin, seqno, timestamp_ms, data, signature })))
            }
            other => Err(WireError::UnknownType(other)),
        }
    }
}

/// Decodes gossip frames from a stream.
pub type GossipDecoder = FrameDecoder<GossipMessage>;

/// Settings of [`Gossip`].
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Largest payload accepted or published.
    pub max_message_bytes: usize,
    /// Subscribed neighbours a received message is forwarded to (the origin sends to all).
    pub forward_fanout: usize,
    /// Publications stamped further than this from our clock, either way, are dropped.
    /// Message ids are remembered for twice as long, so a replay of anything still
    /// within its age is always recognised. Also bounds the clock skew between pages.
    pub max_age: Duration,
    /// Most ids remembered; past it the oldest go. Sized for sustained traffic at the
    /// rate limit from every neighbour, so flushing it takes more than a few peers.
    pub max_seen: usize,
    /// Invalid messages from one neighbour before it is cut off.
    pub max_strikes: u32,
    /// Publications a neighbour may send us per second (and bursts of 4× that); more
    /// are dropped unforwarded, without a strike (a busy honest relay is not an enemy).
    pub max_rate_per_neighbour: u32,
    /// Payload bytes a neighbour may send us per second (bursts of 4× that).
    pub max_bytes_per_neighbour: u64,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            forward_fanout: 6,
            max_age: Duration::from_secs(300),
            max_seen: 100_000,
            max_strikes: 3,
            max_rate_per_neighbour: 50,
            max_bytes_per_neighbour: 1024 * 1024,
        }
    }
}

/// What the driver must do. Each variant says when it is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipOutput<P> {
    /// Write this frame to the neighbour: our subscriptions when a link comes up or they
    /// change, our publications, and valid ones we forward.
    Send(P, Bytes),
    /// Hand a checked publication to the page (received from neighbour `from`).
    Deliver { from: P, publication: Arc<Publication> },
    /// Cut the neighbour off: repeated invalid messages or a protocol violation.
    Disconnect(P, String),
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
    /// Past the neighbour's rate limit: dropped unchecked.
    RateLimited,
    /// Stamped too far from our clock (a replay, or a badly wrong clock).
    Expired,
}

#[derive(Debug)]
struct Neighbour {
    topics: BTreeSet<String>,
    strikes: u32,
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl Neighbour {
    fn new(config: &GossipConfig, now: Instant) -> Self {
        let rate = u64::from(config.max_rate_per_neighbour.max(1));
        Self {
            topics: BTreeSet::new(),
            strikes: 0,
            messages: TokenBucket::new(rate, rate * 4, now),
            bytes: TokenBucket::new(config.max_bytes_per_neighbour, config.max_bytes_per_neighbour * 4, now),
        }
    }
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
    outputs: VecDeque<GossipOutput<P>>,
    /// Wall-clock milliseconds at `Instant::ZERO`.
    clock_offset_ms: u64,
}

impl<P: Clone + Eq + Hash + Ord> Gossip<P> {
    /// `clock_offset_ms`: the wall clock (ms since the Unix epoch) at `Instant::ZERO`, so
    /// that publication stamps can be compared with the driver's time.
    pub fn new(config: GossipConfig, seed: u64, clock_offset_ms: u64) -> Self {
        Self {
            config,
            topics: BTreeSet::new(),
            neighbours: HashMap::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            outputs: VecDeque::new(),
            clock_offset_ms,
        }
    }

    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Wall-clock milliseconds at `now`: what a publication made now is stamped with.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        self.clock_offset_ms.saturating_add(now.as_micros() / 1000)
    }

    /// The next thing to do; `None` once everything from the last input is out.
    pub fn poll_output(&mut self) -> Option<GossipOutput<P>> {
        self.outputs.pop_front()
    }

    /// Gossip needs no timer: expiry is checked as messages arrive.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.topics.contains(topic)
    }

    /// Neighbours known to subscribe to `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.neighbours.values().filter(|n| n.topics.contains(topic)).count()
    }

    fn send(&mut self, peer: P, message: &GossipMessage) {
        self.outputs.push_back(GossipOutput::Send(peer, message.to_frame()));
    }

    /// A connection (or a new stream) to `peer` is up: tell it what we subscribe to.
    /// What we know of the peer's own subscriptions is kept until it disconnects.
    pub fn peer_connected(&mut self, peer: P, now: Instant) {
        if !self.neighbours.contains_key(&peer) {
            self.neighbours.insert(peer.clone(), Neighbour::new(&self.config, now));
        }
        if !self.topics.is_empty() {
            let topics = self.topics.iter().cloned().collect();
            self.send(peer, &GossipMessage::Subscribe(topics));
        }
    }

    pub fn peer_disconnected(&mut self, peer: &P) {
        self.neighbours.remove(peer);
    }

    /// Subscribes; returns false if already subscribed.
    pub fn subscribe(&mut self, topic: &str) -> Result<bool, PublishError> {
        if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
            return Err(PublishError::BadTopic);
        }
        if self.topics.contains(topic) {
            return Ok(false);
        }
        if self.topics.len() >= MAX_TOPICS_PER_PEER {
            return Err(PublishError::TooManyTopics);
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

    /// Remembers `id`; false if it was already known. Ids live twice the maximum age.
    fn remember(&mut self, id: MessageId, now: Instant) -> bool {
        let ttl = self.config.max_age * 2;
        while let Some(&(old, at)) = self.seen_order.front() {
            let expired = now.saturating_since(at) > ttl;
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
    pub fn publish(&mut self, publication: Publication, now: Instant) -> Result<usize, PublishError> {
        if publication.data.len() > self.config.max_message_bytes {
            return Err(PublishError::TooLarge { len: publication.data.len(), limit: self.config.max_message_bytes });
        }
        if publication.topic.is_empty() || publication.topic.len() > MAX_TOPIC_LEN {
            return Err(PublishError::BadTopic);
        }
        self.remember(publication.id(), now);
        let topic = publication.topic.clone();
        let message = GossipMessage::Publish(Arc::new(publication));
        let targets: Vec<P> =
            self.neighbours.iter().filter(|(_, n)| n.topics.contains(&topic)).map(|(k, _)| k.clone()).collect();
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
        if !self.neighbours.contains_key(&from) {
            self.neighbours.insert(from.clone(), Neighbour::new(&self.config, now));
        }
        let neighbour = self.neighbours.get_mut(&from)?;
        match message {
            GossipMessage::Subscribe(topics) => {
                neighbour.topics.extend(topics);
                if neighbour.topics.len() > MAX_TOPICS_PER_PEER {
                    self.neighbours.remove(&from);
                    self.outputs.push_back(GossipOutput::Disconnect(
                        from,
                        format!("subscribed to over {MAX_TOPICS_PER_PEER} topics"),
                    ));
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
        let Some(neighbour) = self.neighbours.get_mut(&from) else { return Received::Ignored };
        if !neighbour.messages.try_take(1, now) || !neighbour.bytes.try_take(publication.data.len() as u64, now) {
            return Received::RateLimited;
        }
        let wall = self.wall_ms(now);
        let max_age = self.config.max_age.as_millis() as u64;
        if publication.timestamp_ms.abs_diff(wall) > max_age {
            return Received::Expired;
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
                self.outputs.push_back(GossipOutput::Deliver { from, publication });
                Received::Delivered
            }
            Verdict::Ignore => Received::Ignored,
            Verdict::Reject(reason) => {
                let oversize = publication.data.len() > self.config.max_message_bytes;
                if let Some(neighbour) = self.neighbours.get_mut(&from) {
                    neighbour.strikes += 1;
                    if neighbour.strikes >= self.config.max_strikes {
                        self.neighbours.remove(&from);
                        self.outputs
                            .push_back(GossipOutput::Disconnect(from, format!("repeated invalid gossip: {reason}")));
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

    /// The wall clock at `Instant::ZERO` in these tests.
    const EPOCH_MS: u64 = 1_700_000_000_000;

    fn gossip(config: GossipConfig) -> Gossip<u32> {
        Gossip::new(config, 1, EPOCH_MS)
    }

    fn publication(origin: &str, seqno: u64, topic: &str, data: &[u8]) -> Publication {
        stamped(origin, seqno, topic, data, 0)
    }

    fn stamped(origin: &str, seqno: u64, topic: &str, data: &[u8], at_secs: u64) -> Publication {
        Publication {
            topic: topic.into(),
            origin: Bytes::copy_from_slice(origin.as_bytes()),
            seqno,
            timestamp_ms: EPOCH_MS + at_secs * 1000,
            data: Bytes::copy_from_slice(data),
            signature: Bytes::from_static(&[7; 64]),
        }
    }

    fn outputs(g: &mut Gossip<u32>) -> Vec<GossipOutput<u32>> {
        std::iter::from_fn(|| g.poll_output()).collect()
    }

    fn frames_to(actions: &[GossipOutput<u32>]) -> Vec<(u32, GossipMessage)> {
        actions
            .iter()
            .filter_map(|a| match a {
                GossipOutput::Send(peer, frame) => {
                    let mut decoder = GossipDecoder::with_limit(1 << 20);
                    decoder.extend(frame);
                    Some((*peer, decoder.next_frame().unwrap().unwrap()))
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
            let mut decoder = GossipDecoder::with_limit(1024);
            // Split anywhere: streams cut frames arbitrarily.
            let (a, b) = frame.split_at(frame.len() / 2);
            decoder.extend(a);
            if frame.len() > 2 {
                assert_eq!(decoder.next_frame().unwrap(), None);
            }
            decoder.extend(b);
            assert_eq!(decoder.next_frame().unwrap(), Some(message));
        }
    }

    #[test]
    fn oversize_frames_and_bad_fields_are_errors() {
        let mut frame = BytesMut::new();
        GossipMessage::Publish(Arc::new(publication("p", 1, "t", &[0; 2000]))).encode(&mut frame);
        let mut decoder = GossipDecoder::with_limit(1000);
        decoder.extend(&frame);
        assert!(matches!(decoder.next_frame(), Err(WireError::TooLarge { limit: 1000, .. })));

        assert_eq!(GossipMessage::decode_body(Bytes::from_static(&[9])), Err(WireError::UnknownType(9)));
        // A topic that is not UTF-8.
        assert!(GossipMessage::decode_body(Bytes::from_static(&[kind::SUBSCRIBE, 1, 2, 0xff, 0xfe])).is_err());
        // Trailing bytes after a subscription list.
        assert!(GossipMessage::decode_body(Bytes::from_static(&[kind::SUBSCRIBE, 0, 1])).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = GossipMessage::decode_body(Bytes::from(bytes.clone()));
            let mut decoder = GossipDecoder::with_limit(512);
            decoder.extend(&bytes);
            while let Ok(Some(_)) = decoder.next_frame() {}
        }
    }

    /// Subscribers hear of each other's topics when they connect and when they change.
    #[test]
    fn subscriptions_travel_on_connect_and_change() {
        let mut g = gossip(GossipConfig::default());
        assert!(g.subscribe("news").unwrap());
        assert!(!g.subscribe("news").unwrap());
        g.peer_connected(2, t(0));
        assert_eq!(frames_to(&outputs(&mut g)), vec![(2, GossipMessage::Subscribe(vec!["news".into()]))]);
        g.subscribe("chat").unwrap();
        g.unsubscribe("news");
        assert_eq!(
            frames_to(&outputs(&mut g)),
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
        let mut g = gossip(GossipConfig::default());
        for peer in 2..6 {
            g.peer_connected(peer, t(0));
        }
        for peer in [2, 3] {
            g.handle_message(peer, GossipMessage::Subscribe(vec!["news".into()]), t(0), |_| Verdict::Accept);
        }
        outputs(&mut g);
        assert_eq!(g.publish(publication("me", 1, "news", b"x"), t(0)).unwrap(), 2);
        let mut to: Vec<u32> = frames_to(&outputs(&mut g)).into_iter().map(|(p, _)| p).collect();
        to.sort();
        assert_eq!(to, vec![2, 3]);
        let too_big = publication("me", 2, "news", &vec![0; 64 * 1024 + 1]);
        assert!(matches!(g.publish(too_big, t(0)), Err(PublishError::TooLarge { .. })));
    }

    #[test]
    fn received_messages_are_checked_once_delivered_and_forwarded() {
        let config = GossipConfig { forward_fanout: 2, ..GossipConfig::default() };
        let mut g = gossip(config);
        g.subscribe("news").unwrap();
        for peer in 2..7 {
            g.peer_connected(peer, t(0));
            g.handle_message(peer, GossipMessage::Subscribe(vec!["news".into()]), t(0), |_| Verdict::Accept);
        }
        outputs(&mut g);
        let p = Arc::new(publication("origin", 1, "news", b"hi"));
        let mut checks = 0;
        let got = g.handle_message(2, GossipMessage::Publish(p.clone()), t(1), |_| {
            checks += 1;
            Verdict::Accept
        });
        assert_eq!(got, Some(Received::Delivered));
        let actions = outputs(&mut g);
        assert!(actions.contains(&GossipOutput::Deliver { from: 2, publication: p.clone() }));
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
        assert!(outputs(&mut g).is_empty());
    }

    #[test]
    fn unsubscribed_topics_are_dropped_quietly() {
        let mut g = gossip(GossipConfig::default());
        g.peer_connected(2, t(0));
        let got =
            g.handle_message(2, GossipMessage::Publish(Arc::new(publication("o", 1, "other", b"x"))), t(0), |_| {
                panic!("not checked")
            });
        assert_eq!(got, Some(Received::NotSubscribed));
        assert!(outputs(&mut g).is_empty());
    }

    #[test]
    fn invalid_messages_earn_strikes_and_then_a_ban() {
        let mut g = gossip(GossipConfig::default());
        g.subscribe("news").unwrap();
        g.peer_connected(2, t(0));
        outputs(&mut g);
        for seqno in 0..3 {
            let p = Arc::new(publication("o", seqno, "news", b"bad"));
            let got =
                g.handle_message(2, GossipMessage::Publish(p.clone()), t(0), |_| Verdict::Reject("refused".into()));
            assert_eq!(got, Some(Received::Rejected(p, "refused".into())));
            let actions = outputs(&mut g);
            assert!(!actions.iter().any(|a| matches!(a, GossipOutput::Deliver { .. } | GossipOutput::Send(..))));
            assert_eq!(actions.iter().any(|a| matches!(a, GossipOutput::Disconnect(2, _))), seqno == 2);
        }
        // Oversize counts as invalid, without calling the check.
        let mut g = gossip(GossipConfig { max_message_bytes: 4, ..GossipConfig::default() });
        g.subscribe("news").unwrap();
        g.peer_connected(2, t(0));
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
        let mut g = gossip(GossipConfig::default());
        g.peer_connected(2, t(0));
        for chunk in 0..2 {
            let topics = (0..40).map(|i| format!("t{chunk}-{i}")).collect();
            g.handle_message(2, GossipMessage::Subscribe(topics), t(0), |_| Verdict::Accept);
        }
        assert!(outputs(&mut g).iter().any(|a| matches!(a, GossipOutput::Disconnect(2, _))));
    }

    #[test]
    fn seen_ids_stay_bounded_and_replays_expire() {
        let config = GossipConfig {
            max_seen: 10,
            max_age: Duration::from_secs(5),
            max_rate_per_neighbour: 1000,
            ..GossipConfig::default()
        };
        let mut g = gossip(config);
        g.subscribe("news").unwrap();
        g.peer_connected(2, t(0));
        let p = Arc::new(publication("o", 1, "news", b"x"));
        assert_eq!(
            g.handle_message(2, GossipMessage::Publish(p.clone()), t(0), |_| Verdict::Accept),
            Some(Received::Delivered)
        );
        assert_eq!(
            g.handle_message(2, GossipMessage::Publish(p.clone()), t(3), |_| Verdict::Accept),
            Some(Received::Duplicate)
        );
        // Flush the seen cache with fresh messages...
        for seqno in 100..150 {
            let q = Arc::new(stamped("o", seqno, "news", b"x", 4));
            g.handle_message(2, GossipMessage::Publish(q), t(4), |_| Verdict::Accept);
        }
        assert!(g.seen.len() <= 10 && g.seen_order.len() <= 10);
        // ...and the replay of the first one is still refused: it is too old by now.
        assert_eq!(
            g.handle_message(2, GossipMessage::Publish(p), t(60), |_| panic!("not checked")),
            Some(Received::Expired)
        );
        // From too far in the future, too.
        let future = Arc::new(stamped("o", 2, "news", b"x", 100));
        assert_eq!(g.handle_message(2, GossipMessage::Publish(future), t(60), |_| panic!()), Some(Received::Expired));
    }

    #[test]
    fn a_flooding_neighbour_is_rate_limited_without_strikes() {
        let config = GossipConfig { max_rate_per_neighbour: 10, ..GossipConfig::default() };
        let mut g = gossip(config);
        g.subscribe("news").unwrap();
        g.peer_connected(2, t(0));
        let mut delivered = 0;
        let mut limited = 0;
        for seqno in 0..100 {
            let q = Arc::new(publication("o", seqno, "news", b"x"));
            match g.handle_message(2, GossipMessage::Publish(q), t(0), |_| Verdict::Accept) {
                Some(Received::Delivered) => delivered += 1,
                Some(Received::RateLimited) => limited += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delivered, 40, "a burst of 4 seconds' worth");
        assert_eq!(limited, 60);
        assert!(!outputs(&mut g).iter().any(|o| matches!(o, GossipOutput::Disconnect(..))));
        // A second later, ten more.
        let got = (100..120)
            .filter(|seqno| {
                let q = Arc::new(stamped("o", *seqno, "news", b"x", 1));
                g.handle_message(2, GossipMessage::Publish(q), t(1), |_| Verdict::Accept) == Some(Received::Delivered)
            })
            .count();
        assert_eq!(got, 10);
    }

    #[test]
    fn signing_bytes_separate_fields() {
        assert_ne!(
            Publication::signing_bytes("ab", b"c", 1, 0, b""),
            Publication::signing_bytes("a", b"bc", 1, 0, b"")
        );
        assert_ne!(Publication::signing_bytes("a", b"c", 1, 0, b""), Publication::signing_bytes("a", b"c", 1, 1, b""));
        assert_ne!(publication("o", 1, "a", b"").id(), publication("o", 2, "a", b"").id());
        assert_eq!(publication("o", 1, "a", b"x").id(), publication("o", 1, "a", b"y").id());
    }
}
