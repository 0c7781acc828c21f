//! The items of one shared family, indexed by digest position.
//!
//! Items are found by their position hash in a hash map, and the ordered set of positions
//! makes every node of the digest tree (a 16-ary tree over the hash's nibbles) one
//! contiguous range. The hashes and counts
//! of the 4096 nodes at depth 3 are kept up to date as items change; shallower nodes are
//! folded from them and deeper ones are computed from their (small) ranges on demand.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::RangeInclusive;
use std::sync::Arc;

use super::item::{position_of, Contents, Entry, ItemId};
use super::persist::ItemState;
use crate::eid::Eid;

/// The deepest level of the digest tree: one nibble of the position hash per level.
pub(crate) const MAX_DEPTH: u8 = 16;
/// Depth whose node hashes are maintained incrementally.
const CACHED_DEPTH: u8 = 3;
const CACHED_NODES: usize = 1 + 16 + 256 + 4096;

/// Nodes at `CACHED_DEPTH`, each with a bucket of the positions under it.
const BUCKETS: usize = 4096;
const BUCKET_SHIFT: u32 = 64 - 4 * CACHED_DEPTH as u32;

/// Index in `ItemStore::cached` of the node `prefix` at `depth` (at most `CACHED_DEPTH`).
fn cached_index(depth: u8, prefix: u64) -> usize {
    let level_start = [0usize, 1, 17, 273][usize::from(depth)];
    level_start + prefix as usize
}

/// Positions are already well-mixed 64-bit hashes: the map uses them as they are.
#[derive(Clone, Copy, Debug, Default)]
struct PositionHasher(u64);

impl Hasher for PositionHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type PositionMap<V> = HashMap<u64, V, BuildHasherDefault<PositionHasher>>;

/// One item held, with where its latest change sits in the change log (if it changed
/// since the log was last taken).
#[derive(Clone, Debug)]
struct Held {
    id: ItemId,
    entry: Entry,
    /// The log epoch `change` belongs to; the item is unchanged unless it is the store's.
    epoch: u32,
    change: u32,
}

impl Held {
    /// A new item, not yet in the change log; its key shared from `shared` if given.
    fn new(owner: Option<Eid>, key: &str, shared: Option<&Arc<str>>, entry: Entry) -> Self {
        Held {
            id: ItemId {
                owner,
                key: shared.map_or_else(|| key.into(), Arc::clone),
            },
            entry,
            epoch: 0,
            change: 0,
        }
    }

    fn is(&self, owner: Option<Eid>, key: &str) -> bool {
        self.id.owner == owner && &*self.id.key == key
    }
}

/// Items that share a position hash (almost always exactly one).
///
/// Boxed, so that the map holds 16 bytes per item rather than the whole item: a map of a
/// million items then grows (allocates afresh and copies everything) through tens of
/// megabytes instead of hundreds, which is most of what a new node's catch-up costs.
#[derive(Clone, Debug)]
enum Slot {
    One(Box<Held>),
    Many(Box<[Held]>),
}

impl Slot {
    fn find(&self, owner: Option<Eid>, key: &str) -> Option<&Held> {
        match self {
            Slot::One(h) => h.is(owner, key).then_some(&**h),
            Slot::Many(v) => v.iter().find(|h| h.is(owner, key)),
        }
    }

    fn find_mut(&mut self, owner: Option<Eid>, key: &str) -> Option<&mut Held> {
        match self {
            Slot::One(h) => h.is(owner, key).then_some(&mut **h),
            Slot::Many(v) => v.iter_mut().find(|h| h.is(owner, key)),
        }
    }

    fn held(&self) -> &[Held] {
        match self {
            Slot::One(h) => std::slice::from_ref(&**h),
            Slot::Many(v) => v,
        }
    }

    fn held_mut(&mut self) -> &mut [Held] {
        match self {
            Slot::One(h) => std::slice::from_mut(&mut **h),
            Slot::Many(v) => v,
        }
    }
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

/// An item changed since the log was last taken, in its latest state (`None`: removed
/// from the store). The strings are shared with whoever needs them for the same change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Logged {
    pub owner: Option<Eid>,
    pub key: Arc<str>,
    pub state: Option<ItemState>,
}

pub(crate) type ChangeLog = Vec<Logged>;

