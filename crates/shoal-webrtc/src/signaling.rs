//! The `/webrtc-signaling/0.0.1` wire format: length-prefixed protobuf messages that carry
//! the SDP offer, the SDP answer and trickled ICE candidates over the relayed connection.
//!
//! Also owns what we accept inside them: an SDP must be a data-channel description with a
//! SHA-256 DTLS fingerprint, and a candidate must be a plausible `RTCIceCandidate.toJSON()`.
//! Everything here is pure so the codec is tested natively, including hostile input.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::proto::{Field, FieldReader, ProtoError, WIRE_LEN, WIRE_VARINT, get_varint, put_tag, put_varint};

/// Protocol name of the signalling stream, as js-libp2p speaks it.
pub const PROTOCOL_NAME: &str = "/webrtc-signaling/0.0.1";

/// Largest signalling message we accept or send, length prefix excluded.
///
/// Chromium's data-channel offers are ~0.5 KiB and a candidate ~0.2 KiB; 16 KiB leaves room
/// for SDP with many m-lines while keeping a hostile peer from making us buffer much.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;

/// Longest ICE candidate string we accept (RFC 8445 lines are far shorter).
const MAX_CANDIDATE_LEN: usize = 1024;

/// One message of the signalling protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalingMessage {
    /// `RTCSessionDescription.sdp` of the dialer's offer.
    Offer(String),
    /// `RTCSessionDescription.sdp` of the listener's answer.
    Answer(String),
    /// A trickled candidate; `None` means the sender has gathered all of its candidates.
    Candidate(Option<IceCandidate>),
}

const TYPE_OFFER: u64 = 0;
const TYPE_ANSWER: u64 = 1;
const TYPE_CANDIDATE: u64 = 2;

/// `RTCIceCandidate.toJSON()` as exchanged between libp2p implementations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex", skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Why bytes from the signalling stream were not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("signalling message of {0} bytes exceeds the {MAX_MESSAGE_LEN} byte limit")]
    TooLarge(u64),
    #[error("malformed signalling message: {0}")]
    Proto(#[from] ProtoError),
    #[error("unknown signalling message type {0}")]
    UnknownType(u64),
    #[error("signalling message data is not UTF-8")]
    NotUtf8,
    #[error("signalling message of type {0} carries no data")]
    MissingData(&'static str),
    #[error("ICE candidate is not valid JSON of RTCIceCandidate: {0}")]
    BadCandidate(String),
}

impl SignalingMessage {
    fn type_name(kind: u64) -> &'static str {
        match kind {
            TYPE_OFFER => "SDP_OFFER",
            TYPE_ANSWER => "SDP_ANSWER",
            _ => "ICE_CANDIDATE",
        }
    }

    /// Appends the length-prefixed encoding of `self` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, data) = match self {
            Self::Offer(sdp) => (TYPE_OFFER, sdp.clone()),
            Self::Answer(sdp) => (TYPE_ANSWER, sdp.clone()),
            // Cannot fail on this plain struct of strings and a number.
            Self::Candidate(Some(c)) => (TYPE_CANDIDATE, crate::json::to_string(c).unwrap_or_default()),
            Self::Candidate(None) => (TYPE_CANDIDATE, "null".to_owned()),
        };
        let mut body = Vec::with_capacity(data.len() + 8);
        put_tag(&mut body, 1, WIRE_VARINT);
        put_varint(&mut body, kind);
        put_tag(&mut body, 2, WIRE_LEN);
        put_varint(&mut body, data.len() as u64);
        body.extend_from_slice(data.as_bytes());
        put_varint(out, body.len() as u64);
        out.extend_from_slice(&body);
    }

    /// Decodes one message body (without its length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        // proto3 `optional`: a missing type reads as its default, SDP_OFFER.
        let mut kind = TYPE_OFFER;
        let mut data: Option<&[u8]> = None;
        let mut reader = FieldReader::new(body);
        while let Some(field) = reader.next_field()? {
            match field {
                Field::Varint(1, value) => kind = value,
                Field::Bytes(2, bytes) => data = Some(bytes),
                Field::Varint(2, _) => {
                    return Err(
                        ProtoError::WrongWireType { field: 2, wire_type: WIRE_VARINT, expected: WIRE_LEN }.into()
                    );
                }
                Field::Bytes(1, _) => {
                    return Err(
                        ProtoError::WrongWireType { field: 1, wire_type: WIRE_LEN, expected: WIRE_VARINT }.into()
                    );
                }
                _ => {}
            }
        }
        if kind > TYPE_CANDIDATE {
            return Err(DecodeError::UnknownType(kind));
        }
        let data = data.ok_or(DecodeError::MissingData(Self::type_name(kind)))?;
        let data = std::str::from_utf8(data).map_err(|_| DecodeError::NotUtf8)?;
        Ok(match kind {
            TYPE_OFFER => Self::Offer(data.to_owned()),
            TYPE_ANSWER => Self::Answer(data.to_owned()),
            _ => Self::Candidate(parse_candidate(data)?),
        })
    }
}

