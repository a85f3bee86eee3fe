//! The Shoal signalling node.
//!
//! Browsers reach it over `/webrtc-direct` (no TLS certificate needed: they check the
//! certhash in its address) or WebSocket. It does three things for them and nothing else:
//! - holds circuit relay v2 reservations, so browsers can be dialled through it, with
//!   circuits capped in time and bytes to what a WebRTC handshake needs;
//! - keeps swarm membership (`/shoal/membership/1`, see `shoal-proto`), shared with
//!   the other nodes of a federation (`federation`);
//! - serves `/.well-known/shoal.json`, `/metrics`, `/healthz`, and the demo page.
//!
//! On SIGTERM it drains: `/healthz` turns 503, and browser connections are closed a
//! few at a time over `--drain-secs` (their pages move to other nodes) before it exits.
//!
//! The binary (`main.rs`) is a thin wrapper over [`Node`].

pub mod config;
pub mod dash;
mod dash_live;
mod demo;
mod federation;
mod fmp4;
mod http;
mod ice;
mod identity;
mod ip_limits;
mod live_loop;
pub mod membership;
mod metrics;
mod outcome_reports;
mod ping_repoll;
pub mod publish;
mod relay_server;
mod webrtc_gate;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, connection_limits,
    core::{muxing::StreamMuxerBox, transport::ListenerId, upgrade::Version},
    identify,
    identity::Keypair,
    multiaddr::Protocol,
    noise, ping, relay,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, websocket, yamux,
};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use rand::SeedableRng;
use shoal_proto::{MembershipRequest, MembershipResponse, WELL_KNOWN_VERSION, WellKnown};
use thiserror::Error;

pub use config::Config;
use metrics::{Metrics, OutcomeLabels, ReasonLabels, RequestLabels};

/// Why the node could not start or stopped.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("identity file {}: {reason}", path.display())]
    Identity { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    #[error("setting up transports: {0}")]
    Transport(String),
    /// See `webrtc_gate`: a supervisor should restart the node.
    #[error("{0} WebRTC handshakes failed and leaked a descriptor each (libp2p-webrtc 0.10); restart to reclaim them")]
    LeakBudgetSpent(u64),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    ip_limits: ip_limits::Behaviour,
    // After every behaviour that may deny a pending connection (see its docs).
    webrtc_gate: webrtc_gate::Behaviour,
    relay: relay_server::Relay,
    identify: identify::Behaviour,
    ping: ping_repoll::Behaviour,
    membership: request_response::json::Behaviour<MembershipRequest, MembershipResponse>,
}

/// A running signalling node. See the crate docs.
pub struct Node {
    swarm: Swarm<Behaviour>,
    config: Config,
    members: membership::Registry,
    metrics: Arc<Metrics>,
    well_known: Arc<RwLock<WellKnown>>,
    http: Option<(SocketAddr, futures::future::BoxFuture<'static, io::Result<()>>)>,
    /// Listen addresses as reported by the transports (certhash included).
    listen_addrs: Vec<(ListenerId, Multiaddr)>,
    /// The address each connected peer reached us from (for the Sybil limits).
    peer_ips: HashMap<PeerId, IpAddr>,
    /// Pages' connection outcome reports, rate-limited per peer.
    reports: outcome_reports::ReportGate,
    rng: rand::rngs::StdRng,
    /// Set once the WebRTC leak budget is spent (see `webrtc_gate`): `run` then ends.
    leaked: Option<u64>,
    /// The node's STUN/TURN server, if on, and what pages are told about ICE servers.
    ice: Option<ice::IceServer>,
    ice_policy: Arc<RwLock<ice::IcePolicy>>,
    federation: Option<federation::Federation>,
    /// Set on SIGTERM: `/healthz` says 503, new connections are closed.
    draining: Arc<AtomicBool>,
}

impl Node {
    /// Loads the identity, binds every listener and the HTTP server. Fails with a clear
    /// error on a bad flag, a busy port or an unreadable key file.
    pub async fn new(config: Config) -> Result<Self, NodeError> {
        config.validate().map_err(NodeError::Config)?;
        let (keypair, certificate) = identity::load_or_create(&config.data_dir)?;
        let peer_id = keypair.public().to_peer_id();

        let metrics = Arc::new(Metrics::default());
        let transport = build_transport(&keypair, certificate, Duration::from_secs(config.handshake_timeout_secs))?;
        let behaviour = build_behaviour(&keypair, &config, &metrics);
        let swarm_config = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(config.idle_timeout_secs));
        let mut swarm = Swarm::new(transport, behaviour, peer_id, swarm_config);
        // Browsers reach us at the addresses we advertise; no need to wait for the relay
        // to learn it is public.
        swarm.behaviour_mut().relay.set_status(Some(relay::Status::Enable));

