//! The one framing every Shoal stream protocol uses: an unsigned LEB128 length, then a
//! body. A message type says how to write and read its body ([`Frame`]); a
//! [`FrameDecoder`] reassembles frames from a byte stream under a size limit, handing
//! each body out without copying it.
//!
//! Everything read here comes from the network: lengths are checked as `u64` before
//! they become a `usize` (which is 32 bits on wasm32), and decoding any byte string
//! yields a value or an error, never a panic.

use std::marker::PhantomData;

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Why bytes were not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the {limit} byte limit")]
    TooLarge { len: u64, limit: usize },
    #[error("message ends early")]
    Truncated,
    #[error("varint is malformed or out of range")]
    BadVarint,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    #[error("empty frame")]
    Empty,
}

/// A message type that travels as one frame.
pub trait Frame: Sized {
    /// Largest body a decoder accepts unless told otherwise.
    const MAX_BODY: usize;

    /// Exact length of the body [`Frame::encode_body`] writes.
    fn body_len(&self) -> usize;

    /// Writes the body (without the length prefix).
    fn encode_body(&self, out: &mut BytesMut);

    /// Reads one body (without its length prefix).
    fn decode_body(body: Bytes) -> Result<Self, WireError>;

    /// Appends this message as a frame to `out`: the payload is written once, straight
    /// into `out`.
    fn encode(&self, out: &mut BytesMut) {
        let len = self.body_len();
        out.reserve(len + varint_len(len as u64));
        put_varint(out, len as u64);
        let start = out.len();
        self.encode_body(out);
        debug_assert_eq!(out.len() - start, len, "body_len disagrees with encode_body");
    }

    /// This message as one frame.
    fn to_frame(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

/// Reassembles frames of `F` from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder<F> {
    buf: BytesMut,
    max_body: usize,
    _frame: PhantomData<fn() -> F>,
}

impl<F: Frame> Default for FrameDecoder<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Frame> FrameDecoder<F> {
    /// A decoder refusing bodies over [`Frame::MAX_BODY`].
    pub fn new() -> Self {
        Self::with_limit(F::MAX_BODY)
    }

    /// A decoder refusing bodies over `max_body`.
    pub fn with_limit(max_body: usize) -> Self {
        Self { buf: BytesMut::new(), max_body, _frame: PhantomData }
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into directly (appending), saving a copy.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes still needed before the frame at the front is complete (at least 1).
    pub fn wanted(&self) -> usize {
        match peek_varint(&self.buf) {
            Ok(Some((len, prefix))) if len <= self.max_body as u64 => {
                (prefix + len as usize).saturating_sub(self.buf.len()).max(1)
            }
            _ => 1,
        }
    }

    /// The next complete message; `Ok(None)` if more bytes are needed. After an error
    /// the stream is unusable: the peer sent something that is not this protocol.
    pub fn next_frame(&mut self) -> Result<Option<F>, WireError> {
        let Some((len, prefix)) = peek_varint(&self.buf)? else { return Ok(None) };
        if len > self.max_body as u64 {
            return Err(WireError::TooLarge { len, limit: self.max_body });
        }
        if self.buf.len() < prefix + len as usize {
            self.buf.reserve(prefix + len as usize - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(prefix);
        let body = self.buf.split_to(len as usize).freeze();
        F::decode_body(body).map(Some)
    }
}

/// Bytes an unsigned LEB128 encoding of `value` takes.
pub const fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

pub fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.extend_from_slice(&[(value as u8) | 0x80]);
        value >>= 7;
    }
    out.extend_from_slice(&[value as u8]);
}

/// Reads a varint from the front of `buf`: `Ok(None)` if it needs more bytes.
pub fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, WireError> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        if i == 9 && byte > 1 {
            return Err(WireError::BadVarint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 { Err(WireError::BadVarint) } else { Ok(None) }
}

/// Reads the fields of one body.
pub struct Reader {
    body: Bytes,
}

impl Reader {
    pub fn new(body: Bytes) -> Self {
        Self { body }
    }

    pub fn varint(&mut self) -> Result<u64, WireError> {
        let (value, used) = peek_varint(&self.body)?.ok_or(WireError::Truncated)?;
        self.body.advance(used);
        Ok(value)
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        u32::try_from(self.varint()?).map_err(|_| WireError::BadVarint)
    }

    /// A length, refused if over `max` (checked before it becomes a `usize`).
    pub fn length(&mut self, max: usize, what: &'static str) -> Result<usize, WireError> {
        let len = self.varint()?;
        if len > max as u64 {
            return Err(WireError::Invalid(what));
        }
        Ok(len as usize)
    }

    pub fn byte(&mut self) -> Result<u8, WireError> {
        if self.body.is_empty() {
            return Err(WireError::Truncated);
        }
        Ok(self.body.get_u8())
    }

    pub fn take(&mut self, len: usize) -> Result<Bytes, WireError> {
        if self.body.len() < len {
            return Err(WireError::Truncated);
        }
        Ok(self.body.split_to(len))
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize, what: &'static str) -> Result<Bytes, WireError> {
        let len = self.length(max, what)?;
        self.take(len)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    /// Everything left.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    pub fn finish(self) -> Result<(), WireError> {
        if self.body.is_empty() { Ok(()) } else { Err(WireError::Trailing(self.body.len())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_roundtrip(value: u64) {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            prop_assert_eq!(out.len(), varint_len(value));
            prop_assert_eq!(peek_varint(&out).unwrap(), Some((value, out.len())));
        }
    }

    #[test]
    fn overlong_varints_are_errors() {
        assert_eq!(peek_varint(&[0xff; 10]), Err(WireError::BadVarint));
        assert_eq!(
            peek_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(WireError::BadVarint)
        );
        assert_eq!(peek_varint(&[0x80]), Ok(None));
    }

    /// A length past `u32::MAX` must not pass a limit check by wrapping to a small
    /// `usize` (wasm32).
    #[test]
    fn lengths_are_checked_before_narrowing() {
        let mut out = BytesMut::new();
        put_varint(&mut out, (1u64 << 32) + 5);
        out.extend_from_slice(&[0; 8]);
        let mut reader = Reader::new(out.freeze());
        assert_eq!(reader.length(16, "x"), Err(WireError::Invalid("x")));
    }
}
