//! What the signalling node and the browser runtime say to each other, apart from
//! libp2p's own protocols: the membership protocol and the `/.well-known/shoal.json`
//! document a page reads to find its node.
//!
//! Membership is a request/response protocol (JSON over a libp2p stream) rather than
//! libp2p rendezvous: a node must forget a member the moment its connection drops (a
//! closed tab is not a peer for anyone to dial), answer a join with a bounded random
//! sample instead of the whole swarm, share its view with federated nodes, and check
//! private-swarm tokens. Rendezvous keeps registrations until their TTL (two hours by
//! default), pages through every registration, and has no hook for any of that.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// libp2p protocol name of the membership protocol.
pub const MEMBERSHIP_PROTOCOL: &str = "/shoal/membership/1";

/// Longest swarm id accepted, in bytes.
pub const MAX_SWARM_ID_LEN: usize = 256;

/// Longest access token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A request from a peer to a signalling node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum MembershipRequest {
    /// Become (or stay) a member of `swarm` and get a sample of its other members.
    /// Idempotent: peers repeat it to refresh their sample.
    Join {
        swarm: String,
        /// Access token for a private swarm.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Stop being a member of `swarm`.
    Leave { swarm: String },
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum MembershipResponse {
    /// Joined; `members` is a random sample of the other members, `size` how many
    /// members the swarm has in all (peers use it to decide how eagerly to seed).
    Joined {
        members: Vec<Member>,
        #[serde(default)]
        size: u64,
    },
    Left,
    /// The request was refused; nothing changed.
    Refused {
        reason: RefusalReason,
    },
}

/// Why a node refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Error)]
#[serde(rename_all = "camelCase")]
pub enum RefusalReason {
    #[error("swarm id is empty or longer than {MAX_SWARM_ID_LEN} bytes")]
    BadSwarmId,
    #[error("this swarm needs a valid access token")]
    Unauthorized,
    #[error("the node holds as many members as it is configured for")]
    NodeFull,
    #[error("the peer is in as many swarms as a node allows")]
    TooManySwarms,
    #[error("this swarm already has as many members from the peer's network as a node allows")]
    TooManyFromNetwork,
    #[error("this node does not support private swarms (access tokens) yet")]
    TokensUnsupported,
}

/// A member of a swarm, as a node describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's PeerId.
    pub peer: String,
    /// Where to reach it: `<node addr>/p2p/<node>/p2p-circuit/webrtc/p2p/<peer>`.
    pub addrs: Vec<String>,
}

/// Checks a swarm id from the network.
pub fn validate_swarm_id(swarm: &str) -> Result<(), RefusalReason> {
    if swarm.is_empty() || swarm.len() > MAX_SWARM_ID_LEN {
        return Err(RefusalReason::BadSwarmId);
    }
    Ok(())
}

/// `/.well-known/shoal.json`: how a page reaches the node that served it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WellKnown {
    /// Format version; bumped on incompatible changes.
    pub version: u32,
    /// The node's PeerId.
    pub peer_id: String,
    /// Browser-dialable multiaddrs of the node (`/webrtc-direct` with certhash, `/ws`),
    /// each ending in `/p2p/<peer_id>`.
    pub multiaddrs: Vec<String>,
    /// Browser-dialable multiaddrs of other nodes this one federates with.
    #[serde(default)]
    pub federation: Vec<String>,
    /// STUN and TURN servers for browser-to-browser connections, as
    /// `RTCConfiguration.iceServers` takes them (TURN entries with time-limited
    /// credentials). Pages use them unless their own `iceServers` option says otherwise.
    #[serde(default)]
    pub ice_servers: Vec<IceServerInfo>,
}

/// One entry of [`WellKnown::ice_servers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServerInfo {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Current [`WellKnown::version`].
pub const WELL_KNOWN_VERSION: u32 = 1;

/// Path of the well-known document.
pub const WELL_KNOWN_PATH: &str = "/.well-known/shoal.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_shape() {
        let join = MembershipRequest::Join { swarm: "live/720p".into(), token: None };
        assert_eq!(serde_json::to_string(&join).unwrap(), r#"{"type":"join","swarm":"live/720p"}"#);
        let joined: MembershipResponse = serde_json::from_str(r#"{"type":"joined","members":[]}"#).unwrap();
        assert_eq!(joined, MembershipResponse::Joined { members: vec![], size: 0 }, "older nodes send no size");
        let refused = MembershipResponse::Refused { reason: RefusalReason::Unauthorized };
        assert_eq!(serde_json::to_string(&refused).unwrap(), r#"{"type":"refused","reason":"unauthorized"}"#);
        let parsed: MembershipRequest = serde_json::from_str(r#"{"type":"leave","swarm":"x"}"#).unwrap();
        assert_eq!(parsed, MembershipRequest::Leave { swarm: "x".into() });
    }

    #[test]
    fn unknown_request_types_are_errors() {
        assert!(serde_json::from_str::<MembershipRequest>(r#"{"type":"nuke"}"#).is_err());
        assert!(serde_json::from_str::<MembershipRequest>(r#"[1,2,3]"#).is_err());
    }

    #[test]
    fn swarm_ids_are_bounded() {
        assert_eq!(validate_swarm_id(""), Err(RefusalReason::BadSwarmId));
        assert_eq!(validate_swarm_id(&"x".repeat(MAX_SWARM_ID_LEN + 1)), Err(RefusalReason::BadSwarmId));
        assert!(validate_swarm_id("https://cdn.example/live/master.m3u8").is_ok());
    }
}
