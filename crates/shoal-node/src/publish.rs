//! The publisher's side of integrity: a key file, and a signed record next to every
//! segment (`<segment>.shoal`), which is what browsers fetch to check segments that reach
//! them from other peers. Used by the demo stream and by `shoal-sign`, the tool a real
//! site runs beside its packager.
//!
//! A record names its swarm (the `swarmId` pages join) and the segment's media sequence
//! number, so a record cannot be replayed for another stream or another segment.

use std::{
    fs,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use shoal_core::Publisher;

use crate::NodeError;

/// What a record's URL adds to its segment's URL (the browser's default `recordSuffix`).
pub const RECORD_SUFFIX: &str = ".shoal";

/// Reads a 32-byte publisher secret from `path`.
pub fn load_secret(path: &Path) -> Result<[u8; 32], NodeError> {
    let bytes =
        fs::read(path).map_err(|source| NodeError::Io { context: format!("reading {}", path.display()), source })?;
    bytes
        .try_into()
        .map_err(|_| NodeError::Identity { path: path.to_owned(), reason: "not a 32-byte publisher key".into() })
}

/// Reads the publisher secret at `path`, creating it (mode 0600) if there is none.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; 32], NodeError> {
    if path.exists() {
        return load_secret(path);
    }
    let secret: [u8; 32] = rand::random();
    crate::identity::write_private(path, &secret)?;
    Ok(secret)
}

/// Milliseconds since the Unix epoch, now: what a record is stamped with.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Signs the record of segment `sequence` of `swarm` holding `data`, stamped as
/// published now: one wire frame, the exact bytes to serve at `<segment URL>.shoal`.
/// (The stamp lets live viewers refuse last run's records if a restarted stream
/// numbers its segments from zero again.)
///
/// `chunk_size` is the unit peers verify and exchange; `None` picks it from the
/// segment's size ([`chunk_size_for`]).
pub fn sign_segment(publisher: &Publisher, swarm: &str, sequence: u64, data: &[u8], chunk_size: Option<u32>) -> Bytes {
    shoal_core::publish::record_frame(publisher, swarm, sequence, data, chunk_size, unix_ms_now())
}

/// A media segment listed by a playlist, with its media sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSegment {
    pub sequence: u64,
    pub uri: String,
    /// Bytes `start..end` of `uri` (HLS `EXT-X-BYTERANGE`), or the whole file.
    pub range: Option<(u64, u64)>,
}

/// The segments of an HLS media playlist: `EXT-X-MEDIA-SEQUENCE` (default 0) numbers
/// the first, each URI line the next. Master playlists list no segments. A segment
/// under `EXT-X-BYTERANGE:<length>[@<offset>]` is that range of its file; without an
/// offset it starts where the previous range of the same file ended (RFC 8216 4.4.4.2);
/// a range with no offset and no previous range of that file, or one that does not parse
/// or is empty, is skipped (the playlist is invalid there).
pub fn parse_media_playlist(text: &str) -> Vec<ListedSegment> {
    let mut sequence = 0;
    let mut out = Vec::new();
    // The `EXT-X-BYTERANGE` of the next segment: (length, offset), or `None` if invalid.
    let mut byte_range: Option<Option<(u64, Option<u64>)>> = None;
    let mut previous_range_end: Option<(String, u64)> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(value) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            sequence = value.trim().parse().unwrap_or(0);
        } else if let Some(value) = line.strip_prefix("#EXT-X-BYTERANGE:") {
            let (length, offset) = match value.trim().split_once('@') {
                Some((length, offset)) => (length.parse().ok(), offset.parse().ok().map(Some)),
                None => (value.trim().parse().ok(), Some(None)),
            };
            byte_range = Some(length.filter(|l: &u64| *l > 0).zip(offset));
        } else if line.starts_with("#EXT-X-STREAM-INF") {
            return Vec::new();
        } else if !line.starts_with('#') {
            let uri = line.to_owned();
            let range = match byte_range.take() {
                None => Some(None),
                Some(None) => None,
                Some(Some((length, offset))) => {
                    let start = offset.or_else(|| {
                        previous_range_end.as_ref().filter(|(previous, _)| *previous == uri).map(|(_, end)| *end)
                    });
                    start.and_then(|start| Some(Some((start, start.checked_add(length)?))))
                }
            };
            if let Some(range) = range {
                previous_range_end = range.map(|(_, end)| (uri.clone(), end));
                out.push(ListedSegment { sequence, uri, range });
            }
            sequence += 1;
        }
    }
    out
}

