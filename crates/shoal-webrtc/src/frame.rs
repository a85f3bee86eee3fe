//! Stream framing on a data channel (libp2p WebRTC "Multiplexing"): each message is a
//! varint length prefix and a protobuf `{flag, message}`; flags carry half-close
//! (`FIN`/`FIN_ACK`), `STOP_SENDING` and `RESET_STREAM`.
//!
//! [`StreamCore`] is the per-stream state machine, with no browser types: bytes from the
//! channel go in (cut anywhere — js-libp2p sends prefix and body as separate messages),
//! readable payload and flags to send come out. The browser stream wraps it.
//!
//! Received payload is held as [`Payload`] pieces, not copied into one buffer: in the
//! browser a data channel message that holds one whole frame (what Shoal peers send)
//! stays in JavaScript memory until it is read, and is then copied once, straight into
//! the reader's buffer ([`StreamCore::frame_layout`] reads its header from the first
//! bytes alone). Frames cut across messages are reassembled in wasm memory.

use std::collections::VecDeque;

use bytes::Bytes;

use thiserror::Error;

use crate::proto::{
    Field, FieldReader, ProtoError, WIRE_LEN, WIRE_VARINT, get_varint, put_tag, put_varint, varint_len,
};

/// Largest encoded frame, length prefix included, that we send (the spec's limit).
pub const MAX_FRAME_LEN: usize = 16 * 1024;
/// Largest payload that fits one frame: 2 bytes of length prefix, 2 of flag, 3 of field
/// header are reserved even when absent so every data frame stays within the limit.
pub const MAX_DATA_LEN: usize = MAX_FRAME_LEN - 2 - 5;
/// Largest frame we accept. The spec forbids more than 16 KiB; we tolerate peers that
/// overshoot up to Chromium's SCTP message limit rather than cut them off.
pub const MAX_INBOUND_FRAME_LEN: usize = 256 * 1024;

/// Stream control flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// The sender will send no more data.
    Fin = 0,
    /// The sender will read no more data.
    StopSending = 1,
    /// The sender abandoned the stream.
    Reset = 2,
    /// Acknowledges a received `Fin`.
    FinAck = 3,
}

impl Flag {
    fn from_wire(value: u64) -> Option<Self> {
        Some(match value {
            0 => Self::Fin,
            1 => Self::StopSending,
            2 => Self::Reset,
            3 => Self::FinAck,
            _ => return None,
        })
    }
}

/// Appends one encoded frame to `out`.
pub fn encode_frame(flag: Option<Flag>, data: &[u8], out: &mut Vec<u8>) {
    let mut body_len = 0;
    if flag.is_some() {
        body_len += 2;
    }
    if !data.is_empty() {
        body_len += 1 + varint_len(data.len() as u64) + data.len();
    }
    out.reserve(body_len + 3);
    put_varint(out, body_len as u64);
    if let Some(flag) = flag {
        put_tag(out, 1, WIRE_VARINT);
        put_varint(out, flag as u64);
    }
    if !data.is_empty() {
        put_tag(out, 2, WIRE_LEN);
        put_varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }
}

/// Why the remote's bytes ended the stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_INBOUND_FRAME_LEN} byte limit")]
    TooLarge(u64),
    #[error("malformed frame: {0}")]
    Proto(#[from] ProtoError),
    #[error("unknown stream flag {0}")]
    UnknownFlag(u64),
    #[error("remote sent more than {0} unread bytes")]
    Overflow(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadHalf {
    Open,
    /// Remote sent `FIN`: what is buffered is all there is.
    Finished,
    /// We sent `STOP_SENDING`: incoming data is discarded.
    Stopped,
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteHalf {
    Open,
    /// We sent `FIN` and wait for `FIN_ACK`.
    FinSent,
    FinAcked,
    /// Remote sent `STOP_SENDING`.
    Stopped,
    Reset,
}

/// Result of [`StreamCore::read`].
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(usize),
    /// Remote finished (or we stopped reading) and everything was read.
    Eof,
    /// Nothing buffered yet.
    Pending,
    /// The stream was reset by the remote or by a protocol error.
    Reset,
}

/// Why a write is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WriteRefused {
    #[error("write side already closed")]
    Closed,
    #[error("remote stopped reading")]
    StoppedByRemote,
    #[error("stream was reset")]
    Reset,
}

/// Received payload waiting to be read.
pub trait Payload: From<Bytes> {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies bytes `start..start + out.len()` into `out`.
    fn copy_to(&self, start: usize, out: &mut [u8]);
}

impl Payload for Bytes {
    fn len(&self) -> usize {
        Bytes::len(self)
    }

    fn copy_to(&self, start: usize, out: &mut [u8]) {
        out.copy_from_slice(&self[start..start + out.len()]);
    }
}

/// Where a frame's parts lie in a message that starts with it (see
/// [`StreamCore::frame_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    /// The whole frame, length prefix included.
    pub len: usize,
    pub flag: Option<Flag>,
    /// The payload's offset and length, if the frame carries one.
    pub data: Option<(usize, usize)>,
}

