//! The page's libp2p swarm: which transports reach whom, and the behaviours it runs.
//! Built once by the runtime, which then owns it.
//!
//! - `/webrtc-direct` to the signalling node and `/p2p-circuit/webrtc` to other browsers
//!   go through `shoal-webrtc`; any other circuit (signalling diagnostics) through the
//!   relay transport, upgraded with noise and yamux.
//! - `membership` asks the node for swarm members; `streams` carries Shoal's own
//!   protocols; `ping` notices dead connections.

use std::time::Duration;

use libp2p::{
    Multiaddr, StreamProtocol, Swarm, Transport,
    core::{muxing::StreamMuxerBox, upgrade::Version},
    identity::Keypair,
    multiaddr::Protocol,
    noise, ping, relay,
    request_response::{self, ProtocolSupport},
    swarm::NetworkBehaviour,
    yamux,
};

use crate::{bulk, config::Config, error::ShoalError, membership, streams};

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub relay: relay::client::Behaviour,
    pub webrtc: shoal_webrtc::Behaviour,
    pub ping: ping::Behaviour,
    pub membership: request_response::Behaviour<membership::Codec>,
    pub streams: streams::Behaviour,
}

/// Protocols of Shoal's own streams.
pub(crate) const PIECES: StreamProtocol = StreamProtocol::new(shoal_core::wire::PROTOCOL_NAME);
pub(crate) const GOSSIP: StreamProtocol = StreamProtocol::new(shoal_core::gossip::PROTOCOL_NAME);
pub(crate) const BULK: StreamProtocol = StreamProtocol::new(bulk::PROTOCOL);

/// Most inbound streams a connection negotiates at once (a peer opens a handful per
/// swarm it shares with us; more in flight is a flood).
const MAX_NEGOTIATING_INBOUND: usize = 16;

/// Builds the swarm, listening for browser-to-browser WebRTC.
/// `ping_interval`: how often every connection is pinged (the node link's liveness
/// check needs it short when there is another node to move to).
pub(crate) fn build(
    config: &Config,
    keypair: &Keypair,
    ping_interval: Duration,
) -> Result<(Swarm<Behaviour>, streams::Control), ShoalError> {
    let peer_id = keypair.public().to_peer_id();
    let webrtc_config = shoal_webrtc::Config {
        ice_servers: config
            .ice_servers
            .iter()
            .map(|s| shoal_webrtc::IceServer {
                urls: s.urls.clone().into_vec(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect(),
        relay_only: config.ice_transport_policy == crate::config::IceTransportPolicy::Relay,
        handshake_timeout: Duration::from_millis(u64::from(config.handshake_timeout_ms)),
        ..shoal_webrtc::Config::default()
    };
    let (webrtc_transport, webrtc_behaviour) = shoal_webrtc::Transport::new(webrtc_config, keypair.clone());
    let (relay_transport, relay_behaviour) = relay::client::new(peer_id);
    let noise = noise::Config::new(keypair).map_err(|e| ShoalError::StartFailed(e.to_string()))?;
    let relayed = relay_transport
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)));
    let transport = webrtc_transport
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)))
        .or_transport(relayed)
        .map(|either, _| either.into_inner())
        .boxed();

    let (streams, control) = streams::Behaviour::new(vec![PIECES, GOSSIP, BULK], config.max_peers);
    let membership = request_response::Behaviour::new(
        [(StreamProtocol::new(shoal_proto::MEMBERSHIP_PROTOCOL), ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    let behaviour = Behaviour {
        relay: relay_behaviour,
        webrtc: webrtc_behaviour,
        ping: ping::Behaviour::new(
            ping::Config::new().with_interval(ping_interval).with_timeout(Duration::from_secs(8)),
        ),
        membership,
        streams,
    };
    let swarm_config = libp2p::swarm::Config::with_wasm_executor()
        .with_idle_connection_timeout(Duration::from_secs(60))
        .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND);
    let mut swarm = Swarm::new(transport, behaviour, peer_id, swarm_config);
    swarm
        .listen_on(Multiaddr::empty().with(Protocol::WebRTC))
        .map_err(|e| ShoalError::StartFailed(format!("cannot listen for /webrtc: {e}")))?;
    Ok((swarm, control))
}
