//! Runs one [`Handshake`] against a real `RTCPeerConnection` and a signalling stream.

use std::sync::Arc;

use futures::{
    AsyncRead, AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt,
    channel::mpsc,
    future::{self, Either},
};
use futures_timer::Delay;
use js_sys::{Array, Reflect};
use libp2p::{PeerId, Stream as Libp2pStream};
use wasm_bindgen::{JsCast, JsValue, prelude::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Event, RtcConfiguration, RtcIceCandidateInit, RtcIceServer, RtcPeerConnection, RtcPeerConnectionIceEvent,
    RtcPeerConnectionState, RtcSdpType, RtcSessionDescriptionInit,
};

use super::{
    Config, Error,
    connection::{Connection, INIT_CHANNEL_LABEL, InboundChannels},
    js_error, take_budget,
};
use crate::{
    handshake::{Handshake, HandshakeError, Output, PeerConnectionState, Role, SdpKind},
    signaling::{DecodeError, Decoder, Fingerprint, IceCandidate, SignalingMessage},
};

/// Something the peer connection reported during the handshake.
enum LocalEvent {
    Candidate(Option<IceCandidate>),
    State(RtcPeerConnectionState),
}

/// Something read from the signalling stream.
enum Remote {
    Message(SignalingMessage),
    Closed,
    Bad(DecodeError),
    Io(String),
}

/// Runs the handshake for `role` over `signaling` and returns the direct connection.
pub(crate) async fn run(
    role: Role,
    peer: PeerId,
    signaling: Libp2pStream,
    config: Arc<Config>,
) -> Result<Connection, Error> {
    let mut deadline = Delay::new(config.handshake_timeout);
    let (reader, writer) = signaling.split();
    let mut remote: futures::stream::LocalBoxStream<'static, Remote> = remote_messages(reader).boxed_local();
    let mut hs = Handshake::new(role);
    hs.start()?;
    if role == Role::Listener {
        // Nothing of the page's lifetime budget of peer connections is spent on a
        // stranger until it has sent a well-formed offer.
        if let Err(error) = await_offer(&mut hs, &mut remote, &mut deadline).await {
            tracing::info!(%peer, %error, "inbound WebRTC handshake refused before an offer");
            return Err(error.into());
        }
    }
    take_budget(config.peer_connection_budget, role)?;
    let pc = new_peer_connection(&config, config.relay_only)?;
    let inbound = InboundChannels::install(&pc, &config);
    let (events_tx, events) = mpsc::unbounded();
    let callbacks = Callbacks::install(&pc, events_tx);
    let init = (role == Role::Dialer).then(|| pc.create_data_channel(INIT_CHANNEL_LABEL));

    let result = drive(hs, role, &pc, remote, writer, events, deadline).await;
    match &result {
        Ok(()) => tracing::debug!(%peer, ?role, "direct connection up"),
        Err(error) => tracing::info!(%peer, ?role, %error, "WebRTC handshake failed"),
    }
    callbacks.uninstall(&pc);
    match result {
        Ok(()) => {
            if let Some(init) = init {
                init.close();
            }
            Ok(Connection::new(peer, pc, inbound, config, false))
        }
        Err(error) => {
            pc.close();
            Err(error.into())
        }
    }
}

/// Reads the signalling stream until the dialer's offer is accepted (candidates that
/// come first are queued by the handshake).
async fn await_offer(
    hs: &mut Handshake,
    remote: &mut futures::stream::LocalBoxStream<'static, Remote>,
    deadline: &mut Delay,
) -> Result<(), HandshakeError> {
    while hs.phase() == crate::handshake::Phase::AwaitingOffer {
        match future::select(remote.next(), &mut *deadline).await {
            Either::Right(_) => return Err(hs.on_timeout()),
            Either::Left((Some(Remote::Message(message)), _)) => hs.on_message(message)?,
            Either::Left((Some(Remote::Bad(error)), _)) => return Err(hs.on_decode_error(error)),
            Either::Left((Some(Remote::Io(error)), _)) => return Err(hs.on_io_error(error)),
            Either::Left((Some(Remote::Closed) | None, _)) => {
                hs.on_signaling_closed()?;
            }
        }
    }
    Ok(())
}

