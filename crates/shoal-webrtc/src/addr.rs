//! Multiaddr shapes of browser-to-browser WebRTC.
//!
//! - dial: `<relay addr>/p2p/<relay>/p2p-circuit/webrtc/p2p/<peer>`
//! - the relayed connection used for signalling: the same without `/webrtc`
//! - listen: `/webrtc`, or `<relay addr>/p2p/<relay>/p2p-circuit/webrtc`

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

/// A parsed browser-to-browser dial address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRtcDialAddr {
    /// The peer to connect to.
    pub peer: PeerId,
    /// Where to reach it through the relay: `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>`.
    pub relayed: Multiaddr,
}

/// Parses `<relay>/p2p-circuit/webrtc/p2p/<peer>`; `None` for any other shape.
pub fn parse_dial_addr(addr: &Multiaddr) -> Option<WebRtcDialAddr> {
    let protocols: Vec<Protocol<'_>> = addr.iter().collect();
    let circuit = protocols.iter().position(|p| matches!(p, Protocol::P2pCircuit))?;
    // Exactly `/p2p-circuit/webrtc/p2p/<peer>` at the end, and a relay peer id before it.
    let [Protocol::P2pCircuit, Protocol::WebRTC, Protocol::P2p(peer)] = &protocols[circuit..] else {
        return None;
    };
    let relay = &protocols[..circuit];
    if !matches!(relay.last(), Some(Protocol::P2p(_))) || relay.len() < 2 {
        return None;
    }
    let mut relayed: Multiaddr = relay.iter().cloned().collect();
    relayed.push(Protocol::P2pCircuit);
    relayed.push(Protocol::P2p(*peer));
    Some(WebRtcDialAddr { peer: *peer, relayed })
}

/// Whether `addr` is one we listen on: `/webrtc` or `<relay>/p2p-circuit/webrtc`.
pub fn is_listen_addr(addr: &Multiaddr) -> bool {
    let protocols: Vec<Protocol<'_>> = addr.iter().collect();
    matches!(protocols.as_slice(), [Protocol::WebRTC] | [.., Protocol::P2p(_), Protocol::P2pCircuit, Protocol::WebRTC])
}

/// The address a listener advertises for a relay reservation address
/// (`<relay>/p2p-circuit`, possibly ending in `/p2p/<me>`): `<relay>/p2p-circuit/webrtc`.
pub fn webrtc_addr_for_reservation(reservation: &Multiaddr) -> Option<Multiaddr> {
    let mut protocols: Vec<Protocol<'_>> = reservation.iter().collect();
    if matches!(protocols.last(), Some(Protocol::P2p(_))) {
        protocols.pop();
    }
    if !matches!(protocols.last(), Some(Protocol::P2pCircuit)) {
        return None;
    }
    protocols.push(Protocol::WebRTC);
    Some(protocols.into_iter().collect())
}

/// Whether `addr` runs over a relay circuit.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Whether `addr` is a direct browser-to-browser WebRTC address.
pub fn is_webrtc(addr: &Multiaddr) -> bool {
    let mut after_circuit = false;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => after_circuit = true,
            Protocol::WebRTC if after_circuit => return true,
            _ => {}
        }
    }
    matches!(addr.iter().next(), Some(Protocol::WebRTC))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    const PEER: &str = "12D3KooWHqwQnJnNkNMXUFuiPq2PYjVtx8zc2VnmK8H2hv8Z5oZa";

    #[test]
    fn parses_dial_addr() {
        let addr: Multiaddr = format!("/ip4/10.99.0.1/udp/9090/webrtc-direct/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g/p2p/{RELAY}/p2p-circuit/webrtc/p2p/{PEER}").parse().unwrap();
        let parsed = parse_dial_addr(&addr).unwrap();
        assert_eq!(parsed.peer.to_string(), PEER);
        assert_eq!(
            parsed.relayed.to_string(),
            format!(
                "/ip4/10.99.0.1/udp/9090/webrtc-direct/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"
            )
        );
        assert!(is_webrtc(&addr));
        assert!(is_relayed(&addr));
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            format!("/ip4/1.2.3.4/tcp/1/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"),
            format!("/ip4/1.2.3.4/tcp/1/p2p-circuit/webrtc/p2p/{PEER}"),
            format!("/p2p/{RELAY}/p2p-circuit/webrtc/p2p/{PEER}"),
            format!("/ip4/1.2.3.4/tcp/1/p2p/{RELAY}/p2p-circuit/webrtc"),
            format!("/ip4/1.2.3.4/udp/1/webrtc-direct/p2p/{PEER}"),
        ] {
            let addr: Multiaddr = bad.parse().unwrap();
            assert_eq!(parse_dial_addr(&addr), None, "{bad}");
        }
    }

    #[test]
    fn listen_and_reservation_addrs() {
        assert!(is_listen_addr(&"/webrtc".parse().unwrap()));
        let reservation: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{RELAY}/p2p-circuit/p2p/{PEER}").parse().unwrap();
        let advertised = webrtc_addr_for_reservation(&reservation).unwrap();
        assert_eq!(advertised.to_string(), format!("/ip4/1.2.3.4/tcp/1/p2p/{RELAY}/p2p-circuit/webrtc"));
        assert!(is_listen_addr(&advertised));
        assert!(!is_listen_addr(&reservation));
        assert_eq!(webrtc_addr_for_reservation(&"/ip4/1.2.3.4/tcp/1".parse().unwrap()), None);
    }
}

/// The remote address of a direct connection that was signalled over `relayed`
/// (`<relay>/p2p-circuit/p2p/<peer>` → `<relay>/p2p-circuit/webrtc/p2p/<peer>`).
pub fn webrtc_from_relayed(relayed: &Multiaddr) -> Multiaddr {
    let mut out = Multiaddr::empty();
    for p in relayed.iter() {
        let is_circuit = matches!(p, Protocol::P2pCircuit);
        out.push(p);
        if is_circuit {
            out.push(Protocol::WebRTC);
        }
    }
    out
}

#[cfg(test)]
mod relayed_tests {
    use super::*;

    #[test]
    fn webrtc_address_of_a_relayed_one() {
        let relayed: Multiaddr = "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/p2p/12D3KooWHqwQnJnNkNMXUFuiPq2PYjVtx8zc2VnmK8H2hv8Z5oZa".parse().unwrap();
        let direct = webrtc_from_relayed(&relayed);
        assert!(is_webrtc(&direct));
        assert_eq!(parse_dial_addr(&direct).unwrap().relayed, relayed);
    }
}
