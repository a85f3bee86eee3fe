//! Just enough protobuf to read and write the two tiny messages of the libp2p WebRTC
//! specs (the signalling message and the data channel frame).
//!
//! Both messages have two fields, and the frame one sits on the data path of every byte a
//! peer sends, so they are encoded by hand straight into the outgoing buffer instead of
//! through an owned intermediate struct. Unknown fields are skipped, as protobuf requires,
//! so newer peers can add fields without breaking us. The tests cross-check against `prost`.

use thiserror::Error;

/// Why a protobuf message or its length prefix could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    #[error("varint is longer than 10 bytes or overflows u64")]
    BadVarint,
    #[error("message ends in the middle of a field")]
    Truncated,
    #[error("field {field} has wire type {wire_type}, expected {expected}")]
    WrongWireType { field: u32, wire_type: u8, expected: u8 },
    #[error("unsupported wire type {0}")]
    UnsupportedWireType(u8),
    #[error("field number 0 is not valid")]
    ZeroFieldNumber,
}

pub(crate) const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
pub(crate) const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// Appends `value` as an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Number of bytes `put_varint` writes for `value`.
pub(crate) fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a varint from the front of `buf`.
///
/// Returns `Ok(None)` if `buf` ends before the varint does (more bytes may come), and the
/// value with the number of bytes it took otherwise.
pub(crate) fn get_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, ProtoError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == 9 && byte > 1 {
            return Err(ProtoError::BadVarint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
        if i == 9 {
            return Err(ProtoError::BadVarint);
        }
    }
    Ok(None)
}

pub(crate) fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// One field read from a message body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
    /// A field of a wire type we never use (fixed32/fixed64); skipped.
    Other(u32),
}

/// Iterates over the fields of a complete message body.
pub(crate) struct FieldReader<'a> {
    buf: &'a [u8],
}

impl<'a> FieldReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let (value, used) = get_varint(self.buf)?.ok_or(ProtoError::Truncated)?;
        self.buf = &self.buf[used..];
        Ok(value)
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], ProtoError> {
        let len = usize::try_from(len).map_err(|_| ProtoError::Truncated)?;
        if len > self.buf.len() {
            return Err(ProtoError::Truncated);
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn next_field(&mut self) -> Result<Option<Field<'a>>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| ProtoError::BadVarint)?;
        if field == 0 {
            return Err(ProtoError::ZeroFieldNumber);
        }
        let field = match (key & 7) as u8 {
            WIRE_VARINT => Field::Varint(field, self.varint()?),
            WIRE_LEN => {
                let len = self.varint()?;
                Field::Bytes(field, self.take(len)?)
            }
            WIRE_FIXED64 => {
                self.take(8)?;
                Field::Other(field)
            }
            WIRE_FIXED32 => {
                self.take(4)?;
                Field::Other(field)
            }
            other => return Err(ProtoError::UnsupportedWireType(other)),
        };
        Ok(Some(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_roundtrip(value: u64) {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            prop_assert_eq!(out.len(), varint_len(value));
            prop_assert_eq!(get_varint(&out).unwrap(), Some((value, out.len())));
            // Every strict prefix is "need more bytes", never an error or a wrong value.
            for cut in 0..out.len() {
                prop_assert_eq!(get_varint(&out[..cut]).unwrap(), None);
            }
        }

        #[test]
        fn field_reader_never_panics(bytes: Vec<u8>) {
            let mut reader = FieldReader::new(&bytes);
            for _ in 0..bytes.len() + 1 {
                match reader.next_field() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        assert_eq!(get_varint(&[0xff; 11]), Err(ProtoError::BadVarint));
        // 10th byte may only carry the single top bit of a u64.
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(get_varint(&max).unwrap(), Some((u64::MAX, 10)));
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&over), Err(ProtoError::BadVarint));
    }

    #[test]
    fn skips_unknown_fixed_fields() {
        // field 7 fixed64, field 8 fixed32, then field 1 varint 3
        let mut buf = vec![(7 << 3) | 1];
        buf.extend_from_slice(&[0; 8]);
        buf.push((8 << 3) | 5);
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&[0x08, 3]);
        let mut reader = FieldReader::new(&buf);
        assert_eq!(reader.next_field().unwrap(), Some(Field::Other(7)));
        assert_eq!(reader.next_field().unwrap(), Some(Field::Other(8)));
        assert_eq!(reader.next_field().unwrap(), Some(Field::Varint(1, 3)));
        assert_eq!(reader.next_field().unwrap(), None);
    }
}
