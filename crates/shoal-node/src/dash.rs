//! The media segments of a DASH manifest (MPD), for `shoal-sign mpd`: each
//! representation's `SegmentTemplate` with `$Number$` addressing, expanded into segment
//! URIs with their numbers — the ids pages use for them (`shoal/shaka`), as the media
//! sequence number is for HLS.
//!
//! Static (VOD) manifests only: the segment count comes from `mediaPresentationDuration`
//! (or a period's `duration`) over the template's `duration`, or from its
//! `SegmentTimeline`. `$Time$` addressing names segments by time, not number, and is
//! reported as unsupported.

use crate::publish::ListedSegment;

/// One representation's media segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Representation {
    pub id: String,
    pub segments: Vec<ListedSegment>,
}

/// Expands `template` (`$RepresentationID$`, `$Number$` / `$Number%0Nd$`,
/// `$Bandwidth$`, `$$`) for one segment.
pub fn expand(template: &str, id: &str, bandwidth: u64, number: u64) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('$').ok_or_else(|| format!("unterminated $ in {template:?}"))?;
        let (name, format) = after[..end].split_once('%').map_or((&after[..end], None), |(n, f)| (n, Some(f)));
        let value = match name {
            "" => "$".to_owned(),
            "RepresentationID" => id.to_owned(),
            "Number" => pad(number, format)?,
            "Bandwidth" => pad(bandwidth, format)?,
            "Time" => return Err("$Time$ addressing names segments by time, not number: not supported".into()),
            other => return Err(format!("unknown template identifier ${other}$")),
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `%0Nd` formatting of a template identifier.
fn pad(value: u64, format: Option<&str>) -> Result<String, String> {
    let Some(format) = format else { return Ok(value.to_string()) };
    let width = format
        .strip_prefix('0')
        .and_then(|f| f.strip_suffix('d'))
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|w| *w <= 20)
        .ok_or_else(|| format!("unsupported format %{format}"))?;
    Ok(format!("{value:0width$}"))
}

/// An ISO 8601 duration as DASH writes it (`PT1M0.0S`, `PT2H`, `P1DT0.5S`), in seconds.
pub fn parse_duration(text: &str) -> Option<f64> {
    let rest = text.strip_prefix('P')?;
    let (days, time) = rest.split_once('T').unwrap_or((rest, ""));
    let mut seconds = 0.0;
    if !days.is_empty() {
        seconds += days.strip_suffix('D')?.parse::<f64>().ok()? * 86_400.0;
    }
    let mut number = String::new();
    for c in time.chars() {
        match c {
            'H' | 'M' | 'S' => {
                let value: f64 = number.parse().ok()?;
                number.clear();
                seconds += value
                    * match c {
                        'H' => 3600.0,
                        'M' => 60.0,
                        _ => 1.0,
                    };
            }
            _ => number.push(c),
        }
    }
    (number.is_empty() && seconds.is_finite() && seconds >= 0.0).then_some(seconds)
}

/// The first child of `node` named `name`.
fn child<'a, 'input>(node: roxmltree::Node<'a, 'input>, name: &str) -> Option<roxmltree::Node<'a, 'input>> {
    node.children().find(|c| c.has_tag_name(name))
}

/// Most segments listed per representation (a 2 s segment for a week).
const MAX_SEGMENTS: u64 = 400_000;

