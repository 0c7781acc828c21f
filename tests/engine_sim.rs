//! Deterministic simulation of a cluster of engines.
//!
//! Each scenario, drawn from a seed: 3–7 nodes with skewed (and sometimes stepping back)
//! clocks write and delete keys of a global and a unique family, caught either as change
//! events or by snapshots; messages go through the real codec and are lost, duplicated,
//! reordered and delayed; partitions come and heal; nodes crash (between batches, after
//! persisting but before executing outputs, or before persisting) and restart from their
//! persisted state (SQLite in memory, or a temp file for every fourth seed) through the
//! same `metadata::replica` code the module uses. After healing and a quiet period every
//! node must hold, for every global key, the value that last-writer-wins by version gives
//! over every committed write (an oracle); deleted keys stay deleted; unique copies equal
//! their origin's own data; and all tombstones are collected.
//!
//! ```text
//! cargo test --test engine_sim                                  # CI: SIM_SEEDS default
//! SIM_SEEDS=100000 cargo test --release --test engine_sim -- --nocapture   # long run
//! SIM_SEED=1234 cargo test --test engine_sim -- --nocapture      # replay one seed
//! ```
//! `SIM_START` moves the first seed of a run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use res_astdb_cluster::engine::codec::{decode, encode};
use res_astdb_cluster::engine::{
    merge, DbOp, Eid, Engine, EngineConfig, Entry, Message, Mode, Output, RestoredState,
    SharedFamily,
};
use res_astdb_cluster::metadata::replica::ReplicaLog;

const BASE_MS: u64 = 1_700_000_000_000;
const GLOBAL: &str = "blacklist";
const UNIQUE: &str = "registrar";

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

struct Node {
    eid: Eid,
    number: u32,
    engine: Option<Engine>,
    /// The node's AstDB: (family, key) -> value.
    db: BTreeMap<(String, String), String>,
    disk: Disk,
    offset: i64,
    next_tick: u64,
    next_snapshot: u64,
    restart_at: u64,
    believed_up: BTreeSet<usize>,
}

struct Flight {
    at: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
    /// What was encoded, to check the round trip at delivery.
    sent: Message,
}

