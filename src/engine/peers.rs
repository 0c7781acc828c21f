//! The peers: connections coming and going, and which of them take part in a family.

use std::collections::BTreeMap;

use super::engine::Engine;
use super::output::Output;
use super::persist::PeerMeta;
use super::version::Hlc;
use crate::eid::Eid;

/// The node number of a relay: a peer that stands for the whole cluster rather than
/// one node (Redis, which holds every node's changes). Node numbers in the
/// configuration start at 1. A relay takes part in every family it is up for; which
/// nodes' changes a node applies from it is the link's business (it knows the origin
/// of each change and the family's policy).
pub const RELAY_NODE: u32 = 0;

/// What this node knows of a peer, up or not.
#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub(super) node: u32,
    pub(super) up: bool,
    /// Per family: tombstones up to this clock were collected here without the peer's
    /// acknowledgement.
    pub(super) stale_below: BTreeMap<String, Hlc>,
}

impl Peer {
    /// The peer as persisted.
    pub(super) fn meta(&self, eid: Eid) -> PeerMeta {
        PeerMeta {
            eid,
            node: self.node,
            stale_below: self
                .stale_below
                .iter()
                .map(|(f, h)| (f.clone(), *h))
                .collect(),
        }
    }
}

impl Engine {
    /// A connection to `peer` (cluster node number `node`) is up: catch up with it.
    pub fn peer_up(&mut self, peer: Eid, node: u32, now_ms: u64) {
        self.queue(|e, out| e.on_peer_up(peer, node, now_ms, out));
    }

    fn on_peer_up(&mut self, peer: Eid, node: u32, now_ms: u64, out: &mut Vec<Output>) {
        if peer == self.cfg.local {
            return;
        }
        let known = self.peers.contains_key(&peer);
        let families = &self.families;
        let p = self.peers.entry(peer).or_insert_with(|| Peer {
            node,
            up: false,
            // A peer never seen may hold copies of keys whose tombstones were already
            // collected here: its older values for absent keys are stale.
            stale_below: families
                .iter()
                .filter(|(_, f)| f.horizon > Hlc::ZERO)
                .map(|(n, f)| (n.clone(), f.horizon))
                .collect(),
        });
        if !known || p.node != node {
            p.node = node;
            self.peers_dirty.insert(peer);
        }
        p.up = true;
        self.pushes.forget_peer(peer);
        let names: Vec<String> = self.families.keys().cloned().collect();
        for name in names {
            if self.eligible(&name).iter().any(|(e, _)| *e == peer) {
                self.sync_with(out, peer, now_ms, &name);
            }
        }
    }

    /// The connection to `peer` is lost.
    pub fn peer_down(&mut self, peer: Eid) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.up = false;
        }
        self.outbox.drop_peer(peer);
        self.pushes.forget_peer(peer);
        self.queue(|e, out| e.catch_ups_interrupted(Some(peer), None, out));
    }

    /// Peers that take part in `family`, up or not.
    pub(super) fn eligible(&self, family: &str) -> Vec<(Eid, bool)> {
        let Some(shared) = self.families.get(family).and_then(|f| f.shared.as_ref()) else {
            return Vec::new();
        };
        self.peers
            .iter()
            .filter(|(_, p)| p.node == RELAY_NODE || shared.policy.includes(p.node))
            .map(|(e, p)| (*e, p.up))
            .collect()
    }

    /// Tombstones up to this clock were collected here without `from`'s acknowledgement.
    pub(super) fn stale_below(&self, from: Eid, family: &str) -> Option<Hlc> {
        self.peers
            .get(&from)
            .and_then(|p| p.stale_below.get(family).copied())
    }
}
