//! Command-line flags, each with an environment variable (`SHOAL_*`), and their checks.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use clap::Parser;
use libp2p::Multiaddr;

/// A Shoal signalling node: introduces browser peers to each other and relays only
/// their WebRTC signalling.
#[derive(Debug, Clone, Parser)]
#[command(name = "shoal-node", version, about)]
pub struct Config {
    /// UDP address for the `/webrtc-direct` listener browsers dial.
    #[arg(long, env = "SHOAL_WEBRTC_LISTEN", default_value = "0.0.0.0:9090")]
    pub webrtc_listen: SocketAddr,

    /// TCP address for the WebSocket listener (browsers without UDP, other nodes);
    /// `off` disables it.
    #[arg(long, env = "SHOAL_WS_LISTEN", default_value = "0.0.0.0:9091")]
    pub ws_listen: ListenToggle,

    /// TCP address of the HTTP server (`/.well-known/shoal.json`, the demo, metrics);
    /// `off` disables it.
    #[arg(long, env = "SHOAL_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: ListenToggle,

    /// UDP address of the node's STUN server, which pages are told about in the
    /// well-known document (viewers behind NATs need it to connect to each other);
    /// with `--turn-relay`, also a TURN relay. `off` disables it.
    #[arg(long, env = "SHOAL_STUN_LISTEN", default_value = "0.0.0.0:3478")]
    pub stun_listen: ListenToggle,

    /// Make the node's STUN server a TURN relay too, for the pairs of viewers that
    /// cannot connect directly (it relays their traffic: budget the bandwidth, and
    /// firewall what relayed packets may reach). Needs `--turn-secret`.
    #[arg(long, env = "SHOAL_TURN_RELAY")]
    pub turn_relay: bool,

    /// Shared secret for TURN credentials (the TURN REST scheme: coturn's
    /// `use-auth-secret` with this `static-auth-secret` accepts them). Pages get
    /// credentials valid for `--turn-credential-ttl-secs`.
    #[arg(long, env = "SHOAL_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// Lifetime of the TURN credentials handed to a page, in seconds.
    #[arg(long, env = "SHOAL_TURN_CREDENTIAL_TTL_SECS", default_value_t = 12 * 3600)]
    pub turn_credential_ttl_secs: u64,

    /// Other STUN/TURN servers to hand to pages (`stun:host:port`,
    /// `turn:host:port?transport=udp`; TURN ones get credentials from `--turn-secret`).
    /// Repeatable.
    #[arg(long = "ice-server", env = "SHOAL_ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Vec<String>,

    /// Address to advertise to browsers, e.g. `/ip4/203.0.113.7/udp/9090/webrtc-direct`
    /// (the node adds certhash and PeerId). Repeatable. Without it, the node advertises
    /// the non-loopback addresses it listens on.
    #[arg(long = "external-address", env = "SHOAL_EXTERNAL_ADDRESSES", value_delimiter = ',')]
    pub external_addresses: Vec<Multiaddr>,

    /// Directory holding the node's identity key and WebRTC certificate; both are
    /// created on first run so the PeerId and certhash survive restarts.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = ".shoal-node")]
    pub data_dir: PathBuf,

    /// Directory whose `index.html`, `pkg/` and `web/` the HTTP server serves.
    #[arg(long, env = "SHOAL_STATIC_DIR", default_value = ".")]
    pub static_dir: PathBuf,

    /// Other nodes to federate with: their `--federation-listen` addresses, e.g.
    /// `/ip4/10.0.0.2/tcp/9092` (`/dns4/...` works too). Repeatable. One reachable node
    /// is enough (the rest are reached through it), but a node is forgotten faster when
    /// linked directly. Needs `--federation-key`.
    #[arg(long = "federate", env = "SHOAL_FEDERATE", value_delimiter = ',')]
    pub federate: Vec<Multiaddr>,

    /// Turns federation on: a 32-byte key as 64 hex digits, the same on every node of
    /// the network (`openssl rand -hex 32`). Only nodes holding it can connect to the
    /// federation port.
    #[arg(long, env = "SHOAL_FEDERATION_KEY", hide_env_values = true)]
    pub federation_key: Option<String>,

    /// TCP address other nodes federate with, when `--federation-key` is set. Keep it
    /// on a private network: browsers never use it.
    #[arg(long, env = "SHOAL_FEDERATION_LISTEN", default_value = "0.0.0.0:9092")]
    pub federation_listen: SocketAddr,

    /// On SIGTERM or Ctrl-C: seconds over which browser connections are closed (so
    /// their pages move to other nodes a few at a time) before the node exits. During
    /// them, `/healthz` answers 503 and new connections are closed.
    #[arg(long, env = "SHOAL_DRAIN_SECS", default_value_t = 5)]
    pub drain_secs: u64,

    /// Most relay reservations held at once (one per listening browser).
    #[arg(long, env = "SHOAL_MAX_RESERVATIONS", default_value_t = 20_000)]
    pub max_reservations: usize,

