//! The policy, run after every input: expire stalled requests, move every wanted and
//! prefetched segment forward (from peers, or from HTTP when it must), serve uploads,
//! tell neighbours what changed, keep the cache in bounds, and work out the next
//! wake-up.

use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, seq::SliceRandom};

use super::{
    ChunkSet, ChunkState, Engine, Event, Misbehaviour, Output, PeerKey,
    http::{Fetch, Why},
    requests::Request,
    segment::{Announced, MAX_SEGMENTS},
};
use crate::{integrity::SegmentId, time::Instant, wire::Message};

/// The empty chunk set, to point at.
static NO_CHUNKS: std::sync::LazyLock<ChunkSet> = std::sync::LazyLock::new(ChunkSet::new);

/// Most separate byte ranges one segment is fetched in at once; closer runs of missing
/// chunks are merged (re-fetching the few held chunks between them).
const MAX_HTTP_RANGES: usize = 3;

impl<P: PeerKey> Engine<P> {
    /// Runs after an input that may have changed any plan. See the module docs.
    pub(super) fn drive(&mut self, now: Instant) {
        self.replan_all = true;
        self.run(now);
    }

    /// Runs after every input: re-plans what the input marked (everything after
    /// [`Engine::drive`]).
    pub(super) fn run(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.expire_requests();
        let all = std::mem::take(&mut self.replan_all);
        let marked = std::mem::take(&mut self.replan);
        let asks = std::mem::take(&mut self.ask);
        let wanted: Vec<(SegmentId, Instant)> =
            self.wants.iter().filter(|(s, _)| all || marked.contains_key(s)).map(|(s, d)| (*s, *d)).collect();
        for (segment, deadline) in wanted {
            self.advance(segment, Some(deadline));
        }
        if !all {
            for (peer, segment) in asks {
                if !marked.contains_key(&segment) {
                    self.ask_peer(peer, segment);
                }
            }
        }
        let prefetch = if all || marked.keys().any(|s| !self.wants.contains_key(s)) {
            self.prefetch_candidates()
        } else {
            Vec::new()
        };
        for segment in prefetch {
            if all || marked.contains_key(&segment) {
                self.ensure_segment(segment);
                self.advance(segment, None);
            }
        }
        self.replan_all = false;
        self.replan.clear();
        self.send_hedges();
        self.pump_uploads();
        self.announce_changes();
        self.evict_cache();
        self.next_wake = self.compute_wake();
    }

    fn expire_requests(&mut self) {
        let now = self.now;
        for id in self.requests.expired(now) {
            let Some(request) = self.requests.remove(id) else { continue };
            self.stats.chunk_timeouts += 1;
            self.send(request.peer, Message::Cancel { id });
            let cooldown = self.config.peer_cooldown;
            if let Some(p) = self.peers.get_mut(&request.peer) {
                p.timed_out(now, cooldown);
                self.cooldowns_end = self.cooldowns_end.max(p.cooldown_until);
                if p.failed(now) {
                    self.cut_off(request.peer, Misbehaviour::Unhelpful);
                }
            }
        }
    }

    /// Moves one segment forward. `deadline` is `None` for a prefetch: peers only, no
    /// HTTP, nothing delivered (it waits in the cache for the player's want).
    fn advance(&mut self, id: SegmentId, deadline: Option<Instant>) {
        let now = self.now;
        let Some(entry) = self.segments.get_mut(id) else { return };
        entry.last_used = now;
        if entry.complete() {
            if deadline.is_some() {
                self.deliver(id);
            }
            return;
        }
        let Some(deadline) = deadline else {
            if self.config.p2p_download_enabled {
                self.fetch_from_peers(id, None);
            }
            return;
        };
        if !self.config.p2p_download_enabled {
            if self.start_http(id, Why::NoP2p) {
                self.stats.http_no_p2p += 1;
            }
            return;
        }
        if now >= self.http_start(id, deadline) {
            if self.start_http(id, Why::Urgent) {
                self.stats.http_urgent += 1;
            }
            return;
        }
        self.seed_early(id);
        self.fetch_from_peers(id, Some(deadline));
    }

