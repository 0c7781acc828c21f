//! This node's replication loop. It owns the engine, the replica log, the link to the
//! other nodes and AstDB's access, all by value; one thread drives it turn by turn with
//! what the inbox holds (dialplan writes at once, every other writer through a read of
//! each family at its `sync_interval`, commands, the link's events). After a turn it
//! publishes a [`Status`] for the CLI. Nothing here calls Asterisk: the module gives it
//! its AstDB, link, log and clock, and the simulator gives it in-memory ones.
//!
//! Each group of engine calls ends in a flush: the engine's [`Batch`] is saved to the
//! replica log, then its outputs run in order (AstDB writes, sends, log lines).

pub mod db;
pub mod events;
pub mod inbox;
pub mod link;
pub(crate) mod mesh;
pub mod persist;
mod pieces;
pub mod pjsip;
mod reads;
pub mod redis;
mod repair;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::ClusterConfig;
use crate::eid::{looks_like_eid, Eid};
use crate::engine::family::{astdb_family, leading_parts};
use crate::engine::{
    Batch, CatchUp, CatchUpPhase, ChangeCount, Changed, Contents, Counters, DbOp, Engine, Mode,
    Output, Registry, SharedFamily, Version,
};
use db::{AstDb, PackedRows};
use events::{Event, EventPolicy, EventSink};
use inbox::{Command, Pending};
use link::{Link, LinkEvent, LinkStatus};
use persist::StateLog;
use reads::Reads;

/// After a turn with dialplan writes, how long the thread looks for more before it asks
/// to be woken (bounds the delay this adds to a write that arrives meanwhile).
pub const LINGER: Duration = Duration::from_micros(200);
/// The longest the thread sleeps between turns, whatever the deadlines say.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A large push waits while the link holds more than this many bytes for its peer...
pub const PUSH_BACKLOG: usize = 4 << 20;
/// ...and the loop looks again this soon.
pub const PUSH_POLL: Duration = Duration::from_millis(5);
/// The largest output buffer kept from one turn to the next.
const KEEP_OUTPUTS: usize = 65_536;
/// Distinct warnings remembered before the set starts afresh.
const MAX_WARNED: usize = 10_000;

/// Log levels of the lines the loop writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Notice,
    Warning,
    Error,
}

/// Where the loop's log lines go (Asterisk's logger in the module).
pub type Say = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// The loop's clocks: the wall clock the engine versions with, and a monotonic one in
/// µs for the read schedule.
pub trait Clock: Send {
    fn wall_ms(&self) -> u64;
    fn mono_us(&self) -> u64;
}

/// `t` as milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The system's clocks.
pub struct SystemClock {
    base: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            base: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        unix_ms(SystemTime::now())
    }

    fn mono_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

/// Sizes the loop works with; the simulator makes them small.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Outputs gathered before they are saved and executed within a turn. A turn may
    /// find a whole catch-up waiting (a million changes): taken in slices, AstDB starts
    /// receiving at once and the buffers stay small enough to be reused instead of being
    /// mapped afresh, page by page, for each turn. Large reads go to the engine in
    /// slices of this many rows.
    pub flush_outputs: usize,
    /// A family whose read takes this long (µs) is not read again while AstDB has
    /// committed nothing; cheaper ones keep their exact interval.
    pub costly_read_us: u64,
    /// How often AstDB's commit stamp is looked at (µs): when it moved, every shared
    /// family of at most `quick_read_max_keys` keys is read at once rather than at its
    /// `sync_interval`, so that a CLI, AMI or other module's write reaches the peers
    /// about as soon as AstDB commits it (within about a second).
    pub watch_us: u64,
    pub quick_read_max_keys: usize,
    /// A family the engine holds at least twice this many keys of, not following a run
    /// of local changes, is read in pieces of about this many rows to find whether it
    /// holds anything new; only then is it read whole. AstDB answers a read with a list
    /// of about 70 bytes a row, held until the read is worked through: a million-key
    /// family's whole read after a catch-up would add half of what the engine holds.
    pub read_piece_rows: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            flush_outputs: 16_384,
            costly_read_us: 5_000,
            watch_us: 100_000,
            quick_read_max_keys: 10_000,
            read_piece_rows: 32_768,
        }
    }
}

