//! Pages' reports of how their dials to other pages ended (`MembershipRequest::Report`),
//! admitted at most once per peer per `REPORT_INTERVAL_MIN_SECS` with each figure capped,
//! so one page cannot drown what the others say in `shoal_peer_connections_total`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::PeerId;
use shoal_proto::{ConnectionOutcomes, MAX_REPORTED_OUTCOMES, REPORT_INTERVAL_MIN_SECS};

/// When each connected peer's last report was counted.
#[derive(Debug, Default)]
pub struct ReportGate {
    last: HashMap<PeerId, Instant>,
}

impl ReportGate {
    /// The figures to count for `peer`'s report (each capped), or `None` if it reported
    /// too recently.
    pub fn admit(
        &mut self,
        peer: PeerId,
        outcomes: &ConnectionOutcomes,
        now: Instant,
    ) -> Option<Vec<(&'static str, u64)>> {
        let interval = Duration::from_secs(REPORT_INTERVAL_MIN_SECS);
        if self.last.get(&peer).is_some_and(|last| now.duration_since(*last) < interval) {
            return None;
        }
        self.last.insert(peer, now);
        Some(
            outcomes
                .labelled()
                .into_iter()
                .filter(|(_, count)| *count > 0)
                .map(|(label, count)| (label, u64::from(count.min(MAX_REPORTED_OUTCOMES))))
                .collect(),
        )
    }

    /// The peer is gone.
    pub fn forget(&mut self, peer: &PeerId) {
        self.last.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_interval_each_figure_capped() {
        let mut gate = ReportGate::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let huge = ConnectionOutcomes { relay: u32::MAX, ice_failed: 2, ..Default::default() };
        assert_eq!(
            gate.admit(a, &huge, t0),
            Some(vec![("relay", u64::from(MAX_REPORTED_OUTCOMES)), ("ice_failed", 2)])
        );
        // Again at once: refused; another peer is not affected.
        assert_eq!(gate.admit(a, &huge, t0 + Duration::from_secs(1)), None);
        assert!(gate.admit(b, &ConnectionOutcomes { host: 1, ..Default::default() }, t0).is_some());
        // After the interval, or once the peer reconnects, it is heard again.
        assert!(gate.admit(a, &huge, t0 + Duration::from_secs(REPORT_INTERVAL_MIN_SECS)).is_some());
        gate.forget(&b);
        assert!(gate.admit(b, &ConnectionOutcomes::default(), t0 + Duration::from_secs(1)).is_some());
    }
}
