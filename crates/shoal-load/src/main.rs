//! `shoal-load`: many browser-like peers against one signalling node, in one process.
//!
//! Each virtual peer has its own identity and libp2p swarm and does what a page does:
//! dials the node (`/webrtc-direct` or WebSocket, whichever address it is given), asks
//! for a relay reservation, joins a swarm, answers the node's pings, and stays until the
//! run ends (or leaves and comes back, with `--churn-per-min`). Peers start at a steady
//! `--rate`; each one's outcome (joined, refused with a reason, failed, timed out) and
//! timings go to one collector, which prints progress and, at the end, one JSON report.
//! What the node costs (RSS, descriptors, CPU) is read from outside by
//! `tests/bench/node.mjs` (`./scripts/bench.sh node`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport,
    core::{muxing::StreamMuxerBox, upgrade::Version},
    identity::Keypair,
    multiaddr::Protocol,
    noise, ping, relay,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, websocket, yamux,
};
use serde::Serialize;
use shoal_proto::{MembershipRequest, MembershipResponse};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Parser)]
#[command(name = "shoal-load", about = "Browser-like peers against a Shoal node")]
struct Args {
    /// The node's address, ending in `/p2p/<id>`: a `/ws` one or a `/webrtc-direct`
    /// one with its certhash (as `/.well-known/shoal.json` lists them).
    #[arg(long)]
    node: Multiaddr,
    /// Peers to start.
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// New peers per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Swarms the peers are spread over (peer i joins swarm i mod this).
    #[arg(long, default_value_t = 100)]
    swarms: usize,
    /// Seconds to hold every peer after the last one started.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
    /// Seconds a peer may take from dial to join answer before it counts as timed out.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// While holding: this share of the peers leaves (disconnects) per minute, each
    /// replaced by a new peer.
    #[arg(long, default_value_t = 0.0)]
    churn_per_min: f64,
    /// Skip the relay reservation (a page always makes one; this isolates its cost).
    #[arg(long)]
    no_reservation: bool,
    /// Seconds between a peer's pings to the node (pages: 1, their node-liveness check).
    #[arg(long, default_value_t = 1.0)]
    ping_secs: f64,
    /// Local IP for `/webrtc-direct` peers' UDP sockets.
    #[arg(long, default_value = "0.0.0.0")]
    bind_ip: std::net::IpAddr,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay: relay::client::Behaviour,
    ping: ping::Behaviour,
    membership: request_response::json::Behaviour<MembershipRequest, MembershipResponse>,
}

/// How one peer's attempt ended.
#[derive(Debug)]
enum Outcome {
    Joined {
        connect: Duration,
        reserve: Duration,
        join_rtt: Duration,
        total: Duration,
    },
    Refused(String),
    Failed(&'static str, String),
    /// A joined peer lost its node connection before the run ended.
    Dropped(String),
}

#[derive(Debug, Default, Serialize)]
struct Report {
    transport: String,
    peers_started: usize,
    joined: usize,
    held_at_end: usize,
    refused: BTreeMap<String, usize>,
    failed: BTreeMap<String, usize>,
    dropped: usize,
    /// Milliseconds: dial to connection, connection to reservation, join request to
    /// answer, dial to answer.
    connect_ms: Quantiles,
    reserve_ms: Quantiles,
    join_rtt_ms: Quantiles,
    total_ms: Quantiles,
    /// Joins answered per second while the first `--peers` started, from the first
    /// start to the last answer (churn's joins not counted).
    joins_per_sec: f64,
    start_phase_secs: f64,
    /// Failure messages, a few of each kind, to tell a limit from a bug.
    examples: BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize)]