/// One family's items with their digest tree.
///
/// Items are found by position in a hash map. The positions are also kept in one bucket
/// per digest-tree node at `CACHED_DEPTH` (unordered: they are sorted when a range is
/// read, which is rare, rather than on every insert). When tracking is on, every change (but not a `put_untracked`)
/// is also recorded in a change log, once per item, for the persistence delta.
#[derive(Clone, Debug)]
pub struct ItemStore {
    items: PositionMap<Slot>,
    /// `BUCKETS` buckets once the first item is in.
    buckets: Vec<Vec<u64>>,
    /// (XOR of entry digest hashes, item count) per node of depths 0 to 3, level by
    /// level (1 + 16 + 256 + 4096 nodes); empty until first use.
    cached: Vec<(u64, u32)>,
    live: usize,
    tombstones: usize,
    tracking: bool,
    /// Starts at 1; an item whose `epoch` differs has not changed since the last take.
    epoch: u32,
    log: ChangeLog,
    /// Log index of the item last written.
    last: u32,
    /// Log index of items removed during this epoch, for when they come back.
    removed: HashMap<ItemId, u32>,
    /// The owner whose live items this node's AstDB family holds (see [`ItemStore::watch`]),
    /// and their contents summary.
    watched: Option<Option<Eid>>,
    contents: Contents,
}

impl Default for ItemStore {
    fn default() -> Self {
        ItemStore {
            items: PositionMap::default(),
            buckets: Vec::new(),
            cached: Vec::new(),
            live: 0,
            tombstones: 0,
            tracking: false,
            epoch: 1,
            log: Vec::new(),
            last: 0,
            removed: HashMap::new(),
            watched: None,
            contents: Contents::default(),
        }
    }
}

/// Whether `prefix` has at most `depth` nibbles, as a digest-tree node's must.
pub(crate) fn valid_node(depth: u8, prefix: u64) -> bool {
    depth <= MAX_DEPTH && (depth == MAX_DEPTH || prefix >> (4 * u32::from(depth)) == 0)
}

