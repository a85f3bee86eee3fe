//! A libp2p stream on one `RTCDataChannel`, framed by [`StreamCore`].
//!
//! Flow control is the browser's own send queue: writes go straight to `send()` while
//! `bufferedAmount` is under the high-water mark and wait for `bufferedamountlow` past
//! it. Unlike webrtc-websys (which stops at 16 KiB queued) this keeps the SCTP
//! association busy, which is what reaches raw-channel throughput.
//!
//! Incoming messages are parsed in the `message` callback itself, so flags take effect —
//! and `FIN_ACK` is sent — even while the application is not reading. A message holding
//! one whole frame (what Shoal peers send) is parsed from its first bytes and its
//! payload left in JavaScript memory; a read copies it once, into the reader's buffer.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

use futures::{AsyncRead, AsyncWrite, FutureExt};
use futures_timer::Delay;
use send_wrapper::SendWrapper;
use wasm_bindgen::{JsCast, prelude::Closure};
use web_sys::{Event, MessageEvent, RtcDataChannel, RtcDataChannelState, RtcDataChannelType};

use super::Config;
use crate::frame::{Flag, Payload, ReadOutcome, StreamCore, WriteRefused, encode_frame};

/// Payload received on a channel: a view of the message still in JavaScript memory, or
/// bytes reassembled in wasm memory from a frame cut across messages.
#[derive(Debug)]
enum Received {
    Js(js_sys::Uint8Array),
    Wasm(bytes::Bytes),
}

impl From<bytes::Bytes> for Received {
    fn from(bytes: bytes::Bytes) -> Self {
        Self::Wasm(bytes)
    }
}

impl Payload for Received {
    fn len(&self) -> usize {
        match self {
            Self::Js(view) => view.length() as usize,
            Self::Wasm(bytes) => bytes.len(),
        }
    }

    fn copy_to(&self, start: usize, out: &mut [u8]) {
        match self {
            Self::Js(view) => view.subarray(start as u32, (start + out.len()) as u32).copy_to(out),
            Self::Wasm(bytes) => out.copy_from_slice(&bytes[start..start + out.len()]),
        }
    }
}

/// Bytes of a message read to find its frame's layout: length prefix, flag, payload
/// header, with room to spare.
const HEAD: usize = 24;

/// A stream over a WebRTC data channel.
pub struct Stream {
    inner: SendWrapper<Inner>,
}

struct Inner {
    channel: RtcDataChannel,
    shared: Rc<RefCell<Shared>>,
    high_water: u32,
    fin_ack_timeout: std::time::Duration,
    fin_ack_deadline: Option<Delay>,
    /// False for the `/webrtc-direct` Noise channel, see [`Stream::new_handshake`].
    close_on_drop: bool,
    scratch: Vec<u8>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_wake: Closure<dyn FnMut(Event)>,
}

struct Shared {
    core: StreamCore<Received>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Why the remote's bytes ended the stream, if they did.
    error: Option<String>,
}

