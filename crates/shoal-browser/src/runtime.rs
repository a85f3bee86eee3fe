//! The page's runtime: one task that owns everything with state — the libp2p swarm, the
//! link to the signalling node, each membership with its [`Pieces`], the
//! [`Gossiping`], every link's writer, bans — and one loop that waits for the next of:
//!
//! - a swarm event (connections, membership answers, inbound streams, pings);
//! - an input from a link (a decoded frame, a stream that ended);
//! - a command from the JavaScript API;
//! - an HTTP fetch that finished;
//! - the timer, set to the earliest moment any state machine asked for.
//!
//! After each, every state machine's outputs are drained and carried out. The API
//! reads a snapshot the loop refreshes (at most every 100 ms, and after commands).
//!
//! A segment from a peer: data channel → link reader task (decodes in place) → input
//! queue → this loop → `Pieces` → reply channel → `fetchSegment`'s promise. Three
//! boundaries, two copies (into the reader's buffer; into the `Uint8Array` returned).

use std::{
    cell::{Cell, RefCell},
    collections::HashSet,
    rc::Rc,
    time::Duration,
};

use bytes::Bytes;
use futures::{
    FutureExt, StreamExt,
    channel::{mpsc, oneshot},
    future::{AbortHandle, Fuse, LocalBoxFuture},
    select,
    stream::FuturesUnordered,
};
use futures_timer::Delay;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    core::{ConnectedPoint, transport::ListenerId},
    identity::Keypair,
    multiaddr::Protocol,
    ping, relay,
    request_response::{self, OutboundRequestId},
    swarm::{
        ConnectionId, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use shoal_core::{
    Instant, Message,
    codec::Frame,
    gossip::GossipMessage,
    vecmap::{VecMap, VecSet},
};
use shoal_proto::{MembershipRequest, MembershipResponse};
use shoal_webrtc::outcome::{DialFailure, PathKind};

use crate::{
    bulk,
    config::Config,
    error::ShoalError,
    events::{ConnectionInfo, Event, Snapshot},
    gossiping::{GossipEffect, Gossiping, Validator},
    http,
    links::{self, INPUT_QUEUE, LinkId, LinkInput, Writer},
    load::{self, Starvation},
    node_choice::NodeChoice,
    outcomes::OutcomeLog,
    pieces::{self, Effect, Pieces, PiecesOptions, SegmentLocation},
    streams::{self, OpenError},
    swarm::{self, Behaviour, BehaviourEvent},
};

/// The page's monotonic clock, the one every state machine runs on.
pub(crate) fn now() -> Instant {
    Instant::from_millis_f64(now_ms())
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or_else(js_sys::Date::now, |p| p.now())
}

/// Wall-clock milliseconds at the page's time origin (`performance.now()` = 0).
fn time_origin_ms() -> u64 {
    let origin = web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.time_origin());
    if origin > 0.0 { origin as u64 } else { (js_sys::Date::now() - now_ms()).max(0.0) as u64 }
}

/// Whether the page is in a background tab (`document.hidden`; false where there is no
/// document, as in a worker).
fn page_hidden() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &"document".into())
        .ok()
        .filter(|d| d.is_object())
        .and_then(|d| js_sys::Reflect::get(&d, &"hidden".into()).ok())
        .and_then(|h| h.as_bool())
        .unwrap_or(false)
}

fn random_seed() -> u64 {
    (js_sys::Math::random() * u64::MAX as f64) as u64
}

pub(crate) type EventSink = Rc<dyn Fn(Event)>;
type Reply<T> = oneshot::Sender<Result<T, ShoalError>>;

/// What the API asks of the runtime.
pub(crate) enum Command {
    /// Leave every swarm and stop; the sender learns when the swarm is gone.
    Stop(oneshot::Sender<()>),
    /// Diagnostics: open a relayed connection to a peer through the node.
    DialRelayed(PeerId, Reply<()>),
    /// Connect directly to the browser peer at a `/p2p-circuit/webrtc/p2p/<peer>` address.
    Connect(Multiaddr, PeerId, Reply<()>),
    /// Join a swarm; with options, it exchanges pieces.
    Join(String, Option<Box<PiecesOptions>>),
    Leave(String),
    SetPlaylist {
        swarm: String,
        segments: Vec<(u64, SegmentLocation)>,
    },
    FetchSegment {
        swarm: String,
        id: u64,
        location: SegmentLocation,
        deadline: Instant,
        reply: pieces::Reply,
    },
    CancelSegment {
        swarm: String,
        id: u64,
    },
    OfferSegment {
        swarm: String,
        id: u64,
        data: Bytes,
        reply: Reply<()>,
    },
    SetSwitches {
        upload: Option<bool>,
        p2p_download: Option<bool>,
    },
    Subscribe {
        topic: String,
        validator: Option<Validator>,
        reply: Reply<()>,
    },
    Unsubscribe(String),
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: Reply<usize>,
    },
}

/// Commands waiting for the loop; past this the API answers `overloaded`.
pub(crate) const COMMAND_QUEUE: usize = 256;

/// JavaScript's side of the runtime.
pub(crate) struct Handle {
    pub peer_id: PeerId,
    pub commands: mpsc::Sender<Command>,
    pub snapshot: Rc<RefCell<Snapshot>>,
    /// Opens diagnostic streams (bulk transfers, raw streams).
    pub control: streams::Control,
}

/// What a link reports, tagged with the link.
enum Input {
    Piece(LinkId, LinkInput<Message>),
    Gossip(LinkId, LinkInput<GossipMessage>),
    WriterEnded(LinkId, Result<(), OpenError>),
    /// A direct connection's selected ICE pair, as `getStats()` tells it.
    Path(PeerId, shoal_webrtc::CandidatePair),
}

struct HttpDone {
    swarm: String,
    id: u64,
    body: Result<Bytes, String>,
    record: Option<Bytes>,
}

const NODE_BACKOFF_MIN: Duration = Duration::from_millis(250);
const NODE_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// With other nodes to move to, a node link with no answered ping for this long is
/// taken for dead (a killed node sends nothing, and WebRTC notices only after ~30 s):
/// the page moves to the next node. Pings then go out every [`NODE_PING`] (to every
/// connection: 40 bytes a second each); a page with one node pings every
/// [`SOLE_NODE_PING`] and finds a dead node by the ping timeout (8 s).
const NODE_SILENCE: Duration = Duration::from_secs(3);
const NODE_PING: Duration = Duration::from_secs(1);
const SOLE_NODE_PING: Duration = Duration::from_secs(4);
/// A node dial not through after this gets a second one beside it (median node link on
/// loopback: ~0.5 s; a hung one waits out the 10 s handshake timeout).
const NODE_DIAL_HEDGE: Duration = Duration::from_millis(1500);
/// How long a new piece stream may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How stale `stats()` may be while things happen.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);
/// Streams a peer may have open to us at once (a handful per shared swarm, and gossip).
const MAX_INBOUND_PER_PEER: usize = 16;
/// Reopening our links to a peer: at most this many times per window; past it the peer
/// is left alone until it greets us again (its side is not in the swarm, or broken).
const MAX_REOPENS: u32 = 3;
const REOPEN_WINDOW: Duration = Duration::from_secs(30);
/// Bans: proven hostile (corrupt data, forgery) / merely useless or incompatible.
const BAN_HOSTILE: Duration = Duration::from_secs(3600);
const BAN_USELESS: Duration = Duration::from_secs(60);
/// Members of the last join answer that we are still not connected to (a dial that lost
/// a race with theirs, a handshake that failed) are dialled again after this, doubling,
/// at most [`MAX_REDIALS`] times per answer: sooner than the next join.
const REDIAL_AFTER: Duration = Duration::from_secs(2);
const MAX_REDIALS: u32 = 3;
/// A join whose request failed (the node link dropped it) is sent again after this,
/// not at the next rejoin.
const JOIN_RETRY: Duration = Duration::from_secs(2);
/// The first rejoins come sooner (this, doubling, up to the configured interval): two
/// pages that join at nearly the same moment are in neither's answer, and would
/// otherwise stay apart until the next rejoin. Pages joining over a few seconds are
/// common (a video page opened by many viewers at a live event's start).
const FIRST_REJOIN: Duration = Duration::from_secs(3);