/// What the loop is given to work with.
pub struct Parts {
    pub engine: Engine,
    pub db: Box<dyn AstDb>,
    pub link: Box<dyn Link>,
    pub log: Box<dyn StateLog>,
    pub clock: Box<dyn Clock>,
    pub say: Say,
    /// Told the shared families' names whenever they change, before any of them is
    /// read (the PBX threads' filter of dialplan writes).
    pub shared: SharedNames,
    /// Where change, peer and catch-up events go.
    pub events: Box<dyn EventSink>,
    pub tuning: Tuning,
}

/// Where the loop announces the names of the shared families.
pub type SharedNames = Box<dyn Fn(BTreeSet<String>) + Send>;

/// What the CLI shows of the loop, published after each turn.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub counters: Counters,
    pub dialplan_writes: u64,
    pub family_reads: u64,
    pub reads_skipped: u64,
    /// Reads of large families made in pieces, and how many of them found something new.
    pub reads_in_pieces: (u64, u64),
    /// Per shared family, when the engine last saw a change (Unix ms).
    pub last_change_ms: BTreeMap<String, Option<u64>>,
    pub link: LinkStatus,
    /// The replica log's path and size.
    pub log: (String, u64),
}

/// What `database shared show key` shows: what the loop holds for one AstDB key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyInfo {
    /// The shared family covering the key, its mode, and the key within it.
    pub shared: Option<(String, Mode, String)>,
    /// Whose copy the AstDB family asked about holds (a unique family's).
    pub owner: Option<Eid>,
    /// The AstDB family that holds this copy (this node's own copy of a unique key is
    /// under the plain family name, another node's under `<EID>/family`).
    pub astdb_family: String,
    /// The version held for that item, with its origin's node number, and whether it
    /// is a tombstone (the key was deleted and the deletion is still remembered).
    pub held: Option<(Version, Option<u32>, bool)>,
    /// For a unique family: every node's copy of the key held here, with its node
    /// number, version and whether it is a tombstone.
    pub copies: Vec<(Eid, Option<u32>, Version, bool)>,
}

/// The loop's state between turns.
pub struct Node {
    engine: Engine,
    db: Box<dyn AstDb>,
    link: Box<dyn Link>,
    log: Box<dyn StateLog>,
    clock: Box<dyn Clock>,
    say: Say,
    shared: SharedNames,
    events: Box<dyn EventSink>,
    policy: EventPolicy,
    /// Changes executed in the current batch, published after it, with those only
    /// counted.
    changes: Vec<Changed>,
    counted: Vec<ChangeCount>,
    tuning: Tuning,
    /// The shared families as last given, and as the engine was last told.
    registry: Registry,
    told: BTreeMap<String, SharedFamily>,
    /// Families a refresh took out of `told`, to be told again without an event.
    refreshing: BTreeSet<String>,
    reads: Reads,
    /// The previous run crashed: AstDB may have lost its last second of writes, so
    /// before a family's first read AstDB is brought back to the saved replication
    /// state. Holds the families repaired so far.
    repaired: Option<BTreeSet<String>>,
    /// Warnings already logged: the engine repeats one at every read of a family that
    /// holds, say, a key it cannot share; the log says it once.
    warned: HashSet<String>,
    /// A batch whose save failed: it goes first, before any newer one (which confirms
    /// its applies, so it must not reach the disk ahead of them).
    unsaved: Option<Batch>,
    dialplan_writes: u64,
    /// AstDB's commit stamp as last watched, and when to look again (µs).
    watched: Option<(u32, u64)>,
    next_watch_us: u64,
    /// Some shared family is small enough to be watched (the thread then wakes for it).
    watching: bool,
    /// The link's last [`LinkEvent::Reached`] mark of this turn, told back once saved.
    reached: Option<u64>,
}