    /// The share of a new segment this viewer fetches from the origin early: enough for
    /// the swarm to hold [`crate::Config::early_copies`] of each chunk at once, plus what
    /// this viewer has learnt its neighbours cannot carry (raised whenever it ends up
    /// fetching at the last moment, see [`Engine::learn_from_delivery`]).
    pub(super) fn early_fraction(&self) -> f64 {
        // One copy per 32 members (a chunk then reaches everyone in about five
        // doublings), at most `early_copies`; the viewers seeding the segment whole hold
        // `seeders_per_segment` of them already. A swarm of 32 or fewer thus fetches no
        // early shares: its seeder reaches everyone in a few doublings, and a copy more
        // would cost a large share of its offload (one copy in six for six viewers).
        // Where uplinks cannot carry that, lateness raises `early_extra`.
        let size = self.swarm_size.max(1) as f64;
        let copies = (size / 32.0).min(self.config.early_copies) - self.config.seeders_per_segment;
        let spread = copies.max(0.0) / size;
        (spread + self.early_extra).min(1.0)
    }

    /// Fetches this viewer's early share of `id`: a random run of its chunks.
    fn seed_early(&mut self, id: SegmentId) {
        let fraction = self.early_fraction();
        let Some(entry) = self.segments.get(id) else { return };
        if entry.early_done || entry.record.is_none() {
            return;
        }
        let count = entry.chunks.len() as u32;
        let wanted = fraction * f64::from(count);
        // Round at random, so that small shares still add up across the swarm.
        let take = (wanted.floor() as u32 + u32::from(self.rng.r#gen::<f64>() < wanted.fract())).min(count);
        let start = self.rng.gen_range(0..count.max(1));
        if let Some(e) = self.segments.get_mut(id) {
            e.early_done = true;
        }
        if take == 0 {
            return;
        }
        let chunks: Vec<u32> = (0..take).map(|i| (start + i) % count).collect();
        let mut flags = vec![false; count as usize];
        for c in chunks {
            let missing =
                matches!(self.segments.get(id).and_then(|s| s.chunks.get(c as usize)), Some(ChunkState::Missing));
            flags[c as usize] = missing && !self.requests.is_requested(id, c);
        }
        let runs = runs_of(flags.into_iter());
        if !runs.is_empty() && self.start_http_runs(id, runs, Why::Early) {
            self.stats.http_early += 1;
        }
    }

    /// When HTTP must take over what is missing of `id` to have it by `deadline`: room
    /// for the slowest recent fetch of that much, and for a retry at the usual speed;
    /// never less than the configured urgent window.
    pub(super) fn http_start(&self, id: SegmentId, deadline: Instant) -> Instant {
        let missing = match self.segments.get(id) {
            Some(s) if s.record.is_some() => s.missing_bytes(),
            _ => self.typical_segment_size(),
        };
        // Room for the slowest recent fetch and a retry, and for a hedge to go out when
        // the first copy is late and still arrive.
        let worst = self.http.worst_time(missing);
        let retry = worst + self.http.expected_time(missing);
        let hedged = self.http.hedge_delay(missing) + worst;
        deadline - self.config.urgent_window.max(retry).max(hedged)
    }

    /// Size of the segments seen so far (for planning before a record is known).
    fn typical_segment_size(&self) -> u64 {
        self_typical(&self.segments)
    }

    /// Asks peers for what is missing of `id`, or seeds it from the origin when nobody
    /// has it and our patience ran out (`deadline`: the player wants it by then).
    fn fetch_from_peers(&mut self, id: SegmentId, deadline: Option<Instant>) {
        let now = self.now;
        let may_seed = deadline.is_some();
        let Some(entry) = self.segments.get(id) else { return };
        let has_record = entry.record.is_some();
        if has_record && !entry.missing().any(|c| !self.requests.is_requested(id, c)) {
            return; // everything missing is on its way (from peers or HTTP)
        }
        if !has_record && !entry.http.is_empty() {
            return; // HTTP covers it all
        }
        if self.requests.len() >= self.config.max_inflight_total && !(may_seed && now >= entry.seed_at) {
            return; // no request could go out now (and no seeding is due)
        }
        let seed_due = may_seed && now >= entry.seed_at;
        if !has_record {
            // Without the record nothing from a peer can be checked: ask a holder for it
            // (unless a live stream has nothing to judge its freshness by yet).
            if self.requests.any_for_segment(id) {
                return;
            }
            let allowed = !self.config.live || self.freshness_known(id);
            let source = if allowed { self.sources(id).first().copied() } else { None };
            if let Some(peer) = source {
                // With a chunk it holds or fetches, so the answer carries data too.
                let chunk = self.peers.get(&peer).map_or(0, |p| {
                    p.partial.get(&id).or(p.incoming.get(&id)).and_then(|set| set.iter().next()).unwrap_or(0)
                });
                self.request(peer, id, chunk, true);
            } else if seed_due && !self.has_source(id) {
                self.seed(id);
            }
            return;
        }
        let cutoff = deadline.map(|d| self.http_start(id, d));
        if !self.request_missing(id, cutoff) && seed_due && !self.requests.any_for_segment(id) {
            // Nobody we know has it or is getting it: seed it.
            self.seed(id);
        }
    }

    fn seed(&mut self, id: SegmentId) {
        if self.start_http(id, Why::Seed) {
            self.stats.http_seeds += 1;
        }
    }

    /// Segments just past the newest wanted one that neighbours already hold or fetch:
    /// fetched from them ahead of the player, so a live segment spreads before every
    /// viewer's playlist lists it.
    fn prefetch_candidates(&self) -> Vec<SegmentId> {
        let Some((&newest, _)) = self.wants.last_key_value() else { return Vec::new() };
        (1..=u64::from(self.config.prefetch_ahead))
            .filter_map(|ahead| newest.0.checked_add(ahead).map(SegmentId))
            .filter(|id| self.in_window(*id))
            .filter(|id| !self.segments.get(*id).is_some_and(|s| s.complete()))
            .filter(|id| self.peers.values().any(|p| p.hello && p.offers(*id)))
            .collect()
    }

    /// Whether `peer` can take a request for `segment` now.
    fn usable(&self, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|p| {
            p.hello
                && self.now >= p.cooldown_until
                && self.requests.inflight(peer) < p.request_window(65_536.0, self.config.max_inflight_per_peer)
        })
    }

    /// Whether any peer holds or is getting part of `segment`. A peer whose request
    /// pipeline is full, or that we leave alone for a moment after a `Busy` or a timeout,
    /// still counts: the segment is in the swarm, and seeding it from the origin again
    /// would fetch it twice. (If that peer never delivers, the HTTP deadline does.)
    fn has_source(&self, segment: SegmentId) -> bool {
        self.peers.values().any(|p| p.hello && p.offers(segment))
    }

    /// Peers that hold or are getting part of `segment` and can take a request, in
    /// random order.
    fn sources(&mut self, segment: SegmentId) -> Vec<P> {
        let mut found: Vec<P> = self
            .peers
            .iter()
            .filter(|(peer, p)| p.offers(segment) && self.usable(peer))
            .map(|(peer, _)| *peer)
            .collect();
        found.shuffle(&mut self.rng);
        found
    }

    /// Requests missing chunks, rarest among neighbours first, each from the best peer
    /// holding that very chunk: fewest of our requests outstanding, then best measured
    /// throughput (with jitter so load spreads); peers fetching from the origin come
    /// last, as they answer late. Returns whether any neighbour offers the segment at
    /// all (busy or not: see [`Engine::has_source`]).
    /// `cutoff`: HTTP takes over at this moment; a peer is only asked for a chunk it can
    /// deliver before (what it would send later is wasted).
    fn request_missing(&mut self, id: SegmentId, cutoff: Option<Instant>) -> bool {
        struct Candidate<'a, P> {
            peer: P,
            /// Which chunks it holds now (`None`: all of them).
            chunks: Option<&'a ChunkSet>,
            /// Which chunks it fetches from the origin now.
            incoming: Option<&'a ChunkSet>,
            from_origin: bool,
            rate: f64,
            inflight: usize,
            window: usize,
        }
        let Engine { segments, peers, requests, rng, config, now, .. } = self;
        let now = *now;
        let Some(entry) = segments.get(id) else { return false };
        let mut missing: Vec<u32> = entry.missing().filter(|c| !requests.is_requested(id, *c)).collect();
        if missing.is_empty() {
            return true; // all on its way
        }
        let chunk_bytes = entry.record.as_ref().map_or(65_536.0, |r| f64::from(r.record.chunk_size));
        let mut offered = false;
        let mut holders = vec![0u32; if missing.len() > 1 { entry.chunks.len() } else { 0 }];
        let mut candidates: Vec<Candidate<'_, P>> = Vec::new();
        for (peer, p) in peers.iter() {
            if !p.hello {
                continue;
            }
            let whole = p.have.contains(id);
            let partial = if whole { None } else { p.partial.get(&id) };
            let incoming = if whole { None } else { p.incoming.get(&id) };
            if !holders.is_empty() {
                if whole {
                    holders.iter_mut().for_each(|h| *h += 1);
                } else if let Some(set) = partial {
                    for chunk in set.iter() {
                        if let Some(h) = holders.get_mut(chunk as usize) {
                            *h += 1;
                        }
                    }
                }
            }
            let from_origin = !whole && p.fetching.contains(id);
            if !(whole || partial.is_some() || from_origin || incoming.is_some()) {
                continue;
            }
            offered = true;
            if now < p.cooldown_until {
                continue;
            }
            let inflight = requests.inflight(peer);
            let window = p.request_window(chunk_bytes, config.max_inflight_per_peer);
            if inflight >= window {
                continue;
            }
            // Its answer would come after HTTP took over: not worth its upload.
            let rate = p.effective_rate();
            if let Some(cutoff) = cutoff
                && now + Duration::from_secs_f64(chunk_bytes * (inflight + 1) as f64 / rate) > cutoff
            {
                continue;
            }
            // `chunks: None` means all of them: only for a peer holding the whole segment.
            let chunks = if whole { None } else { Some(partial.unwrap_or(&NO_CHUNKS)) };
            candidates.push(Candidate { peer: *peer, chunks, incoming, from_origin, rate, inflight, window });
        }
        if candidates.is_empty() || requests.len() >= config.max_inflight_total {
            return offered;
        }
        // Rarest first: a chunk few neighbours hold is the one to spread; random among
        // equals, so that peers fetching from the same holder get different chunks and
        // trade them with each other.
        missing.shuffle(rng);
        if !holders.is_empty() {
            missing.sort_by_key(|c| holders.get(*c as usize).copied().unwrap_or(0));
        }
        let mut plan: Vec<(P, u32)> = Vec::new();
        let budget = config.max_inflight_total.saturating_sub(requests.len());
        for chunk in missing {
            if plan.len() >= budget {
                break;
            }
            let mut best: Option<(f64, usize)> = None;
            for (i, c) in candidates.iter().enumerate() {
                if c.inflight >= c.window {
                    continue;
                }
                let holds = c.chunks.is_none_or(|set| set.contains(chunk));
                let coming = c.from_origin || c.incoming.is_some_and(|set| set.contains(chunk));
                if !holds && !coming {
                    continue;
                }
                let mut score = c.rate * (0.8 + 0.4 * rng.r#gen::<f64>()) / (1 + c.inflight) as f64;
                if !holds {
                    score *= 0.1;
                }
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, i));
                }
            }
            if let Some((_, i)) = best {
                candidates[i].inflight += 1;
                plan.push((candidates[i].peer, chunk));
            }
        }
        for (peer, chunk) in plan {
            self.request(peer, id, chunk, false);
        }
        offered
    }

    /// Asks `peer` alone for chunks of `segment` it offers and we miss (the incremental
    /// step after it announced more, or freed a request slot): wanted segments before
    /// HTTP takes them over, and prefetch candidates.
    fn ask_peer(&mut self, peer: P, segment: SegmentId) {
        if !self.config.p2p_download_enabled || self.requests.len() >= self.config.max_inflight_total {
            return;
        }
        // An announcement of a segment we hold already needs no plan.
        if self.segments.get(segment).is_some_and(|e| e.complete()) {
            return;
        }
        let cutoff = match self.wants.get(&segment) {
            Some(deadline) => Some(self.http_start(segment, *deadline)),
            None => {
                let newest = self.wants.last_key_value().map(|(id, _)| *id);
                let ahead =
                    newest.is_some_and(|n| segment > n && segment.0 - n.0 <= u64::from(self.config.prefetch_ahead));
                if !ahead || !self.in_window(segment) {
                    return;
                }
                self.ensure_segment(segment);
                None
            }
        };
        if cutoff.is_some_and(|c| self.now >= c) {
            return; // HTTP's now
        }
        let Some(entry) = self.segments.get(segment) else { return };
        let Some(record) = entry.record.clone() else {
            // Nothing to check its chunks against: the full plan asks for the record.
            self.replan(segment);
            return;
        };
        let Some(p) = self.peers.get(&peer) else { return };
        if !p.hello || self.now < p.cooldown_until {
            return;
        }
        let chunk_bytes = f64::from(record.record.chunk_size);
        let window = p.request_window(chunk_bytes, self.config.max_inflight_per_peer);
        let inflight = self.requests.inflight(&peer);
        let whole = p.have.contains(segment);
        let mut wanted: Vec<u32> = entry
            .missing()
            .filter(|c| !self.requests.is_requested(segment, *c))
            .filter(|c| {
                whole
                    || p.partial.get(&segment).is_some_and(|set| set.contains(*c))
                    || p.incoming.get(&segment).is_some_and(|set| set.contains(*c))
                    || p.fetching.contains(segment)
            })
            .collect();
        wanted.shuffle(&mut self.rng);
        let rate = p.effective_rate();
        for (inflight, chunk) in (inflight..).zip(wanted) {
            if inflight >= window || self.requests.len() >= self.config.max_inflight_total {
                break;
            }
            let expected = Duration::from_secs_f64(chunk_bytes * (inflight + 1) as f64 / rate);
            if cutoff.is_some_and(|c| self.now + expected > c) {
                break;
            }
            self.request(peer, segment, chunk, false);
        }
    }

    fn request(&mut self, peer: P, segment: SegmentId, chunk: u32, with_record: bool) {
        let now = self.now;
        // Three times what the peer's measured rate says the answer needs (behind what we
        // already asked of it), never less than the configured timeout.
        let chunk_bytes = self
            .segments
            .get(segment)
            .and_then(|s| s.record.as_ref())
            .map_or(65_536.0, |r| f64::from(r.record.chunk_size));
        let queued = (self.requests.inflight(&peer) + 1) as f64;
        let rate = self.peers.get(&peer).map_or(1.0, |p| p.effective_rate());
        let expected = Duration::from_secs_f64((3.0 * chunk_bytes * queued / rate).min(30.0));
        let expires = now + self.config.chunk_timeout.max(expected);
        let id = self.requests.insert(Request { peer, segment, chunk, sent: now, expires, with_record });
        self.send(peer, Message::Request { id, segment, chunk, with_record });
    }

    // ---- HTTP ----------------------------------------------------------------------

    /// Sends a second copy of every fetch a player waits on that is late against what
    /// the origin usually takes: the first to answer wins. An origin's slow tail (a cache
    /// miss, a congested edge) then costs a duplicate request instead of a stall.
    fn send_hedges(&mut self) {
        let due = self.http.hedges_due(self.now);
        for id in due {
            let Some((hedge, fetch)) = self.http.start_hedge(id, self.now) else { continue };
            self.stats.http_hedges += 1;
            self.outputs.push_back(Output::HttpFetch { id: hedge, segment: fetch.segment, range: fetch.range });
        }
    }

    /// Fetches what is missing of `id` over HTTP (in up to [`MAX_HTTP_RANGES`] ranges);
    /// false if nothing was started (covered already, or out of attempts).
    pub(super) fn start_http(&mut self, id: SegmentId, why: Why) -> bool {
        let Some(entry) = self.segments.get(id) else { return false };
        let runs = match &entry.record {
            None if !entry.http.is_empty() => return false,
            None => Vec::new(),
            Some(_) => {
                let runs =
                    runs_of(entry.chunks.iter().map(|c| !matches!(c, ChunkState::Have(_) | ChunkState::Http(_))));
                if runs.is_empty() {
                    return false;
                }
                merge_runs(runs, MAX_HTTP_RANGES)
            }
        };
        self.start_http_runs(id, runs, why)
    }

    /// Fetches the given runs of chunks of `id` (all of it when its record is unknown).
    fn start_http_runs(&mut self, id: SegmentId, runs: Vec<(u32, u32)>, why: Why) -> bool {
        let max_attempts = self.config.http_attempts;
        let Some(entry) = self.segments.get_mut(id) else { return false };
        // Early fetches are extra: they do not use up the attempts a fallback needs.
        if why != Why::Early {
            if entry.http_attempts >= max_attempts {
                return false;
            }
            entry.http_attempts += 1;
        }
        self.stats.http_fetches += 1;
        let now = self.now;
        let deadline = self.wants.get(&id).copied();
        let Some(record) = entry.record.clone() else {
            let size = self.typical_segment_size();
            let fetch = self.http.start(Fetch::new(id, why, now, None), size, deadline);
            if let Some(e) = self.segments.get_mut(id) {
                e.http.push(fetch);
            }
            self.dirty.push(id);
            self.outputs.push_back(Output::HttpFetch { id: fetch, segment: id, range: None });
            return true;
        };
        for (first, last) in runs {
            let start = record.record.chunk_offset(first);
            let end = record.record.chunk_offset(last) + record.record.chunk_len(last) as u64;
            let range = (start > 0 || end < record.record.size).then_some((start, end));
            let fetch = self.http.start(Fetch::new(id, why, now, range), record.record.size, deadline);
            let Some(entry) = self.segments.get_mut(id) else { return false };
            entry.http.push(fetch);
            for index in first..=last {
                if let Some(slot) = entry.chunks.get_mut(index as usize)
                    && !matches!(slot, ChunkState::Have(_))
                {
                    *slot = ChunkState::Http(fetch);
                }
            }
            // Peer requests for chunks HTTP now covers are cancelled.
            for request in self.requests.of_segment(id) {
                let Some(r) = self.requests.get(request) else { continue };
                if (first..=last).contains(&r.chunk)
                    && let Some(r) = self.requests.remove(request)
                {
                    self.send(r.peer, Message::Cancel { id: request });
                }
            }
            self.outputs.push_back(Output::HttpFetch { id: fetch, segment: id, range });
        }
        self.dirty.push(id);
        true
    }

    pub(super) fn on_http_body(&mut self, id: u64, body: Bytes) {
        let Some(settled) = self.http.complete(id) else { return };
        if let Some(other) = settled.other {
            self.outputs.push_back(Output::CancelHttp { id: other });
        }
        let (fetch, id) = (settled.fetch, settled.canonical);
        let took = self.now.saturating_since(fetch.started);
        self.http.finished(body.len() as u64, took);
        let segment = fetch.segment;
        let Some(entry) = self.segments.get_mut(segment) else { return };
        entry.http.retain(|f| *f != id);
        let Some(record) = entry.record.clone() else {
            // No record: nothing to check against and nothing to share, but the player
            // still gets what the origin sent (the page asked for it by URL).
            let size = body.len() as u64;
            self.stats.bytes_from_http += size;
            if self.wants.remove(&segment).is_some() {
                self.stats.segments_delivered += 1;
                self.outputs.push_back(Output::Deliver(super::Delivery {
                    segment,
                    chunks: vec![body],
                    size,
                    from_peers: 0,
                    from_http: size,
                }));
            }
            return;
        };
        // Which bytes the fetch asked for: the body must be exactly those.
        let (start, end) = fetch.range.unwrap_or((0, record.record.size));
        let mut bad = body.len() as u64 != end.saturating_sub(start);
        let mut pieces = Vec::new();
        for index in 0..record.record.chunk_count() {
            if bad {
                break;
            }
            let offset = record.record.chunk_offset(index);
            let len = record.record.chunk_len(index) as u64;
            let covered = matches!(entry.chunks.get(index as usize), Some(ChunkState::Http(f)) if *f == id);
            if offset < start || offset + len > end || !covered {
                continue;
            }
            let chunk = body.slice((offset - start) as usize..(offset - start + len) as usize);
            if super::verify_chunk(self.checks.as_deref(), &record.record, index, &chunk).is_err() {
                bad = true;
            } else {
                pieces.push((index, chunk));
            }
        }
        if bad {
            // The origin sent something that is not the signed segment: try again.
            self.stats.chunks_rejected += 1;
            self.abandon_http(segment, id);
            return;
        }
        for (index, chunk) in pieces {
            let len = chunk.len() as u64;
            self.stats.bytes_from_http += len;
            match fetch.why {
                Why::Early | Why::Seed => self.stats.http_bytes_early += len,
                Why::Urgent => self.stats.http_bytes_late += len,
                Why::NoP2p => self.stats.http_bytes_no_p2p += len,
            }
            if let Some(e) = self.segments.get_mut(segment) {
                e.from_http += len;
                if fetch.why == Why::Urgent {
                    e.late_bytes += len;
                }
            }
            self.store_chunk(segment, index, chunk);
        }
        // Chunks it covered that we did not take (held meanwhile) go back to the pool.
        if let Some(entry) = self.segments.get_mut(segment) {
            for chunk in entry.chunks.iter_mut() {
                if matches!(chunk, ChunkState::Http(f) if *f == id) {
                    *chunk = ChunkState::Missing;
                }
            }
        }
    }

    /// Puts the chunks an HTTP fetch covered back in the pool; gives the segment up if
    /// that was the last attempt.
    pub(super) fn abandon_http(&mut self, segment: SegmentId, fetch: u64) {
        self.dirty.push(segment);
        let attempts = self.config.http_attempts;
        let Some(entry) = self.segments.get_mut(segment) else { return };
        entry.http.retain(|f| *f != fetch);
        for chunk in entry.chunks.iter_mut() {
            if matches!(chunk, ChunkState::Http(f) if *f == fetch) {
                *chunk = ChunkState::Missing;
            }
        }
        if entry.http_attempts >= attempts && entry.http.is_empty() && self.wants.remove(&segment).is_some() {
            self.outputs.push_back(Output::Failed { segment });
        }
    }

    // ---- delivery, uploads, announcements -------------------------------------------

    fn deliver(&mut self, id: SegmentId) {
        if self.wants.remove(&id).is_none() {
            return;
        }
        let Some(entry) = self.segments.get_mut(id) else { return };
        self.stats.segments_delivered += 1;
        let (late, size, fair) = (std::mem::take(&mut entry.late_bytes), entry.size(), entry.p2p_window);
        // Network bytes are reported once: a second delivery of a held segment is free.
        let (from_peers, from_http) = (entry.from_peers, entry.from_http);
        entry.from_peers = 0;
        entry.from_http = 0;
        let delivery = super::Delivery { segment: id, chunks: entry.data(), size, from_peers, from_http };
        self.outputs.push_back(Output::Deliver(delivery));
        if from_peers + from_http > 0 && fair {
            self.learn_from_delivery(late, size);
        }
    }

    /// Adjusts the early share after a segment peers had a fair chance at arrived: up
    /// when more of it than the target came at the last moment (peers could not carry
    /// it), down by a fifth when less did.
    fn learn_from_delivery(&mut self, late: u64, size: u64) {
        if size == 0 || !self.config.p2p_download_enabled {
            return;
        }
        let late_share = late as f64 / size as f64;
        self.early_extra = if late_share > self.config.late_http_target {
            self.early_extra + 0.25 * (late_share - self.config.late_http_target)
        } else {
            self.early_extra * 0.8
        }
        .clamp(0.0, self.config.max_early_fraction);
    }

    /// Hands queued chunks to the network while it holds less than
    /// [`crate::Config::upload_handover`] (when the driver tells us the uplink's rate; all
    /// at once otherwise), within the upload cap.
    fn pump_uploads(&mut self) {
        let now = self.now;
        loop {
            if self.uplink_rate > 0.0 && self.handover_backlog() >= self.config.upload_handover {
                break;
            }
            let Some(upload) = self.uploads.next(now) else { break };
            let bytes = upload.data.len() as u64;
            self.handed_over += bytes;
            self.stats.bytes_uploaded += bytes;
            if self.config.chunk_events {
                self.outputs.push_back(Output::Event(Event::ChunkUploaded {
                    peer: upload.peer,
                    segment: upload.segment,
                    bytes,
                }));
            }
            self.send(
                upload.peer,
                Message::Data { id: upload.id, segment: upload.segment, chunk: upload.chunk, data: upload.data },
            );
        }
    }

    /// What the network holds of ours now: the driver's last figure, plus what we handed
    /// over since.
    pub(super) fn handover_backlog(&self) -> Duration {
        if self.uplink_rate <= 0.0 {
            return self.upload_backlog;
        }
        self.upload_backlog + Duration::from_secs_f64(self.handed_over as f64 / self.uplink_rate)
    }

    /// Tells neighbours what changed: an origin fetch started, chunks arrived, a
    /// segment completed or was abandoned.
    fn announce_changes(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        if !self.config.upload_enabled {
            return;
        }
        dirty.sort();
        dirty.dedup();
        let mut changes = Vec::new();
        for segment in dirty {
            let Some(entry) = self.segments.get_mut(segment) else { continue };
            let before = entry.announced.clone();
            if entry.complete() {
                if !before.complete {
                    changes.push((segment, Message::Have { segment }));
                    entry.announced = Announced { complete: true, ..Announced::default() };
                }
                continue;
            }
            let mut state = before.clone();
            if entry.record.is_none() {
                if !entry.http.is_empty() && !before.fetching_whole {
                    changes.push((segment, Message::Fetching { segment, chunks: ChunkSet::new() }));
                    state.fetching_whole = true;
                }
            } else {
                let fetching = entry.http_chunks();
                if fetching.iter().any(|c| !before.fetching.contains(c)) {
                    changes.push((segment, Message::Fetching { segment, chunks: fetching.clone() }));
                    state.fetching = fetching;
                }
                // Chunks from the origin were announced as coming; only what came from
                // peers is news.
                let held = entry.held_chunks();
                let news = held
                    .iter()
                    .any(|c| !before.held.contains(c) && !before.fetching.contains(c) && !state.fetching.contains(c));
                if news {
                    changes.push((segment, Message::HaveChunks { segment, chunks: held.clone() }));
                    state.held = held;
                }
            }
            if entry.http.is_empty() && entry.held == 0 && before.anything() {
                // Gave up (HTTP failed, requests cancelled): don't keep attracting requests.
                changes.push((segment, Message::Dropped { segment }));
                state = Announced::default();
            }
            entry.announced = state;
        }
        for (segment, message) in changes {
            // `Dropped` goes to everyone: a neighbour that holds the segment may still
            // count on us as a source of it.
            if matches!(message, Message::Dropped { .. }) {
                self.broadcast(message);
            } else {
                self.announce(segment, message);
            }
        }
    }

    // ---- bounds --------------------------------------------------------------------

    /// Keeps held bytes within [`crate::Config::cache_capacity`]: complete segments
    /// nothing waits on go first, oldest first for live, least recently used for VOD.
    fn evict_cache(&mut self) {
        while self.segments.cached_bytes > self.config.cache_capacity {
            let Some(victim) = self.eviction_victim(true) else { break };
            self.drop_segment(victim);
        }
    }

    /// Keeps the number of entries within [`MAX_SEGMENTS`].
    pub(super) fn evict_entries(&mut self) {
        while self.segments.len() > MAX_SEGMENTS {
            let Some(victim) = self.eviction_victim(false) else { break };
            self.drop_segment(victim);
        }
    }

    fn eviction_victim(&self, complete_only: bool) -> Option<SegmentId> {
        let live = self.config.live;
        self.segments
            .map
            .iter()
            .filter(|(id, s)| {
                (!complete_only || s.complete())
                    && !self.wants.contains_key(id)
                    && self.uploads.deferred_for_segment(**id) == 0
                    && s.http.is_empty()
            })
            .min_by_key(|(id, s)| if live && s.complete() { (Instant::ZERO, **id) } else { (s.last_used, **id) })
            .map(|(id, _)| *id)
    }

    /// The earliest future moment something time-based happens: a request times out, a
    /// want must go to HTTP, patience runs out, a cooldown ends, upload tokens suffice.
    fn compute_wake(&self) -> Option<Instant> {
        let now = self.now;
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if t > now {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        if let Some(t) = self.requests.next_expiry() {
            consider(t);
        }
        let mut waiting_on_peers = false;
        for (segment, deadline) in self.wants.iter() {
            let Some(entry) = self.segments.get(*segment) else { continue };
            if entry.complete() {
                continue;
            }
            consider(self.http_start(*segment, *deadline));
            consider(entry.seed_at);
            waiting_on_peers = true;
        }
        if waiting_on_peers
            && self.cooldowns_end > now
            && let Some(cooldown) = self.peers.values().map(|p| p.cooldown_until).filter(|c| *c > now).min()
        {
            consider(cooldown);
        }
        if let Some(t) = self.uploads.next_release(now) {
            consider(t);
        }
        if let Some(t) = self.http.next_hedge() {
            consider(t.max(now + Duration::from_millis(1)));
        }
        if !self.uploads.queue.is_empty() && self.uplink_rate > 0.0 {
            let wait = self.handover_backlog().saturating_sub(self.config.upload_handover);
            consider(now + wait.max(Duration::from_millis(1)));
        }
        wake
    }
}

