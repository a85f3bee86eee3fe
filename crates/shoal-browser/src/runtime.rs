//! The page's swarm and the loop that drives it.
//!
//! The loop owns the `Swarm`. JavaScript talks to it through [`Handle`]: commands over a
//! channel, a shared snapshot for synchronous reads, and an event callback. Streams handed
//! out by `libp2p-stream` run as their own tasks, so bulk transfers never wait on the
//! swarm loop.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    rc::Rc,
    time::Duration,
};

use futures::{FutureExt, StreamExt, channel::mpsc, select};
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
use shoal_proto::{MembershipRequest, MembershipResponse};
use web_time::Instant;

use crate::config::Config;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    relay: relay::client::Behaviour,
    webrtc: shoal_webrtc::Behaviour,
    ping: ping::Behaviour,
    membership: request_response::json::Behaviour<MembershipRequest, MembershipResponse>,
    streams: libp2p_stream::Behaviour,
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

/// One direct connection, as `connections()` reports it.
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
    pub joined: bool,
    pub connections: Vec<ConnectionInfo>,
    pub relayed_connections: usize,
    pub peer_connections_created: u32,
    pub node_reconnects: u32,
}

pub(crate) enum Command {
    /// Leave the swarm and stop; the sender learns when the swarm is gone.
    Stop(futures::channel::oneshot::Sender<()>),
    /// Diagnostics: open a relayed connection to a peer through the node.
    DialRelayed(PeerId, futures::channel::oneshot::Sender<Result<(), String>>),
}

/// JavaScript's side of the runtime.
pub(crate) struct Handle {
    pub peer_id: PeerId,
    pub commands: mpsc::Sender<Command>,
    pub snapshot: Rc<RefCell<Snapshot>>,
    pub control: libp2p_stream::Control,
}

pub(crate) type EventSink = Rc<dyn Fn(Event)>;

const NODE_BACKOFF_MIN: Duration = Duration::from_millis(250);
const NODE_BACKOFF_MAX: Duration = Duration::from_secs(8);
const TICK: Duration = Duration::from_millis(250);

/// Builds the swarm and starts its loop.
pub(crate) fn start(config: Config, nodes: Vec<Multiaddr>, emit: EventSink) -> Result<Handle, String> {
    let keypair = Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();
    let node_addr = nodes.first().cloned().ok_or("no signalling node address")?;
    let node_peer = match node_addr.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => {
            return Err(format!("node address {node_addr} does not end in /p2p/<id>"));
        }
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
    let (webrtc_transport, webrtc_behaviour) = shoal_webrtc::Transport::new(webrtc_config);
    let (relay_transport, relay_behaviour) = relay::client::new(peer_id);
    let noise = noise::Config::new(&keypair).map_err(|e| e.to_string())?;
    let relayed = relay_transport
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)));
    let to_node = libp2p::webrtc_websys::Transport::new(libp2p::webrtc_websys::Config::new(&keypair))
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)));
    // Order matters: ours claims `/p2p-circuit/webrtc`, the relay any other circuit.
    let transport = webrtc_transport
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)))
        .or_transport(relayed)
        .or_transport(to_node)
        .map(|either, _| match either {
            futures::future::Either::Left(futures::future::Either::Left(x)) => x,
            futures::future::Either::Left(futures::future::Either::Right(x)) => x,
            futures::future::Either::Right(x) => x,
        })
        .boxed();

    let membership = request_response::json::Behaviour::new(
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
        streams: libp2p_stream::Behaviour::new(),
    };
    let swarm_config =
        libp2p::swarm::Config::with_wasm_executor().with_idle_connection_timeout(Duration::from_secs(60));
    let mut swarm = Swarm::new(transport, behaviour, peer_id, swarm_config);
    swarm
        .listen_on(Multiaddr::empty().with(Protocol::WebRTC))
        .map_err(|e| format!("cannot listen for /webrtc: {e}"))?;

    let control = swarm.behaviour().streams.new_control();
    let (commands_tx, commands) = mpsc::channel(16);
    let snapshot = Rc::new(RefCell::new(Snapshot::default()));
    let runtime = Runtime {
        swarm,
        config,
        node: NodeLink::new(node_peer, node_addr),
        emit,
        snapshot: snapshot.clone(),
        commands,
        direct: HashMap::new(),
        relayed: HashSet::new(),
        dials: HashMap::new(),
        relayed_dials: HashMap::new(),
        rtt: HashMap::new(),
        pending_join: None,
    };
    wasm_bindgen_futures::spawn_local(runtime.run());
    Ok(Handle { peer_id, commands: commands_tx, snapshot, control })
}

/// State of our link to the signalling node.
struct NodeLink {
    peer: PeerId,
    addr: Multiaddr,
    connected: bool,
    dialing: bool,
    reservation: Option<ListenerId>,
    joined: bool,
    last_join: Option<Instant>,
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
            joined: false,
            last_join: None,
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
        self.joined = false;
        self.reservation = None;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(NODE_BACKOFF_MAX);
    }
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
    commands: mpsc::Receiver<Command>,
    direct: HashMap<PeerId, Vec<DirectConnection>>,
    relayed: HashSet<ConnectionId>,
    /// Our own dials to members, so failures of other dials are not reported.
    dials: HashMap<ConnectionId, PeerId>,
    /// Diagnostic relayed dials waiting to complete.
    relayed_dials: HashMap<ConnectionId, futures::channel::oneshot::Sender<Result<(), String>>>,
    rtt: HashMap<PeerId, Duration>,
    pending_join: Option<OutboundRequestId>,
}

