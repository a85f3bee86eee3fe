//! Raw libp2p streams for Shoal's own protocols (pieces, bulk, diagnostics).
//!
//! Like `libp2p-stream`, but fit for a swarm where peers open several streams at once:
//! inbound streams are handed over on an unbounded queue (libp2p-stream's queue holds one
//! and drops the rest), and outbound streams go over the peer's direct WebRTC connection
//! when there is one (never over a relayed circuit, which only carries signalling and is
//! capped at a few KB) unless asked otherwise.

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
    requests: mpsc::UnboundedSender<OpenRequest>,
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
        self.requests
            .unbounded_send(OpenRequest { peer, protocol, relayed_ok, reply })
            .map_err(|_| OpenError::Stopped)?;
        stream.await.map_err(|_| OpenError::Stopped)?
    }
}

/// Inbound streams of every accepted protocol.
pub(crate) type Incoming = mpsc::UnboundedReceiver<(PeerId, StreamProtocol, Stream)>;

/// See the module docs.
pub(crate) struct Behaviour {
    protocols: Vec<StreamProtocol>,
    inbound: mpsc::UnboundedSender<(PeerId, StreamProtocol, Stream)>,
    requests: mpsc::UnboundedReceiver<OpenRequest>,
    /// Connections by peer, with whether each is relayed.
    connections: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    /// Open requests handed to a handler, by id, with the connection each went to.
    waiting: HashMap<u64, (ConnectionId, OpenReply)>,
    next_id: u64,
    queued: VecDeque<ToSwarm<Infallible, HandlerIn>>,
}

impl Behaviour {
    /// A behaviour accepting `protocols`, with its control and inbound queue.
    pub(crate) fn new(protocols: Vec<StreamProtocol>) -> (Self, Control, Incoming) {
        let (inbound, incoming) = mpsc::unbounded();
        let (requests_tx, requests) = mpsc::unbounded();
        let behaviour = Self {
            protocols,
            inbound,
            requests,
            connections: HashMap::new(),
            waiting: HashMap::new(),
            next_id: 0,
            queued: VecDeque::new(),
        };
        (behaviour, Control { requests: requests_tx }, incoming)
    }

    fn on_request(&mut self, request: OpenRequest) {
        let candidates = self.connections.get(&request.peer);
        let connection = candidates.and_then(|c| {
            c.iter().find(|(_, relayed)| !relayed).or_else(|| c.iter().find(|_| request.relayed_ok)).map(|(id, _)| *id)
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

    fn on_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        remote: &Multiaddr,
        local: Option<&Multiaddr>,
    ) {
        let relayed = shoal_webrtc::addr::is_relayed(remote) && !shoal_webrtc::addr::is_webrtc(remote)
            || local.is_some_and(shoal_webrtc::addr::is_relayed);
        self.connections.entry(peer).or_default().push((connection, relayed));
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.on_established(peer, connection_id, remote_addr, Some(local_addr));
        Ok(Handler::new(peer, self.protocols.clone(), self.inbound.clone()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.on_established(peer, connection_id, addr, None);
        Ok(Handler::new(peer, self.protocols.clone(), self.inbound.clone()))
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

    fn on_connection_handler_event(&mut self, _peer: PeerId, _connection: ConnectionId, event: THandlerOutEvent<Self>) {
        let HandlerOut { id, result } = event;
        if let Some((_, reply)) = self.waiting.remove(&id) {
            let _ = reply.send(result);
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

/// The outcome of request `id`.
#[derive(Debug)]
pub(crate) struct HandlerOut {
    id: u64,
    result: Result<Stream, OpenError>,
}

/// Accepts the protocols on one connection and opens the streams asked for.
pub(crate) struct Handler {
    peer: PeerId,
    protocols: Vec<StreamProtocol>,
    inbound: mpsc::UnboundedSender<(PeerId, StreamProtocol, Stream)>,
    to_open: VecDeque<HandlerIn>,
    events: VecDeque<HandlerOut>,
}

impl Handler {
    fn new(
        peer: PeerId,
        protocols: Vec<StreamProtocol>,
        inbound: mpsc::UnboundedSender<(PeerId, StreamProtocol, Stream)>,
    ) -> Self {
        Self { peer, protocols, inbound, to_open: VecDeque::new(), events: VecDeque::new() }
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
                let _ = self.inbound.unbounded_send((self.peer, protocol, stream));
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol: (stream, _), info: id }) => {
                self.events.push_back(HandlerOut { id, result: Ok(stream) });
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: id, error }) => {
                let error = match error {
                    StreamUpgradeError::Timeout => OpenError::Timeout,
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Io(e) => OpenError::Io(e.to_string()),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                self.events.push_back(HandlerOut { id, result: Err(error) });
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
