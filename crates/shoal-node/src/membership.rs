//! Who is in which swarm, as this node knows it. Pure bookkeeping: the swarm event loop
//! calls in when members join, leave or disconnect, and gets samples out.
//!
//! PeerIds cost nothing, addresses do: one host (or one IPv6 /64, which any home gets)
//! may hold at most [`Limits::max_members_per_network`] members of a swarm, and a join
//! answer holds at most [`Limits::max_sample_per_network`] members of one network
//! (IPv4 /24, IPv6 /64), so a Sybil on one network can neither fill a swarm nor every
//! answer.
//!
//! Members of other nodes (learnt through `federation`) are kept apart from our own,
//! by the node that holds them, and join answers draw from both: they are reached
//! through their own node's relay. Their networks are their node's business (it applied
//! the limits when they joined), and their count is capped by
//! [`Limits::max_remote_memberships`].

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

impl Network {
    /// The wider neighbourhood of a network, for preferring close peers: its IPv4 /16
    /// or IPv6 /48 (typically one provider's region).
    fn region(self) -> u128 {
        if self.0 & 1 == 1 { (self.0 & !((1u128 << 80) - 1)) | 1 } else { self.0 & 0xffff_0000 }
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
    /// Most (peer, swarm) memberships of other nodes held at once.
    pub max_remote_memberships: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memberships: 100_000,
            max_swarms_per_peer: 8,
            sample_size: 32,
            max_members_per_network: 64,
            max_sample_per_network: 4,
            max_remote_memberships: 400_000,
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

/// Members of one swarm held by other nodes: dense, like [`SwarmMembers`], with the
/// node each is on.
#[derive(Debug, Default)]
struct RemoteMembers {
    members: Vec<(PeerId, PeerId)>,
    position: HashMap<PeerId, usize>,
}

impl RemoteMembers {
    /// Adds or moves `peer` (a page that moved nodes is announced by its new one).
    fn insert(&mut self, peer: PeerId, node: PeerId) -> bool {
        if let Some(&at) = self.position.get(&peer) {
            self.members[at].1 = node;
            return false;
        }
        self.position.insert(peer, self.members.len());
        self.members.push((peer, node));
        true
    }

    /// Removes `peer` if `node` holds it.
    fn remove(&mut self, peer: &PeerId, node: &PeerId) -> bool {
        let Some(&at) = self.position.get(peer) else { return false };
        if self.members[at].1 != *node {
            return false;
        }
        self.position.remove(peer);
        self.members.swap_remove(at);
        if let Some(moved) = self.members.get(at) {
            self.position.insert(moved.0, at);
        }
        true
    }
}

/// Another node, as federation told us.
#[derive(Debug, Default)]
struct RemoteNode {
    /// Its browser-dialable addresses, each ending in `/p2p/<node>`.
    addrs: Vec<Multiaddr>,
    /// (swarm, peer) pairs it holds.
    members: HashSet<(String, PeerId)>,
    /// Peers connected to it.
    load: u64,
    /// Shutting down: not listed for pages.
    draining: bool,
}

/// What another node says of itself with each update.
#[derive(Debug, Clone, Default)]
pub struct RemoteStatus {
    /// Its browser-dialable addresses, each ending in `/p2p/<node>`.
    pub addrs: Vec<Multiaddr>,
    /// Peers connected to it.
    pub load: u64,
    pub draining: bool,
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
    remote: HashMap<String, RemoteMembers>,
    nodes: HashMap<PeerId, RemoteNode>,
    remote_total: usize,
}

impl Registry {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            swarms: HashMap::new(),
            memberships: HashMap::new(),
            node_addrs: Vec::new(),
            total: 0,
            remote: HashMap::new(),
            nodes: HashMap::new(),
            remote_total: 0,
        }
    }

    /// This node's browser-dialable addresses.
    pub fn node_addrs(&self) -> &[Multiaddr] {
        &self.node_addrs
    }

    /// Sets the addresses members are advertised through.
    pub fn set_node_addrs(&mut self, addrs: Vec<Multiaddr>) {
        self.node_addrs = addrs;
    }

    /// Members of `swarm`, on this node and on the others.
    pub fn swarm_size(&self, swarm: &str) -> usize {
        self.swarms.get(swarm).map_or(0, |s| s.members.len()) + self.remote.get(swarm).map_or(0, |s| s.members.len())
    }