/// What [`sign_playlist`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SignReport {
    pub signed: Vec<PathBuf>,
    pub already_signed: usize,
    /// Listed segments that are not local files (absolute URLs) or are missing.
    pub skipped: Vec<String>,
}

/// Writes `<segment>.shoal` for every segment of the media playlist at `playlist` that
/// has none yet, or whose record is older than the segment. Segments are local files
/// next to the playlist, as a packager writes them.
pub fn sign_playlist(
    publisher: &Publisher,
    swarm: &str,
    playlist: &Path,
    chunk_size: Option<u32>,
) -> Result<SignReport, NodeError> {
    let text = fs::read_to_string(playlist)
        .map_err(|source| NodeError::Io { context: format!("reading {}", playlist.display()), source })?;
    let dir = playlist.parent().unwrap_or(Path::new("."));
    let mut report = SignReport::default();
    sign_listed(publisher, swarm, dir, parse_media_playlist(&text), chunk_size, &mut report)?;
    Ok(report)
}

/// Writes `<segment>.shoal` for the media segments of every representation of the static
/// DASH manifest at `mpd` (see [`crate::dash`]) that have none yet, or an older one.
/// `swarm` names each representation's swarm: `$RepresentationID$` in it is replaced by
/// the representation's id, and it is required when the manifest has more than one
/// (their segment numbers repeat, so they cannot share a swarm).
pub fn sign_mpd(
    publisher: &Publisher,
    swarm: &str,
    mpd: &Path,
    chunk_size: Option<u32>,
) -> Result<SignReport, NodeError> {
    let text = fs::read_to_string(mpd)
        .map_err(|source| NodeError::Io { context: format!("reading {}", mpd.display()), source })?;
    let invalid = |reason: String| NodeError::Manifest { path: mpd.to_owned(), reason };
    let representations = crate::dash::list(&text).map_err(invalid)?;
    if representations.len() > 1 && !swarm.contains("$RepresentationID$") {
        return Err(invalid(format!(
            "{} representations: --swarm must contain $RepresentationID$ (one swarm each)",
            representations.len()
        )));
    }
    let dir = mpd.parent().unwrap_or(Path::new("."));
    let mut report = SignReport::default();
    for representation in representations {
        let swarm = swarm.replace("$RepresentationID$", &representation.id);
        sign_listed(publisher, &swarm, dir, representation.segments, chunk_size, &mut report)?;
    }
    Ok(report)
}

