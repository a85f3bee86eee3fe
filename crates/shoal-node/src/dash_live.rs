//! The demo's live DASH stream: the DASH rendition made at set-up (a video and an audio
//! representation, `<demo media>/dash`) played out as a live presentation. A dynamic MPD
//! whose `SegmentTemplate` numbers segments from 0 at its `availabilityStartTime`; live
//! segment `n` of a representation is its VOD segment `n mod count`, moved onto one
//! continuous timeline (see [`crate::fmp4`]). Beside every segment a signed record, for a
//! swarm per representation (`shoal-demo/dash/<id>`): what `shoal-sign mpd --swarm
//! 'shoal-demo/dash/$RepresentationID$'` does for a static site, done on demand.
//!
//! Served at `/demo/dash/`: `stream.mpd`, `publisher.json`, `init-<id>.m4s`,
//! `seg-<id>-<n>.m4s` and `seg-<id>-<n>.m4s.shoal`. The window and the availability of
//! segments follow the HLS demo's (`crate::demo`), so both start with a full window.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::{Path as UrlPath, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    NodeError, dash, fmp4,
    live_loop::{LiveClock, LiveRecords, WINDOW},
    publish,
};

/// The swarm of each representation; `$RepresentationID$` stands for its id (the same
/// template pages give `ShoalShaka` as `swarmId`).
pub const SWARM_TEMPLATE: &str = "shoal-demo/dash/$RepresentationID$";

/// An element's attributes, as found in the VOD manifest.
type Attributes = Vec<(String, String)>;

struct LiveRepresentation {
    id: String,
    attributes: Attributes,
    /// Its child elements other than the segment addressing (e.g.
    /// `AudioChannelConfiguration`): name and attributes.
    children: Vec<(String, Attributes)>,
    mime_type: String,
    init: Bytes,
    segments: Vec<Bytes>,
    looped: fmp4::Looped,
    timescale: u32,
    /// The decode time of its first segment: the media time at the period's start.
    presentation_time_offset: u64,
}

struct LiveAdaptationSet {
    attributes: Attributes,
    representations: Vec<LiveRepresentation>,
}

/// The live DASH demo. See the module docs.
pub struct DashLive {
    sets: Vec<LiveAdaptationSet>,
    clock: LiveClock,
    started_wall: SystemTime,
    records: LiveRecords,
    egress: Counter,
}

