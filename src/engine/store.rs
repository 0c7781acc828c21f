//! The items of one shared family, indexed by digest position.
//!
//! Compact, because a family may hold millions of keys: per item one 28-byte slot in a
//! table ordered by position hash, and one record (owner, key, value) in a string
//! arena; no allocation of its own per item.
//!
//! The table is an ordered open-addressing table: an item's home slot is its position
//! scaled to the table's size, it sits at or after its home, and the occupied slots are
//! in position order. A lookup scans forward from the home slot (a few slots: the table
//! is at most 90% full); every node of the digest tree (a 16-ary tree over the hash's
//! nibbles) is one contiguous run of slots, so ranges come in position order for free.
//! The hashes and counts of the 4096 nodes at depth 3 are kept up to date as items
//! change; shallower nodes are folded from them and deeper ones are computed from their
//! (small) ranges on demand.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::RangeInclusive;
use std::sync::Arc;

use super::item::{digest_hash, position_of, Contents, Entry, ItemView};
use super::persist::ItemState;
use super::version::{Hlc, Version};
use crate::asterisk::cpu;
use crate::eid::Eid;

/// The deepest level of the digest tree: one nibble of the position hash per level.
pub(crate) const MAX_DEPTH: u8 = 16;
/// Depth whose node hashes are maintained incrementally.
const CACHED_DEPTH: u8 = 3;
const CACHED_NODES: usize = 1 + 16 + 256 + 4096;

/// The table grows when more than this share (in tenths) of its home slots are taken...
const MAX_LOAD_TENTHS: usize = 9;
/// ...to hold this many times (in tenths) its items.
const GROWN_TENTHS: usize = 14;
/// The arena is rewritten when the records it no longer needs outweigh those it does
/// (and are at least this many bytes).
const MIN_GARBAGE: usize = 64 * 1024;

/// Index in `ItemStore::cached` of the node `prefix` at `depth` (at most `CACHED_DEPTH`).
fn cached_index(depth: u8, prefix: u64) -> usize {
    let level_start = [0usize, 1, 17, 273][usize::from(depth)];
    level_start + prefix as usize
}

/// Positions are already well-mixed 64-bit hashes: the change log's index uses them as
/// they are.
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

const EMPTY: u8 = 0;
const LIVE: u8 = 1;
const TOMBSTONE: u8 = 2;

/// One slot of the table: an item's position and version, whether it is a tombstone,
/// and where its record starts in the arena (40 bits). 28 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed(4))]
struct Slot {
    pos: u64,
    hlc: u64,
    origin: [u8; 6],
    at_hi: u8,
    state: u8,
    at_lo: u32,
}

impl Slot {
    fn used(&self) -> bool {
        self.state != EMPTY
    }

    fn pos(&self) -> u64 {
        self.pos
    }

    fn version(&self) -> Version {
        Version::new(Hlc(self.hlc), Eid(self.origin))
    }

    fn tombstone(&self) -> bool {
        self.state == TOMBSTONE
    }

    fn at(&self) -> usize {
        (usize::from(self.at_hi) << 32) | self.at_lo as usize
    }

    fn new(pos: u64, entry: &Entry, at: usize) -> Self {
        let mut slot = Slot {
            pos,
            ..Slot::default()
        };
        slot.set_state(entry);
        slot.set_at(at);
        slot
    }

    fn set_state(&mut self, entry: &Entry) {
        self.hlc = entry.version.hlc.0;
        self.origin = entry.version.origin.0;
        self.state = if entry.is_tombstone() {
            TOMBSTONE
        } else {
            LIVE
        };
    }

    fn set_at(&mut self, at: usize) {
        assert!(at < 1 << 40, "an item store's arena is limited to 1 TiB");
        self.at_lo = at as u32;
        self.at_hi = (at >> 32) as u8;
    }

    fn digest_hash(&self) -> u64 {
        digest_hash(self.pos, self.version(), self.tombstone())
    }
}

/// Appends `n` to `s` in 6-bit groups, low first, each an ASCII character (0x40 marks
/// that more follow), so that the arena stays a valid UTF-8 string.
fn put_len(s: &mut String, mut n: usize) {
    while n >= 0x40 {
        s.push(char::from((n & 0x3f) as u8 | 0x40));
        n >>= 6;
    }
    s.push(char::from(n as u8));
}