/// Signs the listed segments (local files under `dir`) that have no up-to-date record.
fn sign_listed(
    publisher: &Publisher,
    swarm: &str,
    dir: &Path,
    segments: Vec<ListedSegment>,
    chunk_size: Option<u32>,
    report: &mut SignReport,
) -> Result<(), NodeError> {
    for segment in segments {
        let path_part = segment.uri.split(['?', '#']).next().unwrap_or_default();
        if segment.uri.contains("://") || path_part.starts_with('/') || path_part.contains("..") {
            report.skipped.push(segment.uri);
            continue;
        }
        let file = dir.join(path_part);
        let record_path =
            PathBuf::from(shoal_proto::record_url(&file.display().to_string(), segment.range, RECORD_SUFFIX));
        let metadata = fs::metadata(&file).ok();
        let Some(segment_time) = metadata.as_ref().and_then(|m| m.modified().ok()) else {
            report.skipped.push(segment.uri);
            continue;
        };
        if segment.range.is_some_and(|(_, end)| metadata.is_some_and(|m| m.len() < end)) {
            // The playlist lists bytes the file does not have (yet).
            report.skipped.push(segment.uri);
            continue;
        }
        let record_time = fs::metadata(&record_path).and_then(|m| m.modified()).ok();
        if record_time.is_some_and(|record_time| record_time >= segment_time) {
            report.already_signed += 1;
            continue;
        }
        let io = |source| NodeError::Io { context: format!("reading {}", file.display()), source };
        let data = match segment.range {
            None => fs::read(&file).map_err(io)?,
            Some((start, end)) => read_range(&file, start, end).map_err(io)?,
        };
        let frame = sign_segment(publisher, swarm, segment.sequence, &data, chunk_size);
        // Write then rename: a browser never fetches a half-written record.
        let tmp = record_path.with_extension("shoal.tmp");
        let io = |source| NodeError::Io { context: format!("writing {}", record_path.display()), source };
        fs::write(&tmp, &frame).map_err(io)?;
        fs::rename(&tmp, &record_path).map_err(io)?;
        report.signed.push(record_path);
    }
    Ok(())
}

