//! The [`Engine`] itself: its state, configuration and counters, the restart from saved
//! state, the tick, and what the driver takes from it: the [`Batch`] (the state to save
//! and the outputs) and the next deadline. The ordering contract is in the module doc.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::mem;
use std::sync::Arc;

use super::catch_up::CatchUps;
use super::family::{Mode, SharedFamily};
use super::item::{Entry, ItemId};
use super::outbox::Outbox;
use super::output::{Batch, DbOp, Output};
use super::peers::Peer;
use super::persist::{
    FamilyMeta, ItemDelta, ItemRef, ItemRefs, PersistDelta, PersistedState, RestoredState,
};
use super::pushes::Pushes;
use super::store::ItemStore;
use super::tombstones::Tombstones;
use super::version::{Clock, Hlc};
use crate::eid::Eid;

/// The largest output buffer [`Engine::recycle`] keeps.
const KEEP_OUTPUTS: usize = 65_536;
/// The deadline of work due at once: every clock has passed it, even one that stepped
/// back since the call that made the work.
pub(super) const AT_ONCE: u64 = 0;

/// How this node runs the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub local: Eid,
    pub local_node: u32,
    /// Changes and messages stamped further than this ahead of the local clock are
    /// dropped and counted, never applied.
    pub max_clock_skew_ms: u64,
    /// Tombstones older than this are collected even if some peer never acknowledged them.
    pub tombstone_max_age_ms: u64,
    /// Messages sent longer ago than this are dropped: this bounds how long an old change
    /// can be in flight, which is what makes collecting tombstones safe.
    pub max_message_age_ms: u64,
    /// Most changes in one batch.
    pub batch_max_changes: usize,
    /// An anti-entropy push of more changes than this is sent a slice of this many at
    /// each [`Engine::tick`] (see [`Engine::next_deadline`]) rather than all at once.
    pub push_slice: usize,
    /// Changes and catch-ups are reported as outputs ([`Output::Changed`],
    /// [`Output::CatchUp`]) for the driver's events.
    pub events: bool,
    /// A message from a peer with more changes than this is reported as one
    /// [`Output::ChangesCounted`] rather than a `Changed` each: the driver could only
    /// tell them as a summary (as `event_batch_limit` in astdb_cluster.conf).
    pub event_batch_limit: usize,
}

impl EngineConfig {
    pub fn new(local: Eid, local_node: u32) -> Self {
        EngineConfig {
            local,
            local_node,
            max_clock_skew_ms: 60_000,
            tombstone_max_age_ms: 7 * 24 * 3600 * 1000,
            max_message_age_ms: 30_000,
            batch_max_changes: 512,
            push_slice: 32_768,
            events: false,
            event_batch_limit: 100,
        }
    }

    /// How long after the last acknowledgement a tombstone is kept: long enough that any
    /// message sent before that acknowledgement is dropped as too old if it still arrives.
    pub(crate) fn collect_grace_ms(&self) -> u64 {
        self.max_message_age_ms + 2 * self.max_clock_skew_ms
    }
}

/// Running totals, for `astdb cluster show status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub local_changes: u64,
    pub applied: u64,
    pub sent_changes: u64,
    pub received_changes: u64,
    /// Changes for families this node does not share.
    pub dropped_unshared: u64,
    /// Changes for families this node shares in the other mode.
    pub dropped_mode: u64,
    /// Changes from a peer outside a multicast family's sharing_nodes.
    pub dropped_policy: u64,
    /// Changes or messages stamped too far in the future.
    pub dropped_skew: u64,
    /// Messages sent longer ago than `max_message_age_ms`.
    pub dropped_stale: u64,
    pub dropped_unknown_peer: u64,
    pub dropped_invalid: u64,
    /// Stale copies of deleted keys answered with a tombstone instead of being applied.
    pub retired: u64,
    /// Local changes to `sync_mode = ro` families, not published.
    pub ro_refused: u64,
    /// Tombstones held now.
    pub tombstones: u64,
    pub collected: u64,
    pub collected_by_age: u64,
}

/// What `database shared show` prints about a family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyStats {
    pub keys: usize,
    pub tombstones: usize,
    pub last_change_ms: Option<u64>,
}

