//! Segment integrity: the publisher signs one record per segment; peers check every
//! chunk against it before using or re-sharing a byte.
//!
//! A [`SegmentRecord`] names the stream and segment, the size, and the BLAKE3 hash of each
//! fixed-size chunk. Per-chunk hashes (not one hash of the whole segment) let a peer check
//! each chunk the moment it arrives, and name exactly which peer sent a bad one even when
//! a segment's chunks come from several peers. The ed25519 signature covers a
//! domain-separated digest of the whole record.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

/// Which stream (rendition) a record belongs to: BLAKE3 of its normalised swarm id, so
/// a record for one rendition can never be passed off as another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub [u8; 32]);

impl StreamId {
    pub fn from_name(name: &str) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("shoal stream id v1");
        hasher.update(name.as_bytes());
        Self(*hasher.finalize().as_bytes())
    }
}

/// A segment's position in its stream: the media sequence number for live, the index for
/// VOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

/// Smallest and largest chunk sizes a record may use.
pub const MIN_CHUNK_SIZE: u32 = 1024;
pub const MAX_CHUNK_SIZE: u32 = 256 * 1024;

/// Largest segment size accepted (a 4K segment is a few tens of MB).
pub const MAX_SEGMENT_SIZE: u64 = 256 * 1024 * 1024;
/// Most chunks per segment.
pub const MAX_CHUNKS: usize = 16_384;

/// The chunk size a publisher should pick for a segment of `segment_len` bytes: about
/// 16 chunks per segment, a power of two between 16 KiB and 64 KiB.
///
/// A chunk is what a peer re-serves as soon as it has verified it, so a smaller chunk
/// lets a segment fan out through the swarm while it is still arriving; where upload is
/// scarce that is most of the offload (a 64 KiB chunk takes 0.6 s on an 850 kbit/s
/// uplink). Below 16 KiB the per-chunk cost (a 32-byte hash in the record, a request, a
/// `have`) stops paying for itself.
pub fn chunk_size_for(segment_len: u64) -> u32 {
    let mut size: u32 = 16 * 1024;
    while size < 64 * 1024 && segment_len / u64::from(size) > 16 {
        size *= 2;
    }
    size
}

/// What the publisher vouches for about one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    pub stream: StreamId,
    pub segment: SegmentId,
    pub size: u64,
    pub chunk_size: u32,
    /// When the publisher signed it, in milliseconds since the Unix epoch; 0 for a record
    /// that never goes stale (VOD). Live peers refuse records that are far older than
    /// the ones they already trust, so a publisher that restarts and reuses sequence
    /// numbers cannot have its old segments replayed as new ones.
    pub published_at_ms: u64,
    /// BLAKE3 of each chunk, in order; the last chunk may be short.
    pub chunk_hashes: Vec<[u8; 32]>,
}

/// A record with the publisher's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    pub record: SegmentRecord,
    pub signature: [u8; 64],
}

/// Why data or a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IntegrityError {
    #[error("record signature does not verify against the publisher key")]
    BadSignature,
    #[error("record belongs to another stream")]
    WrongStream,
    #[error("record is inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("chunk {index} does not match its signed hash")]
    ChunkMismatch { index: u32 },
    #[error("chunk {index} is out of range")]
    NoSuchChunk { index: u32 },
    #[error("segment data is {got} bytes, the record says {expected}")]
    WrongSize { got: u64, expected: u64 },
}

impl SegmentRecord {
    /// Builds the record of `data` (the publisher side).
    pub fn for_data(stream: StreamId, segment: SegmentId, data: &[u8], chunk_size: u32) -> Self {
        let chunk_size = chunk_size.clamp(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE);
        let chunk_hashes = data.chunks(chunk_size as usize).map(|c| *blake3::hash(c).as_bytes()).collect();
        Self { stream, segment, size: data.len() as u64, chunk_size, published_at_ms: 0, chunk_hashes }
    }