    /// Most reservations per peer.
    #[arg(long, env = "SHOAL_MAX_RESERVATIONS_PER_PEER", default_value_t = 2)]
    pub max_reservations_per_peer: usize,

    /// Most relayed circuits open at once. Each lives only for one WebRTC handshake.
    #[arg(long, env = "SHOAL_MAX_CIRCUITS", default_value_t = 4096)]
    pub max_circuits: usize,

    /// Most circuits per peer at once (a joining peer dials several members at once).
    #[arg(long, env = "SHOAL_MAX_CIRCUITS_PER_PEER", default_value_t = 64)]
    pub max_circuits_per_peer: usize,

    /// Lifetime of a circuit, in seconds: long enough for a handshake, too short to
    /// carry a video.
    #[arg(long, env = "SHOAL_MAX_CIRCUIT_SECS", default_value_t = 60)]
    pub max_circuit_secs: u64,

    /// Bytes a circuit may carry: SDP, candidates and Noise take ~10 KiB.
    #[arg(long, env = "SHOAL_MAX_CIRCUIT_BYTES", default_value_t = 128 * 1024)]
    pub max_circuit_bytes: u64,

    /// New circuits a peer may open per minute.
    #[arg(long, env = "SHOAL_CIRCUITS_PER_PEER_PER_MINUTE", default_value_t = NonZeroU32::new(120).unwrap_or(NonZeroU32::MIN))]
    pub circuits_per_peer_per_minute: NonZeroU32,

    /// New circuits one IP address may open per minute.
    #[arg(long, env = "SHOAL_CIRCUITS_PER_IP_PER_MINUTE", default_value_t = NonZeroU32::new(600).unwrap_or(NonZeroU32::MIN))]
    pub circuits_per_ip_per_minute: NonZeroU32,

    /// Reservations one IP address may make per minute.
    #[arg(long, env = "SHOAL_RESERVATIONS_PER_IP_PER_MINUTE", default_value_t = NonZeroU32::new(120).unwrap_or(NonZeroU32::MIN))]
    pub reservations_per_ip_per_minute: NonZeroU32,

    /// Most connections from one IP address (an IPv6 /64 counts as one), pending and
    /// established together. An office or a carrier-grade NAT puts many pages behind one
    /// address, so this is generous; the Sybil limits below bound what they can do.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Most connections from one IP address still in their handshake.
    #[arg(long, env = "SHOAL_MAX_PENDING_PER_IP", default_value_t = 16)]
    pub max_pending_per_ip: usize,

    /// Most connections still in their handshake, in all.
    #[arg(long, env = "SHOAL_MAX_PENDING_CONNECTIONS", default_value_t = 1024)]
    pub max_pending_connections: u32,

    /// Seconds a connection may take to finish its handshake (WebSocket, Noise, yamux;
    /// WebRTC DTLS and SCTP) before it is dropped.
    #[arg(long, env = "SHOAL_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,

    /// Most connections in all.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: u32,

    /// Most `/webrtc-direct` handshakes in progress at once (see README, "Known issues":
    /// each failed one leaks a descriptor in libp2p-webrtc 0.10).
    #[arg(long, env = "SHOAL_MAX_WEBRTC_HANDSHAKES", default_value_t = 64)]
    pub max_webrtc_handshakes: usize,

    /// New `/webrtc-direct` handshakes per second, on average.
    #[arg(long, env = "SHOAL_WEBRTC_HANDSHAKES_PER_SEC", default_value_t = 20.0)]
    pub webrtc_handshakes_per_sec: f64,

    /// New `/webrtc-direct` handshakes at once, past the average.
    #[arg(long, env = "SHOAL_WEBRTC_HANDSHAKE_BURST", default_value_t = 100.0)]
    pub webrtc_handshake_burst: f64,

    /// Failed `/webrtc-direct` handshakes (each leaks a descriptor upstream) after which
    /// the node exits for its supervisor to restart it. 0: half the open-files limit.
    #[arg(long, env = "SHOAL_WEBRTC_LEAK_BUDGET", default_value_t = 0)]
    pub webrtc_leak_budget: u64,

    /// Most members of one swarm from one network (IPv4 /24, IPv6 /64).
    #[arg(long, env = "SHOAL_MAX_MEMBERS_PER_NETWORK", default_value_t = 64)]
    pub max_members_per_network: usize,

    /// Most members of one network in one join answer.
    #[arg(long, env = "SHOAL_MAX_SAMPLE_PER_NETWORK", default_value_t = 4)]
    pub max_sample_per_network: usize,

    /// HTTP connections open at once, in all.
    #[arg(long, env = "SHOAL_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// HTTP connections open at once from one client address.
    #[arg(long, env = "SHOAL_HTTP_MAX_CONNECTIONS_PER_IP", default_value_t = 32)]
    pub http_max_connections_per_ip: usize,

    /// Seconds an HTTP client has to send a request's headers (and may idle between
    /// requests on a kept-alive connection).
    #[arg(long, env = "SHOAL_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,

