//! res_astdb_cluster: shares chosen AstDB families between Asterisk servers.

pub mod asterisk;
pub mod engine;