/// The number [`put_len`] wrote at `at`, and where it ends.
fn get_len(b: &[u8], mut at: usize) -> (usize, usize) {
    let (mut n, mut shift) = (0usize, 0);
    loop {
        let byte = b[at];
        at += 1;
        n |= usize::from(byte & 0x3f) << shift;
        if byte & 0x40 == 0 {
            return (n, at);
        }
        shift += 6;
    }
}

/// An item's record in the arena, parsed: whose (0 for none, else index + 1 in
/// `ItemStore::owners`), its key and value, and where it ends.
struct Record<'a> {
    owner: usize,
    key: &'a str,
    value: Option<&'a str>,
    end: usize,
}

/// What a merge did to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merged {
    /// The item was new here.
    Inserted,
    /// The incoming state won over the one held, whose version is returned.
    Replaced(Version),
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

/// No further record in a chain of the change log.
const NO_RECORD: u32 = u32::MAX;

/// One family's items with their digest tree.
///
/// When tracking is on, every change (but not a `put_untracked`) is also recorded in a
/// change log, once per item, for the persistence delta; the log's index (by position)
/// lives only until the log is taken.
#[derive(Clone, Debug, Default)]
pub struct ItemStore {
    /// `homes` home slots, then a tail for the items displaced past the last one.
    slots: Vec<Slot>,
    homes: usize,
    len: usize,
    /// The items' records, one after the other: owner, key length, key, and (unless a
    /// tombstone) value length and value. Lengths as [`put_len`] writes them.
    arena: String,
    /// Bytes of the arena no item points to any more.
    garbage: usize,
    /// The owners named by records (index + 1; 0 is no owner).
    owners: Vec<Eid>,
    /// (XOR of entry digest hashes, item count) per node of depths 0 to 3, level by
    /// level (1 + 16 + 256 + 4096 nodes); empty until first use.
    cached: Vec<(u64, u32)>,
    live: usize,
    tombstones: usize,
    tracking: bool,
    log: ChangeLog,
    /// Per position, the log index of the latest item logged there, and per log index
    /// the one logged before it at the same position (`NO_RECORD`: none).
    logged: PositionMap<u32>,
    chain: Vec<u32>,
    /// Log index of the item last written.
    last: u32,
    /// The owner whose live items this node's AstDB family holds (see [`ItemStore::watch`]),
    /// and their contents summary.
    watched: Option<Option<Eid>>,
    contents: Contents,
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

/// How many slots ahead [`ItemStore::range`] prefetches records.
const RECORD_AHEAD: usize = 8;

/// Where the item looked for is, or where it would go.
enum Found {
    At(usize),
    Absent(usize),
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
        for (pos, v) in self.range(0, 0) {
            if let (true, Some(value)) = (v.owner == owner, v.value) {
                contents.add_at(pos, value);
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

    /// The home slot of position `pos`.
    fn home(&self, pos: u64) -> usize {
        ((u128::from(pos) * self.homes as u128) >> 64) as usize
    }

    fn owner_code(&self, owner: Option<Eid>) -> Option<usize> {
        match owner {
            None => Some(0),
            Some(eid) => self.owners.iter().position(|o| *o == eid).map(|i| i + 1),
        }
    }

    fn owner_of(&self, code: usize) -> Option<Eid> {
        code.checked_sub(1).map(|i| self.owners[i])
    }

    fn record(&self, slot: &Slot) -> Record<'_> {
        let b = self.arena.as_bytes();
        let (owner, at) = get_len(b, slot.at());
        let (klen, at) = get_len(b, at);
        let key = &self.arena[at..at + klen];
        let mut end = at + klen;
        let value = if slot.tombstone() {
            None
        } else {
            let (vlen, at) = get_len(b, end);
            end = at + vlen;
            Some(&self.arena[at..end])
        };
        Record {
            owner,
            key,
            value,
            end,
        }
    }

    fn view(&self, slot: &Slot) -> ItemView<'_> {
        let r = self.record(slot);
        ItemView {
            owner: self.owner_of(r.owner),
            key: r.key,
            version: slot.version(),
            value: r.value,
        }
    }

