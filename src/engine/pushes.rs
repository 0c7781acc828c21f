//! Anti-entropy pushes: what a peer lacks goes out in key order; a large push is
//! remembered while it may be in flight, and one too large for one turn is queued and
//! sent a slice at each tick.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::mem;

use super::engine::Engine;
use super::message::Change;
use super::output::Output;
use super::store::node_range;
use super::version::Hlc;
use crate::asterisk::cpu;
use crate::eid::Eid;

/// How far ahead a queued push's slice prefetches slots and records.
const SLOT_AHEAD: usize = 16;
const RECORD_AHEAD: usize = 8;

/// A push of at least this many changes is remembered (see [`RecentPush`]).
const BIG_PUSH: usize = 1024;

/// A large anti-entropy push to a peer: every item of the digest-tree node
/// (`depth`, `prefix`) with a version up to `high` was sent at `at_ms`. Until that push
/// can have arrived (the connection stays up and messages are delivered in order), a
/// summary or pull from the peer that still lacks such an item was made before the push
/// reached it; sending the item again would only double a new node's catch-up.
#[derive(Clone, Copy, Debug)]
pub(super) struct RecentPush {
    depth: u8,
    prefix: u64,
    high: Hlc,
    at_ms: u64,
}

/// A large push still being sent: the positions of its items in the order they go
/// out (key order), and how far it has got. The items are read from the store as each
/// slice goes, so a slice carries their latest state.
#[derive(Clone, Debug)]
struct QueuedPush {
    peer: Eid,
    family: String,
    positions: Vec<u64>,
    next: usize,
}

/// The large pushes recently sent, and those still being sent.
#[derive(Debug, Default)]
pub(super) struct Pushes {
    recent: BTreeMap<(Eid, String), Vec<RecentPush>>,
    queued: VecDeque<QueuedPush>,
    /// Peers whose link still holds much of what was sent them: their queued pushes wait.
    held: BTreeSet<Eid>,
}

impl Pushes {
    /// Whether a large push still has slices to send.
    pub(super) fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Whether a large push has a slice to send now (its peer is not held).
    pub(super) fn has_ready(&self) -> bool {
        self.queued.iter().any(|q| !self.held.contains(&q.peer))
    }

    /// Forgets the pushes to `peer`: its connection is new or gone.
    pub(super) fn forget_peer(&mut self, peer: Eid) {
        self.recent.retain(|(to, _), _| *to != peer);
        self.queued.retain(|q| q.peer != peer);
    }

    /// The large pushes to `peer` of `family` that may still be on their way, sent at most
    /// `max_age` ms before `now_ms`.
    fn in_flight(&mut self, peer: Eid, family: &str, now_ms: u64, max_age: u64) -> Vec<RecentPush> {
        let key = (peer, family.to_string());
        let Some(pushes) = self.recent.get_mut(&key) else {
            return Vec::new();
        };
        pushes.retain(|p| p.at_ms.saturating_add(max_age) >= now_ms && p.at_ms <= now_ms);
        if pushes.is_empty() {
            self.recent.remove(&key);
            return Vec::new();
        }
        pushes.clone()
    }

    /// Remembers a large push of the digest-tree nodes `nodes` to `peer`.
    fn remember(&mut self, peer: Eid, family: &str, nodes: &[(u8, u64)], high: Hlc, now_ms: u64) {
        let remembered = self.recent.entry((peer, family.to_string())).or_default();
        for &(depth, prefix) in nodes {
            remembered.push(RecentPush {
                depth,
                prefix,
                high,
                at_ms: now_ms,
            });
        }
    }
}

/// Whether one of `pushes` carries the item at `pos` in a state at least as new as `hlc`.
pub(super) fn carried(pushes: &[RecentPush], pos: u64, hlc: Hlc) -> bool {
    pushes
        .iter()
        .any(|p| hlc <= p.high && node_range(p.depth, p.prefix).contains(&pos))
}

