//! The browser-to-browser handshake as a sans-IO state machine.
//!
//! The dialer (outbound side of the relayed connection) creates the offer; the listener
//! answers; both trickle ICE candidates until the `RTCPeerConnection` reports `connected`.
//! The driver (`driver.rs` in the browser, the tests here) feeds what happened in — a local
//! description was created, a message arrived, the connection state changed, the deadline
//! passed — and carries out the [`Action`]s that come back. The state machine decides
//! what is allowed when, so a peer sending messages out of order, an answer with no
//! fingerprint or a flood of candidates ends the attempt with a precise error.

use std::collections::VecDeque;

use std::fmt;

use thiserror::Error;

use crate::signaling::{self, DecodeError, Fingerprint, IceCandidate, SdpError, SignalingMessage};

/// Most remote candidates buffered before the remote description is applied. Browsers
/// gather a handful per interface; a peer sending hundreds is misbehaving.
pub const MAX_QUEUED_CANDIDATES: usize = 64;
/// Most remote candidates accepted over a whole handshake.
pub const MAX_CANDIDATES: usize = 256;

/// Which side of the relayed connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opened the signalling stream; creates the offer.
    Dialer,
    /// Accepted the signalling stream; creates the answer.
    Listener,
}

/// The kind of remote description to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    Offer,
    Answer,
}

/// `RTCPeerConnection.connectionState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerConnectionState {
    New,
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

/// Where the handshake is; named in errors so a failure says what was awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Start,
    CreatingOffer,
    AwaitingAnswer,
    AwaitingOffer,
    ApplyingRemoteDescription,
    CreatingAnswer,
    Connecting,
    Connected,
    Failed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Start => "start",
            Phase::CreatingOffer => "creating the offer",
            Phase::AwaitingAnswer => "waiting for the answer",
            Phase::AwaitingOffer => "waiting for the offer",
            Phase::ApplyingRemoteDescription => "applying the remote description",
            Phase::CreatingAnswer => "creating the answer",
            Phase::Connecting => "waiting for ICE/DTLS to connect",
            Phase::Connected => "connected",
            Phase::Failed => "failed",
        })
    }
}

/// What the driver must do next, from [`Handshake::poll_output`] after each input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Create the local description (offer or answer by role), apply it with
    /// `setLocalDescription`, then report its SDP with [`Handshake::on_local_description`].
    CreateLocalDescription,
    /// Apply this remote description, then call [`Handshake::on_remote_description_set`].
    SetRemoteDescription { kind: SdpKind, sdp: String },
    /// `addIceCandidate` (`None`: end of candidates).
    AddRemoteCandidate(Option<IceCandidate>),
    /// Write this message to the signalling stream.
    Send(SignalingMessage),
    /// The direct connection is up and its DTLS certificate matched: close the signalling
    /// stream and hand the connection over.
    Connected,
}

