//! Every failure the JavaScript API reports: one enum, a stable `code` per variant (the
//! strings `index.d.ts` lists), and a message for people. Nothing picks a code by
//! reading a message.

use thiserror::Error;

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ShoalError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    InvalidAddress(String),
    #[error("not a PeerId: {0}")]
    InvalidPeer(String),
    /// No usable signalling node: none configured, the well-known document unreadable,
    /// or no address a browser can dial.
    #[error("{0}")]
    NoNode(String),
    #[error("not running in a page")]
    NoWindow,
    /// The browser has no WebRTC (`RTCPeerConnection`): the page plays over HTTP alone.
    #[error("this browser has no WebRTC (RTCPeerConnection); Shoal cannot run here")]
    Unsupported,
    #[error("cannot start: {0}")]
    StartFailed(String),
    #[error("this peer is stopped")]
    Stopped,
    #[error("not in swarm {0} with a publisher key")]
    NotJoined(String),
    #[error("{0}")]
    SegmentUnavailable(String),
    #[error("{0}")]
    Integrity(String),
    #[error("message of {len} bytes exceeds gossipMaxBytes ({limit})")]
    MessageTooLarge { len: usize, limit: usize },
    #[error("{0}")]
    Gossip(String),
    #[error("{0}")]
    DialFailed(String),
    #[error("{0}")]
    StreamFailed(String),
    #[error("{0}")]
    TransferFailed(String),
    #[error("{0}")]
    Io(String),
    #[error("stream closed")]
    Closed,
    /// A bounded queue between the page and the runtime is full.
    #[error("the runtime is overloaded ({0}); try again")]
    Overloaded(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ShoalError {
    /// The stable code JavaScript sees as `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidConfig(_) => "invalid-config",
            Self::InvalidArgument(_) => "invalid-argument",
            Self::InvalidAddress(_) => "invalid-address",
            Self::InvalidPeer(_) => "invalid-peer",
            Self::NoNode(_) => "no-node",
            Self::NoWindow => "no-window",
            Self::Unsupported => "unsupported",
            Self::StartFailed(_) => "start-failed",
            Self::Stopped => "stopped",
            Self::NotJoined(_) => "not-joined",
            Self::SegmentUnavailable(_) => "segment-unavailable",
            Self::Integrity(_) => "integrity",
            Self::MessageTooLarge { .. } => "message-too-large",
            Self::Gossip(_) => "gossip",
            Self::DialFailed(_) => "dial-failed",
            Self::StreamFailed(_) => "stream-failed",
            Self::TransferFailed(_) => "transfer-failed",
            Self::Io(_) => "io",
            Self::Closed => "closed",
            Self::Overloaded(_) => "overloaded",
            Self::Internal(_) => "internal",
        }
    }
}

#[cfg(target_arch = "wasm32")]
impl From<ShoalError> for wasm_bindgen::JsValue {
    /// An `Error` with `code` and `message`: what promises reject with.
    fn from(error: ShoalError) -> Self {
        let js = js_sys::Error::new(&error.to_string());
        let _ = js_sys::Reflect::set(&js, &"code".into(), &error.code().into());
        js.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        // Every code here appears in `web/src/index.d.ts`'s `ShoalErrorCode`.
        let declared = include_str!("../../../web/src/index.d.ts");
        for error in [
            ShoalError::InvalidConfig(String::new()),
            ShoalError::InvalidArgument(String::new()),
            ShoalError::InvalidAddress(String::new()),
            ShoalError::InvalidPeer(String::new()),
            ShoalError::NoNode(String::new()),
            ShoalError::NoWindow,
            ShoalError::Unsupported,
            ShoalError::StartFailed(String::new()),
            ShoalError::Stopped,
            ShoalError::NotJoined(String::new()),
            ShoalError::SegmentUnavailable(String::new()),
            ShoalError::Integrity(String::new()),
            ShoalError::MessageTooLarge { len: 2, limit: 1 },
            ShoalError::Gossip(String::new()),
            ShoalError::DialFailed(String::new()),
            ShoalError::StreamFailed(String::new()),
            ShoalError::TransferFailed(String::new()),
            ShoalError::Io(String::new()),
            ShoalError::Closed,
            ShoalError::Overloaded("x"),
            ShoalError::Internal(String::new()),
        ] {
            assert!(declared.contains(&format!("'{}'", error.code())), "{} is not declared", error.code());
        }
    }
}