/// Every representation of a static MPD with its media segments (URIs relative to the
/// manifest, `BaseURL`s applied).
pub fn list(mpd: &str) -> Result<Vec<Representation>, String> {
    let doc = roxmltree::Document::parse(mpd).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "MPD" {
        return Err("not an MPD".into());
    }
    if root.attribute("type") == Some("dynamic") {
        return Err("a dynamic (live) MPD: only static ones are supported".into());
    }
    let total = root.attribute("mediaPresentationDuration").and_then(parse_duration);
    let base_of = |node: roxmltree::Node| {
        node.children()
            .find(|c| c.has_tag_name("BaseURL"))
            .and_then(|b| b.text())
            .map(str::trim)
            .unwrap_or("")
            .to_owned()
    };
    let mut out = Vec::new();
    for period in root.children().filter(|c| c.has_tag_name("Period")) {
        let period_duration = period.attribute("duration").and_then(parse_duration).or(total);
        for set in period.children().filter(|c| c.has_tag_name("AdaptationSet")) {
            for rep in set.children().filter(|c| c.has_tag_name("Representation")) {
                let id = rep.attribute("id").ok_or("a Representation without id")?.to_owned();
                let bandwidth = rep.attribute("bandwidth").and_then(|b| b.parse().ok()).unwrap_or(0);
                // A SegmentTemplate may sit on the representation, its set or its period;
                // the nearest attribute wins.
                let templates: Vec<_> =
                    [child(rep, "SegmentTemplate"), child(set, "SegmentTemplate"), child(period, "SegmentTemplate")]
                        .into_iter()
                        .flatten()
                        .collect();
                let attr = |name: &str| templates.iter().find_map(|t| t.attribute(name));
                let Some(media) = attr("media") else {
                    return Err(format!(
                        "representation {id}: no SegmentTemplate@media (SegmentBase and SegmentList are not supported)"
                    ));
                };
                let start: u64 = attr("startNumber").and_then(|n| n.parse().ok()).unwrap_or(1);
                let timescale: f64 =
                    attr("timescale").and_then(|n| n.parse().ok()).filter(|t: &f64| *t > 0.0).unwrap_or(1.0);
                let timeline = templates.iter().find_map(|t| child(*t, "SegmentTimeline"));
                let count = if let Some(timeline) = timeline {
                    timeline
                        .children()
                        .filter(|c| c.has_tag_name("S"))
                        .map(|s| 1 + s.attribute("r").and_then(|r| r.parse::<u64>().ok()).unwrap_or(0))
                        .sum::<u64>()
                } else {
                    let segment = attr("duration").and_then(|d| d.parse::<f64>().ok()).filter(|d| *d > 0.0);
                    let (Some(segment), Some(length)) = (segment, period_duration) else {
                        return Err(format!(
                            "representation {id}: neither a SegmentTimeline nor a duration to count segments by"
                        ));
                    };
                    // A last partial segment still is a segment; float noise is not.
                    (length / (segment / timescale) - 1e-6).ceil().max(0.0) as u64
                };
                if count > MAX_SEGMENTS {
                    return Err(format!("representation {id}: {count} segments, more than {MAX_SEGMENTS}"));
                }
                let base: String = [base_of(root), base_of(period), base_of(set), base_of(rep)].concat();
                let segments = (start..start + count)
                    .map(|number| {
                        Ok(ListedSegment {
                            sequence: number,
                            uri: format!("{base}{}", expand(media, &id, bandwidth, number)?),
                            range: None,
                        })
                    })
                    .collect::<Result<_, String>>()
                    .map_err(|e| format!("representation {id}: {e}"))?;
                out.push(Representation { id, segments });
            }
        }
    }
    if out.is_empty() {
        return Err("no representation".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As ffmpeg's DASH muxer writes it (`-use_template 1 -use_timeline 0`).
    const FFMPEG: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" type="static" mediaPresentationDuration="PT1M0.0S" maxSegmentDuration="PT2.0S" minBufferTime="PT4.0S">
  <Period id="0" start="PT0.0S">
    <AdaptationSet id="0" contentType="video">
      <Representation id="0" mimeType="video/mp4" codecs="avc1.4d401e" bandwidth="471776">
        <SegmentTemplate timescale="1000000" duration="2000000" initialization="init-$RepresentationID$.m4s" media="seg-$RepresentationID$-$Number%03d$.m4s" startNumber="1"/>
      </Representation>
    </AdaptationSet>
    <AdaptationSet id="1" contentType="audio">
      <SegmentTemplate timescale="48000" media="a/$Bandwidth$/$Number$.m4s" startNumber="7">
        <SegmentTimeline><S t="0" d="96000" r="2"/><S d="48000"/></SegmentTimeline>
      </SegmentTemplate>
      <Representation id="aac" bandwidth="64000"><BaseURL>audio/</BaseURL></Representation>
    </AdaptationSet>
  </Period>
</MPD>"#;

    #[test]
    fn templates_expand_into_numbered_segments() {
        let reps = list(FFMPEG).unwrap();
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[0].id, "0");
        assert_eq!(reps[0].segments.len(), 30, "60 s of 2 s segments");
        assert_eq!(reps[0].segments[0], ListedSegment { sequence: 1, uri: "seg-0-001.m4s".into(), range: None });
        assert_eq!(reps[0].segments[29].uri, "seg-0-030.m4s");
        // The set's template, the representation's BaseURL, a timeline of 3 + 1 segments.
        let audio: Vec<_> = reps[1].segments.iter().map(|s| (s.sequence, s.uri.as_str())).collect();
        assert_eq!(
            audio,
            vec![
                (7, "audio/a/64000/7.m4s"),
                (8, "audio/a/64000/8.m4s"),
                (9, "audio/a/64000/9.m4s"),
                (10, "audio/a/64000/10.m4s")
            ]
        );
    }

    #[test]
    fn what_cannot_be_listed_says_why() {
        assert!(list("not xml").unwrap_err().contains("not XML"));
        assert!(list("<html/>").unwrap_err().contains("not an MPD"));
        assert!(list(&FFMPEG.replace("type=\"static\"", "type=\"dynamic\"")).unwrap_err().contains("dynamic"));
        assert!(list(&FFMPEG.replace("$Number%03d$", "$Time$")).unwrap_err().contains("$Time$"));
        let no_length = FFMPEG.replace(" mediaPresentationDuration=\"PT1M0.0S\"", "");
        assert!(list(&no_length).unwrap_err().contains("neither a SegmentTimeline nor a duration"));
        let huge = FFMPEG.replace("PT1M0.0S", "P9999D");
        assert!(list(&huge).unwrap_err().contains("more than"));
        assert!(expand("x$Number%5s$", "a", 0, 1).is_err());
        assert!(expand("x$Number", "a", 0, 1).is_err());
        assert_eq!(expand("$$$Number%04d$", "a", 0, 42).unwrap(), "$0042");
    }

    #[test]
    fn durations_parse_as_dash_writes_them() {
        assert_eq!(parse_duration("PT1M0.0S"), Some(60.0));
        assert_eq!(parse_duration("PT2H0.5S"), Some(7200.5));
        assert_eq!(parse_duration("P1DT1S"), Some(86_401.0));
        assert_eq!(parse_duration("PT12"), None);
        assert_eq!(parse_duration("1M"), None);
    }
}