struct Sim {
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    net: Vec<Flight>,
    cut: BTreeSet<(usize, usize)>,
    heal_at: u64,
    t: u64,
    loss: f64,
    dup: f64,
    max_delay: u64,
    keys: usize,
    /// Every global write a node committed (persisted with its version).
    oracle: BTreeMap<String, Entry>,
    cfg_template: EngineConfig,
    /// Replica logs compact past this many bytes: small, so that runs compact often.
    compact_floor: u64,
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
        let nodes = (0..n)
            .map(|i| {
                let path = dir.path().join(format!("node{i}.replica"));
                let disk = if reopen {
                    Disk::Reopened(path, None)
                } else {
                    Disk::Kept(path, None)
                };
                Node {
                    // EIDs in a random order so that ties are not won by node index.
                    eid: Eid([2, 0, 0, 0, rng.random_range(0..=255u8), i as u8]),
                    number: i as u32 + 1,
                    engine: None,
                    db: BTreeMap::new(),
                    disk,
                    offset: rng.random_range(-800..=800),
                    next_tick: 0,
                    next_snapshot: rng.random_range(0..500),
                    restart_at: 0,
                    believed_up: BTreeSet::new(),
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
            t: 0,
            oracle: BTreeMap::new(),
            cfg_template: cfg,
            compact_floor,
            _dir: dir,
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn now(&self, i: usize) -> u64 {
        (BASE_MS as i64 + self.t as i64 + self.nodes[i].offset) as u64
    }

    fn start(&mut self, i: usize) {
        let mut cfg = self.cfg_template.clone();
        cfg.local = self.nodes[i].eid;
        cfg.local_node = self.nodes[i].number;
        let floor = self.compact_floor;
        let restored = self.nodes[i]
            .disk
            .store(floor)
            .load()
            .expect("persisted state loads");
        let restored = (!restored.families.is_empty()).then_some(restored);
        self.nodes[i].engine = Some(Engine::new(cfg, restored));
        self.nodes[i].believed_up.clear();
        let now = self.now(i);
        let e = self.nodes[i].engine.as_mut().expect("started");
        e.share(family(GLOBAL, Mode::Global), now);
        e.share(family(UNIQUE, Mode::Unique), now);
        self.commit(i, false);
        self.snapshot(i);
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].engine.is_some()
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.alive(a) && self.alive(b) && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Takes the engine's batch: persists its state, records committed versions, then runs
    /// its outputs. `crash`: stop the node at a random point of that sequence.
    fn commit(&mut self, i: usize, crash: bool) {
        let point = if crash {
            self.rng.random_range(0..3)
        } else {
            3
        };
        let floor = self.compact_floor;
        let node = &mut self.nodes[i];
        let Some(engine) = node.engine.as_mut() else {
            return;
        };
        if point == 0 {
            return self.crash(i);
        }
        let batch = engine.take_batch();
        let delta = batch.save;
        if !delta.is_empty() {
            let log = node.disk.store(floor);
            log.write(&delta).expect("delta is written");
            if log.wants_compaction() {
                let before = log.load().expect("log reads");
                log.compact(engine.persisted_state())
                    .expect("log is compacted");
                let after = log.load().expect("compacted log reads");
                check_compaction(before, after);
            }
        }
        let me = self.nodes[i].eid;
        for d in &delta.items {
            if &*d.item.family != GLOBAL {
                continue;
            }
            if let Some(s) = &d.state {
                if s.version.origin == me {
                    let e = s.to_entry();
                    let cur = self.oracle.remove(&*d.item.key);
                    let merged = match cur {
                        Some(c) => merge(c, e),
                        None => e,
                    };
                    self.oracle.insert(d.item.key.to_string(), merged);
                }
            }
        }
        if point == 1 {
            return self.crash(i);
        }
        for o in batch.outputs {
            match o {
                Output::Send { to, msg } => {
                    let Some(j) = self.nodes.iter().position(|n| n.eid == to) else {
                        panic!("message to unknown {to}");
                    };
                    let bytes = encode(&msg);
                    if !self.connected(i, j) || self.rng.random_bool(self.loss) {
                        continue;
                    }
                    let copies = if self.rng.random_bool(self.dup) { 2 } else { 1 };
                    for _ in 0..copies {
                        let at = self.t + self.rng.random_range(1..=self.max_delay);
                        self.net.push(Flight {
                            at,
                            from: i,
                            to: j,
                            bytes: bytes.clone(),
                            sent: msg.clone(),
                        });
                    }
                }
                Output::Apply(op) => match op {
                    DbOp::Put { family, key, value } => {
                        let k = (family.to_string(), key.to_string());
                        self.nodes[i].db.insert(k, value.to_string());
                    }
                    DbOp::Delete { family, key } => {
                        self.nodes[i]
                            .db
                            .remove(&(family.to_string(), key.to_string()));
                    }
                },
                Output::Warn(_) => {}
            }
        }
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.engine = None;
        node.disk.crash();
        node.restart_at = self.t + self.rng.random_range(500..4000);
    }

    fn snapshot(&mut self, i: usize) {
        let now = self.now(i);
        for fam in [GLOBAL, UNIQUE] {
            let entries: Vec<(String, String)> = self.nodes[i]
                .db
                .iter()
                .filter(|((f, _), _)| f == fam)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            if let Some(e) = self.nodes[i].engine.as_mut() {
                e.local_snapshot(fam, entries, now);
            }
        }
        self.commit(i, false);
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
        let db_key = (fam.to_string(), key.clone());
        match &value {
            Some(v) => self.nodes[i].db.insert(db_key, v.clone()),
            None => self.nodes[i].db.remove(&db_key),
        };
        // Half the writes are reported as events; the rest are found by snapshots.
        if self.rng.random_bool(0.5) {
            let now = self.now(i);
            let crash = self.rng.random_bool(0.01);
            if let Some(e) = self.nodes[i].engine.as_mut() {
                let (f, k) = match key.split_once('/') {
                    Some((sub, k)) => (format!("{fam}/{sub}"), k.to_string()),
                    None => (fam.to_string(), key.clone()),
                };
                e.local_change(&f, &k, value.as_deref(), now);
                self.commit(i, crash);
            }
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
                let now = self.now(i);
                let (eid, number) = (self.nodes[j].eid, self.nodes[j].number);
                let node = &mut self.nodes[i];
                let e = node.engine.as_mut().expect("alive");
                if want {
                    node.believed_up.insert(j);
                    e.peer_up(eid, number, now);
                } else {
                    node.believed_up.remove(&j);
                    e.peer_down(eid);
                }
                self.commit(i, false);
            }
        }
    }

    fn deliver(&mut self, chaos: bool) {
        let due: Vec<Flight>;
        (due, self.net) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|f| f.at <= self.t);
        for f in due {
            if !self.connected(f.from, f.to) {
                continue;
            }
            let msg = decode(&f.bytes).expect("engine messages decode");
            assert_eq!(msg, f.sent, "codec round trip");
            let now = self.now(f.to);
            let from = self.nodes[f.from].eid;
            let crash = chaos && self.rng.random_bool(0.001);
            if let Some(e) = self.nodes[f.to].engine.as_mut() {
                e.receive(from, msg, now);
                self.commit(f.to, crash);
            }
        }
    }

    fn step(&mut self, chaos: bool) {
        self.deliver(chaos);
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
                self.heal_at = self.t + self.rng.random_range(500..6000);
            }
            if self.rng.random_bool(0.002) {
                let i = self.rng.random_range(0..n);
                if self.alive(i) {
                    self.crash(i);
                }
            }
            if self.rng.random_bool(0.001) {
                // The wall clock of a node steps back (NTP correction).
                let i = self.rng.random_range(0..n);
                self.nodes[i].offset =
                    (self.nodes[i].offset - self.rng.random_range(0..500)).max(-1000);
            }
        }
        if !self.cut.is_empty() && (self.t >= self.heal_at || !chaos) {
            self.cut.clear();
        }
        for i in 0..n {
            if !self.alive(i) && (self.t >= self.nodes[i].restart_at || !chaos) {
                self.start(i);
            }
        }
        self.links();
        for i in 0..n {
            if !self.alive(i) {
                continue;
            }
            if self.t >= self.nodes[i].next_tick {
                self.nodes[i].next_tick = self.t + 100;
                let now = self.now(i);
                self.nodes[i].engine.as_mut().expect("alive").tick(now);
                self.commit(i, false);
            }
            if self.t >= self.nodes[i].next_snapshot {
                self.nodes[i].next_snapshot = self.t + 500;
                self.snapshot(i);
            }
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let active_ms = 6_000;
        while self.t < active_ms {
            self.step(true);
            self.t += 10;
        }
        // Heal everything and let it settle without faults.
        self.loss = 0.0;
        self.dup = 0.0;
        let quiet_ms = 25_000;
        let end = self.t + quiet_ms;
        while self.t < end {
            self.step(false);
            let next_event = self.net.iter().map(|f| f.at).min().unwrap_or(u64::MAX);
            self.t = (self.t + 100).min(next_event.max(self.t + 1));
        }
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        let expected: BTreeMap<&str, &str> = self
            .oracle
            .iter()
            .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_str(), v)))
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            let have: BTreeMap<&str, &str> = node
                .db
                .iter()
                .filter(|((f, _), _)| f == GLOBAL)
                .map(|((_, k), v)| (k.as_str(), v.as_str()))
                .collect();
            if have != expected {
                return Err(format!(
                    "node {i} global family differs from last-writer-wins:\n have {have:?}\n want {expected:?}"
                ));
            }
            for (j, origin) in self.nodes.iter().enumerate() {
                if i == j {
                    continue;
                }
                let own: BTreeMap<&String, &String> = origin
                    .db
                    .iter()
                    .filter(|((f, _), _)| f == UNIQUE)
                    .map(|((_, k), v)| (k, v))
                    .collect();
                let copy_family = format!("{}/{UNIQUE}", origin.eid);
                let copy: BTreeMap<&String, &String> = node
                    .db
                    .iter()
                    .filter(|((f, _), _)| *f == copy_family)
                    .map(|((_, k), v)| (k, v))
                    .collect();
                if own != copy {
                    let detail: Vec<String> = own
                        .keys()
                        .chain(copy.keys())
                        .map(|k| {
                            let at = |n: &Node| {
                                n.engine
                                    .as_ref()
                                    .and_then(|e| e.entry(UNIQUE, Some(origin.eid), k).cloned())
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
            let e = node.engine.as_ref().ok_or("node not running at the end")?;
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

fn run_seed(seed: u64) {
    let result = std::panic::catch_unwind(|| Sim::new(seed).run());
    let failure = match result {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    panic!(
        "simulation seed {seed} failed: {failure}\nreplay: SIM_SEED={seed} cargo test --test engine_sim -- --nocapture"
    );
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
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
    let other = std::thread::spawn(move || (start..start + half).for_each(run_seed));
    (start + half..start + count).for_each(run_seed);
    if let Err(p) = other.join() {
        std::panic::resume_unwind(p);
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
