//! Who is in which swarm, as this node knows it. Pure bookkeeping: the swarm event loop
//! calls in when members join, leave or disconnect, and gets samples out.

use std::collections::{HashMap, HashSet};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use rand::{Rng, seq::index};
use shoal_proto::{Member, RefusalReason, validate_swarm_id};

/// Limits on what members may make a node hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most (peer, swarm) memberships held at once.
    pub max_memberships: usize,
    /// Most swarms one peer may be in.
    pub max_swarms_per_peer: usize,
    /// How many other members a join returns.
    pub sample_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_memberships: 100_000, max_swarms_per_peer: 8, sample_size: 32 }
    }
}

#[derive(Debug, Default)]
struct SwarmMembers {
    /// Dense list for O(1) sampling and removal (`swap_remove`).
    members: Vec<PeerId>,
    position: HashMap<PeerId, usize>,
}

impl SwarmMembers {
    fn insert(&mut self, peer: PeerId) -> bool {
        if self.position.contains_key(&peer) {
            return false;
        }
        self.position.insert(peer, self.members.len());
        self.members.push(peer);
        true
    }

    fn remove(&mut self, peer: &PeerId) -> bool {
        let Some(at) = self.position.remove(peer) else {
            return false;
        };
        self.members.swap_remove(at);
        if let Some(moved) = self.members.get(at) {
            self.position.insert(*moved, at);
        }
        true
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Registry {
    limits: Limits,
    swarms: HashMap<String, SwarmMembers>,
    /// Swarms each member is in.
    memberships: HashMap<PeerId, HashSet<String>>,
    /// Browser-dialable addresses of this node, each ending in `/p2p/<node>`.
    node_addrs: Vec<Multiaddr>,
    total: usize,
}

impl Registry {
    pub fn new(limits: Limits) -> Self {
        Self { limits, swarms: HashMap::new(), memberships: HashMap::new(), node_addrs: Vec::new(), total: 0 }
    }

    /// Sets the addresses members are advertised through.
    pub fn set_node_addrs(&mut self, addrs: Vec<Multiaddr>) {
        self.node_addrs = addrs;
    }

    /// Members of `swarm`.
    pub fn swarm_size(&self, swarm: &str) -> usize {
        self.swarms.get(swarm).map_or(0, |s| s.members.len())
    }

    /// Number of swarms with at least one member.
    pub fn swarm_count(&self) -> usize {
        self.swarms.len()
    }

    /// Number of (peer, swarm) memberships.
    pub fn membership_count(&self) -> usize {
        self.total
    }

    /// Adds `peer` to `swarm` (idempotent) and returns a random sample of the others.
    pub fn join(&mut self, peer: PeerId, swarm: &str, rng: &mut impl Rng) -> Result<Vec<Member>, RefusalReason> {
        validate_swarm_id(swarm)?;
        let joined = self.memberships.get(&peer);
        let already = joined.is_some_and(|s| s.contains(swarm));
        if !already {
            if joined.map_or(0, HashSet::len) >= self.limits.max_swarms_per_peer {
                return Err(RefusalReason::TooManySwarms);
            }
            if self.total >= self.limits.max_memberships {
                return Err(RefusalReason::NodeFull);
            }
            self.swarms.entry(swarm.to_owned()).or_default().insert(peer);
            self.memberships.entry(peer).or_default().insert(swarm.to_owned());
            self.total += 1;
        }
        Ok(self.sample(swarm, &peer, rng))
    }

    fn sample(&self, swarm: &str, exclude: &PeerId, rng: &mut impl Rng) -> Vec<Member> {
        let Some(members) = self.swarms.get(swarm) else {
            return Vec::new();
        };
        let others = members.members.len().saturating_sub(1);
        let amount = self.limits.sample_size.min(others);
        // Sample one extra so dropping `exclude` still leaves `amount`.
        let picks = index::sample(rng, members.members.len(), (amount + 1).min(members.members.len()));
        picks
            .into_iter()
            .map(|i| members.members[i])
            .filter(|p| p != exclude)
            .take(amount)
            .map(|p| self.describe(p))
            .collect()
    }

    fn describe(&self, peer: PeerId) -> Member {
        let addrs = self
            .node_addrs
            .iter()
            .map(|a| a.clone().with(Protocol::P2pCircuit).with(Protocol::WebRTC).with(Protocol::P2p(peer)).to_string())
            .collect();
        Member { peer: peer.to_string(), addrs }
    }

    /// Removes `peer` from `swarm`.
    pub fn leave(&mut self, peer: &PeerId, swarm: &str) {
        let Some(swarms) = self.memberships.get_mut(peer) else {
            return;
        };
        if !swarms.remove(swarm) {
            return;
        }
        if swarms.is_empty() {
            self.memberships.remove(peer);
        }
        self.remove_from_swarm(peer, swarm);
    }

    /// Forgets `peer` everywhere (its connection to this node is gone).
    pub fn remove_peer(&mut self, peer: &PeerId) -> usize {
        let Some(swarms) = self.memberships.remove(peer) else {
            return 0;
        };
        for swarm in &swarms {
            self.remove_from_swarm(peer, swarm);
        }
        swarms.len()
    }

    fn remove_from_swarm(&mut self, peer: &PeerId, swarm: &str) {
        if let Some(members) = self.swarms.get_mut(swarm)
            && members.remove(peer)
        {
            self.total -= 1;
            if members.members.is_empty() {
                self.swarms.remove(swarm);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn registry(sample_size: usize) -> Registry {
        let mut r = Registry::new(Limits { sample_size, max_swarms_per_peer: 2, max_memberships: 5 });
        let node: Multiaddr =
            format!("/ip4/10.99.0.1/udp/9090/webrtc-direct/p2p/{}", PeerId::random()).parse().unwrap();
        r.set_node_addrs(vec![node]);
        r
    }

    #[test]
    fn join_returns_others_with_webrtc_addresses() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut r = registry(10);
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(r.join(a, "s", &mut rng).unwrap().is_empty());
        let seen = r.join(b, "s", &mut rng).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].peer, a.to_string());
        assert!(seen[0].addrs[0].ends_with(&format!("/p2p-circuit/webrtc/p2p/{a}")), "{}", seen[0].addrs[0]);
        // Joining again is idempotent.
        r.join(b, "s", &mut rng).unwrap();
        assert_eq!(r.membership_count(), 2);
    }

    #[test]
    fn sample_is_bounded_and_excludes_self() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut r = Registry::new(Limits { sample_size: 3, ..Limits::default() });
        let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        for p in &peers {
            r.join(*p, "s", &mut rng).unwrap();
        }
        for _ in 0..50 {
            let sample = r.join(peers[0], "s", &mut rng).unwrap();
            assert_eq!(sample.len(), 3);
            assert!(sample.iter().all(|m| m.peer != peers[0].to_string()));
        }
    }

    #[test]
    fn limits_and_removal() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut r = registry(10);
        let a = PeerId::random();
        r.join(a, "one", &mut rng).unwrap();
        r.join(a, "two", &mut rng).unwrap();
        assert_eq!(r.join(a, "three", &mut rng), Err(RefusalReason::TooManySwarms));
        assert_eq!(r.join(a, "", &mut rng), Err(RefusalReason::BadSwarmId));
        for _ in 0..3 {
            r.join(PeerId::random(), "one", &mut rng).unwrap();
        }
        assert_eq!(r.join(PeerId::random(), "one", &mut rng), Err(RefusalReason::NodeFull));
        assert_eq!(r.remove_peer(&a), 2);
        assert_eq!(r.membership_count(), 3);
        assert_eq!(r.swarm_count(), 1);
        r.leave(&PeerId::random(), "one");
        assert_eq!(r.membership_count(), 3);
    }
}
