//! The simulated world: origin, viewers, network, and the event loop over virtual time.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use shoal_core::{
    CheckMemo, Delivery, Engine, Instant, Message, Misbehaviour, Output, Publisher, SegmentId, SegmentInfo,
    SegmentRecord, SignedRecord, StreamId,
};

use crate::{
    Report, Scenario,
    queue::{EventQueue, Scheduled},
};

type ViewerId = u32;

/// One segment as the origin publishes it.
struct Published {
    data: Bytes,
    record: Arc<SignedRecord>,
}

/// The HTTP origin and the live stream it publishes.
struct Origin {
    segments: Vec<Published>,
    /// Highest segment published so far (live), or the last one (VOD).
    latest: Option<u64>,
    egress: u64,
}

struct Link {
    /// Messages on a stream arrive in order: nothing arrives before these.
    last_data: Instant,
    last_control: Instant,
    /// The other end's access link, copied here: sending then touches only the sender's
    /// state (at 10,000 viewers, every other viewer's state is a cache miss away).
    peer_latency: Duration,
    peer_loss: f64,
    peer_down_bps: u64,
}

/// A viewer's open links, by the viewer at the other end. The ids sit apart from the
/// links, sorted: every delivered message checks that its link still exists, and a
/// search over a few cache lines of ids beats a B-tree's pointer chase when tens of
/// thousands of viewers' state cannot stay cached.
#[derive(Default)]
struct Links {
    peers: Vec<ViewerId>,
    links: Vec<Link>,
}

impl Links {
    fn contains(&self, peer: ViewerId) -> bool {
        self.peers.binary_search(&peer).is_ok()
    }

    fn get_mut(&mut self, peer: ViewerId) -> Option<&mut Link> {
        let i = self.peers.binary_search(&peer).ok()?;
        Some(&mut self.links[i])
    }

    fn insert(&mut self, peer: ViewerId, link: Link) {
        match self.peers.binary_search(&peer) {
            Ok(i) => self.links[i] = link,
            Err(i) => {
                self.peers.insert(i, peer);
                self.links.insert(i, link);
            }
        }
    }

    fn remove(&mut self, peer: ViewerId) -> bool {
        let Ok(i) = self.peers.binary_search(&peer) else { return false };
        self.peers.remove(i);
        self.links.remove(i);
        true
    }

    fn len(&self) -> usize {
        self.peers.len()
    }

    /// Closes every link; returns the viewers at the other ends, in order.
    fn close_all(&mut self) -> Vec<ViewerId> {
        self.links.clear();
        std::mem::take(&mut self.peers)
    }
}

impl Link {
    fn to(peer: &Viewer) -> Self {
        Self {
            last_data: Instant::ZERO,
            last_control: Instant::ZERO,
            peer_latency: peer.latency,
            peer_loss: peer.loss,
            peer_down_bps: peer.down_bps,
        }
    }
}

struct Player {
    joined_at: Instant,
    /// First segment to play, once known.
    first: Option<u64>,
    /// Segment playing now and when it started; `None` before the first frame.
    playing: Option<(u64, Instant)>,
    stalled_since: Option<Instant>,
    delivered: BTreeSet<u64>,
    /// Segments handed to the engine as wants, with the deadline given.
    wanted: BTreeMap<u64, Instant>,
    /// Highest segment the viewer's playlist lists.
    known_latest: Option<u64>,
    start_delay: Option<Duration>,
    stalls: u64,
    stall_time: Duration,
    latency_sum: f64,
    latency_samples: u64,
    failed: u64,
}

struct Viewer {
    engine: Engine<ViewerId>,
    alive: bool,
    malicious: bool,
    slow: bool,
    up_bps: u64,
    down_bps: u64,
    latency: Duration,
    loss: f64,
    /// Player randomness (start position, playlist reload phase): its own stream, so a
    /// run with peer-to-peer off sees the same viewers behave the same.
    rng: ChaCha8Rng,
    /// When it joined and left (for the bound: what its uplink could have carried).
    joined_at: Option<Instant>,
    left_at: Option<Instant>,
    uplink_free: Instant,
    downlink_free: Instant,
    links: Links,
    connecting: BTreeSet<ViewerId>,
    wake_at: Option<Instant>,
    http: BTreeSet<u64>,
    player: Player,
    /// Malicious only: honest viewers this one sent corrupt data or a forged record to.
    corrupted: BTreeSet<ViewerId>,
    /// Malicious only: honest viewers that cut this one off for it.
    cut_off_by: BTreeSet<ViewerId>,
    /// Viewers this one cut off; it never connects to them again.
    blocked: BTreeSet<ViewerId>,
}

enum Event {
    Publish(u64),
    Join(ViewerId),
    Churn,
    Connect(ViewerId, ViewerId),
    Deliver {
        from: ViewerId,
        to: ViewerId,
        message: Message,
    },
    Http {
        viewer: ViewerId,
        id: u64,
        body: Bytes,
    },
    /// Bulk bytes reach a viewer's access link: they queue there, in arrival order, for
    /// the downlink (HTTP bodies at the origin's per-request rate).
    Downlink {
        to: ViewerId,
        inbound: Inbound,
    },
    Wake(ViewerId, Instant),
    Playlist(ViewerId),
    PlayerTick(ViewerId),
    Maintain(ViewerId),
}

