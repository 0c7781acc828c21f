//! What nodes say to each other about a shared family. The binary form is in `codec`.

use super::family::Mode;
use super::item::{Entry, ItemId};
use super::version::{Hlc, Version};

/// One message between two nodes, about one shared family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender's clock when it sent this: messages from too far in the future or past
    /// are refused, which bounds how long an old change can be in flight.
    pub sent: Hlc,
    pub family: String,
    /// The sender's mode for the family; a node applies only what it shares the same way.
    pub mode: Mode,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// States of items: pushed when they change, or answering a pull or a summary.
    Changes(Vec<Change>),
    /// Tombstones the sender now holds (or has superseded or collected): once every peer
    /// has acknowledged a tombstone it can be collected.
    Acks(Vec<(ItemId, Version)>),
    /// Digest-tree node hashes. The receiver answers each node whose hash differs with
    /// the node's children (another `Digest`) or, when the node is small, a `Summary`.
    Digest(Vec<DigestNode>),
    /// The versions of every item under some digest-tree nodes.
    Summary(Vec<SummaryRange>),
    /// Asks for the current state of these items.
    Pull(Vec<ItemId>),
}

/// The new state of one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub item: ItemId,
    pub entry: Entry,
}

/// A node of the digest tree: `prefix` is the first `depth` nibbles of the position hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestNode {
    pub depth: u8,
    pub prefix: u64,
    pub hash: u64,
}

/// Every item the sender holds under one digest-tree node, without values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRange {
    pub depth: u8,
    pub prefix: u64,
    pub items: Vec<SummaryItem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryItem {
    pub item: ItemId,
    pub version: Version,
    pub tombstone: bool,
}
