//! Prometheus metrics of the node, served at `/metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Every metric the node exports.
pub struct Metrics {
    pub connections: Gauge,
    pub connected_peers: Gauge,
    pub swarms: Gauge,
    pub memberships: Gauge,
    pub membership_requests: Family<RequestLabels, Counter>,
    pub reservations: Gauge,
    pub reservation_requests: Family<OutcomeLabels, Counter>,
    pub circuits: Gauge,
    pub circuit_requests: Family<OutcomeLabels, Counter>,
    pub connection_errors: Counter,
    /// How pages' dials to other pages ended, as the pages report them.
    pub peer_connections: Family<OutcomeLabels, Counter>,
    /// Refusals by reason: connection limits, membership refusals, HTTP limits.
    pub refusals: Family<ReasonLabels, Counter>,
    pub http_refused_total: Counter,
    pub http_refused_per_ip: Counter,
    /// Inbound `/webrtc-direct` handshakes that failed (each leaks upstream).
    pub webrtc_handshakes_failed: Counter,
    /// Nodes federated with directly.
    pub federation_peers: Gauge,
    /// Other nodes known, directly or not.
    pub federation_nodes: Gauge,
    /// (peer, swarm) memberships of other nodes held here.
    pub federation_memberships: Gauge,
    /// Seconds from a federation message's sending to its arrival.
    pub federation_lag: Histogram,
    /// Other nodes' memberships not held (the cap was reached).
    pub federation_refused: Counter,
    /// 1 while the node drains before exiting.
    pub draining: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: Gauge::default(),
            connected_peers: Gauge::default(),
            swarms: Gauge::default(),
            memberships: Gauge::default(),
            membership_requests: Family::default(),
            reservations: Gauge::default(),
            reservation_requests: Family::default(),
            circuits: Gauge::default(),
            circuit_requests: Family::default(),
            connection_errors: Counter::default(),
            peer_connections: Family::default(),
            refusals: Family::default(),
            http_refused_total: Counter::default(),
            http_refused_per_ip: Counter::default(),
            webrtc_handshakes_failed: Counter::default(),
            federation_peers: Gauge::default(),
            federation_nodes: Gauge::default(),
            federation_memberships: Gauge::default(),
            federation_lag: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            federation_refused: Counter::default(),
            draining: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("shoal");
        r.register("connections", "Open connections", self.connections.clone());
        r.register("connected_peers", "Peers with at least one connection", self.connected_peers.clone());
        r.register("swarms", "Swarms with at least one member here", self.swarms.clone());
        r.register("memberships", "(peer, swarm) memberships held", self.memberships.clone());
        r.register("membership_requests", "Membership requests by kind and outcome", self.membership_requests.clone());
        r.register("relay_reservations", "Active relay reservations", self.reservations.clone());
        r.register("relay_reservation_requests", "Reservation requests by outcome", self.reservation_requests.clone());
        r.register("relay_circuits", "Open relayed circuits", self.circuits.clone());
        r.register("relay_circuit_requests", "Circuit requests by outcome", self.circuit_requests.clone());
        r.register("connection_errors", "Failed incoming or outgoing connections", self.connection_errors.clone());
        r.register(
            "peer_connections",
            "Pages' dials to other pages, as the pages report them: connected by candidate type (host, srflx, relay) or failed by reason (ice_failed, signalling_timeout, refused, other)",
            self.peer_connections.clone(),
        );
        r.register("refusals", "Requests and connections refused, by reason", self.refusals.clone());
        r.register(
            "http_refused_full",
            "HTTP connections closed at once: the server was full",
            self.http_refused_total.clone(),
        );
        r.register(
            "webrtc_handshakes_failed",
            "Inbound /webrtc-direct handshakes that failed (each leaks a descriptor in libp2p-webrtc 0.10)",
            self.webrtc_handshakes_failed.clone(),
        );
        r.register("federation_peers", "Nodes federated with directly", self.federation_peers.clone());
        r.register("federation_nodes", "Other nodes of the federation known", self.federation_nodes.clone());
        r.register(
            "federation_memberships",
            "(peer, swarm) memberships of other nodes held here",
            self.federation_memberships.clone(),
        );
        r.register(
            "federation_lag_seconds",
            "Time from a federation message's sending to its arrival (node clocks)",
            self.federation_lag.clone(),
        );
        r.register(
            "federation_refused",
            "Other nodes' memberships not held: --max-memberships x4 reached",
            self.federation_refused.clone(),
        );
        r.register("draining", "1 while the node closes its connections before exiting", self.draining.clone());
        r.register(
            "http_refused_per_ip",
            "HTTP connections closed at once: their address held too many",
            self.http_refused_per_ip.clone(),
        );
    }
}