        let webrtc: Multiaddr = Multiaddr::from(config.webrtc_listen.ip())
            .with(Protocol::Udp(config.webrtc_listen.port()))
            .with(Protocol::WebRTCDirect);
        listen(&mut swarm, webrtc)?;
        if let Some(ws) = config.ws_listen.0 {
            let ws: Multiaddr = Multiaddr::from(ws.ip()).with(Protocol::Tcp(ws.port())).with(Protocol::Ws("/".into()));
            listen(&mut swarm, ws)?;
        }

        let refusals = http::HttpRefusals {
            total: metrics.http_refused_total.clone(),
            per_ip: metrics.http_refused_per_ip.clone(),
        };
        let http_limits = http::HttpLimits {
            max_connections: config.http_max_connections,
            max_connections_per_ip: config.http_max_connections_per_ip,
            header_timeout: Duration::from_secs(config.http_header_timeout_secs),
            max_lifetime: Duration::from_secs(300),
        };
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut extra_routes = axum::Router::new();
        if let Some(dir) = &config.demo_media {
            // The MPEG-TS rendition in `dir`, the fMP4 one in `dir/fmp4` when present.
            let egress = Counter::default();
            registry.register("shoal_demo_origin_egress_bytes", "Segment bytes the demo origin served", egress.clone());
            let key = config.data_dir.join("demo-publisher.key");
            let fmp4 = dir.join("fmp4");
            let dirs = std::iter::once(dir.clone()).chain(fmp4.join("stream.m3u8").exists().then_some(fmp4));
            for dir in dirs {
                let demo = Arc::new(demo::DemoStream::load(&dir, &key, egress.clone())?);
                tracing::info!(segments_dir = %dir.display(), publisher = %demo.public_key_hex(), "serving a demo live stream at {}", demo.playlist_path());
                extra_routes = extra_routes.merge(demo.router());
            }
            // The same content as live DASH (video and audio), from `dir/dash` when present.
            let dash = dir.join("dash");
            if dash.join("stream.mpd").exists() {
                let live = Arc::new(dash_live::DashLive::load(&dash, &key, egress.clone())?);
                tracing::info!(segments_dir = %dash.display(), "serving a demo live DASH stream at /demo/dash/stream.mpd");
                extra_routes = extra_routes.merge(live.router());
            }
        }
        let well_known = Arc::new(RwLock::new(WellKnown {
            version: WELL_KNOWN_VERSION,
            peer_id: peer_id.to_string(),
            multiaddrs: Vec::new(),
            federation: Vec::new(),
            ice_servers: Vec::new(),
        }));
        let ice = match config.stun_listen.0 {
            Some(listen) => {
                let turn = match (&config.turn_secret, config.turn_relay) {
                    (Some(secret), true) => Some((secret.clone(), relay_ip(&config)?)),
                    _ => None,
                };
                let server = ice::IceServer::start(listen, turn).await?;
                tracing::info!(address = %server.local_addr, turn = server.relays, "STUN server listening");
                Some(server)
            }
            None => None,
        };
        let ice_policy = Arc::new(RwLock::new(ice::IcePolicy {
            servers: external_ice_servers(&config),
            turn_secret: config.turn_secret.clone(),
            credential_ttl: Duration::from_secs(config.turn_credential_ttl_secs),
        }));
        let draining = Arc::new(AtomicBool::new(false));
        let http = match config.http_listen.0 {
            Some(addr) => {
                let shared = http::Shared {
                    well_known: well_known.clone(),
                    registry: Arc::new(registry),
                    ice: ice_policy.clone(),
                    draining: draining.clone(),
                };
                let (bound, serve) =
                    http::bind(addr, &config.static_dir, shared, extra_routes, http_limits, refusals).await?;
                Some((bound, Box::pin(serve) as futures::future::BoxFuture<'static, io::Result<()>>))
            }
            None => None,
        };

        let members = membership::Registry::new(membership::Limits {
            max_memberships: config.max_memberships,
            max_swarms_per_peer: config.max_swarms_per_peer,
            sample_size: config.sample_size,
            max_members_per_network: config.max_members_per_network,
            max_sample_per_network: config.max_sample_per_network,
            max_remote_memberships: config.max_memberships.saturating_mul(4),
        });
        let federation = match &config.federation_key {
            Some(key) => {
                Some(federation::Federation::new(&keypair, key, config.federation_listen, config.federate.clone())?)
            }
            None => None,
        };
        Ok(Self {
            swarm,
            config,
            members,
            metrics,
            well_known,
            http,
            listen_addrs: Vec::new(),
            peer_ips: HashMap::new(),
            reports: outcome_reports::ReportGate::default(),
            rng: rand::rngs::StdRng::from_entropy(),
            leaked: None,
            ice,
            ice_policy,
            federation,
            draining,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// The bound HTTP address, if HTTP is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(a, _)| *a)
    }

    /// Runs until Ctrl-C / SIGTERM (then drains, see the crate docs), or until the HTTP
    /// server fails.
    pub async fn run(mut self) -> Result<(), NodeError> {
        let mut http = self.http.take().map(|(_, serve)| serve).unwrap_or_else(|| Box::pin(futures::future::pending()));
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // While draining: the peers still to close, and when the drain ends.
        let mut drain: Option<(Vec<PeerId>, Instant)> = None;
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    self.on_event(event);
                    if let Some(failed) = self.leaked {
                        return Err(NodeError::LeakBudgetSpent(failed));
                    }
                }
                event = next_federation_event(&mut self.federation) => self.on_federation(event),
                _ = tick.tick() => {
                    self.on_tick();
                    if let Some((left, until)) = &mut drain {
                        let now = Instant::now();
                        // Close an even share each tick, so pages move a few at a time.
                        let ticks_left = (until.saturating_duration_since(now).as_millis() / 100).max(1) as usize;
                        let count = left.len().div_ceil(ticks_left);
                        for peer in left.drain(..count.min(left.len())) {
                            let _ = self.swarm.disconnect_peer_id(peer);
                        }
                        if left.is_empty() && now >= *until {
                            tracing::info!("drained; exiting");
                            return Ok(());
                        }
                    }
                }
                result = &mut http => {
                    return result.map_err(|source| NodeError::Io { context: "HTTP server".into(), source });
                }
                () = &mut shutdown, if drain.is_none() => {
                    let peers: Vec<PeerId> = self.peer_ips.keys().copied().collect();
                    tracing::info!(peers = peers.len(), secs = self.config.drain_secs, "draining before shutdown");
                    self.draining.store(true, Ordering::Relaxed);
                    self.metrics.draining.set(1);
                    drain = Some((peers, Instant::now() + Duration::from_secs(self.config.drain_secs)));
                }
            }
        }
    }