impl Shared {
    fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

impl Stream {
    pub(crate) fn new(channel: RtcDataChannel, config: &Config) -> Self {
        channel.set_binary_type(RtcDataChannelType::Arraybuffer);
        channel.set_buffered_amount_low_threshold(config.send_low_water);
        let shared = Rc::new(RefCell::new(Shared {
            core: if config.fin_ack {
                StreamCore::new(config.max_unread_per_stream)
            } else {
                StreamCore::new(config.max_unread_per_stream).without_fin_ack()
            },
            read_waker: None,
            write_waker: None,
            error: None,
        }));

        let on_message = Closure::<dyn FnMut(MessageEvent)>::new({
            let shared = shared.clone();
            let channel = channel.clone();
            move |event: MessageEvent| on_message(&shared, &channel, event)
        });
        // open, close, error and bufferedamountlow all mean "look again".
        let on_wake = Closure::<dyn FnMut(Event)>::new({
            let shared = shared.clone();
            move |_: Event| shared.borrow_mut().wake_all()
        });
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        channel.set_onopen(Some(on_wake.as_ref().unchecked_ref()));
        channel.set_onclose(Some(on_wake.as_ref().unchecked_ref()));
        channel.set_onerror(Some(on_wake.as_ref().unchecked_ref()));
        channel.set_onbufferedamountlow(Some(on_wake.as_ref().unchecked_ref()));

        Self {
            inner: SendWrapper::new(Inner {
                channel,
                shared,
                high_water: config.send_high_water,
                fin_ack_timeout: config.fin_ack_timeout,
                fin_ack_deadline: None,
                close_on_drop: true,
                scratch: Vec::with_capacity(crate::frame::MAX_FRAME_LEN),
                _on_message: on_message,
                _on_wake: on_wake,
            }),
        }
    }
}

impl Stream {
    /// The `/webrtc-direct` Noise stream (negotiated, id 0). Its data channel is left open
    /// when the stream is dropped: closing it would free id 0 for the browser's next
    /// in-band channel while the server may still be tearing down its own end of the
    /// old one, and that teardown then lands on the new stream.
    pub(crate) fn new_handshake(channel: RtcDataChannel, config: &Config) -> Self {
        let mut stream = Self::new(channel, config);
        stream.inner.close_on_drop = false;
        stream
    }
}

fn on_message(shared: &Rc<RefCell<Shared>>, channel: &RtcDataChannel, event: MessageEvent) {
    let data = event.data();
    let Some(buffer) = data.dyn_ref::<js_sys::ArrayBuffer>() else {
        // Text messages are not part of the protocol.
        tracing::debug!("ignoring non-binary data channel message");
        return;
    };
    let view = js_sys::Uint8Array::new(buffer);
    let len = view.length() as usize;

    let mut shared = shared.borrow_mut();
    let result = match whole_frame(&shared.core, &view, len) {
        Ok(Some(layout)) => {
            let data = layout.data.map(|(at, n)| Received::Js(view.subarray(at as u32, (at + n) as u32)));
            shared.core.on_frame(layout.flag, data)
        }
        Ok(None) => {
            // A frame cut across messages (or an unusual field order): reassemble it here.
            let mut bytes = vec![0u8; len];
            view.copy_to(&mut bytes);
            shared.core.on_bytes(&bytes)
        }
        Err(error) => {
            shared.core.reset();
            Err(error)
        }
    };
    match result {
        Ok(replies) => {
            for flag in replies {
                let mut frame = Vec::with_capacity(4);
                encode_frame(Some(flag), &[], &mut frame);
                let _ = channel.send_with_u8_array(&frame);
            }
        }
        Err(error) => {
            tracing::debug!(%error, "resetting stream after bad frame");
            shared.error = Some(error.to_string());
            let mut frame = Vec::with_capacity(4);
            encode_frame(Some(Flag::Reset), &[], &mut frame);
            let _ = channel.send_with_u8_array(&frame);
            channel.close();
        }
    }
    shared.wake_all();
}

/// The layout of the message's frame if the message is exactly one whole frame.
fn whole_frame(
    core: &StreamCore<Received>,
    view: &js_sys::Uint8Array,
    len: usize,
) -> Result<Option<crate::frame::FrameLayout>, crate::frame::FrameError> {
    if core.mid_frame() {
        return Ok(None);
    }
    let mut head = [0u8; HEAD];
    let n = len.min(HEAD);
    view.subarray(0, n as u32).copy_to(&mut head[..n]);
    Ok(StreamCore::<Received>::frame_layout(&head[..n])?.filter(|layout| layout.len == len))
}

fn refused(reason: WriteRefused) -> io::Error {
    let kind = match reason {
        WriteRefused::Closed => io::ErrorKind::BrokenPipe,
        WriteRefused::StoppedByRemote => io::ErrorKind::BrokenPipe,
        WriteRefused::Reset => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, reason)
}

impl Inner {
    fn reset_error(&self) -> Option<io::Error> {
        let shared = self.shared.borrow();
        shared.error.as_ref().map(|e| io::Error::new(io::ErrorKind::ConnectionReset, e.clone()))
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.channel
            .send_with_u8_array(frame)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, super::js_error(e)))
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self.get_mut().inner;
        if let Some(error) = this.reset_error() {
            return Poll::Ready(Err(error));
        }
        let mut shared = this.shared.borrow_mut();
        match shared.core.read(buf) {
            ReadOutcome::Data(n) => Poll::Ready(Ok(n)),
            ReadOutcome::Eof => Poll::Ready(Ok(0)),
            ReadOutcome::Reset => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            ReadOutcome::Pending => match this.channel.ready_state() {
                RtcDataChannelState::Closing | RtcDataChannelState::Closed => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "data channel closed without FIN")))
                }
                _ => {
                    shared.read_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self.get_mut().inner;
        // An empty data frame reads as end-of-stream to libp2p-webrtc-utils; send nothing.
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(error) = this.reset_error() {
            return Poll::Ready(Err(error));
        }
        this.shared.borrow().core.check_writable().map_err(refused)?;
        match this.channel.ready_state() {
            RtcDataChannelState::Connecting => {
                this.shared.borrow_mut().write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            RtcDataChannelState::Open => {}
            _ => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        if this.channel.buffered_amount() > this.high_water {
            // `bufferedamountlow` fires once the queue drains to the low-water mark.
            this.shared.borrow_mut().write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        this.scratch.clear();
        let n = this.shared.borrow().core.encode_data(buf, &mut this.scratch).map_err(refused)?;
        this.send(&this.scratch)?;
        Poll::Ready(Ok(n))
    }

    /// Bytes passed to `send()` are the browser's to deliver; there is nothing to flush.
    /// Delivery is confirmed on close, by the remote's `FIN_ACK`.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.reset_error() {
            Some(error) => Poll::Ready(Err(error)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self.get_mut().inner;
        if this.shared.borrow().core.write_closed() {
            return Poll::Ready(Ok(()));
        }
        match this.channel.ready_state() {
            RtcDataChannelState::Connecting => {
                this.shared.borrow_mut().write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            RtcDataChannelState::Open => {}
            // The channel is gone: nothing more can be said to the remote.
            _ => return Poll::Ready(Ok(())),
        }
        this.scratch.clear();
        if this.shared.borrow_mut().core.close_write(&mut this.scratch) {
            this.send(&this.scratch)?;
            this.fin_ack_deadline = Some(Delay::new(this.fin_ack_timeout));
        }
        if let Some(deadline) = this.fin_ack_deadline.as_mut()
            && deadline.poll_unpin(cx).is_ready()
        {
            tracing::debug!("no FIN_ACK in time; considering the write half closed");
            this.shared.borrow_mut().core.give_up_fin_ack();
        }
        let mut shared = this.shared.borrow_mut();
        if shared.core.write_closed() {
            return Poll::Ready(Ok(()));
        }
        shared.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Detach the callbacks first: the channel outlives this struct in JS, and a
        // callback firing into a dropped closure is what makes webrtc-websys log
        // "closure invoked recursively or after being dropped".
        self.channel.set_onmessage(None);
        self.channel.set_onopen(None);
        self.channel.set_onclose(None);
        self.channel.set_onerror(None);
        self.channel.set_onbufferedamountlow(None);
        if !self.close_on_drop {
            return;
        }
        let graceful = self.shared.borrow().core.fully_closed();
        if !graceful && self.channel.ready_state() == RtcDataChannelState::Open {
            let mut frame = Vec::with_capacity(4);
            encode_frame(Some(Flag::Reset), &[], &mut frame);
            let _ = self.channel.send_with_u8_array(&frame);
        }
        // close() still delivers what is queued before closing.
        self.channel.close();
    }
}
