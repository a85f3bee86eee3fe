//! The runtime's configuration as JavaScript passes it: plain objects, checked here.

use serde::Deserialize;
use thiserror::Error;

/// `Shoal.create(config)` options.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Signalling node multiaddrs. Empty: read `wellKnownUrl`.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Where to read the node list when `nodes` is empty. Default: the page origin's
    /// `/.well-known/shoal.json`.
    #[serde(default)]
    pub well_known_url: Option<String>,
    /// STUN/TURN servers for browser-to-browser connections. Empty (the default): the
    /// ones the node's well-known document names (its own STUN server, TURN if the
    /// operator runs one); none when `nodes` is given instead.
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    /// `"all"` (default) or `"relay"`: connect to other pages only through TURN relays,
    /// so that no peer learns this viewer's address (needs a TURN server).
    #[serde(default)]
    pub ice_transport_policy: IceTransportPolicy,
    /// Most direct peer connections to hold (Chromium allows 500 RTCPeerConnections per
    /// page over its lifetime; the transport budgets 400 of them).
    #[serde(default = "defaults::max_peers")]
    pub max_peers: usize,
    /// Deadline of one WebRTC handshake, in milliseconds.
    #[serde(default = "defaults::handshake_timeout_ms")]
    pub handshake_timeout_ms: u32,
    /// How often to ask the node for a fresh sample of members, in milliseconds.
    #[serde(default = "defaults::rejoin_interval_ms")]
    pub rejoin_interval_ms: u32,
    /// Log level for the browser console: "error", "warn", "info", "debug", "trace".
    #[serde(default)]
    pub log_level: Option<String>,
    /// Serve pieces to other peers.
    #[serde(default = "defaults::yes")]
    pub upload: bool,
    /// Upload cap in bytes per second.
    #[serde(default)]
    pub upload_rate_limit: Option<f64>,
    /// Fetch pieces from other peers (off: HTTP only).
    #[serde(default = "defaults::yes")]
    pub p2p_download: bool,
    /// Bytes of segments kept in memory per swarm.
    #[serde(default = "defaults::cache_bytes")]
    pub cache_bytes: f64,
    /// Largest gossip message accepted or published, in bytes.
    #[serde(default = "defaults::gossip_max_bytes")]
    pub gossip_max_bytes: usize,
    /// Emit `chunk-down` / `chunk-up` events (dashboards).
    #[serde(default)]
    pub chunk_events: bool,
    /// Join this swarm right away (without pieces; see `join` for those).
    #[serde(default)]
    pub swarm: Option<String>,
    /// Fault injection for tests of the integrity checks. Never set in production.
    #[serde(default)]
    pub testing: Testing,
}

/// Test-only behaviours.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Testing {
    /// Flip a byte of every chunk this peer uploads (a corrupting peer).
    #[serde(default)]
    pub corrupt_uploads: bool,
}

/// `shoal.join(swarm, options)` options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwarmOptions {
    /// The publisher's ed25519 public key (64 hex characters, or base64/base64url of 32
    /// bytes). Without it the swarm carries gossip and connections only: pieces cannot
    /// be checked, so none are exchanged.
    #[serde(default)]
    pub publisher_key: Option<String>,
    /// Live (evict oldest first) or VOD (least recently used).
    #[serde(default = "defaults::yes_opt")]
    pub live: Option<bool>,
    /// Where a segment's signed record lives: the segment URL with this suffix.
    #[serde(default)]
    pub record_suffix: Option<String>,
    /// Segments due within this many milliseconds come from HTTP.
    #[serde(default)]
    pub urgent_window_ms: Option<u32>,
}

/// An ICE server as `RTCIceServer` takes it (`urls` may be one string or several).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IceServer {
    pub urls: OneOrMany,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IceTransportPolicy {
    #[default]
    All,
    Relay,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(url) => vec![url],
            Self::Many(urls) => urls,
        }
    }
}