    /// Every 100 ms: federation publishing and expiry.
    fn on_tick(&mut self) {
        let Some(federation) = &mut self.federation else { return };
        let status = federation_status(&self.members, &self.peer_ips, &self.draining);
        let (expired, snapshot_due) = federation.tick(Instant::now(), &status);
        if snapshot_due {
            federation.publish_snapshot(&status, self.members.local_memberships());
        }
        self.metrics.federation_peers.set(federation.peers() as i64);
        for node in expired {
            self.members.forget_node(&node);
        }
        self.update_federation_view();
    }

    fn on_federation(&mut self, event: federation::Event) {
        match event {
            federation::Event::Update { node, update, lag } => {
                if let Some(lag) = lag {
                    self.metrics.federation_lag.observe(lag.as_secs_f64());
                }
                // Only addresses that lead to the node that sent them.
                let addrs = update
                    .addrs
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                    .filter(|a| matches!(a.iter().last(), Some(Protocol::P2p(p)) if p == node))
                    .collect();
                let refused = self.members.apply_remote(
                    node,
                    membership::RemoteStatus { addrs, load: update.peers, draining: update.draining },
                    update.reset,
                    &update.joined,
                    &update.left,
                );
                self.metrics.federation_refused.inc_by(refused as u64);
            }
            federation::Event::NodeGone(node) => {
                let forgotten = self.members.forget_node(&node);
                tracing::info!(%node, forgotten, "forgot a node's members");
            }
            federation::Event::SnapshotWanted => {
                if let Some(federation) = &mut self.federation {
                    let status = federation_status(&self.members, &self.peer_ips, &self.draining);
                    federation.publish_snapshot(&status, self.members.local_memberships());
                }
            }
        }
        self.update_federation_view();
    }

