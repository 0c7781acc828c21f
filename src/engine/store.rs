//! The items of one shared family, indexed by digest position.
//!
//! Items sit in a map ordered by their position hash, so every node of the digest tree
//! (a 16-ary tree over the hash's nibbles) is one contiguous range. The hashes and counts
//! of the 4096 nodes at depth 3 are kept up to date as items change; shallower nodes are
//! folded from them and deeper ones are computed from their (small) ranges on demand.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use super::eid::Eid;
use super::item::{position_of, Entry, ItemId};

/// The deepest level of the digest tree: one nibble of the position hash per level.
pub const MAX_DEPTH: u8 = 16;
/// Depth whose node hashes are maintained incrementally.
const CACHED_DEPTH: u8 = 3;
const CACHED_NODES: usize = 1 + 16 + 256 + 4096;

/// Index in `ItemStore::cached` of the node `prefix` at `depth` (at most `CACHED_DEPTH`).
fn cached_index(depth: u8, prefix: u64) -> usize {
    let level_start = [0usize, 1, 17, 273][usize::from(depth)];
    level_start + prefix as usize
}

/// Items that share a position hash (almost always exactly one).
#[derive(Clone, Debug)]
enum Slot {
    One(ItemId, Entry),
    Many(Vec<(ItemId, Entry)>),
}

/// What a merge did to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merged {
    /// The item was new here.
    Inserted,
    /// The incoming state won over the one held, which is returned.
    Replaced(Entry),
    /// The state held already wins or is equal; nothing changed.
    Kept,
    /// The item was absent and the caller refused to let it in.
    Refused,
}

/// One family's items with their digest tree.
#[derive(Clone, Debug, Default)]
pub struct ItemStore {
    items: BTreeMap<u64, Slot>,
    /// (XOR of entry digest hashes, item count) per node of depths 0 to 3, level by
    /// level (1 + 16 + 256 + 4096 nodes); empty until first use.
    cached: Vec<(u64, u32)>,
    live: usize,
    tombstones: usize,
}

/// Whether `prefix` has at most `depth` nibbles, as a digest-tree node's must.
pub fn valid_node(depth: u8, prefix: u64) -> bool {
    depth <= MAX_DEPTH && (depth == MAX_DEPTH || prefix >> (4 * u32::from(depth)) == 0)
}

/// The range of positions under the digest-tree node `prefix` at `depth`.
pub fn node_range(depth: u8, prefix: u64) -> RangeInclusive<u64> {
    if depth == 0 {
        return 0..=u64::MAX;
    }
    let shift = 64 - 4 * u32::from(depth.min(MAX_DEPTH));
    let lo = if shift == 64 { 0 } else { prefix << shift };
    let hi = if shift == 0 {
        lo
    } else {
        lo | (u64::MAX >> (64 - shift))
    };
    lo..=hi
}

