//! What this node's own AstDB says: families shared and unshared, reads of a family
//! (whole or in slices) and single writes, versioned and published as local changes.

use std::collections::HashSet;
use std::sync::Arc;

use super::codec::{check_key, check_value};
use super::engine::{own_owner, Engine, FamilyState};
use super::family::{leading_parts, Mode, SharedFamily, SyncMode};
use super::item::{Contents, Entry, ItemId, ItemView};
use super::message::Change;
use super::output::{Changed, Output, Source, Warning, WarningKind};
use super::version::{Hlc, Version};
use crate::eid::Eid;

impl Engine {
    /// Shares a family (or changes its settings) and pulls its state from the peers.
    pub fn share(&mut self, fam: SharedFamily, now_ms: u64) {
        self.queue(|e, out| e.on_share(fam, now_ms, out));
    }

    fn on_share(&mut self, fam: SharedFamily, now_ms: u64, out: &mut Vec<Output>) {
        let name = fam.name.clone();
        let local = self.cfg.local;
        let fs = self
            .families
            .entry(name.clone())
            .or_insert_with(|| FamilyState::new(&name, fam.mode, local));
        if fs.mode != fam.mode {
            // Versions of one mode mean nothing in the other: start the family afresh.
            *fs = FamilyState::new(&name, fam.mode, local);
            self.reset_families.push(name.clone());
            self.outbox.drop_family(&name);
        }
        fs.next_sync_ms = now_ms + fam.sync_interval_ms;
        fs.shared = Some(fam);
        // Copies of other nodes' unique items whose Apply may have been lost in a crash:
        // no snapshot shows them, and only this engine writes them, so write them again.
        let local = self.cfg.local;
        let redo: Vec<ItemId> = fs
            .unconfirmed
            .iter()
            .filter(|i| i.owner.is_some_and(|o| o != local))
            .cloned()
            .collect();
        for item in redo {
            fs.unconfirmed.remove(&item);
            let value = fs
                .store
                .get(item.owner, &item.key)
                .and_then(|v| v.value.map(Arc::from));
            let (op, applied) = fs.apply_copy(&item, value);
            out.push(Output::Apply(op));
            self.applies_started.push(applied);
        }
        for (peer, up) in self.eligible(&name) {
            if up {
                self.sync_with(out, peer, now_ms, &name);
            }
        }
        self.refresh_gauges();
    }

    /// Stops sharing a family. No key changes; its versions are kept.
    pub fn unshare(&mut self, name: &str) {
        if let Some(fs) = self.families.get_mut(name) {
            fs.shared = None;
        }
        self.outbox.drop_family(name);
        self.queue(|e, out| e.catch_ups_interrupted(None, Some(name), out));
    }

    /// The shared family covering the AstDB family `astdb_family`, and the key prefix
    /// below it (`"sub/"` for `foo/sub` under `foo`).
    fn covering(&self, astdb_family: &str) -> Option<(String, String)> {
        let (name, rest) = leading_parts(astdb_family)
            .filter(|(part, _)| self.families.get(*part).is_some_and(|f| f.shared.is_some()))
            .last()?;
        let prefix = if rest.is_empty() {
            String::new()
        } else {
            format!("{rest}/")
        };
        Some((name.to_string(), prefix))
    }

    /// Shared families nested below `family`, as key prefixes (`"sub/"`).
    fn nested_prefixes(&self, family: &str) -> Vec<String> {
        let below = format!("{family}/");
        self.families
            .iter()
            .filter(|(n, f)| f.shared.is_some() && n.starts_with(&below))
            .map(|(n, _)| format!("{}/", &n[below.len()..]))
            .collect()
    }

    /// The owner of the items a read of this node's AstDB family `family` shows: `None`
    /// for a global family, this node for a unique one.
    pub fn own_owner(&self, family: &str) -> Option<Eid> {
        self.families
            .get(family)
            .and_then(|f| own_owner(f.mode, self.cfg.local))
    }

    /// For a read of AstDB family `family` in pieces: how many live keys the engine holds
    /// for it on this node (its own, in a unique family), and about one in `every` of
    /// them, sorted. None where a read must be whole: a family not shared, or one with
    /// shared families nested in it (see [`Engine::holds_contents`]).
    pub fn key_sample(&self, family: &str, every: usize) -> Option<(usize, Vec<String>)> {
        let fs = self.families.get(family).filter(|f| f.shared.is_some())?;
        if !self.nested_prefixes(family).is_empty() {
            return None;
        }
        let owner = own_owner(fs.mode, self.cfg.local);
        let mut keys: Vec<String> = fs
            .store
            .sample(every)
            .filter(|v| v.owner == owner && v.value.is_some())
            .map(|v| v.key.to_string())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        Some((fs.store.contents().rows, keys))
    }

