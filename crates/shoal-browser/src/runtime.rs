//! The page's libp2p swarm and the loop that drives it.
//!
//! The loop owns the `Swarm`: the link to the signalling node (with reconnection and
//! re-registration), membership of each joined swarm, direct connections to members,
//! and bans. JavaScript talks to it through [`Handle`]: commands over a
//! channel, a shared snapshot for synchronous reads, and an event callback. Piece
//! exchange runs in [`crate::pieces`], one engine host per swarm with pieces, and gossip in
//! [`crate::gossip`]; streams run as their own tasks, so transfers never wait on the
//! swarm loop.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    rc::Rc,
    time::Duration,
};

use futures::{AsyncReadExt, FutureExt, StreamExt, channel::mpsc, select};
use futures_timer::Delay;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport,
    core::{ConnectedPoint, muxing::StreamMuxerBox, transport::ListenerId, upgrade::Version},
    identity::Keypair,
    multiaddr::Protocol,
    noise, ping, relay,
    request_response::{self, OutboundRequestId, ProtocolSupport},
    swarm::{
        ConnectionId, NetworkBehaviour, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
    yamux,
};
use serde::Serialize;
use shoal_core::{Message, wire::FrameDecoder};
use shoal_proto::{MembershipRequest, MembershipResponse};
use web_time::Instant;

use crate::{
    bulk,
    config::Config,
    gossip::{self, GossipHost, GossipStats},
    pieces::{self, SwarmHost},
    streams,
};

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    relay: relay::client::Behaviour,
    webrtc: shoal_webrtc::Behaviour,
    ping: ping::Behaviour,
    membership: request_response::Behaviour<crate::membership::Codec>,
    streams: streams::Behaviour,
}

/// Events delivered to JavaScript, as plain objects with a `type`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(crate) enum Event {
    NodeConnected {
        node: String,
        addr: String,
    },
    NodeDisconnected {
        node: String,
        reason: String,
    },
    Joined {
        swarm: String,
        members: usize,
    },
    PeerConnected {
        peer: String,
        #[serde(rename = "remoteAddr")]
        remote_addr: String,
        dialer: bool,
    },
    PeerDisconnected {
        peer: String,
        reason: String,
    },
    DialFailed {
        peer: String,
        error: String,
    },
    /// A peer's attempt to connect to us failed (bad signalling, handshake timeout...).
    InboundFailed {
        peer: String,
        error: String,
    },
    /// A peer was cut off for misbehaving (corrupt data, forged record, bad messages).
    PeerBanned {
        peer: String,
        reason: String,
    },
    SegmentLoaded {
        swarm: String,
        segment: u64,
        bytes: u64,
        #[serde(rename = "fromPeers")]
        from_peers: u64,
        #[serde(rename = "fromHttp")]
        from_http: u64,
    },
    ChunkDown {
        swarm: String,
        peer: String,
        segment: u64,
        bytes: u64,
    },
    ChunkUp {
        swarm: String,
        peer: String,
        segment: u64,
        bytes: u64,
    },
    Gossip {
        topic: String,
        from: String,
        #[serde(with = "serde_bytes_as_array")]
        data: Vec<u8>,
    },
    GossipRejected {
        topic: String,
        from: String,
        reason: String,
    },
    BulkReceived {
        peer: String,
        bytes: u64,
        intact: bool,
        ms: f64,
    },
    Error {
        message: String,
    },
}

/// Gossip payloads reach JavaScript as arrays of numbers (turned into `Uint8Array` by the
/// JS wrapper); serde-wasm-bindgen has no byte-buffer type for the json-compatible mode.
mod serde_bytes_as_array {
    pub(super) fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(bytes, s)
    }
}

/// One direct connection, as `stats()` reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectionInfo {
    pub peer: String,
    pub remote_addr: String,
    /// True for browser-to-browser WebRTC; relayed connections are never listed.
    pub direct: bool,
    pub dialer: bool,
    /// Last ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// What JavaScript can read without waiting.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Snapshot {
    pub node_connected: bool,
    /// Where other browsers reach this peer (`<node>/p2p-circuit/webrtc/p2p/<me>`), while
    /// it holds a relay reservation on its node.
    pub address: Option<String>,
    pub joined: bool,
    pub swarms: Vec<String>,
    pub connections: Vec<ConnectionInfo>,
    pub relayed_connections: usize,
    pub peer_connections_created: u32,
    pub node_reconnects: u32,
    pub banned_peers: usize,
    pub gossip: GossipStats,
}

