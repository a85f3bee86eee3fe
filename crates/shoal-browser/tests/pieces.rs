//! `Pieces` (one swarm's piece exchange in the page) driven natively: viewers with
//! integer names, frames carried as the bytes the runtime would write, HTTP answered
//! from an in-memory origin.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::channel::oneshot;
use shoal_browser::{
    error::ShoalError,
    events::Event,
    pieces::{Effect, Pieces, PiecesOptions, SegmentLocation, record_url},
};
use shoal_core::{
    Config as EngineConfig, Delivery, Instant, Message, Misbehaviour, Publisher, SegmentId, SegmentRecord,
    SignedRecord, StreamId, codec::Frame, wire::FrameDecoder,
};

const CHUNK: u32 = 16 * 1024;
const SWARM: &str = "https://example.test/live.m3u8";

type Answer = oneshot::Receiver<Result<Delivery, ShoalError>>;

struct Origin {
    segments: BTreeMap<String, Bytes>,
    records: BTreeMap<String, Bytes>,
}

struct World {
    now: Instant,
    /// Where segment `n` is (`url(n)`, or a byte range of one file).
    locations: Vec<SegmentLocation>,
    viewers: BTreeMap<u32, Pieces<u32>>,
    /// One decoder per (from, to, bulk) link: frames cross as bytes, as in the page.
    links: BTreeMap<(u32, u32, bool), FrameDecoder>,
    origin: Origin,
    /// HTTP fetches each viewer made: (viewer, url, record url).
    fetched: Vec<(u32, String, Option<String>)>,
    /// The byte range of each of those fetches.
    fetched_ranges: Vec<Option<(u64, u64)>>,
    events: Vec<(u32, Event)>,
    disconnects: Vec<(u32, u32, Misbehaviour)>,
}

fn engine_config() -> EngineConfig {
    // VOD (no freshness anchors needed) and no early seeding: what happens is what the
    // test asks for.
    EngineConfig { live: false, early_copies: 0.0, ..EngineConfig::default() }
}

fn options(corrupt_uploads: bool) -> PiecesOptions {
    PiecesOptions {
        name: SWARM.into(),
        publisher: Publisher::from_secret([9; 32]).public_key(),
        engine: engine_config(),
        record_suffix: ".shoal".into(),
        corrupt_uploads,
    }
}

fn url(n: u64) -> String {
    format!("https://example.test/seg{n}.ts?token=abc")
}

fn segment_data(n: u64, size: usize) -> Vec<u8> {
    (0..size).map(|i| (i as u64 * 7 + n) as u8).collect()
}

fn signed_record(n: u64, data: &[u8]) -> Bytes {
    let publisher = Publisher::from_secret([9; 32]);
    let stream = StreamId::from_name(SWARM);
    let record: Arc<SignedRecord> =
        Arc::new(publisher.sign(SegmentRecord::for_data(stream, SegmentId(n), data, CHUNK)));
    Message::Record { record }.to_frame()
}

/// The single file of [`World::with_byte_ranges`].
const SINGLE_FILE: &str = "https://example.test/all.mp4";

impl World {
    /// Segment `n` at `url(n)`, its record beside it.
    fn new(segments: u64, size: usize) -> Self {
        let mut origin = Origin { segments: BTreeMap::new(), records: BTreeMap::new() };
        for n in 0..segments {
            let data = segment_data(n, size);
            origin.records.insert(record_url(&url(n), None, ".shoal"), signed_record(n, &data));
            origin.segments.insert(url(n), Bytes::from(data));
        }
        Self::with_origin(origin, (0..segments).map(|n| SegmentLocation::whole(url(n))).collect())
    }

    /// The segments one after another in one file after a 1,000-byte header, as a
    /// packager's `single_file` output is, each a byte range with its own record.
    fn with_byte_ranges(segments: u64, size: usize) -> Self {
        let mut origin = Origin { segments: BTreeMap::new(), records: BTreeMap::new() };
        let mut file = vec![0xAB; 1000];
        let mut locations = Vec::new();
        for n in 0..segments {
            let data = segment_data(n, size);
            let range = (file.len() as u64, (file.len() + size) as u64);
            origin.records.insert(record_url(SINGLE_FILE, Some(range), ".shoal"), signed_record(n, &data));
            file.extend_from_slice(&data);
            locations.push(SegmentLocation { url: SINGLE_FILE.into(), range: Some(range) });
        }
        origin.segments.insert(SINGLE_FILE.into(), Bytes::from(file));
        Self::with_origin(origin, locations)
    }