mod defaults {
    pub(super) fn max_peers() -> usize {
        24
    }
    pub(super) fn handshake_timeout_ms() -> u32 {
        10_000
    }
    pub(super) fn rejoin_interval_ms() -> u32 {
        15_000
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn yes_opt() -> Option<bool> {
        Some(true)
    }
    pub(super) fn cache_bytes() -> f64 {
        64.0 * 1024.0 * 1024.0
    }
    pub(super) fn gossip_max_bytes() -> usize {
        64 * 1024
    }
}

/// A configuration the runtime cannot use.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("`swarm` must be 1 to {} bytes", shoal_proto::MAX_SWARM_ID_LEN)]
    Swarm,
    #[error("`maxPeers` must be between 1 and 200")]
    MaxPeers,
    #[error("`handshakeTimeoutMs` must be between 500 and 120000")]
    HandshakeTimeout,
    #[error("`rejoinIntervalMs` must be at least 1000")]
    RejoinInterval,
    #[error("`iceServers` entry without urls")]
    IceServer,
    #[error("`uploadRateLimit` must be a positive number of bytes per second")]
    UploadRate,
    #[error("`cacheBytes` must be at least 1 MiB")]
    Cache,
    #[error("`gossipMaxBytes` must be between 1 and 262144")]
    GossipSize,
    #[error("`publisherKey` must be 32 bytes as 64 hex characters or base64")]
    PublisherKey,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(swarm) = &self.swarm {
            shoal_proto::validate_swarm_id(swarm).map_err(|_| ConfigError::Swarm)?;
        }
        if !(1..=200).contains(&self.max_peers) {
            return Err(ConfigError::MaxPeers);
        }
        if !(500..=120_000).contains(&self.handshake_timeout_ms) {
            return Err(ConfigError::HandshakeTimeout);
        }
        if self.rejoin_interval_ms < 1000 {
            return Err(ConfigError::RejoinInterval);
        }
        if self.ice_servers.iter().any(|s| s.urls.clone().into_vec().is_empty()) {
            return Err(ConfigError::IceServer);
        }
        if self.upload_rate_limit.is_some_and(|r| !(r.is_finite() && r >= 1.0)) {
            return Err(ConfigError::UploadRate);
        }
        if !(self.cache_bytes.is_finite() && self.cache_bytes >= 1024.0 * 1024.0) {
            return Err(ConfigError::Cache);
        }
        if !(1..=MAX_GOSSIP_TRANSMIT).contains(&self.gossip_max_bytes) {
            return Err(ConfigError::GossipSize);
        }
        Ok(())
    }
}

/// Largest `gossipMaxBytes` a page may set. Frames up to the page's own limit plus
/// headers are read (so a slightly oversize message is seen, rejected and counted);
/// larger ones end the stream.
pub const MAX_GOSSIP_TRANSMIT: usize = 256 * 1024;

/// Parses a publisher key: 64 hex characters, or standard/url-safe base64 of 32 bytes.
pub fn parse_publisher_key(text: &str) -> Result<[u8; 32], ConfigError> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| ConfigError::PublisherKey)?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| ConfigError::PublisherKey)?;
        }
        return Ok(out);
    }
    let bytes = decode_base64(text).ok_or(ConfigError::PublisherKey)?;
    bytes.try_into().map_err(|_| ConfigError::PublisherKey)
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gets_defaults() {
        let config: Config = serde_json::from_str("{}").unwrap();
        config.validate().unwrap();
        assert_eq!(config.max_peers, 24);
        assert!(config.upload && config.p2p_download);
        assert!(config.nodes.is_empty());
    }

    #[test]
    fn ice_server_urls_take_one_or_many() {
        let config: Config = serde_json::from_str(
            r#"{"iceServers":[{"urls":"stun:a"},{"urls":["turn:b","turn:c"],"username":"u","credential":"p"}]}"#,
        )
        .unwrap();
        assert_eq!(config.ice_servers[1].urls.clone().into_vec().len(), 2);
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(serde_json::from_str::<Config>(r#"{"maxpeers":3}"#).is_err());
        let config: Config = serde_json::from_str(r#"{"swarm":""}"#).unwrap();
        assert_eq!(config.validate(), Err(ConfigError::Swarm));
        let config: Config = serde_json::from_str(r#"{"maxPeers":0}"#).unwrap();
        assert_eq!(config.validate(), Err(ConfigError::MaxPeers));
        let config: Config = serde_json::from_str(r#"{"uploadRateLimit":-5}"#).unwrap();
        assert_eq!(config.validate(), Err(ConfigError::UploadRate));
        let config: Config = serde_json::from_str(r#"{"gossipMaxBytes":1000000}"#).unwrap();
        assert_eq!(config.validate(), Err(ConfigError::GossipSize));
    }

    #[test]
    fn publisher_keys_in_hex_and_base64() {
        let bytes: Vec<u8> = (0..32).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_publisher_key(&hex).unwrap().to_vec(), bytes);
        assert_eq!(parse_publisher_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap().to_vec(), bytes);
        assert_eq!(parse_publisher_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap().to_vec(), bytes);
        assert_eq!(parse_publisher_key("short"), Err(ConfigError::PublisherKey));
        assert_eq!(parse_publisher_key("!!!!"), Err(ConfigError::PublisherKey));
    }
}
