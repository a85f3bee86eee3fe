//! The `Transport` for `<relay>/p2p-circuit/webrtc/p2p/<peer>` addresses.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::{
    FutureExt, SinkExt, StreamExt,
    channel::{mpsc, oneshot},
    future::BoxFuture,
};
use libp2p::{
    Multiaddr, PeerId,
    core::{
        Endpoint,
        transport::{DialOpts, ListenerId, TransportError, TransportEvent},
    },
    identity::Keypair,
};
use send_wrapper::SendWrapper;

use super::{Config, Connection, Error, direct, driver, peer_connections_created};
use crate::{
    Behaviour, addr,
    behaviour::{InboundSignaling, SignalingRequest, channels},
    handshake::Role,
};

/// Browser WebRTC transport: browser-to-browser over `/p2p-circuit/webrtc` (used together
/// with the [`Behaviour`] returned by [`Transport::new`], which owns the relayed
/// connections it signals over), and browser-to-server over `/webrtc-direct`.
pub struct Transport {
    config: Arc<Config>,
    keypair: Keypair,
    requests: mpsc::Sender<SignalingRequest>,
    inbound: mpsc::Receiver<InboundSignaling>,
    listeners: Vec<ListenerId>,
    events: VecDeque<TransportEvent<<Self as libp2p::core::Transport>::ListenerUpgrade, Error>>,
}

impl Transport {
    pub fn new(config: Config, keypair: Keypair) -> (Self, Behaviour) {
        let ((requests, inbound), behaviour) = channels();
        let transport = Self {
            config: Arc::new(config),
            keypair,
            requests,
            inbound,
            listeners: Vec::new(),
            events: VecDeque::new(),
        };
        (transport, behaviour)
    }

    /// Whether a connection may still be created (one another peer asked for may not
    /// take the reserve kept for our own dials).
    fn check_budget(&self, inbound: bool) -> Result<(), Error> {
        let used = peer_connections_created();
        let budget = if inbound {
            self.config.peer_connection_budget.saturating_sub(super::INBOUND_RESERVE)
        } else {
            self.config.peer_connection_budget
        };
        if used >= budget {
            return Err(Error::BudgetExhausted(used));
        }
        Ok(())
    }
}

type Upgrade = BoxFuture<'static, Result<(PeerId, Connection), Error>>;

/// Makes a `!Send` browser future acceptable to the swarm (sound: one thread).
fn send_future<F>(future: F) -> Upgrade
where
    F: std::future::Future<Output = Result<(PeerId, Connection), Error>> + 'static,
{
    SendWrapper::new(future).boxed()
}

impl libp2p::core::Transport for Transport {
    type Output = (PeerId, Connection);
    type Error = Error;
    type ListenerUpgrade = Upgrade;
    type Dial = Upgrade;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Error>> {
        if !addr::is_listen_addr(&addr) {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        self.listeners.push(id);
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let before = self.listeners.len();
        self.listeners.retain(|l| *l != id);
        if self.listeners.len() == before {
            return false;
        }
        self.events.push_back(TransportEvent::ListenerClosed { listener_id: id, reason: Ok(()) });
        true
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Self::Dial, TransportError<Error>> {
        if opts.role == Endpoint::Listener {
            // Hole-punch style "dial as listener" has no meaning here.
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        if !addr::is_relayed(&addr)
            && let Some((socket, fingerprint)) = libp2p_webrtc_utils::parse_webrtc_dial_addr(&addr)
        {
            self.check_budget(false).map_err(TransportError::Other)?;
            return Ok(send_future(direct::dial(socket, fingerprint, self.keypair.clone(), self.config.clone())));
        }
        let Some(target) = addr::parse_dial_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        self.check_budget(false).map_err(TransportError::Other)?;
        let mut requests = self.requests.clone();
        let config = self.config.clone();
        Ok(send_future(async move {
            let (reply, stream) = oneshot::channel();
            let peer = target.peer;
            requests
                .send(SignalingRequest { peer, relayed: target.relayed, reply })
                .await
                .map_err(|_| Error::Signaling("behaviour is gone".into()))?;
            let stream =
                stream.await.map_err(|_| Error::Signaling("request dropped".into()))?.map_err(Error::Signaling)?;
            let connection = driver::run(Role::Dialer, peer, stream, config).await?;
            Ok((peer, connection))
        }))
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, Error>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        while let Poll::Ready(Some(inbound)) = self.inbound.poll_next_unpin(cx) {
            let Some(&listener_id) = self.listeners.first() else {
                tracing::debug!(peer = %inbound.peer, "not listening on /webrtc; dropping signalling stream");
                continue;
            };
            if let Err(error) = self.check_budget(true) {
                tracing::warn!(peer = %inbound.peer, %error, "refusing inbound WebRTC connection");
                continue;
            }
            let peer = inbound.peer;
            let config = self.config.clone();
            let send_back_addr = addr::webrtc_from_relayed(&inbound.relayed);
            let upgrade = send_future(async move {
                let connection = driver::run(Role::Listener, peer, inbound.stream, config).await?;
                Ok((peer, connection))
            });
            return Poll::Ready(TransportEvent::Incoming {
                listener_id,
                upgrade,
                local_addr: Multiaddr::empty().with(libp2p::multiaddr::Protocol::WebRTC),
                send_back_addr,
            });
        }
        Poll::Pending
    }
}