/// Splits a DB() argument "family/key" into the AstDB family and key, at the last '/',
/// so a nested shared family (`foo/sub`) is found by the engine.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let path = path.trim_matches('/');
    path.rsplit_once('/')
        .filter(|(f, k)| !f.is_empty() && !k.is_empty())
}

impl Node {
    /// The loop over `parts`; `crashed`: the previous run ended without unloading.
    pub fn new(parts: Parts, crashed: bool) -> Node {
        Node {
            engine: parts.engine,
            db: parts.db,
            link: parts.link,
            log: parts.log,
            clock: parts.clock,
            say: parts.say,
            shared: parts.shared,
            events: parts.events,
            policy: EventPolicy::default(),
            changes: Vec::new(),
            counted: Vec::new(),
            tuning: parts.tuning,
            registry: Registry::new(),
            told: BTreeMap::new(),
            refreshing: BTreeSet::new(),
            reads: Reads::default(),
            repaired: crashed.then(BTreeSet::new),
            warned: HashSet::new(),
            unsaved: None,
            dialplan_writes: 0,
            watched: None,
            next_watch_us: 0,
            watching: false,
            reached: None,
        }
    }

    /// The engine, for inspection (the simulator's checks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops the link once AstDB has every write handed to it; the log needs nothing
    /// more (every batch was saved).
    pub fn shutdown(mut self) {
        self.settle();
        if self.engine.pushing() {
            self.link.unsent();
        }
        self.link.shutdown();
    }

    /// Waits until AstDB has every write handed to it, and logs those that failed.
    fn settle(&mut self) {
        for why in self.db.settle() {
            (self.say)(Level::Error, &why);
        }
    }

    /// One turn: the commands, the link's events, dialplan writes and the clock, then
    /// the families due for a read. Returns how long the thread may sleep before the
    /// next turn if nothing arrives.
    pub fn turn(&mut self, pending: Pending) -> Duration {
        let now = self.clock.wall_ms();
        let at = self.clock.mono_us();
        for command in pending.commands {
            self.command(command, at);
        }

        // What the peers said, in order.
        for event in pending.events {
            match event {
                LinkEvent::PeerUp { node, eid } => {
                    self.engine.peer_up(eid, node, now);
                    let protocol = self.policy.enabled.then(|| self.protocol_of(node));
                    self.event(Event::PeerUp {
                        node,
                        eid,
                        protocol: protocol.flatten(),
                    });
                }
                LinkEvent::PeerDown { eid } => {
                    self.engine.peer_down(eid);
                    let node = self.engine.node_of(eid);
                    self.event(Event::PeerDown { node, eid });
                }
                LinkEvent::Refused {
                    peer,
                    node,
                    cause,
                    detail,
                } => self.event(Event::PeerRefused {
                    peer,
                    node,
                    cause,
                    detail,
                }),
                LinkEvent::Received { from, msg } => self.engine.receive(from, msg, now),
                LinkEvent::Encoded {
                    from,
                    node,
                    payload,
                    undecodable,
                } => match crate::engine::codec::decode(&payload) {
                    Ok(msg) => self.engine.receive(from, msg, now),
                    Err(why) => {
                        undecodable.add(1);
                        (self.say)(
                            Level::Warning,
                            &format!("node {node} sent a message that does not decode ({why:?}); it was dropped"),
                        );
                    }
                },
                LinkEvent::Reached(mark) => self.reached = Some(mark),
            }
            if self.engine.queued_outputs() >= self.tuning.flush_outputs {
                self.flush();
            }
        }

        // Registry changes, dialplan writes and the clock.
        self.sync_families(now, at);
        // The wrapper hands over the value it wrote, so AstDB (and its lock, which the
        // dialplan needs too) is not touched again. Should two channels race on one
        // key, the family's next read settles it.
        for (path, value) in pending.writes.iter() {
            let Some((family, key)) = split_path(path) else {
                continue;
            };
            self.dialplan_writes += 1;
            self.touch(family);
            self.engine.local_change(family, key, value, now);
            if self.engine.queued_outputs() >= self.tuning.flush_outputs {
                self.flush();
            }
        }
        self.pace_pushes();
        self.engine.tick(now);
        self.flush();
        if self.unsaved.is_none() {
            if let Some(mark) = self.reached.take() {
                self.link.saved(mark);
            }
        }

        // Then the families due for a read, one at a time: each read follows the
        // execution of everything the engine returned before it.
        if pending.overflowed {
            // Dialplan writes were dropped from the inbox: every family is read.
            self.reads.distrust_stamps();
        }
        self.watch_commits(at);
        let due = self.reads.due(&self.told, at, pending.overflowed);
        if !due.is_empty() {
            let stamp = self.db.committed_stamp();
            for name in due {
                self.read_family(&name, stamp);
            }
        }
        self.sleep()
    }

