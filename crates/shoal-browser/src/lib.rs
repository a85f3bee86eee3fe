//! Shoal in the page: one libp2p swarm per page, reaching a signalling node over
//! `/webrtc-direct` and other peers over direct browser-to-browser WebRTC
//! (`shoal-webrtc`), running the `shoal-core` piece engine and gossip over libp2p
//! streams, exposed to JavaScript through wasm-bindgen (and wrapped by `pkg/index.js`).
//!
//! Plain state machines, natively testable:
//! - [`pieces`]: one swarm's piece exchange (the engine, segment URLs, player fetches);
//! - [`gossiping`]: the page's gossip (signatures, the page's validators);
//! - [`events`] and [`error`]: what JavaScript hears and the errors it gets;
//! - [`config`]: the options objects JavaScript passes, checked;
//! - [`load`]: whether the page is starved of CPU (and sheds its own load);
//! - [`bulk`]: a verifiable bulk-transfer protocol (tests, benchmarks).
//!
//! In the browser (wasm32):
//! - `runtime`: the one task that owns the libp2p swarm and every state machine;
//! - `swarm`: the libp2p swarm's transports and behaviours;
//! - `links`: tasks that move frames between streams and the runtime;
//! - `streams`: raw libp2p streams for Shoal's protocols;
//! - `http`: segment and record fetches;
//! - `membership`: the membership protocol's codec;
//! - `api`: the exported class.

pub mod bulk;
pub mod config;
pub mod error;
pub mod events;
pub mod gossiping;
pub mod load;
pub mod node_choice;
pub mod outcomes;
pub mod pieces;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod console_log;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod links;
#[cfg(target_arch = "wasm32")]
mod membership;
#[cfg(target_arch = "wasm32")]
mod runtime;
#[cfg(target_arch = "wasm32")]
mod streams;
#[cfg(target_arch = "wasm32")]
mod swarm;

/// Best-effort text of a JS exception.
#[cfg(target_arch = "wasm32")]
pub(crate) fn js_text(value: wasm_bindgen::JsValue) -> String {
    use wasm_bindgen::JsCast;
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}
