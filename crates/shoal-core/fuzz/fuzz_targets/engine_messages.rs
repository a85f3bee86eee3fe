//! An engine fed arbitrary peers, messages, wants and clock jumps never panics.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shoal_core::{Config, Engine, Instant, Publisher, SegmentId, StreamId, wire::FrameDecoder};

#[derive(Arbitrary, Debug)]
enum Op {
    Connect(u8),
    Disconnect(u8),
    /// Raw bytes from a peer, decoded as the browser runtime would.
    Bytes(u8, Vec<u8>),
    Want(u16, u16),
    Tick(u16),
    HttpDone(u8, Vec<u8>),
    HttpFailed(u8),
}

fuzz_target!(|ops: Vec<Op>| {
    let publisher = Publisher::from_secret([1; 32]);
    let mut now = Instant::from_micros(1);
    let mut engine: Engine<u8> = Engine::new(Config::default(), StreamId::from_name("fuzz"), publisher.public_key(), 1, now);
    let mut decoders: std::collections::BTreeMap<u8, FrameDecoder> = Default::default();
    for op in ops {
        match op {
            Op::Connect(p) => engine.peer_connected(p, now),
            Op::Disconnect(p) => engine.peer_disconnected(p, now),
            Op::Bytes(p, bytes) => {
                let decoder = decoders.entry(p).or_default();
                decoder.extend(&bytes);
                while let Ok(Some(message)) = decoder.next_frame() {
                    engine.handle_message(p, message, now);
                }
            }
            Op::Want(s, ms) => engine.want(SegmentId(u64::from(s)), now + Duration::from_millis(u64::from(ms)), now),
            Op::Tick(ms) => {
                now = now + Duration::from_millis(u64::from(ms));
                engine.handle_timeout(now);
            }
            Op::HttpDone(id, body) => engine.http_complete(u64::from(id), Bytes::from(body), now),
            Op::HttpFailed(id) => engine.http_failed(u64::from(id), now),
        }
        while engine.poll_output().is_some() {}
    }
});
