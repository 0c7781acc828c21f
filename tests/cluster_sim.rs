//! Deterministic simulation of a cluster running the module's real replication loop.
//!
//! Each node is a `node::Node`, the same loop the module's thread drives, with an
//! in-memory AstDB, a simulated network behind the link seam, its replica log on disk
//! (the module's own `metadata::replica` code) and a simulated clock. The in-memory AstDB
//! behaves as Asterisk's: it commits about once a second, a commit changes its stamp,
//! and a crash of its node loses what it had not committed.
//!
//! Each scenario, drawn from a seed: 3–7 nodes with skewed (and sometimes stepping back)
//! clocks write and delete keys of a global and a unique family, through the dialplan
//! (handed to the loop's inbox at once) or as any other writer (found by the family's
//! reads, which the loop skips while AstDB has committed nothing); messages go through
//! the real codec and are lost, duplicated, reordered and delayed; partitions come and
//! heal; nodes crash (between turns, or during a turn before its state is saved or while
//! its outputs run) and restart from their replica log, repairing AstDB's lost second.
//! Each node turns when its inbox holds something or its own deadline comes. After
//! healing and a quiet period every node must hold, for every global key, the value that
//! last-writer-wins by version gives over every saved write (an oracle); deleted keys stay
//! deleted; unique copies equal their origin's own data; and all tombstones are collected.
//!
//! ```text
//! cargo test --release --test cluster_sim                          # CI: SIM_SEEDS default
//! SIM_SEEDS=100000 cargo test --release --test cluster_sim -- --nocapture   # long run
//! SIM_SEED=1234 cargo test --release --test cluster_sim -- --nocapture      # replay one seed
//! ```
//! `SIM_START` moves the first seed of a run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use res_astdb_cluster::config::ClusterConfig;
use res_astdb_cluster::eid::Eid;
use res_astdb_cluster::engine::codec::{decode, encode};
use res_astdb_cluster::engine::{
    merge, Engine, EngineConfig, Entry, Message, Mode, PersistDelta, PersistedState, Registry,
    RestoredState, SharedFamily,
};
use res_astdb_cluster::metadata::replica::ReplicaLog;
use res_astdb_cluster::node::db::{AstDb, Rows};
use res_astdb_cluster::node::events::{Event, EventSink};
use res_astdb_cluster::node::inbox::{Command, Pending};
use res_astdb_cluster::node::link::{Link, LinkEvent, LinkStatus};
use res_astdb_cluster::node::persist::StateLog;
use res_astdb_cluster::node::{Clock, Level, Node, Parts, Say, Tuning, PUSH_BACKLOG};

const BASE_MS: u64 = 1_700_000_000_000;
const GLOBAL: &str = "blacklist";
const UNIQUE: &str = "registrar";
/// AstDB commits about once a second.
const COMMIT_MS: u64 = 1000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A crash in the making: after `ops_left` more AstDB writes, sends or saves, the node is
/// dead and does nothing more; the simulator then drops it.
#[derive(Default)]
struct Doom {
    ops_left: Mutex<Option<u32>>,
    dead: AtomicBool,
}

impl Doom {
    /// Whether the node may still act; counts the act.
    fn act(&self) -> bool {
        if self.dead.load(Ordering::Relaxed) {
            return false;
        }
        let mut left = lock(&self.ops_left);
        match left.as_mut() {
            Some(0) => {
                self.dead.store(true, Ordering::Relaxed);
                false
            }
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }
}

/// A node's AstDB: `/family/key` -> value, what it has committed, and its commit stamp.
#[derive(Default)]
struct DbState {
    live: BTreeMap<String, String>,
    committed: BTreeMap<String, String>,
    /// Replicated writes handed over and not yet made: family, key, value (None: a
    /// deletion); and how many were made.
    waiting: VecDeque<(String, String, Option<String>)>,
    made: u64,
    stamp: u32,
    dirty: bool,
}

impl DbState {
    fn commit(&mut self) {
        if self.dirty {
            self.committed = self.live.clone();
            self.stamp += 1;
            self.dirty = false;
        }
    }

    /// The process died: what was not committed is gone, and so are the writes waiting.
    fn crash(&mut self) {
        self.live = self.committed.clone();
        self.dirty = false;
        self.made += self.waiting.len() as u64;
        self.waiting.clear();
    }

