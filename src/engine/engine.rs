//! The replication engine: versions, merge, tombstones and anti-entropy as plain data.
//!
//! A driver (the Asterisk module, the simulator) feeds it local AstDB contents, peer
//! messages and the time, and executes what it hands back. It does no I/O.
//!
//! # Ordering contract for the driver
//!
//! 1. Calls are made from one thread, with a `now_ms` that is the node's wall clock
//!    (it may step back; versions stay monotonic).
//! 2. After any batch of calls, take [`Engine::take_persist_delta`] and write it durably
//!    (one transaction) **before** executing the outputs returned since the previous
//!    delta. Then execute those outputs **in the order given**.
//! 3. A snapshot passed to [`Engine::local_snapshot`] must have been read after every
//!    `Apply` output returned earlier was executed, and no engine call may come between
//!    reading it and passing it. Otherwise a value the engine itself applied could be
//!    taken for a local change (or a remote value for a local delete).
//! 4. [`Engine::local_change`] reports writes that really happened in AstDB (an event
//!    from a hook or the CLI), after the write.
//! 5. Call [`Engine::tick`] regularly (every 100 ms or so): it flushes batches, starts
//!    digest syncs at each family's `sync_interval`, and collects tombstones.
//! 6. Call [`Engine::peer_up`] when a connection to a peer is established (and its EID
//!    and node number are known) and [`Engine::peer_down`] when it is lost. Messages
//!    from a peer that is not known are dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::mem;
use std::sync::Arc;

use super::codec::{check_key, check_value, MAX_ITEMS, MAX_SUMMARY_ITEMS};
use crate::eid::Eid;
use super::family::{leading_parts, Mode, SharedFamily, SyncMode};
use super::item::{Contents, Entry, ItemId};
use super::message::{Body, Change, DigestNode, Message, SummaryItem, SummaryRange};
use super::persist::{
    FamilyMeta, ItemDelta, ItemRef, PeerMeta, PersistDelta, PersistedState, RestoredState,
};
use super::store::{node_range, valid_node, ItemStore, Merged, MAX_DEPTH};
use super::version::{Clock, Hlc, Version};

/// A digest-tree node with at most this many items is answered with a summary.
const LEAF_ITEMS: usize = 16;
/// Bytes at which a batch is cut, well below the codec's message limit.
const BATCH_BYTES: usize = 256 * 1024;
/// A push of at least this many changes is remembered (see [`RecentPush`]).
const BIG_PUSH: usize = 1024;

/// A large anti-entropy push to a peer: every item of the digest-tree node
/// (`depth`, `prefix`) with a version up to `high` was sent at `at_ms`. Until that push
/// can have arrived (the connection stays up and messages are delivered in order), a
/// summary or pull from the peer that still lacks such an item was made before the push
/// reached it; sending the item again would only double a new node's catch-up.
#[derive(Clone, Copy, Debug)]
struct RecentPush {
    depth: u8,
    prefix: u64,
    high: Hlc,
    at_ms: u64,
}

/// A large push still being sent: the positions of its items in the order they go
/// out (key order), and how far it has got. The items are read from the store as each
/// slice goes, so a slice carries their latest state.
#[derive(Clone, Debug)]
struct QueuedPush {
    peer: Eid,
    family: String,
    positions: Vec<u64>,
    next: usize,
}

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
    /// each [`Engine::tick`] (see [`Engine::has_queued_pushes`]) rather than all at once.
    pub push_slice: usize,
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
        }
    }

    /// How long after the last acknowledgement a tombstone is kept: long enough that any
    /// message sent before that acknowledgement is dropped as too old if it still arrives.
    pub fn collect_grace_ms(&self) -> u64 {
        self.max_message_age_ms + 2 * self.max_clock_skew_ms
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
    Warn(String),
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

#[derive(Clone, Debug)]
struct TombstoneAcks {
    version: Version,
    acked: BTreeSet<Eid>,
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

#[derive(Clone, Debug)]
struct FamilyState {
    name: Arc<str>,
    /// AstDB family names of other nodes' copies of a unique family (`<owner>/<name>`).
    owner_names: BTreeMap<Eid, Arc<str>>,
    /// `None` once unshared: the versions are kept for when it is shared again.
    shared: Option<SharedFamily>,
    mode: Mode,
    /// Tracked: its change log is the items part of the persistence delta.
    store: ItemStore,
    baseline: bool,
    horizon: Hlc,
    next_sync_ms: u64,
    last_change_ms: Option<u64>,
    tombstones: HashMap<ItemId, TombstoneAcks>,
    /// Recently collected tombstones, so that a peer still resending one is answered
    /// with an acknowledgement instead of the tombstone being stored again.
    collected: HashMap<ItemId, (Version, u64)>,
    /// Applies issued before a restart that AstDB may not have received.
    unconfirmed: HashSet<ItemId>,
    /// Local values of an ro unique family already warned about.
    ro_warned: HashMap<String, Option<String>>,
    meta_dirty: bool,
}

impl FamilyState {
    /// A family's state on node `local`: its store summarises the items of this node's
    /// own AstDB family.
    fn new(name: &str, mode: Mode, local: Eid) -> Self {
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
            tombstones: HashMap::new(),
            collected: HashMap::new(),
            unconfirmed: HashSet::new(),
            ro_warned: HashMap::new(),
            meta_dirty: true,
        }
    }

    /// The AstDB write that makes the item `owner`/`key` hold `value`, and the item as
    /// the persistence delta names it.
    fn apply(
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
    fn apply_copy(&mut self, item: &ItemId, value: Option<Arc<str>>) -> (DbOp, ItemRef) {
        self.apply(item.owner, item.key.clone(), value)
    }

    fn track(&mut self, item: &ItemId, entry: &Entry) {
        if entry.is_tombstone() {
            self.tombstones
                .insert(item.clone(), TombstoneAcks::new(entry.version));
        } else if !self.tombstones.is_empty() {
            self.tombstones.remove(item);
        }
    }
}

#[derive(Clone, Debug)]
struct Peer {
    node: u32,
    up: bool,
    stale_below: BTreeMap<String, Hlc>,
}

/// What became of one incoming change.
enum Accepted {
    Stored,
    Kept,
    /// Refused as a stale copy; the sender is to be told.
    Retired(ItemId),
}

/// The replication engine of one node.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    clock: Clock,
    families: BTreeMap<String, FamilyState>,
    peers: BTreeMap<Eid, Peer>,
    /// Per peer, per family: changes waiting for the next tick or a full batch.
    outbox: BTreeMap<Eid, BTreeMap<String, Vec<Change>>>,
    counters: Counters,
    reset_families: Vec<String>,
    peers_dirty: BTreeSet<Eid>,
    applies_started: Vec<ItemRef>,
    applies_previous: Arc<[ItemRef]>,
    recent_pushes: BTreeMap<(Eid, String), Vec<RecentPush>>,
    queued_pushes: std::collections::VecDeque<QueuedPush>,
}

fn own_owner(mode: Mode, local: Eid) -> Option<Eid> {
    match mode {
        Mode::Global => None,
        Mode::Unique => Some(local),
    }
}

/// The order of `n` items by owner then key, as `ItemId`'s order, for a large push;
/// `id(i)` gives item `i`'s owner and key.
///
/// The keys lie scattered over the heap, and a plain sort reads two of them at each of
/// its ~20 comparisons per item; most of a million-key push went into those cache
/// misses. Here each key is read once, into a 16-byte prefix sorted with its index, and
/// only items whose prefixes tie are compared in full.
fn item_order<'k>(n: usize, id: impl Fn(usize) -> (Option<Eid>, &'k str)) -> Vec<u32> {
    let mut order: Vec<(Option<Eid>, u128, u32)> = (0..n)
        .map(|i| {
            let (owner, key) = id(i);
            (owner, key_prefix(key), i as u32)
        })
        .collect();
    order.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| id(a.2 as usize).1.cmp(id(b.2 as usize).1))
    });
    order.into_iter().map(|(_, _, i)| i).collect()
}