    fn command(&mut self, command: Command, at: u64) {
        match command {
            Command::Families(registry) => self.registry = registry,
            Command::Config(cfg) => self.configure(&cfg),
            Command::Refresh(names) => {
                for name in names {
                    self.reads.now(&name, at);
                    self.link.refresh(&name);
                    // Telling the engine again makes it pull the family from its peers.
                    if self.told.remove(&name).is_some() {
                        self.refreshing.insert(name);
                    }
                }
            }
            Command::Inspect { family, key, reply } => {
                // The asker reads AstDB next: it must hold what the engine says.
                self.settle();
                let _ = reply.send(self.inspect(&family, &key));
            }
        }
    }

    fn configure(&mut self, cfg: &ClusterConfig) {
        let eid = self.engine.config().local;
        self.policy = EventPolicy {
            enabled: cfg.general.events,
            batch_limit: cfg.general.event_batch_limit,
        };
        self.engine
            .set_events(cfg.general.events, cfg.general.event_batch_limit);
        self.link.configure(cfg, eid);
    }

    /// Publishes `event` unless events are off.
    fn event(&mut self, event: Event) {
        if self.policy.enabled {
            self.events.publish(event);
        }
    }

    /// The node number of `eid`, from the engine's peers or else from the link.
    fn node_number(&self, eid: Eid) -> Option<u32> {
        self.engine.node_of(eid).or_else(|| self.link.node_of(eid))
    }

    /// The protocol version in use with `node`, as the link says.
    fn protocol_of(&self, node: u32) -> Option<u8> {
        self.link
            .status()
            .peers
            .iter()
            .find(|p| p.node == node)
            .and_then(|p| p.protocol)
    }

    /// What the loop holds for AstDB family `family` (possibly `<EID>/family` for
    /// another node's copy), key `key`.
    pub fn inspect(&self, family: &str, key: &str) -> KeyInfo {
        let family = family.trim_matches('/');
        let (owner, rest) = match family.split_once('/') {
            Some((first, rest)) if looks_like_eid(first) => (first.parse::<Eid>().ok(), rest),
            _ => (None, family),
        };
        let Some((name, below)) = leading_parts(rest)
            .filter(|(part, _)| self.told.contains_key(*part))
            .last()
        else {
            return KeyInfo::default();
        };
        let mode = self.told[name].mode;
        let key = if below.is_empty() {
            key.to_string()
        } else {
            format!("{below}/{key}")
        };
        let local = self.engine.config().local;
        let owner = match mode {
            Mode::Global => None,
            Mode::Unique => Some(owner.unwrap_or(local)),
        };
        let held = self.engine.entry(name, owner, &key).map(|e| {
            (
                e.version,
                self.node_number(e.version.origin),
                e.is_tombstone(),
            )
        });
        let copies = match mode {
            Mode::Global => Vec::new(),
            Mode::Unique => self
                .engine
                .copies(name, &key)
                .into_iter()
                .map(|(o, e)| (o, self.node_number(o), e.version, e.is_tombstone()))
                .collect(),
        };
        KeyInfo {
            shared: Some((name.to_string(), mode, key)),
            owner,
            astdb_family: astdb_family(rest, owner, local),
            held,
            copies,
        }
    }

