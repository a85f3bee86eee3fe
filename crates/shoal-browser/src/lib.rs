//! Shoal in the page: one libp2p swarm per page, reaching a signalling node over
//! `/webrtc-direct` and other peers over direct browser-to-browser WebRTC
//! (`shoal-webrtc`), running the `shoal-core` piece engine over libp2p streams, exposed to
//! JavaScript through wasm-bindgen (and wrapped by `pkg/index.js`).
//!
//! - [`config`]: the options objects JavaScript passes, checked.
//! - [`bulk`]: a verifiable bulk-transfer protocol (tests, benchmarks).
//! - `runtime` (wasm32): the swarm, node link, memberships, bans.
//! - `pieces` (wasm32): one engine host per swarm: piece streams, HTTP, timers.
//! - `gossip` (wasm32): the page's gossip over `/shoal/gossip/1` streams.
//! - `membership` (wasm32): the membership protocol's codec.
//! - `api` (wasm32): the exported class.

pub mod bulk;
pub mod config;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod console_log;
#[cfg(target_arch = "wasm32")]
mod gossip;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod membership;
#[cfg(target_arch = "wasm32")]
mod pieces;
#[cfg(target_arch = "wasm32")]
mod runtime;
#[cfg(target_arch = "wasm32")]
mod streams;

/// Best-effort text of a JS exception.
#[cfg(target_arch = "wasm32")]
pub(crate) fn js_text(value: wasm_bindgen::JsValue) -> String {
    use wasm_bindgen::JsCast;
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}