/// What this node holds for one family, shared now or before.
#[derive(Clone, Debug)]
pub(super) struct FamilyState {
    pub(super) name: Arc<str>,
    /// AstDB family names of other nodes' copies of a unique family (`<owner>/<name>`).
    pub(super) owner_names: BTreeMap<Eid, Arc<str>>,
    /// `None` once unshared: the versions are kept for when it is shared again.
    pub(super) shared: Option<SharedFamily>,
    pub(super) mode: Mode,
    /// Tracked: its change log is the items part of the persistence delta.
    pub(super) store: ItemStore,
    pub(super) baseline: bool,
    pub(super) horizon: Hlc,
    pub(super) next_sync_ms: u64,
    pub(super) last_change_ms: Option<u64>,
    pub(super) tombstones: Tombstones,
    /// Applies issued before a restart that AstDB may not have received.
    pub(super) unconfirmed: HashSet<ItemId>,
    /// Local values of an ro unique family already warned about.
    pub(super) ro_warned: HashMap<String, Option<String>>,
    pub(super) meta_dirty: bool,
}

impl FamilyState {
    /// A family's state on node `local`: its store summarises the items of this node's
    /// own AstDB family.
    pub(super) fn new(name: &str, mode: Mode, local: Eid) -> Self {
        let mut store = ItemStore::tracked();
        store.watch(own_owner(mode, local));
        FamilyState {
            name: name.into(),
            owner_names: BTreeMap::new(),
            shared: None,
            mode,
            store,
            baseline: false,
            horizon: Hlc::ZERO,
            next_sync_ms: 0,
            last_change_ms: None,
            tombstones: Tombstones::default(),
            unconfirmed: HashSet::new(),
            ro_warned: HashMap::new(),
            meta_dirty: true,
        }
    }

    /// The AstDB write that makes the item `owner`/`key` hold `value`, and the item as
    /// the persistence delta names it.
    pub(super) fn apply(
        &mut self,
        owner: Option<Eid>,
        key: Arc<str>,
        value: Option<Arc<str>>,
    ) -> (DbOp, ItemRef) {
        let family = match owner {
            None => self.name.clone(),
            Some(owner) => {
                let name = &self.name;
                self.owner_names
                    .entry(owner)
                    .or_insert_with(|| format!("{owner}/{name}").into())
                    .clone()
            }
        };
        let item = ItemRef {
            family: self.name.clone(),
            owner,
            key: key.clone(),
        };
        let op = match value {
            Some(value) => DbOp::Put { family, key, value },
            None => DbOp::Delete { family, key },
        };
        (op, item)
    }

    /// [`FamilyState::apply`] for an item whose key is not shared yet.
    pub(super) fn apply_copy(&mut self, item: &ItemId, value: Option<Arc<str>>) -> (DbOp, ItemRef) {
        self.apply(item.owner, item.key.clone(), value)
    }
}

/// The replication engine of one node.
#[derive(Debug)]
pub struct Engine {
    pub(super) cfg: EngineConfig,
    pub(super) clock: Clock,
    pub(super) families: BTreeMap<String, FamilyState>,
    pub(super) peers: BTreeMap<Eid, Peer>,
    pub(super) outbox: Outbox,
    pub(super) pushes: Pushes,
    pub(super) catch_ups: CatchUps,
    pub(super) counters: Counters,
    pub(super) reset_families: Vec<String>,
    pub(super) peers_dirty: BTreeSet<Eid>,
    pub(super) applies_started: Vec<ItemRef>,
    /// The applies started by the last batch taken and by the one before it: the driver
    /// may still be executing them (see [`Engine::take_batch`]).
    pub(super) applies_previous: ItemRefs,
    pub(super) applies_older: ItemRefs,
    /// Outputs since the last batch was taken, in order.
    outputs: Vec<Output>,
}

/// The refs of sorted `a` that are not in sorted `b`.
fn sorted_difference(a: &ItemRefs, b: &[ItemRef]) -> ItemRefs {
    // Batches of a catch-up apply keys in ascending order, so theirs seldom meet.
    let disjoint = match (a.first(), a.last(), b.first(), b.last()) {
        (Some(a_first), Some(a_last), Some(b_first), Some(b_last)) => {
            a_last < b_first || b_last < a_first
        }
        _ => true,
    };
    if disjoint {
        return Arc::clone(a);
    }
    let mut rest = b.iter().peekable();
    a.iter()
        .filter(|r| {
            while rest.next_if(|x| *x < *r).is_some() {}
            rest.peek() != Some(r)
        })
        .cloned()
        .collect::<Vec<_>>()
        .into()
}