async fn drive<W: futures::AsyncWrite + Unpin>(
    mut hs: Handshake,
    role: Role,
    pc: &RtcPeerConnection,
    mut remote: futures::stream::LocalBoxStream<'static, Remote>,
    mut writer: W,
    mut events: mpsc::UnboundedReceiver<LocalEvent>,
    mut deadline: Delay,
) -> Result<(), HandshakeError> {
    let mut out = Vec::new();
    loop {
        // Carry out every output, including those that carrying out others produces,
        // before waiting for anything.
        while let Some(output) = hs.poll_output() {
            match output {
                Output::CreateLocalDescription => {
                    let sdp = create_local_description(pc, role).await.map_err(|e| hs.on_browser_error(e))?;
                    hs.on_local_description(sdp)?;
                }
                Output::SetRemoteDescription { kind, sdp } => {
                    set_remote_description(pc, kind, &sdp).await.map_err(|e| hs.on_browser_error(e))?;
                    hs.on_remote_description_set()?;
                }
                Output::AddRemoteCandidate(candidate) => {
                    // A single bad candidate is not fatal: others may still connect.
                    if let Err(e) = add_candidate(pc, candidate.as_ref()).await {
                        tracing::debug!(error = %e, "remote ICE candidate refused");
                    }
                }
                Output::Send(message) => {
                    out.clear();
                    message.encode(&mut out);
                    tracing::trace!(bytes = out.len(), "sending signalling message");
                    // Flush each message: yamux and multistream-select hold bytes until then.
                    let written = match writer.write_all(&out).await {
                        Ok(()) => writer.flush().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = written {
                        // The remote may have connected and closed the stream already.
                        tracing::debug!(error = %e, "signalling write failed");
                        hs.on_signaling_closed()?;
                    }
                }
                Output::Connected => {
                    // Close our side so the remote sees a clean end; don't wait on it.
                    let _ = writer.close().now_or_never();
                    return Ok(());
                }
            }
        }

        let next = future::select(future::select(remote.next(), events.next()), &mut deadline).await;
        match next {
            Either::Right(_) => return Err(hs.on_timeout()),
            Either::Left((Either::Left((received, _)), _)) => match received {
                Some(Remote::Message(message)) => hs.on_message(message)?,
                Some(Remote::Bad(error)) => return Err(hs.on_decode_error(error)),
                // The remote may have connected and closed its relayed connection
                // already; whether that matters depends on the phase.
                Some(Remote::Io(error)) => {
                    tracing::debug!(%error, "signalling read failed");
                    remote = futures::stream::pending().boxed_local();
                    hs.on_signaling_closed()?
                }
                Some(Remote::Closed) | None => {
                    // Stop polling a finished stream; wait on the other sources only.
                    remote = futures::stream::pending().boxed_local();
                    hs.on_signaling_closed()?
                }
            },
            Either::Left((Either::Right((event, _)), _)) => match event {
                Some(LocalEvent::Candidate(candidate)) => hs.on_local_candidate(candidate)?,
                Some(LocalEvent::State(state)) => {
                    let state = map_state(state);
                    let certificate = if state == PeerConnectionState::Connected {
                        remote_certificate_fingerprint(pc).await
                    } else {
                        None
                    };
                    hs.on_connection_state(state, certificate)?
                }
                None => {
                    return Err(hs.on_browser_error("peer connection event source ended".into()));
                }
            },
        }
    }
}

/// The signalling stream as a stream of decoded messages.
fn remote_messages<R: AsyncRead + Unpin + 'static>(reader: R) -> impl futures::Stream<Item = Remote> {
    futures::stream::unfold(Some((reader, Decoder::new(), vec![0u8; 4096])), |state| async move {
        let (mut reader, mut decoder, mut buf) = state?;
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    return Some((Remote::Message(message), Some((reader, decoder, buf))));
                }
                Ok(None) => {}
                Err(error) => return Some((Remote::Bad(error), None)),
            }
            match reader.read(&mut buf).await {
                Ok(0) => return Some((Remote::Closed, None)),
                Ok(n) => {
                    tracing::trace!(bytes = n, "signalling bytes received");
                    decoder.extend(&buf[..n])
                }
                Err(e) => return Some((Remote::Io(e.to_string()), None)),
            }
        }
    })
}

pub(crate) fn new_peer_connection(config: &Config, relay_only: bool) -> Result<RtcPeerConnection, Error> {
    let rtc_config = RtcConfiguration::new();
    if relay_only {
        rtc_config.set_ice_transport_policy(web_sys::RtcIceTransportPolicy::Relay);
    }
    let servers = Array::new();
    for server in &config.ice_servers {
        let ice = RtcIceServer::new();
        let urls = Array::new();
        for url in &server.urls {
            urls.push(&JsValue::from_str(url));
        }
        ice.set_urls(&urls);
        if let Some(username) = &server.username {
            ice.set_username(username);
        }
        if let Some(credential) = &server.credential {
            ice.set_credential(credential);
        }
        servers.push(&ice);
    }
    rtc_config.set_ice_servers(&servers);
    RtcPeerConnection::new_with_configuration(&rtc_config).map_err(|e| Error::Js(js_error(e)))
}

/// The peer connection callbacks that feed the handshake.
struct Callbacks {
    _on_candidate: Closure<dyn FnMut(RtcPeerConnectionIceEvent)>,
    _on_state: Closure<dyn FnMut(Event)>,
}