    /// The same record, stamped with when it was published (see
    /// [`SegmentRecord::published_at_ms`]).
    pub fn published_at(mut self, unix_ms: u64) -> Self {
        self.published_at_ms = unix_ms;
        self
    }

    /// Checks the record's own arithmetic (sizes, counts, limits).
    pub fn check_consistency(&self) -> Result<(), IntegrityError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(IntegrityError::Inconsistent("chunk size out of range"));
        }
        if self.size == 0 || self.size > MAX_SEGMENT_SIZE {
            return Err(IntegrityError::Inconsistent("segment size out of range"));
        }
        let expected = self.size.div_ceil(u64::from(self.chunk_size));
        if self.chunk_hashes.len() as u64 != expected || self.chunk_hashes.len() > MAX_CHUNKS {
            return Err(IntegrityError::Inconsistent("chunk count does not match size"));
        }
        Ok(())
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunk_hashes.len() as u32
    }

    /// Length of chunk `index`.
    pub fn chunk_len(&self, index: u32) -> usize {
        let start = u64::from(index) * u64::from(self.chunk_size);
        (self.size.saturating_sub(start)).min(u64::from(self.chunk_size)) as usize
    }

    /// Byte offset of chunk `index`.
    pub fn chunk_offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size)
    }

    /// Checks one chunk against its signed hash.
    pub fn verify_chunk(&self, index: u32, data: &[u8]) -> Result<(), IntegrityError> {
        let expected = self.chunk_hashes.get(index as usize).ok_or(IntegrityError::NoSuchChunk { index })?;
        if data.len() != self.chunk_len(index) || blake3::hash(data).as_bytes() != expected {
            return Err(IntegrityError::ChunkMismatch { index });
        }
        Ok(())
    }

    /// The message the publisher signs: a domain-separated digest of every field.
    pub fn signing_digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("shoal segment record v2");
        hasher.update(&self.stream.0);
        hasher.update(&self.segment.0.to_le_bytes());
        hasher.update(&self.size.to_le_bytes());
        hasher.update(&self.chunk_size.to_le_bytes());
        hasher.update(&self.published_at_ms.to_le_bytes());
        hasher.update(&(self.chunk_hashes.len() as u64).to_le_bytes());
        for hash in &self.chunk_hashes {
            hasher.update(hash);
        }
        *hasher.finalize().as_bytes()
    }
}

/// The publisher: signs records. Lives where segments are produced (the origin).
pub struct Publisher {
    key: SigningKey,
}

impl Publisher {
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(&secret) }
    }

    pub fn public_key(&self) -> PublisherKey {
        PublisherKey(self.key.verifying_key())
    }

    pub fn sign(&self, record: SegmentRecord) -> SignedRecord {
        let signature = self.key.sign(&record.signing_digest()).to_bytes();
        SignedRecord { record, signature }
    }
}

/// The publisher's public key, which every peer is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherKey(VerifyingKey);

