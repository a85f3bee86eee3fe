//! Multiaddr shapes of browser-to-browser WebRTC.
//!
//! - dial: `<relay addr>/p2p/<relay>/p2p-circuit/webrtc/p2p/<peer>`
//! - the relayed connection used for signalling: the same without `/webrtc`
//! - listen: `/webrtc`, or `<relay addr>/p2p/<relay>/p2p-circuit/webrtc`
//!
//! Also the text form of multiaddrs ([`parse`]), without `multibase`.

use libp2p::{
    Multiaddr, PeerId,
    multiaddr::{Protocol, multihash::Multihash},
};

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

/// Why a multiaddr's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrParseError {
    #[error("a multiaddr starts with '/'")]
    NoLeadingSlash,
    #[error("/{0} needs a value")]
    MissingValue(String),
    #[error("bad value for /{protocol}: {value}")]
    BadValue { protocol: String, value: String },
    #[error("unsupported protocol /{0}")]
    Unsupported(String),
    #[error("certhash must be multibase base64url ('u'), got {0:?}")]
    CerthashBase(String),
}

/// Parses the text form of a multiaddr, for the protocols a browser peer meets: IP and
/// DNS hosts, TCP/UDP ports, `ws`/`wss`/`tls`/`quic-v1`/`webtransport`, `webrtc-direct`
/// with `certhash`, `webrtc`, `p2p` and `p2p-circuit`.
///
/// `Multiaddr::from_str` would do, but it decodes `certhash` through `multibase`, which
/// links every base `multibase` knows: 89 KB of the wasm (24 KB gzipped) to read
/// base64url. Every libp2p implementation writes certhashes in base64url (`u`).
pub fn parse(text: &str) -> Result<Multiaddr, AddrParseError> {
    let mut addr = Multiaddr::empty();
    // The empty address is written "", as `Multiaddr` displays it.
    if text.is_empty() {
        return Ok(addr);
    }
    let rest = text.strip_prefix('/').ok_or(AddrParseError::NoLeadingSlash)?;
    let mut parts = rest.split('/');
    while let Some(name) = parts.next() {
        let mut value = || parts.next().ok_or_else(|| AddrParseError::MissingValue(name.to_string()));
        let bad = |value: &str| AddrParseError::BadValue { protocol: name.to_string(), value: value.to_string() };
        let protocol = match name {
            "ip4" => {
                let v = value()?;
                Protocol::Ip4(v.parse().map_err(|_| bad(v))?)
            }
            "ip6" => {
                let v = value()?;
                Protocol::Ip6(v.parse().map_err(|_| bad(v))?)
            }
            "dns" | "dns4" | "dns6" | "dnsaddr" => {
                let host = std::borrow::Cow::Owned(value()?.to_string());
                match name {
                    "dns" => Protocol::Dns(host),
                    "dns4" => Protocol::Dns4(host),
                    "dns6" => Protocol::Dns6(host),
                    _ => Protocol::Dnsaddr(host),
                }
            }
            "tcp" | "udp" => {
                let v = value()?;
                let port: u16 = v.parse().map_err(|_| bad(v))?;
                if name == "tcp" { Protocol::Tcp(port) } else { Protocol::Udp(port) }
            }
            "ws" => Protocol::Ws("/".into()),
            "wss" => Protocol::Wss("/".into()),
            "tls" => Protocol::Tls,
            "quic-v1" => Protocol::QuicV1,
            "webtransport" => Protocol::WebTransport,
            "webrtc-direct" => Protocol::WebRTCDirect,
            "webrtc" => Protocol::WebRTC,
            "p2p-circuit" => Protocol::P2pCircuit,
            "certhash" => {
                let v = value()?;
                let encoded = v.strip_prefix('u').ok_or_else(|| AddrParseError::CerthashBase(v.to_string()))?;
                let bytes = base64url_decode(encoded).ok_or_else(|| bad(v))?;
                Protocol::Certhash(Multihash::from_bytes(&bytes).map_err(|_| bad(v))?)
            }
            "p2p" => {
                let v = value()?;
                Protocol::P2p(v.parse().map_err(|_| bad(v))?)
            }
            other => return Err(AddrParseError::Unsupported(other.to_string())),
        };
        addr.push(protocol);
    }
    Ok(addr)
}