impl Engine {
    /// Sends `changes` to `to` as a push, in key order, without those a recent large push
    /// already carries. `nodes`: the digest-tree nodes whose items it carries in full
    /// (none for an answer to a pull); a large push of such nodes is remembered.
    pub(super) fn push(
        &mut self,
        out: &mut Vec<Output>,
        to: Eid,
        now_ms: u64,
        family: &str,
        mut changes: Vec<Change>,
        nodes: &[(u8, u64)],
    ) {
        let pushes = self.in_flight(to, family, now_ms);
        if !pushes.is_empty() {
            changes.retain(|c| !carried(&pushes, c.item.position(), c.entry.version.hlc));
        }
        if changes.len() >= BIG_PUSH && !nodes.is_empty() {
            let high = changes.iter().map(|c| c.entry.version.hlc).max();
            self.pushes
                .remember(to, family, nodes, high.unwrap_or(Hlc::ZERO), now_ms);
        }
        if !changes.is_empty() {
            // In key order, the order of the peer's metadata table (and of AstDB's): a
            // new node's catch-up then appends to its B-trees instead of touching a
            // random page for each key (the store's own order is the position hash).
            sort_by_item(&mut changes);
            self.send_batched(out, to, now_ms, family, changes);
        }
    }

    /// The large pushes to `peer` of `family` that may still be on their way.
    pub(super) fn in_flight(&mut self, peer: Eid, family: &str, now_ms: u64) -> Vec<RecentPush> {
        let max_age = self.cfg.max_message_age_ms;
        self.pushes.in_flight(peer, family, now_ms, max_age)
    }

    /// Queues a push too large to build at once (a new node's catch-up): `items`, already
    /// in key order as for any push, and sends the first slice now. The push is remembered
    /// as in flight from the start, so that the peer's summaries and pulls made before
    /// the queue reaches it do not add the same items again.
    pub(super) fn queue_push(
        &mut self,
        to: Eid,
        family: &str,
        mut items: Vec<(u64, Hlc)>,
        nodes: &[(u8, u64)],
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let pushes = self.in_flight(to, family, now_ms);
        if !pushes.is_empty() {
            items.retain(|&(pos, hlc)| !carried(&pushes, pos, hlc));
        }
        let Some(high) = items.iter().map(|i| i.1).max() else {
            return;
        };
        self.pushes.remember(to, family, nodes, high, now_ms);
        self.pushes.queued.push_back(QueuedPush {
            peer: to,
            family: family.to_string(),
            positions: items.into_iter().map(|(pos, _)| pos).collect(),
            next: 0,
        });
        self.continue_pushes(now_ms, out);
    }

    /// The peers a queued push still has slices for.
    pub fn pushing_to(&self) -> BTreeSet<Eid> {
        self.pushes.queued.iter().map(|q| q.peer).collect()
    }

    /// The peers whose links still hold much of what was sent them (the driver's
    /// judgement, renewed before each tick): slices of queued pushes to them wait, and
    /// [`Engine::next_deadline`] does not count those pushes as work due now.
    pub fn hold_pushes(&mut self, peers: BTreeSet<Eid>) {
        self.pushes.held = peers;
    }

    /// Whether a queued push waits for a peer held by [`Engine::hold_pushes`].
    pub fn pushes_held(&self) -> bool {
        self.pushes
            .queued
            .iter()
            .any(|q| self.pushes.held.contains(&q.peer))
    }

    /// Sends the next slice of the oldest queued push to a peer not held (then it waits
    /// behind the others).
    pub(super) fn continue_pushes(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let held = &self.pushes.held;
        let Some(i) = self
            .pushes
            .queued
            .iter()
            .position(|q| !held.contains(&q.peer))
        else {
            return;
        };
        let Some(mut q) = self.pushes.queued.remove(i) else {
            return;
        };
        let Some(fs) = self.families.get(&q.family).filter(|f| f.shared.is_some()) else {
            return;
        };
        let end = q
            .next
            .saturating_add(self.cfg.push_slice.max(1))
            .min(q.positions.len());
        // The positions are in key order, their slots and records all over the store:
        // each slot is fetched SLOT_AHEAD turns early, its record RECORD_AHEAD turns early.
        let positions = &q.positions[..end];
        let changes: Vec<Change> = (q.next..end)
            .flat_map(|j| {
                if let Some(&pos) = positions.get(j + SLOT_AHEAD) {
                    fs.store.prefetch(pos);
                }
                if let Some(&pos) = positions.get(j + RECORD_AHEAD) {
                    fs.store.prefetch_item(pos);
                }
                fs.store.at(positions[j])
            })
            .map(|(_, v)| Change {
                item: v.id(),
                entry: v.entry(),
            })
            .collect();
        q.next = end;
        if !changes.is_empty() {
            self.send_batched(out, q.peer, now_ms, &q.family, changes);
        }
        if q.next < q.positions.len() {
            self.pushes.queued.push_back(q);
        }
    }
}

