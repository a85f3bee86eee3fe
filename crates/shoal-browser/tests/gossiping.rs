//! The page's gossip driven natively: real ed25519 keys and PeerIds, frames carried as
//! the bytes the runtime would write, validators as closures.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use libp2p_identity::{Keypair, PeerId};
use shoal_browser::{
    error::ShoalError,
    events::Event,
    gossiping::{GossipEffect, Gossiping},
};
use shoal_core::{
    Instant,
    codec::Frame,
    gossip::{GossipDecoder, GossipMessage, Publication, Verdict},
};

const WALL_AT_ZERO: u64 = 1_790_000_000_000;

struct Pages {
    now: Instant,
    pages: BTreeMap<PeerId, Gossiping>,
    events: Vec<(PeerId, Event)>,
    disconnects: Vec<(PeerId, PeerId, String)>,
}

impl Pages {
    fn new(n: usize) -> (Self, Vec<PeerId>) {
        let mut pages = BTreeMap::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let keypair = Keypair::ed25519_from_bytes([i as u8 + 1; 32]).unwrap();
            let id = keypair.public().to_peer_id();
            pages.insert(id, Gossiping::new(keypair, 1024, i as u64, WALL_AT_ZERO));
            ids.push(id);
        }
        (Self { now: Instant::from_micros(10_000_000), pages, events: Vec::new(), disconnects: Vec::new() }, ids)
    }

    fn page(&mut self, id: PeerId) -> &mut Gossiping {
        self.pages.get_mut(&id).unwrap()
    }

    fn connect(&mut self, a: PeerId, b: PeerId) {
        let now = self.now;
        self.page(a).peer_connected(b, now);
        self.page(b).peer_connected(a, now);
        self.pump();
    }

    /// Delivers `message` to `to` as if `from` had written it.
    fn deliver(&mut self, from: PeerId, to: PeerId, frame: &[u8]) {
        let mut decoder = GossipDecoder::new();
        decoder.extend(frame);
        let now = self.now;
        while let Some(message) = decoder.next_frame().unwrap() {
            self.page(to).on_message(from, message, now);
        }
    }

    fn pump(&mut self) {
        loop {
            let mut work = Vec::new();
            for (id, page) in &mut self.pages {
                while let Some(effect) = page.poll_effect() {
                    work.push((*id, effect));
                }
            }
            if work.is_empty() {
                return;
            }
            for (from, effect) in work {
                match effect {
                    GossipEffect::Send(to, frame) => self.deliver(from, to, &frame),
                    GossipEffect::Disconnect(peer, reason) => self.disconnects.push((from, peer, reason)),
                    GossipEffect::Event(event) => self.events.push((from, event)),
                }
            }
        }
    }

    fn received(&self, page: PeerId) -> Vec<String> {
        self.events
            .iter()
            .filter(|(p, _)| *p == page)
            .filter_map(|(_, e)| match e {
                Event::Gossip { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_signed_publication_travels_a_line_of_pages_once() {
    let (mut pages, ids) = Pages::new(3);
    for id in &ids {
        pages.page(*id).subscribe("chat".into(), None).unwrap();
    }
    pages.connect(ids[0], ids[1]);
    pages.connect(ids[1], ids[2]);
    pages.pump();
    let now = pages.now;
    let sent = pages.page(ids[0]).publish("chat".into(), b"hello".to_vec(), now).unwrap();
    assert_eq!(sent, 1);
    pages.pump();
    assert_eq!(pages.received(ids[1]), ["hello"]);
    assert_eq!(pages.received(ids[2]), ["hello"]);
    assert!(pages.received(ids[0]).is_empty(), "an origin does not hear itself");
    let origin = ids[0].to_string();
    assert!(pages.events.iter().all(|(_, e)| !matches!(e, Event::Gossip { from, .. } if *from != origin)));
    assert_eq!(pages.pages[&ids[2]].stats().received, 1);
    assert_eq!(pages.pages[&ids[0]].stats().published, 1);
    assert!(pages.disconnects.is_empty());
}

#[test]
fn the_pages_validator_decides_what_is_delivered_and_forwarded() {
    let (mut pages, ids) = Pages::new(3);
    pages.page(ids[0]).subscribe("t".into(), None).unwrap();
    let only_ok = Box::new(
        |data: &[u8], _from: &str| {
            if data.starts_with(b"ok:") { Verdict::Accept } else { Verdict::Reject("not ok".into()) }
        },
    );
    pages.page(ids[1]).subscribe("t".into(), Some(only_ok)).unwrap();
    pages.page(ids[2]).subscribe("t".into(), None).unwrap();
    pages.connect(ids[0], ids[1]);
    pages.connect(ids[1], ids[2]);
    let now = pages.now;
    pages.page(ids[0]).publish("t".into(), b"ok: fine".to_vec(), now).unwrap();
    pages.page(ids[0]).publish("t".into(), b"bad".to_vec(), now).unwrap();
    pages.pump();
    assert_eq!(pages.received(ids[1]), ["ok: fine"]);
    assert_eq!(pages.received(ids[2]), ["ok: fine"], "a refused message must not be forwarded");
    assert_eq!(pages.pages[&ids[1]].stats().rejected_invalid, 1);
    assert!(
        pages
            .events
            .iter()
            .any(|(p, e)| *p == ids[1] && matches!(e, Event::GossipRejected { reason, .. } if reason == "not ok"))
    );
}

#[test]
fn forged_and_oversize_publications_are_refused() {
    let (mut pages, ids) = Pages::new(2);
    pages.page(ids[1]).subscribe("t".into(), None).unwrap();
    pages.connect(ids[0], ids[1]);

    // A publication claiming an origin whose key did not sign it.
    let victim = Keypair::ed25519_from_bytes([99; 32]).unwrap().public().to_peer_id();
    let stamp = WALL_AT_ZERO + pages.now.as_micros() / 1000;
    let forged = GossipMessage::Publish(Arc::new(Publication {
        topic: "t".into(),
        origin: Bytes::from(victim.to_bytes()),
        seqno: 1,
        timestamp_ms: stamp,
        data: Bytes::from_static(b"I never said this"),
        signature: Bytes::from(vec![7u8; 64]),
    }));
    pages.deliver(ids[0], ids[1], &forged.to_frame());
    pages.pump();
    assert!(pages.received(ids[1]).is_empty());
    assert_eq!(pages.pages[&ids[1]].stats().rejected_invalid, 1);
    assert!(
        pages
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::GossipRejected { reason, .. } if reason == "bad signature"))
    );

    // Past gossipMaxBytes: refused when publishing, with the documented error.
    let now = pages.now;
    let error = pages.page(ids[0]).publish("t".into(), vec![0; 2000], now).unwrap_err();
    assert_eq!(error, ShoalError::MessageTooLarge { len: 2000, limit: 1024 });
    assert_eq!(error.code(), "message-too-large");
}

#[test]
fn a_neighbour_sending_garbage_is_cut_off() {
    let (mut pages, ids) = Pages::new(2);
    pages.connect(ids[0], ids[1]);
    let mut decoder = GossipDecoder::with_limit(1024);
    decoder.extend(&[0xff, 0xff, 0xff, 0x7f]);
    let error = decoder.next_frame().unwrap_err();
    pages.page(ids[1]).on_bad_frame(ids[0], &error);
    pages.pump();
    assert_eq!(pages.disconnects.len(), 1);
    assert_eq!(pages.disconnects[0].1, ids[0]);
    assert_eq!(pages.pages[&ids[1]].stats().rejected_oversize, 1);
}