fn parse_candidate(json: &str) -> Result<Option<IceCandidate>, DecodeError> {
    let trimmed = json.trim();
    if trimmed.is_empty() || trimmed == "null" {
        return Ok(None);
    }
    let candidate: IceCandidate = crate::json::from_str(trimmed).map_err(DecodeError::BadCandidate)?;
    // An empty candidate string is the W3C end-of-candidates marker.
    if candidate.candidate.is_empty() {
        return Ok(None);
    }
    if candidate.candidate.len() > MAX_CANDIDATE_LEN {
        return Err(DecodeError::BadCandidate("candidate line too long".into()));
    }
    if !candidate.candidate.starts_with("candidate:") {
        return Err(DecodeError::BadCandidate("candidate line must start with `candidate:`".into()));
    }
    Ok(Some(candidate))
}

/// Reassembles messages from the byte stream of the signalling stream.
///
/// The stream may cut a message anywhere (js-libp2p writes prefix and body separately), so
/// bytes are buffered until a whole message is present. A length prefix beyond
/// [`MAX_MESSAGE_LEN`] fails at once, before its body is buffered.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<SignalingMessage>, DecodeError> {
        let Some((len, prefix)) = get_varint(&self.buf)? else {
            return Ok(None);
        };
        if len > MAX_MESSAGE_LEN as u64 {
            return Err(DecodeError::TooLarge(len));
        }
        let end = prefix + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let message = SignalingMessage::decode_body(&self.buf[prefix..end]);
        self.buf.drain(..end);
        message.map(Some)
    }
}

/// A SHA-256 DTLS certificate fingerprint.
pub type Fingerprint = [u8; 32];

/// Why a remote session description was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    #[error("SDP has no data channel (m=application) section")]
    NoDataChannel,
    #[error("SDP has no sha-256 DTLS fingerprint")]
    NoFingerprint,
    #[error("SDP fingerprint is malformed: {0}")]
    BadFingerprint(String),
    #[error("SDP carries two different DTLS fingerprints")]
    ConflictingFingerprints,
}

/// Checks that `sdp` describes a data-channel session and returns its DTLS fingerprint.
///
/// The fingerprint is what authenticates the direct connection: the SDP reached us over the
/// Noise-authenticated relayed connection, and the browser's DTLS handshake will only
/// complete against a certificate with this fingerprint.
pub fn validate_sdp(sdp: &str) -> Result<Fingerprint, SdpError> {
    let mut has_application = false;
    let mut fingerprint = None;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=application ") {
            has_application = true;
        } else if let Some(value) = line.strip_prefix("a=fingerprint:") {
            let mut parts = value.split_whitespace();
            let algorithm = parts.next().unwrap_or_default();
            if !algorithm.eq_ignore_ascii_case("sha-256") {
                continue;
            }
            let hex = parts.next().ok_or_else(|| SdpError::BadFingerprint("missing value".into()))?;
            let parsed = parse_fingerprint_hex(hex)?;
            match fingerprint {
                Some(existing) if existing != parsed => {
                    return Err(SdpError::ConflictingFingerprints);
                }
                _ => fingerprint = Some(parsed),
            }
        }
    }
    if !has_application {
        return Err(SdpError::NoDataChannel);
    }
    fingerprint.ok_or(SdpError::NoFingerprint)
}

