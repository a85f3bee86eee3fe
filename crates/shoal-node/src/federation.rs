//! Federation: several nodes that act as one network.
//!
//! Nodes talk to each other on a swarm of their own, apart from the browsers': TCP with
//! a pre-shared key (libp2p `pnet`: only nodes given `--federation-key` get in), Noise,
//! yamux, and gossipsub on one topic. Each node publishes what changes in its own
//! membership (who joined and left which swarm) and a heartbeat with its browser
//! addresses and load; on seeing a new node subscribe it publishes its whole membership
//! again, so a node that starts late (or reconnects) catches up. Every node keeps the
//! others' members beside its own (`membership::Registry`) and hands them out in join
//! answers with circuit addresses through their own node: a page on node A dials a page
//! on node B through B's relay.
//!
//! A node that stops publishing is forgotten after [`NODE_EXPIRY`], and at once when its
//! direct connection closes, so pages are not sent to members of a dead node for long.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, Transport,
    core::{muxing::StreamMuxerBox, upgrade::Version},
    gossipsub,
    identity::Keypair,
    multiaddr::Protocol,
    noise,
    pnet::{PnetConfig, PreSharedKey},
    swarm::{ConnectionId, NetworkBehaviour, SwarmEvent, dial_opts::DialOpts},
    tcp, yamux,
};
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// The gossipsub topic nodes publish membership on.
const TOPIC: &str = "/shoal/federation/1";
/// How often a node says it is alive (with its addresses and load) when nothing changed.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long is forgotten, with its members.
pub const NODE_EXPIRY: Duration = Duration::from_secs(7);
/// Changes are batched for this long before they are published.
const BATCH: Duration = Duration::from_millis(100);
/// Membership entries per message, by their largest JSON size: half the largest message,
/// so addresses and escapes always fit.
const CHUNK_BYTES: usize = MAX_MESSAGE / 2;
/// Largest federation message.
const MAX_MESSAGE: usize = 1024 * 1024;
/// Every node publishes its whole membership this often, whatever happened: a message
/// lost (a full queue, a link down for a moment) is repaired within it.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);
/// How often unconnected `--federate` addresses are dialled again.
const REDIAL: Duration = Duration::from_secs(2);

/// One message of a node to the others.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    /// Wall-clock time of sending, Unix milliseconds (for the lag metric).
    pub sent_at_ms: u64,
    /// The sender's browser-dialable addresses, each ending in `/p2p/<node>`.
    pub addrs: Vec<String>,
    /// Peers connected to the sender (its load).
    pub peers: u64,
    /// The sender is shutting down: pages should not be sent to it.
    #[serde(default)]
    pub draining: bool,
    /// Forget every member of the sender first: a full snapshot starts.
    #[serde(default)]
    pub reset: bool,
    /// (swarm, peer) pairs that joined the sender.
    #[serde(default)]
    pub joined: Vec<(String, String)>,
    /// (swarm, peer) pairs that left it.
    #[serde(default)]
    pub left: Vec<(String, String)>,
}

/// What the federation tells the node.
#[derive(Debug)]
pub enum Event {
    /// A node published an update.
    Update { node: PeerId, update: Update, lag: Option<Duration> },
    /// A node's direct connection closed: forget its members now.
    NodeGone(PeerId),
    /// A node subscribed: publish the whole membership again.
    SnapshotWanted,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
}

/// The federation side of a node. See the module docs.
pub struct Federation {
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    /// `--federate` addresses, dialled until connected.
    seeds: Vec<Multiaddr>,
    connected: HashSet<PeerId>,
    /// When each node was last heard from.
    heard: HashMap<PeerId, Instant>,
    /// Our dials of seeds (by index), and the node each seed turned out to be.
    seed_dials: HashMap<ConnectionId, usize>,
    seed_peers: HashMap<usize, PeerId>,
    failing_seeds: HashSet<usize>,
    next_redial: Instant,
    pending: Pending,
    last_publish: Option<Instant>,
    last_snapshot: Option<Instant>,
}

/// (swarm, peer) pairs, as they travel in an [`Update`].
type Entries = Vec<(String, String)>;