    /// Whether AstDB contents summarised by `read` are exactly what the engine holds for
    /// `family` on this node, so that [`Engine::local_snapshot`] would change nothing and
    /// the read need not be handed over. Never for a family not yet looked at, with
    /// applies that AstDB may have missed, or with shared families nested in it (whose
    /// rows a read of it includes).
    pub fn holds_contents(&self, family: &str, read: Contents) -> bool {
        let Some(fs) = self.families.get(family).filter(|f| f.shared.is_some()) else {
            return false;
        };
        fs.baseline
            && fs.unconfirmed.is_empty()
            && fs.store.contents() == read
            && self.nested_prefixes(family).is_empty()
    }

    /// A slice of a read handed over ahead of the whole read (a large one, so that its
    /// changes can be saved and sent while the rest is compared): the changes of these
    /// rows, without looking for keys that are gone. [`Engine::local_snapshot`] with the
    /// whole read must follow (the rows already taken are then unchanged), unless
    /// [`Engine::holds_contents`] says the slices left nothing for it to find.
    pub fn local_rows(&mut self, family: &str, rows: &[(String, String)], now_ms: u64) {
        self.queue(|e, out| e.on_local_rows(family, rows, now_ms, out));
    }

    fn on_local_rows(
        &mut self,
        family: &str,
        rows: &[(String, String)],
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let Some((owner, nested)) = self.read_scope(family) else {
            return;
        };
        for (key, value) in rows {
            if !nested.iter().any(|n| key.starts_with(n.as_str())) {
                self.local_row(family, owner, key, value, now_ms, out);
            }
        }
        self.refresh_gauges();
    }

    /// For a read of shared family `family`: the owner of its rows, and the key
    /// prefixes of the shared families nested in it (their rows are theirs).
    fn read_scope(&self, family: &str) -> Option<(Option<Eid>, Vec<String>)> {
        let fs = self.families.get(family).filter(|f| f.shared.is_some())?;
        Some((
            own_owner(fs.mode, self.cfg.local),
            self.nested_prefixes(family),
        ))
    }

