//! What the engine hands the driver to do.

use std::fmt;
use std::sync::Arc;

use super::family::Mode;
use super::message::Message;
use super::persist::PersistDelta;
use super::version::Version;
use crate::eid::Eid;

/// What the driver must do after a group of calls: write `save` durably (one record),
/// then execute `outputs` in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub save: PersistDelta,
    pub outputs: Vec<Output>,
}

impl Batch {
    /// Nothing to save (see [`PersistDelta::is_empty`]) and nothing to do.
    pub fn is_empty(&self) -> bool {
        self.save.is_empty() && self.outputs.is_empty()
    }
}

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
    Warn(Warning),
    /// A key of a shared family changed on this node (only with `EngineConfig::events`),
    /// after the `Apply` that writes it, if any.
    Changed(Changed),
    /// Changes of one message from a peer, merged without a `Changed` each (with
    /// `events`): it carried more than `EngineConfig::event_batch_limit` of them, which
    /// can only be told as a summary.
    ChangesCounted(ChangeCount),
    /// A catch-up of a family with a peer started or finished (with `events`).
    CatchUp(CatchUp),
}

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A write the driver captured as it happened (the dialplan's DB()).
    Dialplan,
    /// Any other writer on this node, found by a read of the family.
    Local,
    /// Applied from this peer.
    Peer(Eid),
}

/// One key that changed on this node. Its strings are shared with the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The shared family.
    pub family: Arc<str>,
    pub mode: Mode,
    /// Whose copy, for a unique family (this node's or another's).
    pub owner: Option<Eid>,
    /// The key within the shared family.
    pub key: Arc<str>,
    /// None: deleted.
    pub value: Option<Arc<str>>,
    pub version: Version,
    pub source: Source,
}

/// How many keys of a shared family one message changed here (see
/// [`Output::ChangesCounted`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeCount {
    pub family: Arc<str>,
    pub mode: Mode,
    pub source: Source,
    pub puts: u64,
    pub deletes: u64,
}

/// A catch-up of `family` with `peer`: an exchange that found the two nodes holding it
/// differently, from its first difference until the peer's digest equals this node's or
/// nothing more came for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatchUp {
    pub family: String,
    pub peer: Eid,
    pub node: u32,
    pub phase: CatchUpPhase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUpPhase {
    Started,
    /// `received`: keys that came (values), `deleted`: keys that went (tombstones).
    Finished {
        received: u64,
        deleted: u64,
        duration_ms: u64,
        ended: CatchUpEnd,
    },
}

/// How a catch-up ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUpEnd {
    /// The peer's digest of the family equals this node's.
    InSync,
    /// Nothing more came from the peer for the family for a while.
    Quiet,
    /// The peer went down or the family was unshared.
    Interrupted,
}

impl CatchUpEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUpEnd::InSync => "in_sync",
            CatchUpEnd::Quiet => "quiet",
            CatchUpEnd::Interrupted => "interrupted",
        }
    }
}

/// Something an administrator should see in the log, about a family (and a key of it).
/// Its [`Display`](fmt::Display) is the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The shared family.
    pub family: String,
    /// The key, within the shared family, the warning is about.
    pub key: Option<String>,
    pub kind: WarningKind,
}

/// Why the engine warns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarningKind {
    /// A local change the wire cannot carry, so not shared: its key or value is `why`
    /// (empty, too long, holds a NUL byte; see `codec::check_key`).
    Unshareable { why: &'static str },
    /// A local change to a `sync_mode = ro` global family: not shared, and AstDB is
    /// given the cluster's value back.
    ReadOnlyReverted,
    /// A local change to a `sync_mode = ro` unique family: not shared (said once per
    /// key and value).
    ReadOnlyNotShared,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = &self.family;
        let change = match &self.key {
            Some(key) => format!("local change to key '{key}'"),
            None => "local change".to_string(),
        };
        match self.kind {
            WarningKind::Unshareable { why } => match &self.key {
                Some(key) => write!(
                    f,
                    "family '{family}' key '{key}': not shared, the key or value is {why}"
                ),
                None => write!(
                    f,
                    "family '{family}': not shared, the key or value is {why}"
                ),
            },
            WarningKind::ReadOnlyReverted => write!(
                f,
                "family '{family}' is sync_mode=ro here: {change} is not shared and is \
                 replaced by the cluster's value"
            ),
            WarningKind::ReadOnlyNotShared => write!(
                f,
                "family '{family}' is sync_mode=ro here: {change} is not shared"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: WarningKind) -> String {
        Warning {
            family: "f".into(),
            key: Some("k".into()),
            kind,
        }
        .to_string()
    }

    #[test]
    fn a_warning_reads_as_the_log_line() {
        assert_eq!(
            text(WarningKind::Unshareable { why: "empty" }),
            "family 'f' key 'k': not shared, the key or value is empty"
        );
        assert_eq!(
            text(WarningKind::ReadOnlyReverted),
            "family 'f' is sync_mode=ro here: local change to key 'k' is not shared and is \
             replaced by the cluster's value"
        );
        assert_eq!(
            text(WarningKind::ReadOnlyNotShared),
            "family 'f' is sync_mode=ro here: local change to key 'k' is not shared"
        );
    }
}
