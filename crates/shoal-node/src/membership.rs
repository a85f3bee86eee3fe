//! Who is in which swarm, as this node knows it. Pure bookkeeping: the swarm event loop
//! calls in when members join, leave or disconnect, and gets samples out.
//!
//! PeerIds cost nothing, addresses do: one host (or one IPv6 /64, which any home gets)
//! may hold at most [`Limits::max_members_per_network`] members of a swarm, and a join
//! answer holds at most [`Limits::max_sample_per_network`] members of one network
//! (IPv4 /24, IPv6 /64), so a Sybil on one network can neither fill a swarm nor every
//! answer.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use rand::{Rng, seq::index};
use shoal_proto::{Member, RefusalReason, validate_swarm_id};

/// The network an address belongs to, for the Sybil limits: its IPv4 /24 or IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network(u128);

impl Network {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4) & 0xffff_ff00)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of(IpAddr::V4(v4)),
                None => Self((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
            },
        }
    }
}

/// Limits on what members may make a node hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most (peer, swarm) memberships held at once.
    pub max_memberships: usize,
    /// Most swarms one peer may be in.
    pub max_swarms_per_peer: usize,
    /// How many other members a join returns.
    pub sample_size: usize,
    /// Most members of one swarm from one network (IPv4 /24, IPv6 /64).
    pub max_members_per_network: usize,
    /// Most members of one network in one join answer.
    pub max_sample_per_network: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memberships: 100_000,
            max_swarms_per_peer: 8,
            sample_size: 32,
            max_members_per_network: 64,
            max_sample_per_network: 4,
        }
    }
}

#[derive(Debug, Default)]
struct SwarmMembers {
    /// Dense list for O(1) sampling and removal (`swap_remove`), with each member's
    /// network.
    members: Vec<(PeerId, Option<Network>)>,
    position: HashMap<PeerId, usize>,
    per_network: HashMap<Network, usize>,
}

impl SwarmMembers {
    fn insert(&mut self, peer: PeerId, network: Option<Network>) -> bool {
        if self.position.contains_key(&peer) {
            return false;
        }
        self.position.insert(peer, self.members.len());
        self.members.push((peer, network));
        if let Some(network) = network {
            *self.per_network.entry(network).or_default() += 1;
        }
        true
    }