/// Builds the swarm and starts the loop.
pub(crate) fn start(config: Config, nodes: Vec<Multiaddr>, emit: EventSink) -> Result<Handle, ShoalError> {
    let keypair = Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();
    let mut candidates = Vec::new();
    for addr in nodes {
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => candidates.push((peer, addr)),
            _ => return Err(ShoalError::NoNode(format!("node address {addr} does not end in /p2p/<id>"))),
        }
    }
    let node = NodeLink::new(candidates, random_seed())
        .ok_or_else(|| ShoalError::NoNode("no signalling node address".into()))?;
    // With another node to move to, the node link is checked every second (see
    // NODE_SILENCE); alone, a dead node is only found by the ping timeout, as a page
    // could do nothing better than wait for it anyway.
    let ping_interval = if node.has_alternatives() { NODE_PING } else { SOLE_NODE_PING };
    let (swarm, control) = swarm::build(&config, &keypair, ping_interval)?;
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (inputs_tx, inputs) = mpsc::channel(INPUT_QUEUE);
    let snapshot = Rc::new(RefCell::new(Snapshot::default()));
    let ed25519 = keypair.clone();
    let gossip = Gossiping::new(ed25519, config.gossip_max_bytes, random_seed(), time_origin_ms());
    let mut runtime = Runtime {
        swarm,
        control: control.clone(),
        node,
        emit,
        snapshot: snapshot.clone(),
        snapshot_due: None,
        commands,
        inputs_tx,
        inputs,
        memberships: VecMap::new(),
        gossip,
        gossip_links: VecMap::new(),
        gossip_reopens: VecMap::new(),
        foreign: VecSet::new(),
        inbound: VecMap::new(),
        writers: VecMap::new(),
        next_link: 0,
        direct: VecMap::new(),
        relayed: VecSet::new(),
        dials: VecMap::new(),
        dial_replies: VecMap::new(),
        rtt: VecMap::new(),
        paths: VecMap::new(),
        outcomes: OutcomeLog::new(),
        banned: VecMap::new(),
        http: FuturesUnordered::new(),
        fetches: VecMap::new(),
        uplink: Uplink::new(),
        timer: Delay::new(Duration::ZERO).fuse(),
        timer_at: Some(Instant::ZERO),
        timer_expected: Instant::ZERO,
        starvation: Starvation::default(),
        probe_at: now() + load::PROBE_MAX,
        playing_until: None,
        config,
    };
    if let Some(swarm) = runtime.config.swarm.clone() {
        runtime.join(swarm, None);
    }
    wasm_bindgen_futures::spawn_local(runtime.run());
    Ok(Handle { peer_id, commands: commands_tx, snapshot, control })
}

/// State of our link to the signalling node, and the other nodes we may move to (see
/// `node_choice`). The link is lost when closed, refused, or silent for
/// [`NODE_SILENCE`]; the page then moves on, its direct connections staying up.
struct NodeLink {
    choice: NodeChoice<(PeerId, Multiaddr)>,
    peer: PeerId,
    addr: Multiaddr,
    connected: bool,
    dialing: bool,
    /// Our dials to the node still in flight, and when the first of this round began.
    pending: Vec<ConnectionId>,
    dial_started: Instant,
    /// Whether this round has its second dial (see [`NODE_DIAL_HEDGE`]).
    hedged: bool,
    reservation: Option<ListenerId>,
    /// When to ask for a reservation again after the node refused or dropped one.
    reserve_at: Option<Instant>,
    /// While the node holds a reservation for us: where other browsers reach us
    /// (`<node>/p2p-circuit/webrtc/p2p/<me>`), formatted once per reservation.
    address: Option<String>,
    /// Wait before asking for a reservation again.
    backoff: Duration,
    next_attempt: Instant,
    /// Times the node connection came up; more than once means reconnects.
    connections_made: u32,
    /// The last answered ping on the node link (or its start).
    last_heard: Instant,
}

impl NodeLink {
    /// `None` without candidates. Several addresses of one node count as one candidate
    /// (the first given: `/webrtc-direct` ones come first).
    fn new(mut addrs: Vec<(PeerId, Multiaddr)>, seed: u64) -> Option<Self> {
        let mut seen = Vec::new();
        addrs.retain(|(peer, _)| {
            let new = !seen.contains(peer);
            seen.push(*peer);
            new
        });
        let choice = NodeChoice::new(addrs, seed)?;
        let (peer, addr) = choice.current().clone();
        Some(Self {
            choice,
            peer,
            addr,
            connected: false,
            dialing: false,
            pending: Vec::new(),
            dial_started: Instant::ZERO,
            hedged: false,
            reservation: None,
            reserve_at: None,
            address: None,
            backoff: NODE_BACKOFF_MIN,
            next_attempt: Instant::ZERO,
            connections_made: 0,
            last_heard: Instant::ZERO,
        })
    }

    fn circuit_addr(&self) -> Multiaddr {
        self.addr.clone().with(Protocol::P2pCircuit)
    }

    /// Whether `peer` is one of our nodes (in use or not): their connections are
    /// signalling, never peers.
    fn is_node(&self, peer: &PeerId) -> bool {
        self.choice.candidates().iter().any(|(p, _)| p == peer)
    }

    fn has_alternatives(&self) -> bool {
        self.choice.candidates().len() > 1
    }

    fn up(&mut self, now: Instant) {
        self.connected = true;
        self.dialing = false;
        self.backoff = NODE_BACKOFF_MIN;
        self.last_heard = now;
        self.connections_made += 1;
    }

    /// The node took us in (a join answered, or a reservation when we join nothing):
    /// only then is the round of nodes over. A node that accepts connections and then
    /// refuses (full) or closes them (draining) must not reset the backoff, or every
    /// page would cycle through full nodes as fast as it can connect.
    fn settled(&mut self) {
        self.choice.connected();
    }

    /// The node refused or dropped our reservation: ask again later, later each time.
    fn reserve_later(&mut self, now: Instant) {
        self.reserve_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(NODE_BACKOFF_MAX);
    }

    fn lost(&mut self, now: Instant) {
        self.connected = false;
        self.dialing = false;
        self.pending.clear();
        self.reservation = None;
        self.reserve_at = None;
        self.address = None;
        self.next_attempt = now + self.choice.lost();
        (self.peer, self.addr) = self.choice.current().clone();
    }
}

/// Our membership of one swarm.
struct Membership {
    joined: bool,
    last_join: Option<Instant>,
    /// Join answers received (the first rejoins come sooner: see [`FIRST_REJOIN`]).
    answers: u32,
    /// Set when a join request failed: send it again then.
    join_retry: Option<Instant>,
    pending: Option<OutboundRequestId>,
    size_hint: usize,
    pieces: Option<PieceSwarm>,
    /// The last join answer's members, and when to dial those still unconnected again
    /// (with the redials done so far).
    sample: Vec<shoal_proto::Member>,
    redial: Option<(Instant, u32)>,
}

/// A membership's piece exchange and our links to its members.
struct PieceSwarm {
    pieces: Pieces<PeerId>,
    /// Our two outbound links to each member: control (announcements, requests) and
    /// data (chunks, records), so announcements never wait behind megabytes.
    links: VecMap<PeerId, (Writer, Writer)>,
    /// Peers whose links kept failing: left alone until they greet us.
    dormant: VecSet<PeerId>,
    reopens: VecMap<PeerId, (u32, Instant)>,
    /// Peers that greeted us on some link already (a second greeting means their side
    /// started over: we greet again).
    greeted: VecSet<PeerId>,
}

/// How long after a join answer the next join goes out: [`FIRST_REJOIN`] after the
/// first, doubling, up to `interval`.
fn rejoin_after(interval: Duration, answers: u32) -> Duration {
    if answers == 0 {
        return interval;
    }
    FIRST_REJOIN.saturating_mul(1 << (answers - 1).min(8)).min(interval)
}

/// One of our outbound links, by owner.
enum WriterOwner {
    Piece { swarm: String, peer: PeerId },
    Gossip { peer: PeerId },
}

/// One of a peer's streams to us.
struct InboundLink {
    peer: PeerId,
    /// Piece links name their swarm in their first frame; until then `None`.
    kind: InboundKind,
    abort: AbortHandle,
    opened: Instant,
}

enum InboundKind {
    Piece(Option<String>),
    Gossip,
}

struct DirectConnection {
    id: ConnectionId,
    dialer: bool,
    remote_addr: Multiaddr,
}

/// Our dials, with the swarm whose member list named the peer (`None`: the page asked).
struct Dial {
    swarm: Option<String>,
}

/// The uplink as the runtime sees it: bytes queued on piece links, and the rate they
/// leave at, measured while they queue (an idle uplink says nothing of its capacity).
struct Uplink {
    written: Rc<Cell<u64>>,
    window_start: Instant,
    window_written: u64,
    busy: bool,
    rate: f64,
}

impl Uplink {
    /// Measurement window.
    const WINDOW: Duration = Duration::from_millis(500);
    /// Assumed rate until one is measured, bytes per second.
    const ASSUMED: f64 = 1_000_000.0;

