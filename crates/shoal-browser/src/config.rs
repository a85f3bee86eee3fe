//! The runtime's configuration as JavaScript passes it: a plain object, checked here.

use serde::Deserialize;
use thiserror::Error;

/// `new Shoal(config)` / `Shoal.start(config)` options.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The swarm to join (one per stream rendition).
    pub swarm: String,
    /// Signalling node multiaddrs. Empty: read `wellKnownUrl`.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Where to read the node list when `nodes` is empty. Default: the page origin's
    /// `/.well-known/shoal.json`.
    #[serde(default)]
    pub well_known_url: Option<String>,
    /// STUN/TURN servers for browser-to-browser connections.
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    /// Most direct peer connections to hold.
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
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        shoal_proto::validate_swarm_id(&self.swarm).map_err(|_| ConfigError::Swarm)?;
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let config: Config = serde_json::from_str(r#"{"swarm":"live"}"#).unwrap();
        config.validate().unwrap();
        assert_eq!(config.max_peers, 24);
        assert!(config.nodes.is_empty());
    }

    #[test]
    fn ice_server_urls_take_one_or_many() {
        let config: Config = serde_json::from_str(
            r#"{"swarm":"s","iceServers":[{"urls":"stun:a"},{"urls":["turn:b","turn:c"],"username":"u","credential":"p"}]}"#,
        )
        .unwrap();
        assert_eq!(config.ice_servers[1].urls.clone().into_vec().len(), 2);
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(serde_json::from_str::<Config>(r#"{"swarm":"s","maxpeers":3}"#).is_err());
        let config: Config = serde_json::from_str(r#"{"swarm":"","maxPeers":3}"#).unwrap();
        assert_eq!(config.validate(), Err(ConfigError::Swarm));
        let config: Config = serde_json::from_str(r#"{"swarm":"s","maxPeers":0}"#).unwrap();
        assert_eq!(config.validate(), Err(ConfigError::MaxPeers));
    }
}
