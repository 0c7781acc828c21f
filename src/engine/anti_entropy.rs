//! Anti-entropy: digest syncs started at each family's interval, and the digest,
//! summary and pull exchange that finds and repairs what two nodes hold differently.

use std::collections::HashMap;

use super::engine::Engine;
use super::item::{Entry, ItemId, ItemView};
use super::merge::{Accepted, Placed};
use super::message::{Body, Change, DigestNode, SummaryItem, SummaryRange};
use super::output::Output;
use super::pushes::{carried, item_order};
use super::store::{valid_node, ItemStore, MAX_DEPTH};
use super::version::{Hlc, Version};
use crate::eid::Eid;

/// A digest-tree node with at most this many items is answered with a summary.
const LEAF_ITEMS: usize = 16;

impl Engine {
    /// The sync of `family` is due: each up peer of `eligible` is sent the digest root
    /// and the tombstones it has not acknowledged; the next sync is an interval later.
    pub(super) fn start_sync(
        &mut self,
        family: &str,
        eligible: &[(Eid, bool)],
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(fs) = self.families.get_mut(family) else {
            return;
        };
        let interval = fs
            .shared
            .as_ref()
            .map_or(5000, |s| s.sync_interval_ms.max(1));
        fs.next_sync_ms = now_ms + interval;
        // Tombstones some up peer has not acknowledged go to it again.
        let resend = self.tombstones_to_resend(family, eligible, now_ms, interval);
        for (peer, up) in eligible {
            if *up {
                self.sync_with(out, *peer, now_ms, family);
            }
        }
        for (peer, changes) in resend {
            self.send_batched(out, peer, now_ms, family, changes);
        }
    }

    /// Sends `peer` the root of this node's digest tree of `family`.
    pub(super) fn sync_with(
        &mut self,
        out: &mut Vec<Output>,
        peer: Eid,
        now_ms: u64,
        family: &str,
    ) {
        let Some(fs) = self.families.get(family) else {
            return;
        };
        let root = root_digest(&fs.store);
        self.send(out, peer, now_ms, family, Body::Digest(vec![root]));
    }

    /// Digest-tree nodes from `from`: each that differs here is answered with its
    /// children, or with a summary of its items when it is small.
    pub(super) fn on_digest(
        &mut self,
        from: Eid,
        family: &str,
        nodes: Vec<DigestNode>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(fs) = self.families.get(family) else {
            return;
        };
        let mut children = Vec::new();
        let mut ranges = Vec::new();
        let (mut equal_root, mut differs) = (false, false);
        for n in nodes {
            if !valid_node(n.depth, n.prefix) {
                self.counters.dropped_invalid += 1;
                continue;
            }
            let (hash, count) = fs.store.node(n.depth, n.prefix);
            if hash == n.hash {
                equal_root |= n.depth == 0;
                continue;
            }
            differs = true;
            if count <= LEAF_ITEMS || n.depth == MAX_DEPTH {
                ranges.push(summary_range(&fs.store, n.depth, n.prefix));
            } else {
                for c in 0..16u64 {
                    let prefix = (n.prefix << 4) | c;
                    children.push(DigestNode {
                        depth: n.depth + 1,
                        prefix,
                        hash: fs.store.node(n.depth + 1, prefix).0,
                    });
                }
            }
        }
        if equal_root {
            self.catch_up_equal(from, family, out);
        } else if differs {
            self.catch_up_differs(from, family, now_ms, out);
        }
        self.send_batched(out, from, now_ms, family, children);
        self.send_batched(out, from, now_ms, family, ranges);
    }