    fn new() -> Self {
        Self { written: Rc::default(), window_start: Instant::ZERO, window_written: 0, busy: false, rate: 0.0 }
    }

    /// Backlog and rate for the engines, given what is queued now.
    fn update(&mut self, now: Instant, queued: usize) -> (Duration, f64) {
        self.busy &= queued > 0;
        let elapsed = now.saturating_since(self.window_start);
        if elapsed >= Self::WINDOW {
            let written = self.written.get();
            let measured = (written - self.window_written) as f64 / elapsed.as_secs_f64();
            self.rate = if self.busy {
                if self.rate == 0.0 { measured } else { self.rate * 0.7 + measured * 0.3 }
            } else {
                self.rate.max(measured)
            };
            self.window_start = now;
            self.window_written = written;
            self.busy = queued > 0;
        }
        let rate = if self.rate > 0.0 { self.rate } else { Self::ASSUMED };
        (Duration::from_secs_f64(queued as f64 / rate), self.rate)
    }
}

struct Runtime {
    swarm: Swarm<Behaviour>,
    control: streams::Control,
    config: Config,
    node: NodeLink,
    emit: EventSink,
    snapshot: Rc<RefCell<Snapshot>>,
    snapshot_due: Option<Instant>,
    commands: mpsc::Receiver<Command>,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    memberships: VecMap<String, Membership>,
    gossip: Gossiping,
    gossip_links: VecMap<PeerId, Writer>,
    gossip_reopens: VecMap<PeerId, (u32, Instant)>,
    /// Connected peers that speak neither pieces nor gossip (not Shoal pages), by
    /// protocol: not asked again until they reconnect.
    foreign: VecSet<(PeerId, bool)>,
    inbound: VecMap<LinkId, InboundLink>,
    writers: VecMap<LinkId, WriterOwner>,
    next_link: LinkId,
    direct: VecMap<PeerId, Vec<DirectConnection>>,
    relayed: VecSet<ConnectionId>,
    dials: VecMap<ConnectionId, Dial>,
    /// Dials a JavaScript call waits on (`connect`, diagnostics).
    dial_replies: VecMap<ConnectionId, Reply<()>>,
    rtt: VecMap<PeerId, Duration>,
    /// Each direct peer's selected ICE pair types, `local/remote`.
    paths: VecMap<PeerId, String>,
    /// How our dials to other pages ended, and what the node has heard of it.
    outcomes: OutcomeLog<OutboundRequestId>,
    /// Banned peers, until when.
    banned: VecMap<PeerId, Instant>,
    http: FuturesUnordered<LocalBoxFuture<'static, HttpDone>>,
    fetches: VecMap<(String, u64), web_sys::AbortController>,
    uplink: Uplink,
    timer: Fuse<Delay>,
    timer_at: Option<Instant>,
    /// When the armed timer should fire: its due time, or the arming time for a due
    /// time already past. How late it fires tells a frozen page.
    timer_expected: Instant,
    /// Whether the page is starved of CPU, and when to probe its timer next.
    starvation: Starvation,
    probe_at: Instant,
    /// Until when the page counts as playing (a segment was asked for recently): only
    /// then is its load probed, so an idle page is not woken ten times a second.
    playing_until: Option<Instant>,
}

/// How long after its last segment request a page counts as playing (load probed).
const PLAYING_FOR: Duration = Duration::from_secs(30);

/// `foreign` keys: the peer, and whether the protocol is gossip.
const PIECES_PROTOCOL: bool = false;
const GOSSIP_PROTOCOL: bool = true;

impl Runtime {
    async fn run(mut self) {
        loop {
            self.arm_timer();
            select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                input = self.inputs.select_next_some() => self.on_input(input),
                command = self.commands.next() => match command {
                    Some(Command::Stop(done)) => {
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => {
                        self.on_command(command);
                        self.snapshot_due = Some(Instant::ZERO);
                    }
                    None => break,
                },
                done = self.http.select_next_some() => self.on_http(done),
                () = &mut self.timer => {
                    self.timer_at = None;
                    self.on_timer(self.timer_expected);
                }
            }
            self.probe_load();
            self.drain();
            self.snapshot_due.get_or_insert_with(|| now() + SNAPSHOT_EVERY);
        }
        tracing::info!("runtime stopped");
    }