    fn handed(&self) -> u64 {
        self.made + self.waiting.len() as u64
    }

    /// Makes the waiting writes until `count` are made in all (`doom` may end the node
    /// first).
    fn run_until(&mut self, count: u64, doom: &Doom) {
        while self.made < count {
            let Some((family, key, value)) = self.waiting.pop_front() else {
                break;
            };
            self.made += 1;
            if doom.act() {
                self.set(&family, &key, value.as_deref());
            }
        }
    }

    fn set(&mut self, family: &str, key: &str, value: Option<&str>) {
        let path = format!("/{family}/{key}");
        match value {
            Some(v) => {
                self.live.insert(path, v.to_string());
            }
            None => {
                self.live.remove(&path);
            }
        }
        self.dirty = true;
    }

    /// The rows of `family` (keys relative to it), as AstDB's prefix read gives them.
    fn family(&self, family: &str) -> BTreeMap<String, String> {
        let prefix = format!("/{family}/");
        self.live
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k[prefix.len()..].to_string(), v.clone()))
            .collect()
    }
}

/// AstDB as the module's loop sees it. Replicated writes wait in the node's
/// [`DbState`], in order, as for the module's writer thread: they are made between turns
/// (the simulation moves that thread on) or when a call needs them done; a crash loses
/// those still waiting.
struct SimDb {
    state: Arc<Mutex<DbState>>,
    doom: Arc<Doom>,
    /// How many had been handed over at the last two `applies_made` calls (the older
    /// first).
    marks: [u64; 2],
}

impl SimDb {
    fn new(state: Arc<Mutex<DbState>>, doom: Arc<Doom>) -> SimDb {
        let handed = lock(&state).handed();
        SimDb {
            state,
            doom,
            marks: [handed; 2],
        }
    }

    fn run_all(&mut self) {
        lock(&self.state).run_until(u64::MAX, &self.doom);
    }
}

impl AstDb for SimDb {
    fn read(&mut self, family: &str) -> Box<dyn Rows + '_> {
        self.run_all();
        let rows: Vec<(String, String)> = lock(&self.state).family(family).into_iter().collect();
        Box::new(rows)
    }

    fn read_under(&mut self, family: &str, prefix: &[u8]) -> Box<dyn Rows + '_> {
        self.run_all();
        let base = format!("/{family}/");
        // Where to start looking: the prefix up to where it stops being UTF-8 (it may end
        // inside a character).
        let whole = std::str::from_utf8(prefix)
            .map_or_else(|e| &prefix[..e.valid_up_to()], |s| s.as_bytes());
        let start = format!("{base}{}", String::from_utf8_lossy(whole));
        let rows: Vec<(String, String)> = lock(&self.state)
            .live
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .filter_map(|(k, v)| {
                let below = &k[base.len()..];
                (below.len() > prefix.len() && below.as_bytes().starts_with(prefix))
                    .then(|| (below.to_string(), v.clone()))
            })
            .collect();
        Box::new(rows)
    }

    fn read_exact(&mut self, family: &str, key: &[u8]) -> Option<String> {
        self.run_all();
        let key = std::str::from_utf8(key).ok()?;
        lock(&self.state)
            .live
            .get(&format!("/{family}/{key}"))
            .cloned()
    }

    fn put(&mut self, family: &str, key: &str, value: &str) -> Result<(), String> {
        self.run_all();
        if self.doom.act() {
            lock(&self.state).set(family, key, Some(value));
        }
        Ok(())
    }

    fn del(&mut self, family: &str, key: &str) -> bool {
        self.run_all();
        if !self.doom.act() {
            return false;
        }
        let mut db = lock(&self.state);
        let had = db.live.contains_key(&format!("/{family}/{key}"));
        db.set(family, key, None);
        had
    }

    fn committed_stamp(&mut self) -> Option<(u32, u64)> {
        Some((lock(&self.state).stamp, 0))
    }

    fn apply_put(&mut self, family: &str, key: &str, value: &str) -> Result<(), String> {
        lock(&self.state).waiting.push_back((
            family.to_string(),
            key.to_string(),
            Some(value.to_string()),
        ));
        Ok(())
    }

    fn apply_del(&mut self, family: &str, key: &str) {
        lock(&self.state)
            .waiting
            .push_back((family.to_string(), key.to_string(), None));
    }

    fn applies_made(&mut self) {
        self.marks = [self.marks[1], lock(&self.state).handed()];
    }

    fn settle(&mut self) -> Vec<String> {
        self.run_all();
        Vec::new()
    }

    fn settle_before_last(&mut self) -> Vec<String> {
        lock(&self.state).run_until(self.marks[0], &self.doom);
        Vec::new()
    }
}

