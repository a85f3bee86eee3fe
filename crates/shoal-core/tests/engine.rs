//! The engine through its public API, wired to a tiny zero-latency network and origin.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use shoal_core::{
    Config, Delivery, Engine, Event, Instant, Message, Misbehaviour, Output, Publisher, SegmentId, SegmentInfo,
    SegmentRecord, SignedRecord, StreamId,
};

const CHUNK: u32 = 16 * 1024;

/// A byte range, end exclusive; `None`: the whole segment.
type ByteRange = Option<(u64, u64)>;

struct Net {
    now: Instant,
    stream: StreamId,
    publisher: Publisher,
    engines: BTreeMap<u32, Engine<u32>>,
    data: BTreeMap<SegmentId, Bytes>,
    records: BTreeMap<SegmentId, Arc<SignedRecord>>,
    delivered: Vec<(u32, Delivery)>,
    failed: Vec<(u32, SegmentId)>,
    /// HTTP fetches issued: peer, segment, byte range.
    http: Vec<(u32, SegmentId, ByteRange)>,
    bans: Vec<(u32, u32, Misbehaviour)>,
    sent: Vec<(u32, u32, Message)>,
    /// Applied to every message a peer sends (to play a misbehaving peer).
    tamper: BTreeMap<u32, fn(Message) -> Option<Message>>,
    /// Peers whose HTTP fetches never complete.
    http_stuck: bool,
}

impl Net {
    fn new() -> Self {
        let publisher = Publisher::from_secret([5; 32]);
        Self {
            now: Instant::from_micros(1_000_000),
            stream: StreamId::from_name("test"),
            publisher,
            engines: BTreeMap::new(),
            data: BTreeMap::new(),
            records: BTreeMap::new(),
            delivered: Vec::new(),
            failed: Vec::new(),
            http: Vec::new(),
            bans: Vec::new(),
            sent: Vec::new(),
            tamper: BTreeMap::new(),
            http_stuck: false,
        }
    }

    fn publish(&mut self, n: u64, size: usize) -> SegmentId {
        let id = SegmentId(n);
        let data: Vec<u8> = (0..size).map(|i| (i as u64 * 31 + n) as u8).collect();
        let record = Arc::new(self.publisher.sign(SegmentRecord::for_data(self.stream, id, &data, CHUNK)));
        self.data.insert(id, Bytes::from(data));
        self.records.insert(id, record);
        id
    }

    fn add(&mut self, id: u32, config: Config) {
        let engine = Engine::new(config, self.stream, self.publisher.public_key(), u64::from(id), self.now);
        self.engines.insert(id, engine);
    }

    fn playlist(&mut self, peer: u32) {
        let infos: Vec<SegmentInfo> =
            self.records.iter().map(|(id, r)| SegmentInfo { id: *id, record: Some(r.clone()) }).collect();
        let now = self.now;
        self.engines.get_mut(&peer).unwrap().update_playlist(infos, now);
        self.pump();
    }

    fn connect(&mut self, a: u32, b: u32) {
        let now = self.now;
        self.engines.get_mut(&a).unwrap().peer_connected(b, now);
        self.engines.get_mut(&b).unwrap().peer_connected(a, now);
        self.pump();
    }

    /// Gives `peer` the record of `segment` from a trusted source (the origin).
    fn trust(&mut self, peer: u32, segment: SegmentId) {
        let record = self.records[&segment].clone();
        let now = self.now;
        self.engines.get_mut(&peer).unwrap().add_record(record, now).unwrap();
        self.pump();
    }

    fn engine(&mut self, id: u32) -> &mut Engine<u32> {
        self.engines.get_mut(&id).unwrap()
    }