    /// Most (peer, swarm) memberships held at once.
    #[arg(long, env = "SHOAL_MAX_MEMBERSHIPS", default_value_t = 100_000)]
    pub max_memberships: usize,

    /// Most swarms a peer may join at once.
    #[arg(long, env = "SHOAL_MAX_SWARMS_PER_PEER", default_value_t = 8)]
    pub max_swarms_per_peer: usize,

    /// Members returned per join.
    #[arg(long, env = "SHOAL_SAMPLE_SIZE", default_value_t = 32)]
    pub sample_size: usize,

    /// Serve the built-in live test stream from this directory (a VOD HLS rendition,
    /// `stream.m3u8` and its segments, as `scripts/setup.sh` generates with ffmpeg) at
    /// `/demo/live/stream.m3u8`, looping, with signed segment records.
    #[arg(long, env = "SHOAL_DEMO_MEDIA")]
    pub demo_media: Option<PathBuf>,

    /// Seconds between the node's pings on each connection: a browser tab that vanished
    /// is forgotten after at most this plus 10 s. Pages ping the node every second
    /// themselves (their check that the node lives); these pings only find the dead, and
    /// each costs the node ~4x what answering one does (measured: 0.13 cores for 3,000
    /// peers at 5 s), hence the long default.
    #[arg(long, env = "SHOAL_PING_INTERVAL_SECS", default_value_t = 15)]
    pub ping_interval_secs: u64,

    /// Close connections idle for this many seconds.
    #[arg(long, env = "SHOAL_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
}

/// A listen address or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenToggle(pub Option<SocketAddr>);

impl std::str::FromStr for ListenToggle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        s.parse().map(|a| Self(Some(a))).map_err(|e| format!("`{s}` is neither `off` nor an IP:port address ({e})"))
    }
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.sample_size == 0 {
            return Err("--sample-size must be at least 1".into());
        }
        if self.turn_relay && (self.turn_secret.is_none() || self.stun_listen.0.is_none()) {
            return Err("--turn-relay needs --turn-secret and a --stun-listen address".into());
        }
        if let Some(bad) =
            self.ice_servers.iter().find(|u| !["stun:", "stuns:", "turn:", "turns:"].iter().any(|s| u.starts_with(s)))
        {
            return Err(format!("--ice-server `{bad}` is not a stun:, stuns:, turn: or turns: URL"));
        }
        if self.turn_credential_ttl_secs == 0 {
            return Err("--turn-credential-ttl-secs must be at least 1".into());
        }
        if !self.federate.is_empty() && self.federation_key.is_none() {
            return Err("--federate needs --federation-key (the same on every node)".into());
        }
        if self.max_pending_per_ip == 0 || self.handshake_timeout_secs == 0 || self.http_header_timeout_secs == 0 {
            return Err(
                "--max-pending-per-ip, --handshake-timeout-secs and --http-header-timeout-secs must be at least 1"
                    .into(),
            );
        }
        if self.max_webrtc_handshakes == 0
            || !(self.webrtc_handshakes_per_sec.is_finite() && self.webrtc_handshakes_per_sec > 0.0)
            || !(self.webrtc_handshake_burst.is_finite() && self.webrtc_handshake_burst >= 1.0)
        {
            return Err(
                "--max-webrtc-handshakes, --webrtc-handshakes-per-sec and --webrtc-handshake-burst must be at least 1"
                    .into(),
            );
        }
        if self.ping_interval_secs == 0 {
            return Err("--ping-interval-secs must be at least 1".into());
        }
        if self.max_circuit_secs == 0 || self.max_circuit_bytes < 16 * 1024 {
            return Err("a circuit needs at least 1 s and 16 KiB to carry a WebRTC handshake".into());
        }
        for addr in &self.external_addresses {
            if !addr
                .iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::WebRTCDirect | libp2p::multiaddr::Protocol::Ws(_)))
            {
                return Err(format!("--external-address {addr} is neither /webrtc-direct nor /ws"));
            }
        }
        Ok(())
    }

    pub fn circuit_duration(&self) -> Duration {
        Duration::from_secs(self.max_circuit_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let config = Config::try_parse_from(["shoal-node"]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.webrtc_listen.port(), 9090);
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(Config::try_parse_from(["shoal-node", "--webrtc-listen", "nonsense"]).is_err());
        assert!(Config::try_parse_from(["shoal-node", "--http-listen", "off"]).unwrap().http_listen.0.is_none());
        let config = Config::try_parse_from(["shoal-node", "--external-address", "/ip4/1.2.3.4/tcp/1"]).unwrap();
        assert!(config.validate().is_err());
        let config = Config::try_parse_from(["shoal-node", "--sample-size", "0"]).unwrap();
        assert!(config.validate().is_err());
        let config = Config::try_parse_from(["shoal-node", "--federate", "/ip4/1.2.3.4/tcp/1/ws"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--federation-key"));
    }
}