struct Quantiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Quantiles {
    fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Self { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: at(1.0) }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let node_peer = match args.node.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => anyhow::bail!("--node must end in /p2p/<id>"),
    };
    let webrtc = args.node.iter().any(|p| matches!(p, Protocol::WebRTCDirect));
    let transport = if webrtc { "webrtc-direct" } else { "websocket" };
    let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let held = Arc::new(AtomicUsize::new(0));
    let args = Arc::new(args);

    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut report = Report { transport: transport.into(), ..Report::default() };
    let (mut connect, mut reserve, mut join_rtt, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last_progress = Instant::now();
    let mut spawned = 0usize;
    let mut answered = 0usize;
    let mut start_phase_end = None;
    let mut hold_until = None;
    let mut churn_credit = 0.0f64;
    let mut previous_tick = Instant::now();
    let mut last_join = started;
    let mut start_joins = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(outcome) = outcomes.recv() => {
                if matches!(outcome, Outcome::Joined { .. }) && start_phase_end.is_none() {
                    last_join = Instant::now();
                    start_joins += 1;
                }
                record(outcome, &mut report, &mut answered, (&mut connect, &mut reserve, &mut join_rtt, &mut total));
                continue;
            }
        }
        let now = Instant::now();
        let last_tick = std::mem::replace(&mut previous_tick, now);
        // Start peers at the configured rate.
        while spawned < args.peers && started + interval.mul_f64(spawned as f64) <= now {
            spawn_peer(spawned, node_peer, args.clone(), outcomes_tx.clone(), stop.clone(), held.clone())?;
            spawned += 1;
        }
        if spawned == args.peers && start_phase_end.is_none() {
            // The start phase ends when every started peer has an outcome.
            if answered + report.failed.values().sum::<usize>() + report.refused.values().sum::<usize>() >= args.peers {
                start_phase_end = Some(now);
                hold_until = Some(now + Duration::from_secs(args.hold_secs));
                eprintln!(
                    "all {} peers answered after {:.1} s; holding {} s",
                    args.peers,
                    started.elapsed().as_secs_f64(),
                    args.hold_secs
                );
            }
        }
        if let Some(end) = hold_until {
            // Churn: replace a share of the peers per minute.
            churn_credit +=
                args.churn_per_min / 100.0 * args.peers as f64 / 60.0 * now.duration_since(last_tick).as_secs_f64();
            while churn_credit >= 1.0 {
                churn_credit -= 1.0;
                spawn_peer(spawned, node_peer, args.clone(), outcomes_tx.clone(), stop.clone(), held.clone())?;
                spawned += 1;
            }
            if now >= end {
                break;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "{:>6.1} s: started {spawned}, held {}, joined {answered}, refused {}, failed {}",
                started.elapsed().as_secs_f64(),
                held.load(Ordering::Relaxed),
                report.refused.values().sum::<usize>(),
                report.failed.values().sum::<usize>(),
            );
        }
    }
    report.held_at_end = held.load(Ordering::Relaxed);
    report.peers_started = spawned;
    let phase = start_phase_end.map_or(started.elapsed(), |e| e - started);
    report.start_phase_secs = phase.as_secs_f64();
    report.joins_per_sec = start_joins as f64 / (last_join - started).as_secs_f64().max(0.001);
    let _ = stop_tx.send(true);
    // Drain what arrived meanwhile (late drops are not failures of the run).
    while let Ok(outcome) = outcomes.try_recv() {
        record(outcome, &mut report, &mut answered, (&mut connect, &mut reserve, &mut join_rtt, &mut total));
    }
    report.joined = answered;
    report.connect_ms = Quantiles::of(connect);
    report.reserve_ms = Quantiles::of(reserve);
    report.join_rtt_ms = Quantiles::of(join_rtt);
    report.total_ms = Quantiles::of(total);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

type Samples<'a> = (&'a mut Vec<f64>, &'a mut Vec<f64>, &'a mut Vec<f64>, &'a mut Vec<f64>);

fn record(outcome: Outcome, report: &mut Report, answered: &mut usize, samples: Samples<'_>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match outcome {
        Outcome::Joined { connect, reserve, join_rtt, total } => {
            *answered += 1;
            samples.0.push(ms(connect));
            samples.1.push(ms(reserve));
            samples.2.push(ms(join_rtt));
            samples.3.push(ms(total));
        }
        Outcome::Refused(reason) => *report.refused.entry(reason).or_default() += 1,
        Outcome::Failed(kind, message) => {
            *report.failed.entry(kind.into()).or_default() += 1;
            report.examples.entry(kind.into()).or_insert(message);
        }
        Outcome::Dropped(message) => {
            report.dropped += 1;
            report.examples.entry("dropped".into()).or_insert(message);
        }
    }
}

fn spawn_peer(
    index: usize,
    node: PeerId,
    args: Arc<Args>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    stop: watch::Receiver<bool>,
    held: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let swarm = build_swarm(&args)?;
    tokio::spawn(async move {
        let swarm_id = format!("load-{}", index % args.swarms.max(1));
        run_peer(swarm, node, &args, swarm_id, outcomes, stop, held).await;
    });
    Ok(())
}

fn build_swarm(args: &Args) -> anyhow::Result<Swarm<Behaviour>> {
    let keypair = Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();
    let (relay_transport, relay) = relay::client::new(peer_id);
    let noise = noise::Config::new(&keypair).context("noise")?;
    let relayed =
        relay_transport.upgrade(Version::V1Lazy).authenticate(noise.clone()).multiplex(yamux::Config::default());
    let ws = websocket::Config::new(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)))
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default());
    let webrtc = libp2p_webrtc::tokio::Transport::new(
        keypair.clone(),
        libp2p_webrtc::tokio::Certificate::generate(&mut rand_10::rng()).context("certificate")?,
    );
    let transport = relayed
        .or_transport(ws)
        .map(|either, _| match either {
            futures::future::Either::Left((peer, conn)) => (peer, StreamMuxerBox::new(conn)),
            futures::future::Either::Right((peer, conn)) => (peer, StreamMuxerBox::new(conn)),
        })
        .or_transport(webrtc.map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn))))
        .map(|either, _| either.into_inner());
    let transport = libp2p::core::transport::timeout::TransportTimeout::new(transport, Duration::from_secs(20)).boxed();
    let membership = request_response::json::Behaviour::new(
        [(StreamProtocol::new(shoal_proto::MEMBERSHIP_PROTOCOL), ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
    );
    let behaviour = Behaviour {
        relay,
        // Pages ping every second (the node link's liveness check): so do we, by default.
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs_f64(args.ping_secs.max(0.1)))),
        membership,
    };
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::from_secs(3600)),
    );
    if args.node.iter().any(|p| matches!(p, Protocol::WebRTCDirect)) {
        // libp2p-webrtc dials from a listener's socket.
        let local = Multiaddr::from(args.bind_ip).with(Protocol::Udp(0)).with(Protocol::WebRTCDirect);
        swarm.listen_on(local).context("UDP listener")?;
    }
    Ok(swarm)
}