/// Why a handshake attempt ended without a connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("bad signalling message: {0}")]
    Decode(#[from] DecodeError),
    #[error("remote SDP refused: {0}")]
    Sdp(#[from] SdpError),
    #[error("unexpected {message} while {phase}")]
    Unexpected { message: &'static str, phase: Phase },
    #[error("signalling stream closed while {0}")]
    SignalingClosed(Phase),
    #[error("remote sent more than {0} ICE candidates")]
    TooManyCandidates(usize),
    #[error("peer connection became {0:?} while {1}")]
    ConnectionFailed(PeerConnectionState, Phase),
    #[error("remote DTLS certificate does not match the fingerprint it signalled")]
    FingerprintMismatch,
    #[error("timed out while {0}")]
    Timeout(Phase),
    #[error("browser WebRTC error while {phase}: {message}")]
    Browser { message: String, phase: Phase },
    #[error("signalling stream I/O error while {phase}: {message}")]
    Io { message: String, phase: Phase },
}

/// One handshake attempt. See the module docs.
#[derive(Debug)]
pub struct Handshake {
    role: Role,
    phase: Phase,
    remote_fingerprint: Option<Fingerprint>,
    remote_description_set: bool,
    signaling_open: bool,
    queued_candidates: Vec<Option<IceCandidate>>,
    candidates_received: usize,
    outputs: VecDeque<Output>,
}

impl Handshake {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            phase: Phase::Start,
            remote_fingerprint: None,
            remote_description_set: false,
            signaling_open: true,
            queued_candidates: Vec::new(),
            candidates_received: 0,
            outputs: VecDeque::new(),
        }
    }

    /// The next thing to do; `None` until the next input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The handshake keeps no timer of its own: the driver's deadline ends it
    /// ([`Handshake::on_timeout`]).
    pub fn poll_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The DTLS fingerprint the remote signalled, once its description was accepted.
    pub fn remote_fingerprint(&self) -> Option<Fingerprint> {
        self.remote_fingerprint
    }

    fn fail(&mut self, error: HandshakeError) -> Result<(), HandshakeError> {
        self.phase = Phase::Failed;
        Err(error)
    }

    fn check_live(&self) -> Result<(), HandshakeError> {
        match self.phase {
            Phase::Failed => Err(HandshakeError::Unexpected { message: "event after failure", phase: Phase::Failed }),
            _ => Ok(()),
        }
    }

    /// Begins the attempt.
    pub fn start(&mut self) -> Result<(), HandshakeError> {
        if self.phase != Phase::Start {
            return self.fail(HandshakeError::Unexpected { message: "second start", phase: self.phase });
        }
        match self.role {
            Role::Dialer => {
                self.phase = Phase::CreatingOffer;
                {
                    self.outputs.push_back(Output::CreateLocalDescription);
                    Ok(())
                }
            }
            Role::Listener => {
                self.phase = Phase::AwaitingOffer;
                Ok(())
            }
        }
    }

    /// The local description was created and applied; `sdp` is what to send.
    pub fn on_local_description(&mut self, sdp: String) -> Result<(), HandshakeError> {
        self.check_live()?;
        match (self.role, self.phase) {
            (Role::Dialer, Phase::CreatingOffer) => {
                self.phase = Phase::AwaitingAnswer;
                {
                    self.outputs.push_back(Output::Send(SignalingMessage::Offer(sdp)));
                    Ok(())
                }
            }
            (Role::Listener, Phase::CreatingAnswer) => {
                self.phase = Phase::Connecting;
                {
                    self.outputs.push_back(Output::Send(SignalingMessage::Answer(sdp)));
                    Ok(())
                }
            }
            (_, phase) => self.fail(HandshakeError::Unexpected { message: "local description", phase }),
        }
    }

    /// The browser gathered a local candidate (`None`: gathering finished).
    pub fn on_local_candidate(&mut self, candidate: Option<IceCandidate>) -> Result<(), HandshakeError> {
        self.check_live()?;
        if !self.signaling_open || self.phase == Phase::Connected {
            return Ok(());
        }
        {
            self.outputs.push_back(Output::Send(SignalingMessage::Candidate(candidate)));
            Ok(())
        }
    }

    /// A message arrived on the signalling stream.
    pub fn on_message(&mut self, message: SignalingMessage) -> Result<(), HandshakeError> {
        self.check_live()?;
        match (message, self.role, self.phase) {
            (SignalingMessage::Offer(sdp), Role::Listener, Phase::AwaitingOffer) => {
                self.accept_remote(SdpKind::Offer, sdp)
            }
            (SignalingMessage::Answer(sdp), Role::Dialer, Phase::AwaitingAnswer) => {
                self.accept_remote(SdpKind::Answer, sdp)
            }
            (SignalingMessage::Candidate(candidate), _, phase) => {
                if phase == Phase::Connected {
                    return Ok(());
                }
                self.candidates_received += 1;
                if self.candidates_received > MAX_CANDIDATES {
                    return self.fail(HandshakeError::TooManyCandidates(MAX_CANDIDATES));
                }
                if self.remote_description_set {
                    return {
                        self.outputs.push_back(Output::AddRemoteCandidate(candidate));
                        Ok(())
                    };
                }
                if self.queued_candidates.len() == MAX_QUEUED_CANDIDATES {
                    return self.fail(HandshakeError::TooManyCandidates(MAX_QUEUED_CANDIDATES));
                }
                self.queued_candidates.push(candidate);
                Ok(())
            }
            (SignalingMessage::Offer(_), _, phase) => {
                self.fail(HandshakeError::Unexpected { message: "SDP offer", phase })
            }
            (SignalingMessage::Answer(_), _, phase) => {
                self.fail(HandshakeError::Unexpected { message: "SDP answer", phase })
            }
        }
    }

    fn accept_remote(&mut self, kind: SdpKind, sdp: String) -> Result<(), HandshakeError> {
        match signaling::validate_sdp(&sdp) {
            Ok(fingerprint) => {
                self.remote_fingerprint = Some(fingerprint);
                self.phase = Phase::ApplyingRemoteDescription;
                {
                    self.outputs.push_back(Output::SetRemoteDescription { kind, sdp });
                    Ok(())
                }
            }
            Err(e) => self.fail(e.into()),
        }
    }

    /// The remote description was applied.
    pub fn on_remote_description_set(&mut self) -> Result<(), HandshakeError> {
        self.check_live()?;
        if self.phase != Phase::ApplyingRemoteDescription {
            return self.fail(HandshakeError::Unexpected { message: "remote description applied", phase: self.phase });
        }
        self.remote_description_set = true;
        match self.role {
            Role::Dialer => self.phase = Phase::Connecting,
            Role::Listener => {
                self.phase = Phase::CreatingAnswer;
                self.outputs.push_back(Output::CreateLocalDescription);
            }
        }
        self.outputs.extend(self.queued_candidates.drain(..).map(Output::AddRemoteCandidate));
        Ok(())
    }

    /// `connectionState` changed. For `Connected`, `remote_certificate` is the SHA-256 of
    /// the certificate the remote presented in DTLS, if the browser exposes it.
    pub fn on_connection_state(
        &mut self,
        state: PeerConnectionState,
        remote_certificate: Option<Fingerprint>,
    ) -> Result<(), HandshakeError> {
        self.check_live()?;
        match state {
            PeerConnectionState::Connected => {
                if self.phase != Phase::Connecting {
                    return self.fail(HandshakeError::Unexpected { message: "connected state", phase: self.phase });
                }
                if let (Some(seen), Some(expected)) = (remote_certificate, self.remote_fingerprint)
                    && seen != expected
                {
                    return self.fail(HandshakeError::FingerprintMismatch);
                }
                self.phase = Phase::Connected;
                {
                    self.outputs.push_back(Output::Connected);
                    Ok(())
                }
            }
            PeerConnectionState::Failed | PeerConnectionState::Closed => {
                let phase = self.phase;
                self.fail(HandshakeError::ConnectionFailed(state, phase))
            }
            PeerConnectionState::New | PeerConnectionState::Connecting | PeerConnectionState::Disconnected => Ok(()),
        }
    }

    /// The remote closed the signalling stream. Harmless once both descriptions are applied
    /// (the remote may have connected first and moved on); fatal before.
    pub fn on_signaling_closed(&mut self) -> Result<(), HandshakeError> {
        self.check_live()?;
        self.signaling_open = false;
        match self.phase {
            Phase::Connecting | Phase::Connected => Ok(()),
            phase => self.fail(HandshakeError::SignalingClosed(phase)),
        }
    }

    /// Bytes on the signalling stream could not be decoded.
    pub fn on_decode_error(&mut self, error: DecodeError) -> HandshakeError {
        self.phase = Phase::Failed;
        error.into()
    }

    /// The attempt's deadline passed.
    pub fn on_timeout(&mut self) -> HandshakeError {
        let phase = self.phase;
        self.phase = Phase::Failed;
        HandshakeError::Timeout(phase)
    }

    /// A browser API call failed.
    pub fn on_browser_error(&mut self, message: String) -> HandshakeError {
        let phase = self.phase;
        self.phase = Phase::Failed;
        HandshakeError::Browser { message, phase }
    }

    /// Reading or writing the signalling stream failed.
    pub fn on_io_error(&mut self, message: String) -> HandshakeError {
        let phase = self.phase;
        self.phase = Phase::Failed;
        HandshakeError::Io { message, phase }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::tests::CHROME_OFFER;
    use proptest::prelude::*;

    /// An input's result with what it asked for.
    fn run(
        hs: &mut Handshake,
        input: impl FnOnce(&mut Handshake) -> Result<(), HandshakeError>,
    ) -> Result<Vec<Output>, HandshakeError> {
        input(hs).map(|()| std::iter::from_fn(|| hs.poll_output()).collect())
    }

    fn answer_sdp() -> String {
        CHROME_OFFER.replace("actpass", "active")
    }

    fn candidate(n: u16) -> IceCandidate {
        IceCandidate {
            candidate: format!("candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host", 50000 + n),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }
    }

    /// Runs a dialer and a listener against each other, delivering every signalling
    /// message, and returns both once each reports `Connected`.
    #[test]
    fn dialer_and_listener_reach_connected() {
        let mut dialer = Handshake::new(Role::Dialer);
        let mut listener = Handshake::new(Role::Listener);
        assert!(run(&mut listener, |h| h.start()).unwrap().is_empty());
        assert_eq!(run(&mut dialer, |h| h.start()).unwrap(), vec![Output::CreateLocalDescription]);

        let offer = run(&mut dialer, |h| h.on_local_description(CHROME_OFFER.into())).unwrap();
        let [Output::Send(offer)] = offer.as_slice() else { panic!("expected to send the offer: {offer:?}") };
        // A candidate from the dialer overtakes nothing: it is queued at the listener
        // until the offer is applied.
        let sent = run(&mut dialer, |h| h.on_local_candidate(Some(candidate(1)))).unwrap();
        let [Output::Send(early)] = sent.as_slice() else { panic!() };

        let apply = run(&mut listener, |h| h.on_message(offer.clone())).unwrap();
        assert!(matches!(apply.as_slice(), [Output::SetRemoteDescription { kind: SdpKind::Offer, .. }]));
        assert!(run(&mut listener, |h| h.on_message(early.clone())).unwrap().is_empty(), "queued, not applied yet");
        let after = run(&mut listener, |h| h.on_remote_description_set()).unwrap();
        assert_eq!(after, vec![Output::CreateLocalDescription, Output::AddRemoteCandidate(Some(candidate(1)))]);
        let answer = run(&mut listener, |h| h.on_local_description(answer_sdp())).unwrap();
        let [Output::Send(answer)] = answer.as_slice() else { panic!() };

        let apply = run(&mut dialer, |h| h.on_message(answer.clone())).unwrap();
        assert!(matches!(apply.as_slice(), [Output::SetRemoteDescription { kind: SdpKind::Answer, .. }]));
        assert!(run(&mut dialer, |h| h.on_remote_description_set()).unwrap().is_empty());
        assert_eq!(
            run(&mut dialer, |h| h.on_message(SignalingMessage::Candidate(Some(candidate(2))))).unwrap(),
            vec![Output::AddRemoteCandidate(Some(candidate(2)))]
        );
        let fingerprint = dialer.remote_fingerprint();
        assert_eq!(
            run(&mut dialer, |h| h.on_connection_state(PeerConnectionState::Connected, fingerprint)).unwrap(),
            vec![Output::Connected]
        );
        assert_eq!(
            run(&mut listener, |h| h.on_connection_state(PeerConnectionState::Connected, None)).unwrap(),
            vec![Output::Connected]
        );
        // Late candidates after success are ignored, not errors.
        assert!(run(&mut dialer, |h| h.on_message(SignalingMessage::Candidate(None))).unwrap().is_empty());
        assert!(run(&mut dialer, |h| h.on_local_candidate(None)).unwrap().is_empty());
    }

    fn dialer_awaiting_answer() -> Handshake {
        let mut dialer = Handshake::new(Role::Dialer);
        run(&mut dialer, |h| h.start()).unwrap();
        run(&mut dialer, |h| h.on_local_description(CHROME_OFFER.into())).unwrap();
        dialer
    }

    #[test]
    fn wrong_certificate_is_refused() {
        let mut dialer = dialer_awaiting_answer();
        run(&mut dialer, |h| h.on_message(SignalingMessage::Answer(answer_sdp()))).unwrap();
        run(&mut dialer, |h| h.on_remote_description_set()).unwrap();
        let err =
            run(&mut dialer, |h| h.on_connection_state(PeerConnectionState::Connected, Some([7; 32]))).unwrap_err();
        assert_eq!(err, HandshakeError::FingerprintMismatch);
        assert_eq!(dialer.phase(), Phase::Failed);
    }

    #[test]
    fn out_of_order_messages_fail_with_phase() {
        let mut listener = Handshake::new(Role::Listener);
        run(&mut listener, |h| h.start()).unwrap();
        assert_eq!(
            run(&mut listener, |h| h.on_message(SignalingMessage::Answer(answer_sdp()))).unwrap_err(),
            HandshakeError::Unexpected { message: "SDP answer", phase: Phase::AwaitingOffer }
        );
        let mut dialer = dialer_awaiting_answer();
        run(&mut dialer, |h| h.on_message(SignalingMessage::Answer(answer_sdp()))).unwrap();
        assert_eq!(
            run(&mut dialer, |h| h.on_message(SignalingMessage::Answer(answer_sdp()))).unwrap_err(),
            HandshakeError::Unexpected { message: "SDP answer", phase: Phase::ApplyingRemoteDescription }
        );
        // Anything after a failure is refused too.
        assert!(run(&mut dialer, |h| h.on_remote_description_set()).is_err());
    }

    #[test]
    fn answer_without_fingerprint_is_refused() {
        let mut dialer = dialer_awaiting_answer();
        let stripped: String =
            answer_sdp().lines().filter(|l| !l.starts_with("a=fingerprint")).map(|l| format!("{l}\r\n")).collect();
        assert_eq!(
            run(&mut dialer, |h| h.on_message(SignalingMessage::Answer(stripped))).unwrap_err(),
            HandshakeError::Sdp(SdpError::NoFingerprint)
        );
    }

    #[test]
    fn candidate_flood_is_refused() {
        let mut listener = Handshake::new(Role::Listener);
        run(&mut listener, |h| h.start()).unwrap();
        for n in 0..MAX_QUEUED_CANDIDATES as u16 {
            run(&mut listener, |h| h.on_message(SignalingMessage::Candidate(Some(candidate(n))))).unwrap();
        }
        assert_eq!(
            run(&mut listener, |h| h.on_message(SignalingMessage::Candidate(None))).unwrap_err(),
            HandshakeError::TooManyCandidates(MAX_QUEUED_CANDIDATES)
        );
    }

    #[test]
    fn signaling_close_is_fatal_only_before_descriptions() {
        let mut dialer = dialer_awaiting_answer();
        assert_eq!(
            run(&mut dialer, |h| h.on_signaling_closed()).unwrap_err(),
            HandshakeError::SignalingClosed(Phase::AwaitingAnswer)
        );

        let mut dialer = dialer_awaiting_answer();
        run(&mut dialer, |h| h.on_message(SignalingMessage::Answer(answer_sdp()))).unwrap();
        run(&mut dialer, |h| h.on_remote_description_set()).unwrap();
        assert!(run(&mut dialer, |h| h.on_signaling_closed()).unwrap().is_empty());
        // Our own late candidates are no longer sent anywhere.
        assert!(run(&mut dialer, |h| h.on_local_candidate(Some(candidate(3)))).unwrap().is_empty());
        assert_eq!(
            run(&mut dialer, |h| h.on_connection_state(PeerConnectionState::Connected, None)).unwrap(),
            vec![Output::Connected]
        );
    }

    #[test]
    fn failure_and_timeout_name_the_phase() {
        let mut dialer = dialer_awaiting_answer();
        assert_eq!(dialer.on_timeout(), HandshakeError::Timeout(Phase::AwaitingAnswer));
        let mut dialer = dialer_awaiting_answer();
        run(&mut dialer, |h| h.on_message(SignalingMessage::Answer(answer_sdp()))).unwrap();
        run(&mut dialer, |h| h.on_remote_description_set()).unwrap();
        assert_eq!(
            run(&mut dialer, |h| h.on_connection_state(PeerConnectionState::Failed, None)).unwrap_err(),
            HandshakeError::ConnectionFailed(PeerConnectionState::Failed, Phase::Connecting)
        );
    }

    #[derive(Debug, Clone)]
    enum Event {
        Start,
        LocalDescription,
        LocalCandidate,
        Offer(bool),
        Answer(bool),
        RemoteCandidate,
        RemoteSet,
        State(u8),
        Closed,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Start),
            Just(Event::LocalDescription),
            Just(Event::LocalCandidate),
            any::<bool>().prop_map(Event::Offer),
            any::<bool>().prop_map(Event::Answer),
            Just(Event::RemoteCandidate),
            Just(Event::RemoteSet),
            (0u8..6).prop_map(Event::State),
            Just(Event::Closed),
        ]
    }

    proptest! {
        /// Any sequence of events leaves the machine either live or failed with an error;
        /// it never panics and never reports `Connected` without an accepted remote
        /// description.
        #[test]
        fn arbitrary_event_sequences(dialer: bool, events in proptest::collection::vec(event(), 0..40)) {
            let mut hs = Handshake::new(if dialer { Role::Dialer } else { Role::Listener });
            for event in events {
                let result = match event {
                    Event::Start => run(&mut hs, |h| h.start()),
                    Event::LocalDescription => run(&mut hs, |h| h.on_local_description(CHROME_OFFER.into())),
                    Event::LocalCandidate => run(&mut hs, |h| h.on_local_candidate(Some(candidate(1)))),
                    Event::Offer(valid) => run(&mut hs, |h| h.on_message(SignalingMessage::Offer(if valid { CHROME_OFFER.into() } else { "v=0".into() }))),
                    Event::Answer(valid) => run(&mut hs, |h| h.on_message(SignalingMessage::Answer(if valid { answer_sdp() } else { "v=0".into() }))),
                    Event::RemoteCandidate => run(&mut hs, |h| h.on_message(SignalingMessage::Candidate(Some(candidate(2))))),
                    Event::RemoteSet => run(&mut hs, |h| h.on_remote_description_set()),
                    Event::State(s) => {
                        let state = [PeerConnectionState::New, PeerConnectionState::Connecting, PeerConnectionState::Connected,
                            PeerConnectionState::Disconnected, PeerConnectionState::Failed, PeerConnectionState::Closed][s as usize];
                        run(&mut hs, |h| h.on_connection_state(state, None))
                    }
                    Event::Closed => run(&mut hs, |h| h.on_signaling_closed()),
                };
                match result {
                    Ok(actions) => {
                        if actions.contains(&Output::Connected) {
                            prop_assert!(hs.remote_fingerprint().is_some());
                            prop_assert!(hs.remote_description_set);
                        }
                    }
                    Err(_) => prop_assert_eq!(hs.phase(), Phase::Failed),
                }
            }
        }
    }
}