/// Decodes unpadded base64url (RFC 4648 §5); `None` on any other character or a
/// length no encoder produces.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    let text = text.as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for group in text.chunks(4) {
        let mut bits = 0u32;
        for &c in group {
            bits = bits << 6 | sextet(c)?;
        }
        // A group of n characters carries n*6 bits, of which (n-1) whole bytes.
        let bytes = group.len() - 1;
        bits <<= 6 * (4 - group.len());
        let word = bits.to_be_bytes();
        out.extend_from_slice(&word[1..1 + bytes]);
        // Unused low bits must be zero, as a canonical encoder writes them.
        if bytes < 3 && word[1 + bytes] != 0 {
            return None;
        }
    }
    Some(out)
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

    #[test]
    fn webrtc_address_of_a_relayed_one() {
        let relayed: Multiaddr = "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/p2p/12D3KooWHqwQnJnNkNMXUFuiPq2PYjVtx8zc2VnmK8H2hv8Z5oZa".parse().unwrap();
        let direct = webrtc_from_relayed(&relayed);
        assert!(is_webrtc(&direct));
        assert_eq!(parse_dial_addr(&direct).unwrap().relayed, relayed);
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use proptest::prelude::*;

    const RELAY: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    const PEER: &str = "12D3KooWHqwQnJnNkNMXUFuiPq2PYjVtx8zc2VnmK8H2hv8Z5oZa";

    /// Our parser agrees with `Multiaddr::from_str` on every shape Shoal meets.
    #[test]
    fn agrees_with_multiaddr_crate() {
        for text in [
            format!(
                "/ip4/10.99.0.1/udp/9090/webrtc-direct/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g/p2p/{RELAY}/p2p-circuit/webrtc/p2p/{PEER}"
            ),
            format!("/ip4/127.0.0.1/tcp/4001/ws/p2p/{RELAY}"),
            format!("/dns4/node.example.com/tcp/443/wss/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"),
            "/ip6/::1/udp/1/quic-v1/webtransport".to_string(),
            "/dns/example.com/tcp/1/tls/ws".to_string(),
            "/dns6/a/udp/2/webrtc-direct".to_string(),
            "/dnsaddr/bootstrap.libp2p.io".to_string(),
            "/webrtc".to_string(),
            String::new(),
        ] {
            let ours = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let theirs: Multiaddr = text.parse().unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let cases = [
            ("ip4/1.2.3.4", AddrParseError::NoLeadingSlash),
            ("/ip4", AddrParseError::MissingValue("ip4".into())),
            ("/ip4/1.2.3", AddrParseError::BadValue { protocol: "ip4".into(), value: "1.2.3".into() }),
            ("/udp/65536", AddrParseError::BadValue { protocol: "udp".into(), value: "65536".into() }),
            ("/p2p/notapeer", AddrParseError::BadValue { protocol: "p2p".into(), value: "notapeer".into() }),
            ("/unix/tmp", AddrParseError::Unsupported("unix".into())),
            ("/ip4/1.2.3.4//udp/1", AddrParseError::Unsupported("".into())),
            ("/ip4/1.2.3.4/", AddrParseError::Unsupported("".into())),
            ("/", AddrParseError::Unsupported("".into())),
            ("/certhash/zQm", AddrParseError::CerthashBase("zQm".into())),
            ("/certhash/uE*", AddrParseError::BadValue { protocol: "certhash".into(), value: "uE*".into() }),
            // Base64url that is not a multihash.
            ("/certhash/uAA", AddrParseError::BadValue { protocol: "certhash".into(), value: "uAA".into() }),
        ];
        for (text, error) in cases {
            assert_eq!(parse(text), Err(error), "{text}");
        }
    }

    #[test]
    fn base64url_rejects_impossible_lengths_and_stray_bits() {
        assert_eq!(base64url_decode(""), Some(vec![]));
        assert_eq!(base64url_decode("QQ"), Some(b"A".to_vec()));
        assert_eq!(base64url_decode("QUI"), Some(b"AB".to_vec()));
        assert_eq!(base64url_decode("QUJD"), Some(b"ABC".to_vec()));
        assert_eq!(base64url_decode("Q"), None);
        assert_eq!(base64url_decode("QR"), None, "low bits set");
        assert_eq!(base64url_decode("QQ=="), None, "padding is not base64url-unpadded");
    }

    fn protocol() -> impl Strategy<Value = Protocol<'static>> {
        let peer = any::<[u8; 32]>().prop_map(|seed| {
            let key = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
            Protocol::P2p(key.public().to_peer_id())
        });
        let certhash = proptest::collection::vec(any::<u8>(), 0..=64)
            .prop_map(|digest| Protocol::Certhash(Multihash::wrap(0x12, &digest).unwrap()));
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| Protocol::Ip4(b.into())),
            any::<[u8; 16]>().prop_map(|b| Protocol::Ip6(b.into())),
            "[a-z0-9.-]{1,20}".prop_map(|h| Protocol::Dns4(h.into())),
            any::<u16>().prop_map(Protocol::Tcp),
            any::<u16>().prop_map(Protocol::Udp),
            Just(Protocol::Ws("/".into())),
            Just(Protocol::WebRTCDirect),
            Just(Protocol::WebRTC),
            Just(Protocol::P2pCircuit),
            certhash,
            peer,
        ]
    }

    proptest! {
        /// What the multiaddr crate writes, we read back to the same address.
        #[test]
        fn reads_what_multiaddr_writes(protocols in proptest::collection::vec(protocol(), 0..8)) {
            let addr: Multiaddr = protocols.into_iter().collect();
            prop_assert_eq!(parse(&addr.to_string()).unwrap(), addr);
        }

        #[test]
        fn never_panics(text in "/[a-z0-9/._:-]{0,80}") {
            let _ = parse(&text);
        }
    }
}