    /// The small shared families (read at once when AstDB commits).
    fn small_families(&self) -> Vec<String> {
        self.told
            .keys()
            .filter(|name| {
                self.engine
                    .family_stats(name)
                    .is_none_or(|s| s.keys <= self.tuning.quick_read_max_keys)
            })
            .cloned()
            .collect()
    }

    /// Looks at AstDB's commit stamp when it is time: if it moved, the small families
    /// are read in this turn. An unknown stamp (no file, a WAL journal) leaves them to
    /// their interval.
    fn watch_commits(&mut self, at: u64) {
        if at < self.next_watch_us || self.told.is_empty() {
            return;
        }
        self.next_watch_us = at + self.tuning.watch_us;
        let small = self.small_families();
        self.watching = !small.is_empty();
        if small.is_empty() {
            return;
        }
        let stamp = self.db.committed_stamp();
        let before = std::mem::replace(&mut self.watched, stamp);
        if stamp.is_some() && before.is_some() && stamp != before {
            for name in small {
                self.reads.soon(&name, at);
            }
        }
    }

    /// Holds back the slices of a large push to a peer whose link has not yet sent
    /// [`PUSH_BACKLOG`] bytes of what it was given: a catch-up then goes at the pace the
    /// peer takes it, and waits in the store rather than as messages in this node's
    /// memory (or the peer's).
    fn pace_pushes(&mut self) {
        let held: BTreeSet<Eid> = if self.engine.pushing() {
            self.engine
                .pushing_to()
                .into_iter()
                .filter(|&peer| self.link.backlog(peer) > PUSH_BACKLOG)
                .collect()
        } else {
            BTreeSet::new()
        };
        self.engine.hold_pushes(held);
    }

    /// How long the thread may sleep: until the engine's next deadline or the next
    /// read, at most [`MAX_SLEEP`] ([`PUSH_POLL`] while a push is held back).
    fn sleep(&self) -> Duration {
        let now = self.clock.wall_ms();
        let at = self.clock.mono_us();
        let engine = self
            .engine
            .next_deadline()
            .map(|t| Duration::from_millis(t.saturating_sub(now)));
        let read = self
            .reads
            .next_due(&self.told)
            .map(|t| Duration::from_micros(t.saturating_sub(at)));
        let watch = self
            .watching
            .then(|| Duration::from_micros(self.next_watch_us.saturating_sub(at)));
        let held = self.engine.pushes_held().then_some(PUSH_POLL);
        [engine, read, watch, held]
            .into_iter()
            .flatten()
            .fold(MAX_SLEEP, Duration::min)
    }

    /// Tells the engine about families shared or unshared since the last turn, and
    /// announces the names when they changed.
    fn sync_families(&mut self, now: u64, at: u64) {
        let gone: Vec<String> = self
            .told
            .keys()
            .filter(|n| self.registry.get(n).is_none())
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for name in gone {
            self.engine.unshare(&name);
            self.told.remove(&name);
            self.reads.drop_family(&name);
            self.event(Event::FamilyUnshared { family: name });
        }
        let fresh: Vec<SharedFamily> = self
            .registry
            .iter()
            .filter(|f| self.told.get(&f.name) != Some(f))
            .cloned()
            .collect();
        for family in fresh {
            // A newly shared family is read at once, and handed over whole.
            self.reads.now(&family.name, at);
            let before = self.told.insert(family.name.clone(), family.clone());
            // A refresh tells the engine again; the family was shared all along.
            let refreshed = self.refreshing.remove(&family.name);
            if !refreshed && before.is_none_or(|b| b.mode != family.mode) {
                self.event(Event::FamilyShared {
                    family: family.name.clone(),
                    mode: family.mode,
                });
            }
            self.engine.share(family, now);
            changed = true;
        }
        if changed {
            let names: BTreeSet<String> = self.told.keys().cloned().collect();
            self.link.shared(&names);
            (self.shared)(names);
        }
    }

