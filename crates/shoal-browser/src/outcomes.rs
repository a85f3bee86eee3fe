//! How this page's dials to other pages ended (`stats().connectionOutcomes`), and what of
//! that its node has yet to hear: figures go to the node in `report` requests, at most
//! every [`REPORT_EVERY`], and a report that gets no answer is sent again later, so the
//! node's counts neither miss nor double what the page saw.

use std::time::Duration;

use shoal_core::Instant;
use shoal_proto::ConnectionOutcomes;
use shoal_webrtc::outcome::{DialFailure, PathKind};

/// Least time between two reports (the node counts one per 10 s per peer).
pub const REPORT_EVERY: Duration = Duration::from_secs(15);

/// The page's outcome counts and its reports to the node. `Id` names a request in flight.
#[derive(Debug, Default)]
pub struct OutcomeLog<Id> {
    total: ConnectionOutcomes,
    /// What the node has counted.
    acked: ConnectionOutcomes,
    /// A report in flight, and what it carries.
    pending: Option<(Id, ConnectionOutcomes)>,
    last_sent: Option<Instant>,
}

impl<Id: PartialEq + Copy> OutcomeLog<Id> {
    pub fn new() -> Self {
        Self {
            total: ConnectionOutcomes::default(),
            acked: ConnectionOutcomes::default(),
            pending: None,
            last_sent: None,
        }
    }

    /// Every outcome so far.
    pub fn total(&self) -> ConnectionOutcomes {
        self.total
    }

    pub fn connected(&mut self, path: PathKind) {
        let count = match path {
            PathKind::Host => &mut self.total.host,
            PathKind::ServerReflexive => &mut self.total.srflx,
            PathKind::Relayed => &mut self.total.relay,
        };
        *count = count.saturating_add(1);
    }

    pub fn failed(&mut self, failure: DialFailure) {
        let count = match failure {
            DialFailure::IceFailed => &mut self.total.ice_failed,
            DialFailure::SignallingTimeout => &mut self.total.signalling_timeout,
            DialFailure::Refused => &mut self.total.refused,
            DialFailure::Other => &mut self.total.other,
        };
        *count = count.saturating_add(1);
    }

    /// What the node has not heard of and no report in flight carries.
    fn unsent(&self) -> ConnectionOutcomes {
        let in_flight = self.pending.map(|(_, o)| o).unwrap_or_default();
        self.total.minus(&self.acked).minus(&in_flight)
    }

    /// When a report is due, if there is anything to report.
    pub fn due(&self) -> Option<Instant> {
        if self.pending.is_some() || self.unsent().is_empty() {
            return None;
        }
        Some(self.last_sent.map_or(Instant::ZERO, |t| t + REPORT_EVERY))
    }

    /// The report to send now, if one is due.
    pub fn take_report(&mut self, now: Instant) -> Option<ConnectionOutcomes> {
        self.due().filter(|at| *at <= now).map(|_| self.unsent())
    }

    /// `report` went out as request `id`.
    pub fn sent(&mut self, id: Id, report: ConnectionOutcomes, now: Instant) {
        self.pending = Some((id, report));
        self.last_sent = Some(now);
    }

    /// The answer to request `id`: `counted` if the node counted it. False if `id` is
    /// not a report of ours. An uncounted report is sent again with the next one.
    pub fn answered(&mut self, id: Id, counted: bool) -> bool {
        match self.pending {
            Some((pending, report)) if pending == id => {
                self.pending = None;
                if counted {
                    self.acked = ConnectionOutcomes {
                        host: self.acked.host.saturating_add(report.host),
                        srflx: self.acked.srflx.saturating_add(report.srflx),
                        relay: self.acked.relay.saturating_add(report.relay),
                        ice_failed: self.acked.ice_failed.saturating_add(report.ice_failed),
                        signalling_timeout: self.acked.signalling_timeout.saturating_add(report.signalling_timeout),
                        refused: self.acked.refused.saturating_add(report.refused),
                        other: self.acked.other.saturating_add(report.other),
                    };
                }
                true
            }
            _ => false,
        }
    }

    /// The node link is gone: a report in flight will get no answer.
    pub fn node_lost(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_say_means_no_report() {
        let log = OutcomeLog::<u32>::new();
        assert_eq!(log.due(), None);
    }

    #[test]
    fn each_outcome_reaches_the_node_exactly_once() {
        let mut log = OutcomeLog::new();
        let t0 = Instant::ZERO + Duration::from_secs(5);
        log.connected(PathKind::ServerReflexive);
        log.failed(DialFailure::IceFailed);
        let first = log.take_report(t0).expect("the first report goes at once");
        assert_eq!(first, ConnectionOutcomes { srflx: 1, ice_failed: 1, ..Default::default() });
        log.sent(1, first, t0);
        // While it is in flight, new outcomes wait, and nothing is sent twice.
        log.connected(PathKind::Relayed);
        assert_eq!(log.take_report(t0 + REPORT_EVERY), None);
        assert!(!log.answered(7, true), "not our request");
        assert!(log.answered(1, true));
        // The next report waits for the interval and carries only what is new.
        assert_eq!(log.take_report(t0 + Duration::from_secs(1)), None);
        let second = log.take_report(t0 + REPORT_EVERY).unwrap();
        assert_eq!(second, ConnectionOutcomes { relay: 1, ..Default::default() });
        // Refused (too frequent): sent again, with what came since.
        log.sent(2, second, t0 + REPORT_EVERY);
        assert!(log.answered(2, false));
        log.failed(DialFailure::Refused);
        let third = log.take_report(t0 + REPORT_EVERY * 2).unwrap();
        assert_eq!(third, ConnectionOutcomes { relay: 1, refused: 1, ..Default::default() });
        // A node lost with a report in flight: it is sent again to the next node.
        log.sent(3, third, t0 + REPORT_EVERY * 2);
        log.node_lost();
        assert_eq!(log.take_report(t0 + REPORT_EVERY * 3), Some(third));
        assert_eq!(
            log.total(),
            ConnectionOutcomes { srflx: 1, relay: 1, ice_failed: 1, refused: 1, ..Default::default() }
        );
    }
}