/// Messages the loop sent, for the simulated network to carry.
struct SimLink {
    sent: Arc<Mutex<Vec<(Eid, Message)>>>,
    doom: Arc<Doom>,
    /// The link says it still holds this much for every peer (large pushes wait).
    backlog: Arc<AtomicUsize>,
}

impl Link for SimLink {
    fn configure(&mut self, _cfg: &ClusterConfig, _eid: Eid) {}

    fn send(&mut self, to: Eid, msg: &Message) {
        if self.doom.act() {
            lock(&self.sent).push((to, msg.clone()));
        }
    }

    fn status(&self) -> LinkStatus {
        LinkStatus::default()
    }

    fn shutdown(&mut self) {}

    fn backlog(&self, _to: Eid) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

enum Disk {
    /// A disk that survives restarts untouched: the log stays open.
    Kept(PathBuf, Option<ReplicaLog>),
    /// A crash closes the log; the restart opens and reads the file again.
    Reopened(PathBuf, Option<ReplicaLog>),
}

impl Disk {
    /// The node's replica log; `floor`: compact once this many bytes follow the snapshot.
    fn store(&mut self, floor: u64) -> &mut ReplicaLog {
        let (Disk::Kept(path, s) | Disk::Reopened(path, s)) = self;
        s.get_or_insert_with(|| {
            let (mut log, _, notes) = ReplicaLog::open(path).expect("open log");
            assert_eq!(notes.dropped_tail, 0, "every record was written whole");
            log.set_compaction_floor(floor);
            log
        })
    }

    fn crash(&mut self) {
        if let Disk::Reopened(_, s) = self {
            *s = None;
        }
    }
}

/// The replica log, recording every global write this node saves into the oracle.
struct SimLog {
    disk: Arc<Mutex<Disk>>,
    floor: u64,
    me: Eid,
    oracle: Arc<Mutex<BTreeMap<String, Entry>>>,
    doom: Arc<Doom>,
}

impl StateLog for SimLog {
    fn save(&mut self, delta: &PersistDelta) -> Result<(), String> {
        if !self.doom.act() {
            return Err("the node crashed before saving".into());
        }
        lock(&self.disk)
            .store(self.floor)
            .write(delta)
            .expect("delta is written");
        let mut oracle = lock(&self.oracle);
        for d in &delta.items {
            if &*d.item.family != GLOBAL {
                continue;
            }
            if let Some(s) = &d.state {
                if s.version.origin == self.me {
                    let e = s.to_entry();
                    let merged = match oracle.remove(&*d.item.key) {
                        Some(c) => merge(c, e),
                        None => e,
                    };
                    oracle.insert(d.item.key.to_string(), merged);
                }
            }
        }
        Ok(())
    }

    fn wants_compaction(&self) -> bool {
        lock(&self.disk).store(self.floor).wants_compaction()
    }

    fn compact(&mut self, state: PersistedState<'_>) -> Result<(), String> {
        let mut disk = lock(&self.disk);
        let log = disk.store(self.floor);
        let before = log.load().expect("log reads");
        log.compact(state).expect("log is compacted");
        let after = log.load().expect("compacted log reads");
        check_compaction(before, after);
        Ok(())
    }

    fn describe(&self) -> (String, u64) {
        ("sim".into(), 0)
    }
}

/// The simulated time, and a node's clock offset from it.
struct SimClock {
    t: Arc<AtomicU64>,
    offset: Arc<AtomicI64>,
}

impl Clock for SimClock {
    fn wall_ms(&self) -> u64 {
        (BASE_MS as i64
            + self.t.load(Ordering::Relaxed) as i64
            + self.offset.load(Ordering::Relaxed)) as u64
    }

