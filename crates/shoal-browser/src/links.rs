//! Links only move bytes: a reader task per inbound stream decodes frames and hands them
//! to the runtime; a writer task per outbound stream opens it and writes the frames the
//! runtime queues. Neither holds protocol state.
//!
//! Bounded, with what happens when full:
//! - readers wait for room in the runtime's input queue ([`INPUT_QUEUE`]): the data
//!   channel then stops being read and the sender's queue fills — flow control, no loss;
//! - a writer's queue holds at most [`WRITER_QUEUE`] frames and [`WRITER_BYTES`] bytes;
//!   the runtime never waits on it: a link that cannot keep up is closed and its peer
//!   treated as gone for that protocol (the engine then asks others).

use std::{cell::Cell, rc::Rc};

use bytes::Bytes;
use futures::{
    AsyncReadExt, AsyncWriteExt, SinkExt, StreamExt,
    channel::mpsc,
    future::{AbortHandle, abortable},
};
use libp2p::{PeerId, StreamProtocol};
use shoal_core::codec::{Frame, FrameDecoder, WireError};

use crate::streams::{Control, OpenError};

/// Depth of the runtime's input queue, shared by every reader.
pub(crate) const INPUT_QUEUE: usize = 256;
/// Most frames queued on one writer.
pub(crate) const WRITER_QUEUE: usize = 512;
/// Most bytes queued on one writer (a few seconds of chunks on a good uplink).
pub(crate) const WRITER_BYTES: usize = 8 * 1024 * 1024;
/// Bytes read from a stream per read: at least the small frames' worth, at most a
/// chunk's (a large frame is read in exactly its size).
const MIN_READ: usize = 4096;
const READ_SIZE: usize = 256 * 1024;

/// Identifies one link (one stream) for as long as the page runs.
pub(crate) type LinkId = u64;

/// What a link reports to the runtime.
pub(crate) enum LinkInput<F> {
    Frame(F),
    /// The stream ended: cleanly (`None`), or with an error.
    Closed(Option<String>),
    /// The peer sent something that is not this protocol.
    Bad(WireError),
}

/// Reads frames of `F` (bodies up to `limit` bytes) from `stream` until it ends, handing
/// each to `inputs` as `wrap(link, input)`.
pub(crate) async fn read_frames<F: Frame, I>(
    mut stream: libp2p::Stream,
    limit: usize,
    link: LinkId,
    mut inputs: mpsc::Sender<I>,
    wrap: fn(LinkId, LinkInput<F>) -> I,
) {
    let mut decoder = FrameDecoder::<F>::with_limit(limit);
    let end = loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if inputs.send(wrap(link, LinkInput::Frame(frame))).await.is_err() {
                        return; // the runtime stopped
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let _ = inputs.send(wrap(link, LinkInput::Bad(error))).await;
                    return;
                }
            }
        }
        // Read straight into the decoder's buffer: the stream copies each payload once,
        // from the data channel message into it.
        let want = decoder.wanted().clamp(MIN_READ, READ_SIZE);
        let buffer = decoder.buffer();
        let filled = buffer.len();
        buffer.resize(filled + want, 0);
        let read = stream.read(&mut buffer[filled..]).await;
        let got = *read.as_ref().unwrap_or(&0);
        decoder.buffer().truncate(filled + got);
        match read {
            Ok(0) => break None,
            Ok(_) => {}
            Err(error) => break Some(error.to_string()),
        }
    };
    let _ = inputs.send(wrap(link, LinkInput::Closed(end))).await;
}

/// Spawns [`read_frames`] as its own task; the handle stops it (dropping the stream).
pub(crate) fn spawn_reader<F: Frame + 'static, I: 'static>(
    stream: libp2p::Stream,
    limit: usize,
    link: LinkId,
    inputs: mpsc::Sender<I>,
    wrap: fn(LinkId, LinkInput<F>) -> I,
) -> AbortHandle {
    let (task, handle) = abortable(read_frames(stream, limit, link, inputs, wrap));
    wasm_bindgen_futures::spawn_local(async move {
        let _ = task.await;
    });
    handle
}

/// One outbound link: frames for it, and how much of them is not written yet. Dropping
/// it ends the link: the task writes what is queued, then closes the stream.
pub(crate) struct Writer {
    pub link: LinkId,
    frames: mpsc::Sender<Bytes>,
    queued: Rc<Cell<usize>>,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// The writer ended.
    Closed,
    /// The link is too far behind (see the module docs).
    Full,
}

impl Writer {
    /// Queues `frame`; never waits.
    pub fn send(&mut self, frame: Bytes) -> Result<(), QueueError> {
        if self.queued.get() + frame.len() > WRITER_BYTES {
            return Err(QueueError::Full);
        }
        let len = frame.len();
        match self.frames.try_send(frame) {
            Ok(()) => {
                self.queued.set(self.queued.get() + len);
                Ok(())
            }
            Err(e) if e.is_full() => Err(QueueError::Full),
            Err(_) => Err(QueueError::Closed),
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued.get()
    }
}

/// Opens a stream speaking `protocol` to `peer`, writes `first` (a greeting) and then
/// every frame queued on the returned writer, until the runtime drops the writer or the
/// stream fails; then reports `ended(link, how)` on `inputs`. Every byte written is
/// added to `written` (the uplink's meter).
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_writer<I: 'static>(
    control: Control,
    peer: PeerId,
    protocol: StreamProtocol,
    link: LinkId,
    first: Option<Bytes>,
    written: Rc<Cell<u64>>,
    mut inputs: mpsc::Sender<I>,
    ended: fn(LinkId, Result<(), OpenError>) -> I,
) -> Writer {
    let (frames_tx, mut frames) = mpsc::channel::<Bytes>(WRITER_QUEUE);
    let queued = Rc::new(Cell::new(0usize));
    let writer = Writer { link, frames: frames_tx, queued: queued.clone() };
    wasm_bindgen_futures::spawn_local(async move {
        let result: Result<(), OpenError> = async {
            let mut stream = control.open(peer, protocol).await?;
            let io = |e: std::io::Error| OpenError::Io(e.to_string());
            if let Some(first) = first {
                stream.write_all(&first).await.map_err(io)?;
            }
            while let Some(frame) = frames.next().await {
                stream.write_all(&frame).await.map_err(io)?;
                queued.set(queued.get().saturating_sub(frame.len()));
                written.set(written.get() + frame.len() as u64);
            }
            let _ = stream.close().await;
            Ok(())
        }
        .await;
        let _ = inputs.send(ended(link, result)).await;
    });
    writer
}
