//! A direct browser-to-browser connection: one `RTCPeerConnection`, one data channel per
//! libp2p stream (the WebRTC stack multiplexes; no yamux, no Noise — DTLS is the
//! security, authenticated by the fingerprint signalled over the Noise-secured relay).

use std::{
    cell::RefCell,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use futures::{FutureExt, StreamExt, channel::mpsc};
use futures_timer::Delay;
use libp2p::{
    PeerId,
    core::muxing::{StreamMuxer, StreamMuxerEvent},
};
use send_wrapper::SendWrapper;
use wasm_bindgen::{JsCast, prelude::Closure};
use web_sys::{Event, RtcDataChannelEvent, RtcDataChannelInit, RtcPeerConnection, RtcPeerConnectionState};

use super::{Config, Error, Stream};

/// Label of the channel a dialer opens only so its offer has a data section.
pub(crate) const INIT_CHANNEL_LABEL: &str = "init";

/// Most inbound data channels waiting to be accepted before more are refused (each may
/// buffer up to `max_unread_per_stream` until the swarm takes it).
const MAX_PENDING_INBOUND: usize = 16;

/// A direct WebRTC connection to another browser.
pub struct Connection {
    inner: SendWrapper<Inner>,
}

struct Inner {
    pc: RtcPeerConnection,
    registry_id: u64,
    config: Arc<Config>,
    inbound: mpsc::Receiver<Stream>,
    state: Rc<RefCell<StateWatch>>,
    disconnected_since: Option<Delay>,
    closed: bool,
    _on_datachannel: Closure<dyn FnMut(RtcDataChannelEvent)>,
    _on_state: Closure<dyn FnMut(Event)>,
}

#[derive(Default)]
struct StateWatch {
    waker: Option<Waker>,
}

/// Installs `ondatachannel` on a fresh peer connection, before any channel can arrive,
/// and returns the queue the connection will accept streams from.
///
/// Each channel becomes a [`Stream`] the moment it arrives, not when the connection is
/// polled for it: the remote may open a stream and write to it before our side of the
/// handshake has finished (the answerer is connected a round trip before the offerer),
/// and a message that reaches a channel with no `onmessage` handler yet is gone.
pub(crate) struct InboundChannels {
    receiver: mpsc::Receiver<Stream>,
    closure: Closure<dyn FnMut(RtcDataChannelEvent)>,
}

impl InboundChannels {
    pub(crate) fn install(pc: &RtcPeerConnection, config: &Arc<Config>) -> Self {
        let (mut sender, receiver) = mpsc::channel(MAX_PENDING_INBOUND);
        let config = config.clone();
        let closure = Closure::<dyn FnMut(RtcDataChannelEvent)>::new(move |event: RtcDataChannelEvent| {
            let channel = event.channel();
            // The dialer's `init` channel exists for the offer only. It is neither a
            // stream nor ours to close: closing it early is what hangs js-libp2p dials.
            if channel.label() == INIT_CHANNEL_LABEL {
                return;
            }
            // Dropping a refused stream closes its channel.
            if let Err(e) = sender.try_send(Stream::new(channel, &config)) {
                tracing::warn!(
                    "refusing inbound data channel: {}",
                    if e.is_full() { "too many pending" } else { "connection gone" }
                );
            }
        });
        pc.set_ondatachannel(Some(closure.as_ref().unchecked_ref()));
        Self { receiver, closure }
    }
}

impl Connection {
    /// `server`: the remote is a signalling node reached over `/webrtc-direct`.
    pub(crate) fn new(
        peer: PeerId,
        pc: RtcPeerConnection,
        inbound: InboundChannels,
        config: Arc<Config>,
        server: bool,
    ) -> Self {
        let registry_id = super::report::register(peer, pc.clone(), server);
        let state = Rc::new(RefCell::new(StateWatch::default()));
        let on_state = Closure::<dyn FnMut(Event)>::new({
            let state = state.clone();
            move |_: Event| {
                if let Some(waker) = state.borrow_mut().waker.take() {
                    waker.wake();
                }
            }
        });
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        Self {
            inner: SendWrapper::new(Inner {
                pc,
                registry_id,
                config,
                inbound: inbound.receiver,
                state,
                disconnected_since: None,
                closed: false,
                _on_datachannel: inbound.closure,
                _on_state: on_state,
            }),
        }
    }
}

impl Inner {
    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.pc.set_ondatachannel(None);
            self.pc.set_onconnectionstatechange(None);
            self.pc.close();
            super::report::unregister(self.registry_id);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl StreamMuxer for Connection {
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        let this = &mut *self.get_mut().inner;
        match this.inbound.poll_next_unpin(cx) {
            Poll::Ready(Some(stream)) => Poll::Ready(Ok(stream)),
            Poll::Ready(None) => Poll::Ready(Err(Error::Connection("peer connection closed".into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_outbound(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        let this = &mut *self.get_mut().inner;
        if this.closed {
            return Poll::Ready(Err(Error::Connection("peer connection closed".into())));
        }
        // Label "" and in-band negotiation, as the spec requires for streams.
        let init = RtcDataChannelInit::new();
        init.set_ordered(true);
        let channel = this.pc.create_data_channel_with_data_channel_dict("", &init);
        Poll::Ready(Ok(Stream::new(channel, &this.config)))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().inner.close();
        Poll::Ready(Ok(()))
    }

    /// Watches the connection state: `failed`/`closed` end the connection at once, and a
    /// `disconnected` that lasts past the grace period does too (a peer whose tab died
    /// sends nothing; ICE consent checks notice within seconds).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, Error>> {
        let this = &mut *self.get_mut().inner;
        this.state.borrow_mut().waker = Some(cx.waker().clone());
        match this.pc.connection_state() {
            RtcPeerConnectionState::Failed => {
                return Poll::Ready(Err(Error::Connection("ICE/DTLS failed".into())));
            }
            RtcPeerConnectionState::Closed => {
                return Poll::Ready(Err(Error::Connection("closed".into())));
            }
            RtcPeerConnectionState::Disconnected => {
                let grace = this.config.disconnected_grace;
                let timer = this.disconnected_since.get_or_insert_with(|| Delay::new(grace));
                if timer.poll_unpin(cx).is_ready() {
                    return Poll::Ready(Err(Error::Connection(format!("disconnected for {grace:?}"))));
                }
            }
            _ => this.disconnected_since = None,
        }
        Poll::Pending
    }
}
