//! Capture of writes to AstDB, the PBX threads' side. Asterisk has no change
//! notification, so there are two ways in:
//!
//! - Dialplan `DB()` / `DB_DELETE()`: func_db's callbacks are wrapped (see glue.c) and
//!   each write to a shared family is handed to the loop's inbox at once, from the PBX
//!   thread.
//! - Every other writer (CLI, AMI, other modules, edits while unloaded): the module's
//!   thread reads each shared family every `sync_interval` and the engine works out
//!   what changed.
//!
//! A write to a family nobody shares costs the PBX thread one look at the shared names
//! (a read lock): no copy, no wake-up.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use crate::engine::family::leading_parts;
use crate::node::inbox::Inbox;

static INBOX: RwLock<Option<Arc<Inbox>>> = RwLock::new(None);

/// The families the module's thread shares, for the PBX threads to leave other writes
/// alone.
static SHARED: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// Sets (or clears) where dialplan writes go; clearing also forgets the shared names.
pub(crate) fn set_inbox(inbox: Option<Arc<Inbox>>) {
    if inbox.is_none() {
        set_shared(BTreeSet::new());
    }
    *INBOX.write().unwrap_or_else(|p| p.into_inner()) = inbox;
}

/// The families now shared (the module's thread calls this when they change). A write
/// to a family shared a moment before this is called is not lost: a newly shared
/// family is read whole at once.
pub(crate) fn set_shared(names: BTreeSet<String>) {
    *SHARED.write().unwrap_or_else(|p| p.into_inner()) = names;
}

/// Whether a dialplan write to `path` ("family/key", the family possibly nested) is in
/// a shared family, by the rule the engine and registry use (`leading_parts`).
pub(crate) fn wanted(path: &str) -> bool {
    let Some((family, _)) = path.trim_matches('/').rsplit_once('/') else {
        return false;
    };
    let shared = SHARED.read().unwrap_or_else(|p| p.into_inner());
    leading_parts(family).any(|(part, _)| shared.contains(part))
}

/// A dialplan write of `value` to `path` ("family/key") succeeded (None: a delete).
pub(crate) fn dialplan_wrote(path: &str, value: Option<&str>) {
    if let Some(inbox) = INBOX.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        inbox.push_write(path, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_in_shared_families_are_wanted() {
        set_shared(
            ["blacklist", "foo/sub"]
                .into_iter()
                .map(String::from)
                .collect(),
        );
        assert!(wanted("blacklist/5551234"));
        assert!(wanted("/blacklist/a/b"), "a key with slashes");
        assert!(wanted("foo/sub/k") && wanted("foo/sub/deeper/k"));
        assert!(
            !wanted("blacklist2/5551234"),
            "a family that only begins alike"
        );
        assert!(!wanted("foo/k"), "the parent of a shared family");
        assert!(!wanted("other/k") && !wanted("blacklist"));
        assert!(!wanted("020000000001/blacklist/k"), "another node's copies");
        set_inbox(None);
        assert!(
            !wanted("blacklist/5551234"),
            "nothing once the module stops"
        );
    }
}
