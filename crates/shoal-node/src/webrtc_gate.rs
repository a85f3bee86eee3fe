//! Admission of inbound `/webrtc-direct` handshakes, around a leak in libp2p-webrtc.
//!
//! libp2p-webrtc 0.10 turns the first STUN binding request from a new source address
//! into an inbound upgrade, creates an `RTCPeerConnection` when that upgrade is first
//! polled, and never closes it if the handshake fails: one file descriptor (an mDNS
//! socket) and 16–90 KiB stay behind per failed handshake, for the life of the process.
//! The source address is spoofable, so one datagram costs an attacker nothing and the
//! node a file descriptor. (README, "Known issues", has the upstream details.)
//!
//! An upgrade the swarm never polls creates nothing, and a connection denied in
//! `handle_pending_inbound_connection` is dropped unpolled. So this behaviour decides,
//! before the first poll, which WebRTC handshakes may start:
//! - at most `max_in_flight` at once (each ends within the handshake timeout);
//! - at most `rate` per second on average, in bursts of `burst` (a token bucket);
//! - with a second such budget for networks (IPv4 /24, IPv6 /64) where a handshake
//!   succeeded in the last hour: a flood from spoofed addresses exhausts the first one
//!   and barely touches the second, so viewers behind networks the node has seen before
//!   keep connecting (a network seen for the first time during a flood waits);
//! - and it counts those that fail — each one leaked. Past `leak_budget` it reports
//!   [`Event::LeakBudgetSpent`] once: the node then exits so that its supervisor
//!   restarts it with its memory and descriptors back, rather than running on until
//!   HTTP and WebSocket fail for lack of descriptors.
//!
//! It must come after every behaviour that may deny a pending connection (a connection
//! denied after it was admitted here would be counted as a failed handshake).

use std::{
    collections::{HashMap, HashSet},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    multiaddr::Protocol,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm, dummy,
    },
};
use prometheus_client::metrics::counter::Counter;

use crate::{ip_limits::ip_of, membership::Network};

/// How WebRTC handshakes are admitted.
#[derive(Debug, Clone)]
pub struct GateConfig {
    pub max_in_flight: usize,
    pub rate: f64,
    pub burst: f64,
    /// Failed handshakes (each a leaked peer connection) before [`Event::LeakBudgetSpent`].
    pub leak_budget: u64,
}

/// Why a handshake was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum GateClosed {
    #[error("{0} WebRTC handshakes already in progress")]
    InFlight(usize),
    #[error("more than {0} new WebRTC handshakes per second")]
    Rate(f64),
}

#[derive(Debug)]
pub enum Event {
    /// As many handshakes failed as the budget allows to leak: restart the process.
    LeakBudgetSpent { failed: u64 },
}

/// One admission budget: handshakes in flight, and a token bucket.
struct Pool {
    in_flight: HashSet<ConnectionId>,
    tokens: f64,
    refilled: Instant,
}

impl Pool {
    fn new(config: &GateConfig, now: Instant) -> Self {
        Self { in_flight: HashSet::new(), tokens: config.burst, refilled: now }
    }

    fn admit(&mut self, config: &GateConfig, now: Instant) -> Result<(), GateClosed> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * config.rate).min(config.burst);
        if self.in_flight.len() >= config.max_in_flight {
            return Err(GateClosed::InFlight(config.max_in_flight));
        }
        if self.tokens < 1.0 {
            return Err(GateClosed::Rate(config.rate));
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// How long a network stays known after a successful handshake from it.
const KNOWN_FOR: Duration = Duration::from_secs(3600);
/// Most networks remembered (the oldest are forgotten first).
const MAX_KNOWN: usize = 100_000;

/// See the module docs.
pub struct Behaviour {
    config: GateConfig,
    /// Networks not seen succeeding lately / seen.
    strangers: Pool,
    known_pool: Pool,
    known: HashMap<Network, Instant>,
    failed: u64,
    failed_metric: Counter,
    reported: bool,
    event: Option<Event>,
}

fn is_webrtc_direct(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::WebRTCDirect))
}