enum Inbound {
    Peer { from: ViewerId, message: Message, size: u64 },
    Http { id: u64, body: Bytes, rate: u64 },
}

struct World {
    scenario: Scenario,
    /// Network randomness (loss, neighbour choice): differs between a run and its
    /// HTTP-only baseline, which exchange different messages.
    rng: ChaCha8Rng,
    /// Churn: which viewer leaves when, the same in both runs.
    churn_rng: ChaCha8Rng,
    now: Instant,
    queue: EventQueue<Event>,
    seq: u64,
    origin: Origin,
    stream: StreamId,
    publisher_key: shoal_core::PublisherKey,
    viewers: Vec<Viewer>,
    live: Vec<ViewerId>,
    report: Report,
    segment_size: u64,
    end: Instant,
    /// `SHOAL_SIM_MESSAGES=<segment>`: print every message about it (debugging).
    trace_messages: Option<u64>,
    /// `SHOAL_SIM_UPLOAD_SERIES=1`: bulk bytes sent per second, printed at the end.
    upload_series: Option<BTreeMap<u64, u64>>,
    /// `SHOAL_SIM_VIEWER=<id>`: print that viewer's HTTP fetches and wants (debugging).
    trace_viewer: Option<ViewerId>,
    /// Every viewer's chunks are slices of the origin's buffers: each is hashed once.
    checks: Arc<CheckMemo>,
    /// Messages delivered, by [`MESSAGE_KINDS`] (a map lookup per message costs a
    /// 10,000-viewer run seconds).
    message_counts: [u64; MESSAGE_KINDS.len()],
}

/// Runs `scenario` to the end and reports what happened (without the HTTP-only
/// baseline: see [`crate::run`]).
pub fn run_one(scenario: &Scenario) -> Report {
    let started = std::time::Instant::now();
    let rss_before = resident_bytes();
    let mut world = World::new(scenario.clone());
    world.start();
    while let Some(scheduled) = world.queue.pop() {
        if scheduled.at > world.end {
            break;
        }
        world.now = scheduled.at;
        world.handle(scheduled.event);
    }
    let mut report = world.finish();
    report.wall_seconds = started.elapsed().as_secs_f64();
    let rss_after = resident_bytes();
    report.memory_per_viewer_bytes = rss_after.saturating_sub(rss_before) / report.viewers_total.max(1) as u64;
    report
}

/// Resident set size of this process (Linux), for the memory estimate.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