/// Membership changes not yet published.
#[derive(Debug, Default)]
struct Pending {
    joined: Entries,
    left: Entries,
    since: Option<Instant>,
}

impl Pending {
    /// Receivers apply a batch's leaves before its joins, so a pair is in one list only:
    /// the later change wins (a join then a leave in one batch must not come out as a
    /// member that never leaves).
    fn joined(&mut self, swarm: &str, peer: &PeerId) {
        let entry = (swarm.to_owned(), peer.to_string());
        self.left.retain(|e| *e != entry);
        self.joined.push(entry);
        self.since.get_or_insert_with(Instant::now);
    }

    fn left(&mut self, swarm: &str, peer: &PeerId) {
        let entry = (swarm.to_owned(), peer.to_string());
        self.joined.retain(|e| *e != entry);
        self.left.push(entry);
        self.since.get_or_insert_with(Instant::now);
    }

    fn take(&mut self) -> (Entries, Entries) {
        self.since = None;
        (std::mem::take(&mut self.joined), std::mem::take(&mut self.left))
    }
}

/// What this node tells the others about itself with every message.
pub struct Status<'a> {
    /// Browser-dialable addresses, each ending in `/p2p/<node>`.
    pub addrs: &'a [Multiaddr],
    /// Peers connected (the load).
    pub peers: u64,
    pub draining: bool,
}

