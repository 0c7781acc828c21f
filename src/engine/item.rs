//! Items and the merge rule: the one place that decides which of two states of a key wins.

use std::cmp::Ordering;
use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::version::Version;
use crate::eid::Eid;

/// Which key of a shared family an item is.
///
/// In a global family every node writes the same key space (`owner` is `None`). In a
/// unique family each node's keys are its own (`owner` is the writing node); other nodes
/// keep them under `/<owner>/family/key`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId {
    pub owner: Option<Eid>,
    /// The key below the family; may contain '/'. Shared with the change log, the
    /// outputs and the persistence delta rather than copied for each.
    pub key: Arc<str>,
}

impl ItemId {
    pub fn global(key: &str) -> Self {
        ItemId {
            owner: None,
            key: key.into(),
        }
    }

    pub fn unique(owner: Eid, key: &str) -> Self {
        ItemId {
            owner: Some(owner),
            key: key.into(),
        }
    }

    /// Where the item sits in the digest tree: a stable 64-bit hash of owner and key.
    pub fn position(&self) -> u64 {
        position_of(self.owner, &self.key)
    }
}

/// [`ItemId::position`] without building an `ItemId`.
pub(crate) fn position_of(owner: Option<Eid>, key: &str) -> u64 {
    match owner {
        None => xxh3_64(key.as_bytes()),
        Some(eid) => {
            // The hash of 1, the EID and the key, without allocating for keys of usual size.
            let mut stack = [0u8; 7 + 256];
            let n = 7 + key.len();
            let mut heap = Vec::new();
            let buf = if n <= stack.len() {
                &mut stack[..n]
            } else {
                heap.resize(n, 0);
                &mut heap[..]
            };
            buf[0] = 1;
            buf[1..7].copy_from_slice(&eid.0);
            buf[7..].copy_from_slice(key.as_bytes());
            xxh3_64(buf)
        }
    }
}

/// An order-independent summary of a family's contents as AstDB shows them: the
/// wrapping sum of one 64-bit hash per `(key, value)` row, and the row count. The
/// engine keeps one for what it believes AstDB holds; the node computes one from each
/// read. Equal summaries mean the read has nothing new for the engine.
///
/// A row's hash is the value's, seeded with the item's position (itself a hash of
/// owner and key), so the store, which knows positions, hashes only the value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub sum: u64,
    pub rows: usize,
}

impl Contents {
    pub(crate) fn row_hash(position: u64, value: &str) -> u64 {
        xxh3_64_with_seed(value.as_bytes(), position)
    }

    /// Adds the row `key` = `value` of an item owned by `owner` (`None` in a global family).
    pub fn add(&mut self, owner: Option<Eid>, key: &str, value: &str) {
        self.add_at(position_of(owner, key), value);
    }

    pub(crate) fn add_at(&mut self, position: u64, value: &str) {
        self.sum = self.sum.wrapping_add(Self::row_hash(position, value));
        self.rows += 1;
    }

    pub(crate) fn remove_at(&mut self, position: u64, value: &str) {
        self.remove_hash(Self::row_hash(position, value));
    }

    /// Takes out a row whose [`Contents::row_hash`] is `hash`.
    pub(crate) fn remove_hash(&mut self, hash: u64) {
        self.sum = self.sum.wrapping_sub(hash);
        self.rows = self.rows.saturating_sub(1);
    }
}

/// The state of one item on this node: a value, or a tombstone when deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub version: Version,
    /// `None` is a tombstone. Shared (not copied) with the outputs and the persistence
    /// delta of the same change.
    pub value: Option<Arc<str>>,
}

impl Entry {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The merge order: higher version wins; at an equal version a tombstone wins (that is
    /// how a stale copy is retired, see `Engine`); the value bytes break any remaining tie
    /// so that the order is total and merging is a join.
    pub(crate) fn precedence(&self, other: &Entry) -> Ordering {
        self.version
            .cmp(&other.version)
            .then_with(|| self.is_tombstone().cmp(&other.is_tombstone()))
            .then_with(|| self.value.cmp(&other.value))
    }

    /// True when `self` would replace `other`.
    pub(crate) fn beats(&self, other: &Entry) -> bool {
        self.precedence(other) == Ordering::Greater
    }

    /// [`Entry::beats`] against a state held in the store.
    pub(crate) fn beats_held(&self, version: Version, value: Option<&str>) -> bool {
        self.version
            .cmp(&version)
            .then_with(|| self.is_tombstone().cmp(&value.is_none()))
            .then_with(|| self.value.as_deref().cmp(&value))
            == Ordering::Greater
    }

    /// The hash this entry contributes to the family digest (value excluded: the version
    /// names the value; summaries compare the same fields).
    pub(crate) fn digest_hash(&self, position: u64) -> u64 {
        digest_hash(position, self.version, self.is_tombstone())
    }
}

/// An item as the store holds it, borrowed: its strings are the store's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemView<'a> {
    pub owner: Option<Eid>,
    pub key: &'a str,
    pub version: Version,
    /// `None`: a tombstone.
    pub value: Option<&'a str>,
}

impl<'a> ItemView<'a> {
    /// The view of an item held elsewhere.
    pub fn of(id: &'a ItemId, entry: &'a Entry) -> Self {
        ItemView {
            owner: id.owner,
            key: &id.key,
            version: entry.version,
            value: entry.value.as_deref(),
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The item's identity, with its key copied.
    pub fn id(&self) -> ItemId {
        ItemId {
            owner: self.owner,
            key: self.key.into(),
        }
    }

    /// The item's state, with its value copied.
    pub fn entry(&self) -> Entry {
        Entry {
            version: self.version,
            value: self.value.map(Arc::from),
        }
    }

    /// Whether the item is `owner`'s `key`.
    pub fn is(&self, owner: Option<Eid>, key: &str) -> bool {
        self.owner == owner && self.key == key
    }
}

/// [`Entry::digest_hash`] of a state given by its parts.
pub(crate) fn digest_hash(position: u64, version: Version, tombstone: bool) -> u64 {
    let mut buf = [0u8; 8 + 8 + 6 + 1];
    buf[..8].copy_from_slice(&position.to_le_bytes());
    buf[8..16].copy_from_slice(&version.hlc.0.to_le_bytes());
    buf[16..22].copy_from_slice(&version.origin.0);
    buf[22] = u8::from(tombstone);
    xxh3_64(&buf)
}

/// Merges two states of the same item: the result is the winner. Commutative,
/// associative and idempotent, because it is the maximum of a total order.
pub fn merge(a: Entry, b: Entry) -> Entry {
    if b.beats(&a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_unique_items_hash_marker_eid_and_key_whatever_their_length() {
        let eid = Eid([1, 2, 3, 4, 5, 6]);
        for len in [0, 1, 200, 256, 257, 1024] {
            let key = "k".repeat(len);
            let mut bytes = vec![1];
            bytes.extend_from_slice(&eid.0);
            bytes.extend_from_slice(key.as_bytes());
            assert_eq!(
                position_of(Some(eid), &key),
                xxh3_64(&bytes),
                "length {len}"
            );
        }
        assert_eq!(position_of(None, "abc"), xxh3_64(b"abc"));
    }
}