/// Sorts changes by item (see [`item_order`]).
fn sort_by_item(changes: &mut Vec<Change>) {
    if changes.len() < 64 {
        changes.sort_unstable_by(|a, b| a.item.cmp(&b.item));
        return;
    }
    let order = item_order(changes.len(), |i| {
        (changes[i].item.owner, &*changes[i].item.key)
    });
    let mut taken: Vec<Option<Change>> = mem::take(changes).into_iter().map(Some).collect();
    changes.extend(
        order
            .iter()
            .filter_map(|&i| taken.get_mut(i as usize).and_then(Option::take)),
    );
}

/// Drops the changes waiting for family `name`, to every peer.
fn drop_outbox_family(outbox: &mut BTreeMap<Eid, BTreeMap<String, Vec<Change>>>, name: &str) {
    for batches in outbox.values_mut() {
        batches.remove(name);
    }
    outbox.retain(|_, batches| !batches.is_empty());
}

/// The first 16 bytes of `key`, as a number that sorts as the keys do (keys hold no NUL,
/// so a shorter key padded with zeros still sorts first).
fn key_prefix(key: &str) -> u128 {
    let mut prefix = [0u8; 16];
    let n = key.len().min(16);
    prefix[..n].copy_from_slice(&key.as_bytes()[..n]);
    u128::from_be_bytes(prefix)
}

/// Whether one of `pushes` carries the item at `pos` in a state at least as new as `hlc`.
fn carried(pushes: &[RecentPush], pos: u64, hlc: Hlc) -> bool {
    pushes
        .iter()
        .any(|p| hlc <= p.high && node_range(p.depth, p.prefix).contains(&pos))
}