impl Runtime {
    async fn run(mut self) {
        let mut tick = Delay::new(Duration::ZERO).fuse();
        loop {
            select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.next() => match command {
                    Some(Command::Stop(done)) => {
                        self.leave().await;
                        drop(self.swarm);
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::DialRelayed(peer, reply)) => self.dial_relayed(peer, reply),
                    None => break,
                },
                () = tick => {
                    self.maintain();
                    tick = Delay::new(TICK).fuse();
                }
            }
            self.refresh_snapshot();
        }
        // Dropping the swarm closes every connection.
        tracing::info!("runtime stopped");
    }

    /// Tells the node we are gone, so it stops handing us out, waiting briefly for its
    /// answer (a closing page may not give us longer).
    async fn leave(&mut self) {
        if !self.node.joined {
            return;
        }
        let request = MembershipRequest::Leave { swarm: self.config.swarm.clone() };
        let id = self.swarm.behaviour_mut().membership.send_request(&self.node.peer, request);
        let mut deadline = Delay::new(Duration::from_millis(500)).fuse();
        loop {
            select! {
                event = self.swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(BehaviourEvent::Membership(
                        request_response::Event::Message { message: request_response::Message::Response { request_id, .. }, .. }
                        | request_response::Event::OutboundFailure { request_id, .. },
                    )) = &event
                        && *request_id == id
                    {
                        return;
                    }
                }
                () = deadline => return,
            }
        }
    }

    fn dial_relayed(&mut self, peer: PeerId, reply: futures::channel::oneshot::Sender<Result<(), String>>) {
        if !self.node.connected {
            let _ = reply.send(Err("not connected to the signalling node".into()));
            return;
        }
        let addr = self.node.circuit_addr().with(Protocol::P2p(peer));
        let opts = DialOpts::peer_id(peer).addresses(vec![addr]).condition(PeerCondition::Always).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.relayed_dials.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }

    /// Periodic work: reconnect to the node, refresh membership.
    fn maintain(&mut self) {
        let now = Instant::now();
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
        let rejoin = Duration::from_millis(u64::from(self.config.rejoin_interval_ms));
        if self.node.joined && self.pending_join.is_none() && self.node.last_join.is_some_and(|t| now - t >= rejoin) {
            self.send_join();
        }
    }

    fn send_join(&mut self) {
        let request = MembershipRequest::Join { swarm: self.config.swarm.clone(), token: None };
        self.pending_join = Some(self.swarm.behaviour_mut().membership.send_request(&self.node.peer, request));
        self.node.last_join = Some(Instant::now());
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                self.dials.remove(&connection_id);
                if let Some(reply) = self.relayed_dials.remove(&connection_id) {
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
                        self.pending_join = None;
                        (self.emit)(Event::NodeDisconnected { node: peer_id.to_string(), reason });
                    }
                    return;
                }
                self.on_direct_closed(peer_id, connection_id, reason);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, connection_id } => {
                let ours = self.dials.remove(&connection_id).is_some();
                if let Some(reply) = self.relayed_dials.remove(&connection_id) {
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
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(relay::client::Event::ReservationReqAccepted {
                renewal: false,
                ..
            })) => {
                // Reachable through the node now: members dialling us will get through.
                self.send_join();
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
        } else {
            self.deduplicate(peer);
        }
    }

    /// Both peers dialled each other at once. Both sides keep the connection that the
    /// peer with the smaller PeerId dialled, so they agree without talking.
    fn deduplicate(&mut self, peer: PeerId) {
        let local = *self.swarm.local_peer_id();
        let we_keep_our_dial = local < peer;
        let Some(connections) = self.direct.get(&peer) else {
            return;
        };
        let keep = connections.iter().find(|c| c.dialer == we_keep_our_dial).or(connections.first()).map(|c| c.id);
        let close: Vec<ConnectionId> = connections.iter().filter(|c| Some(c.id) != keep).map(|c| c.id).collect();
        for id in close {
            tracing::debug!(%peer, "closing duplicate connection");
            self.swarm.close_connection(id);
        }
    }

    fn on_direct_closed(&mut self, peer: PeerId, id: ConnectionId, reason: String) {
        let Some(connections) = self.direct.get_mut(&peer) else {
            return;
        };
        connections.retain(|c| c.id != id);
        if connections.is_empty() {
            self.direct.remove(&peer);
            self.rtt.remove(&peer);
            (self.emit)(Event::PeerDisconnected { peer: peer.to_string(), reason });
        }
    }

    fn on_membership(&mut self, event: request_response::Event<MembershipRequest, MembershipResponse>) {
        match event {
            request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            } => {
                if self.pending_join == Some(request_id) {
                    self.pending_join = None;
                }
                match response {
                    MembershipResponse::Joined { members } => {
                        let first = !self.node.joined;
                        self.node.joined = true;
                        if first {
                            (self.emit)(Event::Joined { swarm: self.config.swarm.clone(), members: members.len() });
                        }
                        self.dial_members(members);
                    }
                    MembershipResponse::Refused { reason } => {
                        (self.emit)(Event::Error { message: format!("node refused to admit us: {reason}") });
                    }
                    MembershipResponse::Left => {}
                }
            }
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if self.pending_join == Some(request_id) {
                    self.pending_join = None;
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
            let Ok(peer) = member.peer.parse::<PeerId>() else {
                continue;
            };
            if peer == local || self.direct.contains_key(&peer) {
                continue;
            }
            let addrs: Vec<Multiaddr> = member
                .addrs
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
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
        snapshot.joined = self.node.joined;
        snapshot.relayed_connections = self.relayed.len();
        snapshot.peer_connections_created = shoal_webrtc::peer_connections_created();
        snapshot.node_reconnects = self.node.connections_made.saturating_sub(1);
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
