//! Whether the page is starved of CPU, from how late its timers fire.
//!
//! Shoal runs on the page's main thread, beside the player. On a weak device (or many
//! tabs on one), timers fire late; that is when Shoal's own work (uploads to
//! neighbours, many WebRTC connections, waiting on peers near a deadline) can cost the
//! player its frames. The runtime probes its timer every [`PROBE_MIN`]–[`PROBE_MAX`],
//! at random (a fixed period can fall in step with a page's busy cycle and only ever
//! see the gaps); the lateness smoothed over about two seconds decides: past
//! [`ENTER_LATE`] the page sheds load (uploads paused, direct connections closed, what
//! is due soon over HTTP); it stops once lateness stayed under [`LEAVE_LATE`] for [`LEAVE_AFTER`], so that it does not
//! flap while the page is on the edge. A page frozen by the browser (a background tab)
//! wakes once very late: one probe is not starvation, and a wake-up more than
//! [`FROZEN`] late is not counted.

use std::time::Duration;

use shoal_core::Instant;

/// The runtime probes its timer after a random wait between these.
pub const PROBE_MIN: Duration = Duration::from_millis(50);
pub const PROBE_MAX: Duration = Duration::from_millis(150);
/// Smoothed lateness at which the page starts shedding load (a page whose main thread
/// is busy with tasks of 120 ms or more most of the time).
pub const ENTER_LATE: Duration = Duration::from_millis(60);
/// Smoothed lateness under which it may stop...
pub const LEAVE_LATE: Duration = Duration::from_millis(20);
/// ...once it stayed there this long.
pub const LEAVE_AFTER: Duration = Duration::from_secs(10);
/// A probe later than this is a frozen page, not a busy one.
pub const FROZEN: Duration = Duration::from_secs(5);
/// Weight of each new probe in the smoothed lateness (about 20 probes: 2 s).
const WEIGHT: f64 = 0.05;

/// The wait before the next probe, for `unit` drawn uniformly from [0, 1).
pub fn probe_wait(unit: f64) -> Duration {
    PROBE_MIN + (PROBE_MAX - PROBE_MIN).mul_f64(unit.clamp(0.0, 1.0))
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Starvation {
    /// Smoothed lateness, in seconds.
    late: f64,
    shedding: bool,
    /// Since when the lateness has been under [`LEAVE_LATE`] while shedding.
    calm_since: Option<Instant>,
    /// Times shedding began.
    episodes: u32,
}

impl Starvation {
    /// A probe due at `expected` ran at `now`. Returns `Some(shedding)` when that changes.
    pub fn probe(&mut self, expected: Instant, now: Instant) -> Option<bool> {
        let late = now.saturating_since(expected);
        if late >= FROZEN {
            return None;
        }
        self.late += WEIGHT * (late.as_secs_f64() - self.late);
        let smoothed = Duration::from_secs_f64(self.late);
        if !self.shedding {
            if smoothed >= ENTER_LATE {
                self.shedding = true;
                self.calm_since = None;
                self.episodes = self.episodes.saturating_add(1);
                return Some(true);
            }
            return None;
        }
        if smoothed >= LEAVE_LATE {
            self.calm_since = None;
            return None;
        }
        let since = *self.calm_since.get_or_insert(now);
        if now.saturating_since(since) >= LEAVE_AFTER {
            self.shedding = false;
            self.calm_since = None;
            return Some(false);
        }
        None
    }

    pub fn shedding(&self) -> bool {
        self.shedding
    }

    /// The smoothed lateness of the page's timers.
    pub fn lateness(&self) -> Duration {
        Duration::from_secs_f64(self.late)
    }

    pub fn episodes(&self) -> u32 {
        self.episodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probes every 100 ms for `seconds`, each `late` late; returns the changes seen.
    fn run(s: &mut Starvation, start: Instant, seconds: u64, late: Duration) -> (Instant, Vec<bool>) {
        let mut changes = Vec::new();
        let mut expected = start;
        for _ in 0..seconds * 10 {
            expected = expected + probe_wait(0.5);
            if let Some(change) = s.probe(expected, expected + late) {
                changes.push(change);
            }
            expected = expected + late;
        }
        (expected, changes)
    }

    #[test]
    fn a_busy_page_sheds_within_seconds_and_recovers_after_a_calm_spell() {
        let mut s = Starvation::default();
        let (t, changes) = run(&mut s, Instant::ZERO, 10, Duration::from_millis(10));
        assert!(changes.is_empty() && !s.shedding(), "a healthy page never sheds");
        let (t, changes) = run(&mut s, t, 3, Duration::from_millis(150));
        assert_eq!(changes, vec![true], "150 ms late timers: shedding");
        assert!(s.lateness() >= ENTER_LATE);
        // Calm again: not before LEAVE_AFTER of calm.
        let (t, changes) = run(&mut s, t, 8, Duration::from_millis(5));
        assert!(changes.is_empty() && s.shedding(), "still shedding after 8 s of calm");
        let (_, changes) = run(&mut s, t, 10, Duration::from_millis(5));
        assert_eq!(changes, vec![false]);
        assert_eq!(s.episodes(), 1);
    }

    #[test]
    fn one_late_timer_or_a_frozen_tab_is_not_starvation() {
        let mut s = Starvation::default();
        let t = Instant::ZERO + Duration::from_secs(1);
        assert_eq!(s.probe(t, t + Duration::from_millis(800)), None, "one late probe");
        assert_eq!(s.probe(t, t + Duration::from_secs(60)), None, "a frozen tab waking up");
        let (_, changes) = run(&mut s, t, 5, Duration::from_millis(5));
        assert!(changes.is_empty() && !s.shedding());
    }

    #[test]
    fn a_page_on_the_edge_does_not_flap() {
        let mut s = Starvation::default();
        let (mut t, _) = run(&mut s, Instant::ZERO, 3, Duration::from_millis(150));
        assert!(s.shedding());
        // Alternating calm and busy seconds never give LEAVE_AFTER of calm.
        for _ in 0..10 {
            let (next, c1) = run(&mut s, t, 2, Duration::from_millis(5));
            let (next, c2) = run(&mut s, next, 1, Duration::from_millis(100));
            assert!(c1.is_empty() && c2.is_empty());
            t = next;
        }
        assert!(s.shedding());
    }
}
