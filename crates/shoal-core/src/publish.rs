//! What a publisher serves beside each segment: its signed record, as one wire frame.
//! The node's `shoal-sign`, its demo origin and the Node.js signing entry point all make
//! records here, so that they cannot disagree on a byte.

use std::sync::Arc;

use bytes::Bytes;

use crate::{Publisher, SegmentId, SegmentRecord, StreamId, codec::Frame, integrity::chunk_size_for, wire::Message};

/// The record of segment `sequence` of `swarm` holding `data`, signed and stamped
/// `published_at_ms` (Unix milliseconds; 0 for a record that never goes stale): the
/// exact bytes to serve at the segment's record URL (`shoal_proto::record_url`).
///
/// `chunk_size` is the unit peers verify and exchange (clamped to what peers accept);
/// `None` picks it from the segment's size (`integrity::chunk_size_for`).
pub fn record_frame(
    publisher: &Publisher,
    swarm: &str,
    sequence: u64,
    data: &[u8],
    chunk_size: Option<u32>,
    published_at_ms: u64,
) -> Bytes {
    let chunk_size = chunk_size.unwrap_or_else(|| chunk_size_for(data.len() as u64));
    let record = SegmentRecord::for_data(StreamId::from_name(swarm), SegmentId(sequence), data, chunk_size)
        .published_at(published_at_ms);
    Message::Record { record: Arc::new(publisher.sign(record)) }.to_frame()
}