    /// The well-known document's list of other nodes, and the federation gauges.
    fn update_federation_view(&mut self) {
        let others: Vec<String> = self.members.other_nodes().iter().map(Multiaddr::to_string).collect();
        self.metrics.federation_nodes.set(self.members.other_node_count() as i64);
        self.metrics.federation_memberships.set(self.members.remote_membership_count() as i64);
        if let Ok(mut doc) = self.well_known.write()
            && doc.federation != others
        {
            doc.federation = others;
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                tracing::info!(%address, "listening");
                self.listen_addrs.push((listener_id, address));
                self.refresh_advertised();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|(_, a)| *a != address);
                self.refresh_advertised();
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, connection_id, .. } => {
                self.metrics.connections.inc();
                if self.draining.load(Ordering::Relaxed) {
                    // Leaving: the page should pick another node.
                    self.swarm.close_connection(connection_id);
                }
                if num_established.get() == 1 {
                    self.metrics.connected_peers.inc();
                }
                if let Some(ip) = ip_limits::ip_of(endpoint.get_remote_address()) {
                    self.peer_ips.entry(peer_id).or_insert(ip);
                }
                tracing::debug!(%peer_id, "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                self.metrics.connections.dec();
                if num_established == 0 {
                    self.metrics.connected_peers.dec();
                    self.peer_ips.remove(&peer_id);
                    self.reports.forget(&peer_id);
                    let removed = self.members.remove_peer(&peer_id);
                    if let Some(federation) = &mut self.federation {
                        for swarm in &removed {
                            federation.left(swarm, &peer_id);
                        }
                    }
                    self.update_membership_gauges();
                    tracing::debug!(%peer_id, removed = removed.len(), cause = ?cause, "disconnected");
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                self.metrics.connection_errors.inc();
                let reason = match &error {
                    libp2p::swarm::ListenError::Denied { cause } => {
                        if cause.downcast_ref::<ip_limits::TooManyFromIp>().is_some() {
                            "connections_per_ip"
                        } else if cause.downcast_ref::<webrtc_gate::GateClosed>().is_some() {
                            "webrtc_handshakes"
                        } else {
                            "connection_limit"
                        }
                    }
                    libp2p::swarm::ListenError::Transport(_) => "handshake_failed",
                    _ => "other",
                };
                self.metrics.refusals.get_or_create(&ReasonLabels { reason }).inc();
                tracing::debug!(%error, "incoming connection failed");
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                self.metrics.connection_errors.inc();
                tracing::debug!(%error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Membership(event)) => self.on_membership(event),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => self.on_relay(event),
            SwarmEvent::Behaviour(BehaviourEvent::WebrtcGate(webrtc_gate::Event::LeakBudgetSpent { failed })) => {
                tracing::error!(
                    failed,
                    "{failed} WebRTC handshakes failed, each leaking a descriptor in libp2p-webrtc; exiting for a restart"
                );
                self.leaked = Some(failed);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(error) })) => {
                // A browser tab that vanished sends nothing; don't keep handing it out.
                tracing::debug!(%peer, %error, "ping failed; closing connection");
                self.swarm.close_connection(connection);
            }
            _ => {}
        }
    }