impl Behaviour {
    pub fn new(config: GateConfig, failed_metric: Counter) -> Self {
        let now = Instant::now();
        Self {
            strangers: Pool::new(&config, now),
            known_pool: Pool::new(&config, now),
            config,
            known: HashMap::new(),
            failed: 0,
            failed_metric,
            reported: false,
            event: None,
        }
    }

    fn is_known(&self, addr: &Multiaddr, now: Instant) -> bool {
        ip_of(addr)
            .and_then(|ip| self.known.get(&Network::of(ip)))
            .is_some_and(|seen| now.saturating_duration_since(*seen) <= KNOWN_FOR)
    }

    fn remember(&mut self, addr: &Multiaddr, now: Instant) {
        let Some(ip) = ip_of(addr) else { return };
        if self.known.len() >= MAX_KNOWN {
            self.known.retain(|_, seen| now.saturating_duration_since(*seen) <= KNOWN_FOR);
            if self.known.len() >= MAX_KNOWN {
                self.known.clear();
            }
        }
        self.known.insert(Network::of(ip), now);
    }

    /// Ends handshake `id`; true if it was one of ours.
    fn finish(&mut self, id: ConnectionId) -> bool {
        self.strangers.in_flight.remove(&id) | self.known_pool.in_flight.remove(&id)
    }

    /// Handshakes that failed so far (each leaked a peer connection upstream).
    #[cfg(test)]
    pub fn failed(&self) -> u64 {
        self.failed
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        if !is_webrtc_direct(remote_addr) {
            return Ok(());
        }
        let now = Instant::now();
        let pool = if self.is_known(remote_addr, now) { &mut self.known_pool } else { &mut self.strangers };
        pool.admit(&self.config, now).map_err(ConnectionDenied::new)?;
        pool.in_flight.insert(connection_id);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.finish(connection_id) {
            self.remember(remote_addr, Instant::now());
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
        if let FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) = event
            && self.finish(connection_id)
        {
            self.failed += 1;
            self.failed_metric.inc();
            if self.failed >= self.config.leak_budget && !self.reported {
                self.reported = true;
                self.event = Some(Event::LeakBudgetSpent { failed: self.failed });
            }
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.event.take() {
            Some(event) => Poll::Ready(ToSwarm::GenerateEvent(event)),
            None => Poll::Pending,
        }
    }
}

/// The process's soft limit on open files, from `/proc/self/limits` (Linux); `None`
/// elsewhere or when unlimited.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A failed handshake's descriptor stays open for good: by default the budget is half the
/// descriptors the process may open (the rest serve HTTP, WebSocket and live peers).
pub fn default_leak_budget() -> u64 {
    open_files_limit().map_or(512, |limit| (limit / 2).max(64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_in_flight: usize, rate: f64, burst: f64, leak_budget: u64) -> Behaviour {
        Behaviour::new(GateConfig { max_in_flight, rate, burst, leak_budget }, Counter::default())
    }

    fn webrtc(port: u16) -> Multiaddr {
        format!("/ip4/10.0.0.1/udp/{port}/webrtc-direct").parse().unwrap()
    }

    fn local() -> Multiaddr {
        "/ip4/0.0.0.0/udp/9090/webrtc-direct".parse().unwrap()
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_holds() {
        let mut g = gate(1000, 10.0, 5.0, 100);
        let admitted = (0..20)
            .filter(|i| {
                g.handle_pending_inbound_connection(ConnectionId::new_unchecked(*i), &local(), &webrtc(1)).is_ok()
            })
            .count();
        assert_eq!(admitted, 5, "the burst, then nothing until tokens come back");
        g.strangers.refilled -= Duration::from_millis(500);
        let later = (20..40)
            .filter(|i| {
                g.handle_pending_inbound_connection(ConnectionId::new_unchecked(*i), &local(), &webrtc(1)).is_ok()
            })
            .count();
        assert_eq!(later, 5, "half a second at 10/s");
    }

    #[test]
    fn in_flight_handshakes_are_capped_and_given_back() {
        let mut g = gate(2, 1000.0, 1000.0, 100);
        let id = ConnectionId::new_unchecked;
        assert!(g.handle_pending_inbound_connection(id(1), &local(), &webrtc(1)).is_ok());
        assert!(g.handle_pending_inbound_connection(id(2), &local(), &webrtc(2)).is_ok());
        assert!(g.handle_pending_inbound_connection(id(3), &local(), &webrtc(3)).is_err());
        // One succeeds, one fails: both slots come back; only the failure counts.
        let peer = PeerId::random();
        assert!(g.handle_established_inbound_connection(id(1), peer, &local(), &webrtc(1)).is_ok());
        g.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
            local_addr: &local(),
            send_back_addr: &webrtc(2),
            error: &libp2p::swarm::ListenError::Aborted,
            connection_id: id(2),
            peer_id: None,
        }));
        assert_eq!(g.failed(), 1);
        // 10.0.0.0/24 is known now: its handshakes count against the known networks' budget.
        assert!(g.handle_pending_inbound_connection(id(4), &local(), &webrtc(4)).is_ok());
        assert!(g.handle_pending_inbound_connection(id(5), &local(), &webrtc(5)).is_ok());
        assert!(g.handle_pending_inbound_connection(id(6), &local(), &webrtc(6)).is_err());
    }

