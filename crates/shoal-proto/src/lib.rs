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
    /// How this page's own dials to other pages ended since its last report, so the
    /// operator sees how viewers connect (`shoal_peer_connections_total` on `/metrics`).
    /// A node counts at most one report per peer per [`REPORT_INTERVAL_MIN_SECS`], each
    /// figure capped at [`MAX_REPORTED_OUTCOMES`].
    Report { outcomes: ConnectionOutcomes },
}

/// Shortest interval between two counted [`MembershipRequest::Report`]s of one peer.
pub const REPORT_INTERVAL_MIN_SECS: u64 = 10;

/// Largest figure of one report a node counts (a page creates at most a few hundred
/// `RTCPeerConnection`s in its life).
pub const MAX_REPORTED_OUTCOMES: u32 = 256;

/// How dials to other pages ended. A connection is classed by its selected ICE pair:
/// `relay` if either end is a TURN relay candidate, else `srflx` if either end is
/// server-reflexive (an address learnt from STUN), else `host` (host or peer-reflexive
/// candidates: the same network, or an address learnt during the checks themselves).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionOutcomes {
    pub host: u32,
    pub srflx: u32,
    pub relay: u32,
    /// Offer and answer were exchanged but ICE/DTLS never connected.
    pub ice_failed: u32,
    /// The other page did not answer in time (signalling stream open, no answer).
    pub signalling_timeout: u32,
    /// No signalling stream: the relay or the other page refused it, or the page is gone.
    pub refused: u32,
    /// Anything else (malformed answers, the page's connection budget spent...).
    pub other: u32,
}

impl ConnectionOutcomes {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Each figure with its label on `/metrics`.
    pub fn labelled(&self) -> [(&'static str, u32); 7] {
        [
            ("host", self.host),
            ("srflx", self.srflx),
            ("relay", self.relay),
            ("ice_failed", self.ice_failed),
            ("signalling_timeout", self.signalling_timeout),
            ("refused", self.refused),
            ("other", self.other),
        ]
    }

    /// What is left of `self` once `sent` is accounted for (figures never go negative).
    pub fn minus(&self, sent: &Self) -> Self {
        Self {
            host: self.host.saturating_sub(sent.host),
            srflx: self.srflx.saturating_sub(sent.srflx),
            relay: self.relay.saturating_sub(sent.relay),
            ice_failed: self.ice_failed.saturating_sub(sent.ice_failed),
            signalling_timeout: self.signalling_timeout.saturating_sub(sent.signalling_timeout),
            refused: self.refused.saturating_sub(sent.refused),
            other: self.other.saturating_sub(sent.other),
        }
    }
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
    /// A report was counted.
    Reported,
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
    #[error("reports come at most once every {REPORT_INTERVAL_MIN_SECS} s")]
    TooFrequent,
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

/// Where a publisher's signed record of a segment is found: beside the segment, at its
/// URL's path plus `suffix` (`.shoal` by default), any query kept last. A byte range of a
/// file (an HLS `EXT-X-BYTERANGE` segment, bytes `start..end`, end exclusive) is a
/// segment of its own: its record is at the file's path plus `.{start}-{end}` and the
/// suffix, so a static host serves each range's record as a file of its own.
pub fn record_url(segment_url: &str, range: Option<(u64, u64)>, suffix: &str) -> String {
    let (path, query) = segment_url.split_at(segment_url.find('?').unwrap_or(segment_url.len()));
    match range {
        Some((start, end)) => format!("{path}.{start}-{end}{suffix}{query}"),
        None => format!("{path}{suffix}{query}"),
    }
}

/// A number from JavaScript as a `u64`, if it is one exactly: a whole number from 0 to
/// 2^53 (beyond that, JS numbers skip integers). Segment ids, byte offsets and
/// timestamps that pages and Node.js scripts pass are checked with it.
pub fn js_whole_number(value: f64) -> Option<u64> {
    (value >= 0.0 && value.fract() == 0.0 && value <= 2f64.powi(53)).then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_urls_keep_the_query_last_and_name_byte_ranges() {
        assert_eq!(record_url("https://a/b.ts", None, ".shoal"), "https://a/b.ts.shoal");
        assert_eq!(record_url("https://a/b.ts?x=1&y=2", None, ".sig"), "https://a/b.ts.sig?x=1&y=2");
        assert_eq!(record_url("v/all.mp4", Some((1024, 4096)), ".shoal"), "v/all.mp4.1024-4096.shoal");
        assert_eq!(record_url("all.mp4?t=1", Some((0, 10)), ".shoal"), "all.mp4.0-10.shoal?t=1");
    }

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
    fn reports_have_a_stable_json_shape() {
        let report = MembershipRequest::Report {
            outcomes: ConnectionOutcomes { srflx: 2, ice_failed: 1, ..Default::default() },
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"type":"report","outcomes":{"host":0,"srflx":2,"relay":0,"iceFailed":1,"signallingTimeout":0,"refused":0,"other":0}}"#
        );
        // Figures a page does not know yet default to zero; negative ones are errors.
        let sparse: MembershipRequest = serde_json::from_str(r#"{"type":"report","outcomes":{"relay":3}}"#).unwrap();
        assert_eq!(
            sparse,
            MembershipRequest::Report { outcomes: ConnectionOutcomes { relay: 3, ..Default::default() } }
        );
        assert!(serde_json::from_str::<MembershipRequest>(r#"{"type":"report","outcomes":{"relay":-1}}"#).is_err());
        assert!(serde_json::from_str::<MembershipRequest>(r#"{"type":"report","outcomes":{"relay":1e12}}"#).is_err());
        let sent = ConnectionOutcomes { host: 3, refused: 1, ..Default::default() };
        let now = ConnectionOutcomes { host: 5, refused: 1, other: 1, ..Default::default() };
        assert_eq!(now.minus(&sent), ConnectionOutcomes { host: 2, other: 1, ..Default::default() });
        assert!(sent.minus(&now).is_empty());
    }

    #[test]
    fn unknown_request_types_are_errors() {
        assert!(serde_json::from_str::<MembershipRequest>(r#"{"type":"nuke"}"#).is_err());
        assert!(serde_json::from_str::<MembershipRequest>(r#"[1,2,3]"#).is_err());
    }

    #[test]
    fn js_whole_numbers_are_exact_u64s() {
        assert_eq!(js_whole_number(0.0), Some(0));
        assert_eq!(js_whole_number(2f64.powi(53)), Some(1 << 53));
        for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY, 2f64.powi(54)] {
            assert_eq!(js_whole_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn swarm_ids_are_bounded() {
        assert_eq!(validate_swarm_id(""), Err(RefusalReason::BadSwarmId));
        assert_eq!(validate_swarm_id(&"x".repeat(MAX_SWARM_ID_LEN + 1)), Err(RefusalReason::BadSwarmId));
        assert!(validate_swarm_id("https://cdn.example/live/master.m3u8").is_ok());
    }
}
