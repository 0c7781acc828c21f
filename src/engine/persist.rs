//! What the engine needs written to disk, and what it is given back at start.
//!
//! The engine does no I/O: it hands out a [`PersistDelta`] (the `save` of each `Batch`)
//! and is given a [`RestoredState`]. `metadata::replica` appends the deltas to the
//! replica log and folds them back.

use std::sync::Arc;

use super::family::Mode;
use super::item::{Entry, ItemId, ItemView};
use super::version::{Hlc, Version};
use crate::eid::Eid;

/// Replication state of one family (shared or not: unsharing keeps it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyMeta {
    pub name: String,
    pub mode: Mode,
    /// The family's AstDB contents have been looked at once: keys found later without a
    /// version are local changes, not pre-existing data.
    pub baseline: bool,
    /// Highest version of a tombstone collected in this family.
    pub horizon: Hlc,
}

/// What this node knows about a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMeta {
    pub eid: Eid,
    pub node: u32,
    /// Per family: tombstones up to this clock were collected without this peer's
    /// acknowledgement, so its older values for keys absent here are stale.
    pub stale_below: Vec<(String, Hlc)>,
}

/// Items, shared between a delta and the engine. A vector behind the `Arc` rather than a
/// slice: making an `Arc<[T]>` of a batch's vector would copy it.
pub type ItemRefs = Arc<Vec<ItemRef>>;

/// An item of a family, with its strings shared (with the `Apply` outputs and the
/// engine's own bookkeeping) rather than copied.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemRef {
    pub family: Arc<str>,
    pub owner: Option<Eid>,
    pub key: Arc<str>,
}

impl ItemRef {
    pub fn new(family: &str, item: &ItemId) -> Self {
        ItemRef {
            family: family.into(),
            owner: item.owner,
            key: item.key.clone(),
        }
    }
}

/// An item's state in a delta: an [`Entry`] with a shared value (`None`: a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemState {
    pub version: Version,
    pub value: Option<Arc<str>>,
}

impl ItemState {
    pub fn of(entry: &Entry) -> Self {
        ItemState {
            version: entry.version,
            value: entry.value.clone(),
        }
    }

    /// The state of `entry`, its value moved rather than shared.
    pub fn from_entry(entry: Entry) -> Self {
        ItemState {
            version: entry.version,
            value: entry.value,
        }
    }

    pub fn to_entry(&self) -> Entry {
        Entry {
            version: self.version,
            value: self.value.clone(),
        }
    }
}

/// One item to write (`state` is `Some`) or forget (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemDelta {
    pub item: ItemRef,
    pub state: Option<ItemState>,
}

impl ItemDelta {
    pub fn new(family: &str, item: &ItemId, entry: Option<&Entry>) -> Self {
        ItemDelta {
            item: ItemRef::new(family, item),
            state: entry.map(ItemState::of),
        }
    }
}

/// Everything that changed since the last delta: the `save` of a `Batch`.
///
/// Write it (in one record) before executing the batch's outputs: then a crash never
/// loses a version that a peer or AstDB has seen, and a restart never reissues one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistDelta {
    /// The clock's high-water mark.
    pub clock: Hlc,
    /// Families whose items are all to be forgotten first (their mode changed).
    pub reset_families: Vec<String>,
    pub families: Vec<FamilyMeta>,
    pub items: Vec<ItemDelta>,
    pub peers: Vec<PeerMeta>,
    /// Items whose Apply output is in this batch: until the next delta confirms them, a
    /// restart cannot tell whether AstDB got the value.
    /// Sorted, each once; shared with the engine, which confirms them in the next delta.
    pub applies_started: ItemRefs,
    /// Items whose Apply was in the previous batch, now executed.
    pub applies_confirmed: ItemRefs,
}

impl PersistDelta {
    /// True when nothing but the clock changed. Such a delta need not be written: every
    /// issued version is in an item, a family horizon or a peer's stale mark, and the
    /// restored clock resumes above all of them.
    pub fn is_empty(&self) -> bool {
        self.reset_families.is_empty()
            && self.families.is_empty()
            && self.items.is_empty()
            && self.peers.is_empty()
            && self.applies_started.is_empty()
            && self.applies_confirmed.is_empty()
    }
}

/// The persisted state handed to `Engine::new` after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoredState {
    pub clock: Hlc,
    pub families: Vec<FamilyMeta>,
    pub items: Vec<(String, ItemId, Entry)>,
    pub peers: Vec<PeerMeta>,
    pub applies_unconfirmed: Vec<(String, ItemId)>,
}

/// Everything the engine has handed out in deltas, borrowed: what a fresh file must hold
/// to stand for all the deltas written so far (see `Engine::persisted_state`).
pub struct PersistedState<'a> {
    pub clock: Hlc,
    pub families: Vec<FamilyMeta>,
    pub peers: Vec<PeerMeta>,
    /// Items whose Apply is not known to have reached AstDB: (family, owner, key).
    pub unconfirmed: Vec<(&'a str, Option<Eid>, &'a str)>,
    /// Every item held, tombstones included, family by family.
    pub items: Box<dyn Iterator<Item = (&'a str, ItemView<'a>)> + 'a>,
}
