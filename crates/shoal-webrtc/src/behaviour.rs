//! The swarm side of the transport.
//!
//! A rust-libp2p `Transport` cannot reach the swarm's other connections, but the
//! signalling protocol runs on one: the relayed connection to the remote peer. This
//! behaviour bridges the two over bounded channels:
//! - the transport asks for a signalling stream to a peer; the behaviour dials (or
//!   reuses) a relayed connection to it and opens `/webrtc-signaling/0.0.1` on it;
//! - inbound signalling streams on relayed connections go to the transport's listener;
//! - once a direct WebRTC connection to a peer is up, its relayed connections are closed
//!   (the relay is for signalling; data must take the direct path).

// The channel plumbing is used by the wasm32 transport only.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::{
    collections::{HashMap, VecDeque},
    task::{Context, Poll},
};

use futures::{
    StreamExt,
    channel::{mpsc, oneshot},
};
use libp2p::{
    Multiaddr, PeerId, Stream,
    core::{Endpoint, transport::PortUse, upgrade::ReadyUpgrade},
    swarm::{
        CloseConnection, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
        NetworkBehaviour, NotifyHandler, StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
        dial_opts::{DialOpts, PeerCondition},
        handler::{ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound},
    },
};

use crate::{SIGNALING_PROTOCOL, addr};

/// Asks the behaviour for an outbound signalling stream to `peer`.
#[derive(Debug)]
pub(crate) struct SignalingRequest {
    pub(crate) peer: PeerId,
    /// `<relay>/p2p-circuit/p2p/<peer>`, dialled if no relayed connection exists.
    pub(crate) relayed: Multiaddr,
    pub(crate) reply: oneshot::Sender<Result<Stream, String>>,
}

/// An inbound signalling stream for the transport's listener.
#[derive(Debug)]
pub(crate) struct InboundSignaling {
    pub(crate) peer: PeerId,
    /// The relayed address the stream came through.
    pub(crate) relayed: Multiaddr,
    pub(crate) stream: Stream,
}