/// Bytes `start..end` of the file at `path`.
fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut data = vec![0; usize::try_from(end - start).map_err(std::io::Error::other)?];
    file.read_exact(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shoal_core::{Message, SegmentId, SegmentRecord, StreamId, wire::FrameDecoder};

    use super::*;

    fn decode_record(frame: &[u8]) -> Arc<shoal_core::SignedRecord> {
        let mut decoder = FrameDecoder::new();
        decoder.extend(frame);
        match decoder.next_frame() {
            Ok(Some(Message::Record { record })) => record,
            other => panic!("not a record frame: {other:?}"),
        }
    }

    #[test]
    fn playlist_numbering_follows_media_sequence() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:41\n#EXTINF:2.0,\na.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:2.0,\nb.ts?x=1\n";
        assert_eq!(
            parse_media_playlist(text),
            vec![
                ListedSegment { sequence: 41, uri: "a.ts".into(), range: None },
                ListedSegment { sequence: 42, uri: "b.ts?x=1".into(), range: None }
            ]
        );
        assert!(parse_media_playlist("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow.m3u8\n").is_empty());
        assert_eq!(parse_media_playlist("#EXTM3U\n#EXTINF:2,\nx.ts\n")[0].sequence, 0);
    }

    #[test]
    fn signs_each_listed_segment_once_and_records_verify() {
        let dir = tempfile::tempdir().unwrap();
        let publisher = Publisher::from_secret([7; 32]);
        fs::write(dir.path().join("a.ts"), vec![1u8; 200_000]).unwrap();
        fs::write(dir.path().join("b.ts"), vec![2u8; 1000]).unwrap();
        let playlist = dir.path().join("live.m3u8");
        fs::write(
            &playlist,
            "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:10\n#EXTINF:2,\na.ts\n#EXTINF:2,\nb.ts\n#EXTINF:2,\nmissing.ts\n#EXTINF:2,\nhttps://cdn.example/c.ts\n",
        )
        .unwrap();

        let report = sign_playlist(&publisher, "site/live", &playlist, Some(65536)).unwrap();
        assert_eq!(report.signed.len(), 2);
        assert_eq!(report.skipped, vec!["missing.ts".to_owned(), "https://cdn.example/c.ts".to_owned()]);

        let record = decode_record(&fs::read(dir.path().join("a.ts.shoal")).unwrap());
        let stream = StreamId::from_name("site/live");
        publisher.public_key().verify(&stream, &record).unwrap();
        assert_eq!(record.record.segment, SegmentId(10));
        assert_eq!(record.record.size, 200_000);
        // The record does not verify for another swarm.
        assert!(publisher.public_key().verify(&StreamId::from_name("other"), &record).is_err());
        let record_b = decode_record(&fs::read(dir.path().join("b.ts.shoal")).unwrap());
        assert_eq!(record_b.record.segment, SegmentId(11));

        // A second run finds everything signed.
        let again = sign_playlist(&publisher, "site/live", &playlist, Some(65536)).unwrap();
        assert_eq!((again.signed.len(), again.already_signed), (0, 2));
    }

    #[test]
    fn byte_ranges_follow_the_previous_range_of_the_same_file() {
        let text = "#EXTM3U\n#EXT-X-MAP:URI=\"all.mp4\",BYTERANGE=\"800@0\"\n#EXTINF:2,\n#EXT-X-BYTERANGE:1000@800\nall.mp4\n#EXTINF:2,\n#EXT-X-BYTERANGE:500\nall.mp4\n#EXTINF:2,\nwhole.ts\n#EXTINF:2,\n#EXT-X-BYTERANGE:10\nother.mp4\n#EXTINF:2,\n#EXT-X-BYTERANGE:7@3\nother.mp4\n#EXTINF:2,\n#EXT-X-BYTERANGE:x@1\nall.mp4\n#EXTINF:2,\n#EXT-X-BYTERANGE:0@5\nall.mp4\n#EXTINF:2,\nlast.ts\n";
        let listed: Vec<_> = parse_media_playlist(text).into_iter().map(|s| (s.sequence, s.uri, s.range)).collect();
        assert_eq!(
            listed,
            vec![
                (0, "all.mp4".into(), Some((800, 1800))),
                (1, "all.mp4".into(), Some((1800, 2300))),
                (2, "whole.ts".into(), None),
                // No offset and no earlier range of other.mp4: invalid, skipped (its
                // number still counts).
                (4, "other.mp4".into(), Some((3, 10))),
                // Unreadable and empty ranges are skipped too, never taken as whole files.
                (7, "last.ts".into(), None),
            ]
        );
    }

    #[test]
    fn byte_range_segments_get_a_record_each_for_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let publisher = Publisher::from_secret([7; 32]);
        let file: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(dir.path().join("all.mp4"), &file).unwrap();
        let playlist = dir.path().join("vod.m3u8");
        fs::write(
            &playlist,
            "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:2,\n#EXT-X-BYTERANGE:10000@1000\nall.mp4\n#EXTINF:2,\n#EXT-X-BYTERANGE:19000\nall.mp4\n#EXTINF:2,\n#EXT-X-BYTERANGE:5000\nall.mp4\n",
        )
        .unwrap();
        let report = sign_playlist(&publisher, "site/vod", &playlist, None).unwrap();
        assert_eq!(report.signed.len(), 2);
        assert_eq!(report.skipped, vec!["all.mp4".to_owned()], "bytes 30000..35000 are past the file's end");
        let record = decode_record(&fs::read(dir.path().join("all.mp4.11000-30000.shoal")).unwrap());
        publisher.public_key().verify(&StreamId::from_name("site/vod"), &record).unwrap();
        assert_eq!((record.record.segment, record.record.size), (SegmentId(6), 19_000));
        let expected = SegmentRecord::for_data(
            StreamId::from_name("site/vod"),
            SegmentId(6),
            &file[11_000..],
            record.record.chunk_size,
        );
        assert_eq!(record.record.chunk_hashes, expected.chunk_hashes, "the record hashes exactly the range's bytes");
        assert!(dir.path().join("all.mp4.1000-11000.shoal").exists());
    }

    #[test]
    fn key_file_is_created_once_and_must_be_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publisher.key");
        let first = load_or_create_secret(&path).unwrap();
        assert_eq!(load_or_create_secret(&path).unwrap(), first);
        fs::write(&path, b"short").unwrap();
        assert!(matches!(load_secret(&path), Err(NodeError::Identity { .. })));
    }
}
