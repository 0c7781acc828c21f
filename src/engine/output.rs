//! What the engine hands the driver to do.

use std::sync::Arc;

use super::message::Message;
use crate::eid::Eid;

/// A write to the local AstDB, with the family as passed to `ast_db_put`. The strings
/// are shared (with the persistence delta and other writes to the family), not copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbOp {
    Put {
        family: Arc<str>,
        key: Arc<str>,
        value: Arc<str>,
    },
    Delete {
        family: Arc<str>,
        key: Arc<str>,
    },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        to: Eid,
        msg: Message,
    },
    Apply(DbOp),
    /// Something an administrator should see in the log.
    Warn(String),
}