/// Depth of the channels between transport and behaviour. Each entry is one handshake in
/// progress; more than this at once means a peer is flooding us.
pub(crate) const CHANNEL_DEPTH: usize = 16;
/// Most handshakes one peer may start towards us per [`INBOUND_WINDOW`]: a peer that
/// keeps opening signalling streams is spending our budget of peer connections.
pub(crate) const MAX_INBOUND_PER_PEER: usize = 4;
pub(crate) const INBOUND_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Creates the channels that connect a transport to its behaviour.
pub(crate) fn channels() -> ((mpsc::Sender<SignalingRequest>, mpsc::Receiver<InboundSignaling>), Behaviour) {
    let (request_tx, request_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (inbound_tx, inbound_rx) = mpsc::channel(CHANNEL_DEPTH);
    (
        (request_tx, inbound_rx),
        Behaviour {
            requests: request_rx,
            inbound: inbound_tx,
            relayed: HashMap::new(),
            dialing: HashMap::new(),
            awaiting_stream: HashMap::new(),
            next_request: 0,
            queued: VecDeque::new(),
            inbound_attempts: HashMap::new(),
        },
    )
}

/// What the behaviour reports to the application.
#[derive(Debug)]
pub enum Event {
    /// An inbound signalling stream was refused (not relayed, or too many at once).
    InboundSignalingRefused { peer: PeerId, reason: &'static str },
    /// Relayed connections to `peer` were closed because a direct connection is up.
    RelayedConnectionsClosed { peer: PeerId, count: usize },
}

/// See the module docs. Create it together with its transport (`Transport::new`).
pub struct Behaviour {
    requests: mpsc::Receiver<SignalingRequest>,
    inbound: mpsc::Sender<InboundSignaling>,
    /// Established relayed connections: id → (peer, remote address).
    relayed: HashMap<ConnectionId, (PeerId, Multiaddr)>,
    /// Relayed connections we are dialling, with the requests waiting on each.
    dialing: HashMap<ConnectionId, Vec<SignalingRequest>>,
    /// Requests handed to a connection handler, by request id.
    awaiting_stream: HashMap<u64, SignalingRequest>,
    next_request: u64,
    queued: VecDeque<ToSwarm<Event, HandlerIn>>,
    /// When each peer last started handshakes towards us (at most
    /// [`MAX_INBOUND_PER_PEER`] kept, pruned as they age out).
    inbound_attempts: HashMap<PeerId, VecDeque<web_time::Instant>>,
}

impl Behaviour {
    fn on_request(&mut self, request: SignalingRequest) {
        let existing = self.relayed.iter().find(|(_, (peer, _))| *peer == request.peer).map(|(id, _)| *id);
        match existing {
            Some(connection) => self.open_on(connection, request),
            None => {
                let opts = DialOpts::peer_id(request.peer)
                    .addresses(vec![request.relayed.clone()])
                    // Our own `/webrtc` dial to this peer is in flight: dial anyway.
                    .condition(PeerCondition::Always)
                    .build();
                self.dialing.insert(opts.connection_id(), vec![request]);
                self.queued.push_back(ToSwarm::Dial { opts });
            }
        }
    }

    fn open_on(&mut self, connection: ConnectionId, request: SignalingRequest) {
        let id = self.next_request;
        self.next_request += 1;
        let peer_id = request.peer;
        self.awaiting_stream.insert(id, request);
        self.queued.push_back(ToSwarm::NotifyHandler {
            peer_id,
            handler: NotifyHandler::One(connection),
            event: HandlerIn::Open(id),
        });
    }

    fn close_relayed_to(&mut self, peer: PeerId) {
        let ids: Vec<ConnectionId> = self.relayed.iter().filter(|(_, (p, _))| *p == peer).map(|(id, _)| *id).collect();
        if ids.is_empty() {
            return;
        }
        for &connection in &ids {
            self.relayed.remove(&connection);
            self.queued
                .push_back(ToSwarm::CloseConnection { peer_id: peer, connection: CloseConnection::One(connection) });
        }
        self.queued.push_back(ToSwarm::GenerateEvent(Event::RelayedConnectionsClosed { peer, count: ids.len() }));
    }

    fn on_inbound_stream(&mut self, peer: PeerId, connection: ConnectionId, stream: Stream) {
        let Some((_, relayed)) = self.relayed.get(&connection) else {
            self.refuse(peer, "signalling is only accepted on relayed connections");
            return;
        };
        let relayed = relayed.clone();
        let now = web_time::Instant::now();
        let attempts = self.inbound_attempts.entry(peer).or_default();
        while attempts.front().is_some_and(|t| now.duration_since(*t) > INBOUND_WINDOW) {
            attempts.pop_front();
        }
        if attempts.len() >= MAX_INBOUND_PER_PEER {
            self.refuse(peer, "too many handshakes from this peer");
            return;
        }
        attempts.push_back(now);
        if self.inbound_attempts.len() > 1024 {
            self.inbound_attempts.retain(|_, a| a.back().is_some_and(|t| now.duration_since(*t) <= INBOUND_WINDOW));
        }
        if let Err(e) = self.inbound.try_send(InboundSignaling { peer, relayed, stream }) {
            let reason = if e.is_full() { "too many handshakes in progress" } else { "not listening for /webrtc" };
            self.refuse(peer, reason);
        }
    }

    fn refuse(&mut self, peer: PeerId, reason: &'static str) {
        tracing::debug!(%peer, reason, "refusing inbound signalling stream");
        self.queued.push_back(ToSwarm::GenerateEvent(Event::InboundSignalingRefused { peer, reason }));
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // An inbound circuit reports `/p2p/<src>` as its remote address; the relay is in
        // the local one (`<relay>/p2p-circuit`).
        let remote = if addr::is_relayed(local_addr) && !addr::is_relayed(remote_addr) {
            local_addr.clone().with(libp2p::multiaddr::Protocol::P2p(peer))
        } else {
            remote_addr.clone()
        };
        self.on_established(connection_id, peer, &remote);
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.on_established(connection_id, peer, addr);
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(closed) => {
                self.relayed.remove(&closed.connection_id);
            }
            FromSwarm::DialFailure(failure) => {
                if let Some(requests) = self.dialing.remove(&failure.connection_id) {
                    for request in requests {
                        let _ = request.reply.send(Err(format!("relayed connection failed: {}", failure.error)));
                    }
                }
            }
            FromSwarm::NewListenAddr(listen) if addr::is_relayed(listen.addr) => {
                // A relay reservation: advertise the browser-to-browser address beside it.
                if let Some(webrtc) = addr::webrtc_addr_for_reservation(listen.addr) {
                    self.queued.push_back(ToSwarm::ExternalAddrConfirmed(webrtc));
                }
            }
            FromSwarm::ExpiredListenAddr(expired) if addr::is_relayed(expired.addr) => {
                if let Some(webrtc) = addr::webrtc_addr_for_reservation(expired.addr) {
                    self.queued.push_back(ToSwarm::ExternalAddrExpired(webrtc));
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, connection: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {
            HandlerOut::Inbound(stream) => self.on_inbound_stream(peer, connection, stream),
            HandlerOut::Opened(id, result) => {
                if let Some(request) = self.awaiting_stream.remove(&id) {
                    let _ = request.reply.send(result);
                }
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some(request)) = self.requests.poll_next_unpin(cx) {
            self.on_request(request);
        }
        match self.queued.pop_front() {
            Some(action) => Poll::Ready(action),
            None => Poll::Pending,
        }
    }
}

impl Behaviour {
    fn on_established(&mut self, connection: ConnectionId, peer: PeerId, remote: &Multiaddr) {
        if addr::is_webrtc(remote) {
            self.close_relayed_to(peer);
            return;
        }
        if addr::is_relayed(remote) {
            self.relayed.insert(connection, (peer, remote.clone()));
        }
        if let Some(requests) = self.dialing.remove(&connection) {
            for request in requests {
                self.open_on(connection, request);
            }
        }
    }
}

/// Commands from the behaviour to a connection's handler.
#[derive(Debug)]
pub enum HandlerIn {
    /// Open an outbound signalling stream for request `id`.
    Open(u64),
}

/// Events from a connection's handler.
#[derive(Debug)]
pub enum HandlerOut {
    Inbound(Stream),
    Opened(u64, Result<Stream, String>),
}

/// Per-connection handler: opens and accepts signalling streams.
#[derive(Default)]
pub struct Handler {
    to_open: VecDeque<u64>,
    events: VecDeque<HandlerOut>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = HandlerIn;
    type ToBehaviour = HandlerOut;
    type InboundProtocol = ReadyUpgrade<libp2p::StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<libp2p::StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = u64;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(SIGNALING_PROTOCOL), ())
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, u64, HandlerOut>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if let Some(id) = self.to_open.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(SIGNALING_PROTOCOL), id),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: HandlerIn) {
        match event {
            HandlerIn::Open(id) => self.to_open.push_back(id),
        }
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), u64>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol: stream, .. }) => {
                self.events.push_back(HandlerOut::Inbound(stream));
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol: stream, info: id }) => {
                self.events.push_back(HandlerOut::Opened(id, Ok(stream)));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: id, error }) => {
                let message = match error {
                    StreamUpgradeError::Timeout => "timed out opening the signalling stream".to_owned(),
                    StreamUpgradeError::NegotiationFailed => "remote does not speak /webrtc-signaling".to_owned(),
                    StreamUpgradeError::Io(e) => format!("signalling stream: {e}"),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                self.events.push_back(HandlerOut::Opened(id, Err(message)));
            }
            _ => {}
        }
    }
}