    fn on_membership(&mut self, event: request_response::Event<MembershipRequest, MembershipResponse>) {
        let request_response::Event::Message {
            peer,
            message: request_response::Message::Request { request, channel, .. },
            ..
        } = event
        else {
            if let request_response::Event::InboundFailure { peer, error, .. } = event {
                tracing::debug!(%peer, %error, "membership request failed");
            }
            return;
        };
        let (kind, response) = match request {
            MembershipRequest::Join { swarm, token: Some(_) } => {
                // Private swarms do not exist yet: say so rather than admit everyone.
                tracing::debug!(%peer, %swarm, "join with an access token refused");
                ("join", MembershipResponse::Refused { reason: shoal_proto::RefusalReason::TokensUnsupported })
            }
            MembershipRequest::Join { swarm, token: None } => {
                let ip = self.peer_ips.get(&peer).copied();
                let new = !self.members.is_member(&peer, &swarm);
                let response = match self.members.join(peer, &swarm, ip, &mut self.rng) {
                    Ok(members) => {
                        if new && let Some(federation) = &mut self.federation {
                            federation.joined(&swarm, &peer);
                        }
                        tracing::debug!(%peer, %swarm, sample = members.len(), "joined");
                        let size = self.members.swarm_size(&swarm) as u64;
                        MembershipResponse::Joined { members, size }
                    }
                    Err(reason) => MembershipResponse::Refused { reason },
                };
                ("join", response)
            }
            MembershipRequest::Leave { swarm } => {
                if self.members.leave(&peer, &swarm)
                    && let Some(federation) = &mut self.federation
                {
                    federation.left(&swarm, &peer);
                }
                ("leave", MembershipResponse::Left)
            }
            MembershipRequest::Report { outcomes } => ("report", self.count_report(peer, &outcomes)),
        };
        let outcome = if let MembershipResponse::Refused { reason } = &response {
            let reason = match reason {
                shoal_proto::RefusalReason::BadSwarmId => "bad_swarm_id",
                shoal_proto::RefusalReason::Unauthorized => "unauthorized",
                shoal_proto::RefusalReason::NodeFull => "node_full",
                shoal_proto::RefusalReason::TooManySwarms => "too_many_swarms",
                shoal_proto::RefusalReason::TooManyFromNetwork => "too_many_from_network",
                shoal_proto::RefusalReason::TokensUnsupported => "tokens_unsupported",
                shoal_proto::RefusalReason::TooFrequent => "reports_too_frequent",
            };
            self.metrics.refusals.get_or_create(&ReasonLabels { reason }).inc();
            "refused"
        } else {
            "ok"
        };
        self.metrics.membership_requests.get_or_create(&RequestLabels { kind, outcome }).inc();
        self.update_membership_gauges();
        if self.swarm.behaviour_mut().membership.send_response(channel, response).is_err() {
            tracing::debug!(%peer, "membership response undeliverable: peer went away");
        }
    }

    /// Adds a page's connection outcomes to `shoal_peer_connections_total`.
    fn count_report(&mut self, peer: PeerId, outcomes: &shoal_proto::ConnectionOutcomes) -> MembershipResponse {
        let Some(figures) = self.reports.admit(peer, outcomes, Instant::now()) else {
            return MembershipResponse::Refused { reason: shoal_proto::RefusalReason::TooFrequent };
        };
        for (outcome, count) in figures {
            self.metrics.peer_connections.get_or_create(&OutcomeLabels { outcome }).inc_by(count);
        }
        tracing::debug!(%peer, ?outcomes, "connection outcomes reported");
        MembershipResponse::Reported
    }