    /// One row of a read of `family`: versioned if it differs from what is held
    /// (the usual case, unchanged, costs a lookup and no allocation). Whether the store
    /// then holds the key live.
    fn local_row(
        &mut self,
        family: &str,
        owner: Option<Eid>,
        key: &str,
        value: &str,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> bool {
        let held = |e: &Engine| {
            e.families
                .get(family)
                .and_then(|fs| fs.store.get(owner, key))
                .map(|h| h.value == Some(value))
        };
        if held(self) == Some(true) {
            return true;
        }
        self.local_write(family, key, Some(value), now_ms, true, out);
        self.families
            .get(family)
            .and_then(|fs| fs.store.get(owner, key))
            .is_some_and(|h| h.value.is_some())
    }

    /// The current local contents of a shared family (keys below it, with values). Works
    /// out what changed since the engine last looked and versions it.
    pub fn local_snapshot(&mut self, family: &str, rows: Vec<(String, String)>, now_ms: u64) {
        self.queue(|e, out| e.on_local_snapshot(family, rows, now_ms, out));
    }

    fn on_local_snapshot(
        &mut self,
        family: &str,
        entries: Vec<(String, String)>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let Some((owner, nested)) = self.read_scope(family) else {
            return;
        };
        let in_scope = |key: &str| !nested.iter().any(|n| key.starts_with(n.as_str()));
        // Keys read, and how many of them the store holds live afterwards. AstDB gives
        // them in ascending order, so they are distinct; then if the store holds no more
        // live keys than that, none is missing and no set of the keys is needed.
        let mut seen: Vec<String> = Vec::with_capacity(entries.len());
        let mut ascending = true;
        let mut present = 0usize;
        for (key, value) in entries {
            if !in_scope(&key) {
                continue;
            }
            if seen
                .last()
                .is_some_and(|last| last.as_str() >= key.as_str())
            {
                ascending = false;
            }
            if self.local_row(family, owner, &key, &value, now_ms, out) {
                present += 1;
            }
            seen.push(key);
        }
        let missing: Vec<Arc<str>> = self.families.get(family).map_or_else(Vec::new, |fs| {
            let live_own = |v: &ItemView| v.owner == owner && !v.is_tombstone() && in_scope(v.key);
            if ascending && fs.store.iter_unordered().filter(|v| live_own(v)).count() == present {
                return Vec::new();
            }
            let seen: HashSet<&str> = seen.iter().map(String::as_str).collect();
            fs.store
                .iter()
                .filter(|v| live_own(v) && !seen.contains(v.key))
                .map(|v| Arc::from(v.key))
                .collect()
        });
        for key in missing {
            self.local_write(family, &key, None, now_ms, true, out);
        }
        if let Some(fs) = self.families.get_mut(family) {
            if !fs.baseline {
                fs.baseline = true;
                fs.meta_dirty = true;
            }
            fs.unconfirmed.clear();
        }
        self.refresh_gauges();
    }

    /// One local write (value `None` for a delete) to AstDB family `family`, which is a
    /// shared family or lies below one (`foo/sub` with key `k` is key `sub/k` of `foo`).
    pub fn local_change(&mut self, family: &str, key: &str, value: Option<&str>, now_ms: u64) {
        self.queue(|e, out| e.on_local_change(family, key, value, now_ms, out));
    }

    fn on_local_change(
        &mut self,
        family: &str,
        key: &str,
        value: Option<&str>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        if let Some((name, prefix)) = self.covering(family) {
            let key = format!("{prefix}{key}");
            self.local_write(&name, &key, value, now_ms, false, out);
        }
        self.refresh_gauges();
    }

    fn local_write(
        &mut self,
        family: &str,
        key: &str,
        value: Option<&str>,
        now_ms: u64,
        from_snapshot: bool,
        out: &mut Vec<Output>,
    ) {
        let local = self.cfg.local;
        let Some(fs) = self.families.get_mut(family) else {
            return;
        };
        let Some(shared) = fs.shared.as_ref() else {
            return;
        };
        let sync_mode = shared.sync_mode;
        let owner = own_owner(fs.mode, local);
        // What is held, looked at in place: a write that changes nothing copies nothing.
        let held_exists = match fs.store.get(owner, key) {
            Some(h) if h.value == value => return,
            Some(_) => true,
            None if value.is_none() => return,
            None => false,
        };
        let held_value = || {
            fs.store
                .get(owner, key)
                .and_then(|h| h.value.map(Arc::from))
        };
        let item = ItemId {
            owner,
            key: key.into(),
        };
        if from_snapshot && (fs.unconfirmed.contains(&item) || (!fs.baseline && held_exists)) {
            // AstDB missed an Apply (crash before it ran, or data found when the family
            // was first looked at): the replicated state is the truth, so redo it.
            let held_value = held_value();
            let (op, applied) = fs.apply_copy(&item, held_value);
            out.push(Output::Apply(op));
            self.applies_started.push(applied);
            return;
        }
        if let Err(why) = check_key(key).and_then(|()| value.map_or(Ok(()), check_value)) {
            out.push(warning(family, key, WarningKind::Unshareable { why }));
            return;
        }
        if sync_mode == SyncMode::Ro {
            self.counters.ro_refused += 1;
            match fs.mode {
                Mode::Global => {
                    out.push(warning(family, key, WarningKind::ReadOnlyReverted));
                    let held_value = held_value();
                    let (op, applied) = fs.apply_copy(&item, held_value);
                    out.push(Output::Apply(op));
                    self.applies_started.push(applied);
                }
                Mode::Unique => {
                    let v = value.map(str::to_string);
                    if fs.ro_warned.get(key) != Some(&v) {
                        out.push(warning(family, key, WarningKind::ReadOnlyNotShared));
                        fs.ro_warned.insert(key.to_string(), v);
                    }
                }
            }
            return;
        }
        // Data found in AstDB when the family is first looked at sorts below every
        // versioned change: the cluster's state wins over it.
        let hlc = if from_snapshot && !fs.baseline && !held_exists {
            Hlc::ZERO
        } else {
            self.clock.tick(now_ms)
        };
        let entry = Entry {
            version: Version::new(hlc, local),
            value: value.map(Arc::from),
        };
        fs.store.put_shared(owner, &item.key, entry.clone());
        fs.tombstones.track(&item, &entry);
        fs.last_change_ms = Some(now_ms);
        self.counters.local_changes += 1;
        if self.cfg.events {
            out.push(Output::Changed(Changed {
                family: fs.name.clone(),
                mode: fs.mode,
                owner,
                key: item.key.clone(),
                value: entry.value.clone(),
                version: entry.version,
                source: if from_snapshot {
                    Source::Local
                } else {
                    Source::Dialplan
                },
            }));
        }
        self.publish(family, Change { item, entry }, now_ms, out);
    }
}

/// A warning about local key `key` of shared family `family`.
fn warning(family: &str, key: &str, kind: WarningKind) -> Output {
    Output::Warn(Warning {
        family: family.to_string(),
        key: Some(key.to_string()),
        kind,
    })
}