    /// Points the timer at the earliest moment something is due.
    fn arm_timer(&mut self) {
        let mut due = self.snapshot_due;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                due = Some(due.map_or(t, |d| d.min(t)));
            }
        };
        for m in self.memberships.values() {
            at(m.pieces.as_ref().and_then(|p| p.pieces.poll_timeout()));
        }
        at(self.gossip.poll_timeout());
        if self.load_matters(now()) {
            at(Some(self.probe_at));
        }
        if !self.node.connected && !self.node.dialing {
            at(Some(self.node.next_attempt));
        }
        if !self.node.connected && self.node.dialing && !self.node.hedged {
            at(Some(self.node.dial_started + NODE_DIAL_HEDGE));
        }
        if self.node.connected && self.node.reservation.is_none() {
            at(self.node.reserve_at);
        }
        if self.node.connected && self.node.has_alternatives() {
            at(Some(self.node.last_heard + NODE_SILENCE));
        }
        if self.node.address.is_some() {
            at(self.outcomes.due());
            let rejoin = Duration::from_millis(u64::from(self.config.rejoin_interval_ms));
            for m in self.memberships.values().filter(|m| m.pending.is_none()) {
                at(Some(m.last_join.map_or(Instant::ZERO, |t| t + rejoin_after(rejoin, m.answers))));
                at(m.join_retry);
                at(m.redial.map(|(t, _)| t));
            }
        }
        for link in self.inbound.values() {
            if matches!(link.kind, InboundKind::Piece(None)) {
                at(Some(link.opened + HELLO_TIMEOUT));
            }
        }
        if due != self.timer_at {
            let now = now();
            let wait = due.map_or(Duration::from_secs(3600), |d| d.saturating_since(now));
            self.timer = Delay::new(wait).fuse();
            self.timer_at = due;
            self.timer_expected = now + wait;
        }
    }

    /// Whether the page's load is worth probing: it plays (or recovers from shedding).
    fn load_matters(&self, now: Instant) -> bool {
        self.starvation.shedding() || self.playing_until.is_some_and(|until| now < until)
    }

    /// The first moment the loop runs after a probe was due tells how late the page's
    /// timers fire (see [`Starvation`]).
    fn probe_load(&mut self) {
        let now = now();
        if now < self.probe_at || !self.load_matters(now) {
            return;
        }
        if page_hidden() {
            // The browser throttles a hidden page's timers on purpose: that is not a
            // starved page (and a background tab is a good uploader).
            self.probe_at = now + load::PROBE_MAX;
            return;
        }
        let change = self.starvation.probe(self.probe_at, now);
        self.probe_at = now + load::probe_wait(js_sys::Math::random());
        if let Some(shedding) = change {
            self.set_shedding(shedding, now);
        }
    }

    fn set_shedding(&mut self, shedding: bool, now: Instant) {
        tracing::info!(shedding, late = ?self.starvation.lateness(), "page load");
        for p in self.memberships.values_mut().filter_map(|m| m.pieces.as_mut()) {
            p.pieces.set_shedding(shedding, now);
        }
        if shedding {
            // No direct neighbours while shedding: every WebRTC connection costs a starved
            // main thread timers and SCTP work. (Keeping the three closest left a
            // saturated 20-tab run with 36 stalls, none kept 9; plain hls.js 0.)
            let peers: Vec<PeerId> = self.direct.keys().copied().collect();
            for peer in peers {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
        let timer_late_ms = self.starvation.lateness().as_secs_f64() * 1000.0;
        self.emit(Event::LoadShedding { active: shedding, timer_late_ms });
    }

    /// Most direct neighbours now: `maxPeers`, none while shedding load.
    fn peer_limit(&self) -> usize {
        if self.starvation.shedding() { 0 } else { self.config.max_peers }
    }

    /// Events that report a change `stats()` shows are emitted after the snapshot has
    /// it: a page that reads `stats()` in (or after) its handler sees the new state, not
    /// one up to [`SNAPSHOT_EVERY`] old.
    fn emit(&mut self, event: Event) {
        if matches!(
            event,
            Event::NodeConnected { .. }
                | Event::NodeDisconnected { .. }
                | Event::Joined { .. }
                | Event::Refused { .. }
                | Event::PeerConnected { .. }
                | Event::PeerPath { .. }
                | Event::PeerDisconnected { .. }
                | Event::LoadShedding { .. }
        ) {
            self.refresh_snapshot();
        }
        (self.emit)(event);
    }

    fn next_link(&mut self) -> LinkId {
        self.next_link += 1;
        self.next_link
    }

    fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.banned.get(peer).is_some_and(|until| *until > now)
    }

    // ---- outputs -----------------------------------------------------------------------

    /// Carries out everything the state machines asked for, until none asks more.
    fn drain(&mut self) {
        loop {
            let mut effects = Vec::new();
            for (name, m) in self.memberships.iter_mut() {
                if let Some(p) = &mut m.pieces {
                    effects.extend(std::iter::from_fn(|| p.pieces.poll_effect()).map(|e| (name.clone(), e)));
                }
            }
            let gossip: Vec<GossipEffect> = std::iter::from_fn(|| self.gossip.poll_effect()).collect();
            if effects.is_empty() && gossip.is_empty() {
                break;
            }
            for (swarm, effect) in effects {
                self.on_piece_effect(&swarm, effect);
            }
            for effect in gossip {
                self.on_gossip_effect(effect);
            }
        }
        // What the engines handed over is queued now: measure the uplink with it (the
        // engines count what they hand over from here on).
        let queued: usize = self
            .memberships
            .values()
            .filter_map(|m| m.pieces.as_ref())
            .flat_map(|p| p.links.values())
            .map(|(_, data)| data.queued())
            .sum();
        let (backlog, rate) = self.uplink.update(now(), queued);
        for p in self.memberships.values_mut().filter_map(|m| m.pieces.as_mut()) {
            p.pieces.set_uplink(backlog, rate);
        }
    }

    fn on_piece_effect(&mut self, swarm: &str, effect: Effect<PeerId>) {
        match effect {
            Effect::Send { peer, frame, bulk } => {
                let Some(p) = self.memberships.get_mut(swarm).and_then(|m| m.pieces.as_mut()) else { return };
                let Some((control, data)) = p.links.get_mut(&peer) else { return };
                let writer = if bulk { data } else { control };
                if let Err(error) = writer.send(frame) {
                    // A link this far behind (or gone) is started over; the engine asks
                    // others meanwhile.
                    tracing::debug!(%peer, ?error, "piece link cannot take more");
                    self.restart_piece_links(swarm, peer);
                }
            }
            Effect::Fetch { id, url, range, record_url } => self.start_fetch(swarm, id, url, range, record_url),
            Effect::CancelFetch { id } => {
                if let Some(controller) = self.fetches.remove(&(swarm.to_owned(), id)) {
                    controller.abort();
                }
            }
            Effect::Disconnect { peer, reason } => {
                let duration = if reason.is_hostile() { BAN_HOSTILE } else { BAN_USELESS };
                self.ban(peer, format!("{reason:?}"), duration, false);
            }
            Effect::Event(event) => self.emit(event),
        }
    }

    fn on_gossip_effect(&mut self, effect: GossipEffect) {
        match effect {
            GossipEffect::Send(peer, frame) => {
                let Some(writer) = self.gossip_links.get_mut(&peer) else { return };
                if writer.send(frame).is_err() {
                    tracing::debug!(%peer, "gossip link cannot take more");
                    self.gossip_links.remove(&peer);
                    self.gossip.peer_gone(&peer);
                    self.reopen_gossip_link(peer);
                }
            }
            GossipEffect::Disconnect(peer, reason) => self.ban(peer, reason, BAN_HOSTILE, true),
            GossipEffect::Event(event) => self.emit(event),
        }
    }

    fn start_fetch(
        &mut self,
        swarm: &str,
        id: u64,
        url: String,
        range: Option<(u64, u64)>,
        record_url: Option<String>,
    ) {
        let Ok(controller) = web_sys::AbortController::new() else {
            if let Some(p) = self.memberships.get_mut(swarm).and_then(|m| m.pieces.as_mut()) {
                p.pieces.fetch_done(id, Err("no AbortController".into()), None, now());
            }
            return;
        };
        let signal = controller.signal();
        self.fetches.insert((swarm.to_owned(), id), controller);
        let swarm = swarm.to_owned();
        self.http.push(
            async move {
                // The record comes with the segment so what came over HTTP can be shared.
                let record = async {
                    match &record_url {
                        Some(u) => http::get(u, None, &signal).await.ok(),
                        None => None,
                    }
                };
                let (body, record) = futures::join!(http::get(&url, range, &signal), record);
                HttpDone { swarm, id, body, record }
            }
            .boxed_local(),
        );
    }

    fn on_http(&mut self, done: HttpDone) {
        if self.fetches.remove(&(done.swarm.clone(), done.id)).is_none() {
            return; // cancelled meanwhile
        }
        if let Some(p) = self.memberships.get_mut(&done.swarm).and_then(|m| m.pieces.as_mut()) {
            p.pieces.fetch_done(done.id, done.body, done.record, now());
        }
    }

    /// The timer fired; it was expected to at `expected`.
    fn on_timer(&mut self, expected: Instant) {
        let now = now();
        for p in self.memberships.values_mut().filter_map(|m| m.pieces.as_mut()) {
            if p.pieces.poll_timeout().is_some_and(|t| t <= now) {
                p.pieces.handle_timeout(now);
            }
        }
        let expired: Vec<LinkId> = self
            .inbound
            .iter()
            .filter(|(_, l)| matches!(l.kind, InboundKind::Piece(None)) && l.opened + HELLO_TIMEOUT <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(link) = self.inbound.remove(&id) {
                tracing::debug!(peer = %link.peer, "piece stream without Hello");
                link.abort.abort();
            }
        }
        self.banned.retain(|_, until| *until > now);
        // A page the browser froze (a background tab, a debugger) wakes with its timer
        // late and the node's ping answers still queued: that is not the node's silence.
        if now.saturating_since(expected) >= Duration::from_secs(1) {
            self.node.last_heard = now;
        }
        self.maintain_node(now);
        if self.snapshot_due.is_some_and(|t| t <= now) {
            self.refresh_snapshot();
            self.snapshot_due = None;
        }
    }

    // ---- links ---------------------------------------------------------------------

    /// Opens our two links to `peer` in `swarm`, and lets the engine greet it.
    fn open_piece_links(&mut self, swarm: &str, peer: PeerId) {
        let now = now();
        if self.is_banned(&peer, now)
            || !self.direct.contains_key(&peer)
            || self.foreign.contains(&(peer, PIECES_PROTOCOL))
        {
            return;
        }
        let Some(p) = self.memberships.get(swarm).and_then(|m| m.pieces.as_ref()) else { return };
        if p.links.contains_key(&peer) {
            return;
        }
        let hello =
            Message::Hello { version: shoal_core::wire::PROTOCOL_VERSION, stream: p.pieces.stream_id }.to_frame();
        // The engine's own Hello opens the control link; the data link carries one too, so
        // the peer can tell which swarm it belongs to.
        let control = self.spawn_writer(peer, swarm::PIECES, None);
        let data = self.spawn_writer(peer, swarm::PIECES, Some(hello));
        for link in [control.link, data.link] {
            self.writers.insert(link, WriterOwner::Piece { swarm: swarm.to_owned(), peer });
        }
        let Some(p) = self.memberships.get_mut(swarm).and_then(|m| m.pieces.as_mut()) else { return };
        p.dormant.remove(&peer);
        p.links.insert(peer, (control, data));
        p.pieces.peer_connected(peer, now);
    }

    fn spawn_writer(&mut self, peer: PeerId, protocol: libp2p::StreamProtocol, first: Option<Bytes>) -> Writer {
        let link = self.next_link();
        links::spawn_writer(
            self.control.clone(),
            peer,
            protocol,
            link,
            first,
            self.uplink.written.clone(),
            self.inputs_tx.clone(),
            Input::WriterEnded,
        )
    }

    /// Drops our links to `peer` in `swarm` (their tasks close the streams) and the
    /// engine's state of it.
    fn close_piece_links(&mut self, swarm: &str, peer: PeerId) {
        let Some(p) = self.memberships.get_mut(swarm).and_then(|m| m.pieces.as_mut()) else { return };
        if let Some((control, data)) = p.links.remove(&peer) {
            self.writers.remove(&control.link);
            self.writers.remove(&data.link);
        }
        p.pieces.peer_gone(peer, now());
    }

    /// Our links to `peer` in `swarm` failed while the connection lives (it may have
    /// run on a duplicate connection that was closed): open them again at once, within
    /// [`MAX_REOPENS`].
    fn restart_piece_links(&mut self, swarm: &str, peer: PeerId) {
        self.close_piece_links(swarm, peer);
        let now = now();
        let Some(p) = self.memberships.get_mut(swarm).and_then(|m| m.pieces.as_mut()) else { return };
        if !reopen_allowed(&mut p.reopens, peer, now) {
            tracing::debug!(%peer, %swarm, "piece links keep failing; waiting for the peer");
            p.dormant.insert(peer);
            return;
        }
        self.open_piece_links(swarm, peer);
    }

    fn open_gossip_link(&mut self, peer: PeerId) {
        if self.gossip_links.contains_key(&peer)
            || self.foreign.contains(&(peer, GOSSIP_PROTOCOL))
            || self.is_banned(&peer, now())
        {
            return;
        }
        let writer = self.spawn_writer(peer, swarm::GOSSIP, None);
        self.writers.insert(writer.link, WriterOwner::Gossip { peer });
        self.gossip_links.insert(peer, writer);
        self.gossip.peer_connected(peer, now());
    }

    fn reopen_gossip_link(&mut self, peer: PeerId) {
        if self.direct.contains_key(&peer) && reopen_allowed(&mut self.gossip_reopens, peer, now()) {
            self.open_gossip_link(peer);
        }
    }

    /// Every link to and from `peer`, and what the state machines know of it.
    fn forget_peer(&mut self, peer: PeerId) {
        let swarms: Vec<String> = self.memberships.keys().cloned().collect();
        for swarm in swarms {
            self.close_piece_links(&swarm, peer);
            if let Some(p) = self.memberships.get_mut(&swarm).and_then(|m| m.pieces.as_mut()) {
                p.dormant.remove(&peer);
                p.reopens.remove(&peer);
                p.greeted.remove(&peer);
            }
        }
        if let Some(writer) = self.gossip_links.remove(&peer) {
            self.writers.remove(&writer.link);
        }
        self.gossip.peer_gone(&peer);
        self.gossip_reopens.remove(&peer);
        self.inbound.retain(|_, link| {
            let keep = link.peer != peer;
            if !keep {
                link.abort.abort();
            }
            keep
        });
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Piece(link, input) => self.on_piece_input(link, input),
            Input::Gossip(link, input) => {
                let Some(peer) = self.inbound.get(&link).map(|l| l.peer) else { return };
                match input {
                    LinkInput::Frame(message) => self.gossip.on_message(peer, message, now()),
                    LinkInput::Bad(error) => {
                        self.inbound.remove(&link);
                        self.gossip.on_bad_frame(peer, &error);
                    }
                    LinkInput::Closed(error) => {
                        tracing::debug!(%peer, ?error, "gossip stream from the peer ended");
                        self.inbound.remove(&link);
                    }
                }
            }
            Input::Path(peer, pair) => {
                if !self.direct.contains_key(&peer) {
                    return;
                }
                let relayed = pair.local_type == "relay" || pair.remote_type == "relay";
                let path = format!("{}/{}", pair.local_type, pair.remote_type);
                if self.paths.get(&peer) == Some(&path) {
                    return;
                }
                // Each connection counted once, by the page that dialled it.
                if self.paths.get(&peer).is_none()
                    && self.direct.get(&peer).is_some_and(|conns| conns.iter().any(|c| c.dialer))
                {
                    self.outcomes.connected(PathKind::of(&pair.local_type, &pair.remote_type));
                }
                self.paths.insert(peer, path);
                self.emit(Event::PeerPath {
                    peer: peer.to_string(),
                    local: pair.local_type,
                    remote: pair.remote_type,
                    relayed,
                });
            }
            Input::WriterEnded(link, result) => {
                let Some(owner) = self.writers.remove(&link) else { return }; // we closed it
                let error = result.err();
                let unsupported = matches!(error, Some(OpenError::Unsupported));
                match owner {
                    WriterOwner::Piece { swarm, peer } => {
                        tracing::debug!(%peer, %swarm, ?error, "piece link ended");
                        if unsupported {
                            self.foreign.insert((peer, PIECES_PROTOCOL));
                            self.close_piece_links(&swarm, peer);
                        } else {
                            self.restart_piece_links(&swarm, peer);
                        }
                    }
                    WriterOwner::Gossip { peer } => {
                        tracing::debug!(%peer, ?error, "gossip link ended");
                        self.gossip_links.remove(&peer);
                        if unsupported {
                            self.foreign.insert((peer, GOSSIP_PROTOCOL));
                            self.gossip.peer_gone(&peer);
                        } else {
                            self.reopen_gossip_link(peer);
                        }
                    }
                }
            }
        }
    }

    fn on_piece_input(&mut self, link: LinkId, input: LinkInput<Message>) {
        let Some(InboundLink { peer, kind, .. }) = self.inbound.get(&link) else { return };
        let peer = *peer;
        let bound = match kind {
            InboundKind::Piece(swarm) => swarm.clone(),
            InboundKind::Gossip => return,
        };
        let message = match input {
            LinkInput::Frame(message) => message,
            LinkInput::Closed(error) => {
                // The peer ended its link; if its side starts over, its new link greets us.
                tracing::debug!(%peer, ?error, "piece stream from the peer ended");
                self.inbound.remove(&link);
                return;
            }
            LinkInput::Bad(error) => {
                self.inbound.remove(&link);
                self.emit(Event::PeerBanned { peer: peer.to_string(), reason: format!("malformed message: {error}") });
                self.ban(peer, format!("malformed message: {error}"), BAN_HOSTILE, false);
                return;
            }
        };
        let swarm = match bound {
            Some(swarm) => swarm,
            None => {
                let Message::Hello { stream, .. } = &message else {
                    tracing::debug!(%peer, "piece stream that does not start with Hello");
                    if let Some(link) = self.inbound.remove(&link) {
                        link.abort.abort();
                    }
                    return;
                };
                let found = self
                    .memberships
                    .iter()
                    .find(|(_, m)| m.pieces.as_ref().is_some_and(|p| p.pieces.stream_id == *stream))
                    .map(|(name, _)| name.clone());
                let Some(swarm) = found else {
                    tracing::debug!(%peer, "piece stream for a swarm we are not in");
                    if let Some(link) = self.inbound.remove(&link) {
                        link.abort.abort();
                    }
                    return;
                };
                if let Some(l) = self.inbound.get_mut(&link) {
                    l.kind = InboundKind::Piece(Some(swarm.clone()));
                }
                self.on_greeting(&swarm, peer);
                swarm
            }
        };
        if let Some(p) = self.memberships.get_mut(&swarm).and_then(|m| m.pieces.as_mut()) {
            p.pieces.on_message(peer, message, now());
        }
    }

    /// `peer` opened a link to us in `swarm`. Our links to it open if they are not up;
    /// a second greeting (its side started over and forgot what we hold) is answered
    /// with ours.
    fn on_greeting(&mut self, swarm: &str, peer: PeerId) {
        let Some(p) = self.memberships.get_mut(swarm).and_then(|m| m.pieces.as_mut()) else { return };
        let again = !p.greeted.insert(peer);
        let linked = p.links.contains_key(&peer);
        if !linked {
            p.reopens.remove(&peer);
            self.open_piece_links(swarm, peer);
        } else if again {
            let now = now();
            p.pieces.peer_gone(peer, now);
            p.pieces.peer_connected(peer, now);
        }
    }

    fn on_inbound_stream(&mut self, inbound: streams::Inbound) {
        let streams::Inbound { peer, protocol, stream, relayed } = inbound;
        let now = now();
        if protocol == swarm::BULK {
            let emit = self.emit.clone();
            wasm_bindgen_futures::spawn_local(serve_bulk(peer, stream, emit));
            return;
        }
        let per_peer = self.inbound.values().filter(|l| l.peer == peer).count();
        if relayed || self.is_banned(&peer, now) || per_peer >= MAX_INBOUND_PER_PEER {
            tracing::debug!(%peer, %protocol, relayed, per_peer, "inbound stream refused");
            return;
        }
        let link = self.next_link();
        let (kind, abort) = if protocol == swarm::PIECES {
            if !self.memberships.values().any(|m| m.pieces.is_some()) {
                return;
            }
            let abort = links::spawn_reader(stream, Message::MAX_BODY, link, self.inputs_tx.clone(), Input::Piece);
            (InboundKind::Piece(None), abort)
        } else {
            let limit = self.gossip.max_message_bytes() + shoal_core::gossip::FRAME_OVERHEAD;
            let abort = links::spawn_reader(stream, limit, link, self.inputs_tx.clone(), Input::Gossip);
            (InboundKind::Gossip, abort)
        };
        self.inbound.insert(link, InboundLink { peer, kind, abort, opened: now });
    }

    // ---- commands ------------------------------------------------------------------

    fn pieces_of(&mut self, swarm: &str) -> Result<&mut Pieces<PeerId>, ShoalError> {
        self.memberships
            .get_mut(swarm)
            .and_then(|m| m.pieces.as_mut())
            .map(|p| &mut p.pieces)
            .ok_or_else(|| ShoalError::NotJoined(swarm.to_owned()))
    }

    fn on_command(&mut self, command: Command) {
        let now = now();
        match command {
            Command::Stop(_) => {}
            Command::DialRelayed(peer, reply) => self.dial_relayed(peer, reply),
            Command::Connect(addr, peer, reply) => self.connect(addr, peer, reply),
            Command::Join(name, options) => self.join(name, options),
            Command::Leave(name) => self.leave(&name),
            Command::SetPlaylist { swarm, segments } => {
                if let Ok(pieces) = self.pieces_of(&swarm) {
                    pieces.set_playlist(segments, now);
                }
            }
            Command::FetchSegment { swarm, id, location, deadline, reply } => {
                if !self.load_matters(now) {
                    // Probing resumes from now, not from a probe due while it idled.
                    self.probe_at = now + load::probe_wait(js_sys::Math::random());
                }
                self.playing_until = Some(now + PLAYING_FOR);
                match self.pieces_of(&swarm) {
                    Ok(pieces) => pieces.fetch_segment(id, location, deadline, reply, now),
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::CancelSegment { swarm, id } => {
                if let Ok(pieces) = self.pieces_of(&swarm) {
                    pieces.cancel_segment(id, now);
                }
            }
            Command::OfferSegment { swarm, id, data, reply } => {
                let result = self.pieces_of(&swarm).and_then(|pieces| pieces.offer_segment(id, data, now));
                let _ = reply.send(result);
            }
            Command::SetSwitches { upload, p2p_download } => {
                for p in self.memberships.values_mut().filter_map(|m| m.pieces.as_mut()) {
                    p.pieces.set_switches(upload, p2p_download, now);
                }
            }
            Command::Subscribe { topic, validator, reply } => {
                let _ = reply.send(self.gossip.subscribe(topic, validator));
            }
            Command::Unsubscribe(topic) => self.gossip.unsubscribe(&topic),
            Command::Publish { topic, data, reply } => {
                let _ = reply.send(self.gossip.publish(topic, data, now));
            }
        }
    }

    fn join(&mut self, name: String, options: Option<Box<PiecesOptions>>) {
        let now = now();
        let membership = self.memberships.get_or_insert_with(name.clone(), || Membership {
            joined: false,
            last_join: None,
            answers: 0,
            join_retry: None,
            pending: None,
            size_hint: 1,
            pieces: None,
            sample: Vec::new(),
            redial: None,
        });
        if let (Some(options), None) = (options, &membership.pieces) {
            let mut pieces = Pieces::new(*options, random_seed(), now);
            pieces.set_swarm_size(membership.size_hint);
            pieces.set_shedding(self.starvation.shedding(), now);
            membership.pieces = Some(PieceSwarm {
                pieces,
                links: VecMap::new(),
                dormant: VecSet::new(),
                reopens: VecMap::new(),
                greeted: VecSet::new(),
            });
        }
        if self.node.address.is_some() && membership.pending.is_none() {
            self.send_join(&name);
        }
    }

    fn leave(&mut self, name: &str) {
        let Some(mut membership) = self.memberships.remove(name) else { return };
        if let Some(mut p) = membership.pieces.take() {
            p.pieces.shutdown();
            for (control, data) in p.links.into_values() {
                self.writers.remove(&control.link);
                self.writers.remove(&data.link);
            }
        }
        self.fetches.retain(|(swarm, _), controller| {
            let keep = swarm != name;
            if !keep {
                controller.abort();
            }
            keep
        });
        self.inbound.retain(|_, link| {
            let keep = !matches!(&link.kind, InboundKind::Piece(Some(s)) if s == name);
            if !keep {
                link.abort.abort();
            }
            keep
        });
        if self.node.connected {
            let request = MembershipRequest::Leave { swarm: name.to_owned() };
            self.swarm.behaviour_mut().membership.send_request(&self.node.peer, request);
        }
    }

    /// Cuts `peer` off for `duration`: every link, every state machine's memory of it,
    /// every connection.
    fn ban(&mut self, peer: PeerId, reason: String, duration: Duration, announce: bool) {
        let until = now() + duration;
        let known = self.banned.insert(peer, until).is_some_and(|t| t > now());
        if known {
            return;
        }
        tracing::info!(%peer, %reason, "peer cut off");
        if announce {
            self.emit(Event::PeerBanned { peer: peer.to_string(), reason });
        }
        self.forget_peer(peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Tells the node we are gone, so it stops handing us out, waiting briefly for its
    /// answers (a closing page may not give us longer).
    async fn stop(&mut self) {
        let names: Vec<String> = self.memberships.keys().cloned().collect();
        let mut pending = HashSet::new();
        for name in &names {
            if let Some(mut p) = self.memberships.get_mut(name).and_then(|m| m.pieces.take()) {
                p.pieces.shutdown();
            }
            if self.node.connected {
                let request = MembershipRequest::Leave { swarm: name.clone() };
                pending.insert(self.swarm.behaviour_mut().membership.send_request(&self.node.peer, request));
            }
        }
        for (_, controller) in self.fetches.drain() {
            controller.abort();
        }
        let mut deadline = Delay::new(Duration::from_millis(500)).fuse();
        while !pending.is_empty() {
            select! {
                event = self.swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(BehaviourEvent::Membership(
                        request_response::Event::Message { message: request_response::Message::Response { request_id, .. }, .. }
                        | request_response::Event::OutboundFailure { request_id, .. },
                    )) = &event
                    {
                        pending.remove(request_id);
                    }
                }
                () = deadline => break,
            }
        }
    }

    fn dial_relayed(&mut self, peer: PeerId, reply: Reply<()>) {
        if !self.node.connected {
            let _ = reply.send(Err(ShoalError::DialFailed("not connected to the signalling node".into())));
            return;
        }
        let addr = self.node.circuit_addr().with(Protocol::P2p(peer));
        let opts = DialOpts::peer_id(peer).addresses(vec![addr]).condition(PeerCondition::Always).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dial_replies.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ShoalError::DialFailed(e.to_string())));
            }
        }
    }

    /// A direct connection the page asked for, to a peer it learnt of by other means than
    /// membership. Resolves at once if one is up already.
    fn connect(&mut self, addr: Multiaddr, peer: PeerId, reply: Reply<()>) {
        if self.direct.contains_key(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        if self.is_banned(&peer, now()) {
            let _ = reply.send(Err(ShoalError::DialFailed(format!("{peer} is banned"))));
            return;
        }
        if self.direct.len() >= self.config.max_peers {
            let message = format!("already connected to maxPeers ({}) peers", self.config.max_peers);
            let _ = reply.send(Err(ShoalError::DialFailed(message)));
            return;
        }
        let opts = DialOpts::peer_id(peer).addresses(vec![addr]).condition(PeerCondition::Always).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, Dial { swarm: None });
                self.dial_replies.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ShoalError::DialFailed(e.to_string())));
            }
        }
    }

    // ---- the node ------------------------------------------------------------------

    /// Reconnects to the node, renews a refused reservation, refreshes memberships.
    fn maintain_node(&mut self, now: Instant) {
        if self.node.connected
            && self.node.has_alternatives()
            && now.saturating_since(self.node.last_heard) >= NODE_SILENCE
        {
            let _ = self.swarm.disconnect_peer_id(self.node.peer);
            self.on_node_lost(now, format!("no answer for {} s", NODE_SILENCE.as_secs()));
        }
        if !self.node.connected && !self.node.dialing && now >= self.node.next_attempt {
            self.node.dialing = true;
            self.node.dial_started = now;
            self.node.hedged = false;
            self.dial_node(now);
        }
        // A node dial that hangs is a known libp2p-webrtc fault (its UDP mux drops an
        // upgrade whose ICE ufrag it has already seen: BENCHMARKS "Joining"), not a slow
        // node: a second dial, on a new ufrag, goes through while the first times out.
        if !self.node.connected
            && self.node.dialing
            && !self.node.hedged
            && now.saturating_since(self.node.dial_started) >= NODE_DIAL_HEDGE
        {
            self.node.hedged = true;
            tracing::debug!("node dial slow; dialling again beside it");
            self.dial_node(now);
        }
        if self.node.connected && self.node.reservation.is_none() && self.node.reserve_at.is_some_and(|t| t <= now) {
            self.node.reserve_at = None;
            self.reserve();
        }
        if self.node.address.is_none() {
            return;
        }
        if let Some(outcomes) = self.outcomes.take_report(now) {
            let id = self
                .swarm
                .behaviour_mut()
                .membership
                .send_request(&self.node.peer, MembershipRequest::Report { outcomes });
            self.outcomes.sent(id, outcomes, now);
        }
        let rejoin = Duration::from_millis(u64::from(self.config.rejoin_interval_ms));
        let due: Vec<String> = self
            .memberships
            .iter()
            .filter(|(_, m)| {
                m.pending.is_none()
                    && (m.last_join.is_none_or(|t| now.saturating_since(t) >= rejoin_after(rejoin, m.answers))
                        || m.join_retry.is_some_and(|t| t <= now))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.send_join(&name);
        }
        self.redial_members(now);
    }

    fn dial_node(&mut self, now: Instant) {
        let opts = DialOpts::peer_id(self.node.peer)
            .addresses(vec![self.node.addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => self.node.pending.push(id),
            Err(e) => {
                tracing::debug!(error = %e, "node dial refused");
                if self.node.pending.is_empty() {
                    self.node.lost(now);
                }
            }
        }
    }

    /// Dials again the members of each last join answer we are still not connected to.
    fn redial_members(&mut self, now: Instant) {
        let due: Vec<(String, Vec<shoal_proto::Member>)> = self
            .memberships
            .iter_mut()
            .filter_map(|(name, m)| {
                let (at, done) = m.redial?;
                if at > now {
                    return None;
                }
                m.redial = (done + 1 < MAX_REDIALS).then(|| (now + REDIAL_AFTER * 2u32.pow(done + 1), done + 1));
                Some((name.clone(), m.sample.clone()))
            })
            .collect();
        for (name, sample) in due {
            let missing: Vec<shoal_proto::Member> = sample
                .into_iter()
                .filter(|m| m.peer.parse::<PeerId>().is_ok_and(|p| !self.direct.contains_key(&p)))
                .collect();
            if missing.is_empty() {
                if let Some(m) = self.memberships.get_mut(&name) {
                    m.redial = None;
                }
                continue;
            }
            tracing::debug!(swarm = %name, missing = missing.len(), "dialling unconnected members again");
            self.dial_members(&name, missing);
        }
    }

    fn reserve(&mut self) {
        match self.swarm.listen_on(self.node.circuit_addr()) {
            Ok(id) => self.node.reservation = Some(id),
            Err(e) => {
                self.emit(Event::Refused { what: "relay reservation".into(), reason: e.to_string() });
                self.node.reserve_later(now());
            }
        }
    }

    fn send_join(&mut self, name: &str) {
        let request = MembershipRequest::Join { swarm: name.to_owned(), token: None };
        let id = self.swarm.behaviour_mut().membership.send_request(&self.node.peer, request);
        if let Some(m) = self.memberships.get_mut(name) {
            m.pending = Some(id);
            m.last_join = Some(now());
            m.join_retry = None;
        }
    }

    /// Our node link is gone: memberships are sent again on the next node (or this one,
    /// later). Direct connections to peers are not touched.
    fn on_node_lost(&mut self, now: Instant, reason: String) {
        let node = self.node.peer;
        tracing::info!(%reason, "lost the signalling node");
        self.node.lost(now);
        self.outcomes.node_lost();
        for m in self.memberships.values_mut() {
            m.joined = false;
            m.pending = None;
            m.last_join = None;
        }
        self.emit(Event::NodeDisconnected { node: node.to_string(), reason });
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = now();
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let dial = self.dials.remove(&connection_id);
                if let Some(reply) = self.dial_replies.remove(&connection_id) {
                    let _ = reply.send(Ok(()));
                }
                self.on_connection_established(peer_id, connection_id, &endpoint, dial)
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                self.relayed.remove(&connection_id);
                let reason = cause.map(|c| c.to_string()).unwrap_or_else(|| "closed".into());
                if self.node.is_node(&peer_id) {
                    if peer_id == self.node.peer && num_established == 0 && self.node.connected {
                        self.on_node_lost(now, reason);
                    }
                    return;
                }
                self.on_direct_closed(peer_id, connection_id, reason);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, connection_id } => {
                let ours = self.dials.remove(&connection_id).is_some();
                let text = error_chain(&error);
                if let Some(reply) = self.dial_replies.remove(&connection_id) {
                    let _ = reply.send(Err(ShoalError::DialFailed(text.clone())));
                }
                if peer == self.node.peer {
                    tracing::info!(%error, "cannot reach the signalling node");
                    self.node.pending.retain(|p| *p != connection_id);
                    // The other dial of a hedged round may still come through.
                    if !self.node.connected && self.node.pending.is_empty() {
                        self.node.lost(now);
                    }
                } else if ours {
                    tracing::debug!(%peer, error = %text, "dial failed");
                    let kind = DialFailure::of(&text);
                    self.outcomes.failed(kind);
                    self.emit(Event::DialFailed { peer: peer.to_string(), kind: kind.as_str().into(), error: text });
                }
            }
            SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                let error = error_chain(&error);
                tracing::debug!(%send_back_addr, %error, "inbound connection failed");
                // Only browser-to-browser handshakes are worth telling the page about.
                if shoal_webrtc::addr::is_webrtc(&send_back_addr) {
                    let peer = match send_back_addr.iter().last() {
                        Some(Protocol::P2p(peer)) => peer.to_string(),
                        _ => String::new(),
                    };
                    self.emit(Event::InboundFailed { peer, error });
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } if Some(listener_id) == self.node.reservation => {
                self.node.reservation = None;
                self.node.address = None;
                if self.node.connected {
                    // Refused or dropped while the node is up: ask again, later.
                    if let Err(error) = &reason {
                        self.emit(Event::Refused { what: "relay reservation".into(), reason: error.to_string() });
                    }
                    self.node.reserve_later(now);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(relay::client::Event::ReservationReqAccepted {
                renewal: false,
                ..
            })) => {
                // Reachable through the node now: members dialling us will get through.
                let me = *self.swarm.local_peer_id();
                self.node.address =
                    Some(self.node.circuit_addr().with(Protocol::WebRTC).with(Protocol::P2p(me)).to_string());
                if self.memberships.is_empty() {
                    self.node.settled();
                }
                let names: Vec<String> = self.memberships.keys().cloned().collect();
                for name in names {
                    self.send_join(&name);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Webrtc(shoal_webrtc::BehaviourEvent::InboundSignalingRefused {
                peer,
                reason,
            })) => {
                self.emit(Event::InboundFailed { peer: peer.to_string(), error: reason.to_owned() });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Membership(event)) => self.on_membership(event),
            SwarmEvent::Behaviour(BehaviourEvent::Streams(inbound)) => self.on_inbound_stream(inbound),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, connection })) => match result {
                Ok(rtt) => {
                    // Nodes are not neighbours: their round trips stay out of `rtt`
                    // (which is cleared only when a neighbour goes).
                    if peer == self.node.peer {
                        self.node.last_heard = now;
                    } else if !self.node.is_node(&peer) {
                        self.rtt.insert(peer, rtt);
                    }
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "ping failed; closing the connection");
                    let _ = self.swarm.close_connection(connection);
                }
            },
            _ => {}
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
        dial: Option<Dial>,
    ) {
        let remote_addr = endpoint.get_remote_address().clone();
        if peer == self.node.peer {
            let dial_was_ours_to_node = self.node.pending.contains(&id);
            self.node.pending.retain(|p| *p != id);
            if !self.node.connected {
                self.node.up(now());
                self.reserve();
                self.emit(Event::NodeConnected { node: peer.to_string(), addr: remote_addr.to_string() });
            } else if dial_was_ours_to_node {
                // The other dial of a hedged round came through too: one link is enough.
                self.swarm.close_connection(id);
            }
            return;
        }
        if self.is_banned(&peer, now()) {
            self.swarm.close_connection(id);
            return;
        }
        if !shoal_webrtc::addr::is_webrtc(&remote_addr) {
            // A relayed connection, used for signalling only.
            self.relayed.insert(id);
            return;
        }
        if dial.is_none()
            && self.starvation.shedding()
            && !self.direct.contains_key(&peer)
            && self.direct.len() >= self.peer_limit()
        {
            // Shedding load: no new neighbours (ours are not dialled meanwhile, except
            // on the page's own `connect()`).
            self.swarm.close_connection(id);
            return;
        }
        let dialer = endpoint.is_dialer();
        let connections = self.direct.get_or_default(peer);
        connections.push(DirectConnection { id, dialer, remote_addr: remote_addr.clone() });
        if connections.len() > 1 {
            self.deduplicate(peer);
            return;
        }
        self.emit(Event::PeerConnected { peer: peer.to_string(), remote_addr: remote_addr.to_string(), dialer });
        // Which path ICE chose (direct host or reflexive, or a TURN relay): for stats(),
        // and the `peer-path` event. ICE may still switch to a better pair in the first
        // seconds, so it is asked again twice.
        let mut inputs = self.inputs_tx.clone();
        wasm_bindgen_futures::spawn_local(async move {
            for wait in [0, 3, 12] {
                Delay::new(Duration::from_secs(wait)).await;
                match shoal_webrtc::selected_pair(peer).await {
                    Some(pair) => {
                        if inputs.try_send(Input::Path(peer, pair)).is_err() {
                            return;
                        }
                    }
                    None => return, // closed
                }
            }
        });
        self.open_gossip_link(peer);
        // We greet in the swarm whose member list named the peer; a peer the page asked
        // for may share any of ours. A peer that dialled us greets first, naming its swarm.
        match dial {
            Some(Dial { swarm: Some(swarm) }) => self.open_piece_links(&swarm, peer),
            Some(Dial { swarm: None }) => {
                let swarms: Vec<String> = self.memberships.keys().cloned().collect();
                for swarm in swarms {
                    self.open_piece_links(&swarm, peer);
                }
            }
            None => {}
        }
    }

    /// Both peers dialled each other at once. Both sides keep the connection that the
    /// peer with the smaller PeerId dialled, so they agree without talking. Links on the
    /// one closed end, and are reopened on the one kept.
    fn deduplicate(&mut self, peer: PeerId) {
        let local = *self.swarm.local_peer_id();
        let we_keep_our_dial = local < peer;
        let Some(connections) = self.direct.get(&peer) else { return };
        let keep = connections.iter().find(|c| c.dialer == we_keep_our_dial).or(connections.first()).map(|c| c.id);
        let close: Vec<ConnectionId> = connections.iter().filter(|c| Some(c.id) != keep).map(|c| c.id).collect();
        for id in close {
            tracing::debug!(%peer, "closing duplicate connection");
            self.swarm.close_connection(id);
        }
    }

    fn on_direct_closed(&mut self, peer: PeerId, id: ConnectionId, reason: String) {
        let Some(connections) = self.direct.get_mut(&peer) else { return };
        connections.retain(|c| c.id != id);
        if !connections.is_empty() {
            return;
        }
        self.direct.remove(&peer);
        self.rtt.remove(&peer);
        self.paths.remove(&peer);
        self.forget_peer(peer);
        self.foreign.retain(|(p, _)| *p != peer);
        self.emit(Event::PeerDisconnected { peer: peer.to_string(), reason });
    }

    fn on_membership(&mut self, event: request_response::Event<MembershipRequest, MembershipResponse>) {
        match event {
            request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            } => {
                if self.outcomes.answered(request_id, response == MembershipResponse::Reported) {
                    return;
                }
                let Some((name, membership)) = self.memberships.iter_mut().find(|(_, m)| m.pending == Some(request_id))
                else {
                    return;
                };
                membership.pending = None;
                let name = name.clone();
                match response {
                    MembershipResponse::Joined { members, size } => {
                        self.node.settled();
                        let first = !membership.joined;
                        membership.joined = true;
                        membership.size_hint = if size > 0 { size as usize } else { members.len() + 1 };
                        if let Some(p) = &mut membership.pieces {
                            p.pieces.set_swarm_size(membership.size_hint);
                        }
                        membership.answers = membership.answers.saturating_add(1);
                        membership.sample = members.clone();
                        membership.redial = Some((now() + REDIAL_AFTER, 0));
                        if first {
                            self.emit(Event::Joined { swarm: name.clone(), members: members.len() });
                        }
                        self.dial_members(&name, members);
                    }
                    MembershipResponse::Refused { reason } => {
                        self.emit(Event::Refused { what: format!("join {name}"), reason: reason.to_string() });
                        // Another node may have room.
                        if reason == shoal_proto::RefusalReason::NodeFull
                            && self.node.has_alternatives()
                            && self.node.connected
                        {
                            let _ = self.swarm.disconnect_peer_id(self.node.peer);
                            self.on_node_lost(now(), "the node is full".into());
                        }
                    }
                    MembershipResponse::Left | MembershipResponse::Reported => {}
                }
            }
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                self.outcomes.answered(request_id, false);
                if let Some(m) = self.memberships.values_mut().find(|m| m.pending == Some(request_id)) {
                    m.pending = None;
                    m.join_retry = Some(now() + JOIN_RETRY);
                }
                tracing::debug!(%error, "membership request failed");
            }
            _ => {}
        }
    }

    fn dial_members(&mut self, swarm: &str, members: Vec<shoal_proto::Member>) {
        let local = *self.swarm.local_peer_id();
        let now = now();
        for member in members {
            let Ok(peer) = member.peer.parse::<PeerId>() else { continue };
            if peer == local || self.is_banned(&peer, now) {
                continue;
            }
            if self.direct.contains_key(&peer) {
                // Connected already (through another swarm, or it dialled us): make sure
                // we talk pieces in this one too.
                if self
                    .memberships
                    .get(swarm)
                    .and_then(|m| m.pieces.as_ref())
                    .is_some_and(|p| !p.dormant.contains(&peer))
                {
                    self.open_piece_links(swarm, peer);
                }
                continue;
            }
            if self.direct.len() >= self.peer_limit() {
                continue;
            }
            let addrs: Vec<Multiaddr> = member
                .addrs
                .iter()
                .filter_map(|a| shoal_webrtc::addr::parse(a).ok())
                .filter(|a| shoal_webrtc::addr::parse_dial_addr(a).is_some_and(|d| d.peer == peer))
                .collect();
            // One address: each would cost a circuit and a handshake. Prefer the one
            // through the node we hold a connection to.
            let node = self.node.addr.to_string();
            let Some(addr) = addrs.iter().find(|a| a.to_string().starts_with(&node)).or(addrs.first()).cloned() else {
                continue;
            };
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let id = opts.connection_id();
            // `DisconnectedAndNotDialing` refuses when a dial or a relayed connection
            // (the peer dialling us) is already under way: that is not an error.
            if self.swarm.dial(opts).is_ok() {
                self.dials.insert(id, Dial { swarm: Some(swarm.to_owned()) });
            }
        }
    }

    fn refresh_snapshot(&mut self) {
        let mut snapshot = self.snapshot.borrow_mut();
        snapshot.node_connected = self.node.connected;
        snapshot.address = self.node.address.clone();
        snapshot.joined = !self.memberships.is_empty() && self.memberships.values().all(|m| m.joined);
        snapshot.swarms = self.memberships.keys().cloned().collect();
        snapshot.relayed_connections = self.relayed.len();
        snapshot.peer_connections_created = shoal_webrtc::peer_connections_created();
        snapshot.node_reconnects = self.node.connections_made.saturating_sub(1);
        let now = now();
        snapshot.banned_peers = self.banned.values().filter(|until| **until > now).count();
        snapshot.load_shedding = self.starvation.shedding();
        snapshot.timer_late_ms = self.starvation.lateness().as_secs_f64() * 1000.0;
        snapshot.load_shedding_episodes = self.starvation.episodes();
        snapshot.gossip = self.gossip.stats().clone();
        snapshot.connection_outcomes = self.outcomes.total();
        snapshot.connections = self
            .direct
            .iter()
            .flat_map(|(peer, conns)| {
                conns.iter().map(|c| ConnectionInfo {
                    peer: peer.to_string(),
                    remote_addr: c.remote_addr.to_string(),
                    direct: true,
                    dialer: c.dialer,
                    rtt_ms: self.rtt.get(peer).map(|d| d.as_secs_f64() * 1000.0),
                    path: self.paths.get(peer).cloned(),
                })
            })
            .collect();
        snapshot.pieces = self
            .memberships
            .iter()
            .filter_map(|(name, m)| m.pieces.as_ref().map(|p| (name.clone(), p.pieces.stats())))
            .collect();
    }
}

/// Counts a reopen of links to `peer`; false once past [`MAX_REOPENS`] in the window.
fn reopen_allowed(reopens: &mut VecMap<PeerId, (u32, Instant)>, peer: PeerId, now: Instant) -> bool {
    let (count, since) = reopens.get_or_insert_with(peer, || (0, now));
    if now.saturating_since(*since) > REOPEN_WINDOW {
        *count = 0;
        *since = now;
    }
    *count += 1;
    *count <= MAX_REOPENS
}

async fn serve_bulk(peer: PeerId, mut stream: libp2p::Stream, emit: EventSink) {
    let started = now_ms();
    match bulk::receive(&mut stream).await {
        Ok(v) => emit(Event::BulkReceived {
            peer: peer.to_string(),
            bytes: v.bytes,
            intact: v.intact,
            ms: now_ms() - started,
        }),
        Err(e) => emit(Event::Error { message: format!("bulk transfer from {peer}: {e}") }),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Many errors print their source in their own message; don't say it twice.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