async fn run_peer(
    mut swarm: Swarm<Behaviour>,
    node: PeerId,
    args: &Args,
    swarm_id: String,
    outcomes: mpsc::UnboundedSender<Outcome>,
    mut stop: watch::Receiver<bool>,
    held: Arc<AtomicUsize>,
) {
    let start = Instant::now();
    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout_secs));
    tokio::pin!(deadline);
    let mut connected_at = None;
    let mut reserved_at = None;
    let mut join_sent = None;
    let mut joined = false;
    let mut done = false;
    let report = |outcome| {
        let _ = outcomes.send(outcome);
    };
    if let Err(e) = swarm.dial(args.node.clone()) {
        report(Outcome::Failed("dial", e.to_string()));
        return;
    }
    // Churning peers leave after a random-ish while (by PeerId), replaced by new ones.
    let leave_after = (args.churn_per_min > 0.0).then(|| {
        let minutes = 100.0 / args.churn_per_min;
        let spread = (swarm.local_peer_id().to_bytes().last().copied().unwrap_or(0) as f64 + 1.0) / 256.0;
        Duration::from_secs_f64(60.0 * minutes * spread * 2.0)
    });
    loop {
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            () = &mut deadline, if !done => {
                report(Outcome::Failed("timeout", format!(
                    "no join answer after {} s (connected: {}, reserved: {})",
                    args.timeout_secs, connected_at.is_some(), reserved_at.is_some()
                )));
                return;
            }
            _ = stop.changed() => break,
            () = tokio::time::sleep(leave_after.unwrap_or(Duration::MAX).saturating_sub(start.elapsed())), if joined && leave_after.is_some() => break,
        };
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == node && connected_at.is_none() => {
                connected_at = Some(Instant::now());
                if args.no_reservation {
                    join_sent = Some(Instant::now());
                    let request = MembershipRequest::Join { swarm: swarm_id.clone(), token: None };
                    swarm.behaviour_mut().membership.send_request(&node, request);
                } else if let Err(e) = swarm.listen_on(args.node.clone().with(Protocol::P2pCircuit)) {
                    report(Outcome::Failed("reservation", e.to_string()));
                    return;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(relay::client::Event::ReservationReqAccepted {
                renewal: false,
                ..
            })) => {
                reserved_at = Some(Instant::now());
                join_sent = Some(Instant::now());
                let request = MembershipRequest::Join { swarm: swarm_id.clone(), token: None };
                swarm.behaviour_mut().membership.send_request(&node, request);
            }
            SwarmEvent::ListenerClosed { reason: Err(e), .. } if !done => {
                report(Outcome::Failed("reservation", e.to_string()));
                return;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Membership(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            })) if !done => {
                done = true;
                match response {
                    MembershipResponse::Joined { .. } => {
                        let now = Instant::now();
                        let connected = connected_at.unwrap_or(now);
                        let sent = join_sent.unwrap_or(now);
                        report(Outcome::Joined {
                            connect: connected - start,
                            reserve: reserved_at.map_or(Duration::ZERO, |r| r - connected),
                            join_rtt: now - sent,
                            total: now - start,
                        });
                        joined = true;
                        held.fetch_add(1, Ordering::Relaxed);
                    }
                    MembershipResponse::Refused { reason } => {
                        report(Outcome::Refused(format!("{reason:?}")));
                        return;
                    }
                    MembershipResponse::Left | MembershipResponse::Reported => {}
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Membership(request_response::Event::OutboundFailure {
                error,
                ..
            })) if !done => {
                report(Outcome::Failed("join", error.to_string()));
                return;
            }
            SwarmEvent::OutgoingConnectionError { error, .. } if !done => {
                report(Outcome::Failed("connect", error_chain(&error)));
                return;
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } if peer_id == node => {
                let cause = cause.map_or_else(|| "closed".to_owned(), |c| c.to_string());
                if joined {
                    held.fetch_sub(1, Ordering::Relaxed);
                    report(Outcome::Dropped(cause));
                } else {
                    report(Outcome::Failed("closed", cause));
                }
                return;
            }
            _ => {}
        }
    }
    if joined {
        held.fetch_sub(1, Ordering::Relaxed);
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