    /// The items `from` holds under some digest-tree nodes: what it lacks or holds older
    /// is pushed (queued if large), what this node lacks is pulled (tombstones are taken
    /// from the summary itself), equal tombstones count as acknowledged.
    pub(super) fn on_summary(
        &mut self,
        from: Eid,
        family: &str,
        ranges: Vec<SummaryRange>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        self.catch_up_differs(from, family, now_ms, out);
        let mut push = Vec::new();
        // A push too large to send at once: (position, version) of its items, in key order.
        let mut queued: Vec<(u64, Hlc)> = Vec::new();
        let mut pull = Vec::new();
        let mut take_tombstones = Vec::new();
        let mut acks = Vec::new();
        let mut nodes = Vec::new();
        let push_slice = self.cfg.push_slice.max(1);
        // What a large push on its way to the peer carries is neither pushed again nor,
        // where the peer holds nothing, even read: a new node's summaries of its empty
        // store, made before the catch-up reached it, are answered without a second
        // pass over a million items.
        let pushes = self.in_flight(from, family, now_ms);
        let not_carried = |pos: u64, version: Version| !carried(&pushes, pos, version.hlc);
        {
            let Some(fs) = self.families.get_mut(family) else {
                return;
            };
            let mut wanted: Vec<(u64, ItemView)> = Vec::new();
            for r in ranges {
                if !valid_node(r.depth, r.prefix) {
                    self.counters.dropped_invalid += 1;
                    continue;
                }
                nodes.push((r.depth, r.prefix));
                if r.items.is_empty() {
                    wanted.extend(fs.store.range_where(r.depth, r.prefix, not_carried));
                    continue;
                }
                let theirs: HashMap<(Option<Eid>, &str), &SummaryItem> = r
                    .items
                    .iter()
                    .map(|i| ((i.item.owner, &*i.item.key), i))
                    .collect();
                let mut equal_tombstones = Vec::new();
                for (pos, v) in fs.store.range(r.depth, r.prefix) {
                    match theirs.get(&(v.owner, v.key)) {
                        None if not_carried(pos, v.version) => wanted.push((pos, v)),
                        None => {}
                        Some(t) => {
                            let mine = (v.version, v.is_tombstone());
                            let other = (t.version, t.tombstone);
                            if mine > other && not_carried(pos, v.version) {
                                wanted.push((pos, v));
                            } else if mine == other && v.is_tombstone() {
                                equal_tombstones.push(t.item.clone());
                            }
                        }
                    }
                }
                for id in equal_tombstones {
                    fs.tombstones.ack_same(&id, from);
                }
                for t in r.items {
                    let mine = fs
                        .store
                        .get(t.item.owner, &t.item.key)
                        .map(|e| (e.version, e.is_tombstone()));
                    if mine.is_some_and(|m| m >= (t.version, t.tombstone)) {
                        continue;
                    }
                    if t.tombstone {
                        // A tombstone needs no value: take it straight from the summary.
                        take_tombstones.push(Change {
                            item: t.item,
                            entry: Entry {
                                version: t.version,
                                value: None,
                            },
                        });
                    } else {
                        pull.push(t.item);
                    }
                }
            }
            if wanted.len() > push_slice {
                let order = item_order(wanted.len(), |i| (wanted[i].1.owner, wanted[i].1.key));
                queued = order
                    .into_iter()
                    .map(|i| (wanted[i as usize].0, wanted[i as usize].1.version.hlc))
                    .collect();
            } else {
                push = wanted
                    .iter()
                    .map(|(_, v)| Change {
                        item: v.id(),
                        entry: v.entry(),
                    })
                    .collect();
            }
        }
        let mut deleted = 0;
        for change in take_tombstones {
            if !self.valid_item(family, &change.item) {
                self.counters.dropped_invalid += 1;
                continue;
            }
            if change.entry.version.hlc.wall_ms()
                > now_ms.saturating_add(self.cfg.max_clock_skew_ms)
            {
                self.counters.dropped_skew += 1;
                continue;
            }
            let ack = (change.item.clone(), change.entry.version);
            let stale_below = self.stale_below(from, family);
            let pos = Placed {
                at: change.item.position(),
                ahead: None,
            };
            match self.accept(from, family, stale_below, change, pos, true, now_ms, out) {
                Accepted::Stored => {
                    deleted += 1;
                    acks.push(ack);
                }
                Accepted::Kept => acks.push(ack),
                Accepted::Retired(_) => {}
            }
        }
        self.catch_up_progress(from, family, 0, deleted, now_ms);
        pull.retain(|i| self.valid_item(family, i));
        self.send_batched(out, from, now_ms, family, acks);
        if queued.is_empty() {
            self.push(out, from, now_ms, family, push, &nodes);
        } else {
            self.queue_push(from, family, queued, &nodes, now_ms, out);
        }
        self.send_batched(out, from, now_ms, family, pull);
    }

    /// `from` asks for these items: sent as a push.
    pub(super) fn on_pull(
        &mut self,
        from: Eid,
        family: &str,
        items: Vec<ItemId>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        self.catch_up_progress(from, family, 0, 0, now_ms);
        let Some(fs) = self.families.get(family) else {
            return;
        };
        let changes: Vec<Change> = items
            .into_iter()
            .filter_map(|item| {
                let entry = fs.store.get(item.owner, &item.key)?.entry();
                Some(Change { item, entry })
            })
            .collect();
        self.push(out, from, now_ms, family, changes, &[]);
    }
}

fn root_digest(store: &ItemStore) -> DigestNode {
    DigestNode {
        depth: 0,
        prefix: 0,
        hash: store.node(0, 0).0,
    }
}

fn summary_range(store: &ItemStore, depth: u8, prefix: u64) -> SummaryRange {
    SummaryRange {
        depth,
        prefix,
        items: store
            .range(depth, prefix)
            .map(|(_, v)| SummaryItem {
                item: v.id(),
                version: v.version,
                tombstone: v.is_tombstone(),
            })
            .collect(),
    }
}
