//! Caps connections per remote IP address, so one host cannot take a node's whole
//! connection budget (libp2p's connection-limits counts per peer, and PeerIds are free).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    multiaddr::Protocol,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm, dummy,
    },
};

/// The error a refused connection carries.
#[derive(Debug, thiserror::Error)]
#[error("{ip} already has {limit} connections")]
pub struct TooManyFromIp {
    ip: IpAddr,
    limit: usize,
}

/// See the module docs.
pub struct Behaviour {
    limit: usize,
    established: HashMap<IpAddr, usize>,
    by_connection: HashMap<ConnectionId, IpAddr>,
}

impl Behaviour {
    pub fn new(limit: usize) -> Self {
        Self { limit, established: HashMap::new(), by_connection: HashMap::new() }
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    // A relayed address names the relay first; relayed connections are not counted.
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        if let Some(ip) = ip_of(remote_addr)
            && self.established.get(&ip).copied().unwrap_or(0) >= self.limit
        {
            return Err(ConnectionDenied::new(TooManyFromIp { ip, limit: self.limit }));
        }
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Some(ip) = ip_of(remote_addr) {
            let count = self.established.entry(ip).or_default();
            if *count >= self.limit {
                return Err(ConnectionDenied::new(TooManyFromIp { ip, limit: self.limit }));
            }
            *count += 1;
            self.by_connection.insert(connection_id, ip);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event
            && let Some(ip) = self.by_connection.remove(&closed.connection_id)
            && let Some(count) = self.established.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                self.established.remove(&ip);
            }
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
