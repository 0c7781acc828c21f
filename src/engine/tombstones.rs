//! Tombstones: who acknowledged each, resending them to peers that did not, and
//! collecting them once every peer did (or they grew too old).

use std::collections::{BTreeMap, BTreeSet};

use super::engine::{Engine, AT_ONCE};
use super::item::{Entry, ItemId};
use super::message::Change;
use super::version::Version;
use crate::eid::Eid;

/// A tombstone held, and who has acknowledged it.
#[derive(Clone, Debug)]
struct TombstoneAcks {
    version: Version,
    acked: BTreeSet<Eid>,
    /// Since when every peer taking part in the family has acknowledged it.
    complete_since: Option<u64>,
    next_resend_ms: u64,
}

impl TombstoneAcks {
    fn new(version: Version) -> Self {
        TombstoneAcks {
            version,
            acked: BTreeSet::new(),
            complete_since: None,
            next_resend_ms: 0,
        }
    }
}

/// The tombstones of one family.
#[derive(Clone, Debug, Default)]
pub(super) struct Tombstones {
    held: BTreeMap<ItemId, TombstoneAcks>,
    /// Recently collected tombstones, and until when they are remembered, so that a peer
    /// still resending one is answered with an acknowledgement instead of the tombstone
    /// being stored again.
    collected: BTreeMap<ItemId, (Version, u64)>,
}

impl Tombstones {
    /// Holds a tombstone nobody has acknowledged yet.
    pub(super) fn hold(&mut self, item: ItemId, version: Version) {
        self.held.insert(item, TombstoneAcks::new(version));
    }

    /// Holds a tombstone received from `from` (which so acknowledges it).
    pub(super) fn hold_from(&mut self, item: ItemId, version: Version, from: Eid) {
        let mut acks = TombstoneAcks::new(version);
        acks.acked.insert(from);
        self.held.insert(item, acks);
    }

    /// The item now holds a value: its tombstone, if any, is gone.
    pub(super) fn remove(&mut self, item: &ItemId) {
        if !self.held.is_empty() {
            self.held.remove(item);
        }
    }

    /// Follows an item's new state, written here.
    pub(super) fn track(&mut self, item: &ItemId, entry: &Entry) {
        if entry.is_tombstone() {
            self.hold(item.clone(), entry.version);
        } else {
            self.remove(item);
        }
    }

    /// `from` acknowledges the tombstone of `item` at `version` (or a newer one).
    pub(super) fn ack(&mut self, item: &ItemId, version: Version, from: Eid) {
        if let Some(t) = self.held.get_mut(item) {
            if t.version <= version {
                t.acked.insert(from);
            }
        }
    }

    /// `from` holds the same tombstone of `item` as this node.
    pub(super) fn ack_same(&mut self, item: &ItemId, from: Eid) {
        if let Some(t) = self.held.get_mut(item) {
            t.acked.insert(from);
        }
    }

    /// Whether a tombstone of `item` at `version` or newer was collected recently.
    pub(super) fn collected_since(&self, item: &ItemId, version: Version) -> bool {
        self.collected.get(item).is_some_and(|(v, _)| *v >= version)
    }

    /// The tombstones due to go again, to each peer of `eligible` that is up and has not
    /// acknowledged them; each then waits `interval` before it is due again.
    fn due_for_resend(
        &mut self,
        eligible: &[(Eid, bool)],
        now_ms: u64,
        interval: u64,
    ) -> BTreeMap<Eid, Vec<Change>> {
        let mut resend: BTreeMap<Eid, Vec<Change>> = BTreeMap::new();
        for (item, t) in self.held.iter_mut() {
            if t.next_resend_ms > now_ms {
                continue;
            }
            t.next_resend_ms = now_ms + interval;
            for (peer, up) in eligible {
                if *up && !t.acked.contains(peer) {
                    resend.entry(*peer).or_default().push(Change {
                        item: item.clone(),
                        entry: Entry {
                            version: t.version,
                            value: None,
                        },
                    });
                }
            }
        }
        resend
    }