fn attributes(node: roxmltree::Node<'_, '_>) -> Attributes {
    node.attributes().map(|a| (a.name().to_owned(), a.value().to_owned())).collect()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn render_attributes(out: &mut String, attributes: &Attributes) {
    for (name, value) in attributes {
        let _ = write!(out, " {name}=\"{}\"", xml_escape(value));
    }
}

/// `t` as ISO 8601 (UTC, whole milliseconds), as DASH writes dates.
fn iso_time(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    let t = t.replace_nanosecond(t.millisecond() as u32 * 1_000_000).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

impl DashLive {
    /// Loads `dir/stream.mpd` (a static MPD with `SegmentTemplate` addressing by
    /// `$Number$`, one track per representation, as ffmpeg's dash muxer writes it), its
    /// init and media segments, and the publisher key from `key_path`.
    pub fn load(dir: &Path, key_path: &Path, egress: Counter) -> Result<Self, NodeError> {
        let mpd_path = dir.join("stream.mpd");
        let invalid = |reason: String| NodeError::Manifest { path: mpd_path.clone(), reason };
        let text = fs::read_to_string(&mpd_path)
            .map_err(|source| NodeError::Io { context: format!("reading {}", mpd_path.display()), source })?;
        let listed: BTreeMap<String, Vec<publish::ListedSegment>> =
            dash::list(&text).map_err(&invalid)?.into_iter().map(|r| (r.id, r.segments)).collect();
        let doc = roxmltree::Document::parse(&text).map_err(|e| invalid(e.to_string()))?;
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read(&path)
                .map(Bytes::from)
                .map_err(|source| NodeError::Io { context: format!("reading {}", path.display()), source })
        };
        let mut segment_secs: Option<f64> = None;
        let mut sets = Vec::new();
        for set in doc.descendants().filter(|n| n.has_tag_name("AdaptationSet")) {
            let set_template = set.children().find(|n| n.has_tag_name("SegmentTemplate"));
            let mut representations = Vec::new();
            for rep in set.children().filter(|n| n.has_tag_name("Representation")) {
                let id = rep.attribute("id").ok_or_else(|| invalid("a Representation without id".into()))?.to_owned();
                let template = rep
                    .children()
                    .find(|n| n.has_tag_name("SegmentTemplate"))
                    .or(set_template)
                    .ok_or_else(|| invalid(format!("representation {id}: no SegmentTemplate")))?;
                let timescale: f64 = template.attribute("timescale").and_then(|t| t.parse().ok()).unwrap_or(1.0);
                let duration: f64 = template
                    .attribute("duration")
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| invalid(format!("representation {id}: SegmentTemplate without duration")))?;
                let secs = duration / timescale;
                if segment_secs.is_some_and(|s| (s - secs).abs() > 1e-6) {
                    return Err(invalid("representations with different segment durations".into()));
                }
                segment_secs = Some(secs);
                let bandwidth = rep.attribute("bandwidth").and_then(|b| b.parse().ok()).unwrap_or(0);
                let init_name = template
                    .attribute("initialization")
                    .ok_or_else(|| invalid(format!("representation {id}: no initialization segment")))
                    .and_then(|t| dash::expand(t, &id, bandwidth, 0).map_err(&invalid))?;
                let init = read(&init_name)?;
                let segments =
                    listed.get(&id).into_iter().flatten().map(|s| read(&s.uri)).collect::<Result<Vec<_>, _>>()?;
                if segments.is_empty() {
                    return Err(invalid(format!("representation {id} lists no segments")));
                }
                let refs: Vec<&[u8]> = segments.iter().map(|s| &s[..]).collect();
                let fmp4 = |e: fmp4::Fmp4Error| invalid(format!("representation {id}: {e}"));
                let looped = fmp4::Looped::new(&init, &refs).map_err(fmp4)?;
                let tracks = fmp4::tracks(&init).map_err(fmp4)?;
                let (&track, &(timescale, _)) = match tracks.len() {
                    1 => tracks.iter().next().ok_or_else(|| invalid(format!("representation {id}: no track")))?,
                    n => return Err(invalid(format!("representation {id}: {n} tracks, one expected"))),
                };
                let children = rep
                    .children()
                    .filter(|n| n.is_element() && !n.has_tag_name("SegmentTemplate") && !n.has_tag_name("BaseURL"))
                    .map(|n| (n.tag_name().name().to_owned(), attributes(n)))
                    .collect();
                representations.push(LiveRepresentation {
                    mime_type: rep
                        .attribute("mimeType")
                        .or(set.attribute("mimeType"))
                        .unwrap_or("video/mp4")
                        .to_owned(),
                    presentation_time_offset: looped.first_decode_time(track).unwrap_or(0),
                    attributes: attributes(rep),
                    children,
                    id,
                    init,
                    segments,
                    looped,
                    timescale,
                });
            }
            if !representations.is_empty() {
                sets.push(LiveAdaptationSet { attributes: attributes(set), representations });
            }
        }
        let segment_secs = segment_secs.ok_or_else(|| invalid("no representations".into()))?;
        if !(0.1..=60.0).contains(&segment_secs) {
            return Err(invalid(format!("segment duration {segment_secs} s")));
        }
        let representations = sets.iter().map(|s| s.representations.len()).sum();
        Ok(Self {
            sets,
            clock: LiveClock::start(Duration::from_secs_f64(segment_secs)),
            started_wall: SystemTime::now(),
            records: LiveRecords::load(key_path, representations)?,
            egress,
        })
    }

    /// The newest segment number available (as the HLS demo: a full window from the start).
    fn latest(&self) -> u64 {
        self.clock.latest()
    }

    fn representation(&self, id: &str) -> Option<&LiveRepresentation> {
        self.sets.iter().flat_map(|s| &s.representations).find(|r| r.id == id)
    }

    /// The bytes of live segment `n` of `rep`.
    fn segment_data(rep: &LiveRepresentation, n: u64) -> Bytes {
        let count = rep.segments.len() as u64;
        let index = (n % count) as usize;
        let data = &rep.segments[index];
        rep.looped.renumber(index, data, n / count).unwrap_or_else(|_| data.clone())
    }

    /// The dynamic MPD as of now.
    pub fn mpd(&self) -> String {
        let seg = self.clock.segment().as_secs_f64();
        // Segment n is available once it ends: at availabilityStartTime + (n + 1) segments.
        let available_from = self.started_wall - self.clock.segment() * (WINDOW as u32 + 1);
        let now = iso_time(SystemTime::now());
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
        let _ = write!(
            out,
            "<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" \
             type=\"dynamic\" availabilityStartTime=\"{}\" publishTime=\"{now}\" minimumUpdatePeriod=\"PT{seg}S\" \
             timeShiftBufferDepth=\"PT{}S\" suggestedPresentationDelay=\"PT{}S\" maxSegmentDuration=\"PT{seg}S\" \
             minBufferTime=\"PT{}S\">\n  <Period id=\"0\" start=\"PT0S\">\n",
            iso_time(available_from),
            seg * WINDOW as f64,
            seg * 3.0,
            seg * 2.0,
        );
        for set in &self.sets {
            out.push_str("    <AdaptationSet");
            render_attributes(&mut out, &set.attributes);
            out.push_str(">\n");
            for rep in &set.representations {
                out.push_str("      <Representation");
                render_attributes(&mut out, &rep.attributes);
                out.push_str(">\n");
                for (name, attributes) in &rep.children {
                    let _ = write!(out, "        <{name}");
                    render_attributes(&mut out, attributes);
                    out.push_str("/>\n");
                }
                let _ = writeln!(
                    out,
                    "        <SegmentTemplate timescale=\"{}\" duration=\"{}\" presentationTimeOffset=\"{}\" \
                     startNumber=\"0\" initialization=\"init-$RepresentationID$.m4s\" \
                     media=\"seg-$RepresentationID$-$Number$.m4s\"/>",
                    rep.timescale,
                    (seg * f64::from(rep.timescale)).round() as u64,
                    rep.presentation_time_offset,
                );
                out.push_str("      </Representation>\n");
            }
            out.push_str("    </AdaptationSet>\n");
        }
        let _ = write!(
            out,
            "  </Period>\n  <UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:direct:2014\" value=\"{now}\"/>\n</MPD>\n"
        );
        out
    }

    /// The swarm of representation `id`.
    pub fn swarm(id: &str) -> String {
        SWARM_TEMPLATE.replace("$RepresentationID$", id)
    }

    /// The signed record of live segment `n` of `rep`, as one wire frame.
    fn record(&self, rep: &LiveRepresentation, n: u64) -> Bytes {
        self.records.record(&Self::swarm(&rep.id), n, || Self::segment_data(rep, n))
    }

    /// Routes under `/demo/dash/`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/demo/dash/stream.mpd", get(mpd))
            .route("/demo/dash/publisher.json", get(publisher))
            .route("/demo/dash/{file}", get(file))
            .with_state(self)
    }
}