/// The range of positions under the digest-tree node `prefix` at `depth`.
pub(crate) fn node_range(depth: u8, prefix: u64) -> RangeInclusive<u64> {
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

    /// A store that records its changes in a log (see [`ItemStore::take_changes`]).
    pub(crate) fn tracked() -> Self {
        ItemStore {
            tracking: true,
            ..Self::default()
        }
    }

    /// Keeps a [`Contents`] summary of the live items of `owner` (`None`: a global
    /// family's items), which are the rows of this node's own AstDB family.
    pub(crate) fn watch(&mut self, owner: Option<Eid>) {
        self.watched = Some(owner);
        let mut contents = Contents::default();
        for slot in self.items.values() {
            for h in slot.held() {
                if let (true, Some(value)) = (h.id.owner == owner, &h.entry.value) {
                    contents.add(owner, &h.id.key, value);
                }
            }
        }
        self.contents = contents;
    }

    /// The summary kept since [`ItemStore::watch`].
    pub(crate) fn contents(&self) -> Contents {
        self.contents
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live
    }

    pub(crate) fn tombstone_count(&self) -> usize {
        self.tombstones
    }

    pub(crate) fn get(&self, owner: Option<Eid>, key: &str) -> Option<&Entry> {
        self.get_at(position_of(owner, key), owner, key)
    }

    /// [`ItemStore::get`] for an item whose position is known.
    pub(crate) fn get_at(&self, pos: u64, owner: Option<Eid>, key: &str) -> Option<&Entry> {
        self.items.get(&pos)?.find(owner, key).map(|h| &h.entry)
    }

    /// Merges `incoming` into the item: it replaces the held state only if it wins.
    pub fn merge(&mut self, owner: Option<Eid>, key: &str, incoming: Entry) -> Merged {
        let pos = position_of(owner, key);
        self.write(pos, owner, key, None, incoming, false, || false)
    }

    /// Like [`ItemStore::merge`], for an item at position `pos`, but an absent item is
    /// let in only if `refuse_new` says no (one lookup instead of a `get` and a `merge`).
    /// A new item keeps `key` itself rather than a copy.
    pub(crate) fn merge_unless(
        &mut self,
        pos: u64,
        owner: Option<Eid>,
        key: &Arc<str>,
        incoming: Entry,
        refuse_new: impl FnOnce() -> bool,
    ) -> Merged {
        self.write(pos, owner, key, Some(key), incoming, false, refuse_new)
    }

    /// Sets the item's state whatever was held (for local changes, already versioned
    /// above the held state).
    pub(crate) fn put(&mut self, owner: Option<Eid>, key: &str, entry: Entry) -> Merged {
        let pos = position_of(owner, key);
        self.write(pos, owner, key, None, entry, true, || false)
    }

    /// Like [`ItemStore::put`], without recording the change (restoring persisted state).
    pub(crate) fn put_untracked(&mut self, owner: Option<Eid>, key: &str, entry: Entry) -> Merged {
        let tracking = std::mem::replace(&mut self.tracking, false);
        let merged = self.put(owner, key, entry);
        self.tracking = tracking;
        merged
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        pos: u64,
        owner: Option<Eid>,
        key: &str,
        shared: Option<&Arc<str>>,
        incoming: Entry,
        force: bool,
        refuse_new: impl FnOnce() -> bool,
    ) -> Merged {
        let new_hash = incoming.digest_hash(pos);
        let new_tomb = incoming.is_tombstone();
        let (outcome, held) = match self.items.entry(pos) {
            std::collections::hash_map::Entry::Vacant(v) => {
                if refuse_new() {
                    return Merged::Refused;
                }
                if self.buckets.is_empty() {
                    self.buckets = vec![Vec::new(); BUCKETS];
                }
                self.buckets[(pos >> BUCKET_SHIFT) as usize].push(pos);
                let Slot::One(h) =
                    v.insert(Slot::One(Box::new(Held::new(owner, key, shared, incoming))))
                else {
                    unreachable!("a slot just made holds one item")
                };
                (Merged::Inserted, &mut **h)
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                let slot = o.into_mut();
                if slot.find(owner, key).is_some() {
                    let Some(h) = slot.find_mut(owner, key) else {
                        unreachable!("the item was just found")
                    };
                    if !force && !incoming.beats(&h.entry) {
                        return Merged::Kept;
                    }
                    let old = std::mem::replace(&mut h.entry, incoming);
                    (Merged::Replaced(old), h)
                } else {
                    if refuse_new() {
                        return Merged::Refused;
                    }
                    let held = Held::new(owner, key, shared, incoming);
                    let taken = std::mem::replace(slot, Slot::Many(Box::default()));
                    let mut v = match taken {
                        Slot::One(h) => vec![*h],
                        Slot::Many(v) => v.into_vec(),
                    };
                    v.push(held);
                    *slot = Slot::Many(v.into_boxed_slice());
                    let Slot::Many(v) = slot else {
                        unreachable!("the slot was just made a list")
                    };
                    let Some(h) = v.last_mut() else {
                        unreachable!("an item was just pushed")
                    };
                    (Merged::Inserted, h)
                }
            }
        };
        if self.tracking {
            let state = Some(ItemState::of(&held.entry));
            if held.epoch == self.epoch {
                self.log[held.change as usize].state = state;
            } else {
                let back = if self.removed.is_empty() {
                    None
                } else {
                    self.removed.remove(&held.id)
                };
                let at = match back {
                    Some(at) => {
                        self.log[at as usize].state = state;
                        at
                    }
                    None => {
                        self.log.push(Logged {
                            owner,
                            key: held.id.key.clone(),
                            state,
                        });
                        (self.log.len() - 1) as u32
                    }
                };
                held.epoch = self.epoch;
                held.change = at;
            }
            self.last = held.change;
        }
        if self.watched == Some(owner) {
            if let Merged::Replaced(Entry {
                value: Some(old), ..
            }) = &outcome
            {
                self.contents.remove_at(pos, old);
            }
            if let (Merged::Inserted | Merged::Replaced(_), Some(new)) =
                (&outcome, &held.entry.value)
            {
                self.contents.add_at(pos, new);
            }
        }
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
    pub(crate) fn remove(&mut self, owner: Option<Eid>, key: &str) -> Option<Entry> {
        let pos = position_of(owner, key);
        let slot = self.items.get_mut(&pos)?;
        let held = match slot {
            Slot::One(h) if h.is(owner, key) => {
                let Some(Slot::One(h)) = self.items.remove(&pos) else {
                    unreachable!("the slot holds this one item")
                };
                self.unbucket(pos);
                *h
            }
            Slot::One(..) => return None,
            Slot::Many(v) => {
                let i = v.iter().position(|h| h.is(owner, key))?;
                let mut list = std::mem::take(v).into_vec();
                let h = list.swap_remove(i);
                if list.is_empty() {
                    self.items.remove(&pos);
                    self.unbucket(pos);
                } else {
                    *v = list.into_boxed_slice();
                }
                h
            }
        };
        let Held {
            id,
            entry,
            epoch,
            change,
        } = held;
        if self.tracking {
            let at = if epoch == self.epoch {
                self.log[change as usize].state = None;
                change
            } else {
                self.log.push(Logged {
                    owner,
                    key: id.key.clone(),
                    state: None,
                });
                (self.log.len() - 1) as u32
            };
            self.removed.insert(id, at);
        }
        if let (true, Some(value)) = (self.watched == Some(owner), &entry.value) {
            self.contents.remove_at(pos, value);
        }
        self.account_remove(pos, entry.digest_hash(pos));
        self.count(entry.is_tombstone(), -1);
        Some(entry)
    }

    /// Like [`ItemStore::remove`], but an item not held is still recorded as removed
    /// (once) in the change log.
    pub(crate) fn forget(&mut self, owner: Option<Eid>, key: &str) -> Option<Entry> {
        let removed = self.remove(owner, key);
        if removed.is_none() && self.tracking {
            let id = ItemId {
                owner,
                key: key.into(),
            };
            if !self.removed.contains_key(&id) {
                self.log.push(Logged {
                    owner,
                    key: id.key.clone(),
                    state: None,
                });
                self.removed.insert(id, (self.log.len() - 1) as u32);
            }
        }
        removed
    }

    fn unbucket(&mut self, pos: u64) {
        if let Some(b) = self.buckets.get_mut((pos >> BUCKET_SHIFT) as usize) {
            if let Some(i) = b.iter().position(|p| *p == pos) {
                b.swap_remove(i);
            }
        }
    }

    /// The log record of the item last merged or put (when tracking): its strings are
    /// shared, so whoever acts on the same change need not copy them again.
    pub(crate) fn last_logged(&self) -> Option<&Logged> {
        if !self.tracking {
            return None;
        }
        self.log.get(self.last as usize)
    }

    /// The items changed since the last call, each once, in its latest state.
    pub(crate) fn take_changes(&mut self) -> ChangeLog {
        if self.log.is_empty() {
            return Vec::new();
        }
        self.removed.clear();
        if self.epoch == u32::MAX {
            for slot in self.items.values_mut() {
                for h in slot.held_mut() {
                    h.epoch = 0;
                }
            }
            self.epoch = 0;
        }
        self.epoch += 1;
        std::mem::take(&mut self.log)
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
    pub(crate) fn node(&self, depth: u8, prefix: u64) -> (u64, usize) {
        if self.cached.is_empty() {
            return (0, 0);
        }
        if depth <= CACHED_DEPTH {
            return self
                .cached
                .get(cached_index(depth, prefix))
                .map_or((0, 0), |&(h, c)| (h, c as usize));
        }
        // Below the cached depth a node lies within one bucket; order does not matter.
        let range = node_range(depth, prefix);
        let mut acc = (0u64, 0usize);
        let bucket = self.buckets.get((range.start() >> BUCKET_SHIFT) as usize);
        for pos in bucket.into_iter().flatten().filter(|p| range.contains(p)) {
            for (pos, _, e) in self.at(*pos) {
                acc.0 ^= e.digest_hash(pos);
                acc.1 += 1;
            }
        }
        acc
    }

    /// The items under the digest-tree node `prefix` at `depth`, with their positions,
    /// in position order.
    pub(crate) fn range(
        &self,
        depth: u8,
        prefix: u64,
    ) -> impl Iterator<Item = (u64, &ItemId, &Entry)> {
        let range = node_range(depth, prefix);
        let first = (range.start() >> BUCKET_SHIFT) as usize;
        let last = (range.end() >> BUCKET_SHIFT) as usize;
        let buckets = self.buckets.get(first..=last).unwrap_or(&[]);
        buckets
            .iter()
            .flat_map(move |b| {
                let mut in_range: Vec<u64> =
                    b.iter().copied().filter(|p| range.contains(p)).collect();
                in_range.sort_unstable();
                in_range
            })
            .flat_map(|pos| self.at(pos))
    }

    /// Every item, in position order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ItemId, &Entry)> {
        self.range(0, 0).map(|(_, id, e)| (id, e))
    }

    /// Every item held, in no particular order (cheaper than [`ItemStore::iter`]).
    pub(crate) fn iter_unordered(&self) -> impl Iterator<Item = (&ItemId, &Entry)> {
        self.items
            .values()
            .flat_map(Slot::held)
            .map(|h| (&h.id, &h.entry))
    }

    pub(super) fn at(&self, pos: u64) -> impl Iterator<Item = (u64, &ItemId, &Entry)> {
        self.items
            .get(&pos)
            .map_or(&[][..], Slot::held)
            .iter()
            .map(move |h| (pos, &h.id, &h.entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::version::{Hlc, Version};

    fn entry(ms: u64, value: Option<&str>) -> Entry {
        Entry {
            version: Version::new(Hlc::from_parts(ms, 0), Eid([0, 0, 0, 0, 0, 1])),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn the_watched_owners_contents_summary_follows_every_change() {
        let mine = Some(Eid([2, 0, 0, 0, 0, 1]));
        let theirs = Some(Eid([2, 0, 0, 0, 0, 2]));
        let mut s = ItemStore::tracked();
        s.put(mine, "before", entry(1, Some("w")));
        s.watch(mine);
        let mut rng: u64 = 7;
        for i in 0..5000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let owner = if rng.is_multiple_of(3) { theirs } else { mine };
            let key = format!("k{}", rng % 97);
            let value = match rng % 5 {
                0 => None,
                n => Some(format!("v{n}")),
            };
            match (rng >> 8) % 4 {
                0 => {
                    s.remove(owner, &key);
                }
                1 => {
                    s.put(owner, &key, entry(i, value.as_deref()));
                }
                _ => {
                    s.merge(owner, &key, entry(rng % 5000, value.as_deref()));
                }
            }
            let mut expected = Contents::default();
            for (id, e) in s.iter_unordered() {
                if let (true, Some(v)) = (id.owner == mine, &e.value) {
                    expected.add(mine, &id.key, v);
                }
            }
            assert_eq!(s.contents(), expected, "after step {i}");
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
    fn the_change_log_holds_each_changed_item_once_in_its_latest_state() {
        let mut s = ItemStore::tracked();
        s.put_untracked(None, "restored", entry(1, Some("r")));
        s.merge(None, "a", entry(1, Some("x")));
        s.merge(None, "a", entry(2, Some("y")));
        s.merge(None, "a", entry(1, Some("older")));
        s.put(None, "b", entry(3, None));
        let log = |s: &mut ItemStore| -> Vec<(String, Option<Entry>)> {
            s.take_changes()
                .into_iter()
                .map(|l| {
                    assert_eq!(l.owner, None);
                    (l.key.to_string(), l.state.map(|st| st.to_entry()))
                })
                .collect()
        };
        assert_eq!(
            s.last_logged().map(|l| &*l.key),
            Some("b"),
            "the record of the last write"
        );
        assert_eq!(
            log(&mut s),
            vec![
                ("a".into(), Some(entry(2, Some("y")))),
                ("b".into(), Some(entry(3, None))),
            ]
        );
        assert!(s.take_changes().is_empty());
        // Removed, then back within one epoch: one record, in the latest state.
        s.remove(None, "b");
        assert_eq!(log(&mut s), vec![("b".into(), None)]);
        s.merge(None, "a", entry(4, None));
        s.remove(None, "a");
        s.merge(None, "a", entry(5, Some("z")));
        s.remove(None, "restored");
        assert_eq!(
            log(&mut s),
            vec![
                ("a".into(), Some(entry(5, Some("z")))),
                ("restored".into(), None),
            ]
        );
        // Forgetting an item not held still records it as removed, once.
        s.forget(None, "never");
        s.forget(None, "never");
        assert_eq!(log(&mut s), vec![("never".into(), None)]);
        let mut plain = ItemStore::new();
        plain.merge(None, "a", entry(1, Some("x")));
        assert!(plain.take_changes().is_empty());
    }

    #[test]
    fn ranges_and_iteration_are_in_position_order() {
        let mut s = ItemStore::new();
        for i in 0..5000u64 {
            s.merge(None, &format!("k{i}"), entry(i, Some("v")));
        }
        for i in (0..5000u64).step_by(3) {
            s.remove(None, &format!("k{i}"));
        }
        let all: Vec<u64> = s.iter().map(|(id, _)| id.position()).collect();
        assert_eq!(all.len(), 5000 - 1667);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        for depth in 0..6u8 {
            let prefix = if depth == 0 {
                0
            } else {
                all[100] >> (64 - 4 * u32::from(depth))
            };
            let range = node_range(depth, prefix);
            let want: Vec<u64> = all.iter().copied().filter(|p| range.contains(p)).collect();
            let got: Vec<u64> = s.range(depth, prefix).map(|(p, _, _)| p).collect();
            assert_eq!(got, want, "depth {depth}");
            let (_, count) = s.node(depth, prefix);
            assert_eq!(count, want.len(), "depth {depth}");
        }
    }

    #[test]
    fn node_range_covers_exactly_its_prefix() {
        assert_eq!(node_range(1, 0xf), 0xf000_0000_0000_0000..=u64::MAX);
        assert_eq!(node_range(16, 5), 5..=5);
    }
}
