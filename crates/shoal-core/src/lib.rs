//! The sans-IO heart of Shoal: which piece of a stream comes from which peer or from HTTP,
//! and when; every piece checked against what the publisher signed.
//!
//! Nothing here opens a socket, reads a clock or starts a timer. Time, bytes and events go
//! in; [`engine::Output`]s come out. The same code runs in the browser runtime (driven by
//! libp2p streams and `fetch`) and in `shoal-sim` (driven by a virtual network with
//! thousands of peers).
//!
//! - [`integrity`]: publisher-signed segment records with per-chunk BLAKE3 hashes;
//! - [`publish`]: the record frame a publisher serves beside each segment;
//! - [`availability`]: compact sets of segment ids;
//! - [`codec`]: the length-prefixed framing every Shoal stream protocol uses;
//! - [`wire`]: the piece-exchange messages and their bounded binary encoding;
//! - [`engine`]: the scheduler, upload queue, cache and peer scoring;
//! - [`gossip`]: topic messages flooded through a swarm, checked at every hop;
//! - [`config`]: its settings; [`time`]: the driver's clock, as a value.

pub mod availability;
pub mod codec;
pub mod config;
pub mod engine;
pub mod gossip;
pub mod integrity;
pub mod publish;
pub mod time;
pub mod vecmap;
pub mod wire;

pub use config::Config;
pub use engine::{Delivery, Engine, Event, Misbehaviour, Output, SegmentInfo, Stats, TokenBucket};
pub use integrity::{CheckMemo, Publisher, PublisherKey, SegmentId, SegmentRecord, SignedRecord, StreamId};
pub use time::Instant;
pub use wire::Message;
