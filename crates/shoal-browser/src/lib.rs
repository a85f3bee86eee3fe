//! Shoal in the page: one libp2p swarm per page, reaching a signalling node over
//! `/webrtc-direct` and other peers over direct browser-to-browser WebRTC
//! (`shoal-webrtc`), exposed to JavaScript through wasm-bindgen.
//!
//! - [`config`]: the options object JavaScript passes, checked.
//! - [`bulk`]: a verifiable bulk-transfer protocol (tests, benchmarks).
//! - `runtime` (wasm32): the swarm and its event loop.
//! - `api` (wasm32): the exported JavaScript class.

pub mod bulk;
pub mod config;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod runtime;
