//! How a dial to another page ended, in the few classes an operator can act on: which
//! candidate types carried a connection (does STUN suffice, how much goes through TURN),
//! and why a dial failed (ICE never connected, the other page never answered, nobody
//! would carry the signalling).

use crate::handshake::{HandshakeError, Phase};

/// Why a dial to another page failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialFailure {
    /// Offer and answer were exchanged but ICE/DTLS never connected: no candidate pair
    /// worked (NATs in the way, no TURN) or the connection failed while it formed.
    IceFailed,
    /// The signalling stream was open but the other page never answered in time.
    SignallingTimeout,
    /// No signalling at all: the relay or the other page refused the stream, or the
    /// other page is gone.
    Refused,
    /// Anything else: malformed answers, a wrong certificate, the page's budget spent.
    Other,
}

impl DialFailure {
    /// Classifies the text of a failed dial's error chain (the transport's errors reach
    /// the swarm boxed, and their messages are this crate's own).
    pub fn of(error: &str) -> Self {
        if error.contains("peer connection became")
            || error.contains(&Phase::Connecting.to_string())
            || error.contains("ICE/DTLS failed")
        {
            Self::IceFailed
        } else if error.contains("timed out while") {
            Self::SignallingTimeout
        } else if error.contains("no signalling stream to the peer") || error.contains("signalling stream closed while")
        {
            Self::Refused
        } else {
            Self::Other
        }
    }

    /// The class's name in events and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IceFailed => "ice-failed",
            Self::SignallingTimeout => "signalling-timeout",
            Self::Refused => "refused",
            Self::Other => "other",
        }
    }
}

impl HandshakeError {
    /// The class of a dial that ended with this error.
    pub fn dial_failure(&self) -> DialFailure {
        match self {
            HandshakeError::ConnectionFailed(..) | HandshakeError::Timeout(Phase::Connecting) => DialFailure::IceFailed,
            HandshakeError::Timeout(_) => DialFailure::SignallingTimeout,
            HandshakeError::SignalingClosed(_) => DialFailure::Refused,
            _ => DialFailure::Other,
        }
    }
}

/// The candidate types that carry a connection, from its selected ICE pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Host or peer-reflexive candidates at both ends: the same network, or an address
    /// learnt during the connectivity checks themselves (browsers hide host addresses
    /// behind mDNS names, so a LAN pair often shows as `prflx`).
    Host,
    /// A server-reflexive candidate (learnt from STUN) at either end, no relay.
    ServerReflexive,
    /// A TURN relay candidate at either end.
    Relayed,
}

impl PathKind {
    /// Classifies a selected pair by its candidate types (`RTCIceCandidateType`).
    pub fn of(local: &str, remote: &str) -> Self {
        if local == "relay" || remote == "relay" {
            Self::Relayed
        } else if local == "srflx" || remote == "srflx" {
            Self::ServerReflexive
        } else {
            Self::Host
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::PeerConnectionState;

    #[test]
    fn the_text_of_each_handshake_error_classes_as_the_error_does() {
        let errors = [
            HandshakeError::ConnectionFailed(PeerConnectionState::Failed, Phase::Connecting),
            HandshakeError::Timeout(Phase::Connecting),
            HandshakeError::Timeout(Phase::AwaitingAnswer),
            HandshakeError::Timeout(Phase::AwaitingOffer),
            HandshakeError::SignalingClosed(Phase::AwaitingAnswer),
            HandshakeError::FingerprintMismatch,
            HandshakeError::TooManyCandidates(65),
            HandshakeError::Browser { message: "x".into(), phase: Phase::CreatingOffer },
        ];
        for error in errors {
            // As the swarm reports it: the transport's error wrapping the handshake's.
            let text =
                format!("Failed to negotiate transport protocol(s): [(/ip4/1.2.3.4/...: : handshake failed: {error})]");
            assert_eq!(DialFailure::of(&text), error.dial_failure(), "{text}");
        }
        assert_eq!(HandshakeError::Timeout(Phase::Connecting).dial_failure(), DialFailure::IceFailed);
        assert_eq!(HandshakeError::Timeout(Phase::AwaitingAnswer).dial_failure(), DialFailure::SignallingTimeout);
    }

    #[test]
    fn transport_errors_outside_the_handshake_class_too() {
        assert_eq!(
            DialFailure::of("no signalling stream to the peer: relayed connection failed: NO_RESERVATION"),
            DialFailure::Refused
        );
        assert_eq!(DialFailure::of("connection lost: ICE/DTLS failed"), DialFailure::IceFailed);
        assert_eq!(DialFailure::of("RTCPeerConnection budget spent: 400 created in this page"), DialFailure::Other);
    }

    #[test]
    fn a_relay_at_either_end_makes_a_relayed_path() {
        assert_eq!(PathKind::of("relay", "host"), PathKind::Relayed);
        assert_eq!(PathKind::of("srflx", "relay"), PathKind::Relayed);
        assert_eq!(PathKind::of("host", "srflx"), PathKind::ServerReflexive);
        assert_eq!(PathKind::of("prflx", "host"), PathKind::Host);
        assert_eq!(PathKind::of("host", "host"), PathKind::Host);
    }
}
