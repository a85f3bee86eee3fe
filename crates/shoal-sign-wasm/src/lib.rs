//! The publisher's side of Shoal's integrity for JavaScript (Node.js): sign a segment's
//! record, derive the public key pages are given, name a record's URL. A packager or a
//! just-in-time origin written in JS signs each segment as it writes it, with the same
//! code as `shoal-sign` (`shoal_core::publish`), instead of shelling out per segment.
//! `web/src/sign.js` wraps it in the npm package's `shoal/sign` entry point.

use shoal_core::{
    Publisher,
    integrity::{MAX_CHUNK_SIZE, MAX_SEGMENT_SIZE, MIN_CHUNK_SIZE},
};
use wasm_bindgen::prelude::*;

fn publisher(secret_key: &[u8]) -> Result<Publisher, JsError> {
    let secret: [u8; 32] = secret_key.try_into().map_err(|_| {
        JsError::new(&format!(
            "the publisher secret key is 32 bytes (shoal-sign keygen's file), not {}",
            secret_key.len()
        ))
    })?;
    Ok(Publisher::from_secret(secret))
}

fn whole_number(name: &str, value: f64) -> Result<u64, JsError> {
    shoal_proto::js_whole_number(value)
        .ok_or_else(|| JsError::new(&format!("{name} must be a whole number ≥ 0, not {value}")))
}

/// The record frame to serve at segment `sequence`'s record URL: see
/// `shoal_core::publish::record_frame`. `chunk_size` 0 picks it from the segment size.
#[wasm_bindgen(js_name = signSegment)]
pub fn sign_segment(
    secret_key: &[u8],
    swarm: &str,
    sequence: f64,
    data: &[u8],
    chunk_size: u32,
    published_at_ms: f64,
) -> Result<Vec<u8>, JsError> {
    let publisher = publisher(secret_key)?;
    if swarm.is_empty() || swarm.len() > shoal_proto::MAX_SWARM_ID_LEN {
        return Err(JsError::new(&format!(
            "the swarm id is 1 to {} bytes (pages' swarmId), not {}",
            shoal_proto::MAX_SWARM_ID_LEN,
            swarm.len()
        )));
    }
    let sequence = whole_number("sequence", sequence)?;
    let published_at_ms = whole_number("publishedAtMs", published_at_ms)?;
    if data.is_empty() || data.len() as u64 > MAX_SEGMENT_SIZE {
        return Err(JsError::new(&format!("a segment is 1 byte to {MAX_SEGMENT_SIZE} bytes, not {}", data.len())));
    }
    let chunk_size = match chunk_size {
        0 => None,
        size if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) => Some(size),
        size => {
            return Err(JsError::new(&format!("chunkSize is {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes, not {size}")));
        }
    };
    Ok(shoal_core::publish::record_frame(&publisher, swarm, sequence, data, chunk_size, published_at_ms).to_vec())
}

/// The public key pages pass as `publisherKey` (64 hex characters) for a secret key.
#[wasm_bindgen(js_name = publicKeyOf)]
pub fn public_key_of(secret_key: &[u8]) -> Result<String, JsError> {
    Ok(publisher(secret_key)?.public_key().to_hex())
}

/// Where a segment's record is served (see `shoal_proto::record_url`); `range_end` 0
/// means the whole file.
#[wasm_bindgen(js_name = recordUrl)]
pub fn record_url(segment_url: &str, range_start: f64, range_end: f64, suffix: &str) -> Result<String, JsError> {
    let range = if range_end == 0.0 {
        None
    } else {
        let (start, end) = (whole_number("range start", range_start)?, whole_number("range end", range_end)?);
        if end <= start {
            return Err(JsError::new(&format!("byte range [{start}, {end}) is empty")));
        }
        Some((start, end))
    };
    Ok(shoal_proto::record_url(segment_url, range, suffix))
}