    /// Forgets collected tombstones remembered long enough, and takes out those due for
    /// collection: acknowledged by every peer of `eligible` for `grace` ms, or older than
    /// `max_age` (then `by_age`). Gives each with its version and those who acknowledged it.
    fn take_due(
        &mut self,
        eligible: &[(Eid, bool)],
        now_ms: u64,
        grace: u64,
        max_age: u64,
    ) -> Vec<Due> {
        self.collected.retain(|_, (_, until)| *until > now_ms);
        let mut due = Vec::new();
        for (item, t) in self.held.iter_mut() {
            if eligible.iter().all(|(p, _)| t.acked.contains(p)) {
                let since = *t.complete_since.get_or_insert(now_ms);
                if now_ms >= since.saturating_add(grace) {
                    due.push((item.clone(), false));
                }
            } else {
                t.complete_since = None;
                if now_ms >= t.version.hlc.wall_ms().saturating_add(max_age) {
                    due.push((item.clone(), true));
                }
            }
        }
        due.into_iter()
            .filter_map(|(item, by_age)| {
                let t = self.held.remove(&item)?;
                Some(Due {
                    item,
                    version: t.version,
                    acked: t.acked,
                    by_age,
                })
            })
            .collect()
    }

    /// When [`Tombstones::take_due`] next has work: a collected tombstone to forget, a
    /// tombstone whose grace period is to start or stop (at once: every peer of `eligible`
    /// has acknowledged it since the last tick, or a new peer takes part), to collect
    /// after its grace or by age. `None` when there is none.
    pub(super) fn next_deadline(
        &self,
        eligible: &[(Eid, bool)],
        grace: u64,
        max_age: u64,
    ) -> Option<u64> {
        let mut next = self.collected.values().map(|&(_, until)| until).min();
        for t in self.held.values() {
            let complete = eligible.iter().all(|(p, _)| t.acked.contains(p));
            let at = match (complete, t.complete_since) {
                (true, None) | (false, Some(_)) => return Some(AT_ONCE),
                (true, Some(since)) => since.saturating_add(grace),
                (false, None) => t.version.hlc.wall_ms().saturating_add(max_age),
            };
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }

    /// Remembers a collected tombstone until `until_ms`.
    fn remember_collected(&mut self, item: ItemId, version: Version, until_ms: u64) {
        self.collected.insert(item, (version, until_ms));
    }
}

/// A tombstone taken out for collection.
struct Due {
    item: ItemId,
    version: Version,
    acked: BTreeSet<Eid>,
    by_age: bool,
}

impl Engine {
    /// Acknowledgements from `from` of tombstones it now holds (or superseded).
    pub(super) fn on_acks(&mut self, from: Eid, family: &str, acks: Vec<(ItemId, Version)>) {
        let Some(fs) = self.families.get_mut(family) else {
            return;
        };
        for (item, version) in acks {
            fs.tombstones.ack(&item, version, from);
        }
    }

    /// The tombstones of `family` that some up peer has not acknowledged, due to go to it
    /// again; each then waits `interval` before it is due again.
    pub(super) fn tombstones_to_resend(
        &mut self,
        family: &str,
        eligible: &[(Eid, bool)],
        now_ms: u64,
        interval: u64,
    ) -> BTreeMap<Eid, Vec<Change>> {
        match self.families.get_mut(family) {
            Some(fs) => fs.tombstones.due_for_resend(eligible, now_ms, interval),
            None => BTreeMap::new(),
        }
    }

    /// Collects the tombstones of `family` that are due. One collected by age, without
    /// some peer's acknowledgement, marks that peer's older values as stale.
    pub(super) fn collect_tombstones(
        &mut self,
        family: &str,
        eligible: &[(Eid, bool)],
        now_ms: u64,
    ) {
        let grace = self.cfg.collect_grace_ms();
        let max_age = self.cfg.tombstone_max_age_ms;
        let Some(fs) = self.families.get_mut(family) else {
            return;
        };
        let interval = fs.shared.as_ref().map_or(5000, |s| s.sync_interval_ms);
        for t in fs.tombstones.take_due(eligible, now_ms, grace, max_age) {
            if t.by_age {
                self.counters.collected_by_age += 1;
                for (peer, _) in eligible {
                    if t.acked.contains(peer) {
                        continue;
                    }
                    if let Some(p) = self.peers.get_mut(peer) {
                        let h = p.stale_below.entry(family.to_string()).or_default();
                        if *h < t.version.hlc {
                            *h = t.version.hlc;
                            self.peers_dirty.insert(*peer);
                        }
                    }
                }
            }
            fs.store.forget(t.item.owner, &t.item.key);
            fs.horizon = fs.horizon.max(t.version.hlc);
            fs.meta_dirty = true;
            fs.tombstones
                .remember_collected(t.item, t.version, now_ms + 2 * grace + 10 * interval);
            self.counters.collected += 1;
        }
    }
}