    /// Runs every action to quiescence: messages and HTTP answers are instantaneous.
    fn pump(&mut self) {
        loop {
            let mut work = Vec::new();
            for (id, engine) in self.engines.iter_mut() {
                while let Some(action) = engine.poll_output() {
                    work.push((*id, action));
                }
            }
            if work.is_empty() {
                return;
            }
            let now = self.now;
            for (id, action) in work {
                match action {
                    Output::Send { peer, message } => {
                        let message = match self.tamper.get(&id) {
                            Some(f) => match f(message) {
                                Some(m) => m,
                                None => continue,
                            },
                            None => message,
                        };
                        self.sent.push((id, peer, message.clone()));
                        if let Some(engine) = self.engines.get_mut(&peer) {
                            engine.handle_message(id, message, now);
                        }
                    }
                    Output::HttpFetch { id: request, segment, range } => {
                        self.http.push((id, segment, range));
                        if self.http_stuck {
                            continue;
                        }
                        let data = &self.data[&segment];
                        let (start, end) = range.unwrap_or((0, data.len() as u64));
                        let body = data.slice(start as usize..end as usize);
                        self.engines.get_mut(&id).unwrap().http_complete(request, body, now);
                    }
                    Output::CancelHttp { .. } => {}
                    Output::Deliver(d) => self.delivered.push((id, d)),
                    Output::Failed { segment } => self.failed.push((id, segment)),
                    Output::Disconnect { peer, reason } => {
                        self.bans.push((id, peer, reason));
                        if let Some(engine) = self.engines.get_mut(&peer) {
                            engine.peer_disconnected(id, now);
                        }
                    }
                    Output::Event(
                        Event::PeerBanned { .. } | Event::ChunkDownloaded { .. } | Event::ChunkUploaded { .. },
                    ) => {}
                }
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            let next = self.engines.values().filter_map(|e| e.poll_timeout()).filter(|t| *t <= end).min();
            let Some(next) = next else { break };
            self.now = next.max(self.now);
            let now = self.now;
            for engine in self.engines.values_mut() {
                if engine.poll_timeout().is_some_and(|t| t <= now) {
                    engine.handle_timeout(now);
                }
            }
            self.pump();
        }
        self.now = end;
    }

    fn delivered_to(&self, peer: u32, segment: SegmentId) -> Option<&Delivery> {
        self.delivered.iter().find(|(p, d)| *p == peer && d.segment == segment).map(|(_, d)| d)
    }
}

/// Early seeding off: these tests are about peers serving one another (early seeding
/// has tests of its own).
fn config() -> Config {
    Config { urgent_window: Duration::from_secs(1), early_copies: 0.0, ..Config::default() }
}

/// Peer 1 holds segment 0 (fetched over HTTP); peer 2 is connected and has the playlist.
fn holder_and_fetcher(net: &mut Net, fetcher_config: Config) -> SegmentId {
    let seg = net.publish(0, 100_000);
    net.add(1, config());
    net.add(2, fetcher_config);
    net.playlist(1);
    net.playlist(2);
    let now = net.now;
    net.engine(1).want(seg, now, now);
    net.pump();
    assert!(net.engine(1).has_segment(seg));
    net.connect(1, 2);
    seg
}

#[test]
fn urgent_segment_comes_over_http_verified() {
    let mut net = Net::new();
    let seg = net.publish(0, 100_000);
    net.add(1, config());
    net.playlist(1);
    let now = net.now;
    net.engine(1).want(seg, now + Duration::from_millis(500), now);
    net.pump();
    assert_eq!(net.http.len(), 1);
    let d = net.delivered_to(1, seg).expect("delivered");
    assert_eq!(d.concat(), net.data[&seg].to_vec());
    assert_eq!((d.from_http, d.from_peers), (100_000, 0));
}

#[test]
fn later_segment_comes_from_a_peer_that_has_it() {
    let mut net = Net::new();
    let seg = holder_and_fetcher(&mut net, config());
    let now = net.now;
    net.engine(2).want(seg, now + Duration::from_secs(10), now);
    net.pump();
    let d = net.delivered_to(2, seg).expect("delivered from the peer");
    assert_eq!(d.concat(), net.data[&seg].to_vec());
    assert_eq!((d.from_http, d.from_peers), (0, 100_000));
    assert_eq!(net.http.iter().filter(|(p, ..)| *p == 2).count(), 0, "no HTTP for peer 2");
    assert_eq!(net.engine(1).stats().bytes_uploaded, 100_000);
}

#[test]
fn a_peer_sending_a_corrupt_chunk_is_cut_off_and_http_fills_in() {
    let mut net = Net::new();
    net.tamper.insert(1, |m| match m {
        Message::Data { id, segment, chunk, data } => {
            let mut bad = data.to_vec();
            bad[0] ^= 1;
            Some(Message::Data { id, segment, chunk, data: Bytes::from(bad) })
        }
        other => Some(other),
    });
    let seg = holder_and_fetcher(&mut net, config());
    let now = net.now;
    net.engine(2).want(seg, now + Duration::from_secs(5), now);
    net.pump();
    assert_eq!(net.bans, vec![(2, 1, Misbehaviour::CorruptChunk)]);
    assert_eq!(net.engine(2).connected_peers(), 0);
    assert!(net.delivered_to(2, seg).is_none(), "nothing delivered yet: no source left");
    net.advance(Duration::from_secs(5));
    let d = net.delivered_to(2, seg).expect("HTTP filled in at the deadline");
    assert_eq!(d.concat(), net.data[&seg].to_vec(), "only verified bytes reach the player");
    assert!(net.engine(2).stats().chunks_rejected >= 1);
}

#[test]
fn a_forged_record_gets_the_sender_cut_off() {
    let mut net = Net::new();
    net.tamper.insert(1, |m| match m {
        Message::Record { record } => {
            let mut forged = (*record).clone();
            forged.signature[10] ^= 1;
            Some(Message::Record { record: Arc::new(forged) })
        }
        other => Some(other),
    });
    let anchor = net.publish(0, 20_000);
    let seg = net.publish(1, 50_000);
    net.add(1, config());
    net.add(2, config());
    // Only peer 1 gets the playlist (with records); peer 2 must ask it for the record
    // (it trusts an earlier one from the origin, which lets it judge freshness).
    net.playlist(1);
    net.trust(2, anchor);
    let now = net.now;
    net.engine(1).want(seg, now, now);
    net.pump();
    net.connect(1, 2);
    let now = net.now;
    net.engine(2).want(seg, now + Duration::from_secs(10), now);
    net.pump();
    assert_eq!(net.bans, vec![(2, 1, Misbehaviour::ForgedRecord)]);
}

#[test]
fn a_peer_of_another_stream_is_cut_off() {
    let mut net = Net::new();
    net.add(1, config());
    net.add(2, config());
    net.tamper.insert(1, |m| match m {
        Message::Hello { version, .. } => Some(Message::Hello { version, stream: StreamId::from_name("other") }),
        other => Some(other),
    });
    net.connect(1, 2);
    assert!(net.bans.contains(&(2, 1, Misbehaviour::WrongStream)));
}

#[test]
fn upload_off_means_no_announcements_and_busy_answers() {
    let mut net = Net::new();
    let seg = net.publish(0, 50_000);
    net.add(1, Config { upload_enabled: false, ..config() });
    net.add(2, config());
    net.playlist(1);
    net.playlist(2);
    let now = net.now;
    net.engine(1).want(seg, now, now);
    net.pump();
    net.connect(1, 2);
    let announced_by_1 = net
        .sent
        .iter()
        .filter(|(from, _, m)| *from == 1 && matches!(m, Message::Have { .. } | Message::HaveChunks { .. }))
        .count();
    assert_eq!(announced_by_1, 0);
    // Even asked directly, it refuses.
    let now = net.now;
    net.engine(1).handle_message(2, Message::Request { id: 77, segment: seg, chunk: 0, with_record: false }, now);
    let answers: Vec<Output<u32>> = std::iter::from_fn(|| net.engine(1).poll_output()).collect();
    assert!(
        answers.contains(&Output::Send { peer: 2, message: Message::Busy { id: 77, retry_ms: 50 } }),
        "{answers:?}"
    );
}

#[test]
fn p2p_download_off_fetches_everything_over_http() {
    let mut net = Net::new();
    let seg = holder_and_fetcher(&mut net, Config { p2p_download_enabled: false, ..config() });
    let now = net.now;
    net.engine(2).want(seg, now + Duration::from_secs(10), now);
    net.pump();
    let d = net.delivered_to(2, seg).expect("delivered");
    assert_eq!((d.from_http, d.from_peers), (100_000, 0));
}

#[test]
fn upload_cap_paces_data() {
    let mut net = Net::new();
    let seg = net.publish(0, 200_000);
    net.add(1, Config { upload_rate_limit: Some(100_000), ..config() });
    net.add(2, config());
    net.playlist(1);
    net.playlist(2);
    let now = net.now;
    net.engine(1).want(seg, now, now);
    net.pump();
    net.connect(1, 2);
    let start = net.now;
    net.engine(2).want(seg, start + Duration::from_secs(60), start);
    net.pump();
    net.advance(Duration::from_secs(1));
    let after_one_second = net.engine(1).stats().bytes_uploaded;
    assert!(after_one_second <= 100_000 + 64 * 1024, "at most a second's worth plus one burst: {after_one_second}");
    net.advance(Duration::from_secs(3));
    assert!(net.delivered_to(2, seg).is_some(), "done within the cap's time");
}

#[test]
fn a_silent_peer_times_out_and_the_segment_still_arrives() {
    let mut net = Net::new();
    net.tamper.insert(1, |m| match m {
        Message::Data { .. } => None,
        other => Some(other),
    });
    let seg = holder_and_fetcher(&mut net, config());
    let now = net.now;
    net.engine(2).want(seg, now + Duration::from_secs(6), now);
    net.pump();
    net.advance(Duration::from_secs(6));
    assert!(net.engine(2).stats().chunk_timeouts > 0);
    assert!(
        net.sent.iter().any(|(from, _, m)| *from == 2 && matches!(m, Message::Cancel { .. })),
        "timed-out requests are cancelled"
    );
    let d = net.delivered_to(2, seg).expect("delivered before the deadline");
    assert_eq!(d.concat(), net.data[&seg].to_vec());
}

#[test]
fn http_failures_are_retried_then_reported() {
    let mut net = Net::new();
    let seg = net.publish(0, 10_000);
    net.add(1, config());
    net.playlist(1);
    net.http_stuck = true;
    let now = net.now;
    net.engine(1).want(seg, now, now);
    net.pump();
    for _ in 0..3 {
        let now = net.now;
        let id = (net.http.len() - 1) as u64;
        net.engine(1).http_failed(id, now);
        net.pump();
    }
    assert_eq!(net.http.len(), 3, "three attempts");
    assert_eq!(net.failed, vec![(1, seg)]);
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let mut net = Net::new();
    let segs: Vec<SegmentId> = (0..5).map(|n| net.publish(n, 40_000)).collect();
    net.add(1, Config { cache_capacity: 100_000, ..config() });
    net.add(2, config());
    net.playlist(1);
    net.connect(1, 2);
    for seg in &segs {
        let now = net.now;
        net.engine(1).want(*seg, now, now);
        net.pump();
        assert!(net.engine(1).cached_bytes() <= 100_000);
    }
    // Live: the oldest went first, and neighbours were told.
    assert!(!net.engine(1).has_segment(segs[0]));
    assert!(net.engine(1).has_segment(segs[4]));
    assert!(net.sent.iter().any(|(from, _, m)| *from == 1 && *m == Message::Dropped { segment: segs[0] }));
}

#[test]
fn offered_segments_are_checked_then_shared() {
    let mut net = Net::new();
    let seg = net.publish(0, 30_000);
    net.add(1, config());
    net.playlist(1);
    let now = net.now;
    let mut bad = net.data[&seg].to_vec();
    bad[20_000] ^= 1;
    assert!(net.engine(1).offer_segment(seg, Bytes::from(bad), now).is_err());
    assert!(!net.engine(1).has_segment(seg));
    let good = net.data[&seg].clone();
    net.engine(1).offer_segment(seg, good, now).unwrap();
    assert!(net.engine(1).has_segment(seg));
}

#[test]
fn http_started_before_the_record_arrives_still_delivers_and_shares() {
    let mut net = Net::new();
    let seg = net.publish(0, 70_000);
    net.add(1, config());
    net.add(2, config());
    net.connect(1, 2);
    // The playlist names the segment but carries no record (the browser case: records
    // come from peers or next to the segment).
    let now = net.now;
    net.engine(1).update_playlist([SegmentInfo { id: seg, record: None }], now);
    net.http_stuck = true;
    net.engine(1).want(seg, now, now);
    net.pump();
    let (_, _, range) = net.http[0];
    assert_eq!(range, None, "no record yet: the whole segment");
    // The record arrives (fetched beside the segment), then the body.
    let record = net.records[&seg].clone();
    net.engine(1).add_record(record, now).unwrap();
    let body = net.data[&seg].clone();
    net.engine(1).http_complete(0, body, now);
    net.pump();
    let d = net.delivered_to(1, seg).expect("delivered");
    assert_eq!(d.concat(), net.data[&seg].to_vec());
    assert!(net.engine(1).has_segment(seg), "kept to share");
    assert!(net.sent.iter().any(|(from, _, m)| *from == 1 && *m == Message::Have { segment: seg }));
}

#[test]
fn a_truncated_http_body_is_refused_and_retried() {
    let mut net = Net::new();
    let seg = net.publish(0, 40_000);
    net.add(1, config());
    net.playlist(1);
    net.http_stuck = true;
    let now = net.now;
    net.engine(1).want(seg, now, now);
    net.pump();
    let short = net.data[&seg].slice(0..30_000);
    net.engine(1).http_complete(0, short, now);
    net.pump();
    assert!(net.delivered_to(1, seg).is_none());
    assert_eq!(net.http.len(), 2, "fetched again");
}

#[test]
fn a_peer_still_waiting_for_its_record_defers_requests_instead_of_denying() {
    let mut net = Net::new();
    let anchor = net.publish(0, 20_000);
    let seg = net.publish(1, 70_000);
    net.add(1, config());
    net.add(2, config());
    net.trust(2, anchor);
    net.connect(1, 2);
    let now = net.now;
    // Neither knows the record; peer 1 must fetch now, peer 2 has time.
    for peer in [1, 2] {
        net.engine(peer).update_playlist([SegmentInfo { id: seg, record: None }], now);
    }
    net.http_stuck = true;
    net.engine(1).want(seg, now, now);
    net.pump();
    net.engine(2).want(seg, now + Duration::from_secs(10), now);
    net.pump();
    assert!(
        !net.sent.iter().any(|(from, _, m)| *from == 1 && matches!(m, Message::Absent { .. })),
        "peer 1 is fetching the segment: it must not deny having it"
    );
    // Peer 1's origin fetch completes (record beside the segment); peer 2 is answered.
    let record = net.records[&seg].clone();
    net.engine(1).add_record(record, now).unwrap();
    let body = net.data[&seg].clone();
    net.engine(1).http_complete(0, body, now);
    net.pump();
    let d = net.delivered_to(2, seg).expect("peer 2 got it from peer 1");
    assert_eq!(d.concat(), net.data[&seg].to_vec());
    assert_eq!(d.from_http, 0);
    assert_eq!(net.http.iter().filter(|(p, ..)| *p == 2).count(), 0, "peer 2 never went to the origin");
}

/// An origin fetch the player waits on that is late gets a second copy; the first copy
/// to answer settles the segment and the other is cancelled.
#[test]
fn a_late_origin_fetch_is_hedged() {
    let mut net = Net::new();
    let seg = net.publish(0, 100_000);
    net.add(1, config());
    net.playlist(1);
    net.http_stuck = true;
    let now = net.now;
    net.engine(1).want(seg, now + Duration::from_secs(3), now);
    net.pump();
    // Nobody else has it: it seeds it from the origin after a moment's patience.
    net.advance(Duration::from_millis(200));
    assert_eq!(net.http.len(), 1, "one fetch at first");
    net.advance(Duration::from_secs(2));
    assert_eq!(net.http.len(), 2, "a duplicate once the first is late: {:?}", net.http);
    assert_eq!(net.http[0].1, net.http[1].1);
    assert_eq!(net.http[0].2, net.http[1].2, "the same bytes");
    assert_eq!(net.engine(1).stats().http_hedges, 1);
    // The duplicate (id 1) answers: delivered, and the original is cancelled.
    net.http_stuck = false;
    let body = net.data[&seg].clone();
    let now = net.now;
    net.engine(1).http_complete(1, body, now);
    let outputs: Vec<Output<u32>> = std::iter::from_fn(|| net.engine(1).poll_output()).collect();
    assert!(outputs.contains(&Output::CancelHttp { id: 0 }), "{outputs:?}");
    assert!(outputs.iter().any(|o| matches!(o, Output::Deliver(d) if d.segment == seg)));
}
