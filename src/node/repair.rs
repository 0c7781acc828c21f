//! Crash repair. AstDB commits about once a second, the replica log every batch: after a
//! `kill -9` AstDB can have lost writes the cluster already has. Before a family's first
//! read after an unclean stop, AstDB is brought back to the saved replication state, so
//! the loss is not taken for local deletes and spread, and copies the engine counts as
//! applied are really there.

use std::collections::{BTreeMap, HashMap};

use super::db::AstDb;
use super::{Level, Say};
use crate::engine::family::astdb_family;
use crate::engine::{Engine, Entry, ItemId};

/// Puts back the keys of `family` whose last write or delete AstDB lost: this node's
/// own (all keys of a global family), and the copies of other servers' keys of a unique
/// family under `/<EID>/family`, which the engine counts as applied once the batch after
/// theirs was saved, whether or not AstDB had committed them.
pub(super) fn repair_family(family: &str, engine: &Engine, db: &mut dyn AstDb, say: &Say) {
    let me = engine.config().local;
    let mut by_place: BTreeMap<String, Vec<(ItemId, Entry)>> = BTreeMap::new();
    for (id, entry) in engine.items(family) {
        let place = astdb_family(family, id.owner, me);
        by_place.entry(place).or_default().push((id, entry));
    }
    let (mut restored, mut removed) = (0usize, 0usize);
    for (place, items) in by_place {
        let current: HashMap<String, String> = db.read(&place).to_vec().into_iter().collect();
        for (id, entry) in items {
            match (&entry.value, current.get(&*id.key)) {
                (Some(value), Some(now)) if now.as_str() == &**value => {}
                (Some(value), _) => {
                    if db.put(&place, &id.key, value).is_ok() {
                        restored += 1;
                    }
                }
                (None, Some(_)) => {
                    if db.del(&place, &id.key) {
                        removed += 1;
                    }
                }
                (None, None) => {}
            }
        }
    }
    if restored + removed > 0 {
        say(
            Level::Warning,
            &format!(
                "family '{family}': after an unclean stop, AstDB had lost recent changes; {restored} key(s) restored and {removed} deleted again from the replication state"
            ),
        );
    }
}
