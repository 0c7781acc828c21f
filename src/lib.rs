//! res_astdb_cluster: shares chosen AstDB families between Asterisk servers.
//!
//! Layers: `engine` (replication as plain data and functions), `config` and
//! `metadata` (the config file and our own SQLite file), `asterisk` (the FFI
//! border), and `module`, `dialplan`, `cli` (what Asterisk calls).

pub mod asterisk;
pub mod capture;
pub mod cli;
pub mod config;
pub mod dialplan;
pub mod eid;
pub mod engine;
pub mod mesh;
pub mod metadata;
pub mod module;
pub mod node;
pub mod transport;