    #[test]
    fn a_flood_from_strangers_leaves_room_for_known_networks() {
        let mut g = gate(4, 1000.0, 1000.0, 100);
        let id = ConnectionId::new_unchecked;
        let known: Multiaddr = "/ip4/192.0.2.7/udp/5000/webrtc-direct".parse().unwrap();
        g.handle_pending_inbound_connection(id(1), &local(), &known).unwrap();
        g.handle_established_inbound_connection(id(1), PeerId::random(), &local(), &known).unwrap();
        // Spoofed sources everywhere else fill the strangers' budget...
        let spoofed = (0..100u16)
            .filter(|i| {
                let addr: Multiaddr = format!("/ip4/198.51.{i}.9/udp/{}/webrtc-direct", 1000 + i).parse().unwrap();
                g.handle_pending_inbound_connection(id(100 + usize::from(*i)), &local(), &addr).is_ok()
            })
            .count();
        assert_eq!(spoofed, 4);
        // ...and a new tab from the known /24 still gets in.
        let same_network: Multiaddr = "/ip4/192.0.2.99/udp/6000/webrtc-direct".parse().unwrap();
        assert!(g.handle_pending_inbound_connection(id(2), &local(), &same_network).is_ok());
    }

    #[test]
    fn other_transports_pass_and_the_budget_is_reported_once() {
        let mut g = gate(10, 1000.0, 1000.0, 2);
        let ws: Multiaddr = "/ip4/10.0.0.1/tcp/4000/ws".parse().unwrap();
        for i in 0..100 {
            assert!(g.handle_pending_inbound_connection(ConnectionId::new_unchecked(1000 + i), &local(), &ws).is_ok());
        }
        for i in 0..3 {
            let id = ConnectionId::new_unchecked(i);
            g.handle_pending_inbound_connection(id, &local(), &webrtc(1)).unwrap();
            g.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
                local_addr: &local(),
                send_back_addr: &webrtc(1),
                error: &libp2p::swarm::ListenError::Aborted,
                connection_id: id,
                peer_id: None,
            }));
        }
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(g.poll(&mut cx), Poll::Ready(ToSwarm::GenerateEvent(Event::LeakBudgetSpent { failed: 2 }))));
        assert!(g.poll(&mut cx).is_pending());
    }
}
