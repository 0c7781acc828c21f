//! The replication engine: plain data and functions, no I/O.

pub mod family;

mod anti_entropy;
pub mod codec;
#[allow(clippy::module_inception)]
mod engine;
pub mod item;
mod local;
mod merge;
pub mod message;
mod outbox;
mod output;
mod peers;
pub mod persist;
mod pushes;
pub mod store;
mod tombstones;
pub mod version;

pub use crate::eid::Eid;
pub use family::{Mode, Origin, Registry, SharedFamily, SharingPolicy, SyncMode};

pub use engine::{Counters, Engine, EngineConfig, FamilyStats};
pub use item::{merge, Contents, Entry, ItemId};
pub use message::{Body, Change, DigestNode, Message, SummaryItem, SummaryRange};
pub use output::{DbOp, Output, Warning, WarningKind};
pub use persist::{
    FamilyMeta, ItemDelta, ItemRef, ItemState, PeerMeta, PersistDelta, PersistedState,
    RestoredState,
};
pub use version::{Clock, Hlc, Version};