    fn with_origin(origin: Origin, locations: Vec<SegmentLocation>) -> Self {
        Self {
            locations,
            now: Instant::from_micros(5_000_000),
            viewers: BTreeMap::new(),
            links: BTreeMap::new(),
            origin,
            fetched: Vec::new(),
            fetched_ranges: Vec::new(),
            events: Vec::new(),
            disconnects: Vec::new(),
        }
    }

    fn add(&mut self, id: u32, corrupt_uploads: bool) {
        let mut pieces = Pieces::new(options(corrupt_uploads), u64::from(id), self.now);
        let playlist = self.locations.iter().take(4).enumerate().map(|(n, l)| (n as u64, l.clone())).collect();
        pieces.set_playlist(playlist, self.now);
        self.viewers.insert(id, pieces);
    }

    fn connect(&mut self, a: u32, b: u32) {
        let now = self.now;
        self.viewers.get_mut(&a).unwrap().peer_connected(b, now);
        self.viewers.get_mut(&b).unwrap().peer_connected(a, now);
        self.pump();
    }

    fn fetch(&mut self, viewer: u32, n: u64, due_in: Duration) -> Answer {
        let (reply, answer) = oneshot::channel();
        let now = self.now;
        let location = self.locations[n as usize].clone();
        self.viewers.get_mut(&viewer).unwrap().fetch_segment(n, location, now + due_in, reply, now);
        self.pump();
        answer
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            let next = self.viewers.values().filter_map(|v| v.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = t.max(self.now);
                    let now = self.now;
                    for v in self.viewers.values_mut() {
                        if v.poll_timeout().is_some_and(|t| t <= now) {
                            v.handle_timeout(now);
                        }
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Carries out every effect until none is left: frames arrive at once, HTTP
    /// answers at once.
    fn pump(&mut self) {
        loop {
            let mut work = Vec::new();
            for (id, viewer) in &mut self.viewers {
                while let Some(effect) = viewer.poll_effect() {
                    work.push((*id, effect));
                }
            }
            if work.is_empty() {
                return;
            }
            let now = self.now;
            for (from, effect) in work {
                match effect {
                    Effect::Send { peer, frame, bulk } => {
                        let decoder = self.links.entry((from, peer, bulk)).or_default();
                        decoder.extend(&frame);
                        while let Some(message) = decoder.next_frame().unwrap() {
                            if let Some(to) = self.viewers.get_mut(&peer) {
                                to.on_message(from, message, now);
                            }
                        }
                    }
                    Effect::Fetch { id, url, range, record_url } => {
                        self.fetched.push((from, url.clone(), record_url.clone()));
                        self.fetched_ranges.push(range);
                        let body = self.origin.segments.get(&url).cloned().ok_or_else(|| "404".to_owned());
                        let body = body.map(|b| match range {
                            Some((start, end)) => b.slice(start as usize..end as usize),
                            None => b,
                        });
                        let record = record_url.and_then(|u| self.origin.records.get(&u).cloned());
                        self.viewers.get_mut(&from).unwrap().fetch_done(id, body, record, now);
                    }
                    Effect::CancelFetch { .. } => {}
                    Effect::Disconnect { peer, reason } => {
                        self.disconnects.push((from, peer, reason));
                        self.viewers.get_mut(&from).unwrap().peer_gone(peer, now);
                        if let Some(other) = self.viewers.get_mut(&peer) {
                            other.peer_gone(from, now);
                        }
                    }
                    Effect::Event(event) => self.events.push((from, event)),
                }
            }
        }
    }
}

fn answer(mut answer: Answer) -> Result<Delivery, ShoalError> {
    answer.try_recv().unwrap().expect("no answer yet")
}

#[test]
fn a_due_segment_comes_over_http_with_its_record_and_is_then_shared() {
    let mut world = World::new(4, 100_000);
    world.add(1, false);
    world.add(2, false);
    world.connect(1, 2);

    // Due at once: HTTP, and the record beside it (the query stays at the end).
    let first = world.fetch(1, 0, Duration::from_millis(100));
    let delivery = answer(first).unwrap();
    assert_eq!(delivery.size, 100_000);
    assert_eq!(delivery.from_http, 100_000);
    assert_eq!(delivery.concat(), world.origin.segments[&url(0)].to_vec());
    let (_, fetched_url, record) = world.fetched.iter().find(|(v, _, _)| *v == 1).unwrap();
    assert_eq!(fetched_url, &url(0));
    assert_eq!(record.as_deref(), Some("https://example.test/seg0.ts.shoal?token=abc"));

    // Due later: from the neighbour, every byte checked, nothing over HTTP.
    let second = world.fetch(2, 0, Duration::from_secs(10));
    world.advance(Duration::from_secs(2));
    let delivery = answer(second).unwrap();
    assert_eq!(delivery.from_peers, 100_000);
    assert_eq!(delivery.from_http, 0);
    assert_eq!(delivery.concat(), world.origin.segments[&url(0)].to_vec());
    assert!(world.fetched.iter().all(|(v, _, _)| *v != 2), "viewer 2 used HTTP: {:?}", world.fetched);
    let stats = world.viewers[&2].stats();
    assert_eq!(stats.bytes_from_peers, 100_000);
    assert_eq!(stats.per_peer["1"].down, 100_000);
    assert_eq!(world.viewers[&1].stats().per_peer["2"].up, 100_000);
    assert!(world.events.iter().any(|(v, e)| *v == 2 && matches!(e, Event::SegmentLoaded { from_peers: 100_000, .. })));
}

#[test]
fn byte_range_segments_come_from_their_range_with_their_own_record_and_are_shared() {
    let mut world = World::with_byte_ranges(4, 100_000);
    world.add(1, false);
    world.add(2, false);
    world.connect(1, 2);

    let delivery = answer(world.fetch(1, 2, Duration::from_millis(100))).unwrap();
    assert_eq!(delivery.concat(), segment_data(2, 100_000));
    assert_eq!(delivery.from_http, 100_000);
    let (_, fetched_url, record) = &world.fetched[0];
    assert_eq!(fetched_url, SINGLE_FILE);
    assert_eq!(world.fetched_ranges[0], Some((201_000, 301_000)), "segment 2's bytes of the file");
    assert_eq!(record.as_deref(), Some("https://example.test/all.mp4.201000-301000.shoal"));

    let second = world.fetch(2, 2, Duration::from_secs(10));
    world.advance(Duration::from_secs(2));
    let delivery = answer(second).unwrap();
    assert_eq!((delivery.from_peers, delivery.from_http), (100_000, 0));
    assert_eq!(delivery.concat(), segment_data(2, 100_000));
}

#[test]
fn what_a_corrupting_uploader_left_missing_of_a_byte_range_comes_from_the_right_bytes() {
    let mut world = World::with_byte_ranges(4, 100_000);
    world.add(1, true);
    world.add(2, false);
    world.connect(1, 2);
    answer(world.fetch(1, 1, Duration::from_millis(100))).unwrap();
    let before = world.fetched.len();

    let wanted = world.fetch(2, 1, Duration::from_secs(3));
    world.advance(Duration::from_secs(4));
    let delivery = answer(wanted).unwrap();
    assert_eq!(delivery.concat(), segment_data(1, 100_000), "the player got segment 1's bytes");
    assert!(delivery.from_http > 0);
    // Part of a segment (what peers did not bring) is that part of the segment's range.
    let location = &world.locations[1];
    assert_eq!(location.file_range(Some((16_384, 32_768))), Some((117_384, 133_768)));
    assert_eq!(location.file_range(None), Some((101_000, 201_000)));
    assert_eq!(SegmentLocation::whole(url(1)).file_range(Some((5, 9))), Some((5, 9)));
    let ranges = &world.fetched_ranges[before..];
    assert!(!ranges.is_empty());
    for range in ranges {
        let (start, end) = range.expect("a byte-range segment is always fetched by range");
        assert!((101_000..=201_000).contains(&start) && start < end && end <= 201_000, "{range:?} outside segment 1");
    }
}

#[test]
fn a_corrupting_uploader_is_cut_off_and_the_segment_still_arrives() {
    let mut world = World::new(4, 100_000);
    world.add(1, true);
    world.add(2, false);
    world.connect(1, 2);
    answer(world.fetch(1, 0, Duration::from_millis(100))).unwrap();

    let wanted = world.fetch(2, 0, Duration::from_secs(3));
    world.advance(Duration::from_secs(4));
    let delivery = answer(wanted).unwrap();
    assert_eq!(delivery.concat(), world.origin.segments[&url(0)].to_vec(), "corrupt bytes reached the player");
    assert!(world.disconnects.contains(&(2, 1, Misbehaviour::CorruptChunk)), "{:?}", world.disconnects);
    assert!(world.events.iter().any(|(v, e)| *v == 2 && matches!(e, Event::PeerBanned { peer, .. } if peer == "1")));
    assert!(!world.viewers[&2].knows(&1));
    assert!(world.viewers[&2].stats().chunks_rejected >= 1);
}

#[test]
fn a_segment_the_origin_lacks_fails_every_waiting_fetch() {
    let mut world = World::new(1, 50_000);
    world.add(1, false);
    let (reply, missing) = oneshot::channel();
    let now = world.now;
    world.viewers.get_mut(&1).unwrap().fetch_segment(7, SegmentLocation::whole(url(7)), now, reply, now);
    world.pump();
    world.advance(Duration::from_secs(30));
    assert!(matches!(answer(missing), Err(ShoalError::SegmentUnavailable(_))));
    assert_eq!(world.viewers[&1].stats().segments_failed, 1);
}

#[test]
fn a_page_asking_in_a_loop_is_bounded_and_shutdown_answers_everyone() {
    let mut world = World::new(1, 50_000);
    world.add(1, false);
    // Nobody holds segment 0 and it is due in a minute: the fetches wait.
    let answers: Vec<Answer> = (0..20).map(|_| world.fetch(1, 0, Duration::from_secs(60))).collect();
    world.viewers.get_mut(&1).unwrap().shutdown();
    let mut stopped = 0;
    let mut refused = 0;
    for a in answers {
        match answer(a) {
            Err(ShoalError::Overloaded(_)) => refused += 1,
            Err(ShoalError::Stopped) => stopped += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((stopped, refused), (16, 4));
}

#[test]
fn bad_bytes_offered_by_the_page_are_refused() {
    let mut world = World::new(1, 50_000);
    world.add(1, false);
    answer(world.fetch(1, 0, Duration::from_millis(100))).unwrap();
    let now = world.now;
    let viewer = world.viewers.get_mut(&1).unwrap();
    // Segment 0's record is known now: wrong bytes for it are refused, right ones kept.
    let error = viewer.offer_segment(0, Bytes::from(vec![0u8; 50_000]), now);
    assert!(matches!(error, Err(ShoalError::Integrity(_))), "{error:?}");
    // Without a record nothing can be checked, so nothing is kept.
    let error = viewer.offer_segment(3, Bytes::from(vec![0u8; 50_000]), now);
    assert!(matches!(error, Err(ShoalError::Integrity(_))), "{error:?}");
    let good = world.origin.segments[&url(0)].clone();
    world.viewers.get_mut(&1).unwrap().offer_segment(0, good, now).unwrap();
}

#[test]
fn records_signed_for_another_swarm_id_are_refused_once_loudly_and_playback_goes_on() {
    let mut world = World::new(3, 50_000);
    // The publisher signed with `--swarm other/name`; the page joined SWARM.
    let publisher = Publisher::from_secret([9; 32]);
    let other = StreamId::from_name("other/name");
    for n in 0..3 {
        let data = world.origin.segments[&url(n)].clone();
        let record = Arc::new(publisher.sign(SegmentRecord::for_data(other, SegmentId(n), &data, CHUNK)));
        world.origin.records.insert(record_url(&url(n), None, ".shoal"), Message::Record { record }.to_frame());
    }
    world.add(1, false);
    for n in 0..2 {
        let delivery = answer(world.fetch(1, n, Duration::from_millis(100))).unwrap();
        assert_eq!(delivery.from_http, 50_000, "the segment still plays, over HTTP");
    }
    let refused: Vec<_> = world.events.iter().filter(|(_, e)| matches!(e, Event::RecordRefused { .. })).collect();
    assert_eq!(refused.len(), 1, "reported once: {refused:?}");
    let Event::RecordRefused { reason, .. } = &refused[0].1 else { unreachable!() };
    assert!(reason.contains("swarm id"), "{reason}");
    assert_eq!(world.viewers[&1].stats().records_refused, 2);
}
