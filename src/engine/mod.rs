//! The replication engine: versions, merge, tombstones and anti-entropy as plain data.
//!
//! A driver (the Asterisk module, the simulator) feeds an [`Engine`] local AstDB
//! contents, peer messages and the time. It does no I/O: what is to be done it queues,
//! and the driver takes it as a [`Batch`], the state to save and the outputs to execute.
//!
//! # Ordering contract for the driver
//!
//! 1. Calls are made from one thread, with a `now_ms` that is the node's wall clock
//!    (it may step back; versions stay monotonic).
//! 2. After a group of calls, take [`Engine::take_batch`]. Write its `save` durably (one
//!    record) **before** executing its `outputs`, then execute those **in the order
//!    given**: a crash then never loses a version that a peer or AstDB has seen, and a
//!    restart never reissues one. A save confirms the applies of the batch before the
//!    previous one: write it only once those (and all earlier ones) are executed; the
//!    previous batch's may still be under way. A batch whose save failed is written
//!    before any later one, its outputs waiting for it. A group may be cut
//!    short when [`Engine::queued_outputs`] grows large; [`Engine::recycle`] hands an
//!    executed batch's emptied buffer back.
//! 3. A snapshot passed to [`Engine::local_snapshot`] must have been read after every
//!    `Apply` output taken earlier was executed, and no engine call may come between
//!    reading it and passing it. Otherwise a value the engine itself applied could be
//!    taken for a local change (or a remote value for a local delete).
//! 4. [`Engine::local_change`] reports writes that really happened in AstDB (an event
//!    from a hook or the CLI), after the write.
//! 5. Call [`Engine::tick`] when [`Engine::next_deadline`] comes (or regularly, every
//!    100 ms or so): it flushes batches of local changes, sends the next slice of a large
//!    push, starts digest syncs at each family's `sync_interval`, and collects
//!    tombstones. A tick before the deadline does nothing.
//! 6. Call [`Engine::peer_up`] when a connection to a peer is established (and its EID
//!    and node number are known) and [`Engine::peer_down`] when it is lost. Messages
//!    from a peer that is not known are dropped.
//!
//! # Layout
//!
//! The [`Engine`] is `engine`; its calls are grouped by what they are about: `local`
//! (this node's AstDB), `peers`, `merge` (receiving), `anti_entropy` (digests, summaries,
//! pulls), `pushes` (large pushes, recent and queued), `tombstones`, and `outbox` (the
//! per-peer outbox and the one batching of anything into messages). What it hands out is
//! in `output` and `persist`; the items, their store and the wire format are `item`,
//! `store`, `version`, `message` and `codec`.

pub mod family;

mod anti_entropy;
mod catch_up;
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
pub use item::{merge, Contents, Entry, ItemId, ItemView};
pub use message::{Body, Change, DigestNode, Message, SummaryItem, SummaryRange};
pub use output::{
    Batch, CatchUp, CatchUpEnd, CatchUpPhase, ChangeCount, Changed, DbOp, Output, Source, Warning,
    WarningKind,
};
pub use peers::RELAY_NODE;
pub use persist::{
    FamilyMeta, ItemDelta, ItemRef, ItemRefs, ItemState, PeerMeta, PersistDelta, PersistedState,
    RestoredState,
};
pub use version::{Hlc, Version};