impl Federation {
    /// Starts listening on `listen` and dialling `seeds`.
    pub fn new(
        keypair: &Keypair,
        key: &str,
        listen: std::net::SocketAddr,
        seeds: Vec<Multiaddr>,
    ) -> Result<Self, NodeError> {
        let psk: PreSharedKey = parse_key(key).map_err(NodeError::Config)?;
        let noise = noise::Config::new(keypair).map_err(|e| NodeError::Transport(e.to_string()))?;
        // `/dns4/...` seeds resolve through the system resolver.
        let tcp =
            libp2p::dns::tokio::Transport::system(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)))
                .map_err(|e| NodeError::Transport(format!("DNS resolver: {e}")))?;
        let transport = tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
            .boxed();
        let config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_millis(500))
            .max_transmit_size(MAX_MESSAGE)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .build()
            .map_err(|e| NodeError::Config(format!("gossipsub: {e}")))?;
        let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(keypair.clone()), config)
            .map_err(|e| NodeError::Config(format!("gossipsub: {e}")))?;
        let topic = gossipsub::IdentTopic::new(TOPIC);
        gossipsub.subscribe(&topic).map_err(|e| NodeError::Config(format!("gossipsub: {e}")))?;
        let mut swarm = Swarm::new(
            transport,
            Behaviour { gossipsub },
            keypair.public().to_peer_id(),
            // Federation links carry a heartbeat every few seconds; never idle them out.
            libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::from_secs(3600)),
        );
        let addr = Multiaddr::from(listen.ip()).with(Protocol::Tcp(listen.port()));
        swarm.listen_on(addr.clone()).map_err(|e| NodeError::Listen { addr, reason: crate::error_chain(&e) })?;
        Ok(Self {
            swarm,
            topic,
            seeds,
            connected: HashSet::new(),
            heard: HashMap::new(),
            seed_dials: HashMap::new(),
            seed_peers: HashMap::new(),
            failing_seeds: HashSet::new(),
            next_redial: Instant::now(),
            pending: Pending::default(),
            last_publish: None,
            last_snapshot: None,
        })
    }

    /// Nodes connected directly.
    pub fn peers(&self) -> usize {
        self.connected.len()
    }

    pub fn joined(&mut self, swarm: &str, peer: &PeerId) {
        self.pending.joined(swarm, peer);
    }

    pub fn left(&mut self, swarm: &str, peer: &PeerId) {
        self.pending.left(swarm, peer);
    }

    /// Publishes the batched changes (or a heartbeat) when due, and dials seeds.
    /// Call every tick. Returns the nodes not heard from for [`NODE_EXPIRY`], and
    /// whether the periodic full snapshot is due (call [`Self::publish_snapshot`]).
    pub fn tick(&mut self, now: Instant, status: &Status<'_>) -> (Vec<PeerId>, bool) {
        let expired: Vec<PeerId> = self
            .heard
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= NODE_EXPIRY)
            .map(|(p, _)| *p)
            .collect();
        for node in &expired {
            tracing::info!(%node, "no word from a node: forgetting its members");
            self.heard.remove(node);
        }
        if now >= self.next_redial {
            self.next_redial = now + REDIAL;
            for (index, seed) in self.seeds.iter().enumerate() {
                let reached = self.seed_peers.get(&index).is_some_and(|p| self.connected.contains(p));
                if reached || self.seed_dials.values().any(|&i| i == index) {
                    continue;
                }
                let opts = DialOpts::unknown_peer_id().address(seed.clone()).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.seed_dials.insert(id, index);
                    }
                    Err(e) => tracing::debug!(%seed, error = %e, "federation dial refused"),
                }
            }
        }
        let snapshot_due = self.last_snapshot.is_none_or(|t| now.saturating_duration_since(t) >= SNAPSHOT_EVERY);
        let batch_due = self.pending.since.is_some_and(|t| now.saturating_duration_since(t) >= BATCH);
        let heartbeat_due = self.last_publish.is_none_or(|t| now.saturating_duration_since(t) >= HEARTBEAT);
        if (batch_due || heartbeat_due) && !snapshot_due {
            let (joined, left) = self.pending.take();
            self.publish_chunks(status, false, joined, left);
        }
        (expired, snapshot_due)
    }

    /// Publishes every local membership, the receivers forgetting ours first.
    pub fn publish_snapshot(&mut self, status: &Status<'_>, members: Vec<(String, String)>) {
        // Changes batched so far are in the snapshot.
        self.pending.take();
        self.last_snapshot = Some(Instant::now());
        self.publish_chunks(status, true, members, Vec::new());
    }

    fn publish_chunks(
        &mut self,
        status: &Status<'_>,
        reset: bool,
        mut joined: Vec<(String, String)>,
        mut left: Vec<(String, String)>,
    ) {
        let addrs: Vec<String> = status.addrs.iter().map(Multiaddr::to_string).collect();
        let mut first = true;
        loop {
            let take_joined = chunk_len(&joined, CHUNK_BYTES);
            let take_left = chunk_len(&left, CHUNK_BYTES.saturating_sub(encoded_len(&joined[..take_joined])));
            let update = Update {
                sent_at_ms: unix_ms(),
                addrs: addrs.clone(),
                peers: status.peers,
                draining: status.draining,
                reset: reset && first,
                joined: joined.drain(..take_joined).collect(),
                left: left.drain(..take_left).collect(),
            };
            first = false;
            match serde_json::to_vec(&update) {
                Ok(bytes) => match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
                    Ok(_) => {}
                    // Alone for now: the snapshot on subscription will carry it.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                    Err(e) => tracing::warn!(error = %e, "federation publish failed"),
                },
                Err(e) => tracing::warn!(error = %e, "federation message not encodable"),
            }
            if joined.is_empty() && left.is_empty() {
                break;
            }
        }
        self.last_publish = Some(Instant::now());
    }

    /// The next event worth the node's attention.
    pub async fn next(&mut self) -> Event {
        loop {
            match self.swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "federation listening");
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, connection_id, .. } => {
                    tracing::info!(node = %peer_id, addr = %endpoint.get_remote_address(), "federated with a node");
                    self.connected.insert(peer_id);
                    if let Some(index) = self.seed_dials.remove(&connection_id) {
                        self.seed_peers.insert(index, peer_id);
                        self.failing_seeds.remove(&index);
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                    tracing::info!(node = %peer_id, cause = ?cause, "federation link closed");
                    self.connected.remove(&peer_id);
                    self.heard.remove(&peer_id);
                    return Event::NodeGone(peer_id);
                }
                SwarmEvent::OutgoingConnectionError { error, connection_id, .. } => {
                    if let Some(index) = self.seed_dials.remove(&connection_id) {
                        // Said once per seed until it connects, then retried quietly.
                        if self.failing_seeds.insert(index) {
                            tracing::warn!(seed = %self.seeds[index], error = %crate::error_chain(&error), "cannot reach a federation seed; retrying every 2 s");
                        }
                    }
                }
                SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                    // Most likely a wrong --federation-key.
                    tracing::warn!(%send_back_addr, error = %crate::error_chain(&error), "federation connection refused");
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. })) => {
                    tracing::debug!(node = %peer_id, "node subscribed");
                    return Event::SnapshotWanted;
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                    let Some(node) = message.source else { continue };
                    match serde_json::from_slice::<Update>(&message.data) {
                        Ok(update) => {
                            self.heard.insert(node, Instant::now());
                            let lag = unix_ms().checked_sub(update.sent_at_ms).map(Duration::from_millis);
                            return Event::Update { node, update, lag };
                        }
                        Err(e) => tracing::warn!(%node, error = %e, "unreadable federation message"),
                    }
                }
                _ => {}
            }
        }
    }
}

