//! Browser-to-browser WebRTC for rust-libp2p (the libp2p `/webrtc` spec), for wasm32.
//!
//! A peer listens by holding a circuit relay v2 reservation and advertising
//! `<relay>/p2p-circuit/webrtc/p2p/<me>`. A dialer opens a relayed connection to it, runs
//! `/webrtc-signaling/0.0.1` on that Noise-authenticated connection to exchange SDP and
//! ICE candidates, and ends up on a direct `RTCPeerConnection` whose DTLS certificate is
//! the one signalled. The relayed connection is closed once the direct one is up.
//!
//! Layout:
//! - pure, tested natively: [`signaling`] (wire codec, SDP checks), [`handshake`] (the
//!   offer/answer state machine), [`frame`] (stream framing and half-close), [`addr`],
//!   [`outcome`] (how dials end, for stats and metrics);
//! - [`Behaviour`]: the swarm side — dials relayed connections and carries signalling
//!   streams between them and the transport;
//! - wasm32 only: `Transport`, `Connection`, `Stream` over `web_sys` WebRTC.

pub mod addr;
mod behaviour;
pub mod frame;
pub mod handshake;
pub mod json;
pub mod outcome;
mod proto;
pub mod signaling;

pub use behaviour::{Behaviour, Event as BehaviourEvent};
pub use proto::ProtoError;

#[cfg(target_arch = "wasm32")]
mod browser;
#[cfg(target_arch = "wasm32")]
pub use browser::{
    CandidatePair, Config, Connection, Error, IceServer, PeerConnectionReport, Stream, Transport,
    peer_connections_created, report as connection_report, selected_pair,
};

/// The signalling protocol, as a libp2p stream protocol name.
pub const SIGNALING_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new(signaling::PROTOCOL_NAME);