    /// Notes that the shared family covering AstDB family `family` changed since its
    /// last read (its next read is then handed to the engine whatever its hash).
    fn touch(&mut self, family: &str) {
        if let Some(shared) = self.registry.covering(family) {
            self.reads.touch(&shared.name);
        }
    }

    /// Saves the engine's batch, then executes its outputs in order. A batch whose save
    /// failed earlier goes first: the newer one confirms its applies, so it must not
    /// reach the disk ahead of them.
    fn flush(&mut self) {
        if let Some(batch) = self.unsaved.take() {
            let Some(outputs) = self.save(batch) else {
                return;
            };
            self.execute(outputs);
        }
        let batch = self.engine.take_batch();
        let saved = !batch.save.is_empty();
        let Some(outputs) = self.save(batch) else {
            return;
        };
        // Here the engine holds exactly what the log adds up to.
        if saved && self.log.wants_compaction() {
            if let Err(why) = self.log.compact(self.engine.persisted_state()) {
                (self.say)(Level::Warning, &why);
            }
        }
        self.execute(outputs);
    }

    /// Saves `batch`'s state; its outputs, or None when the save failed: outputs whose
    /// state is not saved could move a version backwards after a crash, so they wait
    /// with it for the next flush.
    fn save(&mut self, batch: Batch) -> Option<Vec<Output>> {
        if !batch.save.is_empty() {
            // The save confirms the applies of the batch before the last one executed:
            // AstDB must have them. The last one's may still be under way, so that
            // AstDB's writer has work while this is saved.
            for why in self.db.settle_before_last() {
                (self.say)(Level::Error, &why);
            }
            if let Err(why) = self.log.save(&batch.save) {
                (self.say)(
                    Level::Error,
                    &format!("{why}; changes wait until it can be saved"),
                );
                self.unsaved = Some(batch);
                return None;
            }
        }
        Some(batch.outputs)
    }

    /// Executes the outputs of a saved batch, in order.
    fn execute(&mut self, mut outputs: Vec<Output>) {
        // The AstDB families applied to (a batch usually holds one), and how many
        // changes each.
        let mut applied: Vec<(&str, u64)> = Vec::new();
        for o in &outputs {
            if let Output::Apply(DbOp::Put { family, .. } | DbOp::Delete { family, .. }) = o {
                match applied.iter_mut().find(|(f, _)| *f == &**family) {
                    Some((_, count)) => *count += 1,
                    None => applied.push((family, 1)),
                }
            }
        }
        let at = self.clock.mono_us();
        for (family, count) in applied {
            if let Some(shared) = self.registry.covering(family) {
                self.reads.applied(&shared.name, count, at);
            }
        }
        for output in outputs.drain(..) {
            match output {
                Output::Apply(DbOp::Put { family, key, value }) => {
                    if let Err(why) = self.db.apply_put(&family, &key, &value) {
                        (self.say)(Level::Error, &why);
                    }
                }
                Output::Apply(DbOp::Delete { family, key }) => {
                    self.db.apply_del(&family, &key);
                }
                Output::Send { to, msg } => self.link.send(to, &msg),
                Output::Warn(warning) => {
                    let text = warning.to_string();
                    if self.first_time(&text) {
                        (self.say)(Level::Warning, &text);
                    }
                }
                Output::Changed(change) => self.changes.push(change),
                Output::ChangesCounted(count) => self.counted.push(count),
                Output::CatchUp(catch_up) => {
                    // The changes before it are told first.
                    self.publish_changes();
                    self.catch_up_event(catch_up);
                }
            }
        }
        self.db.applies_made();
        self.publish_changes();
        // The emptied buffer serves the next batch: a fresh one of a catch-up's size
        // would be mapped and faulted in page by page each time.
        if outputs.capacity() <= KEEP_OUTPUTS {
            self.engine.recycle(outputs);
        }
    }