/// The order of `n` items by owner then key, as `ItemId`'s order, for a large push;
/// `id(i)` gives item `i`'s owner and key.
///
/// The keys lie scattered over the heap, and a plain sort reads two of them at each of
/// its ~20 comparisons per item; most of a million-key push went into those cache
/// misses. Here each key is read once, into a 16-byte prefix sorted with its index, and
/// only items whose prefixes tie are compared in full.
pub(super) fn item_order<'k>(n: usize, id: impl Fn(usize) -> (Option<Eid>, &'k str)) -> Vec<u32> {
    let mut order: Vec<(u64, u128, u32)> = (0..n)
        .map(|i| {
            if i + KEY_AHEAD < n {
                if let Some(byte) = id(i + KEY_AHEAD).1.as_bytes().first() {
                    cpu::prefetch(byte);
                }
            }
            let (owner, key) = id(i);
            (owner_rank(owner), key_prefix(key), i as u32)
        })
        .collect();
    order.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| id(a.2 as usize).1.cmp(id(b.2 as usize).1))
    });
    order.into_iter().map(|(_, _, i)| i).collect()
}

/// How far ahead [`item_order`] prefetches the keys it reads.
const KEY_AHEAD: usize = 8;

/// A number that sorts as `Option<Eid>` does (no owner first, then by EID bytes), and
/// compares in one instruction.
fn owner_rank(owner: Option<Eid>) -> u64 {
    owner.map_or(0, |eid| {
        let mut b = [0u8; 8];
        b[0] = 1;
        b[2..].copy_from_slice(&eid.0);
        u64::from_be_bytes(b)
    })
}

/// Sorts changes by item (see [`item_order`]).
fn sort_by_item(changes: &mut Vec<Change>) {
    if changes.len() < 64 {
        changes.sort_unstable_by(|a, b| a.item.cmp(&b.item));
        return;
    }
    let order = item_order(changes.len(), |i| {
        (changes[i].item.owner, &*changes[i].item.key)
    });
    let mut taken: Vec<Option<Change>> = mem::take(changes).into_iter().map(Some).collect();
    changes.extend(
        order
            .iter()
            .filter_map(|&i| taken.get_mut(i as usize).and_then(Option::take)),
    );
}

/// The first 16 bytes of `key`, as a number that sorts as the keys do (keys hold no NUL,
/// so a shorter key padded with zeros still sorts first).
fn key_prefix(key: &str) -> u128 {
    let mut prefix = [0u8; 16];
    let n = key.len().min(16);
    prefix[..n].copy_from_slice(&key.as_bytes()[..n]);
    u128::from_be_bytes(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::item::{Entry, ItemId};
    use crate::engine::version::Version;

    #[test]
    fn a_large_push_is_sent_in_the_same_order_as_items_sort() {
        let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let owners = [
            None,
            Some(Eid([2, 0, 0, 0, 0, 1])),
            Some(Eid([1, 9, 9, 9, 9, 9])),
        ];
        let changes: Vec<Change> = (0..5000)
            .map(|_| {
                let r = next();
                // Long shared prefixes, keys that are prefixes of others, and short keys.
                let key = match r % 4 {
                    0 => format!("+1555000000{}", r % 1000),
                    1 => format!("+1555000000{}x", r % 100),
                    2 => format!("k{}", r % 50),
                    _ => "+1555000000".repeat(1 + (r % 3) as usize),
                };
                Change {
                    item: ItemId {
                        owner: owners[(r >> 20) as usize % 3],
                        key: key.into(),
                    },
                    entry: Entry {
                        version: Version::new(Hlc(r >> 8), Eid([0; 6])),
                        value: Some(r.to_string().into()),
                    },
                }
            })
            .collect();
        let mut expected = changes.clone();
        expected.sort_by(|a, b| a.item.cmp(&b.item));
        let mut got = changes;
        sort_by_item(&mut got);
        let ids = |v: &[Change]| v.iter().map(|c| c.item.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&expected));
        assert_eq!(got.len(), 5000);
    }
}