/// Size of the newest segment with a record (1 MB before any).
fn self_typical(segments: &super::Segments) -> u64 {
    segments.map.values().rev().find_map(|s| s.record.as_ref().map(|r| r.record.size)).unwrap_or(1_000_000)
}

/// Runs of `true` as inclusive `(first, last)` index pairs.
fn runs_of(flags: impl Iterator<Item = bool>) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for (i, flag) in flags.enumerate() {
        let i = i as u32;
        if !flag {
            continue;
        }
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == i => *last = i,
            _ => runs.push((i, i)),
        }
    }
    runs
}

/// Merges the runs separated by the smallest gaps until at most `max` remain.
fn merge_runs(mut runs: Vec<(u32, u32)>, max: usize) -> Vec<(u32, u32)> {
    while runs.len() > max.max(1) {
        let Some(i) = (0..runs.len() - 1).min_by_key(|&i| runs[i + 1].0 - runs[i].1) else { break };
        runs[i].1 = runs[i + 1].1;
        runs.remove(i + 1);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_found_and_merged_by_smallest_gap() {
        let flags = [true, true, false, true, false, false, false, true, true, false, true];
        let runs = runs_of(flags.into_iter());
        assert_eq!(runs, vec![(0, 1), (3, 3), (7, 8), (10, 10)]);
        assert_eq!(merge_runs(runs.clone(), 3), vec![(0, 3), (7, 8), (10, 10)]);
        assert_eq!(merge_runs(runs, 1), vec![(0, 10)]);
    }
}
