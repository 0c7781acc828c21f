//! The replication engine: plain data and functions, no I/O.

pub mod eid;
pub mod family;

pub use eid::Eid;
pub use family::{Mode, Origin, Registry, SharedFamily, SharingPolicy, SyncMode};