impl PublisherKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, IntegrityError> {
        VerifyingKey::from_bytes(bytes).map(Self).map_err(|_| IntegrityError::BadSignature)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The key as pages are given it (`publisherKey`): 64 lower-case hex characters.
    pub fn to_hex(&self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks a record: consistent, for `stream`, signed by this publisher.
    pub fn verify(&self, stream: &StreamId, signed: &SignedRecord) -> Result<(), IntegrityError> {
        if signed.record.stream != *stream {
            return Err(IntegrityError::WrongStream);
        }
        signed.record.check_consistency()?;
        let signature = Signature::from_bytes(&signed.signature);
        self.0.verify_strict(&signed.record.signing_digest(), &signature).map_err(|_| IntegrityError::BadSignature)
    }
}

/// Checks that passed, shared by engines that see the same bytes.
///
/// The simulator runs thousands of engines on one set of segment buffers: checking each
/// chunk and record once, instead of once per viewer, saves most of its CPU. It is
/// sound for any input: a `Bytes` never changes, and the memo keeps every buffer it
/// remembers alive, so the same address and length always hold the same content; a
/// record is only taken as checked when it equals, field for field, one that passed
/// for the same stream and key. Anything not remembered gets the full check. A browser
/// runs one engine and has no use for it.
#[derive(Default)]
pub struct CheckMemo {
    inner: std::sync::Mutex<MemoEntries>,
}

#[derive(Default)]
struct MemoEntries {
    /// (address, length) of a chunk that matched, with its bytes (kept alive) and hash.
    chunks: std::collections::HashMap<(usize, usize), (bytes::Bytes, [u8; 32])>,
    /// Records that verified, by signature, with the stream and key they verified for.
    records: std::collections::HashMap<[u8; 64], (std::sync::Arc<SignedRecord>, StreamId, [u8; 32])>,
}

impl CheckMemo {
    /// Entries kept at most, of each kind; past that, checks run in full.
    const CAPACITY: usize = 1 << 20;

    /// [`SegmentRecord::verify_chunk`], remembering chunks that pass.
    pub fn verify_chunk(&self, record: &SegmentRecord, index: u32, data: &bytes::Bytes) -> Result<(), IntegrityError> {
        let expected = *record.chunk_hashes.get(index as usize).ok_or(IntegrityError::NoSuchChunk { index })?;
        let key = (data.as_ptr() as usize, data.len());
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if data.len() == record.chunk_len(index) && entries.chunks.get(&key).is_some_and(|(_, hash)| *hash == expected)
        {
            return Ok(());
        }
        record.verify_chunk(index, data)?;
        if entries.chunks.len() < Self::CAPACITY && !data.is_empty() {
            entries.chunks.insert(key, (data.clone(), expected));
        }
        Ok(())
    }

