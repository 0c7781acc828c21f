//! res_astdb_cluster: shares chosen AstDB families between Asterisk servers.
//!
//! Layers, each a folder: `engine` (replication as plain data and functions), `node`
//! (the replication loop that drives it, with the seams to AstDB and to the other
//! nodes), `transport` (the encrypted TCP mesh), `metadata` (the module's own files),
//! `module` (load/unload/reload, CLI, dialplan, capture: what Asterisk calls) and
//! `asterisk` (the FFI border, the one module allowed `unsafe_code`). `config` and `eid` are
//! words every layer uses.

#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod asterisk;
pub mod config;
pub mod eid;
pub mod engine;
pub mod metadata;
mod module;
pub mod node;
pub mod transport;