/// The owner of the items of this node's own AstDB family of a family in `mode`.
pub(super) fn own_owner(mode: Mode, local: Eid) -> Option<Eid> {
    match mode {
        Mode::Global => None,
        Mode::Unique => Some(local),
    }
}

impl Engine {
    pub fn new(cfg: EngineConfig, restored: Option<RestoredState>) -> Self {
        let mut engine = Engine {
            clock: Clock::default(),
            cfg,
            families: BTreeMap::new(),
            peers: BTreeMap::new(),
            outbox: Outbox::default(),
            pushes: Pushes::default(),
            catch_ups: CatchUps::default(),
            counters: Counters::default(),
            reset_families: Vec::new(),
            peers_dirty: BTreeSet::new(),
            applies_started: Vec::new(),
            applies_previous: ItemRefs::default(),
            applies_older: ItemRefs::default(),
            outputs: Vec::new(),
        };
        if let Some(r) = restored {
            engine.restore(r);
        }
        engine.refresh_gauges();
        engine
    }

    fn restore(&mut self, r: RestoredState) {
        let mut high = r.clock;
        for fm in r.families {
            high = high.max(fm.horizon);
            let mut fs = FamilyState::new(&fm.name, fm.mode, self.cfg.local);
            fs.baseline = fm.baseline;
            fs.horizon = fm.horizon;
            fs.meta_dirty = false;
            self.families.insert(fm.name, fs);
        }
        for (family, item, entry) in r.items {
            let Some(fs) = self.families.get_mut(&family) else {
                continue;
            };
            high = high.max(entry.version.hlc);
            if entry.is_tombstone() {
                fs.tombstones.hold(item.clone(), entry.version);
            }
            fs.store.put_untracked(item.owner, &item.key, entry);
        }
        for p in r.peers {
            for (_, h) in &p.stale_below {
                high = high.max(*h);
            }
            self.peers.insert(
                p.eid,
                Peer {
                    node: p.node,
                    up: false,
                    stale_below: p.stale_below.into_iter().collect(),
                },
            );
        }
        for (family, item) in r.applies_unconfirmed {
            if let Some(fs) = self.families.get_mut(&family) {
                fs.unconfirmed.insert(item);
            }
        }
        self.clock = Clock::resume_after(high);
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn family_stats(&self, family: &str) -> Option<FamilyStats> {
        let fs = self.families.get(family)?;
        fs.shared.as_ref()?;
        Some(FamilyStats {
            keys: fs.store.live_count(),
            tombstones: fs.store.tombstone_count(),
            last_change_ms: fs.last_change_ms,
        })
    }

    /// The state this node holds for an item (shared or not), for tests and the CLI.
    pub fn entry(&self, family: &str, owner: Option<Eid>, key: &str) -> Option<Entry> {
        self.families
            .get(family)?
            .store
            .get(owner, key)
            .map(|v| v.entry())
    }

    /// The copies of `key` of unique family `family` held here, this node's own first
    /// and then each other node's that this node holds (tombstones included).
    pub fn copies(&self, family: &str, key: &str) -> Vec<(Eid, Entry)> {
        let Some(fs) = self.families.get(family) else {
            return Vec::new();
        };
        let mut owners: Vec<Eid> = vec![self.cfg.local];
        owners.extend(self.peers.keys().copied());
        owners.extend(fs.owner_names.keys().copied());
        let mut seen = BTreeSet::new();
        owners
            .into_iter()
            .filter(|o| seen.insert(*o))
            .filter_map(|o| fs.store.get(Some(o), key).map(|v| (o, v.entry())))
            .collect()
    }

    /// Turns the reporting of changes and catch-ups on or off, with the size of a
    /// message whose changes are only counted (see [`EngineConfig`]).
    pub fn set_events(&mut self, on: bool, batch_limit: usize) {
        self.cfg.events = on;
        self.cfg.event_batch_limit = batch_limit;
    }

    /// Every item held for `family`, tombstones included.
    pub fn items(&self, family: &str) -> Vec<(ItemId, Entry)> {
        self.families.get(family).map_or_else(Vec::new, |fs| {
            fs.store.iter().map(|v| (v.id(), v.entry())).collect()
        })
    }

    #[doc(hidden)]
    pub fn debug_tombstones(&self) -> String {
        let mut s = format!("peers {:?}\n", self.peers);
        for (n, f) in &self.families {
            s += &format!("{n}: {:?}\n", f.tombstones);
        }
        s
    }

    /// The clock's high-water mark.
    pub fn clock(&self) -> Hlc {
        self.clock.high_water()
    }

    pub(super) fn refresh_gauges(&mut self) {
        self.counters.tombstones = self
            .families
            .values()
            .map(|f| f.store.tombstone_count() as u64)
            .sum();
    }

    /// Flushes the outbox, sends the next slice of a queued push, starts the digest syncs
    /// that are due and collects the tombstones that are (see [`Engine::next_deadline`]).
    pub fn tick(&mut self, now_ms: u64) {
        self.queue(|e, out| e.on_tick(now_ms, out));
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        self.continue_pushes(now_ms, out);
        self.catch_ups_tick(now_ms, out);
        for (peer, family, batch) in self.outbox.take_all() {
            self.send_batched(out, peer, now_ms, &family, batch);
        }
        let names: Vec<String> = self
            .families
            .iter()
            .filter(|(_, f)| f.shared.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let eligible = self.eligible(&name);
            let due = self
                .families
                .get(&name)
                .is_some_and(|f| now_ms >= f.next_sync_ms);
            if due {
                self.start_sync(&name, &eligible, now_ms, out);
            }
            self.collect_tombstones(&name, &eligible, now_ms);
        }
        self.refresh_gauges();
    }

    /// Whether a push too large to send at once is still being sent, slice by slice
    /// (the peer does not yet hold everything the last comparison found it lacked).
    pub fn pushing(&self) -> bool {
        self.pushes.has_queued() || !self.outbox.is_empty()
    }

    /// Outputs queued since the last batch was taken (the driver flushes when many).
    pub fn queued_outputs(&self) -> usize {
        self.outputs.len()
    }

    /// The state to save and the outputs, in order, since the last call. The save
    /// confirms the applies of the batch taken two calls before: write it once the
    /// outputs of that batch and of every earlier one are executed (the last batch's
    /// may still be under way).
    pub fn take_batch(&mut self) -> Batch {
        Batch {
            save: self.take_save(),
            outputs: mem::take(&mut self.outputs),
        }
    }

    /// Hands an executed batch's emptied output buffer back, so that its capacity serves
    /// the next batch (a catch-up's buffers would otherwise be mapped afresh each time);
    /// kept only if not larger than 65,536 entries and the engine's own queue is empty.
    pub fn recycle(&mut self, mut outputs: Vec<Output>) {
        if self.outputs.is_empty()
            && outputs.capacity() <= KEEP_OUTPUTS
            && outputs.capacity() > self.outputs.capacity()
        {
            outputs.clear();
            self.outputs = outputs;
        }
    }

    /// Wall-clock ms at which `tick` has work next: a batch waiting in the outbox, a queued
    /// push slice to a peer not held (both: now; see [`Engine::hold_pushes`]), a family's
    /// next digest sync (which also resends the tombstones some peer has not
    /// acknowledged), a tombstone whose grace period is to start or stop (now), to be
    /// collected after its grace or by age, or a collected one to forget. None when
    /// nothing is scheduled (no family is shared).
    ///
    /// "Now" is 0, a time every clock has passed (even one that stepped back since the
    /// call that made the work); any deadline at or before the driver's clock means at
    /// once. The driver can sleep until the deadline instead of ticking every 100 ms:
    /// [`Engine::tick`] before it does nothing. Its cost grows with the tombstones held,
    /// as a tick's does: call it once per turn.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.outbox.is_empty() || self.pushes.has_ready() {
            return Some(AT_ONCE);
        }
        let grace = self.cfg.collect_grace_ms();
        let max_age = self.cfg.tombstone_max_age_ms;
        let families = self
            .families
            .iter()
            .filter(|(_, fs)| fs.shared.is_some())
            .map(|(name, fs)| {
                let eligible = self.eligible(name);
                let tombstones = fs.tombstones.next_deadline(&eligible, grace, max_age);
                tombstones.map_or(fs.next_sync_ms, |at| at.min(fs.next_sync_ms))
            })
            .min();
        [families, self.catch_ups.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The cluster node number of `eid`: this node's, or a peer's as last known.
    pub fn node_of(&self, eid: Eid) -> Option<u32> {
        if eid == self.cfg.local {
            Some(self.cfg.local_node)
        } else {
            self.peers.get(&eid).map(|p| p.node)
        }
    }

    /// Runs `f` with the queue of outputs to add to.
    pub(super) fn queue(&mut self, f: impl FnOnce(&mut Self, &mut Vec<Output>)) {
        let mut out = mem::take(&mut self.outputs);
        f(self, &mut out);
        self.outputs = out;
    }

    /// What changed since the last call, to be written before the outputs queued since
    /// then are executed. Items are given in their latest state.
    fn take_save(&mut self) -> PersistDelta {
        let mut d = PersistDelta {
            clock: self.clock.high_water(),
            reset_families: mem::take(&mut self.reset_families),
            ..PersistDelta::default()
        };
        for (name, fs) in self.families.iter_mut() {
            if fs.meta_dirty {
                fs.meta_dirty = false;
                d.families.push(FamilyMeta {
                    name: name.clone(),
                    mode: fs.mode,
                    baseline: fs.baseline,
                    horizon: fs.horizon,
                });
            }
            let changes = fs.store.take_changes();
            d.items.reserve(changes.len());
            for logged in changes {
                d.items.push(ItemDelta {
                    item: ItemRef {
                        family: fs.name.clone(),
                        owner: logged.owner,
                        key: logged.key,
                    },
                    state: logged.state,
                });
            }
        }
        for eid in mem::take(&mut self.peers_dirty) {
            if let Some(p) = self.peers.get(&eid) {
                d.peers.push(p.meta(eid));
            }
        }
        let mut started = mem::take(&mut self.applies_started);
        // A catch-up applies keys in ascending order, each once: one pass tells, instead
        // of a sort's and a dedup's.
        if !started.is_sorted_by(|a, b| a < b) {
            started.sort();
            started.dedup();
        }
        let started = ItemRefs::new(started);
        // This save confirms the applies of the batch before the previous one (the
        // previous one's may still be under way while this batch is saved), but for
        // items the previous batch applied again: those wait for its confirmation.
        let previous = mem::replace(&mut self.applies_previous, started.clone());
        let older = mem::replace(&mut self.applies_older, Arc::clone(&previous));
        d.applies_confirmed = sorted_difference(&older, &previous);
        d.applies_started = started;
        d
    }

    /// The state the deltas taken so far add up to, for writing a fresh file that replaces
    /// them (a compaction). Call it right after [`Engine::take_batch`] (once its `save` is
    /// written), before anything else changes the engine: changes not yet taken would be
    /// saved without their outputs having been ordered after the save.
    pub fn persisted_state(&self) -> PersistedState<'_> {
        let mut unconfirmed: Vec<(&str, Option<Eid>, &str)> = self
            .applies_previous
            .iter()
            .chain(self.applies_older.iter())
            .map(|r| (&*r.family, r.owner, &*r.key))
            .collect();
        let mut families = Vec::with_capacity(self.families.len());
        for (name, fs) in &self.families {
            families.push(FamilyMeta {
                name: name.clone(),
                mode: fs.mode,
                baseline: fs.baseline,
                horizon: fs.horizon,
            });
            unconfirmed.extend(
                fs.unconfirmed
                    .iter()
                    .map(|i| (name.as_str(), i.owner, &*i.key)),
            );
        }
        unconfirmed.sort_unstable();
        unconfirmed.dedup();
        PersistedState {
            clock: self.clock.high_water(),
            families,
            peers: self.peers.iter().map(|(eid, p)| p.meta(*eid)).collect(),
            unconfirmed,
            items: Box::new(
                self.families.iter().flat_map(|(name, fs)| {
                    fs.store.iter_unordered().map(move |v| (name.as_str(), v))
                }),
            ),
        }
    }
}