/// Per-stream framing and half-close state. See the module docs.
#[derive(Debug)]
pub struct StreamCore<P: Payload = Bytes> {
    partial: Vec<u8>,
    readable: VecDeque<P>,
    /// Bytes of `readable`'s front already read.
    front_read: usize,
    /// Unread bytes in `readable`.
    unread: usize,
    read: ReadHalf,
    write: WriteHalf,
    max_unread: usize,
    fin_ack: bool,
}

impl<P: Payload> StreamCore<P> {
    /// `max_unread` bounds payload received but not yet read; a remote sending more is cut
    /// off with [`FrameError::Overflow`] rather than growing memory without bound.
    pub fn new(max_unread: usize) -> Self {
        Self {
            partial: Vec::new(),
            readable: VecDeque::new(),
            front_read: 0,
            unread: 0,
            read: ReadHalf::Open,
            write: WriteHalf::Open,
            max_unread,
            fin_ack: true,
        }
    }

    /// Whether bytes of an earlier message wait for the rest of their frame (then a new
    /// message must go through [`StreamCore::on_bytes`]).
    pub fn mid_frame(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Reads the layout of the frame at the start of a message from its first bytes
    /// (`head`): `Ok(None)` if those do not suffice (a frame cut across messages, or a
    /// payload that is not the frame's last field), so the whole message must go through
    /// [`StreamCore::on_bytes`].
    pub fn frame_layout(head: &[u8]) -> Result<Option<FrameLayout>, FrameError> {
        let Some((len, prefix)) = get_varint(head)? else { return Ok(None) };
        if len > MAX_INBOUND_FRAME_LEN as u64 {
            return Err(FrameError::TooLarge(len));
        }
        let end = prefix + len as usize;
        let mut at = prefix;
        let mut flag = None;
        while at < end {
            let Some((key, used)) = get_varint(&head[at.min(head.len())..])? else { return Ok(None) };
            at += used;
            let field = key >> 3;
            match (field, (key & 7) as u8) {
                (1, WIRE_VARINT) => {
                    let Some((value, used)) = get_varint(&head[at.min(head.len())..])? else { return Ok(None) };
                    at += used;
                    flag = Some(Flag::from_wire(value).ok_or(FrameError::UnknownFlag(value))?);
                }
                (2, WIRE_LEN) => {
                    let Some((data_len, used)) = get_varint(&head[at.min(head.len())..])? else { return Ok(None) };
                    at += used;
                    // Only the usual shape (payload last) is read here.
                    if at as u64 + data_len != end as u64 {
                        return Ok(None);
                    }
                    let data = (data_len > 0).then_some((at, data_len as usize));
                    return Ok(Some(FrameLayout { len: end, flag, data }));
                }
                _ => return Ok(None),
            }
        }
        if at != end {
            return Ok(None);
        }
        Ok(Some(FrameLayout { len: end, flag, data: None }))
    }

    /// Takes one whole frame whose layout the caller read with
    /// [`StreamCore::frame_layout`], its payload as `data`. Same contract as
    /// [`StreamCore::on_bytes`].
    pub fn on_frame(&mut self, flag: Option<Flag>, data: Option<P>) -> Result<Vec<Flag>, FrameError> {
        let mut replies = Vec::new();
        let result = self.apply(flag, data, &mut replies);
        if result.is_err() {
            self.reset();
        }
        result.map(|()| replies)
    }

    /// For remotes that predate `FIN_ACK` (rust-libp2p's libp2p-webrtc 0.10 server rejects
    /// unknown flags as invalid data): never send it, and treat the write half as closed
    /// as soon as our `FIN` is sent.
    pub fn without_fin_ack(mut self) -> Self {
        self.fin_ack = false;
        self
    }

    /// Feeds bytes received on the channel. Returns the flags to send back right away
    /// (a `FIN_ACK` for each `FIN`). On error the stream is reset locally and the caller
    /// should send `RESET_STREAM` and close the channel.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Flag>, FrameError> {
        let mut replies = Vec::new();
        // Usual case: the channel message holds whole frames, parsed in place.
        let result = if self.partial.is_empty() {
            let (consumed, result) = self.parse_frames(bytes, &mut replies);
            if result.is_ok() {
                self.partial.extend_from_slice(&bytes[consumed..]);
            }
            result
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(bytes);
            let (consumed, result) = self.parse_frames(&buf, &mut replies);
            if result.is_ok() {
                buf.drain(..consumed);
                self.partial = buf;
            }
            result
        };
        if result.is_err() {
            self.reset();
        }
        result.map(|()| replies)
    }