    fn mono_us(&self) -> u64 {
        self.t.load(Ordering::Relaxed) * 1000
    }
}

/// What the nodes' loops logged, for the checks that the seeds exercise what they
/// should.
#[derive(Default)]
struct Heard {
    repairs: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Key change and summary events, and finished catch-ups, over all nodes.
    change_events: AtomicU64,
    catch_ups: AtomicU64,
}

/// A node's events: a catch-up with a peer must start before it ends, and not start
/// again while open.
struct SimEvents {
    node: usize,
    open: BTreeSet<(String, u32)>,
    heard: Arc<Heard>,
}

impl EventSink for SimEvents {
    fn publish(&mut self, event: Event) {
        let wrong = match &event {
            Event::KeyChange { .. } | Event::ChangeSummary { .. } => {
                self.heard.change_events.fetch_add(1, Ordering::Relaxed);
                None
            }
            Event::CatchupStart {
                shared_family,
                node,
                ..
            } => (!self.open.insert((shared_family.clone(), *node))).then_some("started twice"),
            Event::CatchupEnd {
                shared_family,
                node,
                ..
            } => {
                self.heard.catch_ups.fetch_add(1, Ordering::Relaxed);
                (!self.open.remove(&(shared_family.clone(), *node)))
                    .then_some("ended without starting")
            }
            _ => None,
        };
        if let Some(wrong) = wrong {
            lock(&self.heard.errors)
                .push(format!("node {}: a catch-up {wrong}: {event:?}", self.node));
        }
    }
}

struct SimNode {
    eid: Eid,
    number: u32,
    node: Option<Node>,
    db: Arc<Mutex<DbState>>,
    disk: Arc<Mutex<Disk>>,
    doom: Arc<Doom>,
    sent: Arc<Mutex<Vec<(Eid, Message)>>>,
    offset: Arc<AtomicI64>,
    /// What its link says it holds back (see `SimLink::backlog`).
    backlog: Arc<AtomicUsize>,
    pending: Pending,
    wake_at: u64,
    next_commit: u64,
    restart_at: u64,
    believed_up: BTreeSet<usize>,
    /// The next start follows a crash.
    crashed: bool,
}

struct Flight {
    at: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
    /// What was encoded, to check the round trip at delivery.
    sent: Message,
}

/// Totals over a run, to check the seeds exercise the loop's delicate parts.
#[derive(Default, Clone, Copy)]
struct Exercised {
    reads_skipped: u64,
    repairs: u64,
    crashes_mid_turn: u64,
}

struct Sim {
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    net: Vec<Flight>,
    cut: BTreeSet<(usize, usize)>,
    heal_at: u64,
    t: Arc<AtomicU64>,
    loss: f64,
    dup: f64,
    max_delay: u64,
    keys: usize,
    oracle: Arc<Mutex<BTreeMap<String, Entry>>>,
    cfg_template: EngineConfig,
    tuning: Tuning,
    compact_floor: u64,
    heard: Arc<Heard>,
    exercised: Exercised,
    _dir: tempfile::TempDir,
}

fn family(name: &str, mode: Mode) -> SharedFamily {
    let mut f = SharedFamily::from_dialplan(name, mode);
    f.sync_interval_ms = 1000;
    f
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.random_range(3..=7);
        let reopen = seed.is_multiple_of(4);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = EngineConfig::new(Eid::default(), 0);
        // Clocks stay within 1.8 s of each other (offsets below), under the tolerance.
        cfg.max_clock_skew_ms = 2_000;
        cfg.max_message_age_ms = 3_000;
        cfg.batch_max_changes = rng.random_range(1..=64);
        // Small enough that catch-ups and healed splits go through queued pushes.
        cfg.push_slice = rng.random_range(1..=200);
        let tuning = Tuning {
            // Small flushes, so that reads go in slices and turns flush mid-way.
            flush_outputs: rng.random_range(1..=64),
            // Reads take no time here: every read that finds nothing new lets the next
            // ones be skipped while AstDB commits nothing.
            costly_read_us: 0,
            watch_us: rng.random_range(50_000..=500_000),
            quick_read_max_keys: rng.random_range(0..=100),
            // Small pieces, so that large families are read in pieces.
            read_piece_rows: rng.random_range(1..=16),
        };
        cfg.events = rng.random_bool(0.5);
        let nodes = (0..n)
            .map(|i| {
                let path = dir.path().join(format!("node{i}.replica"));
                let disk = if reopen {
                    Disk::Reopened(path, None)
                } else {
                    Disk::Kept(path, None)
                };
                SimNode {
                    // EIDs in a random order so that ties are not won by node index.
                    eid: Eid([2, 0, 0, 0, rng.random_range(0..=255u8), i as u8]),
                    number: i as u32 + 1,
                    node: None,
                    db: Arc::default(),
                    disk: Arc::new(Mutex::new(disk)),
                    doom: Arc::default(),
                    sent: Arc::default(),
                    offset: Arc::new(AtomicI64::new(rng.random_range(-800..=800))),
                    backlog: Arc::default(),
                    pending: Pending::default(),
                    wake_at: 0,
                    next_commit: rng.random_range(0..COMMIT_MS),
                    restart_at: 0,
                    believed_up: BTreeSet::new(),
                    crashed: false,
                }
            })
            .collect();
        let compact_floor = [512, 4096, 65536][rng.random_range(0..3)];
        let mut sim = Sim {
            loss: [0.0, 0.05, 0.2][rng.random_range(0..3)],
            dup: [0.0, 0.05, 0.2][rng.random_range(0..3)],
            max_delay: [5, 50, 400][rng.random_range(0..3)],
            keys: rng.random_range(3..=25),
            rng,
            nodes,
            net: Vec::new(),
            cut: BTreeSet::new(),
            heal_at: 0,
            t: Arc::default(),
            oracle: Arc::default(),
            cfg_template: cfg,
            tuning,
            compact_floor,
            heard: Arc::default(),
            exercised: Exercised::default(),
            _dir: dir,
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn t(&self) -> u64 {
        self.t.load(Ordering::Relaxed)
    }

    fn start(&mut self, i: usize) {
        let mut cfg = self.cfg_template.clone();
        cfg.local = self.nodes[i].eid;
        cfg.local_node = self.nodes[i].number;
        let floor = self.compact_floor;
        let restored = lock(&self.nodes[i].disk)
            .store(floor)
            .load()
            .expect("persisted state loads");
        let restored = (!restored.families.is_empty()).then_some(restored);
        let doom = Arc::new(Doom::default());
        let t = self.t();
        let heard = Arc::clone(&self.heard);
        let say: Say = Arc::new(move |level, text| {
            if text.contains("after an unclean stop") {
                heard.repairs.fetch_add(1, Ordering::Relaxed);
            }
            if level == Level::Error && !text.contains("crashed before saving") {
                lock(&heard.errors).push(text.to_string());
            }
        });
        let sim_node = &mut self.nodes[i];
        sim_node.doom = Arc::clone(&doom);
        let parts = Parts {
            engine: Engine::new(cfg, restored),
            db: Box::new(SimDb::new(Arc::clone(&sim_node.db), Arc::clone(&doom))),
            link: Box::new(SimLink {
                sent: Arc::clone(&sim_node.sent),
                doom: Arc::clone(&doom),
                backlog: Arc::clone(&sim_node.backlog),
            }),
            log: Box::new(SimLog {
                disk: Arc::clone(&sim_node.disk),
                floor,
                me: sim_node.eid,
                oracle: Arc::clone(&self.oracle),
                doom,
            }),
            clock: Box::new(SimClock {
                t: Arc::clone(&self.t),
                offset: Arc::clone(&sim_node.offset),
            }),
            say,
            shared: Box::new(|_| {}),
            events: Box::new(SimEvents {
                node: i,
                open: BTreeSet::new(),
                heard: Arc::clone(&self.heard),
            }),
            tuning: self.tuning.clone(),
        };
        sim_node.node = Some(Node::new(parts, sim_node.crashed));
        sim_node.crashed = false;
        sim_node.believed_up.clear();
        sim_node.pending = Pending::default();
        let mut registry = Registry::new();
        registry.share(family(GLOBAL, Mode::Global));
        registry.share(family(UNIQUE, Mode::Unique));
        sim_node.pending.commands.push(Command::Families(registry));
        sim_node.wake_at = t;
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.alive(a) && self.alive(b) && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// The process of node `i` dies: its loop and whatever AstDB had not committed.
    fn crash(&mut self, i: usize) {
        let t = self.t();
        let delay = self.rng.random_range(500..4000);
        let node = &mut self.nodes[i];
        if let Some(n) = node.node.take() {
            self.exercised.reads_skipped += n.status().reads_skipped;
        }
        lock(&node.db).crash();
        lock(&node.disk).crash();
        lock(&node.sent).clear();
        node.pending = Pending::default();
        node.crashed = true;
        node.restart_at = t + delay;
    }

    /// Runs a turn of node `i` with what its inbox holds, then puts what it sent on the
    /// network. `doom`: crash somewhere during the turn.
    fn turn(&mut self, i: usize, doom: bool) {
        let t = self.t();
        if doom {
            let ops = self.rng.random_range(0..6);
            *lock(&self.nodes[i].doom.ops_left) = Some(ops);
        }
        let node = &mut self.nodes[i];
        let Some(n) = node.node.as_mut() else {
            return;
        };
        let pending = std::mem::take(&mut node.pending);
        let sleep = n.turn(pending);
        node.wake_at = t + (sleep.as_millis() as u64).max(1);
        if node.doom.dead.load(Ordering::Relaxed) {
            self.exercised.crashes_mid_turn += 1;
            return self.crash(i);
        }
        *lock(&node.doom.ops_left) = None;
        let sent = std::mem::take(&mut *lock(&node.sent));
        for (to, msg) in sent {
            let Some(j) = self.nodes.iter().position(|n| n.eid == to) else {
                panic!("message to unknown {to}");
            };
            let bytes = encode(&msg);
            if !self.connected(i, j) || self.rng.random_bool(self.loss) {
                continue;
            }
            let copies = if self.rng.random_bool(self.dup) { 2 } else { 1 };
            for _ in 0..copies {
                let at = t + self.rng.random_range(1..=self.max_delay);
                self.net.push(Flight {
                    at,
                    from: i,
                    to: j,
                    bytes: bytes.clone(),
                    sent: msg.clone(),
                });
            }
        }
    }

    fn local_write(&mut self, i: usize) {
        let fam = if self.rng.random_bool(0.6) {
            GLOBAL
        } else {
            UNIQUE
        };
        let k = self.rng.random_range(0..self.keys);
        let key = if k % 5 == 4 {
            format!("sub/k{k}")
        } else {
            format!("k{k}")
        };
        let value = self
            .rng
            .random_bool(0.7)
            .then(|| format!("v{}", self.rng.random_range(0..1000u32)));
        let node = &mut self.nodes[i];
        lock(&node.db).set(fam, &key, value.as_deref());
        // Half the writes come from the dialplan and reach the inbox at once; the rest
        // are found by the family's reads.
        if self.rng.random_bool(0.5) {
            node.pending
                .writes
                .push(&format!("{fam}/{key}"), value.as_deref());
        }
    }

    fn links(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.alive(i) {
                continue;
            }
            for j in 0..self.nodes.len() {
                if i == j {
                    continue;
                }
                let want = self.connected(i, j);
                let has = self.nodes[i].believed_up.contains(&j);
                if want == has {
                    continue;
                }
                let (eid, number) = (self.nodes[j].eid, self.nodes[j].number);
                let node = &mut self.nodes[i];
                let event = if want {
                    node.believed_up.insert(j);
                    LinkEvent::PeerUp { node: number, eid }
                } else {
                    node.believed_up.remove(&j);
                    LinkEvent::PeerDown { eid }
                };
                node.pending.events.push(event);
            }
        }
    }

    fn deliver(&mut self) {
        let t = self.t();
        let due: Vec<Flight>;
        (due, self.net) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|f| f.at <= t);
        for f in due {
            if !self.connected(f.from, f.to) {
                continue;
            }
            let msg = decode(&f.bytes).expect("engine messages decode");
            assert_eq!(msg, f.sent, "codec round trip");
            let from = self.nodes[f.from].eid;
            self.nodes[f.to]
                .pending
                .events
                .push(LinkEvent::Received { from, msg });
        }
    }

    fn step(&mut self, chaos: bool) {
        let t = self.t();
        self.deliver();
        let n = self.nodes.len();
        if chaos {
            if self.rng.random_bool(0.08) {
                let i = self.rng.random_range(0..n);
                if self.alive(i) {
                    self.local_write(i);
                }
            }
            if self.cut.is_empty() && self.rng.random_bool(0.002) {
                // Split into two sides until heal_at.
                let side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                for a in 0..n {
                    for b in a + 1..n {
                        if side[a] != side[b] {
                            self.cut.insert((a, b));
                        }
                    }
                }
                self.heal_at = t + self.rng.random_range(500..6000);
            }
            if self.rng.random_bool(0.002) {
                let i = self.rng.random_range(0..n);
                if self.alive(i) {
                    self.crash(i);
                }
            }
            if self.rng.random_bool(0.02) {
                // A node's link backs up (its large pushes wait), or drains.
                let i = self.rng.random_range(0..n);
                let held = if self.rng.random_bool(0.3) {
                    PUSH_BACKLOG + 1
                } else {
                    0
                };
                self.nodes[i].backlog.store(held, Ordering::Relaxed);
            }
            if self.rng.random_bool(0.001) {
                // The wall clock of a node steps back (NTP correction).
                let i = self.rng.random_range(0..n);
                let back = self.rng.random_range(0..500);
                let offset = &self.nodes[i].offset;
                offset.store(
                    (offset.load(Ordering::Relaxed) - back).max(-1000),
                    Ordering::Relaxed,
                );
            }
        }
        if !self.cut.is_empty() && (t >= self.heal_at || !chaos) {
            self.cut.clear();
        }
        if !chaos {
            for node in &self.nodes {
                node.backlog.store(0, Ordering::Relaxed);
            }
        }
        for i in 0..n {
            if !self.alive(i) && (t >= self.nodes[i].restart_at || !chaos) {
                self.start(i);
            }
        }
        self.links();
        for i in 0..n {
            if t >= self.nodes[i].next_commit {
                self.nodes[i].next_commit = t + COMMIT_MS;
                lock(&self.nodes[i].db).commit();
            }
            if !self.alive(i) {
                continue;
            }
            // The node's AstDB writer moves on between turns, by some writes or all.
            let node = &self.nodes[i];
            let step = self.rng.random_range(0..=8u64);
            {
                let mut db = lock(&node.db);
                let target = if step == 8 { u64::MAX } else { db.made + step };
                db.run_until(target, &node.doom);
            }
            if node.pending.is_empty() && t < node.wake_at {
                continue;
            }
            let doom = chaos && self.rng.random_bool(0.003);
            self.turn(i, doom);
        }
    }

    fn run(&mut self) -> Result<Exercised, String> {
        let active_ms = 6_000;
        while self.t() < active_ms {
            self.step(true);
            self.t.fetch_add(10, Ordering::Relaxed);
        }
        // Heal everything and let it settle without faults.
        self.loss = 0.0;
        self.dup = 0.0;
        let quiet_ms = 25_000;
        let end = self.t() + quiet_ms;
        while self.t() < end {
            self.step(false);
            let t = self.t();
            let next = self
                .net
                .iter()
                .map(|f| f.at)
                .chain(self.nodes.iter().map(|n| n.wake_at.min(n.next_commit)))
                .min()
                .unwrap_or(u64::MAX);
            self.t
                .store((t + 100).min(next.max(t + 1)), Ordering::Relaxed);
        }
        // The writers of the live nodes end what they were given.
        for node in self.nodes.iter().filter(|n| n.node.is_some()) {
            lock(&node.db).run_until(u64::MAX, &node.doom);
        }
        self.check()?;
        let mut exercised = self.exercised;
        for n in self.nodes.iter().filter_map(|n| n.node.as_ref()) {
            exercised.reads_skipped += n.status().reads_skipped;
        }
        exercised.repairs = self.heard.repairs.load(Ordering::Relaxed);
        Ok(exercised)
    }

    fn check(&self) -> Result<(), String> {
        let errors = lock(&self.heard.errors);
        if !errors.is_empty() {
            return Err(format!("the loops logged errors: {errors:?}"));
        }
        let oracle = lock(&self.oracle);
        let expected: BTreeMap<&str, &str> = oracle
            .iter()
            .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_str(), v)))
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            let db = lock(&node.db);
            let have = db.family(GLOBAL);
            let have: BTreeMap<&str, &str> =
                have.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            if have != expected {
                return Err(format!(
                    "node {i} global family differs from last-writer-wins:\n have {have:?}\n want {expected:?}"
                ));
            }
            for (j, origin) in self.nodes.iter().enumerate() {
                if i == j {
                    continue;
                }
                let own = lock(&origin.db).family(UNIQUE);
                let copy = db.family(&format!("{}/{UNIQUE}", origin.eid));
                if own != copy {
                    let detail: Vec<String> = own
                        .keys()
                        .chain(copy.keys())
                        .map(|k| {
                            let at = |n: &SimNode| {
                                n.node
                                    .as_ref()
                                    .and_then(|n| n.engine().entry(UNIQUE, Some(origin.eid), k))
                            };
                            format!("{k}: origin {:?} copy {:?}", at(origin), at(node))
                        })
                        .collect();
                    return Err(format!(
                        "node {i}'s copy of node {j}'s unique family differs:\n copy {copy:?}\n own  {own:?}\n{}",
                        detail.join("\n")
                    ));
                }
            }
            let e = node
                .node
                .as_ref()
                .ok_or("node not running at the end")?
                .engine();
            if e.counters().tombstones != 0 {
                let tombs: Vec<_> = [GLOBAL, UNIQUE]
                    .iter()
                    .flat_map(|f| e.items(f))
                    .filter(|(_, e)| e.is_tombstone())
                    .collect();
                return Err(format!(
                    "node {i} still holds tombstones after the quiet period: {tombs:?}\n{}\n{:?}",
                    e.debug_tombstones(),
                    e.counters()
                ));
            }
        }
        Ok(())
    }
}

