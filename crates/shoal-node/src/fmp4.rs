//! Just enough ISO-BMFF to play a looped fMP4 rendition as one continuous timeline: the
//! demo stream repeats its VOD segments forever, and each repetition's decode times
//! (`tfdt`, and `sidx`'s earliest presentation time) are moved on by the rendition's
//! length, track by track, so the player sees no discontinuity at the loop. (hls.js
//! 1.7 stalled at the second `EXT-X-DISCONTINUITY` of the looped demo, with or without
//! Shoal: every viewer, every loop after the first.)
//!
//! Only what the demo's ffmpeg output holds is handled: 64-bit `tfdt` (version 1) and
//! `sidx` of either version. Anything else is an error, and the demo falls back to
//! marking each loop with a discontinuity.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Fmp4Error {
    #[error("box at {0} runs past its parent")]
    Truncated(usize),
    #[error("{0} without {1}")]
    Missing(&'static str, &'static str),
    #[error("32-bit tfdt: the loop cannot be renumbered in place")]
    ShortTfdt,
    #[error("a 32-bit sidx time overflows after {0} passes")]
    SidxOverflow(u64),
}

/// Each child box of `data[start..end]`: (type, payload start, box end).
fn children(data: &[u8], start: usize, end: usize) -> Result<Vec<([u8; 4], usize, usize)>, Fmp4Error> {
    let mut out = Vec::new();
    let mut at = start;
    while at + 8 <= end {
        let size32 = u32::from_be_bytes(read4(data, at)?) as usize;
        let kind: [u8; 4] = read4(data, at + 4)?;
        let (size, header) = match size32 {
            1 => (u64::from_be_bytes(read8(data, at + 8)?) as usize, 16),
            0 => (end - at, 8),
            n => (n, 8),
        };
        if size < header || at.checked_add(size).is_none_or(|e| e > end) {
            return Err(Fmp4Error::Truncated(at));
        }
        out.push((kind, at + header, at + size));
        at += size;
    }
    Ok(out)
}

fn read4(data: &[u8], at: usize) -> Result<[u8; 4], Fmp4Error> {
    data.get(at..at + 4).and_then(|s| s.try_into().ok()).ok_or(Fmp4Error::Truncated(at))
}

fn read8(data: &[u8], at: usize) -> Result<[u8; 8], Fmp4Error> {
    data.get(at..at + 8).and_then(|s| s.try_into().ok()).ok_or(Fmp4Error::Truncated(at))
}

