//! The piece-exchange protocol's messages and their binary encoding.
//!
//! Each message travels as one [`crate::codec`] frame whose body starts with the message
//! type. Fields are varints or fixed arrays; the chunk payload of `Data` is the rest of
//! the body and is handed out without copying. Every length is bounded, and decoding
//! any byte string yields a message or an error, never a panic (property tests here,
//! `fuzz/` for coverage-guided fuzzing).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub use crate::codec::{FrameDecoder as Decoder, WireError};
use crate::{
    availability::{ChunkSet, MAX_CHUNK_SET_BYTES, MAX_SPAN, SegmentSet},
    codec::{Frame, Reader, put_varint, varint_len},
    integrity::{MAX_CHUNK_SIZE, MAX_CHUNKS, SegmentId, SegmentRecord, SignedRecord, StreamId},
};

/// Version carried in `Hello`; peers with another version are disconnected.
pub const PROTOCOL_VERSION: u8 = 2;
/// libp2p protocol name of the piece-exchange stream.
pub const PROTOCOL_NAME: &str = "/shoal/pieces/2";
/// Largest frame body: a record of the most chunks allowed, or a chunk of the largest
/// size, with room for headers.
pub const MAX_FRAME_LEN: usize = 32 * MAX_CHUNKS + 1024;
const _: () = assert!(MAX_FRAME_LEN > MAX_CHUNK_SIZE as usize + 64);
/// Largest bitmap in an `Availability` message.
const MAX_BITMAP_BYTES: usize = (MAX_SPAN / 8) as usize;

/// Decodes piece-exchange frames from a stream.
pub type FrameDecoder = Decoder<Message>;

/// A message between two peers of a swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message on a stream: protocol version and which stream the sender serves.
    Hello { version: u8, stream: StreamId },
    /// Everything the sender holds and is fetching (sent after `Hello`).
    Availability { have: SegmentSet, fetching: SegmentSet },
    /// The sender now holds the whole segment.
    Have { segment: SegmentId },
    /// The sender is fetching these chunks of the segment from the origin (all of them
    /// when `chunks` is empty: it does not know the segment's record yet); it will answer
    /// requests for them as they arrive.
    Fetching { segment: SegmentId, chunks: ChunkSet },
    /// The chunks of a segment the sender holds while it fetches the rest.
    HaveChunks { segment: SegmentId, chunks: ChunkSet },
    /// The sender no longer holds or fetches the segment.
    Dropped { segment: SegmentId },
    /// Asks for one chunk; `with_record` asks for the signed record first.
    Request { id: u32, segment: SegmentId, chunk: u32, with_record: bool },
    /// A chunk, answering request `id`.
    Data { id: u32, segment: SegmentId, chunk: u32, data: Bytes },
    /// A publisher-signed segment record (shared, not copied, between the store and
    /// every peer it is sent to).
    Record { record: Arc<SignedRecord> },
    /// The sender does not have (and will not get) what request `id` asked for.
    Absent { id: u32 },
    /// The sender will not serve request `id` now (upload cap, queue full, off); it
    /// expects to take requests again in about `retry_ms`.
    Busy { id: u32, retry_ms: u32 },
    /// The requester no longer wants request `id`.
    Cancel { id: u32 },
}

mod kind {
    pub(super) const HELLO: u8 = 1;
    pub(super) const AVAILABILITY: u8 = 2;
    pub(super) const HAVE: u8 = 3;
    pub(super) const FETCHING: u8 = 4;
    pub(super) const DROPPED: u8 = 5;
    pub(super) const REQUEST: u8 = 6;
    pub(super) const DATA: u8 = 7;
    pub(super) const RECORD: u8 = 8;
    pub(super) const ABSENT: u8 = 9;
    pub(super) const BUSY: u8 = 10;
    pub(super) const CANCEL: u8 = 11;
    pub(super) const HAVE_CHUNKS: u8 = 12;
}

fn bitmap_len(set: &SegmentSet) -> (u64, Vec<u8>, usize) {
    let (base, bytes) = set.to_bitmap();
    let len = varint_len(base) + varint_len(bytes.len() as u64) + bytes.len();
    (base, bytes, len)
}

fn read_bitmap(r: &mut Reader) -> Result<SegmentSet, WireError> {
    let base = r.varint()?;
    let bytes = r.bytes(MAX_BITMAP_BYTES, "bitmap too long")?;
    Ok(SegmentSet::from_bitmap(base, &bytes))
}