impl Callbacks {
    fn install(pc: &RtcPeerConnection, events: mpsc::UnboundedSender<LocalEvent>) -> Self {
        let on_candidate = Closure::<dyn FnMut(RtcPeerConnectionIceEvent)>::new({
            let events = events.clone();
            move |event: RtcPeerConnectionIceEvent| {
                let candidate = event.candidate().and_then(|c| {
                    let line = c.candidate();
                    (!line.is_empty()).then(|| IceCandidate {
                        candidate: line,
                        sdp_mid: c.sdp_mid(),
                        sdp_m_line_index: c.sdp_m_line_index(),
                        username_fragment: Reflect::get(&c, &JsValue::from_str("usernameFragment"))
                            .ok()
                            .and_then(|v| v.as_string()),
                    })
                });
                let _ = events.unbounded_send(LocalEvent::Candidate(candidate));
            }
        });
        let on_state = Closure::<dyn FnMut(Event)>::new({
            let pc = pc.clone();
            move |_: Event| {
                let _ = events.unbounded_send(LocalEvent::State(pc.connection_state()));
            }
        });
        pc.set_onicecandidate(Some(on_candidate.as_ref().unchecked_ref()));
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        Self { _on_candidate: on_candidate, _on_state: on_state }
    }

    fn uninstall(self, pc: &RtcPeerConnection) {
        pc.set_onicecandidate(None);
        pc.set_onconnectionstatechange(None);
    }
}

fn map_state(state: RtcPeerConnectionState) -> PeerConnectionState {
    match state {
        RtcPeerConnectionState::New => PeerConnectionState::New,
        RtcPeerConnectionState::Connecting => PeerConnectionState::Connecting,
        RtcPeerConnectionState::Connected => PeerConnectionState::Connected,
        RtcPeerConnectionState::Disconnected => PeerConnectionState::Disconnected,
        RtcPeerConnectionState::Failed => PeerConnectionState::Failed,
        _ => PeerConnectionState::Closed,
    }
}

async fn create_local_description(pc: &RtcPeerConnection, role: Role) -> Result<String, String> {
    let promise = match role {
        Role::Dialer => pc.create_offer(),
        Role::Listener => pc.create_answer(),
    };
    let description = JsFuture::from(promise).await.map_err(js_error)?;
    let sdp = Reflect::get(&description, &JsValue::from_str("sdp"))
        .ok()
        .and_then(|v| v.as_string())
        .ok_or("local description has no sdp")?;
    let init = RtcSessionDescriptionInit::new(match role {
        Role::Dialer => RtcSdpType::Offer,
        Role::Listener => RtcSdpType::Answer,
    });
    init.set_sdp(&sdp);
    JsFuture::from(pc.set_local_description(&init)).await.map_err(js_error)?;
    Ok(sdp)
}

async fn set_remote_description(pc: &RtcPeerConnection, kind: SdpKind, sdp: &str) -> Result<(), String> {
    let init = RtcSessionDescriptionInit::new(match kind {
        SdpKind::Offer => RtcSdpType::Offer,
        SdpKind::Answer => RtcSdpType::Answer,
    });
    init.set_sdp(sdp);
    JsFuture::from(pc.set_remote_description(&init)).await.map_err(js_error)?;
    Ok(())
}

async fn add_candidate(pc: &RtcPeerConnection, candidate: Option<&IceCandidate>) -> Result<(), String> {
    let promise = match candidate {
        Some(candidate) => {
            let init = RtcIceCandidateInit::new(&candidate.candidate);
            init.set_sdp_mid(candidate.sdp_mid.as_deref());
            init.set_sdp_m_line_index(candidate.sdp_m_line_index);
            if let Some(ufrag) = &candidate.username_fragment {
                let _ = Reflect::set(&init, &JsValue::from_str("usernameFragment"), &JsValue::from_str(ufrag));
            }
            pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init))
        }
        // End of candidates.
        None => pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(None),
    };
    JsFuture::from(promise).await.map_err(js_error)?;
    Ok(())
}

/// SHA-256 of the certificate the remote presented in DTLS
/// (`pc.sctp.transport.getRemoteCertificates()[0]`), where the browser exposes it.
async fn remote_certificate_fingerprint(pc: &RtcPeerConnection) -> Option<Fingerprint> {
    let get = |target: &JsValue, key: &str| {
        Reflect::get(target, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
    };
    let dtls = get(&get(pc, "sctp")?, "transport")?;
    let method: js_sys::Function = get(&dtls, "getRemoteCertificates")?.dyn_into().ok()?;
    let certificates: Array = method.call0(&dtls).ok()?.dyn_into().ok()?;
    let der = js_sys::Uint8Array::new(&certificates.get(0)).to_vec();
    if der.is_empty() {
        return None;
    }
    sha256(&der).await
}

/// SHA-256 through WebCrypto, to keep a hash implementation out of the bundle.
async fn sha256(data: &[u8]) -> Option<Fingerprint> {
    let crypto = Reflect::get(&js_sys::global(), &JsValue::from_str("crypto")).ok()?;
    let subtle = Reflect::get(&crypto, &JsValue::from_str("subtle")).ok()?;
    let digest: js_sys::Function = Reflect::get(&subtle, &JsValue::from_str("digest")).ok()?.dyn_into().ok()?;
    let input = js_sys::Uint8Array::from(data);
    let promise: js_sys::Promise =
        digest.call2(&subtle, &JsValue::from_str("SHA-256"), &input).ok()?.dyn_into().ok()?;
    let hash = JsFuture::from(promise).await.ok()?;
    js_sys::Uint8Array::new(&hash).to_vec().try_into().ok()
}