    /// Handles every complete frame at the front of `buf`; returns the bytes consumed.
    fn parse_frames(&mut self, buf: &[u8], replies: &mut Vec<Flag>) -> (usize, Result<(), FrameError>) {
        let mut consumed = 0;
        loop {
            let rest = &buf[consumed..];
            let (len, prefix) = match get_varint(rest) {
                Ok(Some(v)) => v,
                Ok(None) => return (consumed, Ok(())),
                Err(e) => return (consumed, Err(e.into())),
            };
            if len > MAX_INBOUND_FRAME_LEN as u64 {
                return (consumed, Err(FrameError::TooLarge(len)));
            }
            let end = prefix + len as usize;
            if rest.len() < end {
                return (consumed, Ok(()));
            }
            if let Err(e) = self.on_frame_body(&rest[prefix..end], replies) {
                return (consumed, Err(e));
            }
            consumed += end;
        }
    }

    fn on_frame_body(&mut self, body: &[u8], replies: &mut Vec<Flag>) -> Result<(), FrameError> {
        let mut flag = None;
        let mut data: &[u8] = &[];
        let mut reader = FieldReader::new(body);
        while let Some(field) = reader.next_field()? {
            match field {
                Field::Varint(1, value) => flag = Some(Flag::from_wire(value).ok_or(FrameError::UnknownFlag(value))?),
                Field::Bytes(2, bytes) => data = bytes,
                Field::Bytes(1, _) => {
                    return Err(
                        ProtoError::WrongWireType { field: 1, wire_type: WIRE_LEN, expected: WIRE_VARINT }.into()
                    );
                }
                Field::Varint(2, _) => {
                    return Err(
                        ProtoError::WrongWireType { field: 2, wire_type: WIRE_VARINT, expected: WIRE_LEN }.into()
                    );
                }
                _ => {}
            }
        }
        let data = (!data.is_empty()).then(|| P::from(Bytes::copy_from_slice(data)));
        self.apply(flag, data, replies)
    }

    fn apply(&mut self, flag: Option<Flag>, data: Option<P>, replies: &mut Vec<Flag>) -> Result<(), FrameError> {
        // Data first: a frame may carry its last data together with FIN.
        if let Some(data) = data
            && data.len() > 0
            && self.read == ReadHalf::Open
        {
            if self.unread + data.len() > self.max_unread {
                return Err(FrameError::Overflow(self.max_unread));
            }
            self.unread += data.len();
            self.readable.push_back(data);
        }
        match flag {
            None => {}
            Some(Flag::Fin) => {
                if self.read == ReadHalf::Open {
                    self.read = ReadHalf::Finished;
                }
                // Acknowledge even if we had stopped reading: the remote waits for it.
                if self.fin_ack {
                    replies.push(Flag::FinAck);
                }
            }
            Some(Flag::StopSending) => {
                if matches!(self.write, WriteHalf::Open | WriteHalf::FinSent) {
                    self.write = WriteHalf::Stopped;
                }
            }
            Some(Flag::Reset) => self.reset(),
            Some(Flag::FinAck) if self.write == WriteHalf::FinSent => self.write = WriteHalf::FinAcked,
            // A FIN_ACK for a FIN we never sent changes nothing.
            Some(Flag::FinAck) => {}
        }
        Ok(())
    }