/// Bytes a record's fields take on the wire (after the message type).
pub(crate) fn record_len(record: &SignedRecord) -> usize {
    let r = &record.record;
    32 + varint_len(r.segment.0)
        + varint_len(r.size)
        + varint_len(u64::from(r.chunk_size))
        + varint_len(r.published_at_ms)
        + varint_len(r.chunk_hashes.len() as u64)
        + 32 * r.chunk_hashes.len()
        + 64
}

impl Frame for Message {
    const MAX_BODY: usize = MAX_FRAME_LEN;

    fn body_len(&self) -> usize {
        1 + match self {
            Self::Hello { .. } => 1 + 32,
            Self::Availability { have, fetching } => bitmap_len(have).2 + bitmap_len(fetching).2,
            Self::Have { segment } | Self::Dropped { segment } => varint_len(segment.0),
            Self::HaveChunks { segment, chunks } | Self::Fetching { segment, chunks } => {
                let n = chunks.byte_len();
                varint_len(segment.0) + varint_len(n as u64) + n
            }
            Self::Busy { id, retry_ms } => varint_len(u64::from(*id)) + varint_len(u64::from(*retry_ms)),
            Self::Request { id, segment, chunk, .. } => {
                varint_len(u64::from(*id)) + varint_len(segment.0) + varint_len(u64::from(*chunk)) + 1
            }
            Self::Data { id, segment, chunk, data } => {
                varint_len(u64::from(*id)) + varint_len(segment.0) + varint_len(u64::from(*chunk)) + data.len()
            }
            Self::Record { record } => record_len(record),
            Self::Absent { id } | Self::Cancel { id } => varint_len(u64::from(*id)),
        }
    }

    fn encode_body(&self, body: &mut BytesMut) {
        match self {
            Self::Hello { version, stream } => {
                body.extend_from_slice(&[kind::HELLO, *version]);
                body.extend_from_slice(&stream.0);
            }
            Self::Availability { have, fetching } => {
                body.extend_from_slice(&[kind::AVAILABILITY]);
                for set in [have, fetching] {
                    let (base, bytes, _) = bitmap_len(set);
                    put_varint(body, base);
                    put_varint(body, bytes.len() as u64);
                    body.extend_from_slice(&bytes);
                }
            }
            Self::Have { segment } | Self::Dropped { segment } => {
                let tag = if matches!(self, Self::Have { .. }) { kind::HAVE } else { kind::DROPPED };
                body.extend_from_slice(&[tag]);
                put_varint(body, segment.0);
            }
            Self::HaveChunks { segment, chunks } | Self::Fetching { segment, chunks } => {
                let tag = if matches!(self, Self::HaveChunks { .. }) { kind::HAVE_CHUNKS } else { kind::FETCHING };
                body.extend_from_slice(&[tag]);
                put_varint(body, segment.0);
                let bytes = chunks.to_bytes();
                put_varint(body, bytes.len() as u64);
                body.extend_from_slice(&bytes);
            }
            Self::Request { id, segment, chunk, with_record } => {
                body.extend_from_slice(&[kind::REQUEST]);
                put_varint(body, u64::from(*id));
                put_varint(body, segment.0);
                put_varint(body, u64::from(*chunk));
                body.extend_from_slice(&[u8::from(*with_record)]);
            }
            Self::Data { id, segment, chunk, data } => {
                body.extend_from_slice(&[kind::DATA]);
                put_varint(body, u64::from(*id));
                put_varint(body, segment.0);
                put_varint(body, u64::from(*chunk));
                body.extend_from_slice(data);
            }
            Self::Record { record } => {
                body.extend_from_slice(&[kind::RECORD]);
                encode_record(record, body);
            }
            Self::Absent { id } | Self::Cancel { id } => {
                let tag = if matches!(self, Self::Absent { .. }) { kind::ABSENT } else { kind::CANCEL };
                body.extend_from_slice(&[tag]);
                put_varint(body, u64::from(*id));
            }
            Self::Busy { id, retry_ms } => {
                body.extend_from_slice(&[kind::BUSY]);
                put_varint(body, u64::from(*id));
                put_varint(body, u64::from(*retry_ms));
            }
        }
    }

