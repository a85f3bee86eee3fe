//! Browser → server over `/webrtc-direct` (the libp2p WebRTC-direct spec), on the same
//! connection and stream code as browser-to-browser: the server needs no TLS certificate,
//! its address carries the hash of its DTLS certificate, and a Noise handshake on a
//! negotiated data channel binds both certificates to both PeerIds.
//!
//! The browser cannot be told the server's certificate or ICE credentials other than
//! through SDP, so it builds the server's answer itself from the multiaddr, and uses an
//! ICE ufrag the server recognises (`libp2p+webrtc+v1/…`).

use std::{net::SocketAddr, sync::Arc};

use futures::future::{self, Either};
use futures_timer::Delay;
use libp2p::{PeerId, identity::Keypair};
use libp2p_webrtc_utils::Fingerprint;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use web_sys::{RtcDataChannelInit, RtcSdpType, RtcSessionDescriptionInit};

use super::{
    Config, Connection, Error, Stream, connection::InboundChannels, driver::new_peer_connection, js_error, take_budget,
};
use crate::signaling::validate_sdp;

/// Prefix servers look for in the ICE username fragment.
const UFRAG_PREFIX: &str = "libp2p+webrtc+v1/";

/// Dials the server at `addr` whose certificate hashes to `server_fingerprint`.
pub(crate) async fn dial(
    addr: SocketAddr,
    server_fingerprint: Fingerprint,
    keypair: Keypair,
    config: Arc<Config>,
) -> Result<(PeerId, Connection), Error> {
    take_budget(config.peer_connection_budget, crate::handshake::Role::Dialer)?;
    // The node is an ICE-lite listener at a known address: STUN and TURN servers would
    // only add candidates (and a STUN round trip) it never needs.
    let config = Arc::new(Config { fin_ack: false, ice_servers: Vec::new(), ..(*config).clone() });
    let pc = new_peer_connection(&config, false)?;
    let inbound = InboundChannels::install(&pc, &config);
    let attempt = async {
        // The Noise channel must exist before the offer, so the offer has a data section.
        let init = RtcDataChannelInit::new();
        init.set_negotiated(true);
        init.set_id(0);
        let noise_channel = pc.create_data_channel_with_data_channel_dict("", &init);
        let handshake = Stream::new_handshake(noise_channel, &config);

        let ufrag = random_ufrag();
        let offer = JsFuture::from(pc.create_offer()).await.map_err(|e| Error::Js(js_error(e)))?;
        let offer_sdp = js_sys::Reflect::get(&offer, &JsValue::from_str("sdp"))
            .ok()
            .and_then(|v| v.as_string())
            .ok_or_else(|| Error::Js("offer without sdp".into()))?;
        let local = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
        local.set_sdp(&with_ufrag(&offer_sdp, &ufrag));
        JsFuture::from(pc.set_local_description(&local)).await.map_err(|e| Error::Js(js_error(e)))?;
        let remote = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
        remote.set_sdp(&server_answer(addr, &server_fingerprint, &ufrag));
        JsFuture::from(pc.set_remote_description(&remote)).await.map_err(|e| Error::Js(js_error(e)))?;

        let local_sdp = pc.local_description().map(|d| d.sdp()).unwrap_or_default();
        let local_fingerprint = validate_sdp(&local_sdp).map_err(|e| Error::Js(format!("own offer: {e}")))?;
        let peer = libp2p_webrtc_utils::noise::outbound(
            keypair,
            handshake,
            server_fingerprint,
            Fingerprint::raw(local_fingerprint),
        )
        .await
        .map_err(|e| Error::Connection(format!("noise handshake with the server failed: {e}")))?;
        Ok(peer)
    };
    let deadline = Delay::new(config.handshake_timeout);
    // Boxed so it can be dropped (ending its borrows of `pc` and `config`) before they
    // are handed to the connection.
    let result = match future::select(Box::pin(attempt), deadline).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => {
            Err(Error::Connection(format!("no connection to {addr} within {:?}", config.handshake_timeout)))
        }
    };
    match result {
        Ok(peer) => Ok((peer, Connection::new(peer, pc, inbound, config, true))),
        Err(error) => {
            pc.close();
            Err(error)
        }
    }
}

fn random_ufrag() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = (0..32)
        .map(|_| ALPHABET[(js_sys::Math::random() * ALPHABET.len() as f64) as usize % ALPHABET.len()] as char)
        .collect();
    format!("{UFRAG_PREFIX}{tail}")
}

/// The browser's offer with ICE credentials the server will recognise.
pub(crate) fn with_ufrag(offer: &str, ufrag: &str) -> String {
    let mut out = String::with_capacity(offer.len() + 64);
    for line in offer.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(ufrag);
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// The server's answer, as the spec defines it: ICE-lite, passive DTLS, one host
/// candidate at `addr`, the certificate fingerprint from the multiaddr, and the same ICE
/// credentials the offer carries.
pub(crate) fn server_answer(addr: SocketAddr, fingerprint: &Fingerprint, ufrag: &str) -> String {
    let (family, ip, port) = match addr {
        SocketAddr::V4(a) => ("IP4", a.ip().to_string(), a.port()),
        SocketAddr::V6(a) => ("IP6", a.ip().to_string(), a.port()),
    };
    [
        "v=0".to_owned(),
        format!("o=- 0 0 IN {family} {ip}"),
        "s=-".to_owned(),
        format!("c=IN {family} {ip}"),
        "t=0 0".to_owned(),
        "a=ice-lite".to_owned(),
        format!("m=application {port} UDP/DTLS/SCTP webrtc-datachannel"),
        "a=mid:0".to_owned(),
        "a=setup:passive".to_owned(),
        format!("a=ice-ufrag:{ufrag}"),
        format!("a=ice-pwd:{ufrag}"),
        format!("a=fingerprint:{} {}", fingerprint.algorithm(), fingerprint.to_sdp_format()),
        "a=sctp-port:5000".to_owned(),
        "a=max-message-size:16384".to_owned(),
        format!("a=candidate:1467250027 1 UDP 1467250027 {ip} {port} typ host"),
        "a=end-of-candidates".to_owned(),
        String::new(),
    ]
    .join("\r\n")
}
