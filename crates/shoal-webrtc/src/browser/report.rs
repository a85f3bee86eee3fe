//! What the open direct connections look like on the wire, from `getStats()`: which
//! candidate pair carries each (host/srflx/relay, addresses) and how many bytes it moved.
//! The demo dashboard shows it, and the end-to-end tests use it to prove connections are
//! direct.

use std::{cell::RefCell, collections::HashMap};

use js_sys::{Array, Reflect};
use libp2p::PeerId;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use web_sys::RtcPeerConnection;

/// An open connection: its peer, its `RTCPeerConnection`, whether the peer is a node.
type LiveConnection = (PeerId, RtcPeerConnection, bool);

/// The open connections of this page, by registration id.
#[derive(Default)]
struct Live {
    last_id: u64,
    connections: HashMap<u64, LiveConnection>,
}

thread_local! {
    static LIVE: RefCell<Live> = RefCell::new(Live::default());
}

pub(crate) fn register(peer: PeerId, pc: RtcPeerConnection, server: bool) -> u64 {
    LIVE.with(|live| {
        let mut live = live.borrow_mut();
        live.last_id += 1;
        let id = live.last_id;
        live.connections.insert(id, (peer, pc, server));
        id
    })
}

pub(crate) fn unregister(id: u64) {
    LIVE.with(|live| live.borrow_mut().connections.remove(&id));
}

/// One end of the selected ICE candidate pair.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidatePair {
    /// `host`, `srflx`, `prflx` or `relay` (TURN) for each side.
    pub local_type: String,
    pub remote_type: String,
    pub local_address: String,
    pub remote_address: String,
    pub protocol: String,
}

/// A direct connection as its `RTCPeerConnection` reports it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerConnectionReport {
    pub peer: String,
    /// True for the `/webrtc-direct` connection to a signalling node.
    pub server: bool,
    pub connection_state: String,
    pub selected_pair: Option<CandidatePair>,
    pub bytes_sent: f64,
    pub bytes_received: f64,
    pub current_round_trip_ms: Option<f64>,
    /// Data channels (streams) opened on this connection so far, by either side.
    pub data_channels_opened: f64,
}

fn get(value: &JsValue, key: &str) -> JsValue {
    Reflect::get(value, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn text(value: &JsValue, key: &str) -> String {
    get(value, key).as_string().unwrap_or_default()
}

/// Reports every open `RTCPeerConnection` of this page: peers and signalling nodes.
pub async fn report() -> Vec<PeerConnectionReport> {
    report_of(|_| true).await
}

/// The selected candidate pair of our direct connection to `peer` (not a node), once
/// ICE has chosen one.
pub async fn selected_pair(peer: PeerId) -> Option<CandidatePair> {
    report_of(|(p, _, server)| *p == peer && !*server).await.into_iter().find_map(|r| r.selected_pair)
}

async fn report_of(wanted: impl Fn(&LiveConnection) -> bool) -> Vec<PeerConnectionReport> {
    let live: Vec<LiveConnection> =
        LIVE.with(|live| live.borrow().connections.values().filter(|c| wanted(c)).cloned().collect());
    let mut reports = Vec::with_capacity(live.len());
    for (peer, pc, server) in live {
        let mut report = PeerConnectionReport {
            peer: peer.to_string(),
            server,
            connection_state: format!("{:?}", pc.connection_state()).to_lowercase(),
            selected_pair: None,
            bytes_sent: 0.0,
            bytes_received: 0.0,
            current_round_trip_ms: None,
            data_channels_opened: 0.0,
        };
        if let Ok(stats) = JsFuture::from(pc.get_stats()).await {
            // RTCStatsReport is maplike: Array.from yields [id, stats] pairs.
            let entries: Vec<JsValue> = Array::from(&stats).iter().map(|entry| Array::from(&entry).get(1)).collect();
            let by_id: HashMap<String, &JsValue> = entries.iter().map(|e| (text(e, "id"), e)).collect();
            if let Some(pc_stats) = entries.iter().find(|e| text(e, "type") == "peer-connection") {
                report.data_channels_opened = get(pc_stats, "dataChannelsOpened").as_f64().unwrap_or(0.0);
            }
            let transport = entries.iter().find(|e| text(e, "type") == "transport");
            let pair = transport.and_then(|t| by_id.get(&text(t, "selectedCandidatePairId")).copied()).or_else(|| {
                entries
                    .iter()
                    .find(|e| text(e, "type") == "candidate-pair" && get(e, "nominated").as_bool() == Some(true))
            });
            if let Some(pair) = pair {
                report.bytes_sent = get(pair, "bytesSent").as_f64().unwrap_or(0.0);
                report.bytes_received = get(pair, "bytesReceived").as_f64().unwrap_or(0.0);
                report.current_round_trip_ms = get(pair, "currentRoundTripTime").as_f64().map(|s| s * 1000.0);
                let local = by_id.get(&text(pair, "localCandidateId"));
                let remote = by_id.get(&text(pair, "remoteCandidateId"));
                if let (Some(local), Some(remote)) = (local, remote) {
                    let address =
                        |c: &JsValue| format!("{}:{}", text(c, "address"), get(c, "port").as_f64().unwrap_or(0.0));
                    report.selected_pair = Some(CandidatePair {
                        local_type: text(local, "candidateType"),
                        remote_type: text(remote, "candidateType"),
                        local_address: address(local),
                        remote_address: address(remote),
                        protocol: text(local, "protocol"),
                    });
                }
            }
        }
        reports.push(report);
    }
    reports
}
