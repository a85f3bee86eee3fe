//! `/shoal/bulk/1`: streams a verifiable byte pattern to a peer, which checks every byte
//! and answers with what it verified. Used by the end-to-end tests and the throughput
//! benchmark; it exercises exactly the path pieces take.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use thiserror::Error;

pub const PROTOCOL: &str = "/shoal/bulk/1";

/// Largest transfer a receiver accepts.
pub const MAX_LEN: u64 = 1 << 30;

const CHUNK: usize = 64 * 1024;

/// Byte `index` of the pattern for `seed`: cheap, position-dependent, so a dropped,
/// duplicated or reordered chunk is caught.
pub fn pattern_byte(seed: u64, index: u64) -> u8 {
    let x = index.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

fn fill(seed: u64, start: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, start + i as u64);
    }
}

/// What the receiver reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Bytes received that matched the pattern, in order.
    pub bytes: u64,
    /// Whether every one of the announced bytes arrived and matched.
    pub intact: bool,
}

#[derive(Debug, Error)]
pub enum BulkError {
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("announced length {0} exceeds {MAX_LEN}")]
    TooLong(u64),
    #[error("bad reply status {0}")]
    BadReply(u8),
}

/// Sends `len` pattern bytes, closes the write half, and returns the receiver's verdict.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    len: u64,
    seed: u64,
) -> Result<Verified, BulkError> {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&len.to_be_bytes());
    header[8..].copy_from_slice(&seed.to_be_bytes());
    stream.write_all(&header).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < len {
        let n = CHUNK.min((len - sent) as usize);
        fill(seed, sent, &mut buf[..n]);
        stream.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    stream.close().await?;
    let mut reply = [0u8; 9];
    stream.read_exact(&mut reply).await?;
    let intact = match reply[0] {
        0 => true,
        1 => false,
        other => return Err(BulkError::BadReply(other)),
    };
    let bytes = u64::from_be_bytes(reply[1..].try_into().unwrap_or_default());
    Ok(Verified { bytes, intact })
}

/// Receives one transfer, checking every byte, and replies with the verdict.
pub async fn receive<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<Verified, BulkError> {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).await?;
    let len = u64::from_be_bytes(header[..8].try_into().unwrap_or_default());
    let seed = u64::from_be_bytes(header[8..].try_into().unwrap_or_default());
    if len > MAX_LEN {
        return Err(BulkError::TooLong(len));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut good = 0u64;
    let mut intact = true;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if intact && good < len && b == pattern_byte(seed, good) {
                good += 1;
            } else {
                intact = false;
            }
        }
    }
    let verified = Verified { bytes: good, intact: intact && good == len };
    let mut reply = [0u8; 9];
    reply[0] = if verified.intact { 0 } else { 1 };
    reply[1..].copy_from_slice(&good.to_be_bytes());
    stream.write_all(&reply).await?;
    stream.close().await?;
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{executor::block_on, future::join, io::Cursor};

    /// An in-memory duplex: writes to one side are read by the other; closing the write
    /// side ends the reader. Half-close is what the real protocol relies on.
    struct Pipe {
        read: Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl AsyncRead for Pipe {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.read).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.written.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn transfer(len: u64, corrupt_at: Option<usize>) -> (Verified, Verified) {
        // Sender writes into a pipe whose reply is prepared after the receiver ran.
        let mut sender_out = Pipe { read: Cursor::new(Vec::new()), written: Vec::new() };
        // First run the sender up to its read of the reply, which fails on an empty
        // cursor; what it wrote is the wire image.
        let _ = block_on(send(&mut sender_out, len, 7));
        let mut wire = sender_out.written;
        if let Some(at) = corrupt_at {
            wire[16 + at] ^= 0xff;
        }
        let mut receiver = Pipe { read: Cursor::new(wire.clone()), written: Vec::new() };
        let verdict = block_on(receive(&mut receiver)).unwrap();
        let mut sender = Pipe { read: Cursor::new(receiver.written), written: Vec::new() };
        let (reported, _) = block_on(join(send(&mut sender, len, 7), async {}));
        (verdict, reported.unwrap())
    }

    #[test]
    fn intact_transfer_verifies() {
        let (receiver, sender) = transfer(200_000, None);
        assert_eq!(receiver, Verified { bytes: 200_000, intact: true });
        assert_eq!(sender, receiver);
    }

    #[test]
    fn one_flipped_byte_is_caught() {
        let (receiver, sender) = transfer(200_000, Some(150_001));
        assert!(!receiver.intact);
        assert_eq!(receiver.bytes, 150_001);
        assert_eq!(sender, receiver);
    }

    #[test]
    fn oversize_announcement_is_refused() {
        let mut header = Vec::new();
        header.extend_from_slice(&(MAX_LEN + 1).to_be_bytes());
        header.extend_from_slice(&0u64.to_be_bytes());
        let mut pipe = Pipe { read: Cursor::new(header), written: Vec::new() };
        assert!(matches!(block_on(receive(&mut pipe)), Err(BulkError::TooLong(_))));
    }
}