    fn remove(&mut self, peer: &PeerId) -> bool {
        let Some(at) = self.position.remove(peer) else {
            return false;
        };
        let (_, network) = self.members.swap_remove(at);
        if let Some(moved) = self.members.get(at) {
            self.position.insert(moved.0, at);
        }
        if let Some(network) = network
            && let Some(count) = self.per_network.get_mut(&network)
        {
            *count -= 1;
            if *count == 0 {
                self.per_network.remove(&network);
            }
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

    /// Adds `peer`, connected from `ip`, to `swarm` (idempotent) and returns a random
    /// sample of the others.
    pub fn join(
        &mut self,
        peer: PeerId,
        swarm: &str,
        ip: Option<IpAddr>,
        rng: &mut impl Rng,
    ) -> Result<Vec<Member>, RefusalReason> {
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
            let network = ip.map(Network::of);
            if let Some(network) = network
                && self.swarms.get(swarm).and_then(|m| m.per_network.get(&network)).copied().unwrap_or(0)
                    >= self.limits.max_members_per_network
            {
                return Err(RefusalReason::TooManyFromNetwork);
            }
            self.swarms.entry(swarm.to_owned()).or_default().insert(peer, network);
            self.memberships.entry(peer).or_default().insert(swarm.to_owned());
            self.total += 1;
        }
        Ok(self.sample(swarm, &peer, rng))
    }

    /// A random sample of the members of `swarm` other than `exclude`, with at most
    /// [`Limits::max_sample_per_network`] from one network.
    fn sample(&self, swarm: &str, exclude: &PeerId, rng: &mut impl Rng) -> Vec<Member> {
        let Some(members) = self.swarms.get(swarm) else {
            return Vec::new();
        };
        let wanted = self.limits.sample_size.min(members.members.len().saturating_sub(1));
        // Draw a few times the sample (never the whole swarm) so that skipping members of
        // over-represented networks still leaves enough.
        let draw = (wanted * 4 + 1).min(members.members.len());
        let mut per_network: HashMap<Network, usize> = HashMap::new();
        let mut out = Vec::with_capacity(wanted);
        for i in index::sample(rng, members.members.len(), draw) {
            if out.len() >= wanted {
                break;
            }
            let (peer, network) = members.members[i];
            if peer == *exclude {
                continue;
            }
            if let Some(network) = network {
                let seen = per_network.entry(network).or_default();
                if *seen >= self.limits.max_sample_per_network {
                    continue;
                }
                *seen += 1;
            }
            out.push(self.describe(peer));
        }
        out
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
        let mut r =
            Registry::new(Limits { sample_size, max_swarms_per_peer: 2, max_memberships: 5, ..Limits::default() });
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
        assert!(r.join(a, "s", None, &mut rng).unwrap().is_empty());
        let seen = r.join(b, "s", None, &mut rng).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].peer, a.to_string());
        assert!(seen[0].addrs[0].ends_with(&format!("/p2p-circuit/webrtc/p2p/{a}")), "{}", seen[0].addrs[0]);
        // Joining again is idempotent.
        r.join(b, "s", None, &mut rng).unwrap();
        assert_eq!(r.membership_count(), 2);
    }

    #[test]
    fn sample_is_bounded_and_excludes_self() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut r = Registry::new(Limits { sample_size: 3, ..Limits::default() });
        let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        for p in &peers {
            r.join(*p, "s", None, &mut rng).unwrap();
        }
        for _ in 0..50 {
            let sample = r.join(peers[0], "s", None, &mut rng).unwrap();
            assert_eq!(sample.len(), 3);
            assert!(sample.iter().all(|m| m.peer != peers[0].to_string()));
        }
    }

    #[test]
    fn limits_and_removal() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut r = registry(10);
        let a = PeerId::random();
        r.join(a, "one", None, &mut rng).unwrap();
        r.join(a, "two", None, &mut rng).unwrap();
        assert_eq!(r.join(a, "three", None, &mut rng), Err(RefusalReason::TooManySwarms));
        assert_eq!(r.join(a, "", None, &mut rng), Err(RefusalReason::BadSwarmId));
        for _ in 0..3 {
            r.join(PeerId::random(), "one", None, &mut rng).unwrap();
        }
        assert_eq!(r.join(PeerId::random(), "one", None, &mut rng), Err(RefusalReason::NodeFull));
        assert_eq!(r.remove_peer(&a), 2);
        assert_eq!(r.membership_count(), 3);
        assert_eq!(r.swarm_count(), 1);
        r.leave(&PeerId::random(), "one");
        assert_eq!(r.membership_count(), 3);
    }

    /// One network cannot fill a swarm, nor every join answer.
    #[test]
    fn sybils_on_one_network_are_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut r = Registry::new(Limits { sample_size: 32, ..Limits::default() });
        let mut refused = 0;
        for i in 0..300u16 {
            // Any address in the /64 counts as the same network.
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i));
            if r.join(PeerId::random(), "s", Some(ip), &mut rng) == Err(RefusalReason::TooManyFromNetwork) {
                refused += 1;
            }
        }
        assert_eq!(refused, 300 - Limits::default().max_members_per_network);
        let honest: Vec<PeerId> = (0..20u8)
            .map(|i| {
                let p = PeerId::random();
                r.join(p, "s", Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, i, 7))), &mut rng).unwrap();
                p
            })
            .collect();
        let newcomer = PeerId::random();
        let answer = r.join(newcomer, "s", Some("203.0.113.9".parse().unwrap()), &mut rng).unwrap();
        let honest_ids: HashSet<String> = honest.iter().map(PeerId::to_string).collect();
        let from_honest = answer.iter().filter(|m| honest_ids.contains(&m.peer)).count();
        assert!(answer.len() - from_honest <= Limits::default().max_sample_per_network, "{answer:?}");
        assert!(from_honest >= 18, "the honest members make up the answer: {from_honest}");
        // IPv4: a /24 is one network, another /24 is not.
        assert_eq!(Network::of("192.0.2.1".parse().unwrap()), Network::of("192.0.2.200".parse().unwrap()));
        assert_ne!(Network::of("192.0.2.1".parse().unwrap()), Network::of("192.0.3.1".parse().unwrap()));
    }
}