    /// Whether `peer` is a member of `swarm` here.
    pub fn is_member(&self, peer: &PeerId, swarm: &str) -> bool {
        self.memberships.get(peer).is_some_and(|s| s.contains(swarm))
    }

    /// Every (swarm, peer) membership held here, for a federation snapshot.
    pub fn local_memberships(&self) -> Vec<(String, String)> {
        self.swarms
            .iter()
            .flat_map(|(swarm, m)| m.members.iter().map(move |(peer, _)| (swarm.clone(), peer.to_string())))
            .collect()
    }

    /// (peer, swarm) memberships held by other nodes.
    pub fn remote_membership_count(&self) -> usize {
        self.remote_total
    }

    /// Other nodes known.
    pub fn other_node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Browser-dialable addresses of the other nodes that take pages (not draining),
    /// least loaded first.
    pub fn other_nodes(&self) -> Vec<Multiaddr> {
        let mut nodes: Vec<&RemoteNode> = self.nodes.values().filter(|n| !n.draining).collect();
        nodes.sort_by_key(|n| n.load);
        nodes.into_iter().flat_map(|n| n.addrs.iter().cloned()).collect()
    }

    /// Applies what `node` published: its addresses and load, and the memberships it
    /// gained and lost (after forgetting all of them, when `reset`). Returns how many
    /// entries were refused because [`Limits::max_remote_memberships`] was reached.
    pub fn apply_remote(
        &mut self,
        node: PeerId,
        status: RemoteStatus,
        reset: bool,
        joined: &[(String, String)],
        left: &[(String, String)],
    ) -> usize {
        if reset {
            self.forget_node(&node);
        }
        let entry = self.nodes.entry(node).or_default();
        entry.addrs = status.addrs;
        entry.load = status.load;
        entry.draining = status.draining;
        for (swarm, peer) in left {
            let Ok(peer) = peer.parse::<PeerId>() else { continue };
            if let Some(entry) = self.nodes.get_mut(&node) {
                entry.members.remove(&(swarm.clone(), peer));
            }
            self.remove_remote(swarm, &peer, &node);
        }
        let mut refused = 0;
        for (swarm, peer) in joined {
            let Ok(peer) = peer.parse::<PeerId>() else { continue };
            if validate_swarm_id(swarm).is_err() {
                continue;
            }
            if self.remote_total >= self.limits.max_remote_memberships {
                refused += 1;
                continue;
            }
            let members = self.remote.entry(swarm.clone()).or_default();
            let previous = members.position.get(&peer).map(|&at| members.members[at].1);
            if members.insert(peer, node) {
                self.remote_total += 1;
            } else if let Some(previous) = previous
                && previous != node
                && let Some(old) = self.nodes.get_mut(&previous)
            {
                // The page moved from `previous` to `node`.
                old.members.remove(&(swarm.clone(), peer));
            }
            if let Some(entry) = self.nodes.get_mut(&node) {
                entry.members.insert((swarm.clone(), peer));
            }
        }
        refused
    }

    /// Forgets `node` and every member it held. Returns the memberships forgotten.
    pub fn forget_node(&mut self, node: &PeerId) -> usize {
        let Some(entry) = self.nodes.remove(node) else { return 0 };
        let mut forgotten = 0;
        for (swarm, peer) in &entry.members {
            if self.remove_remote(swarm, peer, node) {
                forgotten += 1;
            }
        }
        forgotten
    }

    fn remove_remote(&mut self, swarm: &str, peer: &PeerId, node: &PeerId) -> bool {
        let Some(members) = self.remote.get_mut(swarm) else { return false };
        if !members.remove(peer, node) {
            return false;
        }
        self.remote_total -= 1;
        if members.members.is_empty() {
            self.remote.remove(swarm);
        }
        true
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
        Ok(self.sample(swarm, &peer, ip.map(Network::of), rng))
    }

