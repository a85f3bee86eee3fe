//! libp2p's ping, with a fix for answering pings on `/webrtc-direct`.
//!
//! libp2p-ping 0.48's handler answers an inbound ping, stores the future that waits for
//! the next one, and returns `Pending` without polling it, so that future has no waker.
//! Over yamux any frame wakes the whole connection and the handler is polled again; over
//! libp2p-webrtc each data channel wakes only its own reader, so nothing polls the
//! handler until some other event reaches the connection, and a page's next ping on the
//! reused stream waits seconds (measured: pings every second stalled after two or three;
//! before pages checked the node every second, the 8 s ping timeout hid it). The
//! wrapper polls the handler once more whenever it returns `Pending`, which registers
//! the new future's waker. Reported upstream as: "ping handler: poll the new inbound
//! future after answering a ping".

use std::task::{Context, Poll};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    ping,
    swarm::{
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
        SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, handler::ConnectionEvent,
    },
};

/// [`ping::Behaviour`] whose handlers are [`Repoll`]ed.
pub struct Behaviour(ping::Behaviour);

impl Behaviour {
    pub fn new(config: ping::Config) -> Self {
        Self(ping::Behaviour::new(config))
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Repoll<THandler<ping::Behaviour>>;
    type ToSwarm = ping::Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0.handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr).map(Repoll)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0.handle_established_outbound_connection(connection_id, peer, addr, role_override, port_use).map(Repoll)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.0.on_swarm_event(event);
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, connection: ConnectionId, event: THandlerOutEvent<Self>) {
        self.0.on_connection_handler_event(peer, connection, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.0.poll(cx)
    }
}

/// A handler polled a second time when it first says `Pending` (see the module docs).
pub struct Repoll<H>(H);

impl<H: ConnectionHandler> ConnectionHandler for Repoll<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.0.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.0.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>> {
        match self.0.poll(cx) {
            Poll::Pending => self.0.poll(cx),
            ready => ready,
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.0.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.0.on_behaviour_event(event);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        self.0.on_connection_event(event);
    }
}
