//! Prometheus metrics of the node, served at `/metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
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
#[derive(Default)]
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
    /// Refusals by reason: connection limits, membership refusals, HTTP limits.
    pub refusals: Family<ReasonLabels, Counter>,
    pub http_refused_total: Counter,
    pub http_refused_per_ip: Counter,
    /// Inbound `/webrtc-direct` handshakes that failed (each leaks upstream).
    pub webrtc_handshakes_failed: Counter,
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
        r.register(
            "http_refused_per_ip",
            "HTTP connections closed at once: their address held too many",
            self.http_refused_per_ip.clone(),
        );
    }
}