    fn on_relay(&mut self, event: relay::Event) {
        // Counted by the behaviour per connection (libp2p's events cannot be).
        self.metrics.reservations.set(self.swarm.behaviour().relay.reservations() as i64);
        let count = |outcome| OutcomeLabels { outcome };
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, renewed } => {
                self.metrics.reservation_requests.get_or_create(&count("accepted")).inc();
                tracing::debug!(peer = %src_peer_id, renewed, "reservation accepted");
            }
            relay::Event::ReservationReqDenied { src_peer_id, .. } => {
                self.metrics.reservation_requests.get_or_create(&count("denied")).inc();
                tracing::debug!(peer = %src_peer_id, "reservation denied");
            }
            relay::Event::ReservationClosed { .. } | relay::Event::ReservationTimedOut { .. } => {}
            relay::Event::CircuitReqAccepted { .. } => {
                self.metrics.circuits.inc();
                self.metrics.circuit_requests.get_or_create(&count("accepted")).inc();
            }
            relay::Event::CircuitReqDenied { src_peer_id, dst_peer_id, .. } => {
                self.metrics.circuit_requests.get_or_create(&count("denied")).inc();
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "circuit denied");
            }
            relay::Event::CircuitClosed { .. } => {
                self.metrics.circuits.dec();
            }
            _ => {}
        }
    }

    fn update_membership_gauges(&self) {
        self.metrics.memberships.set(self.members.membership_count() as i64);
        self.metrics.swarms.set(self.members.swarm_count() as i64);
    }

    /// Recomputes what browsers are told: the configured external addresses, or else
    /// the listen addresses a browser can use.
    fn refresh_advertised(&mut self) {
        let local = *self.swarm.local_peer_id();
        let certhash = self.listen_addrs.iter().flat_map(|(_, a)| a.iter()).find_map(|p| match p {
            Protocol::Certhash(hash) => Some(hash),
            _ => None,
        });
        let mut advertised: Vec<Multiaddr> = if self.config.external_addresses.is_empty() {
            self.listen_addrs.iter().map(|(_, a)| a.clone()).filter(browser_dialable).collect()
        } else {
            self.config
                .external_addresses
                .iter()
                .map(|a| {
                    let mut a = a.clone();
                    let is_webrtc = a.iter().any(|p| matches!(p, Protocol::WebRTCDirect));
                    let has_hash = a.iter().any(|p| matches!(p, Protocol::Certhash(_)));
                    if is_webrtc
                        && !has_hash
                        && let Some(hash) = certhash
                    {
                        a.push(Protocol::Certhash(hash));
                    }
                    a
                })
                .collect()
        };
        for addr in &mut advertised {
            if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                addr.push(Protocol::P2p(local));
            }
        }
        advertised.sort_by_key(|a| (!a.iter().any(|p| matches!(p, Protocol::WebRTCDirect)), a.to_string()));
        advertised.dedup();
        for addr in &advertised {
            self.swarm.add_external_address(addr.clone());
        }
        self.members.set_node_addrs(advertised.clone());
        if let Ok(mut doc) = self.well_known.write() {
            doc.multiaddrs = advertised.iter().map(Multiaddr::to_string).collect();
        }
        // Pages reach our STUN server where they reach our WebRTC listener (or at the
        // STUN listen address, when it names one).
        if let Some(ice) = &self.ice {
            let hosts: Vec<IpAddr> = if ice.local_addr.ip().is_unspecified() {
                let mut ips: Vec<IpAddr> = advertised
                    .iter()
                    .filter(|a| a.iter().any(|p| matches!(p, Protocol::WebRTCDirect)))
                    .filter_map(ip_limits::ip_of)
                    .collect();
                ips.dedup();
                ips
            } else {
                vec![ice.local_addr.ip()]
            };
            let mut servers = ice.entries(&hosts);
            servers.extend(external_ice_servers(&self.config));
            if let Ok(mut policy) = self.ice_policy.write() {
                policy.servers = servers;
            }
        }
    }
}

/// `--ice-server` URLs as well-known entries (TURN ones get credentials per page).
fn external_ice_servers(config: &Config) -> Vec<shoal_proto::IceServerInfo> {
    config
        .ice_servers
        .iter()
        .map(|url| shoal_proto::IceServerInfo { urls: vec![url.clone()], username: None, credential: None })
        .collect()
}

/// The address TURN relays are allocated on: the STUN listen address if it names one,
/// else the first external or WebRTC listen address that does.
fn relay_ip(config: &Config) -> Result<IpAddr, NodeError> {
    let external = config.external_addresses.iter().find_map(ip_limits::ip_of);
    [config.stun_listen.0.map(|a| a.ip()), external, Some(config.webrtc_listen.ip())]
        .into_iter()
        .flatten()
        .find(|ip| !ip.is_unspecified())
        .ok_or_else(|| {
            NodeError::Config(
                "--turn-relay needs an address to relay from: give --stun-listen or --webrtc-listen a specific IP, or an --external-address".into(),
            )
        })
}

/// Whether a browser can dial this listen address: WebRTC needs a non-loopback,
/// specific IP (webrtc-rs gathers no loopback candidates); WebSocket works anywhere.
fn browser_dialable(addr: &Multiaddr) -> bool {
    let ip_ok = |loopback_ok: bool| {
        addr.iter().any(|p| match p {
            Protocol::Ip4(ip) => !ip.is_unspecified() && (loopback_ok || !ip.is_loopback()),
            Protocol::Ip6(ip) => !ip.is_unspecified() && (loopback_ok || !ip.is_loopback()),
            _ => false,
        })
    };
    if addr.iter().any(|p| matches!(p, Protocol::WebRTCDirect)) {
        return ip_ok(false);
    }
    addr.iter().any(|p| matches!(p, Protocol::Ws(_))) && ip_ok(true)
}

