//! Which signalling node a page uses, and where it goes when that one is lost.
//!
//! A page picks its node at random among all it was given (the well-known document
//! lists the node that served it and the nodes it federates with). Random assignment
//! spreads pages evenly with no load figures and no herd (least-loaded-first would send
//! every page that loads within one heartbeat to the same node), and since federation
//! introduces pages across nodes, a popular swarm spreads over every node instead of
//! landing on one (as a hash of the swarm id would make it). When the link is lost the
//! page moves to the next node at once; only after every node failed once does it back
//! off before going round again.

use std::time::Duration;

/// First wait after a whole round of failures; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// See the module docs.
#[derive(Debug)]
pub struct NodeChoice<T> {
    candidates: Vec<T>,
    current: usize,
    /// Nodes lost since the last connection.
    tried: usize,
    backoff: Duration,
}

impl<T> NodeChoice<T> {
    /// `None` without candidates. `seed` decides the order (pages pass their own
    /// randomness).
    pub fn new(mut candidates: Vec<T>, seed: u64) -> Option<Self> {
        if candidates.is_empty() {
            return None;
        }
        // Fisher-Yates with an LCG: which node comes first is all that matters here.
        let mut state = seed;
        for i in (1..candidates.len()).rev() {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            candidates.swap(i, ((state >> 33) % (i as u64 + 1)) as usize);
        }
        Some(Self { candidates, current: 0, tried: 0, backoff: BACKOFF_MIN })
    }

    pub fn current(&self) -> &T {
        &self.candidates[self.current]
    }

    pub fn candidates(&self) -> &[T] {
        &self.candidates
    }

    /// The link to the current node came up.
    pub fn connected(&mut self) {
        self.tried = 0;
        self.backoff = BACKOFF_MIN;
    }

    /// The link to the current node was lost or could not be made: moves to the next
    /// node and returns how long to wait before dialling it.
    pub fn lost(&mut self) -> Duration {
        self.current = (self.current + 1) % self.candidates.len();
        self.tried += 1;
        if self.candidates.len() > 1 && self.tried < self.candidates.len() {
            return Duration::ZERO;
        }
        self.tried = 0;
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_on_at_once_and_backs_off_after_a_round() {
        let mut choice = NodeChoice::new(vec!["a", "b", "c"], 7).unwrap();
        let first = *choice.current();
        assert_eq!(choice.lost(), Duration::ZERO);
        assert_ne!(*choice.current(), first);
        assert_eq!(choice.lost(), Duration::ZERO);
        // All three failed: wait, then the waits grow.
        assert_eq!(choice.lost(), BACKOFF_MIN);
        assert_eq!(*choice.current(), first);
        assert_eq!(choice.lost(), Duration::ZERO);
        assert_eq!(choice.lost(), Duration::ZERO);
        assert_eq!(choice.lost(), BACKOFF_MIN * 2);
        choice.connected();
        assert_eq!(choice.lost(), Duration::ZERO);
    }

    #[test]
    fn one_node_backs_off_and_none_is_none() {
        let mut choice = NodeChoice::new(vec![1], 1).unwrap();
        assert_eq!(choice.lost(), BACKOFF_MIN);
        assert_eq!(choice.lost(), BACKOFF_MIN * 2);
        for _ in 0..20 {
            choice.lost();
        }
        assert_eq!(choice.lost(), BACKOFF_MAX);
        assert!(NodeChoice::<u8>::new(Vec::new(), 1).is_none());
    }

    /// Pages spread over the nodes: each of 3 nodes is first for about a third of
    /// 3,000 seeds.
    #[test]
    fn pages_spread_evenly() {
        let mut counts = [0usize; 3];
        for seed in 0..3000u64 {
            let seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            counts[*NodeChoice::new(vec![0, 1, 2], seed).unwrap().current()] += 1;
        }
        assert!(counts.iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
    }
}