impl ItemStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn live_count(&self) -> usize {
        self.live
    }

    pub fn tombstone_count(&self) -> usize {
        self.tombstones
    }

    pub fn len(&self) -> usize {
        self.live + self.tombstones
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, owner: Option<Eid>, key: &str) -> Option<&Entry> {
        match self.items.get(&position_of(owner, key))? {
            Slot::One(id, e) => (id.owner == owner && id.key == key).then_some(e),
            Slot::Many(v) => v
                .iter()
                .find(|(id, _)| id.owner == owner && id.key == key)
                .map(|(_, e)| e),
        }
    }

    /// Merges `incoming` into the item: it replaces the held state only if it wins.
    pub fn merge(&mut self, owner: Option<Eid>, key: &str, incoming: Entry) -> Merged {
        self.write(owner, key, incoming, false, || false)
    }

    /// Like [`ItemStore::merge`], but an absent item is let in only if `refuse_new`
    /// says no (one lookup instead of a `get` and a `merge`).
    pub fn merge_unless(
        &mut self,
        owner: Option<Eid>,
        key: &str,
        incoming: Entry,
        refuse_new: impl FnOnce() -> bool,
    ) -> Merged {
        self.write(owner, key, incoming, false, refuse_new)
    }

    /// Sets the item's state whatever was held (for local changes, already versioned
    /// above the held state, and for restoring persisted state).
    pub fn put(&mut self, owner: Option<Eid>, key: &str, entry: Entry) -> Merged {
        self.write(owner, key, entry, true, || false)
    }

    fn write(
        &mut self,
        owner: Option<Eid>,
        key: &str,
        incoming: Entry,
        force: bool,
        refuse_new: impl FnOnce() -> bool,
    ) -> Merged {
        let pos = position_of(owner, key);
        let new_hash = incoming.digest_hash(pos);
        let new_tomb = incoming.is_tombstone();
        let slot = self.items.get_mut(&pos);
        let outcome = match slot {
            None => {
                if refuse_new() {
                    return Merged::Refused;
                }
                self.items.insert(
                    pos,
                    Slot::One(
                        ItemId {
                            owner,
                            key: key.to_string(),
                        },
                        incoming,
                    ),
                );
                Merged::Inserted
            }
            Some(slot) => {
                let held = match slot {
                    Slot::One(id, e) if id.owner == owner && id.key == key => Some(e),
                    Slot::One(..) => None,
                    Slot::Many(v) => v
                        .iter_mut()
                        .find(|(id, _)| id.owner == owner && id.key == key)
                        .map(|(_, e)| e),
                };
                match held {
                    Some(e) => {
                        if !force && !incoming.beats(e) {
                            return Merged::Kept;
                        }
                        Merged::Replaced(std::mem::replace(e, incoming))
                    }
                    None => {
                        if refuse_new() {
                            return Merged::Refused;
                        }
                        let id = ItemId {
                            owner,
                            key: key.to_string(),
                        };
                        let taken = std::mem::replace(slot, Slot::Many(Vec::new()));
                        let mut v = match taken {
                            Slot::One(i, e) => vec![(i, e)],
                            Slot::Many(v) => v,
                        };
                        v.push((id, incoming));
                        *slot = Slot::Many(v);
                        Merged::Inserted
                    }
                }
            }
        };
        match &outcome {
            Merged::Inserted => {
                self.account(pos, new_hash, 1);
                self.count(new_tomb, 1);
            }
            Merged::Replaced(old) => {
                self.account(pos, old.digest_hash(pos) ^ new_hash, 0);
                self.count(old.is_tombstone(), -1);
                self.count(new_tomb, 1);
            }
            Merged::Kept | Merged::Refused => {}
        }
        outcome
    }

    /// Forgets the item entirely (a collected tombstone, or a family reset).
    pub fn remove(&mut self, owner: Option<Eid>, key: &str) -> Option<Entry> {
        let pos = position_of(owner, key);
        let slot = self.items.get_mut(&pos)?;
        let removed = match slot {
            Slot::One(id, _) if id.owner == owner && id.key == key => {
                match self.items.remove(&pos) {
                    Some(Slot::One(_, e)) => Some(e),
                    _ => None,
                }
            }
            Slot::One(..) => None,
            Slot::Many(v) => {
                let i = v
                    .iter()
                    .position(|(id, _)| id.owner == owner && id.key == key)?;
                let (_, e) = v.swap_remove(i);
                if v.is_empty() {
                    self.items.remove(&pos);
                }
                Some(e)
            }
        }?;
        self.account_remove(pos, removed.digest_hash(pos));
        self.count(removed.is_tombstone(), -1);
        Some(removed)
    }

    fn count(&mut self, tomb: bool, delta: isize) {
        let c = if tomb {
            &mut self.tombstones
        } else {
            &mut self.live
        };
        *c = c.wrapping_add_signed(delta);
    }

    fn account(&mut self, pos: u64, hash_delta: u64, count_delta: u32) {
        if self.cached.is_empty() {
            self.cached = vec![(0, 0); CACHED_NODES];
        }
        for depth in 0..=CACHED_DEPTH {
            let prefix = if depth == 0 {
                0
            } else {
                pos >> (64 - 4 * u32::from(depth))
            };
            let b = &mut self.cached[cached_index(depth, prefix)];
            b.0 ^= hash_delta;
            b.1 += count_delta;
        }
    }

    fn account_remove(&mut self, pos: u64, hash: u64) {
        if self.cached.is_empty() {
            return;
        }
        for depth in 0..=CACHED_DEPTH {
            let prefix = if depth == 0 {
                0
            } else {
                pos >> (64 - 4 * u32::from(depth))
            };
            let b = &mut self.cached[cached_index(depth, prefix)];
            b.0 ^= hash;
            b.1 = b.1.saturating_sub(1);
        }
    }

    /// Hash and item count of the digest-tree node `prefix` at `depth`.
    pub fn node(&self, depth: u8, prefix: u64) -> (u64, usize) {
        if self.cached.is_empty() {
            return (0, 0);
        }
        if depth <= CACHED_DEPTH {
            return self
                .cached
                .get(cached_index(depth, prefix))
                .map_or((0, 0), |&(h, c)| (h, c as usize));
        }
        let mut acc = (0u64, 0usize);
        for (pos, id, e) in self.range(depth, prefix) {
            let _ = id;
            acc.0 ^= e.digest_hash(pos);
            acc.1 += 1;
        }
        acc
    }

    /// The items under the digest-tree node `prefix` at `depth`, with their positions.
    pub fn range(&self, depth: u8, prefix: u64) -> impl Iterator<Item = (u64, &ItemId, &Entry)> {
        self.items
            .range(node_range(depth, prefix))
            .flat_map(|(pos, slot)| slot_items(*pos, slot))
    }

    /// Every item, in position order.
    pub fn iter(&self) -> impl Iterator<Item = (&ItemId, &Entry)> {
        self.items
            .iter()
            .flat_map(|(pos, slot)| slot_items(*pos, slot))
            .map(|(_, id, e)| (id, e))
    }
}