    /// [`PublisherKey::verify`], remembering records that pass.
    pub fn verify_record(
        &self,
        key: &PublisherKey,
        stream: &StreamId,
        signed: &std::sync::Arc<SignedRecord>,
    ) -> Result<(), IntegrityError> {
        let key_bytes = key.to_bytes();
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((known, known_stream, known_key)) = entries.records.get(&signed.signature)
            && *known_stream == *stream
            && *known_key == key_bytes
            && (std::sync::Arc::ptr_eq(known, signed) || **known == **signed)
        {
            return Ok(());
        }
        key.verify(stream, signed)?;
        if entries.records.len() < Self::CAPACITY {
            entries.records.insert(signed.signature, (signed.clone(), *stream, key_bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_for_aims_at_16_chunks_between_16_and_64_kib() {
        assert_eq!(chunk_size_for(1), 16 * 1024);
        assert_eq!(chunk_size_for(140_000), 16 * 1024); // 560 kbit/s, 2 s: 9 chunks
        assert_eq!(chunk_size_for(500_000), 32 * 1024); // 2 Mbit/s: 16 chunks
        assert_eq!(chunk_size_for(1_000_000), 64 * 1024); // 4 Mbit/s: 16 chunks
        assert_eq!(chunk_size_for(8_000_000), 64 * 1024); // capped: 123 chunks
        for len in [1, 100_000, 300_000, 2_000_000] {
            let size = chunk_size_for(len);
            assert!(size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size));
        }
    }

    fn setup() -> (Publisher, StreamId, Vec<u8>) {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        (Publisher::from_secret([9; 32]), StreamId::from_name("live/720p"), data)
    }

    #[test]
    fn signed_record_verifies_and_checks_chunks() {
        let (publisher, stream, data) = setup();
        let record = SegmentRecord::for_data(stream, SegmentId(42), &data, 16 * 1024);
        assert_eq!(record.chunk_count(), 7);
        assert_eq!(record.chunk_len(6), 100_000 - 6 * 16 * 1024);
        let signed = publisher.sign(record);
        publisher.public_key().verify(&stream, &signed).unwrap();
        for (i, chunk) in data.chunks(16 * 1024).enumerate() {
            signed.record.verify_chunk(i as u32, chunk).unwrap();
        }
        let mut bad = data[..16 * 1024].to_vec();
        bad[100] ^= 1;
        assert_eq!(signed.record.verify_chunk(0, &bad), Err(IntegrityError::ChunkMismatch { index: 0 }));
        assert_eq!(signed.record.verify_chunk(0, &data[..100]), Err(IntegrityError::ChunkMismatch { index: 0 }));
        assert_eq!(signed.record.verify_chunk(7, &[]), Err(IntegrityError::NoSuchChunk { index: 7 }));
    }

    #[test]
    fn the_check_memo_answers_as_the_full_check_does() {
        let (publisher, stream, data) = setup();
        let key = publisher.public_key();
        let memo = CheckMemo::default();
        let signed =
            std::sync::Arc::new(publisher.sign(SegmentRecord::for_data(stream, SegmentId(1), &data, 16 * 1024)));
        let data = bytes::Bytes::from(data);
        let chunk = data.slice(0..16 * 1024);
        for _ in 0..2 {
            memo.verify_chunk(&signed.record, 0, &chunk).unwrap();
            memo.verify_record(&key, &stream, &signed).unwrap();
        }
        // The remembered bytes under another index, or other bytes of the same length.
        assert_eq!(memo.verify_chunk(&signed.record, 1, &chunk), Err(IntegrityError::ChunkMismatch { index: 1 }));
        let mut bad = chunk.to_vec();
        bad[7] ^= 1;
        let bad = bytes::Bytes::from(bad);
        assert_eq!(memo.verify_chunk(&signed.record, 0, &bad), Err(IntegrityError::ChunkMismatch { index: 0 }));
        assert_eq!(
            memo.verify_chunk(&signed.record, 0, &chunk.slice(..100)),
            Err(IntegrityError::ChunkMismatch { index: 0 })
        );
        // The remembered signature on a changed record, or for another stream or key.
        let mut forged = (*signed).clone();
        forged.record.size += 1;
        assert!(memo.verify_record(&key, &stream, &std::sync::Arc::new(forged)).is_err());
        assert_eq!(memo.verify_record(&key, &StreamId::from_name("other"), &signed), Err(IntegrityError::WrongStream));
        let stranger = Publisher::from_secret([3; 32]).public_key();
        assert_eq!(memo.verify_record(&stranger, &stream, &signed), Err(IntegrityError::BadSignature));
    }

    #[test]
    fn forged_or_misdirected_records_fail() {
        let (publisher, stream, data) = setup();
        let key = publisher.public_key();
        let signed = publisher.sign(SegmentRecord::for_data(stream, SegmentId(1), &data, 16 * 1024));

        let mut forged = signed.clone();
        forged.record.chunk_hashes[0][0] ^= 1;
        assert_eq!(key.verify(&stream, &forged), Err(IntegrityError::BadSignature));

        let mut renumbered = signed.clone();
        renumbered.record.segment = SegmentId(2);
        assert_eq!(key.verify(&stream, &renumbered), Err(IntegrityError::BadSignature));

        let mut restamped = signed.clone();
        restamped.record.published_at_ms = 1;
        assert_eq!(key.verify(&stream, &restamped), Err(IntegrityError::BadSignature));

        assert_eq!(key.verify(&StreamId::from_name("other"), &signed), Err(IntegrityError::WrongStream));

        let impostor = Publisher::from_secret([1; 32]).sign(signed.record.clone());
        assert_eq!(key.verify(&stream, &impostor), Err(IntegrityError::BadSignature));

        let mut inconsistent = signed;
        inconsistent.record.chunk_hashes.pop();
        assert!(matches!(key.verify(&stream, &inconsistent), Err(IntegrityError::Inconsistent(_))));
    }
}