impl World {
    fn new(scenario: Scenario) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed);
        let stream = StreamId::from_name("sim/live");
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        let publisher = Publisher::from_secret(secret);
        let segment_size = scenario.bitrate_bps * scenario.segment_duration.as_millis() as u64 / 8000;
        let count = if scenario.live {
            (scenario.duration.as_secs_f64() / scenario.segment_duration.as_secs_f64()).ceil() as u64 + 1
        } else {
            scenario.vod_segments
        };
        let segments = (0..count)
            .map(|n| {
                let mut data = vec![0u8; segment_size as usize];
                let mut segment_rng =
                    ChaCha8Rng::seed_from_u64(scenario.seed ^ (n.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
                segment_rng.fill(&mut data[..]);
                let record = publisher.sign(SegmentRecord::for_data(stream, SegmentId(n), &data, scenario.chunk_size));
                Published { data: Bytes::from(data), record: Arc::new(record) }
            })
            .collect();
        let end = Instant::ZERO + scenario.duration;
        let churn_rng = ChaCha8Rng::seed_from_u64(scenario.seed ^ 0xC4A2_11E5_0000_0001);
        Self {
            publisher_key: publisher.public_key(),
            scenario,
            rng,
            churn_rng,
            now: Instant::ZERO,
            queue: EventQueue::default(),
            seq: 0,
            origin: Origin { segments, latest: None, egress: 0 },
            stream,
            viewers: Vec::new(),
            live: Vec::new(),
            report: Report::default(),
            segment_size,
            end,
            trace_messages: std::env::var("SHOAL_SIM_MESSAGES").ok().and_then(|v| v.parse().ok()),
            upload_series: std::env::var("SHOAL_SIM_UPLOAD_SERIES").ok().map(|_| BTreeMap::new()),
            trace_viewer: std::env::var("SHOAL_SIM_VIEWER").ok().and_then(|v| v.parse().ok()),
            checks: Arc::default(),
            message_counts: [0; MESSAGE_KINDS.len()],
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled { at, seq: self.seq, event });
    }

    fn start(&mut self) {
        let s = self.scenario.clone();
        if s.live {
            // Segment n covers media [n·d, (n+1)·d) and is published when complete.
            // A few segments exist before the first viewer arrives.
            let d = s.segment_duration;
            for n in 0..self.origin.segments.len() as u64 {
                let at = Instant::ZERO + d * (n as u32 + 1);
                self.schedule(at.max(Instant::ZERO), Event::Publish(n));
            }
        } else {
            self.origin.latest = Some(self.origin.segments.len() as u64 - 1);
        }
        let join_start = if s.live { s.segment_duration * (s.live_sync_segments as u32 + 1) } else { Duration::ZERO };
        for i in 0..s.viewers {
            let offset = s.join_over.mul_f64(i as f64 / s.viewers.max(1) as f64);
            let id = self.add_viewer();
            self.schedule(Instant::ZERO + join_start + offset, Event::Join(id));
        }
        if s.churn_per_minute > 0.0 {
            self.schedule(Instant::ZERO + join_start + s.join_over + Duration::from_secs(6), Event::Churn);
        }
    }

    fn add_viewer(&mut self) -> ViewerId {
        let id = self.viewers.len() as ViewerId;
        let s = &self.scenario;
        // Everything about a viewer comes from its own stream, seeded by the run's seed
        // and its number: the HTTP-only baseline gets the very same viewers.
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(id));
        let slow = rng.gen_bool(s.slow_fraction.clamp(0.0, 1.0));
        let malicious = rng.gen_bool(s.malicious_fraction.clamp(0.0, 1.0));
        let up = s.upload.pick(rng.r#gen()).bps(s.bitrate_bps);
        let down = s.download.pick(rng.r#gen()).bps(s.bitrate_bps);
        let divide = if slow { s.slow_factor.max(1) } else { 1 };
        let latency = Duration::from_millis(rng.gen_range(s.latency_ms.0..=s.latency_ms.1.max(s.latency_ms.0)));
        let (loss_low, loss_high) = (s.loss.0.clamp(0.0, 1.0), s.loss.1.clamp(0.0, 1.0));
        let loss = if loss_high > loss_low { rng.gen_range(loss_low..=loss_high) } else { loss_low };
        let mut engine = Engine::new(s.engine.clone(), self.stream, self.publisher_key, rng.r#gen(), self.now);
        engine.share_checks(self.checks.clone());
        self.viewers.push(Viewer {
            engine,
            alive: false,
            malicious,
            slow,
            up_bps: (up / divide).max(1),
            down_bps: down.max(1),
            latency,
            loss,
            rng,
            joined_at: None,
            left_at: None,
            uplink_free: Instant::ZERO,
            downlink_free: Instant::ZERO,
            links: Links::default(),
            connecting: BTreeSet::new(),
            wake_at: None,
            http: BTreeSet::new(),
            player: Player {
                joined_at: Instant::ZERO,
                first: None,
                playing: None,
                stalled_since: None,
                delivered: BTreeSet::new(),
                wanted: BTreeMap::new(),
                known_latest: None,
                start_delay: None,
                stalls: 0,
                stall_time: Duration::ZERO,
                latency_sum: 0.0,
                latency_samples: 0,
                failed: 0,
            },
            corrupted: BTreeSet::new(),
            cut_off_by: BTreeSet::new(),
            blocked: BTreeSet::new(),
        });
        if malicious {
            self.report.malicious_viewers += 1;
        }
        self.report.viewers_total += 1;
        id
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Publish(n) => {
                self.origin.latest = Some(n);
                self.report.segments_published = n + 1;
            }
            Event::Join(id) => self.join(id),
            Event::Churn => self.churn(),
            Event::Connect(a, b) => self.connect(a, b),
            Event::Deliver { from, to, message } => {
                if self.viewers[to as usize].alive && self.viewers[to as usize].links.contains(from) {
                    self.report.messages += 1;
                    self.message_counts[kind_of(&message)] += 1;
                    let now = self.now;
                    let v = &mut self.viewers[to as usize];
                    v.engine.set_uplink(v.uplink_free.saturating_since(now), v.up_bps as f64 / 8.0);
                    v.engine.handle_message(from, message, now);
                    self.after_input(to);
                }
            }
            Event::Http { viewer, id, body } => {
                let v = &mut self.viewers[viewer as usize];
                if v.alive && v.http.remove(&id) {
                    let now = self.now;
                    if self.trace_viewer == Some(viewer) {
                        eprintln!("viewer t={:.3} http-done #{id} bytes={}", now.as_secs_f64(), body.len());
                    }
                    v.engine.set_uplink(v.uplink_free.saturating_since(now), v.up_bps as f64 / 8.0);
                    v.engine.http_complete(id, body, now);
                    self.after_input(viewer);
                }
            }
            Event::Wake(id, at) => {
                let v = &mut self.viewers[id as usize];
                if v.alive && v.wake_at == Some(at) {
                    v.wake_at = None;
                    let now = self.now;
                    v.engine.set_uplink(v.uplink_free.saturating_since(now), v.up_bps as f64 / 8.0);
                    v.engine.handle_timeout(now);
                    self.after_input(id);
                }
            }
            Event::Downlink { to, inbound } => {
                let now = self.now;
                let v = &mut self.viewers[to as usize];
                let (size, rate) = match &inbound {
                    Inbound::Peer { size, .. } => (*size, v.down_bps),
                    Inbound::Http { body, rate, .. } => (body.len() as u64, *rate),
                };
                // The link is busy for the bytes at its own speed; a response the origin
                // sends slower than that takes longer without holding up the rest of
                // the link (a hedge, or peer data, passes it as on a real shared link).
                let start = now.max(v.downlink_free);
                v.downlink_free = start + transfer_time(size, v.down_bps);
                let done = v.downlink_free.max(now + transfer_time(size, rate));
                match inbound {
                    Inbound::Peer { from, message, .. } => self.schedule(done, Event::Deliver { from, to, message }),
                    Inbound::Http { id, body, .. } => self.schedule(done, Event::Http { viewer: to, id, body }),
                }
            }
            Event::Playlist(id) => self.refresh_playlist(id),
            Event::PlayerTick(id) => self.player_tick(id),
            Event::Maintain(id) => self.maintain(id),
        }
    }

    // ---- membership and connections -----------------------------------------------

    fn join(&mut self, id: ViewerId) {
        let now = self.now;
        let swarm = self.live.len() + 1;
        let v = &mut self.viewers[id as usize];
        v.alive = true;
        v.joined_at = Some(now);
        v.player.joined_at = now;
        v.engine.set_swarm_size(swarm);
        self.live.push(id);
        self.refresh_playlist(id);
        self.find_neighbours(id);
        let maintain = now + Duration::from_secs(5);
        self.schedule(maintain, Event::Maintain(id));
    }

    fn leave(&mut self, id: ViewerId) {
        let v = &mut self.viewers[id as usize];
        if !v.alive {
            return;
        }
        v.alive = false;
        v.left_at = Some(self.now);
        let neighbours = v.links.close_all();
        self.live.retain(|x| *x != id);
        let now = self.now;
        for n in neighbours {
            let other = &mut self.viewers[n as usize];
            if other.links.remove(id) {
                other.engine.peer_disconnected(id, now);
                self.after_input(n);
            }
        }
    }

    fn churn(&mut self) {
        let s = self.scenario.clone();
        let period = 6.0;
        let expected = s.churn_per_minute * s.viewers as f64 * period / 60.0;
        let mut count = expected.floor() as usize;
        if self.churn_rng.gen_bool(expected.fract().clamp(0.0, 1.0)) {
            count += 1;
        }
        for _ in 0..count {
            if let Some(&victim) = self.live.choose(&mut self.churn_rng) {
                self.leave(victim);
            }
            let id = self.add_viewer();
            let now = self.now;
            self.schedule(now, Event::Join(id));
        }
        let next = self.now + Duration::from_secs(6);
        self.schedule(next, Event::Churn);
    }

    fn find_neighbours(&mut self, id: ViewerId) {
        let want = self.scenario.neighbours;
        let v = &self.viewers[id as usize];
        let have = v.links.len() + v.connecting.len();
        if have >= want {
            return;
        }
        let mut candidates: Vec<ViewerId> = self
            .live
            .iter()
            .copied()
            .filter(|c| *c != id && !v.links.contains(*c) && !v.connecting.contains(c) && !v.blocked.contains(c))
            .filter(|c| !self.viewers[*c as usize].blocked.contains(&id))
            .filter(|c| self.viewers[*c as usize].links.len() < self.scenario.max_connections)
            .collect();
        candidates.shuffle(&mut self.rng);
        candidates.truncate(want - have);
        for c in candidates {
            // A WebRTC handshake through the relay: a few round trips.
            let rtt = (self.viewers[id as usize].latency + self.viewers[c as usize].latency) * 2;
            let at = self.now + rtt * 3 + Duration::from_millis(50);
            self.viewers[id as usize].connecting.insert(c);
            self.schedule(at, Event::Connect(id, c));
        }
        // Let the engine plan with the whole swarm's size, as the node reports it.
        let swarm = self.live.len();
        self.viewers[id as usize].engine.set_swarm_size(swarm);
    }

    fn connect(&mut self, a: ViewerId, b: ViewerId) {
        self.viewers[a as usize].connecting.remove(&b);
        let (va, vb) = (&self.viewers[a as usize], &self.viewers[b as usize]);
        if !va.alive || !vb.alive || va.links.contains(b) || vb.links.len() >= self.scenario.max_connections {
            return;
        }
        let now = self.now;
        let (to_b, to_a) = (Link::to(&self.viewers[b as usize]), Link::to(&self.viewers[a as usize]));
        self.viewers[a as usize].links.insert(b, to_b);
        self.viewers[b as usize].links.insert(a, to_a);
        self.viewers[a as usize].engine.peer_connected(b, now);
        self.after_input(a);
        self.viewers[b as usize].engine.peer_connected(a, now);
        self.after_input(b);
    }

    fn maintain(&mut self, id: ViewerId) {
        if !self.viewers[id as usize].alive {
            return;
        }
        if self.viewers[id as usize].links.len() < self.scenario.neighbours / 2 {
            self.find_neighbours(id);
        }
        let swarm = self.live.len();
        self.viewers[id as usize].engine.set_swarm_size(swarm);
        let next = self.now + Duration::from_secs(5);
        self.schedule(next, Event::Maintain(id));
    }

    // ---- the player -----------------------------------------------------------------

    fn refresh_playlist(&mut self, id: ViewerId) {
        let now = self.now;
        let d = self.scenario.segment_duration;
        let Some(latest) = self.origin.latest else {
            self.schedule(now + d, Event::Playlist(id));
            return;
        };
        let v = &mut self.viewers[id as usize];
        if !v.alive {
            return;
        }
        // The origin is a request away.
        let first_listed = if self.scenario.live { latest.saturating_sub(8) } else { 0 };
        let known = v.player.known_latest;
        if known != Some(latest) {
            // The whole playlist, as a player hands it over (it is the engine's window).
            let infos: Vec<SegmentInfo> = (first_listed..=latest)
                .map(|n| SegmentInfo {
                    id: SegmentId(n),
                    record: Some(self.origin.segments[n as usize].record.clone()),
                })
                .collect();
            v.engine.update_playlist(infos, now);
            v.player.known_latest = Some(latest);
        }
        if v.player.first.is_none() {
            v.player.first = Some(if self.scenario.live {
                latest.saturating_sub(self.scenario.live_sync_segments - 1)
            } else {
                // VOD viewers start anywhere in the first half.
                v.rng.gen_range(0..=latest / 2)
            });
        }
        self.after_input(id);
        self.update_wants(id);
        if self.scenario.live {
            // hls.js reloads a live playlist every target duration; phases differ.
            let jitter = Duration::from_millis(self.viewers[id as usize].rng.gen_range(0..200));
            self.schedule(now + d + jitter, Event::Playlist(id));
        }
    }

    /// Hands the engine every segment in the buffer window, with the time playback
    /// reaches it as its deadline.
    fn update_wants(&mut self, id: ViewerId) {
        let now = self.now;
        let d = self.scenario.segment_duration;
        let max_buffer = self.scenario.max_buffer;
        let v = &mut self.viewers[id as usize];
        let (Some(first), Some(latest)) = (v.player.first, v.player.known_latest) else { return };
        let (current, current_start) = match v.player.playing {
            Some((segment, started)) => (segment, Some(started)),
            None => (first, None),
        };
        let window = (max_buffer.as_secs_f64() / d.as_secs_f64()).ceil() as u64;
        let last = latest.min(current + window).min(self.origin.segments.len() as u64 - 1);
        let mut changed = false;
        for n in current..=last {
            if v.player.delivered.contains(&n) {
                continue;
            }
            let deadline = match (current_start, v.player.stalled_since) {
                // Playing: playback reaches n when the segments before it have played.
                (Some(started), None) => started + d * (n - current) as u32,
                // Stalled on `current`: everything waits for it.
                (Some(_), Some(_)) => now + d * (n - current).saturating_sub(1) as u32,
                // Not started: the first segment is due now, the rest follow.
                (None, _) => now + d * (n - current) as u32,
            };
            if v.player.wanted.get(&n) != Some(&deadline) {
                if self.trace_viewer == Some(id) {
                    eprintln!("viewer t={:.3} want seg={n} deadline={:.3}", now.as_secs_f64(), deadline.as_secs_f64());
                }
                v.player.wanted.insert(n, deadline);
                v.engine.want(SegmentId(n), deadline, now);
                changed = true;
            }
        }
        if changed {
            self.after_input(id);
        }
    }

    fn on_delivery(&mut self, id: ViewerId, delivery: Delivery) {
        let now = self.now;
        let n = delivery.segment.0;
        // Check what reaches the player against what the origin published.
        let truth = &self.origin.segments[n as usize].data;
        let mut offset = 0usize;
        let mut intact = delivery.size == truth.len() as u64;
        for chunk in &delivery.chunks {
            let expected = truth.get(offset..offset + chunk.len());
            let same = expected.is_some_and(|e| (e.as_ptr() == chunk.as_ptr()) || e == &chunk[..]);
            intact &= same;
            offset += chunk.len();
        }
        if !intact || offset as u64 != delivery.size {
            self.report.corrupt_deliveries += 1;
            self.report.corrupt_bytes_delivered += delivery.size;
        }
        if std::env::var("SHOAL_SIM_TRACE").ok().is_some_and(|v| v == "all" || v.parse::<u64>().ok() == Some(n)) {
            let deadline = self.viewers[id as usize].player.wanted.get(&n).copied();
            eprintln!(
                "t={:.3} viewer={id} seg={n} peers={} http={} deadline={:?} published={:.3}",
                now.as_secs_f64(),
                delivery.from_peers,
                delivery.from_http,
                deadline.map(|d| d.as_secs_f64()),
                (n + 1) as f64 * self.scenario.segment_duration.as_secs_f64()
            );
        }
        self.report.segments_delivered += 1;
        self.report.bytes_from_peers += delivery.from_peers;
        self.report.bytes_from_http += delivery.from_http;
        let v = &mut self.viewers[id as usize];
        v.player.delivered.insert(n);
        v.player.wanted.remove(&n);
        match v.player.playing {
            None if Some(n) == v.player.first => {
                // First frame.
                v.player.playing = Some((n, now));
                v.player.start_delay = Some(now.saturating_since(v.player.joined_at));
                let end = now + self.scenario.segment_duration;
                self.schedule(end, Event::PlayerTick(id));
            }
            Some((current, _)) if v.player.stalled_since.is_some() && n == current => {
                let since = v.player.stalled_since.take().unwrap_or(now);
                v.player.stall_time += now.saturating_since(since);
                v.player.playing = Some((n, now));
                let end = now + self.scenario.segment_duration;
                self.schedule(end, Event::PlayerTick(id));
            }
            _ => {}
        }
        self.update_wants(id);
    }

    /// Playback reached the end of the segment it was playing.
    fn player_tick(&mut self, id: ViewerId) {
        let now = self.now;
        let d = self.scenario.segment_duration;
        let v = &mut self.viewers[id as usize];
        if !v.alive {
            return;
        }
        let Some((current, _)) = v.player.playing else { return };
        if self.scenario.live {
            // Media time at the playhead vs capture time ("now").
            let media_time = d.as_secs_f64() * (current + 1) as f64;
            v.player.latency_sum += now.as_secs_f64() - media_time;
            v.player.latency_samples += 1;
        }
        let next = current + 1;
        if next >= self.origin.segments.len() as u64 {
            return;
        }
        v.player.delivered.remove(&current);
        if v.player.delivered.contains(&next) {
            v.player.playing = Some((next, now));
            self.schedule(now + d, Event::PlayerTick(id));
        } else {
            v.player.playing = Some((next, now));
            v.player.stalled_since = Some(now);
            v.player.stalls += 1;
            if std::env::var("SHOAL_SIM_STALLS").is_ok() {
                eprintln!(
                    "stall t={:.3} viewer={id} seg={next} wanted_deadline={:?} slow={} downlink_free={:.3}",
                    now.as_secs_f64(),
                    v.player.wanted.get(&next).map(|d| d.as_secs_f64()),
                    v.slow,
                    v.downlink_free.as_secs_f64()
                );
            }
        }
        self.update_wants(id);
    }

    // ---- engine output ----------------------------------------------------------------

    /// Carries out everything the engine asked for after an input, and re-arms its timer.
    fn after_input(&mut self, id: ViewerId) {
        while let Some(action) = self.viewers[id as usize].engine.poll_output() {
            match action {
                Output::Send { peer, message } => self.send(id, peer, message),
                Output::HttpFetch { id: request, segment, range } => {
                    if self.trace_viewer == Some(id) {
                        eprintln!(
                            "viewer t={:.3} http-start #{request} seg={} range={range:?}",
                            self.now.as_secs_f64(),
                            segment.0
                        );
                    }
                    self.http_fetch(id, request, segment, range)
                }
                Output::CancelHttp { id: request } => {
                    self.viewers[id as usize].http.remove(&request);
                }
                Output::Deliver(delivery) => self.on_delivery(id, delivery),
                Output::Failed { .. } => {
                    self.report.segments_failed += 1;
                    self.viewers[id as usize].player.failed += 1;
                }
                Output::Disconnect { peer, reason } => self.disconnect(id, peer, reason),
                Output::Event(_) => {}
            }
        }
        let v = &mut self.viewers[id as usize];
        if let Some(at) = v.engine.poll_timeout()
            && v.wake_at != Some(at)
        {
            v.wake_at = Some(at);
            let at = at.max(self.now);
            self.schedule(at, Event::Wake(id, at));
            self.viewers[id as usize].wake_at = Some(at);
        }
    }

    fn send(&mut self, from: ViewerId, to: ViewerId, mut message: Message) {
        let now = self.now;
        if let Some(traced) = self.trace_messages {
            let segment = match &message {
                Message::Have { segment }
                | Message::Fetching { segment, .. }
                | Message::HaveChunks { segment, .. }
                | Message::Dropped { segment }
                | Message::Request { segment, .. }
                | Message::Data { segment, .. } => Some(*segment),
                _ => None,
            };
            if segment == Some(SegmentId(traced)) || matches!(message, Message::Busy { .. } | Message::Absent { .. }) {
                let kind = format!("{message:?}");
                let kind: String = kind.chars().take(60).collect();
                eprintln!("msg t={:.3} {from}->{to} {kind}", now.as_secs_f64());
            }
        }
        if !self.viewers[from as usize].links.contains(to) {
            return;
        }
        if self.viewers[from as usize].malicious {
            message = self.corrupt(from, to, message);
        }
        let size = 16
            + message.payload_len() as u64
            + if let Message::Record { record } = &message {
                record.record.chunk_hashes.len() as u64 * 32 + 100
            } else {
                0
            };
        // Data (chunks, records) and control messages travel on separate streams, as in
        // the browser: SCTP interleaves them, so a small announcement or `Busy` never
        // waits behind megabytes of chunks. Data serialises on both access links.
        let bulk = matches!(message, Message::Data { .. } | Message::Record { .. });
        if bulk && let Some(series) = self.upload_series.as_mut() {
            let second = now.as_micros() / 1_000_000;
            let slot = series.entry(second).or_default();
            *slot += size;
        }
        let v = &mut self.viewers[from as usize];
        let (latency, loss, up_bps) = (v.latency, v.loss, v.up_bps);
        let departure = if bulk {
            let departure = now.max(v.uplink_free) + transfer_time(size, up_bps);
            v.uplink_free = departure;
            departure
        } else {
            v.uplink_free = v.uplink_free.max(now) + transfer_time(size, up_bps);
            now + transfer_time(size, up_bps)
        };
        let Some(link) = v.links.get_mut(to) else { return };
        let mut arrival = departure + latency + link.peer_latency;
        let loss = 1.0 - (1.0 - loss) * (1.0 - link.peer_loss);
        if loss > 0.0 && self.rng.gen_bool(loss.clamp(0.0, 1.0)) {
            arrival = arrival + self.scenario.retransmit_delay;
        }
        if !bulk {
            arrival = arrival + transfer_time(size, link.peer_down_bps);
        }
        // Ordered delivery per stream of a link.
        let last = if bulk { &mut link.last_data } else { &mut link.last_control };
        arrival = arrival.max(*last);
        *last = arrival;
        if bulk {
            self.schedule(arrival, Event::Downlink { to, inbound: Inbound::Peer { from, message, size } });
        } else {
            self.schedule(arrival, Event::Deliver { from, to, message });
        }
    }

    /// What a malicious viewer does to its uploads: flips a byte of every chunk, and
    /// breaks the signature of every record.
    fn corrupt(&mut self, from: ViewerId, to: ViewerId, message: Message) -> Message {
        let honest = !self.viewers[to as usize].malicious;
        match message {
            Message::Data { id, segment, chunk, data } => {
                let mut bad = data.to_vec();
                if let Some(b) = bad.first_mut() {
                    *b ^= 0x5a;
                }
                if honest {
                    self.viewers[from as usize].corrupted.insert(to);
                }
                Message::Data { id, segment, chunk, data: Bytes::from(bad) }
            }
            Message::Record { record } => {
                let mut forged = (*record).clone();
                forged.signature[0] ^= 1;
                let record = Arc::new(forged);
                if honest {
                    self.viewers[from as usize].corrupted.insert(to);
                }
                Message::Record { record }
            }
            other => other,
        }
    }

    fn disconnect(&mut self, by: ViewerId, peer: ViewerId, reason: Misbehaviour) {
        self.report.bans += 1;
        if self.viewers[peer as usize].malicious
            && matches!(reason, Misbehaviour::CorruptChunk | Misbehaviour::ForgedRecord)
        {
            self.viewers[peer as usize].cut_off_by.insert(by);
        }
        let now = self.now;
        self.viewers[by as usize].blocked.insert(peer);
        self.viewers[by as usize].links.remove(peer);
        if self.viewers[peer as usize].links.remove(by) {
            self.viewers[peer as usize].engine.peer_disconnected(by, now);
            self.after_input(peer);
        }
    }

    fn http_fetch(&mut self, viewer: ViewerId, id: u64, segment: SegmentId, range: Option<(u64, u64)>) {
        let now = self.now;
        let data = &self.origin.segments[segment.0 as usize].data;
        let (start, end) = range.unwrap_or((0, data.len() as u64));
        let end = end.min(data.len() as u64);
        let start = start.min(end);
        let body = data.slice(start as usize..end as usize);
        let size = body.len() as u64;
        self.origin.egress += size;
        let v = &mut self.viewers[viewer as usize];
        let mut rate = v.down_bps.min(self.scenario.origin_bps);
        let jitter = 0.5 - 0.5 * (1.0 - v.rng.r#gen::<f64>()).ln();
        let mut ttfb = self.scenario.origin_ttfb.mul_f64(jitter);
        if v.rng.gen_bool(self.scenario.origin_slow_fraction.clamp(0.0, 1.0)) {
            let factor = self.scenario.origin_slow_factor.max(1);
            ttfb *= factor;
            rate = (rate / u64::from(factor)).max(1);
        }
        let first_byte = now + ttfb + v.latency * 2;
        v.http.insert(id);
        self.schedule(first_byte, Event::Downlink { to: viewer, inbound: Inbound::Http { id, body, rate } });
    }

    // ---- the report ---------------------------------------------------------------------

    fn finish(mut self) -> Report {
        if let Some(series) = &self.upload_series {
            let capacity: f64 = self.viewers.iter().filter(|v| v.alive).map(|v| v.up_bps as f64 / 8.0).sum();
            for (second, bytes) in series {
                eprintln!("upload t={second} bytes={bytes} share_of_final_capacity={:.2}", *bytes as f64 / capacity);
            }
        }
        let mut report = std::mem::take(&mut self.report);
        for (kind, count) in MESSAGE_KINDS.iter().zip(self.message_counts) {
            if count > 0 {
                report.messages_by_kind.insert(kind, count);
            }
        }
        report.segment_bytes = self.segment_size;
        let total = report.bytes_from_peers + report.bytes_from_http;
        report.offload = if total == 0 { 0.0 } else { report.bytes_from_peers as f64 / total as f64 };
        let n = self.scenario.viewers.max(1) as f64;
        report.offload_ceiling = (n - 1.0) / n;
        // The bound: what honest uplinks could carry while present, over what players
        // needed.
        let end = self.end;
        let (mut capacity, mut uploaded, mut up_sum, mut counted) = (0.0f64, 0u64, 0.0f64, 0usize);
        for v in self.viewers.iter().filter(|v| !v.malicious) {
            let Some(joined) = v.joined_at else { continue };
            let left = v.left_at.unwrap_or(end);
            capacity += v.up_bps as f64 / 8.0 * left.saturating_since(joined).as_secs_f64();
            uploaded += v.engine.stats().bytes_uploaded;
            up_sum += v.up_bps as f64;
            counted += 1;
        }
        let needed = (report.segments_delivered * self.segment_size) as f64;
        report.offload_bound = if needed > 0.0 { (capacity / needed).min(report.offload_ceiling) } else { 0.0 };
        report.offload_vs_bound = if report.offload_bound > 0.0 { report.offload / report.offload_bound } else { 0.0 };
        report.upload_utilisation = if capacity > 0.0 { uploaded as f64 / capacity } else { 0.0 };
        report.upload_bitrate_ratio = up_sum / counted.max(1) as f64 / self.scenario.bitrate_bps as f64;
        report.origin_egress_bytes = self.origin.egress;
        let published = if self.scenario.live { report.segments_published } else { self.origin.segments.len() as u64 };
        report.origin_copies_per_segment =
            self.origin.egress as f64 / (published.max(1) * self.segment_size.max(1)) as f64;
        let mut startups: Vec<f64> = Vec::new();
        let (mut latency_sum, mut latency_samples) = (0.0, 0u64);
        for v in &self.viewers {
            let mut stall_time = v.player.stall_time;
            if let Some(since) = v.player.stalled_since {
                stall_time += self.end.saturating_since(since);
            }
            report.stalls += v.player.stalls;
            report.stall_seconds += stall_time.as_secs_f64();
            if let Some(delay) = v.player.start_delay {
                startups.push(delay.as_secs_f64() * 1000.0);
            }
            latency_sum += v.player.latency_sum;
            latency_samples += v.player.latency_samples;
            report.chunk_timeouts += v.engine.stats().chunk_timeouts;
            report.http_early += v.engine.stats().http_early;
            report.http_bytes_early += v.engine.stats().http_bytes_early;
            report.http_bytes_late += v.engine.stats().http_bytes_late;
            report.http_hedges += v.engine.stats().http_hedges;
            report.http_seeds += v.engine.stats().http_seeds;
            report.http_urgent += v.engine.stats().http_urgent;
            if v.malicious && !v.corrupted.is_empty() {
                report.corrupting_viewers += 1;
                if v.corrupted.is_subset(&v.cut_off_by) {
                    report.corrupting_viewers_cut_off += 1;
                }
            }
        }
        startups.sort_by(f64::total_cmp);
        let pick = |q: f64| startups.get(((startups.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
        report.startup_median_ms = pick(0.5);
        report.startup_p95_ms = pick(0.95);
        report.startup_max_ms = startups.last().copied().unwrap_or(0.0);
        report.live_latency_seconds = if latency_samples == 0 { 0.0 } else { latency_sum / latency_samples as f64 };
        report
    }
}

fn transfer_time(bytes: u64, bps: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 * 8.0 / bps.max(1) as f64)
}

/// Message kinds, as the report names them; [`kind_of`] indexes this.
const MESSAGE_KINDS: [&str; 12] = [
    "hello",
    "availability",
    "have",
    "fetching",
    "have_chunks",
    "dropped",
    "request",
    "data",
    "record",
    "absent",
    "busy",
    "cancel",
];

fn kind_of(message: &Message) -> usize {
    match message {
        Message::Hello { .. } => 0,
        Message::Availability { .. } => 1,
        Message::Have { .. } => 2,
        Message::Fetching { .. } => 3,
        Message::HaveChunks { .. } => 4,
        Message::Dropped { .. } => 5,
        Message::Request { .. } => 6,
        Message::Data { .. } => 7,
        Message::Record { .. } => 8,
        Message::Absent { .. } => 9,
        Message::Busy { .. } => 10,
        Message::Cancel { .. } => 11,
    }
}
