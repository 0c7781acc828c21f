//! Crash repair. AstDB commits about once a second, the replica log every batch: after a
//! `kill -9` AstDB can have lost writes the cluster already has. Before a family's first
//! read after an unclean stop, AstDB is brought back to the saved replication state, so
//! the loss is not taken for local deletes and spread.

use std::collections::HashMap;

use super::db::AstDb;
use super::{Level, Say};
use crate::engine::Engine;

/// Puts back this node's own keys of `family` (all keys of a global family) whose last
/// write or delete AstDB lost.
pub(super) fn repair_family(family: &str, engine: &Engine, db: &mut dyn AstDb, say: &Say) {
    let me = engine.config().local;
    let current: HashMap<String, String> = db.read(family).to_vec().into_iter().collect();
    let (mut restored, mut removed) = (0usize, 0usize);
    for (id, entry) in engine.items(family) {
        if id.owner.is_some_and(|owner| owner != me) {
            continue; // other servers' copies live elsewhere; the engine re-applies those
        }
        match (&entry.value, current.get(&*id.key)) {
            (Some(value), Some(now)) if now.as_str() == &**value => {}
            (Some(value), _) => {
                if db.put(family, &id.key, value).is_ok() {
                    restored += 1;
                }
            }
            (None, Some(_)) => {
                if db.del(family, &id.key) {
                    removed += 1;
                }
            }
            (None, None) => {}
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