/// Splits `items` into batches of at most `max_n` items and about `max_bytes` bytes.
fn batches<T>(
    items: Vec<T>,
    max_n: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for item in items {
        let s = size(&item);
        if !cur.is_empty() && (cur.len() >= max_n || bytes + s > max_bytes) {
            out.push(mem::take(&mut cur));
            bytes = 0;
        }
        bytes += s;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn change_size(c: &Change) -> usize {
    c.item.key.len() + c.entry.value.as_ref().map_or(0, |v| v.len()) + 32
}

fn root_digest(store: &ItemStore) -> DigestNode {
    DigestNode {
        depth: 0,
        prefix: 0,
        hash: store.node(0, 0).0,
    }
}

impl Engine {
    pub fn new(cfg: EngineConfig, restored: Option<RestoredState>) -> Self {
        let mut engine = Engine {
            clock: Clock::default(),
            cfg,
            families: BTreeMap::new(),
            peers: BTreeMap::new(),
            outbox: BTreeMap::new(),
            counters: Counters::default(),
            reset_families: Vec::new(),
            peers_dirty: BTreeSet::new(),
            applies_started: Vec::new(),
            applies_previous: Arc::new([]),
            recent_pushes: BTreeMap::new(),
            queued_pushes: std::collections::VecDeque::new(),
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
                fs.tombstones
                    .insert(item.clone(), TombstoneAcks::new(entry.version));
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
    pub fn entry(&self, family: &str, owner: Option<Eid>, key: &str) -> Option<&Entry> {
        self.families.get(family)?.store.get(owner, key)
    }

    /// Every item held for `family`, tombstones included.
    pub fn items(&self, family: &str) -> Vec<(ItemId, Entry)> {
        self.families.get(family).map_or_else(Vec::new, |fs| {
            fs.store
                .iter()
                .map(|(i, e)| (i.clone(), e.clone()))
                .collect()
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

    /// True when no change is waiting in a batch.
    pub fn outbox_is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    fn refresh_gauges(&mut self) {
        self.counters.tombstones = self
            .families
            .values()
            .map(|f| f.store.tombstone_count() as u64)
            .sum();
    }

    fn message(&mut self, now_ms: u64, family: &str, mode: Mode, body: Body) -> Message {
        Message {
            sent: self.clock.tick(now_ms),
            family: family.to_string(),
            mode,
            body,
        }
    }

    fn send(&mut self, out: &mut Vec<Output>, to: Eid, now_ms: u64, family: &str, body: Body) {
        let Some(mode) = self.families.get(family).map(|f| f.mode) else {
            return;
        };
        if let Body::Changes(c) = &body {
            self.counters.sent_changes += c.len() as u64;
        }
        let msg = self.message(now_ms, family, mode, body);
        out.push(Output::Send { to, msg });
    }

    fn send_changes(
        &mut self,
        out: &mut Vec<Output>,
        to: Eid,
        now_ms: u64,
        family: &str,
        changes: Vec<Change>,
    ) {
        let max_n = self.cfg.batch_max_changes.clamp(1, MAX_ITEMS);
        for batch in batches(changes, max_n, BATCH_BYTES, change_size) {
            self.send(out, to, now_ms, family, Body::Changes(batch));
        }
    }

    /// Peers that take part in `family`, up or not.
    fn eligible(&self, family: &str) -> Vec<(Eid, bool)> {
        let Some(shared) = self.families.get(family).and_then(|f| f.shared.as_ref()) else {
            return Vec::new();
        };
        self.peers
            .iter()
            .filter(|(_, p)| shared.policy.includes(p.node))
            .map(|(e, p)| (*e, p.up))
            .collect()
    }

    fn sync_with(&mut self, out: &mut Vec<Output>, peer: Eid, now_ms: u64, family: &str) {
        let Some(fs) = self.families.get(family) else {
            return;
        };
        let root = root_digest(&fs.store);
        self.send(out, peer, now_ms, family, Body::Digest(vec![root]));
    }

    /// Shares a family (or changes its settings) and pulls its state from the peers.
    pub fn share(&mut self, fam: SharedFamily, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
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
            drop_outbox_family(&mut self.outbox, &name);
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
                .and_then(|e| e.value.clone());
            let (op, applied) = fs.apply_copy(&item, value);
            out.push(Output::Apply(op));
            self.applies_started.push(applied);
        }
        for (peer, up) in self.eligible(&name) {
            if up {
                self.sync_with(&mut out, peer, now_ms, &name);
            }
        }
        self.refresh_gauges();
        out
    }

    /// Stops sharing a family. No key changes; its versions are kept.
    pub fn unshare(&mut self, name: &str, _now_ms: u64) -> Vec<Output> {
        if let Some(fs) = self.families.get_mut(name) {
            fs.shared = None;
        }
        drop_outbox_family(&mut self.outbox, name);
        Vec::new()
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
    pub fn local_rows(
        &mut self,
        family: &str,
        rows: &[(String, String)],
        now_ms: u64,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let Some((owner, nested)) = self.read_scope(family) else {
            return out;
        };
        for (key, value) in rows {
            if !nested.iter().any(|n| key.starts_with(n.as_str())) {
                self.local_row(family, owner, key, value, now_ms, &mut out);
            }
        }
        self.refresh_gauges();
        out
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
        let unchanged = self
            .entry(family, owner, key)
            .is_some_and(|h| h.value.as_deref() == Some(value));
        if unchanged {
            return true;
        }
        self.local_write(family, key, Some(value), now_ms, true, out);
        self.entry(family, owner, key)
            .is_some_and(|h| h.value.is_some())
    }

    /// The current local contents of a shared family (keys below it, with values). Works
    /// out what changed since the engine last looked and versions it.
    pub fn local_snapshot(
        &mut self,
        family: &str,
        entries: Vec<(String, String)>,
        now_ms: u64,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let Some((owner, nested)) = self.read_scope(family) else {
            return out;
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
            if self.local_row(family, owner, &key, &value, now_ms, &mut out) {
                present += 1;
            }
            seen.push(key);
        }
        let missing: Vec<Arc<str>> = self.families.get(family).map_or_else(Vec::new, |fs| {
            let live_own = |id: &ItemId, e: &Entry| {
                id.owner == owner && !e.is_tombstone() && in_scope(&id.key)
            };
            if ascending
                && fs
                    .store
                    .iter_unordered()
                    .filter(|(id, e)| live_own(id, e))
                    .count()
                    == present
            {
                return Vec::new();
            }
            let seen: HashSet<&str> = seen.iter().map(String::as_str).collect();
            fs.store
                .iter()
                .filter(|(id, e)| live_own(id, e) && !seen.contains(&*id.key))
                .map(|(id, _)| id.key.clone())
                .collect()
        });
        for key in missing {
            self.local_write(family, &key, None, now_ms, true, &mut out);
        }
        if let Some(fs) = self.families.get_mut(family) {
            if !fs.baseline {
                fs.baseline = true;
                fs.meta_dirty = true;
            }
            fs.unconfirmed.clear();
        }
        self.refresh_gauges();
        out
    }

    /// One local write (value `None` for a delete) to AstDB family `family`, which is a
    /// shared family or lies below one (`foo/sub` with key `k` is key `sub/k` of `foo`).
    pub fn local_change(
        &mut self,
        family: &str,
        key: &str,
        value: Option<&str>,
        now_ms: u64,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some((name, prefix)) = self.covering(family) {
            let key = format!("{prefix}{key}");
            self.local_write(&name, &key, value, now_ms, false, &mut out);
        }
        self.refresh_gauges();
        out
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
            Some(h) if h.value.as_deref() == value => return,
            Some(_) => true,
            None if value.is_none() => return,
            None => false,
        };
        let held_value = || fs.store.get(owner, key).and_then(|h| h.value.clone());
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
            out.push(Output::Warn(format!(
                "family '{family}' key '{key}': not shared, the key or value is {why}"
            )));
            return;
        }
        if sync_mode == SyncMode::Ro {
            self.counters.ro_refused += 1;
            match fs.mode {
                Mode::Global => {
                    out.push(Output::Warn(format!(
                        "family '{family}' is sync_mode=ro here: local change to key '{key}' \
                         is not shared and is replaced by the cluster's value"
                    )));
                    let held_value = held_value();
                    let (op, applied) = fs.apply_copy(&item, held_value);
                    out.push(Output::Apply(op));
                    self.applies_started.push(applied);
                }
                Mode::Unique => {
                    let v = value.map(str::to_string);
                    if fs.ro_warned.get(key) != Some(&v) {
                        out.push(Output::Warn(format!(
                            "family '{family}' is sync_mode=ro here: local change to key \
                             '{key}' is not shared"
                        )));
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
        fs.store.put(owner, key, entry.clone());
        fs.track(&item, &entry);
        fs.last_change_ms = Some(now_ms);
        self.counters.local_changes += 1;
        self.publish(family, Change { item, entry }, now_ms, out);
    }

    /// Queues a change for every peer that is up and takes part in the family.
    fn publish(&mut self, family: &str, change: Change, now_ms: u64, out: &mut Vec<Output>) {
        let max_n = self.cfg.batch_max_changes.clamp(1, MAX_ITEMS);
        let peers: Vec<Eid> = self
            .eligible(family)
            .into_iter()
            .filter_map(|(peer, up)| up.then_some(peer))
            .collect();
        let mut full = Vec::new();
        let mut change = Some(change);
        for (i, &peer) in peers.iter().enumerate() {
            let batches = self.outbox.entry(peer).or_default();
            if !batches.contains_key(family) {
                batches.insert(family.to_string(), Vec::new());
            }
            let Some(batch) = batches.get_mut(family) else {
                continue;
            };
            // The last peer takes the change itself; the others a copy.
            let c = if i + 1 == peers.len() {
                change.take()
            } else {
                change.clone()
            };
            batch.extend(c);
            if batch.len() >= max_n {
                full.push(peer);
            }
        }
        for peer in full {
            let batch = self.outbox.get_mut(&peer).and_then(|b| b.remove(family));
            if self.outbox.get(&peer).is_some_and(BTreeMap::is_empty) {
                self.outbox.remove(&peer);
            }
            if let Some(batch) = batch {
                self.send_changes(out, peer, now_ms, family, batch);
            }
        }
    }

    /// A connection to `peer` (cluster node number `node`) is up: catch up with it.
    pub fn peer_up(&mut self, peer: Eid, node: u32, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if peer == self.cfg.local {
            return out;
        }
        let known = self.peers.contains_key(&peer);
        let families = &self.families;
        let p = self.peers.entry(peer).or_insert_with(|| Peer {
            node,
            up: false,
            // A peer never seen may hold copies of keys whose tombstones were already
            // collected here: its older values for absent keys are stale.
            stale_below: families
                .iter()
                .filter(|(_, f)| f.horizon > Hlc::ZERO)
                .map(|(n, f)| (n.clone(), f.horizon))
                .collect(),
        });
        if !known || p.node != node {
            p.node = node;
            self.peers_dirty.insert(peer);
        }
        p.up = true;
        self.recent_pushes.retain(|(to, _), _| *to != peer);
        self.queued_pushes.retain(|q| q.peer != peer);
        let names: Vec<String> = self.families.keys().cloned().collect();
        for name in names {
            if self.eligible(&name).iter().any(|(e, _)| *e == peer) {
                self.sync_with(&mut out, peer, now_ms, &name);
            }
        }
        out
    }

    /// The connection to `peer` is lost.
    pub fn peer_down(&mut self, peer: Eid, _now_ms: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.up = false;
        }
        self.outbox.remove(&peer);
        self.recent_pushes.retain(|(to, _), _| *to != peer);
        self.queued_pushes.retain(|q| q.peer != peer);
    }

    /// Drops from `changes` those a recent large push to `peer` already carries.
    fn drop_in_flight(&mut self, peer: Eid, family: &str, now_ms: u64, changes: &mut Vec<Change>) {
        let pushes = self.pushes_in_flight(peer, family, now_ms);
        if !pushes.is_empty() {
            changes.retain(|c| !carried(&pushes, c.item.position(), c.entry.version.hlc));
        }
    }

    /// The large pushes to `peer` of `family` that may still be on their way.
    fn pushes_in_flight(&mut self, peer: Eid, family: &str, now_ms: u64) -> Vec<RecentPush> {
        let max_age = self.cfg.max_message_age_ms;
        let key = (peer, family.to_string());
        let Some(pushes) = self.recent_pushes.get_mut(&key) else {
            return Vec::new();
        };
        pushes.retain(|p| p.at_ms.saturating_add(max_age) >= now_ms && p.at_ms <= now_ms);
        if pushes.is_empty() {
            self.recent_pushes.remove(&key);
            return Vec::new();
        }
        pushes.clone()
    }

    /// Remembers a large push of the digest-tree nodes `nodes` to `peer`.
    fn remember_push(
        &mut self,
        peer: Eid,
        family: &str,
        nodes: &[(u8, u64)],
        high: Hlc,
        now_ms: u64,
    ) {
        let remembered = self
            .recent_pushes
            .entry((peer, family.to_string()))
            .or_default();
        for &(depth, prefix) in nodes {
            remembered.push(RecentPush {
                depth,
                prefix,
                high,
                at_ms: now_ms,
            });
        }
    }

    /// Whether a large push still has slices to send: the driver should call
    /// [`Engine::tick`] again soon rather than wait for its next interval.
    pub fn has_queued_pushes(&self) -> bool {
        !self.queued_pushes.is_empty()
    }

    /// Sends the next slice of the oldest queued push (then it waits behind the others).
    fn continue_pushes(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let Some(mut q) = self.queued_pushes.pop_front() else {
            return;
        };
        let Some(fs) = self.families.get(&q.family).filter(|f| f.shared.is_some()) else {
            return;
        };
        let end = q
            .next
            .saturating_add(self.cfg.push_slice.max(1))
            .min(q.positions.len());
        let changes: Vec<Change> = q.positions[q.next..end]
            .iter()
            .flat_map(|&pos| fs.store.at(pos))
            .map(|(_, id, e)| Change {
                item: id.clone(),
                entry: e.clone(),
            })
            .collect();
        q.next = end;
        if !changes.is_empty() {
            self.send_changes(out, q.peer, now_ms, &q.family, changes);
        }
        if q.next < q.positions.len() {
            self.queued_pushes.push_back(q);
        }
    }

    /// A message from `from`.
    pub fn receive(&mut self, from: Eid, msg: Message, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(peer_node) = self.peers.get(&from).map(|p| p.node) else {
            self.counters.dropped_unknown_peer += 1;
            return out;
        };
        let weight = match &msg.body {
            Body::Changes(c) => c.len() as u64,
            _ => 1,
        };
        if msg.sent.wall_ms() > now_ms.saturating_add(self.cfg.max_clock_skew_ms) {
            self.counters.dropped_skew += weight;
            return out;
        }
        if msg
            .sent
            .wall_ms()
            .saturating_add(self.cfg.max_message_age_ms)
            < now_ms
        {
            self.counters.dropped_stale += weight;
            return out;
        }
        let Some(fs) = self.families.get(&msg.family) else {
            self.counters.dropped_unshared += weight;
            return out;
        };
        let Some(shared) = fs.shared.as_ref() else {
            self.counters.dropped_unshared += weight;
            return out;
        };
        if fs.mode != msg.mode {
            self.counters.dropped_mode += weight;
            return out;
        }
        if !shared.policy.includes(peer_node) {
            self.counters.dropped_policy += weight;
            return out;
        }
        self.clock.observe(msg.sent);
        let family = msg.family;
        match msg.body {
            Body::Changes(changes) => self.on_changes(from, &family, changes, now_ms, &mut out),
            Body::Acks(acks) => self.on_acks(from, &family, acks),
            Body::Digest(nodes) => self.on_digest(from, &family, nodes, now_ms, &mut out),
            Body::Summary(ranges) => self.on_summary(from, &family, ranges, now_ms, &mut out),
            Body::Pull(items) => self.on_pull(from, &family, items, now_ms, &mut out),
        }
        self.refresh_gauges();
        out
    }

    fn valid_item(&self, family: &str, item: &ItemId) -> bool {
        let mode = self.families.get(family).map(|f| f.mode);
        valid_in(mode, item)
    }

    /// Tombstones up to this clock were collected here without `from`'s acknowledgement.
    fn stale_below(&self, from: Eid, family: &str) -> Option<Hlc> {
        self.peers
            .get(&from)
            .and_then(|p| p.stale_below.get(family).copied())
    }

    fn on_changes(
        &mut self,
        from: Eid,
        family: &str,
        changes: Vec<Change>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let mut acks = Vec::new();
        let mut retired = Vec::new();
        // Neither changes while a message is merged.
        let mode = self.families.get(family).map(|f| f.mode);
        let stale_below = self.stale_below(from, family);
        out.reserve(changes.len());
        self.applies_started.reserve(changes.len());
        for change in changes {
            if !valid_in(mode, &change.item) || check_key(&change.item.key).is_err() {
                self.counters.dropped_invalid += 1;
                continue;
            }
            if change.entry.version.hlc.wall_ms()
                > now_ms.saturating_add(self.cfg.max_clock_skew_ms)
            {
                self.counters.dropped_skew += 1;
                continue;
            }
            self.counters.received_changes += 1;
            let version = change.entry.version;
            let ack = change
                .entry
                .is_tombstone()
                .then(|| (change.item.clone(), version));
            match self.accept(from, family, stale_below, change, now_ms, out) {
                Accepted::Retired(item) => retired.push(Change {
                    item,
                    entry: Entry {
                        version,
                        value: None,
                    },
                }),
                Accepted::Stored | Accepted::Kept => acks.extend(ack),
            }
        }
        self.reply_acks(out, from, now_ms, family, acks);
        if !retired.is_empty() {
            self.send_changes(out, from, now_ms, family, retired);
        }
    }

    fn reply_acks(
        &mut self,
        out: &mut Vec<Output>,
        to: Eid,
        now_ms: u64,
        family: &str,
        acks: Vec<(ItemId, Version)>,
    ) {
        for batch in batches(acks, MAX_ITEMS, BATCH_BYTES, |(i, _)| i.key.len() + 24) {
            self.send(out, to, now_ms, family, Body::Acks(batch));
        }
    }

    /// Merges one remote change (`stale_below` is [`Engine::stale_below`]).
    fn accept(
        &mut self,
        from: Eid,
        family: &str,
        stale_below: Option<Hlc>,
        change: Change,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Accepted {
        let local = self.cfg.local;
        let Some(fs) = self.families.get_mut(family) else {
            return Accepted::Kept;
        };
        let ro = fs
            .shared
            .as_ref()
            .is_some_and(|s| s.sync_mode == SyncMode::Ro);
        let Change { item, entry } = change;

        if item.owner == Some(local) {
            let held = fs.store.get(item.owner, &item.key);
            // Only this node writes its own unique items. A newer version of one coming
            // back means this node lost its state: issue a newer version of what it holds.
            let deleted_here = held.is_none_or(Entry::is_tombstone);
            if (entry.is_tombstone() && deleted_here)
                || held.is_some_and(|h| !entry.beats(h))
                || ro
                || !fs.baseline
            {
                return Accepted::Kept;
            }
            self.clock.observe(entry.version.hlc);
            let reissued = Entry {
                version: Version::new(self.clock.tick(now_ms), local),
                value: held.and_then(|h| h.value.clone()),
            };
            fs.store.put(item.owner, &item.key, reissued.clone());
            fs.track(&item, &reissued);
            self.publish(
                family,
                Change {
                    item,
                    entry: reissued,
                },
                now_ms,
                out,
            );
            return Accepted::Kept;
        }

        let is_value = entry.value.is_some();
        let version = entry.version;
        let pos = item.position();
        let (horizon, collected) = (fs.horizon, &fs.collected);
        let refuse_new = || {
            if is_value {
                // A copy of a key whose tombstone was collected here must never come
                // back: the sender is told to retire it.
                (version.hlc == Hlc::ZERO && horizon > Hlc::ZERO)
                    || stale_below.is_some_and(|h| version.hlc <= h)
                    || collected.get(&item).is_some_and(|(v, _)| *v >= version)
            } else {
                collected.get(&item).is_some_and(|(v, _)| *v >= version)
            }
        };
        match fs
            .store
            .merge_unless(pos, item.owner, &item.key, entry, refuse_new)
        {
            Merged::Kept => Accepted::Kept,
            Merged::Refused if is_value => {
                self.counters.retired += 1;
                Accepted::Retired(item)
            }
            Merged::Refused => Accepted::Kept,
            Merged::Inserted | Merged::Replaced(_) => {
                self.clock.observe(version.hlc);
                if is_value {
                    if !fs.tombstones.is_empty() {
                        fs.tombstones.remove(&item);
                    }
                } else {
                    let mut acks = TombstoneAcks::new(version);
                    acks.acked.insert(from);
                    fs.tombstones.insert(item.clone(), acks);
                }
                fs.last_change_ms = Some(now_ms);
                self.counters.applied += 1;
                // The store has just logged the new state: share its strings.
                let (op, applied) = match fs.store.last_logged() {
                    Some(logged) => {
                        let key = logged.key.clone();
                        let value = logged.state.as_ref().and_then(|s| s.value.clone());
                        fs.apply(item.owner, key, value)
                    }
                    None => {
                        let value = fs
                            .store
                            .get_at(pos, item.owner, &item.key)
                            .and_then(|e| e.value.clone());
                        fs.apply_copy(&item, value)
                    }
                };
                out.push(Output::Apply(op));
                self.applies_started.push(applied);
                Accepted::Stored
            }
        }
    }

    fn on_acks(&mut self, from: Eid, family: &str, acks: Vec<(ItemId, Version)>) {
        let Some(fs) = self.families.get_mut(family) else {
            return;
        };
        for (item, version) in acks {
            if let Some(t) = fs.tombstones.get_mut(&item) {
                if t.version <= version {
                    t.acked.insert(from);
                }
            }
        }
    }

    fn on_digest(
        &mut self,
        from: Eid,
        family: &str,
        nodes: Vec<DigestNode>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(fs) = self.families.get(family) else {
            return;
        };
        let mut children = Vec::new();
        let mut ranges = Vec::new();
        for n in nodes {
            if !valid_node(n.depth, n.prefix) {
                self.counters.dropped_invalid += 1;
                continue;
            }
            let (hash, count) = fs.store.node(n.depth, n.prefix);
            if hash == n.hash {
                continue;
            }
            if count <= LEAF_ITEMS || n.depth == MAX_DEPTH {
                ranges.push(summary_range(&fs.store, n.depth, n.prefix));
            } else {
                for c in 0..16u64 {
                    let prefix = (n.prefix << 4) | c;
                    children.push(DigestNode {
                        depth: n.depth + 1,
                        prefix,
                        hash: fs.store.node(n.depth + 1, prefix).0,
                    });
                }
            }
        }
        for batch in batches(children, MAX_ITEMS, BATCH_BYTES, |_| 20) {
            self.send(out, from, now_ms, family, Body::Digest(batch));
        }
        let mut total = 0;
        let mut cur: Vec<SummaryRange> = Vec::new();
        let mut bytes = 0;
        for r in ranges {
            let size: usize = r.items.iter().map(|i| i.item.key.len() + 24).sum::<usize>() + 12;
            if !cur.is_empty()
                && (cur.len() >= MAX_ITEMS
                    || total + r.items.len() > MAX_SUMMARY_ITEMS
                    || bytes + size > BATCH_BYTES)
            {
                self.send(
                    out,
                    from,
                    now_ms,
                    family,
                    Body::Summary(mem::take(&mut cur)),
                );
                total = 0;
                bytes = 0;
            }
            total += r.items.len();
            bytes += size;
            cur.push(r);
        }
        if !cur.is_empty() {
            self.send(out, from, now_ms, family, Body::Summary(cur));
        }
    }

    fn on_summary(
        &mut self,
        from: Eid,
        family: &str,
        ranges: Vec<SummaryRange>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let mut push = Vec::new();
        // A push too large to send at once: (position, version) of its items, in key order.
        let mut queued: Vec<(u64, Hlc)> = Vec::new();
        let mut pull = Vec::new();
        let mut take_tombstones = Vec::new();
        let mut acks = Vec::new();
        let mut nodes = Vec::new();
        let push_slice = self.cfg.push_slice.max(1);
        {
            let Some(fs) = self.families.get_mut(family) else {
                return;
            };
            let mut wanted: Vec<(u64, &ItemId, &Entry)> = Vec::new();
            for r in ranges {
                if !valid_node(r.depth, r.prefix) {
                    self.counters.dropped_invalid += 1;
                    continue;
                }
                nodes.push((r.depth, r.prefix));
                let theirs: HashMap<&ItemId, &SummaryItem> =
                    r.items.iter().map(|i| (&i.item, i)).collect();
                let mut equal_tombstones = Vec::new();
                for (pos, id, e) in fs.store.range(r.depth, r.prefix) {
                    match theirs.get(id) {
                        None => wanted.push((pos, id, e)),
                        Some(t) => {
                            let mine = (e.version, e.is_tombstone());
                            let other = (t.version, t.tombstone);
                            if mine > other {
                                wanted.push((pos, id, e));
                            } else if mine == other && e.is_tombstone() {
                                equal_tombstones.push(id.clone());
                            }
                        }
                    }
                }
                for id in equal_tombstones {
                    if let Some(t) = fs.tombstones.get_mut(&id) {
                        t.acked.insert(from);
                    }
                }
                for t in r.items {
                    let mine = fs
                        .store
                        .get(t.item.owner, &t.item.key)
                        .map(|e| (e.version, e.is_tombstone()));
                    if mine.is_some_and(|m| m >= (t.version, t.tombstone)) {
                        continue;
                    }
                    if t.tombstone {
                        // A tombstone needs no value: take it straight from the summary.
                        take_tombstones.push(Change {
                            item: t.item,
                            entry: Entry {
                                version: t.version,
                                value: None,
                            },
                        });
                    } else {
                        pull.push(t.item);
                    }
                }
            }
            if wanted.len() > push_slice {
                let order = item_order(wanted.len(), |i| (wanted[i].1.owner, &*wanted[i].1.key));
                queued = order
                    .into_iter()
                    .map(|i| (wanted[i as usize].0, wanted[i as usize].2.version.hlc))
                    .collect();
            } else {
                push = wanted
                    .iter()
                    .map(|&(_, id, e)| Change {
                        item: id.clone(),
                        entry: e.clone(),
                    })
                    .collect();
            }
        }
        for change in take_tombstones {
            if !self.valid_item(family, &change.item) {
                self.counters.dropped_invalid += 1;
                continue;
            }
            if change.entry.version.hlc.wall_ms()
                > now_ms.saturating_add(self.cfg.max_clock_skew_ms)
            {
                self.counters.dropped_skew += 1;
                continue;
            }
            let ack = (change.item.clone(), change.entry.version);
            let stale_below = self.stale_below(from, family);
            if let Accepted::Stored | Accepted::Kept =
                self.accept(from, family, stale_below, change, now_ms, out)
            {
                acks.push(ack);
            }
        }
        pull.retain(|i| self.valid_item(family, i));
        self.reply_acks(out, from, now_ms, family, acks);
        if !queued.is_empty() {
            self.queue_push(from, family, queued, &nodes, now_ms, out);
            return self.send_pulls(out, from, now_ms, family, pull);
        }
        self.drop_in_flight(from, family, now_ms, &mut push);
        if push.len() >= BIG_PUSH {
            let high = push.iter().map(|c| c.entry.version.hlc).max();
            self.remember_push(from, family, &nodes, high.unwrap_or(Hlc::ZERO), now_ms);
        }
        if !push.is_empty() {
            // In key order, the order of the peer's metadata table (and of AstDB's): a
            // new node's catch-up then appends to its B-trees instead of touching a
            // random page for each key (the store's own order is the position hash).
            sort_by_item(&mut push);
            self.send_changes(out, from, now_ms, family, push);
        }
        self.send_pulls(out, from, now_ms, family, pull);
    }

    fn send_pulls(
        &mut self,
        out: &mut Vec<Output>,
        to: Eid,
        now_ms: u64,
        family: &str,
        pull: Vec<ItemId>,
    ) {
        for batch in batches(pull, MAX_ITEMS, BATCH_BYTES, |i| i.key.len() + 8) {
            self.send(out, to, now_ms, family, Body::Pull(batch));
        }
    }

    /// Queues a push too large to build at once (a new node's catch-up): `items`, already
    /// in key order as for any push, and sends the first slice now. The push is remembered
    /// as in flight from the start, so that the peer's summaries and pulls made before
    /// the queue reaches it do not add the same items again.
    fn queue_push(
        &mut self,
        to: Eid,
        family: &str,
        mut items: Vec<(u64, Hlc)>,
        nodes: &[(u8, u64)],
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let pushes = self.pushes_in_flight(to, family, now_ms);
        if !pushes.is_empty() {
            items.retain(|&(pos, hlc)| !carried(&pushes, pos, hlc));
        }
        let Some(high) = items.iter().map(|i| i.1).max() else {
            return;
        };
        self.remember_push(to, family, nodes, high, now_ms);
        self.queued_pushes.push_back(QueuedPush {
            peer: to,
            family: family.to_string(),
            positions: items.into_iter().map(|(pos, _)| pos).collect(),
            next: 0,
        });
        self.continue_pushes(now_ms, out);
    }

    fn on_pull(
        &mut self,
        from: Eid,
        family: &str,
        items: Vec<ItemId>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(fs) = self.families.get(family) else {
            return;
        };
        let mut changes: Vec<Change> = items
            .into_iter()
            .filter_map(|item| {
                let entry = fs.store.get(item.owner, &item.key)?.clone();
                Some(Change { item, entry })
            })
            .collect();
        self.drop_in_flight(from, family, now_ms, &mut changes);
        // In key order, as in on_summary.
        sort_by_item(&mut changes);
        if !changes.is_empty() {
            self.send_changes(out, from, now_ms, family, changes);
        }
    }

    /// Flushes batches, starts digest syncs that are due, and collects tombstones.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.continue_pushes(now_ms, &mut out);
        for (peer, family, batch) in mem::take(&mut self.outbox)
            .into_iter()
            .flat_map(|(peer, batches)| batches.into_iter().map(move |(f, b)| (peer, f, b)))
        {
            self.send_changes(&mut out, peer, now_ms, &family, batch);
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
                self.start_sync(&name, &eligible, now_ms, &mut out);
            }
            self.collect_tombstones(&name, &eligible, now_ms);
        }
        self.refresh_gauges();
        out
    }

    fn start_sync(
        &mut self,
        family: &str,
        eligible: &[(Eid, bool)],
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(fs) = self.families.get_mut(family) else {
            return;
        };
        let interval = fs
            .shared
            .as_ref()
            .map_or(5000, |s| s.sync_interval_ms.max(1));
        fs.next_sync_ms = now_ms + interval;
        // Tombstones some up peer has not acknowledged go to it again.
        let mut resend: BTreeMap<Eid, Vec<Change>> = BTreeMap::new();
        for (item, t) in fs.tombstones.iter_mut() {
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
        for (peer, up) in eligible {
            if *up {
                self.sync_with(out, *peer, now_ms, family);
            }
        }
        for (peer, changes) in resend {
            self.send_changes(out, peer, now_ms, family, changes);
        }
    }

    fn collect_tombstones(&mut self, family: &str, eligible: &[(Eid, bool)], now_ms: u64) {
        let grace = self.cfg.collect_grace_ms();
        let max_age = self.cfg.tombstone_max_age_ms;
        let Some(fs) = self.families.get_mut(family) else {
            return;
        };
        let interval = fs.shared.as_ref().map_or(5000, |s| s.sync_interval_ms);
        fs.collected.retain(|_, (_, until)| *until > now_ms);
        let mut due = Vec::new();
        for (item, t) in fs.tombstones.iter_mut() {
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
        for (item, by_age) in due {
            let Some(t) = fs.tombstones.remove(&item) else {
                continue;
            };
            if by_age {
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
            fs.store.forget(item.owner, &item.key);
            fs.horizon = fs.horizon.max(t.version.hlc);
            fs.meta_dirty = true;
            fs.collected.insert(
                item.clone(),
                (t.version, now_ms + 2 * grace + 10 * interval),
            );
            self.counters.collected += 1;
        }
    }

    /// What changed since the last call, to be written before the outputs returned since
    /// then are executed. Items are given in their latest state.
    pub fn take_persist_delta(&mut self) -> PersistDelta {
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
                d.peers.push(PeerMeta {
                    eid,
                    node: p.node,
                    stale_below: p.stale_below.iter().map(|(f, h)| (f.clone(), *h)).collect(),
                });
            }
        }
        let mut started = mem::take(&mut self.applies_started);
        started.sort();
        started.dedup();
        let started: Arc<[ItemRef]> = started.into();
        d.applies_confirmed = mem::replace(&mut self.applies_previous, started.clone());
        d.applies_started = started;
        d
    }

    /// The state the deltas taken so far add up to, for writing a fresh file that replaces
    /// them (a compaction). Call it right after [`Engine::take_persist_delta`], before
    /// anything else changes the engine: changes not yet taken would be saved without
    /// their outputs having been ordered after the save.
    pub fn persisted_state(&self) -> PersistedState<'_> {
        let mut unconfirmed: Vec<(&str, Option<Eid>, &str)> = self
            .applies_previous
            .iter()
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
            peers: self
                .peers
                .iter()
                .map(|(eid, p)| PeerMeta {
                    eid: *eid,
                    node: p.node,
                    stale_below: p.stale_below.iter().map(|(f, h)| (f.clone(), *h)).collect(),
                })
                .collect(),
            unconfirmed,
            items: Box::new(self.families.iter().flat_map(|(name, fs)| {
                fs.store
                    .iter_unordered()
                    .map(move |(id, entry)| (name.as_str(), id, entry))
            })),
        }
    }
}

/// Whether `item` belongs in a family of `mode` (`None`: not held here).
fn valid_in(mode: Option<Mode>, item: &ItemId) -> bool {
    match item.owner {
        None => mode == Some(Mode::Global),
        Some(_) => mode == Some(Mode::Unique),
    }
}

fn summary_range(store: &ItemStore, depth: u8, prefix: u64) -> SummaryRange {
    SummaryRange {
        depth,
        prefix,
        items: store
            .range(depth, prefix)
            .map(|(_, id, e)| SummaryItem {
                item: id.clone(),
                version: e.version,
                tombstone: e.is_tombstone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_push_is_sent_in_the_same_order_as_items_sort() {
        let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let owners = [
            None,
            Some(Eid([2, 0, 0, 0, 0, 1])),
            Some(Eid([1, 9, 9, 9, 9, 9])),
        ];
        let changes: Vec<Change> = (0..5000)
            .map(|_| {
                let r = next();
                // Long shared prefixes, keys that are prefixes of others, and short keys.
                let key = match r % 4 {
                    0 => format!("+1555000000{}", r % 1000),
                    1 => format!("+1555000000{}x", r % 100),
                    2 => format!("k{}", r % 50),
                    _ => "+1555000000".repeat(1 + (r % 3) as usize),
                };
                Change {
                    item: ItemId {
                        owner: owners[(r >> 20) as usize % 3],
                        key: key.into(),
                    },
                    entry: Entry {
                        version: Version::new(Hlc(r >> 8), Eid([0; 6])),
                        value: Some(r.to_string().into()),
                    },
                }
            })
            .collect();
        let mut expected = changes.clone();
        expected.sort_by(|a, b| a.item.cmp(&b.item));
        let mut got = changes;
        sort_by_item(&mut got);
        let ids = |v: &[Change]| v.iter().map(|c| c.item.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&expected));
        assert_eq!(got.len(), 5000);
    }
}