    /// Appends the record of `owner`'s `key` holding `value` (code `owner`); where it starts.
    fn append_record(&mut self, owner: usize, key: &str, value: Option<&str>) -> usize {
        let at = self.arena.len();
        put_len(&mut self.arena, owner);
        put_len(&mut self.arena, key.len());
        self.arena.push_str(key);
        if let Some(v) = value {
            put_len(&mut self.arena, v.len());
            self.arena.push_str(v);
        }
        at
    }

    /// Asks the CPU to bring the home slot of `pos` into its cache. A catch-up's keys
    /// come in key order, so their slots lie all over a table of tens of megabytes: a
    /// merge that prefetches some changes ahead finds each slot in the cache instead of
    /// waiting on memory for it.
    pub(crate) fn prefetch(&self, pos: u64) {
        if let Some(slot) = self.slots.get(self.home(pos)) {
            cpu::prefetch(slot);
        }
    }

    /// The item `owner` (code) / `key` at `pos`, or where it would be inserted.
    fn find(&self, pos: u64, owner: usize, key: &str) -> Found {
        if self.homes == 0 {
            return Found::Absent(0);
        }
        let mut i = self.home(pos);
        while i < self.slots.len() && self.slots[i].used() && self.slots[i].pos() < pos {
            i += 1;
        }
        while i < self.slots.len() && self.slots[i].used() && self.slots[i].pos() == pos {
            let r = self.record(&self.slots[i]);
            if r.owner == owner && r.key == key {
                return Found::At(i);
            }
            i += 1;
        }
        Found::Absent(i)
    }

    fn find_item(&self, pos: u64, owner: Option<Eid>, key: &str) -> Option<usize> {
        match self.find(pos, self.owner_code(owner)?, key) {
            Found::At(i) => Some(i),
            Found::Absent(_) => None,
        }
    }

    pub(crate) fn get(&self, owner: Option<Eid>, key: &str) -> Option<ItemView<'_>> {
        self.get_at(position_of(owner, key), owner, key)
    }