    fn decode_body(body: Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let message = match r.byte().map_err(|_| WireError::Empty)? {
            kind::HELLO => Self::Hello { version: r.byte()?, stream: StreamId(r.array()?) },
            kind::AVAILABILITY => Self::Availability { have: read_bitmap(&mut r)?, fetching: read_bitmap(&mut r)? },
            kind::HAVE => Self::Have { segment: SegmentId(r.varint()?) },
            kind::FETCHING => {
                let segment = SegmentId(r.varint()?);
                let bytes = r.bytes(MAX_CHUNK_SET_BYTES, "chunk bitmap too long")?;
                Self::Fetching { segment, chunks: ChunkSet::from_bytes(&bytes) }
            }
            kind::DROPPED => Self::Dropped { segment: SegmentId(r.varint()?) },
            kind::HAVE_CHUNKS => {
                let segment = SegmentId(r.varint()?);
                let bytes = r.bytes(MAX_CHUNK_SET_BYTES, "chunk bitmap too long")?;
                Self::HaveChunks { segment, chunks: ChunkSet::from_bytes(&bytes) }
            }
            kind::REQUEST => {
                let (id, segment, chunk) = (r.u32()?, SegmentId(r.varint()?), r.u32()?);
                let with_record = match r.byte()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid("request flags")),
                };
                Self::Request { id, segment, chunk, with_record }
            }
            kind::DATA => {
                let (id, segment, chunk) = (r.u32()?, SegmentId(r.varint()?), r.u32()?);
                let data = r.rest();
                if data.len() > MAX_CHUNK_SIZE as usize {
                    return Err(WireError::Invalid("chunk larger than the largest chunk size"));
                }
                Self::Data { id, segment, chunk, data }
            }
            kind::RECORD => Self::Record { record: Arc::new(decode_record(&mut r)?) },
            kind::ABSENT => Self::Absent { id: r.u32()? },
            kind::BUSY => Self::Busy { id: r.u32()?, retry_ms: r.u32()? },
            kind::CANCEL => Self::Cancel { id: r.u32()? },
            other => return Err(WireError::UnknownType(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

fn encode_record(record: &SignedRecord, body: &mut BytesMut) {
    let r = &record.record;
    body.extend_from_slice(&r.stream.0);
    put_varint(body, r.segment.0);
    put_varint(body, r.size);
    put_varint(body, u64::from(r.chunk_size));
    put_varint(body, r.published_at_ms);
    put_varint(body, r.chunk_hashes.len() as u64);
    for hash in &r.chunk_hashes {
        body.extend_from_slice(hash);
    }
    body.extend_from_slice(&record.signature);
}

fn decode_record(r: &mut Reader) -> Result<SignedRecord, WireError> {
    let stream = StreamId(r.array()?);
    let segment = SegmentId(r.varint()?);
    let size = r.varint()?;
    let chunk_size = r.u32()?;
    let published_at_ms = r.varint()?;
    let count = r.length(MAX_CHUNKS, "too many chunk hashes")?;
    let mut chunk_hashes = Vec::with_capacity(count);
    for _ in 0..count {
        chunk_hashes.push(r.array()?);
    }
    let signature = r.array()?;
    let record = SegmentRecord { stream, segment, size, chunk_size, published_at_ms, chunk_hashes };
    Ok(SignedRecord { record, signature })
}

impl Message {
    /// Appends this message as a frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        Frame::encode(self, out);
    }

    /// Decodes one frame body (without its length prefix).
    pub fn decode(body: Bytes) -> Result<Self, WireError> {
        Self::decode_body(body)
    }

    /// Bytes of payload this message carries (for accounting).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Data { data, .. } => data.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::Publisher;
    use proptest::prelude::*;

    fn frame(message: &Message) -> BytesMut {
        let mut out = BytesMut::new();
        message.encode(&mut out);
        out
    }

    fn segment_set() -> impl Strategy<Value = SegmentSet> {
        proptest::collection::vec(0u64..5000, 0..40).prop_map(|ids| {
            let mut set = SegmentSet::new();
            for id in ids {
                set.insert(SegmentId(id));
            }
            set
        })
    }

    fn record() -> impl Strategy<Value = SignedRecord> {
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 1..20_000), 1024u32..70_000).prop_map(
            |(seg, data, chunk)| {
                let stream = StreamId::from_name("s");
                Publisher::from_secret([3; 32]).sign(SegmentRecord::for_data(stream, SegmentId(seg), &data, chunk))
            },
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u8>(), any::<[u8; 32]>()).prop_map(|(version, s)| Message::Hello { version, stream: StreamId(s) }),
            (segment_set(), segment_set()).prop_map(|(have, fetching)| Message::Availability { have, fetching }),
            any::<u64>().prop_map(|s| Message::Have { segment: SegmentId(s) }),
            (any::<u64>(), proptest::collection::vec(0u32..5000, 0..20))
                .prop_map(|(s, cs)| Message::Fetching { segment: SegmentId(s), chunks: ChunkSet::from_chunks(cs) }),
            any::<u64>().prop_map(|s| Message::Dropped { segment: SegmentId(s) }),
            (any::<u64>(), proptest::collection::vec(0u32..5000, 0..20))
                .prop_map(|(s, cs)| Message::HaveChunks { segment: SegmentId(s), chunks: ChunkSet::from_chunks(cs) }),
            (any::<u32>(), any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(id, s, chunk, with_record)| {
                Message::Request { id, segment: SegmentId(s), chunk, with_record }
            }),
            (any::<u32>(), any::<u64>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..3000))
                .prop_map(|(id, s, chunk, d)| Message::Data { id, segment: SegmentId(s), chunk, data: Bytes::from(d) }),
            record().prop_map(|record| Message::Record { record: Arc::new(record) }),
            any::<u32>().prop_map(|id| Message::Absent { id }),
            (any::<u32>(), any::<u32>()).prop_map(|(id, retry_ms)| Message::Busy { id, retry_ms }),
            any::<u32>().prop_map(|id| Message::Cancel { id }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_survives_encode_then_decode(messages in proptest::collection::vec(message(), 1..6), cut in 1usize..64) {
            let mut wire = BytesMut::new();
            for m in &messages {
                m.encode(&mut wire);
            }
            // Deliver in pieces of `cut` bytes: framing must not care.
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                decoder.extend(piece);
                while let Some(m) = decoder.next_frame().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, messages);
            prop_assert_eq!(decoder.buffered(), 0);
        }

