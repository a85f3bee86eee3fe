//! Caps connections per remote IP address, pending (still in their handshake) and
//! established, so one host cannot take a node's whole connection budget
//! (libp2p's connection-limits counts per peer, and PeerIds are free).
//!
//! Every slot taken is given back exactly once: a pending slot when the connection is
//! established or fails (`ListenFailure`, which also follows a denial by any behaviour),
//! an established one when it closes. Established connections are counted on
//! `ConnectionEstablished`, which only a connection every behaviour accepted reaches.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{ConnectedPoint, Endpoint, transport::PortUse},
    multiaddr::Protocol,
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm, behaviour::ConnectionEstablished, dummy,
    },
};

/// The error a refused connection carries.
#[derive(Debug, thiserror::Error)]
pub enum TooManyFromIp {
    #[error("{ip} already has {limit} connections")]
    Established { ip: IpAddr, limit: usize },
    #[error("{ip} already has {limit} connections in their handshake")]
    Pending { ip: IpAddr, limit: usize },
}

/// See the module docs.
pub struct Behaviour {
    max_per_ip: usize,
    max_pending_per_ip: usize,
    pending: HashMap<ConnectionId, IpAddr>,
    established: HashMap<ConnectionId, IpAddr>,
    pending_by_ip: HashMap<IpAddr, usize>,
    established_by_ip: HashMap<IpAddr, usize>,
}

/// The remote IP of an address; `None` for relayed addresses (they name the relay, and
/// relayed connections are not counted).
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

fn count(map: &HashMap<IpAddr, usize>, ip: &IpAddr) -> usize {
    map.get(ip).copied().unwrap_or(0)
}

fn increment(map: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    *map.entry(ip).or_default() += 1;
}

fn decrement(map: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(c) = map.get_mut(&ip) {
        *c -= 1;
        if *c == 0 {
            map.remove(&ip);
        }
    }
}

impl Behaviour {
    pub fn new(max_per_ip: usize, max_pending_per_ip: usize) -> Self {
        Self {
            max_per_ip,
            max_pending_per_ip,
            pending: HashMap::new(),
            established: HashMap::new(),
            pending_by_ip: HashMap::new(),
            established_by_ip: HashMap::new(),
        }
    }

    fn release_pending(&mut self, id: ConnectionId) {
        if let Some(ip) = self.pending.remove(&id) {
            decrement(&mut self.pending_by_ip, ip);
        }
    }

    /// Connections counted now (pending, established).
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        (self.pending.len(), self.established.len())
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote_addr) else { return Ok(()) };
        let pending = count(&self.pending_by_ip, &ip);
        if pending >= self.max_pending_per_ip {
            return Err(ConnectionDenied::new(TooManyFromIp::Pending { ip, limit: self.max_pending_per_ip }));
        }
        if pending + count(&self.established_by_ip, &ip) >= self.max_per_ip {
            return Err(ConnectionDenied::new(TooManyFromIp::Established { ip, limit: self.max_per_ip }));
        }
        increment(&mut self.pending_by_ip, ip);
        self.pending.insert(connection_id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Only checked here; counted on `ConnectionEstablished`, which a connection that
        // another behaviour denies never reaches.
        self.release_pending(connection_id);
        if let Some(ip) = ip_of(remote_addr)
            && count(&self.established_by_ip, &ip) >= self.max_per_ip
        {
            return Err(ConnectionDenied::new(TooManyFromIp::Established { ip, limit: self.max_per_ip }));
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
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                connection_id,
                endpoint: ConnectedPoint::Listener { send_back_addr, .. },
                ..
            }) => {
                if let Some(ip) = ip_of(send_back_addr) {
                    increment(&mut self.established_by_ip, ip);
                    self.established.insert(connection_id, ip);
                }
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => self.release_pending(connection_id),
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                if let Some(ip) = self.established.remove(&connection_id) {
                    decrement(&mut self.established_by_ip, ip);
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::swarm::{ConnectionId, ListenError, behaviour::ListenFailure};

    fn addr(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/1234").parse().unwrap()
    }

    /// A connection another behaviour denies after this one accepted it gives its slot
    /// back (it used to leak one per refused attempt, locking a NATed office out).
    #[test]
    fn refused_attempts_leak_no_slot() {
        let mut limits = Behaviour::new(2, 2);
        let local = addr("10.0.0.1");
        for _ in 0..100 {
            let id = ConnectionId::new_unchecked(rand::random::<u32>() as usize);
            limits.handle_pending_inbound_connection(id, &local, &addr("192.0.2.7")).unwrap();
            let _ = limits.handle_established_inbound_connection(id, PeerId::random(), &local, &addr("192.0.2.7"));
            // A later behaviour denies it: the swarm reports a listen failure.
            let error = ListenError::Aborted;
            limits.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
                local_addr: &local,
                send_back_addr: &addr("192.0.2.7"),
                error: &error,
                connection_id: id,
                peer_id: None,
            }));
        }
        assert_eq!(limits.counts(), (0, 0));
        // The address can still connect.
        let id = ConnectionId::new_unchecked(7);
        assert!(limits.handle_pending_inbound_connection(id, &local, &addr("192.0.2.7")).is_ok());
    }

    #[test]
    fn pending_connections_are_capped_per_ip() {
        let mut limits = Behaviour::new(10, 3);
        let local = addr("10.0.0.1");
        for i in 0..3 {
            limits
                .handle_pending_inbound_connection(ConnectionId::new_unchecked(i), &local, &addr("192.0.2.8"))
                .unwrap();
        }
        assert!(
            limits
                .handle_pending_inbound_connection(ConnectionId::new_unchecked(9), &local, &addr("192.0.2.8"))
                .is_err()
        );
        assert!(
            limits
                .handle_pending_inbound_connection(ConnectionId::new_unchecked(10), &local, &addr("192.0.2.9"))
                .is_ok()
        );
    }
}