    /// The events for the changes executed since the last call.
    fn publish_changes(&mut self) {
        if self.changes.is_empty() && self.counted.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.changes);
        let counted = std::mem::take(&mut self.counted);
        if !self.policy.enabled {
            return;
        }
        let told = &self.told;
        let engine = &self.engine;
        let key_events = |family: &str| told.get(family).is_none_or(|f| f.key_events);
        let node_of = |eid: Eid| self.node_number(eid);
        for event in events::change_events(
            changes,
            counted,
            self.policy.batch_limit,
            &key_events,
            &node_of,
            engine.config().local,
        ) {
            self.events.publish(event);
        }
    }

    fn catch_up_event(&mut self, c: CatchUp) {
        let event = match c.phase {
            CatchUpPhase::Started => Event::CatchupStart {
                shared_family: c.family,
                node: c.node,
                eid: c.peer,
            },
            CatchUpPhase::Finished {
                received,
                deleted,
                duration_ms,
                ended,
            } => Event::CatchupEnd {
                shared_family: c.family,
                node: c.node,
                eid: c.peer,
                received,
                deleted,
                duration_ms,
                ended,
            },
        };
        self.event(event);
    }

    /// Whether `text` is new (and so worth logging).
    fn first_time(&mut self, text: &str) -> bool {
        if self.warned.contains(text) {
            return false;
        }
        if self.warned.len() >= MAX_WARNED {
            self.warned.clear();
        }
        self.warned.insert(text.to_string())
    }

    /// Reads family `name` from AstDB and hands it to the engine if it may hold
    /// something new. `stamp`: AstDB's commit stamp taken before this turn's reads.
    fn read_family(&mut self, name: &str, stamp: Option<(u32, u64)>) {
        if let Some(repaired) = &mut self.repaired {
            if repaired.insert(name.to_string()) {
                repair::repair_family(name, &self.engine, self.db.as_mut(), &self.say);
            }
        }
        // Nothing to read while AstDB has committed nothing since a read found nothing.
        if self.reads.unchanged_since(name, stamp) {
            return;
        }
        let owner = self.engine.own_owner(name);
        let began = self.clock.mono_us();
        // A large family is first looked at in pieces; read whole only if they hold
        // something new.
        let pieced = self.read_in_pieces(name, owner).map(|read| {
            self.reads.in_pieces += 1;
            (read, self.clock.mono_us().saturating_sub(began))
        });
        if let Some((read, took)) = pieced {
            let holds = self.engine.holds_contents(name, read);
            if !self.reads.is_new(name, read, holds) {
                self.found_nothing(name, took, stamp);
                return;
            }
            self.reads.pieces_new += 1;
        }
        let rows = self.db.read(name);
        let mut read = Contents::default();
        rows.each(&mut |key, value| read.add(owner, key, value));
        let took = match pieced {
            Some((_, took)) => took,
            None => {
                let took = self.clock.mono_us().saturating_sub(began);
                let holds = self.engine.holds_contents(name, read);
                if !self.reads.is_new(name, read, holds) {
                    drop(rows);
                    self.found_nothing(name, took, stamp);
                    return;
                }
                took
            }
        };
        let rows = {
            let read = rows;
            read.packed()
        };
        self.hand_over_read(name, rows, read, took);
    }

    /// A read of family `name` that took `took` µs found nothing new: if it was costly,
    /// the next ones are skipped while AstDB's commit `stamp` holds.
    fn found_nothing(&mut self, name: &str, took: u64, stamp: Option<(u32, u64)>) {
        if took >= self.tuning.costly_read_us {
            self.reads.found_nothing(name, stamp);
        }
        self.flush();
    }

    /// What family `name` holds in AstDB, read in pieces (see [`Tuning::read_piece_rows`]),
    /// if it is large enough and not following local changes (whose reads mostly find
    /// something, and would be made twice).
    fn read_in_pieces(&mut self, name: &str, owner: Option<Eid>) -> Option<Contents> {
        let max_rows = self.tuning.read_piece_rows.max(1);
        if self.reads.is_following(name) {
            return None;
        }
        let every = (max_rows / 64).max(1);
        let (held, sample) = self.engine.key_sample(name, every)?;
        if held < max_rows.saturating_mul(2) {
            return None;
        }
        let pieces = pieces::pieces(&sample, every, max_rows);
        if pieces.len() > pieces::MAX_PIECES {
            return None;
        }
        let mut read = Contents::default();
        for piece in pieces {
            match piece {
                pieces::Piece::Under(prefix) => {
                    let rows = self.db.read_under(name, &prefix);
                    rows.each(&mut |key, value| read.add(owner, key, value));
                }
                pieces::Piece::Exact(key) => {
                    if let Some(value) = self.db.read_exact(name, &key) {
                        read.add(owner, &String::from_utf8_lossy(&key), &value);
                    }
                }
            }
        }
        Some(read)
    }

    /// Hands a read of family `name` that holds something new to the engine. `read`:
    /// what it holds; `took`: how long the read took (µs).
    fn hand_over_read(&mut self, name: &str, rows: PackedRows, read: Contents, took: u64) {
        let before = self.engine.counters().local_changes;
        // A large read goes to the engine a slice at a time first, each slice's changes
        // saved and sent before the next is compared (a bulk import then starts reaching
        // the peers at once); the whole read follows, for the keys that are gone, unless
        // the engine then holds exactly what was read.
        let slice = self.tuning.flush_outputs.max(1);
        let sliced = rows.len() > slice;
        if sliced {
            for start in (0..rows.len()).step_by(slice) {
                let part = rows.to_vec(start..rows.len().min(start + slice));
                let now = self.clock.wall_ms();
                self.engine.local_rows(name, &part, now);
                self.flush();
            }
        }
        if !(sliced && self.engine.holds_contents(name, read)) {
            let now = self.clock.wall_ms();
            let all = rows.to_vec(0..rows.len());
            drop(rows);
            self.engine.local_snapshot(name, all, now);
        }
        if self.engine.counters().local_changes > before {
            let at = self.clock.mono_us();
            self.reads.follow_up(name, at, took);
        }
        self.flush();
    }

    /// What the CLI shows of the loop now.
    pub fn status(&self) -> Status {
        Status {
            counters: self.engine.counters().clone(),
            dialplan_writes: self.dialplan_writes,
            family_reads: self.reads.done,
            reads_skipped: self.reads.skipped,
            reads_in_pieces: (self.reads.in_pieces, self.reads.pieces_new),
            last_change_ms: self
                .told
                .keys()
                .map(|name| {
                    let last = self
                        .engine
                        .family_stats(name)
                        .and_then(|s| s.last_change_ms);
                    (name.clone(), last)
                })
                .collect(),
            link: self.link.status(),
            log: self.log.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn dialplan_paths_split_at_the_last_slash() {
        assert_eq!(
            split_path("blacklist/5551234"),
            Some(("blacklist", "5551234"))
        );
        assert_eq!(split_path("foo/sub/key"), Some(("foo/sub", "key")));
        assert_eq!(split_path("/foo/key/"), Some(("foo", "key")));
        assert_eq!(split_path("nokey"), None);
        assert_eq!(split_path("/key"), None);
    }
}