type Reply<T> = futures::channel::oneshot::Sender<Result<T, String>>;

pub(crate) enum Command {
    /// Leave every swarm and stop; the sender learns when the swarm is gone.
    Stop(futures::channel::oneshot::Sender<()>),
    /// Diagnostics: open a relayed connection to a peer through the node.
    DialRelayed(PeerId, Reply<()>),
    /// Connect directly to the browser peer at a `/p2p-circuit/webrtc/p2p/<peer>` address.
    Connect(Multiaddr, PeerId, Reply<()>),
    /// Join a swarm (with an engine host if it exchanges pieces).
    Join(String, Option<Rc<SwarmHost>>),
    Leave(String),
    /// Cut a peer off for good.
    Ban(PeerId, String),
}

/// JavaScript's side of the runtime.
pub(crate) struct Handle {
    pub peer_id: PeerId,
    pub hosts: Hosts,
    pub gossip: Rc<GossipHost>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub snapshot: Rc<RefCell<Snapshot>>,
    pub control: streams::Control,
}

pub(crate) type EventSink = Rc<dyn Fn(Event)>;

/// The engine hosts of joined swarms, by swarm name.
pub(crate) type Hosts = Rc<RefCell<HashMap<String, Rc<SwarmHost>>>>;

const NODE_BACKOFF_MIN: Duration = Duration::from_millis(250);
const NODE_BACKOFF_MAX: Duration = Duration::from_secs(8);
const TICK: Duration = Duration::from_millis(250);
/// How long a new piece stream may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the swarm and starts its loop.
pub(crate) fn start(config: Config, nodes: Vec<Multiaddr>, emit: EventSink) -> Result<Handle, String> {
    let keypair = Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();
    let node_addr = nodes.first().cloned().ok_or("no signalling node address")?;
    let node_peer = match node_addr.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => return Err(format!("node address {node_addr} does not end in /p2p/<id>")),
    };

    let webrtc_config = shoal_webrtc::Config {
        ice_servers: config
            .ice_servers
            .iter()
            .map(|s| shoal_webrtc::IceServer {
                urls: s.urls.clone().into_vec(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect(),
        handshake_timeout: Duration::from_millis(u64::from(config.handshake_timeout_ms)),
        ..shoal_webrtc::Config::default()
    };
    let (webrtc_transport, webrtc_behaviour) = shoal_webrtc::Transport::new(webrtc_config, keypair.clone());
    let (relay_transport, relay_behaviour) = relay::client::new(peer_id);
    let noise = noise::Config::new(&keypair).map_err(|e| e.to_string())?;
    let relayed = relay_transport
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)));
    // Ours dials `/webrtc-direct` (the node) and `/p2p-circuit/webrtc` (peers); the
    // relay transport any other circuit.
    let transport = webrtc_transport
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)))
        .or_transport(relayed)
        .map(|either, _| either.into_inner())
        .boxed();

    let (streams_behaviour, control, incoming) =
        streams::Behaviour::new(vec![pieces::PROTOCOL, gossip::PROTOCOL, StreamProtocol::new(bulk::PROTOCOL)]);
    let membership = request_response::Behaviour::new(
        [(StreamProtocol::new(shoal_proto::MEMBERSHIP_PROTOCOL), ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    let behaviour = Behaviour {
        relay: relay_behaviour,
        webrtc: webrtc_behaviour,
        ping: ping::Behaviour::new(
            ping::Config::new().with_interval(Duration::from_secs(4)).with_timeout(Duration::from_secs(8)),
        ),
        membership,
        streams: streams_behaviour,
    };
    let swarm_config =
        libp2p::swarm::Config::with_wasm_executor().with_idle_connection_timeout(Duration::from_secs(60));
    let mut swarm = Swarm::new(transport, behaviour, peer_id, swarm_config);
    swarm
        .listen_on(Multiaddr::empty().with(Protocol::WebRTC))
        .map_err(|e| format!("cannot listen for /webrtc: {e}"))?;

    let (commands_tx, commands) = mpsc::unbounded();
    let snapshot = Rc::new(RefCell::new(Snapshot::default()));
    let hosts: Hosts = Rc::default();
    let gossip = GossipHost::new(keypair, config.gossip_max_bytes, emit.clone(), commands_tx.clone(), control.clone());
    serve_incoming(incoming, hosts.clone(), gossip.clone(), emit.clone());
    let mut runtime = Runtime {
        swarm,
        config,
        node: NodeLink::new(node_peer, node_addr),
        emit,
        snapshot: snapshot.clone(),
        commands,
        swarms: HashMap::new(),
        hosts: hosts.clone(),
        direct: HashMap::new(),
        relayed: HashSet::new(),
        dials: HashMap::new(),
        dial_replies: HashMap::new(),
        rtt: HashMap::new(),
        banned: HashSet::new(),
        gossip: gossip.clone(),
    };
    if let Some(swarm) = runtime.config.swarm.clone() {
        runtime.join(swarm, None);
    }
    wasm_bindgen_futures::spawn_local(runtime.run());
    Ok(Handle { peer_id, hosts, gossip, commands: commands_tx, snapshot, control })
}

/// Serves inbound streams: piece streams go to their swarm's engine host (after the
/// `Hello` that names the swarm), gossip streams to the gossip host, bulk transfers are
/// verified and reported.
fn serve_incoming(mut incoming: streams::Incoming, hosts: Hosts, gossip: Rc<GossipHost>, emit: EventSink) {
    wasm_bindgen_futures::spawn_local(async move {
        while let Some((peer, protocol, stream)) = incoming.next().await {
            if protocol == pieces::PROTOCOL {
                wasm_bindgen_futures::spawn_local(serve_piece_stream(peer, stream, hosts.clone()));
            } else if protocol == gossip::PROTOCOL {
                gossip.attach_reader(peer, stream);
            } else {
                wasm_bindgen_futures::spawn_local(serve_bulk(peer, stream, emit.clone()));
            }
        }
    });
}

async fn serve_piece_stream(peer: PeerId, mut stream: libp2p::Stream, hosts: Hosts) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    let hello = async {
        loop {
            match decoder.next_frame() {
                Ok(Some(message)) => return Some(message),
                Ok(None) => {}
                Err(_) => return None,
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => decoder.extend(&buf[..n]),
            }
        }
    };
    let first = select! {
        m = hello.fuse() => m,
        () = Delay::new(HELLO_TIMEOUT).fuse() => None,
    };
    let Some(first @ Message::Hello { stream: stream_id, .. }) = first else {
        tracing::debug!(%peer, "piece stream without Hello");
        return;
    };
    let host = hosts.borrow().values().find(|h| h.stream_id == stream_id).cloned();
    match host {
        Some(host) => host.attach_reader(peer, stream, decoder, first),
        None => tracing::debug!(%peer, "piece stream for a swarm we are not in"),
    }
}

async fn serve_bulk(peer: PeerId, mut stream: libp2p::Stream, emit: EventSink) {
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
}

/// State of our link to the signalling node.
struct NodeLink {
    peer: PeerId,
    addr: Multiaddr,
    connected: bool,
    dialing: bool,
    reservation: Option<ListenerId>,
    /// While the node holds a reservation for us: where other browsers reach us
    /// (`<node>/p2p-circuit/webrtc/p2p/<me>`), formatted once per reservation.
    address: Option<String>,
    backoff: Duration,
    next_attempt: Instant,
    /// Times the node connection came up; more than once means reconnects.
    connections_made: u32,
}

impl NodeLink {
    fn new(peer: PeerId, addr: Multiaddr) -> Self {
        Self {
            peer,
            addr,
            connected: false,
            dialing: false,
            reservation: None,
            address: None,
            backoff: NODE_BACKOFF_MIN,
            next_attempt: Instant::now(),
            connections_made: 0,
        }
    }

    fn circuit_addr(&self) -> Multiaddr {
        self.addr.clone().with(Protocol::P2pCircuit)
    }

    fn lost(&mut self) {
        self.connected = false;
        self.dialing = false;
        self.reservation = None;
        self.address = None;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(NODE_BACKOFF_MAX);
    }
}

/// Our membership of one swarm.
#[derive(Default)]
struct Membership {
    joined: bool,
    last_join: Option<Instant>,
    pending: Option<OutboundRequestId>,
    size_hint: usize,
}

struct DirectConnection {
    id: ConnectionId,
    dialer: bool,
    remote_addr: Multiaddr,
}

struct Runtime {
    swarm: Swarm<Behaviour>,
    config: Config,
    node: NodeLink,
    emit: EventSink,
    snapshot: Rc<RefCell<Snapshot>>,
    commands: mpsc::UnboundedReceiver<Command>,
    swarms: HashMap<String, Membership>,
    hosts: Hosts,
    direct: HashMap<PeerId, Vec<DirectConnection>>,
    relayed: HashSet<ConnectionId>,
    /// Our own dials (to members, or asked for with `connect`), so failures of other
    /// dials are not reported.
    dials: HashMap<ConnectionId, PeerId>,
    /// Dials a JavaScript call waits on (`connect`, diagnostics).
    dial_replies: HashMap<ConnectionId, Reply<()>>,
    rtt: HashMap<PeerId, Duration>,
    banned: HashSet<PeerId>,
    gossip: Rc<GossipHost>,
}

impl Runtime {
    async fn run(mut self) {
        let mut tick = Delay::new(Duration::ZERO).fuse();
        loop {
            select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.next() => match command {
                    Some(Command::Stop(done)) => {
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                () = tick => {
                    self.maintain();
                    tick = Delay::new(TICK).fuse();
                }
            }
            self.refresh_snapshot();
        }
        tracing::info!("runtime stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Stop(_) => {}
            Command::DialRelayed(peer, reply) => self.dial_relayed(peer, reply),
            Command::Connect(addr, peer, reply) => self.connect(addr, peer, reply),
            Command::Join(name, host) => self.join(name, host),
            Command::Leave(name) => {
                if let Some(host) = self.hosts.borrow_mut().remove(&name) {
                    host.shutdown();
                }
                if self.swarms.remove(&name).is_some() && self.node.connected {
                    let request = MembershipRequest::Leave { swarm: name };
                    self.swarm.behaviour_mut().membership.send_request(&self.node.peer, request);
                }
            }
            Command::Ban(peer, reason) => {
                if self.banned.insert(peer) {
                    tracing::info!(%peer, %reason, "peer cut off");
                    let _ = self.swarm.disconnect_peer_id(peer);
                    for host in self.hosts.borrow().values() {
                        host.peer_gone(peer);
                    }
                    self.gossip.peer_gone(peer);
                }
            }
        }
    }

    fn join(&mut self, name: String, host: Option<Rc<SwarmHost>>) {
        if let Some(host) = host {
            // A direct connection already up may well be a member: offer it the stream.
            for peer in self.direct.keys() {
                host.peer_connected(*peer);
            }
            self.hosts.borrow_mut().entry(name.clone()).or_insert(host);
        }
        self.swarms.entry(name.clone()).or_default();
        if self.node.address.is_some() {
            self.send_join(&name);
        }
    }

    /// Tells the node we are gone, so it stops handing us out, waiting briefly for its
    /// answers (a closing page may not give us longer).
    async fn stop(&mut self) {
        for host in self.hosts.borrow().values() {
            host.shutdown();
        }
        let mut pending = HashSet::new();
        if self.node.connected {
            for name in self.swarms.keys() {
                let request = MembershipRequest::Leave { swarm: name.clone() };
                pending.insert(self.swarm.behaviour_mut().membership.send_request(&self.node.peer, request));
            }
        }
        let mut deadline = Delay::new(Duration::from_millis(500)).fuse();
        while !pending.is_empty() {
            select! {
                event = self.swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(BehaviourEvent::Membership(
                        request_response::Event::Message { message: request_response::Message::Response { request_id, .. }, .. }
                        | request_response::Event::OutboundFailure { request_id, .. },
                    )) = &event
                    {
                        pending.remove(request_id);
                    }
                }
                () = deadline => break,
            }
        }
    }

    fn dial_relayed(&mut self, peer: PeerId, reply: Reply<()>) {
        if !self.node.connected {
            let _ = reply.send(Err("not connected to the signalling node".into()));
            return;
        }
        let addr = self.node.circuit_addr().with(Protocol::P2p(peer));
        let opts = DialOpts::peer_id(peer).addresses(vec![addr]).condition(PeerCondition::Always).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dial_replies.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }

    /// A direct connection the page asked for, to a peer it learnt of by other means than
    /// membership. Resolves at once if one is up already.
    fn connect(&mut self, addr: Multiaddr, peer: PeerId, reply: Reply<()>) {
        if self.direct.contains_key(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        if self.banned.contains(&peer) {
            let _ = reply.send(Err(format!("{peer} is banned")));
            return;
        }
        if self.direct.len() >= self.config.max_peers {
            let _ = reply.send(Err(format!("already connected to maxPeers ({}) peers", self.config.max_peers)));
            return;
        }
        let opts = DialOpts::peer_id(peer).addresses(vec![addr]).condition(PeerCondition::Always).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, peer);
                self.dial_replies.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }

    /// Periodic work: reconnect to the node, refresh memberships, reopen streams.
    fn maintain(&mut self) {
        let now = Instant::now();
        // A stream dies with its connection, and when two peers dialled each other at
        // once the connection it ran on may be the duplicate that was closed: offer every
        // connected peer again (a no-op where the streams are up).
        for peer in self.direct.keys().filter(|p| !self.banned.contains(p)) {
            for host in self.hosts.borrow().values() {
                host.peer_connected(*peer);
            }
            self.gossip.peer_connected(*peer);
        }
        if !self.node.connected && !self.node.dialing && now >= self.node.next_attempt {
            self.node.dialing = true;
            let opts = DialOpts::peer_id(self.node.peer)
                .addresses(vec![self.node.addr.clone()])
                .condition(PeerCondition::Always)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(error = %e, "node dial refused");
                self.node.lost();
            }
        }
        if self.node.address.is_none() {
            return;
        }
        let rejoin = Duration::from_millis(u64::from(self.config.rejoin_interval_ms));
        let due: Vec<String> = self
            .swarms
            .iter()
            .filter(|(_, m)| m.pending.is_none() && m.last_join.is_none_or(|t| now - t >= rejoin))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.send_join(&name);
        }
    }

    fn send_join(&mut self, name: &str) {
        let request = MembershipRequest::Join { swarm: name.to_owned(), token: None };
        let id = self.swarm.behaviour_mut().membership.send_request(&self.node.peer, request);
        if let Some(m) = self.swarms.get_mut(name) {
            m.pending = Some(id);
            m.last_join = Some(Instant::now());
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                self.dials.remove(&connection_id);
                if let Some(reply) = self.dial_replies.remove(&connection_id) {
                    let _ = reply.send(Ok(()));
                }
                self.on_connection_established(peer_id, connection_id, &endpoint)
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                self.relayed.remove(&connection_id);
                let reason = cause.map(|c| c.to_string()).unwrap_or_else(|| "closed".into());
                if peer_id == self.node.peer {
                    if num_established == 0 {
                        tracing::info!(%reason, "lost the signalling node");
                        self.node.lost();
                        for m in self.swarms.values_mut() {
                            m.joined = false;
                            m.pending = None;
                            m.last_join = None;
                        }
                        (self.emit)(Event::NodeDisconnected { node: peer_id.to_string(), reason });
                    }
                    return;
                }
                self.on_direct_closed(peer_id, connection_id, reason);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, connection_id } => {
                let ours = self.dials.remove(&connection_id).is_some();
                if let Some(reply) = self.dial_replies.remove(&connection_id) {
                    let _ = reply.send(Err(error_chain(&error)));
                }
                if peer == self.node.peer {
                    tracing::info!(%error, "cannot reach the signalling node");
                    if !self.node.connected {
                        self.node.lost();
                    }
                } else if ours {
                    let error = error_chain(&error);
                    tracing::debug!(%peer, %error, "dial failed");
                    (self.emit)(Event::DialFailed { peer: peer.to_string(), error });
                }
            }
            SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                let error = error_chain(&error);
                tracing::debug!(%send_back_addr, %error, "inbound connection failed");
                // Only browser-to-browser handshakes are worth telling the page about.
                if shoal_webrtc::addr::is_webrtc(&send_back_addr) {
                    let peer = match send_back_addr.iter().last() {
                        Some(Protocol::P2p(peer)) => peer.to_string(),
                        _ => String::new(),
                    };
                    (self.emit)(Event::InboundFailed { peer, error });
                }
            }
            SwarmEvent::ListenerClosed { listener_id, .. } if Some(listener_id) == self.node.reservation => {
                self.node.reservation = None;
                self.node.address = None;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(relay::client::Event::ReservationReqAccepted {
                renewal: false,
                ..
            })) => {
                // Reachable through the node now: members dialling us will get through.
                let me = *self.swarm.local_peer_id();
                self.node.address =
                    Some(self.node.circuit_addr().with(Protocol::WebRTC).with(Protocol::P2p(me)).to_string());
                let names: Vec<String> = self.swarms.keys().cloned().collect();
                for name in names {
                    self.send_join(&name);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Membership(event)) => self.on_membership(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, connection })) => match result {
                Ok(rtt) => {
                    self.rtt.insert(peer, rtt);
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "ping failed; closing the connection");
                    let _ = self.swarm.close_connection(connection);
                }
            },
            _ => {}
        }
    }

    fn on_connection_established(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint) {
        let remote_addr = endpoint.get_remote_address().clone();
        if peer == self.node.peer {
            if !self.node.connected {
                self.node.connected = true;
                self.node.dialing = false;
                self.node.backoff = NODE_BACKOFF_MIN;
                self.node.connections_made += 1;
                match self.swarm.listen_on(self.node.circuit_addr()) {
                    Ok(id) => self.node.reservation = Some(id),
                    Err(e) => (self.emit)(Event::Error { message: format!("relay reservation: {e}") }),
                }
                (self.emit)(Event::NodeConnected { node: peer.to_string(), addr: remote_addr.to_string() });
            }
            return;
        }
        if self.banned.contains(&peer) {
            self.swarm.close_connection(id);
            return;
        }
        if !shoal_webrtc::addr::is_webrtc(&remote_addr) {
            // A relayed connection, used for signalling only.
            self.relayed.insert(id);
            return;
        }
        let dialer = endpoint.is_dialer();
        let connections = self.direct.entry(peer).or_default();
        connections.push(DirectConnection { id, dialer, remote_addr: remote_addr.clone() });
        if connections.len() == 1 {
            (self.emit)(Event::PeerConnected { peer: peer.to_string(), remote_addr: remote_addr.to_string(), dialer });
            for host in self.hosts.borrow().values() {
                host.peer_connected(peer);
            }
            self.gossip.peer_connected(peer);
        } else {
            self.deduplicate(peer);
        }
    }

    /// Both peers dialled each other at once. Both sides keep the connection that the
    /// peer with the smaller PeerId dialled, so they agree without talking.
    fn deduplicate(&mut self, peer: PeerId) {
        let local = *self.swarm.local_peer_id();
        let we_keep_our_dial = local < peer;
        let Some(connections) = self.direct.get(&peer) else { return };
        let keep = connections.iter().find(|c| c.dialer == we_keep_our_dial).or(connections.first()).map(|c| c.id);
        let close: Vec<ConnectionId> = connections.iter().filter(|c| Some(c.id) != keep).map(|c| c.id).collect();
        for id in close {
            tracing::debug!(%peer, "closing duplicate connection");
            self.swarm.close_connection(id);
        }
    }

    fn on_direct_closed(&mut self, peer: PeerId, id: ConnectionId, reason: String) {
        let Some(connections) = self.direct.get_mut(&peer) else { return };
        connections.retain(|c| c.id != id);
        if connections.is_empty() {
            self.direct.remove(&peer);
            self.rtt.remove(&peer);
            for host in self.hosts.borrow().values() {
                host.peer_disconnected(peer);
            }
            self.gossip.peer_gone(peer);
            (self.emit)(Event::PeerDisconnected { peer: peer.to_string(), reason });
        }
    }

    fn on_membership(&mut self, event: request_response::Event<MembershipRequest, MembershipResponse>) {
        match event {
            request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            } => {
                let Some((name, membership)) = self.swarms.iter_mut().find(|(_, m)| m.pending == Some(request_id))
                else {
                    return;
                };
                membership.pending = None;
                let name = name.clone();
                match response {
                    MembershipResponse::Joined { members, size } => {
                        let first = !membership.joined;
                        membership.joined = true;
                        membership.size_hint = if size > 0 { size as usize } else { members.len() + 1 };
                        let size = membership.size_hint;
                        if first {
                            (self.emit)(Event::Joined { swarm: name.clone(), members: members.len() });
                        }
                        if let Some(host) = self.hosts.borrow().get(&name) {
                            host.set_swarm_size(size);
                        }
                        self.dial_members(members);
                    }
                    MembershipResponse::Refused { reason } => {
                        (self.emit)(Event::Error { message: format!("node refused to admit us to {name}: {reason}") });
                    }
                    MembershipResponse::Left => {}
                }
            }
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(m) = self.swarms.values_mut().find(|m| m.pending == Some(request_id)) {
                    m.pending = None;
                }
                tracing::debug!(%error, "membership request failed");
            }
            _ => {}
        }
    }

    fn dial_members(&mut self, members: Vec<shoal_proto::Member>) {
        let local = *self.swarm.local_peer_id();
        for member in members {
            if self.direct.len() >= self.config.max_peers {
                return;
            }
            let Ok(peer) = member.peer.parse::<PeerId>() else { continue };
            if peer == local || self.direct.contains_key(&peer) || self.banned.contains(&peer) {
                continue;
            }
            let addrs: Vec<Multiaddr> = member
                .addrs
                .iter()
                .filter_map(|a| shoal_webrtc::addr::parse(a).ok())
                .filter(|a| shoal_webrtc::addr::parse_dial_addr(a).is_some_and(|d| d.peer == peer))
                .collect();
            // One address: each would cost a circuit and a handshake. Prefer the one
            // through the node we hold a connection to.
            let node = self.node.addr.to_string();
            let Some(addr) = addrs.iter().find(|a| a.to_string().starts_with(&node)).or(addrs.first()).cloned() else {
                continue;
            };
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let id = opts.connection_id();
            // `DisconnectedAndNotDialing` refuses when a dial or a relayed connection
            // (the peer dialling us) is already under way: that is not an error.
            if self.swarm.dial(opts).is_ok() {
                self.dials.insert(id, peer);
            }
        }
    }

    fn refresh_snapshot(&mut self) {
        let mut snapshot = self.snapshot.borrow_mut();
        snapshot.node_connected = self.node.connected;
        snapshot.address = self.node.address.clone();
        snapshot.joined = !self.swarms.is_empty() && self.swarms.values().all(|m| m.joined);
        snapshot.swarms = self.swarms.keys().cloned().collect();
        snapshot.relayed_connections = self.relayed.len();
        snapshot.peer_connections_created = shoal_webrtc::peer_connections_created();
        snapshot.node_reconnects = self.node.connections_made.saturating_sub(1);
        snapshot.banned_peers = self.banned.len();
        snapshot.gossip = self.gossip.stats();
        snapshot.connections = self
            .direct
            .iter()
            .flat_map(|(peer, conns)| {
                conns.iter().map(|c| ConnectionInfo {
                    peer: peer.to_string(),
                    remote_addr: c.remote_addr.to_string(),
                    direct: true,
                    dialer: c.dialer,
                    rtt_ms: self.rtt.get(peer).map(|d| d.as_secs_f64() * 1000.0),
                })
            })
            .collect();
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Many errors print their source in their own message; don't say it twice.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