fn run_seed(seed: u64) -> Exercised {
    let result = std::panic::catch_unwind(|| Sim::new(seed).run());
    let failure = match result {
        Ok(Ok(exercised)) => return exercised,
        Ok(Err(e)) => e,
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    panic!(
        "simulation seed {seed} failed: {failure}\nreplay: SIM_SEED={seed} cargo test --release --test cluster_sim -- --nocapture"
    );
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn add(a: Exercised, b: Exercised) -> Exercised {
    Exercised {
        reads_skipped: a.reads_skipped + b.reads_skipped,
        repairs: a.repairs + b.repairs,
        crashes_mid_turn: a.crashes_mid_turn + b.crashes_mid_turn,
    }
}

#[test]
fn every_node_converges_to_last_writer_wins_through_faults() {
    if let Some(seed) = env_u64("SIM_SEED") {
        run_seed(seed);
        return;
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(3000);
    let start = env_u64("SIM_START").unwrap_or(0);
    // Two halves on two threads: CI machines have two cores.
    let half = count / 2;
    let other = std::thread::spawn(move || {
        (start..start + half)
            .map(run_seed)
            .fold(Exercised::default(), add)
    });
    let mine = (start + half..start + count)
        .map(run_seed)
        .fold(Exercised::default(), add);
    let total = match other.join() {
        Ok(theirs) => add(mine, theirs),
        Err(p) => std::panic::resume_unwind(p),
    };
    println!(
        "{count} seeds: {} reads skipped while AstDB committed nothing, {} crash repairs, {} crashes mid-turn",
        total.reads_skipped, total.repairs, total.crashes_mid_turn
    );
    if count >= 100 {
        assert!(
            total.reads_skipped > 0,
            "no seed skipped a read by its stamp"
        );
        assert!(total.repairs > 0, "no seed repaired AstDB after a crash");
        assert!(total.crashes_mid_turn > 0, "no seed crashed mid-turn");
    }
}

/// A compaction keeps the state the records added up to: the same clock, families and
/// items; peers and pending applies may only be what the engine still holds of them.
fn check_compaction(mut before: RestoredState, mut after: RestoredState) {
    for s in [&mut before, &mut after] {
        s.items.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        s.families.sort_by(|a, b| a.name.cmp(&b.name));
        s.peers.sort_by_key(|p| p.eid);
        s.applies_unconfirmed.sort();
    }
    assert_eq!(after.clock, before.clock, "compaction keeps the clock");
    assert_eq!(
        after.families, before.families,
        "compaction keeps the families"
    );
    assert_eq!(after.items, before.items, "compaction keeps every item");
    for p in &before.peers {
        assert!(after.peers.contains(p), "compaction keeps peer {:?}", p.eid);
    }
    for a in &after.applies_unconfirmed {
        assert!(
            before.applies_unconfirmed.contains(a),
            "compaction invents no pending apply"
        );
    }
}