        #[test]
        fn any_bytes_decode_to_a_message_or_an_error(bytes: Vec<u8>) {
            let mut decoder = FrameDecoder::new();
            decoder.extend(&bytes);
            while let Ok(Some(_)) = decoder.next_frame() {}
            let _ = Message::decode(Bytes::from(bytes));
        }
    }

    #[test]
    fn hard_limits() {
        let mut decoder = FrameDecoder::new();
        let mut prefix = BytesMut::new();
        put_varint(&mut prefix, MAX_FRAME_LEN as u64 + 1);
        decoder.extend(&prefix);
        assert_eq!(
            decoder.next_frame(),
            Err(WireError::TooLarge { len: MAX_FRAME_LEN as u64 + 1, limit: MAX_FRAME_LEN })
        );

        let huge = Message::Data {
            id: 1,
            segment: SegmentId(1),
            chunk: 0,
            data: Bytes::from(vec![0; MAX_CHUNK_SIZE as usize + 1]),
        };
        let mut decoder = FrameDecoder::new();
        decoder.extend(&frame(&huge));
        assert!(matches!(decoder.next_frame(), Err(WireError::Invalid(_))));

        assert_eq!(Message::decode(Bytes::from_static(&[99])), Err(WireError::UnknownType(99)));
        assert_eq!(Message::decode(Bytes::from_static(&[kind::HAVE, 1, 2])), Err(WireError::Trailing(1)));
        assert_eq!(
            Message::decode(Bytes::from_static(&[kind::REQUEST, 1, 1, 1, 7])),
            Err(WireError::Invalid("request flags"))
        );
        assert_eq!(Message::decode(Bytes::new()), Err(WireError::Empty));
        let mut record = BytesMut::from(&[kind::RECORD][..]);
        record.extend_from_slice(&[0; 32]);
        record.extend_from_slice(&[1, 1, 0x80, 0x08, 0, 0xff, 0xff, 0x03]);
        assert_eq!(Message::decode(record.freeze()), Err(WireError::Invalid("too many chunk hashes")));
    }

    #[test]
    fn data_payload_is_not_copied() {
        let data = Bytes::from(vec![7u8; 4096]);
        let mut decoder = FrameDecoder::new();
        decoder.extend(&frame(&Message::Data { id: 9, segment: SegmentId(3), chunk: 2, data: data.clone() }));
        let Some(Message::Data { data: got, .. }) = decoder.next_frame().unwrap() else { panic!() };
        assert_eq!(got, data);
    }
}