fn listen(swarm: &mut Swarm<Behaviour>, addr: Multiaddr) -> Result<(), NodeError> {
    swarm.listen_on(addr.clone()).map(|_| ()).map_err(|e| NodeError::Listen { reason: error_chain(&e), addr })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Many errors print their source in their own message; don't say it twice.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn build_transport(
    keypair: &Keypair,
    certificate: libp2p_webrtc::tokio::Certificate,
    handshake_timeout: Duration,
) -> Result<libp2p::core::transport::Boxed<(PeerId, StreamMuxerBox)>, NodeError> {
    let webrtc = libp2p::core::transport::timeout::TransportTimeout::with_ingoing_timeout(
        libp2p_webrtc::tokio::Transport::new(keypair.clone(), certificate),
        handshake_timeout,
    )
    .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    let noise = noise::Config::new(keypair).map_err(|e| NodeError::Transport(e.to_string()))?;
    let mut websocket = websocket::Config::new(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)));
    // A WebSocket frame header announcing a large payload makes the reader allocate all
    // of it up front. Our largest frame is a few Noise frames (≤ 192 KiB).
    websocket.set_max_data_size(256 * 1024);
    let ws = websocket
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        // Covers the WebSocket handshake, Noise and yamux: a client that stops halfway
        // is dropped.
        .inbound_timeout(handshake_timeout)
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    Ok(webrtc.or_transport(ws).map(|either, _| either.into_inner()).boxed())
}

fn build_behaviour(keypair: &Keypair, config: &Config, metrics: &Metrics) -> Behaviour {
    let peer_id = keypair.public().to_peer_id();
    let relay_config = relay_server::config(
        relay::Config {
            max_reservations: config.max_reservations,
            max_reservations_per_peer: config.max_reservations_per_peer,
            reservation_duration: Duration::from_secs(60 * 60),
            max_circuits: config.max_circuits,
            max_circuits_per_peer: config.max_circuits_per_peer,
            max_circuit_duration: config.circuit_duration(),
            max_circuit_bytes: config.max_circuit_bytes,
            ..relay::Config::default()
        },
        config.reservations_per_ip_per_minute,
        config.circuits_per_peer_per_minute,
        config.circuits_per_ip_per_minute,
    );
    let membership = request_response::json::Behaviour::with_codec(
        request_response::json::codec::Codec::default()
            .set_request_size_maximum(16 * 1024)
            .set_response_size_maximum(1024 * 1024),
        [(StreamProtocol::new(shoal_proto::MEMBERSHIP_PROTOCOL), ProtocolSupport::Inbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    Behaviour {
        // Total limits first: a connection they refuse never takes a per-IP slot.
        limits: connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_connections))
                .with_max_pending_incoming(Some(config.max_pending_connections))
                .with_max_established_per_peer(Some(4)),
        ),
        ip_limits: ip_limits::Behaviour::new(config.max_connections_per_ip, config.max_pending_per_ip),
        webrtc_gate: webrtc_gate::Behaviour::new(
            webrtc_gate::GateConfig {
                max_in_flight: config.max_webrtc_handshakes,
                rate: config.webrtc_handshakes_per_sec,
                burst: config.webrtc_handshake_burst,
                leak_budget: match config.webrtc_leak_budget {
                    0 => webrtc_gate::default_leak_budget(),
                    n => n,
                },
            },
            metrics.webrtc_handshakes_failed.clone(),
        ),
        relay: relay_server::Relay::new(peer_id, relay_config),
        identify: identify::Behaviour::new(identify::Config::new("/shoal/1".into(), keypair.public())),
        ping: ping_repoll::Behaviour::new(
            ping::Config::new()
                .with_interval(Duration::from_secs(config.ping_interval_secs))
                .with_timeout(Duration::from_secs(10)),
        ),
        membership,
    }
}

/// What this node tells the other nodes about itself (a free function: the caller holds
/// `&mut self.federation` meanwhile).
fn federation_status<'a>(
    members: &'a membership::Registry,
    peer_ips: &HashMap<PeerId, IpAddr>,
    draining: &AtomicBool,
) -> federation::Status<'a> {
    federation::Status {
        addrs: members.node_addrs(),
        peers: peer_ips.len() as u64,
        draining: draining.load(Ordering::Relaxed),
    }
}

async fn next_federation_event(federation: &mut Option<federation::Federation>) -> federation::Event {
    match federation {
        Some(federation) => federation.next().await,
        None => futures::future::pending().await,
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