fn byte_at(data: &[u8], at: usize) -> Result<u8, Fmp4Error> {
    data.get(at).copied().ok_or(Fmp4Error::Truncated(at))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, Fmp4Error> {
    Ok(u32::from_be_bytes(read4(data, at)?))
}

fn find(boxes: &[([u8; 4], usize, usize)], kind: &[u8; 4]) -> Option<(usize, usize)> {
    boxes.iter().find(|(k, _, _)| k == kind).map(|&(_, s, e)| (s, e))
}

/// Per track of the init segment: (timescale, default sample duration from `trex`).
pub fn tracks(init: &[u8]) -> Result<BTreeMap<u32, (u32, u32)>, Fmp4Error> {
    let top = children(init, 0, init.len())?;
    let (moov, moov_end) = find(&top, b"moov").ok_or(Fmp4Error::Missing("init", "moov"))?;
    let moov = children(init, moov, moov_end)?;
    let mut defaults = BTreeMap::new();
    if let Some((mvex, mvex_end)) = find(&moov, b"mvex") {
        for (kind, s, _) in children(init, mvex, mvex_end)? {
            if &kind == b"trex" {
                // version/flags, track_ID, default_sample_description_index, default_sample_duration
                defaults.insert(u32_at(init, s + 4)?, u32_at(init, s + 12)?);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (kind, s, e) in moov {
        if &kind != b"trak" {
            continue;
        }
        let trak = children(init, s, e)?;
        let (tkhd, _) = find(&trak, b"tkhd").ok_or(Fmp4Error::Missing("trak", "tkhd"))?;
        let id_at = if byte_at(init, tkhd)? == 1 { tkhd + 4 + 16 } else { tkhd + 4 + 8 };
        let id = u32_at(init, id_at)?;
        let (mdia, mdia_end) = find(&trak, b"mdia").ok_or(Fmp4Error::Missing("trak", "mdia"))?;
        let mdia = children(init, mdia, mdia_end)?;
        let (mdhd, _) = find(&mdia, b"mdhd").ok_or(Fmp4Error::Missing("mdia", "mdhd"))?;
        let scale_at = if byte_at(init, mdhd)? == 1 { mdhd + 4 + 16 } else { mdhd + 4 + 8 };
        out.insert(id, (u32_at(init, scale_at)?, defaults.get(&id).copied().unwrap_or(0)));
    }
    Ok(out)
}

/// One `traf` of a media segment: its track, where its 64-bit `tfdt` value sits, that
/// value, and the duration of its samples.
struct Fragment {
    track: u32,
    tfdt_at: usize,
    decode_time: u64,
    duration: u64,
}

fn fragments(segment: &[u8], trex: &BTreeMap<u32, (u32, u32)>) -> Result<Vec<Fragment>, Fmp4Error> {
    let top = children(segment, 0, segment.len())?;
    let mut out = Vec::new();
    for (kind, s, e) in &top {
        if kind != b"moof" {
            continue;
        }
        for (kind, s, e) in children(segment, *s, *e)? {
            if &kind != b"traf" {
                continue;
            }
            let traf = children(segment, s, e)?;
            let (tfhd, _) = find(&traf, b"tfhd").ok_or(Fmp4Error::Missing("traf", "tfhd"))?;
            let tfhd_flags = u32_at(segment, tfhd)? & 0x00ff_ffff;
            let track = u32_at(segment, tfhd + 4)?;
            let mut at = tfhd + 8;
            if tfhd_flags & 0x01 != 0 {
                at += 8; // base_data_offset
            }
            if tfhd_flags & 0x02 != 0 {
                at += 4; // sample_description_index
            }
            let default_duration =
                if tfhd_flags & 0x08 != 0 { u32_at(segment, at)? } else { trex.get(&track).map_or(0, |&(_, d)| d) };
            let (tfdt, _) = find(&traf, b"tfdt").ok_or(Fmp4Error::Missing("traf", "tfdt"))?;
            if byte_at(segment, tfdt)? != 1 {
                return Err(Fmp4Error::ShortTfdt);
            }
            let decode_time = u64::from_be_bytes(read8(segment, tfdt + 4)?);
            let mut duration = 0u64;
            for (kind, s, _) in &traf {
                if kind != b"trun" {
                    continue;
                }
                let flags = u32_at(segment, *s)? & 0x00ff_ffff;
                let count = u32_at(segment, s + 4)?;
                let mut at = s + 8;
                if flags & 0x001 != 0 {
                    at += 4;
                }
                if flags & 0x004 != 0 {
                    at += 4;
                }
                let per_sample = [0x100, 0x200, 0x400, 0x800].iter().filter(|f| flags & **f != 0).count() * 4;
                for _ in 0..count {
                    duration = duration.saturating_add(u64::from(if flags & 0x100 != 0 {
                        u32_at(segment, at)?
                    } else {
                        default_duration
                    }));
                    at += per_sample;
                }
            }
            out.push(Fragment { track, tfdt_at: tfdt + 4, decode_time, duration });
        }
    }
    if out.is_empty() {
        return Err(Fmp4Error::Missing("segment", "moof/traf"));
    }
    Ok(out)
}

/// A decode time that moves with each pass: where it sits in its segment, whether it is
/// 64 bits wide, its track, and its value in pass 0.
struct Stamp {
    at: usize,
    wide: bool,
    track: u32,
    value: u64,
}

/// Every decode time of one segment: each fragment's `tfdt` and each `sidx`'s earliest
/// presentation time (its timescale is the track's in ffmpeg's output).
fn stamps(segment: &[u8], trex: &BTreeMap<u32, (u32, u32)>) -> Result<(Vec<Fragment>, Vec<Stamp>), Fmp4Error> {
    let fragments = fragments(segment, trex)?;
    let mut stamps: Vec<Stamp> =
        fragments.iter().map(|f| Stamp { at: f.tfdt_at, wide: true, track: f.track, value: f.decode_time }).collect();
    // sidx: version/flags, reference_ID, timescale, earliest_presentation_time (32 or 64 bits).
    for (kind, s, _) in children(segment, 0, segment.len())? {
        if &kind != b"sidx" {
            continue;
        }
        let track = u32_at(segment, s + 4)?;
        let at = s + 12;
        let wide = byte_at(segment, s)? == 1;
        let value = if wide { u64::from_be_bytes(read8(segment, at)?) } else { u64::from(u32_at(segment, at)?) };
        stamps.push(Stamp { at, wide, track, value });
    }
    Ok((fragments, stamps))
}

/// A looped fMP4 rendition: how far each track's clock moves per loop, and where each
/// segment's decode times sit (found once, so a request only patches bytes).
pub struct Looped {
    /// Per track: the length of one pass over all segments, in its timescale.
    loop_length: BTreeMap<u32, u64>,
    /// Per track: the decode time its first segment starts at, in its timescale.
    first: BTreeMap<u32, u64>,
    /// Per segment, in loop order.
    stamps: Vec<Vec<Stamp>>,
}

impl Looped {
    /// Checks every segment can be renumbered and measures the loop, track by track (the
    /// end of the last fragment minus the start of the first: audio frames rarely add up
    /// to the video's length exactly).
    pub fn new(init: &[u8], segments: &[&[u8]]) -> Result<Self, Fmp4Error> {
        let trex = tracks(init)?;
        let mut first = BTreeMap::new();
        let mut end = BTreeMap::new();
        let mut all = Vec::with_capacity(segments.len());
        for segment in segments {
            let (fragments, stamps) = stamps(segment, &trex)?;
            for f in fragments {
                first.entry(f.track).or_insert(f.decode_time);
                end.insert(f.track, f.decode_time.saturating_add(f.duration));
            }
            all.push(stamps);
        }
        let loop_length =
            end.iter().map(|(track, e)| (*track, e.saturating_sub(first.get(track).copied().unwrap_or(0)))).collect();
        Ok(Self { loop_length, first, stamps: all })
    }

    /// Where track `track`'s first segment starts (its decode time in pass 0).
    pub fn first_decode_time(&self, track: u32) -> Option<u64> {
        self.first.get(&track).copied()
    }

    /// Segment `index` of the loop (`segment`, as given to [`Looped::new`]) as it plays
    /// in pass `pass` (0 is the original).
    pub fn renumber(&self, index: usize, segment: &Bytes, pass: u64) -> Result<Bytes, Fmp4Error> {
        if pass == 0 {
            return Ok(segment.clone());
        }
        let stamps = self.stamps.get(index).ok_or(Fmp4Error::Missing("loop", "segment"))?;
        let mut out = BytesMut::from(&segment[..]);
        for stamp in stamps {
            let shift = self.loop_length.get(&stamp.track).map_or(0, |l| l.saturating_mul(pass));
            let value = stamp.value.saturating_add(shift);
            let width = if stamp.wide { 8 } else { 4 };
            let slot = out.get_mut(stamp.at..stamp.at + width).ok_or(Fmp4Error::Truncated(stamp.at))?;
            if stamp.wide {
                slot.copy_from_slice(&value.to_be_bytes());
            } else {
                let value = u32::try_from(value).map_err(|_| Fmp4Error::SidxOverflow(pass))?;
                slot.copy_from_slice(&value.to_be_bytes());
            }
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    fn full(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut payload = ((u32::from(version) << 24) | flags).to_be_bytes().to_vec();
        payload.extend_from_slice(body);
        boxed(kind, &payload)
    }

    fn init() -> Vec<u8> {
        let trak = |id: u32, scale: u32| {
            let mut tkhd = vec![0; 8]; // creation, modification (version 0)
            tkhd.extend_from_slice(&id.to_be_bytes());
            tkhd.extend_from_slice(&[0; 60]);
            let mut mdhd = vec![0; 8];
            mdhd.extend_from_slice(&scale.to_be_bytes());
            mdhd.extend_from_slice(&[0; 8]);
            let mdia = boxed(b"mdia", &full(b"mdhd", 0, 0, &mdhd));
            boxed(b"trak", &[full(b"tkhd", 0, 3, &tkhd), mdia].concat())
        };
        let trex = |id: u32, duration: u32| {
            full(
                b"trex",
                0,
                0,
                &[id.to_be_bytes(), 1u32.to_be_bytes(), duration.to_be_bytes(), [0; 4], [0; 4]].concat(),
            )
        };
        let mvex = boxed(b"mvex", &[trex(1, 512), trex(2, 1024)].concat());
        [boxed(b"ftyp", b"iso6"), boxed(b"moov", &[trak(1, 12800), trak(2, 48000), mvex].concat())].concat()
    }

    /// A segment: video (track 1) with per-sample durations, audio (track 2) with trex's
    /// default, and a version-0 sidx for track 1.
    fn segment(video_time: u64, audio_time: u64, audio_frames: u32) -> Bytes {
        let traf = |track: u32, time: u64, trun: Vec<u8>| {
            boxed(
                b"traf",
                &[full(b"tfhd", 0, 0x020000, &track.to_be_bytes()), full(b"tfdt", 1, 0, &time.to_be_bytes()), trun]
                    .concat(),
            )
        };
        let video_samples: Vec<u8> =
            (0..50).flat_map(|_| [256u32.to_be_bytes(), 7u32.to_be_bytes()].concat()).collect();
        let video_trun = full(b"trun", 0, 0x100 | 0x200, &[50u32.to_be_bytes().to_vec(), video_samples].concat());
        // Sample sizes only: durations come from trex.
        let audio_trun = full(
            b"trun",
            0,
            0x200,
            &[audio_frames.to_be_bytes().to_vec(), vec![0; 4 * audio_frames as usize]].concat(),
        );
        let moof = boxed(
            b"moof",
            &[
                full(b"mfhd", 0, 0, &1u32.to_be_bytes()),
                traf(1, video_time, video_trun),
                traf(2, audio_time, audio_trun),
            ]
            .concat(),
        );
        let sidx = full(
            b"sidx",
            0,
            0,
            &[1u32.to_be_bytes(), 12800u32.to_be_bytes(), (video_time as u32).to_be_bytes(), [0; 4]].concat(),
        );
        Bytes::from([boxed(b"styp", b"msdh"), sidx, moof, boxed(b"mdat", &[0; 16])].concat())
    }

    fn decode_times(segment: &Bytes) -> Vec<(u32, u64)> {
        fragments(segment, &tracks(&init()).unwrap()).unwrap().iter().map(|f| (f.track, f.decode_time)).collect()
    }

    #[test]
    fn a_loop_continues_each_track_where_the_last_pass_ended() {
        let init = init();
        // Two segments of 50 × 256 = 12,800 video ticks (1 s); audio 47 then 46 frames.
        let segments = [segment(0, 0, 47), segment(12_800, 47 * 1024, 46)];
        let looped = Looped::new(&init, &segments.iter().map(|s| &s[..]).collect::<Vec<_>>()).unwrap();
        assert_eq!(looped.loop_length[&1], 25_600);
        assert_eq!(looped.loop_length[&2], 93 * 1024);

        assert_eq!(looped.renumber(0, &segments[0], 0).unwrap(), segments[0]);
        let third_pass = looped.renumber(1, &segments[1], 2).unwrap();
        assert_eq!(decode_times(&third_pass), vec![(1, 12_800 + 2 * 25_600), (2, 47 * 1024 + 2 * 93 * 1024)]);
        // sidx moved with its track; nothing else changed.
        // styp (12 bytes), then sidx: header, version/flags, reference_ID, timescale.
        let sidx_time = |s: &Bytes| u32::from_be_bytes(s[32..36].try_into().unwrap());
        assert_eq!(sidx_time(&third_pass), 12_800 + 2 * 25_600);
        assert_eq!(third_pass.len(), segments[1].len());
        assert_eq!(third_pass[third_pass.len() - 24..], segments[1][segments[1].len() - 24..], "media untouched");
        assert!(looped.renumber(2, &segments[1], 1).is_err(), "no third segment in this loop");
    }

    #[test]
    fn malformed_boxes_are_errors_not_panics() {
        let good = segment(0, 0, 3);
        for cut in [0, 7, 20, 40, good.len() - 1] {
            let bad = Bytes::copy_from_slice(&good[..cut]);
            let _ = Looped::new(&init(), &[&bad[..]]);
        }
        let mut huge = good.to_vec();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Looped::new(&init(), &[&huge[..]]), Err(Fmp4Error::Truncated(0))));
        let mut tiny = good.to_vec();
        tiny[0..4].copy_from_slice(&3u32.to_be_bytes());
        assert!(Looped::new(&init(), &[&tiny[..]]).is_err());
    }
}