/// The largest JSON size of `entries`: every byte of a swarm id may be escaped (`\u00XX`).
fn encoded_len(entries: &[(String, String)]) -> usize {
    entries.iter().map(|(swarm, peer)| swarm.len() * 6 + peer.len() + 8).sum()
}

/// How many of `entries` fit in `budget` bytes (at least one, so a chunk always moves).
fn chunk_len(entries: &[(String, String)], budget: usize) -> usize {
    let mut used = 0;
    for (i, entry) in entries.iter().enumerate() {
        used += encoded_len(std::slice::from_ref(entry));
        if used > budget {
            return i.max(usize::from(budget > 0 && i == 0));
        }
    }
    entries.len()
}

/// A 32-byte key as 64 hex digits (or a libp2p `swarm.key` file's text).
fn parse_key(key: &str) -> Result<PreSharedKey, String> {
    let key = key.trim();
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&key[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        return Ok(PreSharedKey::new(bytes));
    }
    key.parse().map_err(|e| format!("--federation-key is neither 64 hex digits nor a libp2p swarm.key: {e}"))
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_or_say_why() {
        assert!(parse_key(&"ab".repeat(32)).is_ok());
        assert!(parse_key("short").unwrap_err().contains("64 hex digits"));
        assert!(parse_key(&"zz".repeat(32)).is_err());
    }

    /// A join and a leave of one pair in one batch leave one entry, the later.
    #[test]
    fn a_batch_holds_the_last_change_of_each_pair() {
        let mut pending = Pending::default();
        let peer = PeerId::random();
        pending.joined("s", &peer);
        pending.left("s", &peer);
        assert!(pending.joined.is_empty());
        assert_eq!(pending.left, vec![("s".to_owned(), peer.to_string())]);
        pending.joined("s", &peer);
        assert!(pending.left.is_empty());
        assert_eq!(pending.joined.len(), 1);
    }

    /// Chunks stay under the message cap even for the longest, most escaped swarm ids.
    #[test]
    fn chunks_fit_the_message_cap() {
        let worst = "\u{1}".repeat(shoal_proto::MAX_SWARM_ID_LEN);
        let entries: Vec<(String, String)> =
            (0..3_000).map(|_| (worst.clone(), PeerId::random().to_string())).collect();
        let mut rest = &entries[..];
        let mut chunks = 0;
        while !rest.is_empty() {
            let n = chunk_len(rest, CHUNK_BYTES);
            assert!(n >= 1);
            let update = Update { joined: rest[..n].to_vec(), ..Update::default() };
            assert!(serde_json::to_vec(&update).unwrap().len() <= MAX_MESSAGE);
            rest = &rest[n..];
            chunks += 1;
        }
        assert!(chunks >= 6, "{chunks}");
        assert_eq!(chunk_len(&entries[..1], 0), 0);
        assert_eq!(chunk_len(&entries[..1], 1), 1, "an entry larger than the budget still moves");
    }

    #[test]
    fn updates_read_back_with_defaults() {
        let update: Update = serde_json::from_str(r#"{"sentAtMs":1,"addrs":[],"peers":3}"#).unwrap();
        assert!(!update.reset && update.joined.is_empty() && update.left.is_empty());
        assert_eq!(update.peers, 3);
    }
}
