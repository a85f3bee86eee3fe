//! Keeps stale records out of a live stream.
//!
//! A record is valid forever once signed, and a live publisher that restarts may number
//! its segments from zero again: a peer could then pass last run's segment 5 off as this
//! run's. Records carry the time they were published; records from the origin (over
//! HTTP, in the playlist, offered by the page) are trusted and anchor the stream's
//! clock, and a record from a peer must be no older than the anchors around it allow:
//! - there must be an anchor at or below its segment, and the record may not be older
//!   than the nearest one, less [`SLACK`] (a publisher's clock is monotonic within a
//!   run; later segments are never published earlier);
//! - nor older than the newest anchor of all, less [`MAX_SPREAD`] (a live window spans
//!   minutes, never more).
//!
//! So a live engine takes records from peers only for segments after one it fetched
//! from the origin: its first segments come over HTTP anyway, and a live viewer moves
//! forward. Records stamped 0 carry no
//! time (VOD, or a publisher that does not stamp): they pass only while no anchor has a
//! time either.

use std::time::Duration;

use crate::{integrity::SegmentId, vecmap::VecMap};

/// How much earlier than a lower segment's record a record may claim to be published.
pub(crate) const SLACK: Duration = Duration::from_secs(60);
/// How much older than the newest trusted record any record may be.
pub(crate) const MAX_SPREAD: Duration = Duration::from_secs(30 * 60);
/// Anchors remembered (the newest ones).
const MAX_ANCHORS: usize = 64;

/// Why a peer's record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// No trusted record yet to compare with.
    NoAnchor,
    /// Older than the trusted records allow: a replay.
    TooOld,
}

#[derive(Debug, Default)]
pub(crate) struct Freshness {
    /// Publication times of trusted records, by segment.
    anchors: VecMap<SegmentId, u64>,
}

impl Freshness {
    /// A record from a trusted source.
    pub fn anchor(&mut self, segment: SegmentId, published_at_ms: u64) {
        self.anchors.insert(segment, published_at_ms);
        while self.anchors.len() > MAX_ANCHORS {
            self.anchors.pop_first();
        }
    }

    /// Whether a record from a peer is fresh enough.
    pub fn check(&self, segment: SegmentId, published_at_ms: u64) -> Result<(), Stale> {
        let newest = self.anchors.values().copied().max().ok_or(Stale::NoAnchor)?;
        if newest == 0 {
            return Ok(()); // the publisher does not stamp its records
        }
        if published_at_ms == 0 || published_at_ms.saturating_add(MAX_SPREAD.as_millis() as u64) < newest {
            return Err(Stale::TooOld);
        }
        let (_, &below) = self.anchors.range(..=segment).next_back().ok_or(Stale::NoAnchor)?;
        if published_at_ms.saturating_add(SLACK.as_millis() as u64) < below {
            return Err(Stale::TooOld);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn replays_from_an_earlier_run_are_refused() {
        let mut f = Freshness::default();
        assert_eq!(f.check(SegmentId(5), 1), Err(Stale::NoAnchor));
        // This run started at t = 100 min and publishes a segment every 2 s.
        let t0 = 100 * MIN;
        f.anchor(SegmentId(4), t0 + 8_000);
        assert_eq!(f.check(SegmentId(5), t0 + 10_000), Ok(()));
        // Below every anchor: not taken from peers, whatever its time.
        assert_eq!(f.check(SegmentId(3), t0 + 6_000), Err(Stale::NoAnchor));
        // Segment 5 of a run that stopped two minutes ago.
        assert_eq!(f.check(SegmentId(5), t0 - 2 * MIN + 10_000), Err(Stale::TooOld));
        // Segment 9 of a run an hour ago.
        f.anchor(SegmentId(2), t0 + 4_000);
        assert_eq!(f.check(SegmentId(9), t0 - 60 * MIN), Err(Stale::TooOld));
        assert_eq!(f.check(SegmentId(5), 0), Err(Stale::TooOld));
    }

    #[test]
    fn unstamped_publishers_are_not_checked() {
        let mut f = Freshness::default();
        f.anchor(SegmentId(1), 0);
        assert_eq!(f.check(SegmentId(2), 0), Ok(()));
    }
}
