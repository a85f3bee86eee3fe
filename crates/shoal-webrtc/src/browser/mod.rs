//! The browser half: `RTCPeerConnection`s driven from Rust through `web_sys`.
//!
//! Everything here is single-threaded JavaScript underneath; rust-libp2p wants `Send`
//! transports and muxers, so the JS-holding parts are wrapped in `SendWrapper`, which is
//! sound because wasm32 in a page has exactly one thread.

mod connection;
mod direct;
mod driver;
mod report;
mod stream;
mod transport;

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use thiserror::Error;
use wasm_bindgen::{JsCast, JsValue};

pub use connection::Connection;
pub use report::{CandidatePair, PeerConnectionReport, report, selected_pair};
pub use stream::Stream;
pub use transport::Transport;

use crate::handshake::HandshakeError;

/// An ICE server (STUN or TURN) for `RTCPeerConnection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// Transport settings. Defaults suit a page holding a few dozen peer connections.
#[derive(Debug, Clone)]
pub struct Config {
    /// STUN/TURN servers; empty means host candidates only (same network or tests).
    pub ice_servers: Vec<IceServer>,
    /// Browser-to-browser connections use TURN relay candidates only
    /// (`iceTransportPolicy: "relay"`): peers never learn each other's addresses. The
    /// connection to the signalling node is not affected.
    pub relay_only: bool,
    /// Deadline for a whole handshake, from asking for the relayed connection to
    /// `connected`. Loopback connects in ~0.1 s; STUN across the internet in ~1–3 s.
    pub handshake_timeout: Duration,
    /// Most `RTCPeerConnection`s this transport creates over the page's lifetime.
    /// Chromium refuses the 501st per page, and the connection to the signalling node
    /// needs some too, so the default leaves 100 spare.
    pub peer_connection_budget: u32,
    /// A stream stops accepting writes while its channel holds more than this many bytes
    /// (`bufferedAmount`)...
    pub send_high_water: u32,
    /// ...and resumes once it drains to this. Between 64 KiB and a few MiB keeps the
    /// channel busy (see TESTING.md); 16 MiB queued makes `send()` throw.
    pub send_low_water: u32,
    /// Most bytes received on a stream and not yet read before it is reset.
    pub max_unread_per_stream: usize,
    /// How long a connection may stay `disconnected` before it is considered dead.
    pub disconnected_grace: Duration,
    /// How long `close()` on a stream waits for the remote's `FIN_ACK`.
    pub fin_ack_timeout: Duration,
    /// Whether the remote speaks `FIN_ACK`. Browser peers (this crate) do; the node's
    /// libp2p-webrtc listener does not, so `/webrtc-direct` connections turn it off.
    pub fin_ack: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            relay_only: false,
            handshake_timeout: Duration::from_secs(10),
            peer_connection_budget: 400,
            send_high_water: 4 * 1024 * 1024,
            send_low_water: 1024 * 1024,
            // Above the largest frame any Shoal protocol sends (a 16,384-chunk record, ~520
            // KiB); readers read as data comes, so more only ever means a flood.
            max_unread_per_stream: 2 * 1024 * 1024,
            disconnected_grace: Duration::from_secs(8),
            fin_ack_timeout: Duration::from_secs(5),
            fin_ack: true,
        }
    }
}

/// Errors of the browser-to-browser transport.
#[derive(Debug, Error)]
pub enum Error {
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("no signalling stream to the peer: {0}")]
    Signaling(String),
    #[error("RTCPeerConnection budget spent: {0} created in this page")]
    BudgetExhausted(u32),
    #[error("browser WebRTC call failed: {0}")]
    Js(String),
    #[error("connection lost: {0}")]
    Connection(String),
}

static PEER_CONNECTIONS_CREATED: AtomicU32 = AtomicU32::new(0);

/// How many `RTCPeerConnection`s this transport has created in this page.
pub fn peer_connections_created() -> u32 {
    PEER_CONNECTIONS_CREATED.load(Ordering::Relaxed)
}

/// Peer connections of the budget that connections others ask for may not take: kept
/// for the page's own dials and for reaching its node again.
pub const INBOUND_RESERVE: u32 = 50;

/// Takes one unit of the page's peer connection budget (less the reserve for a
/// connection another peer asked for).
fn take_budget(budget: u32, role: crate::handshake::Role) -> Result<(), Error> {
    let budget = match role {
        crate::handshake::Role::Listener => budget.saturating_sub(INBOUND_RESERVE),
        crate::handshake::Role::Dialer => budget,
    };
    let used = PEER_CONNECTIONS_CREATED.fetch_add(1, Ordering::Relaxed);
    if used >= budget {
        PEER_CONNECTIONS_CREATED.fetch_sub(1, Ordering::Relaxed);
        return Err(Error::BudgetExhausted(used));
    }
    Ok(())
}

/// Best-effort text of a JS exception.
pub(crate) fn js_error(value: JsValue) -> String {
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}