    /// A random sample of the members of `swarm` other than `exclude`, ours and other
    /// nodes' alike, with at most [`Limits::max_sample_per_network`] of ours from one
    /// network. When the swarm is large enough to choose (more than twice the sample),
    /// members of the joiner's region (IPv4 /16, IPv6 /48) among those drawn come first,
    /// up to half the sample: close peers tend to have faster paths, the rest keeps the
    /// mesh random.
    fn sample(&self, swarm: &str, exclude: &PeerId, near: Option<Network>, rng: &mut impl Rng) -> Vec<Member> {
        let local = self.swarms.get(swarm).map_or(&[][..], |m| &m.members[..]);
        let remote = self.remote.get(swarm).map_or(&[][..], |m| &m.members[..]);
        let all = local.len() + remote.len();
        if all == 0 {
            return Vec::new();
        }
        let wanted = self.limits.sample_size.min(all.saturating_sub(1));
        // Draw a few times the sample (never the whole swarm) so that skipping members of
        // over-represented networks still leaves enough.
        let draw = (wanted * 4 + 1).min(all);
        let mut per_network: HashMap<Network, usize> = HashMap::new();
        let mut out = Vec::with_capacity(wanted);
        let mut drawn = index::sample(rng, all, draw).into_vec();
        if let Some(near) = near
            && all > 2 * wanted
        {
            let region = near.region();
            let is_close = |i: usize| local.get(i).and_then(|m| m.1).is_some_and(|n| n.region() == region);
            let mut close: Vec<usize> = drawn.iter().copied().filter(|&i| is_close(i)).take(wanted / 2).collect();
            drawn.retain(|i| !close.contains(i));
            close.append(&mut drawn);
            drawn = close;
        }
        for i in drawn {
            if out.len() >= wanted {
                break;
            }
            if let Some(&(peer, network)) = local.get(i) {
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
                out.push(self.describe(peer, &self.node_addrs));
            } else {
                let (peer, node) = remote[i - local.len()];
                // A page that just moved here may still be listed by its old node.
                if peer == *exclude || self.is_member(&peer, swarm) {
                    continue;
                }
                if let Some(node) = self.nodes.get(&node) {
                    out.push(self.describe(peer, &node.addrs));
                }
            }
        }
        out
    }

    fn describe(&self, peer: PeerId, node_addrs: &[Multiaddr]) -> Member {
        let addrs = node_addrs
            .iter()
            .map(|a| a.clone().with(Protocol::P2pCircuit).with(Protocol::WebRTC).with(Protocol::P2p(peer)).to_string())
            .collect();
        Member { peer: peer.to_string(), addrs }
    }

    /// Removes `peer` from `swarm`. Returns whether it was a member.
    pub fn leave(&mut self, peer: &PeerId, swarm: &str) -> bool {
        let Some(swarms) = self.memberships.get_mut(peer) else {
            return false;
        };
        if !swarms.remove(swarm) {
            return false;
        }
        if swarms.is_empty() {
            self.memberships.remove(peer);
        }
        self.remove_from_swarm(peer, swarm);
        true
    }

    /// Forgets `peer` everywhere (its connection to this node is gone). Returns the
    /// swarms it was in.
    pub fn remove_peer(&mut self, peer: &PeerId) -> Vec<String> {
        let Some(swarms) = self.memberships.remove(peer) else {
            return Vec::new();
        };
        for swarm in &swarms {
            self.remove_from_swarm(peer, swarm);
        }
        swarms.into_iter().collect()
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
        assert_eq!(r.remove_peer(&a).len(), 2);
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
        // Regions: an IPv4 /16, an IPv6 /48.
        assert_eq!(
            Network::of("192.0.2.1".parse().unwrap()).region(),
            Network::of("192.0.9.1".parse().unwrap()).region()
        );
        assert_ne!(
            Network::of("192.0.2.1".parse().unwrap()).region(),
            Network::of("192.1.2.1".parse().unwrap()).region()
        );
        let v6 = |s: &str| Network::of(s.parse().unwrap()).region();
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:ff::1"));
        assert_ne!(v6("2001:db8:1::1"), v6("2001:db8:2::1"));
        // IPv4: a /24 is one network, another /24 is not.
        assert_eq!(Network::of("192.0.2.1".parse().unwrap()), Network::of("192.0.2.200".parse().unwrap()));
        assert_ne!(Network::of("192.0.2.1".parse().unwrap()), Network::of("192.0.3.1".parse().unwrap()));
    }

