//! The replication engine: plain data and functions, no I/O.

pub mod family;

pub mod codec;
#[allow(clippy::module_inception)]
pub mod engine;
pub mod item;
pub mod message;
pub mod persist;
pub mod store;
pub mod version;

pub use crate::eid::Eid;
pub use family::{Mode, Origin, Registry, SharedFamily, SharingPolicy, SyncMode};

pub use engine::{Counters, DbOp, Engine, EngineConfig, FamilyStats, Output};
pub use item::{merge, Contents, Entry, ItemId};
pub use message::{Body, Change, DigestNode, Message, SummaryItem, SummaryRange};
pub use persist::{
    FamilyMeta, ItemDelta, ItemRef, ItemState, PeerMeta, PersistDelta, PersistedState,
    RestoredState,
};
pub use version::{Clock, Hlc, Version};