    /// Marks the stream reset: unread data is dropped and both halves are closed.
    pub fn reset(&mut self) {
        self.read = ReadHalf::Reset;
        self.write = WriteHalf::Reset;
        self.clear_readable();
        self.partial.clear();
    }

    fn clear_readable(&mut self) {
        self.readable.clear();
        self.front_read = 0;
        self.unread = 0;
    }

    /// Copies readable payload into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> ReadOutcome {
        if self.read == ReadHalf::Reset {
            return ReadOutcome::Reset;
        }
        if self.unread > 0 {
            let mut filled = 0;
            while filled < buf.len() {
                let Some(front) = self.readable.front() else { break };
                let n = (front.len() - self.front_read).min(buf.len() - filled);
                front.copy_to(self.front_read, &mut buf[filled..filled + n]);
                filled += n;
                self.front_read += n;
                if self.front_read == front.len() {
                    self.readable.pop_front();
                    self.front_read = 0;
                }
            }
            self.unread -= filled;
            return ReadOutcome::Data(filled);
        }
        match self.read {
            ReadHalf::Open => ReadOutcome::Pending,
            ReadHalf::Finished | ReadHalf::Stopped => ReadOutcome::Eof,
            ReadHalf::Reset => ReadOutcome::Reset,
        }
    }

    /// Bytes received and not yet read.
    pub fn unread(&self) -> usize {
        self.unread
    }

    /// Whether data may be written now.
    pub fn check_writable(&self) -> Result<(), WriteRefused> {
        match self.write {
            WriteHalf::Open => Ok(()),
            WriteHalf::FinSent | WriteHalf::FinAcked => Err(WriteRefused::Closed),
            WriteHalf::Stopped => Err(WriteRefused::StoppedByRemote),
            WriteHalf::Reset => Err(WriteRefused::Reset),
        }
    }

    /// Encodes up to [`MAX_DATA_LEN`] bytes of `data` as one frame; returns how many.
    pub fn encode_data(&self, data: &[u8], out: &mut Vec<u8>) -> Result<usize, WriteRefused> {
        self.check_writable()?;
        let n = data.len().min(MAX_DATA_LEN);
        encode_frame(None, &data[..n], out);
        Ok(n)
    }

    /// Starts closing the write half: returns `true` if a `FIN` frame was appended to `out`.
    pub fn close_write(&mut self, out: &mut Vec<u8>) -> bool {
        if self.write != WriteHalf::Open {
            return false;
        }
        encode_frame(Some(Flag::Fin), &[], out);
        self.write = if self.fin_ack { WriteHalf::FinSent } else { WriteHalf::FinAcked };
        true
    }

    /// Whether the write half is done: the remote acknowledged our `FIN`, or stopped
    /// reading, or the stream was reset.
    pub fn write_closed(&self) -> bool {
        matches!(self.write, WriteHalf::FinAcked | WriteHalf::Stopped | WriteHalf::Reset)
    }

    /// Whether we sent `FIN` and still wait for its acknowledgement.
    pub fn awaiting_fin_ack(&self) -> bool {
        self.write == WriteHalf::FinSent
    }

    /// Gives up waiting for `FIN_ACK` (the remote may not implement it).
    pub fn give_up_fin_ack(&mut self) {
        if self.write == WriteHalf::FinSent {
            self.write = WriteHalf::FinAcked;
        }
    }

    /// Stops reading: unread data is dropped, later data discarded. Returns `true` if a
    /// `STOP_SENDING` frame was appended to `out`.
    pub fn close_read(&mut self, out: &mut Vec<u8>) -> bool {
        self.clear_readable();
        if self.read != ReadHalf::Open {
            return false;
        }
        encode_frame(Some(Flag::StopSending), &[], out);
        self.read = ReadHalf::Stopped;
        true
    }

    /// Whether both halves are finished, so the data channel can be closed.
    pub fn fully_closed(&self) -> bool {
        self.write_closed() && self.read != ReadHalf::Open && self.unread == 0
    }

    pub fn is_reset(&self) -> bool {
        self.read == ReadHalf::Reset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BIG: usize = 1 << 20;

    fn frames(flag: Option<Flag>, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(flag, data, &mut out);
        out
    }

    #[test]
    fn largest_data_frame_is_exactly_the_limit() {
        let core: StreamCore = StreamCore::new(BIG);
        let mut out = Vec::new();
        let n = core.encode_data(&vec![1; 100_000], &mut out).unwrap();
        assert_eq!(n, MAX_DATA_LEN);
        assert!(out.len() <= MAX_FRAME_LEN, "{} > {MAX_FRAME_LEN}", out.len());
        // A FIN with the largest payload must fit too.
        let with_flag = frames(Some(Flag::Fin), &vec![1; MAX_DATA_LEN]);
        assert_eq!(with_flag.len(), MAX_FRAME_LEN);
    }

    #[test]
    fn matches_prost_encoding() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Message {
            #[prost(int32, optional, tag = "1")]
            flag: Option<i32>,
            #[prost(bytes = "vec", optional, tag = "2")]
            message: Option<Vec<u8>>,
        }
        for (flag, data) in [(None, b"hello".to_vec()), (Some(Flag::FinAck), vec![]), (Some(Flag::Fin), vec![9; 300])] {
            let theirs = prost::Message::encode_length_delimited_to_vec(&Message {
                flag: flag.map(|f| f as i32),
                message: (!data.is_empty()).then(|| data.clone()),
            });
            assert_eq!(frames(flag, &data), theirs);
        }
    }

    #[test]
    fn without_fin_ack_neither_sends_nor_waits_for_it() {
        let mut core: StreamCore = StreamCore::new(BIG).without_fin_ack();
        assert_eq!(core.on_bytes(&frames(Some(Flag::Fin), b"")).unwrap(), vec![]);
        let mut out = Vec::new();
        assert!(core.close_write(&mut out));
        assert_eq!(out, frames(Some(Flag::Fin), b""));
        assert!(core.write_closed());
        assert!(!core.awaiting_fin_ack());
    }

    #[test]
    fn fin_is_acknowledged_and_reads_to_eof() {
        let mut core: StreamCore = StreamCore::new(BIG);
        let mut bytes = frames(None, b"abc");
        bytes.extend(frames(Some(Flag::Fin), b"de"));
        assert_eq!(core.on_bytes(&bytes).unwrap(), vec![Flag::FinAck]);
        let mut buf = [0u8; 10];
        assert_eq!(core.read(&mut buf), ReadOutcome::Data(5));
        assert_eq!(&buf[..5], b"abcde");
        assert_eq!(core.read(&mut buf), ReadOutcome::Eof);
    }

    #[test]
    fn close_write_waits_for_fin_ack() {
        let mut core: StreamCore = StreamCore::new(BIG);
        let mut out = Vec::new();
        assert!(core.close_write(&mut out));
        assert_eq!(out, frames(Some(Flag::Fin), &[]));
        assert!(!core.write_closed());
        assert_eq!(core.encode_data(b"x", &mut out), Err(WriteRefused::Closed));
        core.on_bytes(&frames(Some(Flag::FinAck), &[])).unwrap();
        assert!(core.write_closed());
        assert!(!core.fully_closed(), "read half still open");
        core.on_bytes(&frames(Some(Flag::Fin), &[])).unwrap();
        assert!(core.fully_closed());
    }

    #[test]
    fn stop_sending_and_reset() {
        let mut core: StreamCore = StreamCore::new(BIG);
        core.on_bytes(&frames(Some(Flag::StopSending), &[])).unwrap();
        assert_eq!(core.check_writable(), Err(WriteRefused::StoppedByRemote));
        core.on_bytes(&frames(None, b"still readable")).unwrap();
        core.on_bytes(&frames(Some(Flag::Reset), &[])).unwrap();
        assert_eq!(core.read(&mut [0; 4]), ReadOutcome::Reset);
    }

    #[test]
    fn our_stop_sending_discards_later_data() {
        let mut core: StreamCore = StreamCore::new(BIG);
        let mut out = Vec::new();
        core.on_bytes(&frames(None, b"dropped")).unwrap();
        assert!(core.close_read(&mut out));
        core.on_bytes(&frames(None, b"ignored")).unwrap();
        assert_eq!(core.unread(), 0);
        assert_eq!(core.read(&mut [0; 4]), ReadOutcome::Eof);
    }

    #[test]
    fn overflow_and_oversize_reset_the_stream() {
        let mut core: StreamCore = StreamCore::new(8);
        assert_eq!(core.on_bytes(&frames(None, b"123456789")), Err(FrameError::Overflow(8)));
        assert!(core.is_reset());
        let mut core: StreamCore = StreamCore::new(BIG);
        let mut huge = Vec::new();
        put_varint(&mut huge, (MAX_INBOUND_FRAME_LEN + 1) as u64);
        assert!(matches!(core.on_bytes(&huge), Err(FrameError::TooLarge(_))));
        let mut core: StreamCore = StreamCore::new(BIG);
        assert_eq!(core.on_bytes(&[2, 0x08, 9]), Err(FrameError::UnknownFlag(9)));
    }

    proptest! {
        /// Frames survive any cutting of the byte stream into channel messages.
        #[test]
        fn reassembles_across_arbitrary_cuts(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..3000), 1..8), cuts in proptest::collection::vec(1usize..5000, 1..20)) {
            let mut wire = Vec::new();
            let core: StreamCore = StreamCore::new(BIG);
            let mut expected = Vec::new();
            for payload in &payloads {
                let mut rest = payload.as_slice();
                while !rest.is_empty() {
                    let n = core.encode_data(rest, &mut wire).unwrap();
                    rest = &rest[n..];
                }
                expected.extend_from_slice(payload);
            }
            let mut receiver: StreamCore = StreamCore::new(BIG);
            let mut offset = 0;
            for cut in cuts.iter().cycle() {
                if offset >= wire.len() { break; }
                let end = (offset + cut).min(wire.len());
                receiver.on_bytes(&wire[offset..end]).unwrap();
                offset = end;
            }
            let mut got = vec![0; expected.len()];
            let mut filled = 0;
            while filled < got.len() {
                match receiver.read(&mut got[filled..]) {
                    ReadOutcome::Data(n) => filled += n,
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            prop_assert_eq!(got, expected);
        }

        /// The header-only fast path reads every frame we encode exactly as the byte
        /// path does.
        #[test]
        fn frame_layout_matches_the_byte_path(flag in proptest::option::of(0u8..4), data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let flag = flag.and_then(|f| Flag::from_wire(u64::from(f)));
            let wire = frames(flag, &data);
            let layout = StreamCore::<Bytes>::frame_layout(&wire[..wire.len().min(16)]).unwrap().unwrap();
            prop_assert_eq!(layout.len, wire.len());
            prop_assert_eq!(layout.flag, flag);
            let payload = layout.data.map(|(at, len)| Bytes::copy_from_slice(&wire[at..at + len]));
            prop_assert_eq!(payload.as_deref().unwrap_or_default(), &data[..]);
            let mut fast: StreamCore = StreamCore::new(BIG);
            let mut slow: StreamCore = StreamCore::new(BIG);
            prop_assert_eq!(fast.on_frame(layout.flag, payload).unwrap(), slow.on_bytes(&wire).unwrap());
            let (mut a, mut b) = (vec![0; 4000], vec![0; 4000]);
            prop_assert_eq!(fast.read(&mut a), slow.read(&mut b));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn arbitrary_bytes_never_panic(chunks: Vec<Vec<u8>>) {
            let mut core: StreamCore = StreamCore::new(4096);
            for chunk in chunks {
                if core.on_bytes(&chunk).is_err() {
                    prop_assert!(core.is_reset());
                    break;
                }
                let _ = core.read(&mut [0; 64]);
            }
        }
    }
}