    /// Members of other nodes are handed out with their own node's circuit address,
    /// follow a page that moves, and go with their node.
    #[test]
    fn other_nodes_members_are_sampled_through_their_node() {
        let status = |addr: Multiaddr| RemoteStatus { addrs: vec![addr], load: 1, draining: false };
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut r = registry(10);
        let addr_of = |node: PeerId| -> Multiaddr {
            format!("/ip4/10.99.0.2/udp/9090/webrtc-direct/p2p/{node}").parse().unwrap()
        };
        let (b, c) = (PeerId::random(), PeerId::random());
        let (x, y) = (PeerId::random(), PeerId::random());
        let s = |p: &PeerId| ("s".to_owned(), p.to_string());
        assert_eq!(r.apply_remote(b, status(addr_of(b)), false, &[s(&x), s(&y)], &[]), 0);
        let a = PeerId::random();
        let seen = r.join(a, "s", None, &mut rng).unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|m| m.addrs[0].starts_with(&addr_of(b).to_string())), "{seen:?}");
        assert_eq!(r.swarm_size("s"), 3);
        assert_eq!(r.other_nodes(), vec![addr_of(b)]);
        // A draining node keeps its members until they move, but is not listed for pages.
        r.apply_remote(b, RemoteStatus { draining: true, ..status(addr_of(b)) }, false, &[], &[]);
        assert!(r.other_nodes().is_empty());
        assert_eq!(r.swarm_size("s"), 3);
        r.apply_remote(b, status(addr_of(b)), false, &[], &[]);

        // x moves to node c: it is reached through c, and b's late "left" changes nothing.
        r.apply_remote(c, status(addr_of(c)), false, &[s(&x)], &[]);
        r.apply_remote(b, status(addr_of(b)), false, &[], &[s(&x)]);
        let seen = r.join(a, "s", None, &mut rng).unwrap();
        let x_seen = seen.iter().find(|m| m.peer == x.to_string()).unwrap();
        assert!(x_seen.addrs[0].starts_with(&addr_of(c).to_string()), "{x_seen:?}");
        assert_eq!(r.remote_membership_count(), 2);

        // A node that goes takes its members along; a reset replaces them.
        assert_eq!(r.forget_node(&b), 1);
        assert_eq!(r.swarm_size("s"), 2);
        r.apply_remote(c, status(addr_of(c)), true, &[s(&y)], &[]);
        let seen = r.join(a, "s", None, &mut rng).unwrap();
        assert_eq!(seen.iter().map(|m| m.peer.clone()).collect::<Vec<_>>(), vec![y.to_string()]);

        // A page here that its old node still lists is not handed out twice.
        r.join(y, "s", None, &mut rng).unwrap();
        assert_eq!(r.join(a, "s", None, &mut rng).unwrap().len(), 1);

        // The cap on other nodes' memberships holds.
        let mut small = Registry::new(Limits { max_remote_memberships: 2, ..Limits::default() });
        let many: Vec<(String, String)> = (0..5).map(|_| s(&PeerId::random())).collect();
        assert_eq!(small.apply_remote(b, status(addr_of(b)), false, &many, &[]), 3);
        assert_eq!(small.remote_membership_count(), 2);
    }

    /// In a large swarm, members of the joiner's region make up about half of each
    /// answer (they are 10 % of the swarm); in a small one, the answer stays random.
    #[test]
    fn close_members_come_first_in_large_swarms() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let mut r = Registry::new(Limits { sample_size: 10, max_sample_per_network: 100, ..Limits::default() });
        let mut close = HashSet::new();
        for i in 0..400u32 {
            let p = PeerId::random();
            // 10 % in 198.51.0.0/16 (each in its own /24), the rest in 203.0/16 and beyond.
            let ip = if i % 10 == 0 {
                close.insert(p.to_string());
                std::net::Ipv4Addr::new(198, 51, (i / 10) as u8, 1)
            } else {
                std::net::Ipv4Addr::new(203, (i % 200) as u8, (i / 200) as u8, 1)
            };
            r.join(p, "s", Some(IpAddr::V4(ip)), &mut rng).unwrap();
        }
        let joiner: IpAddr = "198.51.200.9".parse().unwrap();
        let mut from_close = 0;
        let me = PeerId::random();
        for _ in 0..50 {
            // Joining again draws a new sample.
            let answer = r.join(me, "s", Some(joiner), &mut rng).unwrap();
            assert_eq!(answer.len(), 10);
            from_close += answer.iter().filter(|m| close.contains(&m.peer)).count();
        }
        // 5 of 10 wanted; a random draw of 41 holds ~4 close members on average.
        assert!(from_close >= 50 * 3, "close members preferred: {from_close} of 500");

        let mut small = Registry::new(Limits { sample_size: 10, ..Limits::default() });
        for i in 0..15u8 {
            small
                .join(PeerId::random(), "s", Some(IpAddr::V4(std::net::Ipv4Addr::new(10, i, 0, 1))), &mut rng)
                .unwrap();
        }
        assert_eq!(small.join(PeerId::random(), "s", Some(joiner), &mut rng).unwrap().len(), 10);
    }
}