    /// [`ItemStore::get`] for an item whose position is known.
    pub(crate) fn get_at(&self, pos: u64, owner: Option<Eid>, key: &str) -> Option<ItemView<'_>> {
        self.find_item(pos, owner, key)
            .map(|i| self.view(&self.slots[i]))
    }

    /// Merges `incoming` into the item: it replaces the held state only if it wins.
    pub fn merge(&mut self, owner: Option<Eid>, key: &str, incoming: Entry) -> Merged {
        let pos = position_of(owner, key);
        self.write(pos, owner, key, None, incoming, false, || false)
    }

    /// Like [`ItemStore::merge`], for an item at position `pos`, but an absent item is
    /// let in only if `refuse_new` says no (one lookup instead of a `get` and a `merge`).
    /// The change log shares `key` rather than a copy.
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

    /// [`ItemStore::put`], the change log sharing `key` rather than a copy.
    pub(crate) fn put_shared(
        &mut self,
        owner: Option<Eid>,
        key: &Arc<str>,
        entry: Entry,
    ) -> Merged {
        let pos = position_of(owner, key);
        self.write(pos, owner, key, Some(key), entry, true, || false)
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
        let mut refuse_new = Some(refuse_new);
        let mut refused = || refuse_new.take().is_some_and(|f| f());
        let code = match self.owner_code(owner) {
            Some(code) => code,
            None => {
                if refused() {
                    return Merged::Refused;
                }
                self.owners.push(owner.unwrap_or_default());
                self.owners.len()
            }
        };
        let watched = self.watched == Some(owner);
        let new_hash = incoming.digest_hash(pos);
        let outcome = match self.find(pos, code, key) {
            Found::At(i) => {
                let slot = self.slots[i];
                let old_version = slot.version();
                let (old_row, same_value, value_at, end) = {
                    let r = self.record(&slot);
                    if !force && !incoming.beats_held(old_version, r.value) {
                        return Merged::Kept;
                    }
                    let old_row = r
                        .value
                        .filter(|_| watched)
                        .map(|v| Contents::row_hash(pos, v));
                    (
                        old_row,
                        r.value == incoming.value.as_deref(),
                        r.value.map(|v| r.end - v.len()),
                        r.end,
                    )
                };
                if let Some(h) = old_row {
                    self.contents.remove_hash(h);
                }
                self.account(pos, slot.digest_hash() ^ new_hash, 0);
                self.count(slot.tombstone(), -1);
                self.slots[i].set_state(&incoming);
                if !same_value {
                    match (value_at, incoming.value.as_deref()) {
                        // A value of the same length: written over the old one.
                        (Some(at), Some(v)) if end - at == v.len() => {
                            self.arena.replace_range(at..end, v);
                        }
                        (_, value) => {
                            self.garbage += end - slot.at();
                            let at = self.append_record(code, key, value);
                            self.slots[i].set_at(at);
                        }
                    }
                }
                Merged::Replaced(old_version)
            }
            Found::Absent(at) => {
                if refused() {
                    return Merged::Refused;
                }
                let record = self.append_record(code, key, incoming.value.as_deref());
                self.insert(at, Slot::new(pos, &incoming, record));
                self.account(pos, new_hash, 1);
                Merged::Inserted
            }
        };
        self.count(incoming.is_tombstone(), 1);
        if watched {
            if let Some(new) = &incoming.value {
                self.contents.add_at(pos, new);
            }
        }
        if self.tracking {
            let key = shared.map_or_else(|| Arc::from(key), Arc::clone);
            self.log_change(pos, owner, key, Some(ItemState::from_entry(incoming)));
        }
        self.compact_arena_if_due();
        outcome
    }

    /// Puts `slot` at index `at` (where [`ItemStore::find`] said), shifting the run it
    /// lands in one slot on.
    fn insert(&mut self, at: usize, slot: Slot) {
        if (self.len + 1) * 10 > self.homes * MAX_LOAD_TENTHS {
            self.grow();
            // The table was rebuilt: find the place again.
            let at = match self.find_free_place(slot.pos()) {
                Some(at) => at,
                None => unreachable!("a grown table has room"),
            };
            return self.insert_at(at, slot);
        }
        self.insert_at(at, slot)
    }

    /// The index a new item at `pos` goes to (after any with the same position).
    fn find_free_place(&self, pos: u64) -> Option<usize> {
        let mut i = self.home(pos);
        while i < self.slots.len() && self.slots[i].used() && self.slots[i].pos() <= pos {
            i += 1;
        }
        (i < self.slots.len()).then_some(i)
    }

    fn insert_at(&mut self, at: usize, slot: Slot) {
        let Some(free) = self.slots[at.min(self.slots.len())..]
            .iter()
            .position(|s| !s.used())
            .map(|n| at + n)
        else {
            // The run reaches the end of the tail: a bigger tail, and again.
            self.rebuild(self.homes, self.slots.len() - self.homes + 64);
            let at = match self.find_free_place(slot.pos()) {
                Some(at) => at,
                None => unreachable!("a rebuilt table has room"),
            };
            return self.insert_at(at, slot);
        };
        self.slots.copy_within(at..free, at + 1);
        self.slots[at] = slot;
        self.len += 1;
    }

    fn grow(&mut self) {
        let homes = ((self.len + 1) * GROWN_TENTHS / 10).max(16);
        self.rebuild(homes, 16 + homes / 256);
    }

    /// Lays the items out again over `homes` home slots (never fewer than now) and a
    /// tail of at least `tail`, in place. With at least as many homes, every item's
    /// new place is at or after its old one, so moving them from the last to the first
    /// never overwrites one not yet moved; and the table grows where it lies (a large
    /// one is remapped, not copied) instead of being laid out anew beside the old one,
    /// which for a million keys held both, some 60 MB, at the peak of a catch-up.
    fn rebuild(&mut self, homes: usize, tail: usize) {
        self.homes = homes;
        // Where each item goes, in order.
        let mut places = Vec::with_capacity(self.len);
        let (mut next, mut rightward) = (0usize, true);
        for (j, s) in self.slots.iter().enumerate().filter(|(_, s)| s.used()) {
            let i = next.max(self.home(s.pos()));
            rightward &= i >= j;
            places.push(i);
            next = i + 1;
        }
        let mut tail = tail.max(1);
        while homes + tail < next {
            tail *= 2;
        }
        let len = homes + tail;
        if !rightward {
            // Not reached with more homes than before; laid out beside, to be safe.
            let mut slots = vec![Slot::default(); len];
            for (s, &i) in self.slots.iter().filter(|s| s.used()).zip(&places) {
                slots[i] = *s;
            }
            self.slots = slots;
            return;
        }
        if len > self.slots.len() {
            self.slots.reserve_exact(len - self.slots.len());
            self.slots.resize(len, Slot::default());
        }
        let mut k = places.len();
        for j in (0..self.slots.len()).rev() {
            if k == 0 {
                break;
            }
            if !self.slots[j].used() {
                continue;
            }
            k -= 1;
            let to = places[k];
            if to != j {
                self.slots[to] = self.slots[j];
                self.slots[j] = Slot::default();
            }
        }
        if self.slots.len() > len {
            self.slots.truncate(len);
            self.slots.shrink_to_fit();
        }
    }

    /// Empties slot `i`, moving the displaced items after it one slot back.
    fn remove_at(&mut self, i: usize) {
        let mut j = i + 1;
        while j < self.slots.len() && self.slots[j].used() && self.home(self.slots[j].pos()) < j {
            j += 1;
        }
        self.slots.copy_within(i + 1..j, i);
        self.slots[j - 1] = Slot::default();
        self.len -= 1;
    }

    /// Rewrites the arena without the records no item points to, once they outweigh
    /// those it does.
    fn compact_arena_if_due(&mut self) {
        if self.garbage < MIN_GARBAGE || self.garbage * 2 < self.arena.len() {
            return;
        }
        let mut arena = String::with_capacity(self.arena.len() - self.garbage);
        for i in 0..self.slots.len() {
            let slot = self.slots[i];
            if !slot.used() {
                continue;
            }
            let end = self.record(&slot).end;
            let at = arena.len();
            arena.push_str(&self.arena[slot.at()..end]);
            self.slots[i].set_at(at);
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// Records the item's latest state in the change log (once per item until taken).
    fn log_change(
        &mut self,
        pos: u64,
        owner: Option<Eid>,
        key: Arc<str>,
        state: Option<ItemState>,
    ) {
        let head = self.logged.get(&pos).copied().unwrap_or(NO_RECORD);
        let mut at = head;
        while at != NO_RECORD {
            let l = &mut self.log[at as usize];
            if l.owner == owner && *l.key == *key {
                l.state = state;
                self.last = at;
                return;
            }
            at = self.chain[at as usize];
        }
        let at = self.log.len() as u32;
        self.log.push(Logged { owner, key, state });
        self.chain.push(head);
        self.logged.insert(pos, at);
        self.last = at;
    }

    /// Forgets the item entirely (a collected tombstone, or a family reset).
    pub(crate) fn remove(&mut self, owner: Option<Eid>, key: &str) -> Option<Entry> {
        let pos = position_of(owner, key);
        let i = self.find_item(pos, owner, key)?;
        let slot = self.slots[i];
        let r = self.record(&slot);
        let entry = Entry {
            version: slot.version(),
            value: r.value.map(Arc::from),
        };
        self.garbage += r.end - slot.at();
        self.remove_at(i);
        if self.tracking {
            self.log_change(pos, owner, Arc::from(key), None);
        }
        if let (true, Some(value)) = (self.watched == Some(owner), &entry.value) {
            self.contents.remove_at(pos, value);
        }
        self.account_remove(pos, slot.digest_hash());
        self.count(slot.tombstone(), -1);
        self.compact_arena_if_due();
        Some(entry)
    }

    /// Like [`ItemStore::remove`], but an item not held is still recorded as removed
    /// (once) in the change log.
    pub(crate) fn forget(&mut self, owner: Option<Eid>, key: &str) -> Option<Entry> {
        let removed = self.remove(owner, key);
        if removed.is_none() && self.tracking {
            self.log_change(position_of(owner, key), owner, Arc::from(key), None);
        }
        removed
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
        self.logged.clear();
        self.chain.clear();
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
        let mut acc = (0u64, 0usize);
        for s in self.slots_in(depth, prefix) {
            acc.0 ^= s.digest_hash();
            acc.1 += 1;
        }
        acc
    }

    /// The occupied slots under the digest-tree node `prefix` at `depth`, in order.
    fn slots_in(&self, depth: u8, prefix: u64) -> impl Iterator<Item = &Slot> {
        self.indexed_slots_in(depth, prefix).map(|(_, s)| s)
    }

    /// [`ItemStore::slots_in`] with each slot's index.
    fn indexed_slots_in(&self, depth: u8, prefix: u64) -> impl Iterator<Item = (usize, &Slot)> {
        let range = node_range(depth, prefix);
        let (lo, hi) = (*range.start(), *range.end());
        let start = if self.homes == 0 { 0 } else { self.home(lo) };
        let last_home = if self.homes == 0 { 0 } else { self.home(hi) };
        self.slots
            .get(start..)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .take_while(move |(n, s)| {
                if s.used() {
                    s.pos() <= hi
                } else {
                    start + n <= last_home
                }
            })
            .map(move |(n, s)| (start + n, s))
            .filter(move |(_, s)| s.used() && s.pos() >= lo)
    }

    /// The items under the digest-tree node `prefix` at `depth`, with their positions,
    /// in position order.
    pub(crate) fn range(
        &self,
        depth: u8,
        prefix: u64,
    ) -> impl Iterator<Item = (u64, ItemView<'_>)> {
        self.range_where(depth, prefix, |_, _| true)
    }

    /// The items of [`ItemStore::range`] whose position and version `keep` accepts; the
    /// records of the others are not read.
    pub(crate) fn range_where<'s>(
        &'s self,
        depth: u8,
        prefix: u64,
        keep: impl Fn(u64, Version) -> bool + 's,
    ) -> impl Iterator<Item = (u64, ItemView<'s>)> + 's {
        // The records lie in the arena in the order they were written, not in position
        // order: each is fetched some slots ahead of its turn.
        self.indexed_slots_in(depth, prefix)
            .filter(move |(_, s)| keep(s.pos(), s.version()))
            .map(move |(i, s)| {
                if let Some(ahead) = self.slots.get(i + RECORD_AHEAD) {
                    self.prefetch_record(ahead);
                }
                (s.pos(), self.view(s))
            })
    }

    /// Asks the CPU to bring `slot`'s record (if it holds one) into its cache.
    fn prefetch_record(&self, slot: &Slot) {
        if slot.used() {
            if let Some(byte) = self.arena.as_bytes().get(slot.at()) {
                cpu::prefetch(byte);
            }
        }
    }

    /// Prefetches the record of the first item at `pos` (its slot, best prefetched
    /// earlier with [`ItemStore::prefetch`]).
    pub(crate) fn prefetch_item(&self, pos: u64) {
        if let Some(slot) = self.slots_at(pos).next() {
            self.prefetch_record(slot);
        }
    }

    /// Every item, in position order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = ItemView<'_>> {
        self.range(0, 0).map(|(_, v)| v)
    }

    /// One item in `every` of those held, in position order: spread evenly over the
    /// keys, since positions are hashes of them. Only the items taken are looked at.
    pub(crate) fn sample(&self, every: usize) -> impl Iterator<Item = ItemView<'_>> {
        self.slots
            .iter()
            .filter(|s| s.used())
            .step_by(every.max(1))
            .map(|s| self.view(s))
    }

    /// Every item held, in no particular order (here: position order, as cheap).
    pub(crate) fn iter_unordered(&self) -> impl Iterator<Item = ItemView<'_>> {
        self.iter()
    }

    /// The items at position `pos`.
    pub(super) fn at(&self, pos: u64) -> impl Iterator<Item = (u64, ItemView<'_>)> {
        self.slots_at(pos).map(move |s| (pos, self.view(s)))
    }

    /// The slots of the items at position `pos`.
    fn slots_at(&self, pos: u64) -> impl Iterator<Item = &Slot> {
        let start = if self.homes == 0 {
            self.slots.len()
        } else {
            self.home(pos)
        };
        self.slots[start..]
            .iter()
            .take_while(move |s| s.used() && s.pos() <= pos)
            .filter(move |s| s.pos() == pos)
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
            for h in s.iter_unordered() {
                if let (true, Some(v)) = (h.owner == mine, h.value) {
                    expected.add(mine, h.key, v);
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
        let all: Vec<u64> = s.iter().map(|v| position_of(v.owner, v.key)).collect();
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
            let got: Vec<u64> = s.range(depth, prefix).map(|(p, _)| p).collect();
            assert_eq!(got, want, "depth {depth}");
            let (_, count) = s.node(depth, prefix);
            assert_eq!(count, want.len(), "depth {depth}");
        }
    }

    #[test]
    fn the_table_agrees_with_a_model_through_collisions_growth_and_rewrites() {
        use std::collections::BTreeMap;
        let mut s = ItemStore::tracked();
        s.watch(None);
        let mut model: BTreeMap<(u64, String), Entry> = BTreeMap::new();
        let mut rng: u64 = 99;
        for i in 0..30_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = format!("k{}", rng % 3000);
            // 512 positions for 3000 keys: many share one, and runs are long.
            let pos = (position_of(None, &k) % 512) << 55;
            let value = match rng % 7 {
                0 => None,
                n => Some("v".repeat((n as usize * 7 + (rng >> 20) as usize) % 90)),
            };
            let e = entry((rng >> 8) % 2000, value.as_deref());
            let key: Arc<str> = k.as_str().into();
            let merged = s.merge_unless(pos, None, &key, e.clone(), || false);
            let held = model.entry((pos, k)).or_insert_with(|| e.clone());
            if e.beats(held) {
                *held = e;
                assert!(matches!(merged, Merged::Replaced(_)), "step {i}");
            }
            if i % 5000 == 0 {
                s.take_changes();
            }
        }
        let mut expected = Contents::default();
        let (mut hash, mut live) = (0u64, 0usize);
        for ((pos, k), e) in &model {
            let got = s.get_at(*pos, None, k).map(|v| v.entry());
            assert_eq!(got.as_ref(), Some(e), "{k}");
            hash ^= e.digest_hash(*pos);
            live += usize::from(!e.is_tombstone());
            if let Some(v) = &e.value {
                expected.add_at(*pos, v);
            }
        }
        assert_eq!(s.node(0, 0), (hash, model.len()));
        assert_eq!(s.live_count(), live);
        assert_eq!(s.contents(), expected);
        let order: Vec<u64> = s.range(0, 0).map(|(p, _)| p).collect();
        let want: Vec<u64> = model.keys().map(|(p, _)| *p).collect();
        assert_eq!(order, want);
        for depth in [1u8, 4, 9] {
            let prefix = want[want.len() / 2] >> (64 - 4 * u32::from(depth));
            let range = node_range(depth, prefix);
            let n = want.iter().filter(|p| range.contains(p)).count();
            assert_eq!(s.range(depth, prefix).count(), n, "depth {depth}");
            assert_eq!(s.node(depth, prefix).1, n, "depth {depth}");
        }
        assert!(s.garbage * 2 <= s.arena.len() || s.garbage < MIN_GARBAGE);
    }

    #[test]
    fn items_crowding_the_end_of_the_table_get_a_longer_tail() {
        let mut s = ItemStore::new();
        for i in 0..300u64 {
            let key: Arc<str> = format!("end{i}").into();
            s.merge_unless(u64::MAX - i % 2, None, &key, entry(i, Some("x")), || false);
        }
        for i in 0..300u64 {
            let pos = u64::MAX - i % 2;
            assert!(s.get_at(pos, None, &format!("end{i}")).is_some(), "end{i}");
        }
        assert_eq!(s.range(16, u64::MAX).count(), 150);
        assert_eq!(s.node(0, 0).1, 300);
    }

    #[test]
    fn node_range_covers_exactly_its_prefix() {
        assert_eq!(node_range(1, 0xf), 0xf000_0000_0000_0000..=u64::MAX);
        assert_eq!(node_range(16, 5), 5..=5);
    }
}
