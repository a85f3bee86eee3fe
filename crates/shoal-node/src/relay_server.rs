//! The circuit relay v2 server, sized for signalling, with limits that mean what their
//! flags say and an exact count of the reservations it holds.
//!
//! libp2p-relay's rate limiters are token buckets whose `interval` is the time to refill
//! *one* token, and its defaults stay in place when more are added; so the configuration
//! here starts from none and turns "N per minute" into a bucket of N refilled at N per
//! minute. Its events carry no connection id, and `ReservationClosed` is reported for
//! every closing connection whether it held a reservation or not, so [`Relay`] wraps the
//! behaviour to see which connection each event came from and count reservations
//! exactly.

use std::{
    collections::{HashSet, VecDeque},
    num::NonZeroU32,
    task::{Context, Poll},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    relay,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm,
    },
};

/// A relay configuration with only the given rate limits, each "`n` per minute": a
/// bucket of `n`, refilled at `n` per minute. Reservation renewals draw on the same
/// budget (libp2p charges every reservation request), so a per-IP budget must leave room
/// for the renewals of every browser behind one address: they renew about every 45 min.
pub fn config(
    base: relay::Config,
    reservations_per_ip: NonZeroU32,
    circuits_per_peer: NonZeroU32,
    circuits_per_ip: NonZeroU32,
) -> relay::Config {
    let per_minute = |n: NonZeroU32| Duration::from_secs(60) / n.get();
    relay::Config { reservation_rate_limiters: Vec::new(), circuit_src_rate_limiters: Vec::new(), ..base }
        .reservation_rate_per_ip(reservations_per_ip, per_minute(reservations_per_ip))
        .circuit_src_per_peer(circuits_per_peer, per_minute(circuits_per_peer))
        .circuit_src_per_ip(circuits_per_ip, per_minute(circuits_per_ip))
}

/// The relay behaviour, counting the connections that hold a reservation.
pub struct Relay {
    inner: relay::Behaviour,
    reserved: HashSet<ConnectionId>,
    queued: VecDeque<ToSwarm<relay::Event, THandlerInEvent<relay::Behaviour>>>,
}

impl Relay {
    pub fn new(local: PeerId, config: relay::Config) -> Self {
        Self { inner: relay::Behaviour::new(local, config), reserved: HashSet::new(), queued: VecDeque::new() }
    }

    pub fn set_status(&mut self, status: Option<relay::Status>) {
        self.inner.set_status(status);
    }

    /// Reservations held now.
    pub fn reservations(&self) -> usize {
        self.reserved.len()
    }

    /// Takes what the inner behaviour queued in answer to an event of `connection`, so
    /// reservation events can be tied to it. The inner behaviour only ever pops its own
    /// queue in `poll`; the swarm polls us again after every connection event.
    fn drain(&mut self, connection: Option<ConnectionId>) {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        while let Poll::Ready(event) = self.inner.poll(&mut cx) {
            if let (Some(id), ToSwarm::GenerateEvent(e)) = (connection, &event) {
                match e {
                    relay::Event::ReservationReqAccepted { .. } => {
                        self.reserved.insert(id);
                    }
                    relay::Event::ReservationTimedOut { .. } => {
                        self.reserved.remove(&id);
                    }
                    _ => {}
                }
            }
            self.queued.push_back(event);
        }
    }
}

impl NetworkBehaviour for Relay {
    type ConnectionHandler = THandler<relay::Behaviour>;
    type ToSwarm = relay::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(id, peer, addresses, effective_role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            self.reserved.remove(&closed.connection_id);
        }
        self.inner.on_swarm_event(event);
        self.drain(None);
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, connection: ConnectionId, event: THandlerOutEvent<Self>) {
        self.inner.on_connection_handler_event(peer, connection, event);
        self.drain(Some(connection));
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(event) = self.queued.pop_front() {
            return Poll::Ready(event);
        }
        self.inner.poll(cx)
    }
}
