//! Raw libp2p streams for Shoal's own protocols (pieces, gossip, bulk, diagnostics).
//!
//! Like `libp2p-stream`, but fit for a swarm where peers open several streams at once:
//! inbound streams reach the runtime as swarm events (libp2p-stream's queue holds one and
//! drops the rest), and outbound streams go over the peer's direct WebRTC connection
//! when there is one (never over a relayed circuit, which only carries signalling and is
//! capped at a few KB) unless asked otherwise. Open requests wait on a bounded queue.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    future::{Ready, ready},
    task::{Context, Poll},
};

use futures::{
    StreamExt,
    channel::{mpsc, oneshot},
};
use libp2p::{
    InboundUpgrade, Multiaddr, OutboundUpgrade, PeerId, Stream, StreamProtocol,
    core::{Endpoint, UpgradeInfo, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
        NotifyHandler, StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
        handler::{ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound},
    },
};

/// Why an outbound stream could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("no direct connection to {0}")]
    NotConnected(PeerId),
    /// The peer negotiated no protocol we offered: it is not a Shoal peer (a js-libp2p
    /// page, say), or an older one. Asking again on this connection is pointless.
    #[error("the peer does not speak this protocol")]
    Unsupported,
    #[error("timed out opening a stream")]
    Timeout,
    #[error("stream I/O: {0}")]
    Io(String),
    #[error("the peer is stopped")]
    Stopped,
}

type OpenReply = oneshot::Sender<Result<Stream, OpenError>>;

/// Why an inbound direct connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("already connected to maxPeers ({0}) peers")]
struct TooManyPeers(usize);

/// Open requests waiting for the swarm (each writer opens one stream).
const OPEN_QUEUE: usize = 64;

/// An inbound stream, as a swarm event.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub peer: PeerId,
    pub protocol: StreamProtocol,
    pub stream: Stream,
    /// It came over a relayed circuit (signalling diagnostics only; pieces and gossip
    /// are accepted over direct connections alone).
    pub relayed: bool,
}

struct OpenRequest {
    peer: PeerId,
    protocol: StreamProtocol,
    /// Allow a relayed connection (diagnostics only).
    relayed_ok: bool,
    reply: OpenReply,
}

/// Opens outbound streams; cheap to clone.
#[derive(Clone)]
pub(crate) struct Control {
    requests: mpsc::Sender<OpenRequest>,
}

impl Control {
    /// A stream speaking `protocol` to `peer`, over its direct connection.
    pub(crate) async fn open(&self, peer: PeerId, protocol: StreamProtocol) -> Result<Stream, OpenError> {
        self.open_via(peer, protocol, false).await
    }

    /// Like [`Control::open`], but a relayed connection will do (diagnostics).
    pub(crate) async fn open_via(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        relayed_ok: bool,
    ) -> Result<Stream, OpenError> {
        let (reply, stream) = oneshot::channel();
        let mut requests = self.requests.clone();
        futures::SinkExt::send(&mut requests, OpenRequest { peer, protocol, relayed_ok, reply })
            .await
            .map_err(|_| OpenError::Stopped)?;
        stream.await.map_err(|_| OpenError::Stopped)?
    }
}

/// See the module docs.
pub(crate) struct Behaviour {
    protocols: Vec<StreamProtocol>,
    requests: mpsc::Receiver<OpenRequest>,
    /// Connections by peer, with whether each is relayed.
    connections: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    /// Open requests handed to a handler, by id, with the connection each went to.
    waiting: HashMap<u64, (ConnectionId, OpenReply)>,
    next_id: u64,
    queued: VecDeque<ToSwarm<Inbound, HandlerIn>>,
    /// Most peers with a direct connection; inbound ones past it are refused.
    max_direct: usize,
}

impl Behaviour {
    /// A behaviour accepting `protocols` and at most `max_direct` directly connected
    /// peers (the page's `maxPeers`: our own dials stop there, inbound ones are refused),
    /// with its control.
    pub(crate) fn new(protocols: Vec<StreamProtocol>, max_direct: usize) -> (Self, Control) {
        let (requests_tx, requests) = mpsc::channel(OPEN_QUEUE);
        let behaviour = Self {
            protocols,
            requests,
            connections: HashMap::new(),
            waiting: HashMap::new(),
            next_id: 0,
            queued: VecDeque::new(),
            max_direct,
        };
        (behaviour, Control { requests: requests_tx })
    }

    fn on_request(&mut self, request: OpenRequest) {
        let candidates = self.connections.get(&request.peer);
        // A direct connection if there is one; else, when allowed, the newest relayed one
        // (a diagnostic dial just opened it; older ones may be closing).
        let connection = candidates.and_then(|c| {
            c.iter()
                .find(|(_, relayed)| !relayed)
                .or_else(|| c.iter().rev().find(|_| request.relayed_ok))
                .map(|(id, _)| *id)
        });
        let Some(connection) = connection else {
            let _ = request.reply.send(Err(OpenError::NotConnected(request.peer)));
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, (connection, request.reply));
        self.queued.push_back(ToSwarm::NotifyHandler {
            peer_id: request.peer,
            handler: NotifyHandler::One(connection),
            event: HandlerIn { id, protocol: request.protocol },
        });
    }