/// Parses `AB:CD:...` (32 colon-separated hex bytes).
pub fn parse_fingerprint_hex(hex: &str) -> Result<Fingerprint, SdpError> {
    let mut out = [0u8; 32];
    let mut count = 0;
    for part in hex.split(':') {
        if count == 32 || part.len() != 2 {
            return Err(SdpError::BadFingerprint(format!("`{hex}` is not 32 colon-separated bytes")));
        }
        out[count] =
            u8::from_str_radix(part, 16).map_err(|_| SdpError::BadFingerprint(format!("`{part}` is not hex")))?;
        count += 1;
    }
    if count != 32 {
        return Err(SdpError::BadFingerprint(format!("`{hex}` is not 32 colon-separated bytes")));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const CHROME_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:m4Bv\r\na=ice-pwd:4Tf9k9ORu8wL1NvSPlkVXkxk\r\na=ice-options:trickle\r\na=fingerprint:sha-256 A8:17:77:1E:02:7E:D1:2B:53:92:70:A6:8E:F9:02:CC:21:72:3A:92:5D:F4:97:5F:27:C4:5E:75:D4:F4:31:89\r\na=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";

    fn roundtrip(message: SignalingMessage) {
        let mut bytes = Vec::new();
        message.encode(&mut bytes);
        let mut decoder = Decoder::new();
        decoder.extend(&bytes);
        assert_eq!(decoder.next_message().unwrap(), Some(message));
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn roundtrips_each_kind() {
        roundtrip(SignalingMessage::Offer(CHROME_OFFER.into()));
        roundtrip(SignalingMessage::Answer(CHROME_OFFER.replace("actpass", "active")));
        roundtrip(SignalingMessage::Candidate(None));
        roundtrip(SignalingMessage::Candidate(Some(IceCandidate {
            candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("m4Bv".into()),
        })));
    }

    #[test]
    fn reads_js_libp2p_candidate_json() {
        let json = r#"{"candidate":"candidate:3 1 udp 2122194687 10.99.0.1 52000 typ host generation 0 ufrag m4Bv network-id 2","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"m4Bv"}"#;
        let candidate = parse_candidate(json).unwrap().unwrap();
        assert_eq!(candidate.sdp_m_line_index, Some(0));
        assert_eq!(candidate.username_fragment.as_deref(), Some("m4Bv"));
        assert_eq!(parse_candidate(r#"{"candidate":""}"#).unwrap(), None);
        assert_eq!(parse_candidate("null").unwrap(), None);
    }

    #[test]
    fn matches_prost_encoding() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Message {
            #[prost(int32, optional, tag = "1")]
            r#type: Option<i32>,
            #[prost(string, optional, tag = "2")]
            data: Option<String>,
        }
        let ours = {
            let mut out = Vec::new();
            SignalingMessage::Answer("v=0".into()).encode(&mut out);
            out
        };
        let theirs =
            prost::Message::encode_length_delimited_to_vec(&Message { r#type: Some(1), data: Some("v=0".into()) });
        assert_eq!(ours, theirs);
    }

    #[test]
    fn message_split_at_every_byte() {
        let mut bytes = Vec::new();
        SignalingMessage::Offer(CHROME_OFFER.into()).encode(&mut bytes);
        SignalingMessage::Candidate(None).encode(&mut bytes);
        let mut decoder = Decoder::new();
        let mut got = Vec::new();
        for byte in &bytes {
            decoder.extend(std::slice::from_ref(byte));
            while let Some(message) = decoder.next_message().unwrap() {
                got.push(message);
            }
        }
        assert_eq!(got, vec![SignalingMessage::Offer(CHROME_OFFER.into()), SignalingMessage::Candidate(None)]);
    }

    #[test]
    fn oversize_prefix_fails_before_body_arrives() {
        let mut bytes = Vec::new();
        put_varint(&mut bytes, (MAX_MESSAGE_LEN + 1) as u64);
        let mut decoder = Decoder::new();
        decoder.extend(&bytes);
        assert_eq!(decoder.next_message(), Err(DecodeError::TooLarge((MAX_MESSAGE_LEN + 1) as u64)));
    }

    #[test]
    fn rejects_bad_bodies() {
        let decode = |body: &[u8]| SignalingMessage::decode_body(body);
        assert_eq!(decode(&[0x08, 7, 0x12, 0]), Err(DecodeError::UnknownType(7)));
        assert_eq!(decode(&[0x08, 1]), Err(DecodeError::MissingData("SDP_ANSWER")));
        assert_eq!(decode(&[0x08, 0, 0x12, 2, 0xff, 0xfe]), Err(DecodeError::NotUtf8));
        assert_eq!(decode(&[0x08, 0, 0x12, 5, b'a']), Err(DecodeError::Proto(ProtoError::Truncated)));
        assert!(matches!(decode(&[0x08, 2, 0x12, 1, b'{']), Err(DecodeError::BadCandidate(_))));
        let not_a_candidate = br#"{"candidate":"rm -rf /"}"#;
        let mut body = vec![0x08, 2, 0x12, not_a_candidate.len() as u8];
        body.extend_from_slice(not_a_candidate);
        assert!(matches!(decode(&body), Err(DecodeError::BadCandidate(_))));
    }

    #[test]
    fn validates_sdp() {
        let fp = validate_sdp(CHROME_OFFER).unwrap();
        assert_eq!(fp[0], 0xA8);
        assert_eq!(fp[31], 0x89);
        assert_eq!(validate_sdp("v=0\r\n"), Err(SdpError::NoDataChannel));
        let no_fp: String =
            CHROME_OFFER.lines().filter(|l| !l.starts_with("a=fingerprint")).map(|l| format!("{l}\r\n")).collect();
        assert_eq!(validate_sdp(&no_fp), Err(SdpError::NoFingerprint));
        let short = CHROME_OFFER.replace(":31:89\r", ":31\r");
        assert!(matches!(validate_sdp(&short), Err(SdpError::BadFingerprint(_))));
        let two = CHROME_OFFER.replace("a=setup", "a=fingerprint:sha-256 00:17:77:1E:02:7E:D1:2B:53:92:70:A6:8E:F9:02:CC:21:72:3A:92:5D:F4:97:5F:27:C4:5E:75:D4:F4:31:89\r\na=setup");
        assert_eq!(validate_sdp(&two), Err(SdpError::ConflictingFingerprints));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(chunks: Vec<Vec<u8>>) {
            let mut decoder = Decoder::new();
            for chunk in chunks {
                decoder.extend(&chunk);
                loop {
                    match decoder.next_message() {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
            }
        }

        #[test]
        fn any_offer_roundtrips(sdp in ".{0,2000}") {
            roundtrip(SignalingMessage::Offer(sdp));
        }

        #[test]
        fn validate_sdp_never_panics(sdp in "(a=fingerprint:sha-256 [0-9A-F:]{0,100}\r\n|m=application .{0,10}\r\n|.{0,40}\r\n){0,8}") {
            let _ = validate_sdp(&sdp);
        }
    }
}