type DashState = Arc<DashLive>;

async fn mpd(State(live): State<DashState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/dash+xml"), (header::CACHE_CONTROL, "no-cache")], live.mpd())
}

async fn publisher(State(live): State<DashState>) -> Response {
    live.records.publisher_json(SWARM_TEMPLATE)
}

async fn file(State(live): State<DashState>, UrlPath(file): UrlPath<String>) -> Response {
    let (name, is_record) = match file.strip_suffix(".shoal") {
        Some(name) => (name, true),
        None => (file.as_str(), false),
    };
    if let Some(id) = name.strip_prefix("init-").and_then(|n| n.strip_suffix(".m4s"))
        && !is_record
        && let Some(rep) = live.representation(id)
    {
        live.egress.inc_by(rep.init.len() as u64);
        return ([(header::CONTENT_TYPE, rep.mime_type.clone())], rep.init.clone()).into_response();
    }
    let Some((rep, n)) = name
        .strip_prefix("seg-")
        .and_then(|n| n.strip_suffix(".m4s"))
        .and_then(|n| n.rsplit_once('-'))
        .and_then(|(id, n)| Some((live.representation(id)?, n.parse::<u64>().ok()?)))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if n > live.latest() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if is_record {
        return ([(header::CONTENT_TYPE, "application/octet-stream")], live.record(rep, n)).into_response();
    }
    let data = DashLive::segment_data(rep, n);
    live.egress.inc_by(data.len() as u64);
    ([(header::CONTENT_TYPE, rep.mime_type.clone())], data).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use shoal_core::{Message, StreamId, wire::FrameDecoder};

    use super::*;

    /// The demo media set-up made, when present (`scripts/setup.sh`).
    fn demo_dash() -> Option<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/demo-media/dash");
        dir.join("stream.mpd").exists().then_some(dir)
    }

    #[test]
    fn the_live_mpd_numbers_segments_from_the_start_and_each_record_verifies() {
        let Some(dir) = demo_dash() else {
            eprintln!("no target/demo-media/dash (run scripts/setup.sh): skipped");
            return;
        };
        let keys = tempfile::tempdir().unwrap();
        let live = DashLive::load(&dir, &keys.path().join("key"), Counter::default()).unwrap();
        let mpd = live.mpd();
        let doc = roxmltree::Document::parse(&mpd).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("type"), Some("dynamic"));
        assert!(root.attribute("availabilityStartTime").unwrap().ends_with('Z'), "{mpd}");
        let templates: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("SegmentTemplate")).collect();
        assert_eq!(templates.len(), 2, "video and audio: {mpd}");
        for t in templates {
            assert_eq!(t.attribute("startNumber"), Some("0"));
            assert!(t.attribute("presentationTimeOffset").is_some());
        }
        // A segment of the second pass, with its record for the representation's swarm.
        let rep = live.representation("0").unwrap();
        let n = rep.segments.len() as u64 + 2;
        let data = DashLive::segment_data(rep, n);
        let mut decoder = FrameDecoder::new();
        decoder.extend(&live.record(rep, n));
        let Some(Message::Record { record }) = decoder.next_frame().unwrap() else { panic!("not a record") };
        live.records.publisher().public_key().verify(&StreamId::from_name("shoal-demo/dash/0"), &record).unwrap();
        assert_eq!(record.record.size, data.len() as u64);
        assert_ne!(data, rep.segments[2], "the second pass is renumbered onto the live timeline");
    }
}