fn slot_items(pos: u64, slot: &Slot) -> Box<dyn Iterator<Item = (u64, &ItemId, &Entry)> + '_> {
    match slot {
        Slot::One(id, e) => Box::new(std::iter::once((pos, id, e))),
        Slot::Many(v) => Box::new(v.iter().map(move |(id, e)| (pos, id, e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::version::{Hlc, Version};

    fn entry(ms: u64, value: Option<&str>) -> Entry {
        Entry {
            version: Version::new(Hlc::from_parts(ms, 0), Eid([0, 0, 0, 0, 0, 1])),
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn digest_of_two_stores_with_the_same_items_is_the_same_whatever_the_order() {
        let mut a = ItemStore::new();
        let mut b = ItemStore::new();
        for i in 0..500u64 {
            a.merge(None, &format!("k{i}"), entry(i, Some("v")));
        }
        for i in (0..500u64).rev() {
            b.merge(None, &format!("k{i}"), entry(i, Some("v")));
            b.merge(None, &format!("k{i}"), entry(0, Some("older")));
        }
        assert_eq!(a.node(0, 0), b.node(0, 0));
        assert_eq!(a.node(5, 3), b.node(5, 3));
        b.merge(None, "k7", entry(1000, None));
        assert_ne!(a.node(0, 0), b.node(0, 0));
        assert_eq!(b.tombstone_count(), 1);
        assert_eq!(b.live_count(), 499);
    }

    #[test]
    fn node_hashes_fold_from_their_children_at_every_depth() {
        let mut s = ItemStore::new();
        for i in 0..3000u64 {
            s.merge(None, &format!("key/{i}"), entry(i, Some("x")));
        }
        for depth in 0..6u8 {
            let (h, c) = s.node(depth, 0);
            let mut fh = 0;
            let mut fc = 0;
            for child in 0..16 {
                let (ch, cc) = s.node(depth + 1, child);
                fh ^= ch;
                fc += cc;
            }
            assert_eq!((h, c), (fh, fc), "depth {depth}");
        }
    }

    #[test]
    fn removing_an_item_takes_it_out_of_the_digest() {
        let mut s = ItemStore::new();
        s.merge(None, "a", entry(1, Some("x")));
        let before = s.node(0, 0);
        s.merge(None, "b", entry(2, None));
        assert_eq!(s.remove(None, "b"), Some(entry(2, None)));
        assert_eq!(s.node(0, 0), before);
        assert!(s.get(None, "b").is_none());
    }

    #[test]
    fn node_range_covers_exactly_its_prefix() {
        assert_eq!(node_range(1, 0xf), 0xf000_0000_0000_0000..=u64::MAX);
        assert_eq!(node_range(16, 5), 5..=5);
    }
}
