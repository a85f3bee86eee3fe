//! ICE servers for the pages: the node's own STUN server (and, when asked for, a TURN
//! relay on the same UDP port), and what `/.well-known/shoal.json` tells pages about
//! them and about any external STUN/TURN servers, with TURN credentials minted per
//! request.
//!
//! Viewers behind NATs learn their public address from STUN (a server-reflexive
//! candidate), without which two pages behind different routers rarely connect; the
//! ~15–20 % of pairs that cannot connect directly (symmetric NATs, strict firewalls)
//! need a TURN relay. The server is webrtc-rs's `turn` crate (already in the node's
//! dependency tree through libp2p-webrtc): it answers STUN binding requests from
//! anyone, and TURN allocations only with credentials from the shared secret.
//!
//! Credentials follow the TURN REST scheme coturn implements (`use-auth-secret`):
//! username = expiry time in Unix seconds, password = base64(HMAC-SHA1(secret,
//! username)), so an external coturn configured with the same `static-auth-secret`
//! accepts the credentials this node hands out.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use shoal_proto::IceServerInfo;
use tokio::net::UdpSocket;
use turn::{
    auth::{AuthHandler, LongTermAuthHandler, generate_long_term_credentials},
    relay::{relay_none::RelayAddressGeneratorNone, relay_static::RelayAddressGeneratorStatic},
    server::{
        Server,
        config::{ConnConfig, ServerConfig},
    },
};
use webrtc_util::vnet::net::Net;

use crate::NodeError;

/// What pages are told and how TURN credentials are made.
#[derive(Clone, Default)]
pub struct IcePolicy {
    /// Server entries without credentials (STUN, and TURN whose credentials are minted).
    pub servers: Vec<IceServerInfo>,
    /// Shared secret of the TURN REST scheme; `None`: TURN entries are not handed out.
    pub turn_secret: Option<String>,
    pub credential_ttl: Duration,
}

impl IcePolicy {
    /// The entries for one page: TURN ones with fresh credentials.
    pub fn for_page(&self) -> Vec<IceServerInfo> {
        let mut out = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            if !is_turn(server) {
                out.push(server.clone());
                continue;
            }
            let Some(secret) = &self.turn_secret else { continue };
            match generate_long_term_credentials(secret, self.credential_ttl) {
                Ok((username, credential)) => out.push(IceServerInfo {
                    urls: server.urls.clone(),
                    username: Some(username),
                    credential: Some(credential),
                }),
                Err(error) => tracing::warn!(%error, "could not mint TURN credentials"),
            }
        }
        out
    }
}

fn is_turn(server: &IceServerInfo) -> bool {
    server.urls.iter().any(|u| u.starts_with("turn:") || u.starts_with("turns:"))
}

/// The running STUN (and TURN) server; it runs as long as the process (its tasks are
/// the `turn` crate's).
pub struct IceServer {
    _server: Server,
    pub local_addr: SocketAddr,
    pub relays: bool,
}

impl IceServer {
    /// Binds `listen` (UDP) now, so that a busy port fails start-up. With a secret and
    /// `relay_ip`, TURN allocations are relayed from ephemeral ports on that address.
    pub async fn start(listen: SocketAddr, turn: Option<(String, IpAddr)>) -> Result<Self, NodeError> {
        let socket = UdpSocket::bind(listen).await.map_err(|source| NodeError::Io {
            context: format!("binding the STUN/TURN listener {listen} (`--stun-listen off` to run without)"),
            source,
        })?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| NodeError::Io { context: "reading the STUN listener's address".into(), source })?;
        let relays = turn.is_some();
        let (relay_addr_generator, auth_handler): (
            Box<dyn turn::relay::RelayAddressGenerator + Send + Sync>,
            Arc<dyn AuthHandler + Send + Sync>,
        ) = match turn {
            Some((secret, relay_ip)) => (
                Box::new(RelayAddressGeneratorStatic {
                    relay_address: relay_ip,
                    address: relay_ip.to_string(),
                    net: Arc::new(Net::new(None)),
                }),
                Arc::new(LongTermAuthHandler::new(secret)),
            ),
            None => (
                Box::new(RelayAddressGeneratorNone { address: listen.ip().to_string(), net: Arc::new(Net::new(None)) }),
                Arc::new(NoRelays),
            ),
        };
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig { conn: Arc::new(socket), relay_addr_generator }],
            realm: "shoal".into(),
            auth_handler,
            channel_bind_timeout: Duration::ZERO, // the crate's default, 10 minutes
            alloc_close_notify: None,
        })
        .await
        .map_err(|e| NodeError::Config(format!("starting the STUN/TURN server on {listen}: {e}")))?;
        Ok(Self { _server: server, local_addr, relays })
    }

    /// The entries this server adds to the well-known document, for pages that reach
    /// the node at `hosts`.
    pub fn entries(&self, hosts: &[IpAddr]) -> Vec<IceServerInfo> {
        let port = self.local_addr.port();
        let url = |scheme: &str, ip: &IpAddr, suffix: &str| match ip {
            IpAddr::V4(v4) => format!("{scheme}:{v4}:{port}{suffix}"),
            IpAddr::V6(v6) => format!("{scheme}:[{v6}]:{port}{suffix}"),
        };
        let mut out = vec![IceServerInfo {
            urls: hosts.iter().map(|ip| url("stun", ip, "")).collect(),
            username: None,
            credential: None,
        }];
        if self.relays {
            out.push(IceServerInfo {
                urls: hosts.iter().map(|ip| url("turn", ip, "?transport=udp")).collect(),
                username: None,
                credential: None,
            });
        }
        out.retain(|s| !s.urls.is_empty());
        out
    }
}

/// Refuses every TURN allocation (STUN-only mode).
struct NoRelays;

impl AuthHandler for NoRelays {
    fn auth_handle(&self, _username: &str, _realm: &str, _src: SocketAddr) -> Result<Vec<u8>, turn::Error> {
        Err(turn::Error::Other("this node relays nothing".into()))
    }
}

#[cfg(test)]
mod tests {
    use turn::auth::generate_auth_key;

    use super::*;

    fn policy(secret: Option<&str>) -> IcePolicy {
        IcePolicy {
            servers: vec![
                IceServerInfo { urls: vec!["stun:192.0.2.1:3478".into()], username: None, credential: None },
                IceServerInfo {
                    urls: vec!["turn:192.0.2.1:3478?transport=udp".into()],
                    username: None,
                    credential: None,
                },
            ],
            turn_secret: secret.map(str::to_owned),
            credential_ttl: Duration::from_secs(600),
        }
    }

    #[test]
    fn turn_entries_get_credentials_the_relay_accepts() {
        let entries = policy(Some("secret")).for_page();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].username, None, "STUN needs no credentials");
        let turn = &entries[1];
        let (username, password) = (turn.username.clone().unwrap(), turn.credential.clone().unwrap());
        let handler = LongTermAuthHandler::new("secret".into());
        let src: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let expected = handler.auth_handle(&username, "shoal", src).unwrap();
        assert_eq!(expected, generate_auth_key(&username, "shoal", &password));
        // Another secret's relay refuses them.
        let other = LongTermAuthHandler::new("other".into()).auth_handle(&username, "shoal", src).unwrap();
        assert_ne!(other, generate_auth_key(&username, "shoal", &password));
    }

    #[test]
    fn without_a_secret_turn_entries_are_left_out() {
        let entries = policy(None).for_page();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].urls[0].starts_with("stun:"));
    }
}