    fn is_relayed(&self, peer: &PeerId, connection: ConnectionId) -> bool {
        self.connections.get(peer).and_then(|c| c.iter().find(|(id, _)| *id == connection)).is_none_or(|(_, r)| *r)
    }

    fn direct_peers(&self) -> usize {
        self.connections.values().filter(|c| c.iter().any(|(_, relayed)| !relayed)).count()
    }

    fn on_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        remote: &Multiaddr,
        local: Option<&Multiaddr>,
    ) -> Result<(), ConnectionDenied> {
        let relayed = shoal_webrtc::addr::is_relayed(remote) && !shoal_webrtc::addr::is_webrtc(remote)
            || local.is_some_and(shoal_webrtc::addr::is_relayed);
        let inbound_direct = local.is_some() && !relayed && shoal_webrtc::addr::is_webrtc(remote);
        let known = self.connections.get(&peer).is_some_and(|c| c.iter().any(|(_, r)| !r));
        if inbound_direct && !known && self.direct_peers() >= self.max_direct {
            return Err(ConnectionDenied::new(TooManyPeers(self.max_direct)));
        }
        self.connections.entry(peer).or_default().push((connection, relayed));
        Ok(())
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Inbound;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.on_established(peer, connection_id, remote_addr, Some(local_addr))?;
        Ok(Handler::new(self.protocols.clone()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let _ = self.on_established(peer, connection_id, addr, None);
        Ok(Handler::new(self.protocols.clone()))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let FromSwarm::ConnectionClosed(closed) = event else { return };
        if let Some(list) = self.connections.get_mut(&closed.peer_id) {
            list.retain(|(id, _)| *id != closed.connection_id);
            if list.is_empty() {
                self.connections.remove(&closed.peer_id);
            }
        }
        // Requests sent to a connection that is gone get no answer from its handler.
        for (_, (_, reply)) in self.waiting.extract_if(|_, (connection, _)| *connection == closed.connection_id) {
            let _ = reply.send(Err(OpenError::NotConnected(closed.peer_id)));
        }
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, connection: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {
            HandlerOut::Opened { id, result } => {
                if let Some((_, reply)) = self.waiting.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            HandlerOut::Inbound { protocol, stream } => {
                let relayed = self.is_relayed(&peer, connection);
                self.queued.push_back(ToSwarm::GenerateEvent(Inbound { peer, protocol, stream, relayed }));
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

/// Open a stream for request `id`.
#[derive(Debug)]
pub(crate) struct HandlerIn {
    id: u64,
    protocol: StreamProtocol,
}

/// What a connection's handler reports.
#[derive(Debug)]
pub(crate) enum HandlerOut {
    /// The outcome of open request `id`.
    Opened { id: u64, result: Result<Stream, OpenError> },
    /// The remote opened a stream.
    Inbound { protocol: StreamProtocol, stream: Stream },
}

/// Accepts the protocols on one connection and opens the streams asked for.
pub(crate) struct Handler {
    protocols: Vec<StreamProtocol>,
    to_open: VecDeque<HandlerIn>,
    events: VecDeque<HandlerOut>,
}

impl Handler {
    fn new(protocols: Vec<StreamProtocol>) -> Self {
        Self { protocols, to_open: VecDeque::new(), events: VecDeque::new() }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = HandlerIn;
    type ToBehaviour = HandlerOut;
    type InboundProtocol = Protocols;
    type OutboundProtocol = Protocols;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = u64;

    fn listen_protocol(&self) -> SubstreamProtocol<Protocols, ()> {
        SubstreamProtocol::new(Protocols(self.protocols.clone()), ())
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Protocols, u64, HandlerOut>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if let Some(HandlerIn { id, protocol }) = self.to_open.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(Protocols(vec![protocol]), id),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: HandlerIn) {
        self.to_open.push_back(event);
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Protocols, Protocols, (), u64>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol), ..
            }) => {
                self.events.push_back(HandlerOut::Inbound { protocol, stream });
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol: (stream, _), info: id }) => {
                self.events.push_back(HandlerOut::Opened { id, result: Ok(stream) });
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: id, error }) => {
                let error = match error {
                    StreamUpgradeError::Timeout => OpenError::Timeout,
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Io(e) => OpenError::Io(e.to_string()),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                self.events.push_back(HandlerOut::Opened { id, result: Err(error) });
            }
            _ => {}
        }
    }
}

/// Negotiates one of a set of protocols and hands the raw stream over.
#[derive(Debug, Clone)]
pub(crate) struct Protocols(Vec<StreamProtocol>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}
