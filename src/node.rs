//! This node's replication loop, run on the module's own thread: it feeds the
//! engine what capture saw (dialplan writes at once, every other writer through
//! a read of each family at its `sync_interval`), saves the engine's state, and
//! executes what the engine hands back, following the ordering contract in
//! `engine` (each `Batch` saved, then its outputs run). Only this thread calls the engine; the CLI and dialplan
//! change the registry and poke it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::asterisk::{self, db};
use crate::engine::{Batch, Contents, DbOp, Engine, Output, SharedFamily};
use crate::mesh::Mesh;
use crate::module::{now_ms, with_runtime, Runtime};
use crate::transport::Event;
use crate::{error, warning};

/// After a turn with dialplan writes, how long the thread looks for more before it asks
/// to be woken (bounds the delay this adds to a write that arrives meanwhile).
pub const LINGER: Duration = Duration::from_micros(200);
/// The longest the thread sleeps between looks at its work.
pub const TICK: Duration = Duration::from_millis(100);
/// Outputs gathered from the peers' messages before they are saved and executed
/// within a turn. A turn may find a whole catch-up waiting (a million changes): taken
/// in slices, AstDB starts receiving at once, the runtime lock (which the CLI needs
/// too) is held for short spells, and the buffers stay small enough to be reused
/// instead of being mapped afresh, page by page, for each turn.
const FLUSH_OUTPUTS: usize = 16_384;
/// A family whose read takes this long is not read again while AstDB has
/// committed nothing (see `Node::read_stamp`); cheaper ones keep their exact
/// interval.
const COSTLY_READ: Duration = Duration::from_millis(5);
/// The soonest a family whose last read found local changes is read again.
const FOLLOW_UP: Duration = Duration::from_millis(100);
/// How often the wrapping of DB()/DB_DELETE() is checked (func_db may be reloaded).
const HOOK_CHECK: Duration = Duration::from_secs(1);

/// The engine and what the loop remembers between turns.
pub struct Node {
    pub engine: Engine,
    /// The shared families as the engine was last told.
    told: BTreeMap<String, SharedFamily>,
    next_read: HashMap<String, Instant>,
    last_hook_check: Option<Instant>,
    /// Which dialplan write paths are seen at once.
    pub capture: asterisk::Capture,
    /// Dialplan writes taken from the inbox, and full reads done.
    pub dialplan_writes: u64,
    pub family_reads: u64,
    /// The previous run crashed: AstDB may have lost its last second of
    /// writes, so before a family's first read AstDB is brought back to the
    /// saved replication state. Holds the families still to repair.
    unrepaired: Option<std::collections::BTreeSet<String>>,
    /// Warnings already logged: the engine repeats one at every read of a
    /// family that holds, say, a key it cannot share; the log says it once.
    warned: std::collections::HashSet<String>,
    /// Per family, a summary of the contents last read. A read is handed to the
    /// engine only when it may hold something new: not when it matches what the
    /// engine holds (after the engine's own applies, or captured writes), nor
    /// when it matches the previous read with nothing applied or captured since
    /// (a family holding a key the engine refuses). An idle or busily replicated
    /// million-key family would otherwise cost a full comparison at each interval.
    read_hash: HashMap<String, Contents>,
    /// Families whose AstDB contents changed through an apply or a captured
    /// write since their last read.
    touched: std::collections::HashSet<String>,
    /// Per family whose read is costly, AstDB's commit stamp taken just before a
    /// read that found nothing new. While the stamp stays the same, nothing was
    /// committed since, and every write made since is at most about a second from
    /// its commit: the family is not read again (an idle million-key family would
    /// otherwise cost a read of all its rows at every interval). A write then waits
    /// at most its interval plus a second, the bound for non-dialplan writers.
    read_stamp: HashMap<String, (u32, u64)>,
    /// Reads so saved.
    pub reads_skipped: u64,
    /// A batch whose save failed: its outputs wait for it.
    unsaved: Option<Batch>,
}

/// Distinct warnings remembered before the set starts afresh.
const MAX_WARNED: usize = 10_000;

impl Node {
    pub fn new(engine: Engine) -> Self {
        Node {
            engine,
            told: BTreeMap::new(),
            next_read: HashMap::new(),
            last_hook_check: None,
            capture: asterisk::Capture::default(),
            dialplan_writes: 0,
            family_reads: 0,
            unrepaired: None,
            warned: std::collections::HashSet::new(),
            read_hash: HashMap::new(),
            read_stamp: HashMap::new(),
            reads_skipped: 0,
            touched: std::collections::HashSet::new(),
            unsaved: None,
        }
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

    /// After a crash: repair each family's AstDB contents before reading it.
    pub fn repair_after_crash(&mut self) {
        self.unrepaired = Some(std::collections::BTreeSet::new());
    }

    /// Whether `family` still needs its post-crash repair (each family once).
    fn take_repair(&mut self, family: &str) -> bool {
        match &mut self.unrepaired {
            Some(done) => done.insert(family.to_string()),
            None => false,
        }
    }

    /// Tells the engine about families shared or unshared since the last turn.
    fn sync_families(&mut self, registry: &crate::engine::Registry, now: u64) {
        let gone: Vec<String> = self
            .told
            .keys()
            .filter(|n| registry.get(n).is_none())
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for name in gone {
            self.engine.unshare(&name);
            self.told.remove(&name);
            self.next_read.remove(&name);
            self.forget_reads(&name);
        }
        for family in registry.iter() {
            if self.told.get(&family.name) != Some(family) {
                self.engine.share(family.clone(), now);
                self.told.insert(family.name.clone(), family.clone());
                // A newly shared family is read at once, and handed over whole.
                self.next_read.insert(family.name.clone(), Instant::now());
                self.forget_reads(&family.name);
                changed = true;
            }
        }
        if changed {
            crate::capture::set_shared(self.told.keys().cloned().collect());
        }
    }

    /// `database shared refresh`: read these families now and pull them from the peers.
    pub fn refresh(&mut self, names: &[String]) {
        let now = Instant::now();
        for name in names {
            self.next_read.insert(name.clone(), now);
            self.forget_reads(name);
            // Telling the engine again makes it pull the family from its peers.
            self.told.remove(name);
        }
    }

    /// Forgets what earlier reads of `name` found, so that its next read is done
    /// and handed to the engine whole.
    fn forget_reads(&mut self, name: &str) {
        self.read_hash.remove(name);
        self.read_stamp.remove(name);
    }

    /// A read of `name` (which took `took`) found local changes: some writer other
    /// than the dialplan is busy with it (a script loading numbers through AMI, say).
    /// Read it again soon rather than a whole interval later, so the rest of its
    /// burst follows quickly; the wait is at least twice the read, so that reading
    /// never takes more than a third of the thread. Once a read finds nothing new
    /// the family is back to its interval.
    fn follow_up(&mut self, name: &str, took: Duration) {
        let soon = Instant::now() + FOLLOW_UP.max(took * 2);
        if let Some(next) = self.next_read.get_mut(name) {
            if soon < *next {
                *next = soon;
            }
        }
    }

    /// The families whose read is due (all of them after an inbox overflow).
    fn due_reads(&mut self, at: Instant, everything: bool) -> Vec<String> {
        let mut due = Vec::new();
        for (name, family) in &self.told {
            let next = self.next_read.entry(name.clone()).or_insert(at);
            if everything || *next <= at {
                *next = at + Duration::from_millis(family.sync_interval_ms);
                due.push(name.clone());
            }
        }
        due
    }
}

/// Splits a DB() argument "family/key" into the AstDB family and key, at the
/// last '/', so a nested shared family (`foo/sub`) is found by the engine.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let path = path.trim_matches('/');
    path.rsplit_once('/')
        .filter(|(f, k)| !f.is_empty() && !k.is_empty())
}

/// Takes the engine's batch; saves its state, then executes its outputs in
/// order (AstDB writes and log lines here; sends by `send`).
fn flush(mesh: &mut Mesh) {
    // A batch whose save failed earlier goes first, and its outputs run as soon
    // as it is saved, before a newer batch is taken: the newer one confirms
    // their applies, so it must not reach the disk ahead of them.
    let held = with_runtime(|rt| match rt.node.unsaved.take() {
        None => Ok(None),
        Some(batch) => match rt.metadata.write_replica(&batch.save) {
            Ok(()) => Ok(Some(batch.outputs)),
            Err(why) => {
                rt.node.unsaved = Some(batch);
                Err(why)
            }
        },
    });
    match held {
        Ok(Ok(Some(mut outputs))) => execute(&mut outputs, mesh),
        Ok(Err(why)) => {
            error!("{why}; changes wait until it can be saved");
            return;
        }
        _ => {}
    }
    let work = with_runtime(|rt| {
        let batch = rt.node.engine.take_batch();
        if batch.save.is_empty() {
            return Ok(batch.outputs);
        }
        match rt.metadata.write_replica(&batch.save) {
            Ok(()) => {
                // Here the engine holds exactly what the log adds up to.
                if rt.metadata.replica_wants_compaction() {
                    let state = rt.node.engine.persisted_state();
                    if let Err(why) = rt.metadata.compact_replica(state) {
                        warning!("{why}");
                    }
                }
                Ok(batch.outputs)
            }
            Err(why) => {
                // Outputs whose state is not saved could move a version backwards
                // after a crash: they wait with their batch.
                rt.node.unsaved = Some(batch);
                Err(why)
            }
        }
    });
    match work {
        Ok(Ok(mut outputs)) => {
            execute(&mut outputs, mesh);
            // The emptied buffer serves the next turn: a fresh one of a catch-up's size
            // would be mapped and faulted in page by page each time.
            let _ = with_runtime(|rt| rt.node.engine.recycle(outputs));
        }
        Ok(Err(why)) => error!("{why}; changes wait until it can be saved"),
        Err(_) => {}
    }
}

/// Notes that the shared family covering AstDB family `family` changed since its
/// last read (its next read is then handed to the engine whatever its hash).
fn touch(rt: &mut Runtime, family: &str) {
    if let Some(shared) = rt.registry.covering(family) {
        if !rt.node.touched.contains(&shared.name) {
            rt.node.touched.insert(shared.name.clone());
        }
    }
}

/// Executes the outputs of a saved delta, in order.
fn execute(outputs: &mut Vec<Output>, mesh: &mut Mesh) {
    // The AstDB families applied to (a batch usually holds one).
    let mut applied: Vec<&str> = Vec::new();
    for o in outputs.iter() {
        if let Output::Apply(DbOp::Put { family, .. } | DbOp::Delete { family, .. }) = o {
            if !applied.contains(&&**family) {
                applied.push(family);
            }
        }
    }
    if !applied.is_empty() {
        let _ = with_runtime(|rt| {
            for family in applied {
                touch(rt, family);
            }
        });
    }
    let mut scratch = Vec::new();
    for output in outputs.drain(..) {
        match output {
            Output::Apply(DbOp::Put { family, key, value }) => {
                if let Err(why) = db::put_with(&mut scratch, &family, &key, &value) {
                    error!("{why}");
                }
            }
            Output::Apply(DbOp::Delete { family, key }) => {
                db::del(&family, &key);
            }
            Output::Send { to, msg } => mesh.send(to, &msg),
            Output::Warn(warning) => {
                let text = warning.to_string();
                if with_runtime(|rt| rt.node.first_time(&text)).unwrap_or(true) {
                    warning!("{text}");
                }
            }
        }
    }
}

/// One turn of the loop, after `pending` was taken from the inbox.
pub fn turn(pending: crate::capture::Pending, mesh: &mut Mesh) {
    let at = Instant::now();
    let now = now_ms();

    // What the peers said, in order.
    for event in pending.events {
        mesh.observe(&event);
        let msg = match &event {
            Event::Received { node, payload, .. } => mesh.decode(*node, payload),
            _ => None,
        };
        let full = with_runtime(|rt| {
            match event {
                Event::PeerUp { node, eid } => rt.node.engine.peer_up(eid, node, now),
                Event::PeerDown { eid, .. } => rt.node.engine.peer_down(eid),
                Event::Received { eid, .. } => {
                    if let Some(msg) = msg {
                        rt.node.engine.receive(eid, msg, now);
                    }
                }
            }
            rt.node.engine.queued_outputs() >= FLUSH_OUTPUTS
        });
        if matches!(full, Ok(true)) {
            flush(mesh);
        }
    }

    // Registry changes, dialplan writes and the clock first.
    let hook_due = with_runtime(|rt: &mut Runtime| {
        rt.node.sync_families(&rt.registry, now);
        rt.node
            .last_hook_check
            .is_none_or(|t| at.duration_since(t) >= HOOK_CHECK)
    })
    .unwrap_or(false);
    if hook_due {
        let capture = asterisk::capture_hook();
        let _ = with_runtime(|rt| {
            rt.node.last_hook_check = Some(at);
            rt.node.capture = capture;
        });
    }
    // The wrapper hands over the value it wrote, so AstDB (and its lock, which
    // the dialplan needs too) is not touched again. Should two channels race on
    // one key, the family's next read settles it.
    if !pending.writes.is_empty() {
        let _ = with_runtime(|rt| {
            for (path, value) in pending.writes.iter() {
                let Some((family, key)) = split_path(path) else {
                    continue;
                };
                rt.node.dialplan_writes += 1;
                touch(rt, family);
                rt.node.engine.local_change(family, key, value, now);
            }
        });
    }
    // A large push goes a slice per turn: come straight back for the next one
    // (right after a tick, only a queued push makes the deadline now).
    let again = with_runtime(|rt| {
        rt.node.engine.tick(now);
        rt.node
            .engine
            .next_deadline()
            .is_some_and(|at| at <= now)
            .then(|| std::sync::Arc::clone(&rt.inbox))
    });
    if let Ok(Some(inbox)) = again {
        inbox.poke();
    }
    flush(mesh);

    // Then the families due for a read, one at a time: each read follows the
    // execution of everything the engine returned before it.
    let due = with_runtime(|rt| {
        if pending.overflowed {
            // Dialplan writes were dropped from the inbox: every family is read.
            rt.node.read_stamp.clear();
        }
        rt.node.due_reads(at, pending.overflowed)
    })
    .unwrap_or_default();
    let stamp = if due.is_empty() {
        None
    } else {
        db::committed_stamp()
    };
    for name in due {
        if with_runtime(|rt| rt.node.take_repair(&name)).unwrap_or(false) {
            repair_family(&name);
        }
        // The owner of the rows read, unless AstDB has committed nothing since.
        let to_read = with_runtime(|rt| {
            if stamp.is_some() && rt.node.read_stamp.get(&name) == stamp.as_ref() {
                rt.node.reads_skipped += 1;
                return None;
            }
            Some(rt.node.engine.own_owner(&name))
        });
        let Ok(Some(owner)) = to_read else {
            continue;
        };
        let began = Instant::now();
        let tree = db::read_tree(&name);
        let mut read = Contents::default();
        for (key, value) in tree.rows() {
            read.add(owner, &key, &value);
        }
        let took = began.elapsed();
        // Handed over: with the local changes counted so far, to see if it finds any.
        let hand_over = with_runtime(|rt| {
            let node = &mut rt.node;
            node.family_reads += 1;
            let touched = node.touched.remove(&name);
            let known = node.engine.holds_contents(&name, read)
                || (!touched && node.read_hash.get(&name) == Some(&read));
            node.read_hash.insert(name.clone(), read);
            (!known).then(|| node.engine.counters().local_changes)
        })
        .unwrap_or(None);
        if let Some(before) = hand_over {
            let rows = tree.to_vec();
            drop(tree);
            // A large read goes to the engine a slice at a time first, each slice's
            // changes saved and sent before the next is compared (a bulk import then
            // starts reaching the peers at once); the whole read follows, for the keys
            // that are gone, unless the engine then holds exactly what was read.
            let mut sliced = false;
            if rows.len() > FLUSH_OUTPUTS {
                sliced = true;
                for slice in rows.chunks(FLUSH_OUTPUTS) {
                    let _ = with_runtime(|rt| rt.node.engine.local_rows(&name, slice, now_ms()));
                    flush(mesh);
                }
            }
            let _ = with_runtime(|rt| {
                if !(sliced && rt.node.engine.holds_contents(&name, read)) {
                    rt.node.engine.local_snapshot(&name, rows, now_ms());
                }
                if rt.node.engine.counters().local_changes > before {
                    rt.node.follow_up(&name, took);
                    rt.node.read_stamp.remove(&name);
                }
            });
        } else if took >= COSTLY_READ {
            if let Some(stamp) = stamp {
                let _ = with_runtime(|rt| rt.node.read_stamp.insert(name.clone(), stamp));
            }
        }
        flush(mesh);
    }
}

/// Brings AstDB's copy of `family` back to the saved replication state: this
/// node's own keys (all keys of a global family) whose last write or delete
/// AstDB lost in a crash. AstDB commits about once a second, so a `kill -9`
/// can lose writes our metadata (one transaction a batch) kept; without this
/// the first read would take the loss for local deletes and spread them.
fn repair_family(family: &str) {
    let Ok((eid, items)) = with_runtime(|rt| (rt.eid, rt.node.engine.items(family))) else {
        return;
    };
    let current: HashMap<String, String> = db::tree(family).into_iter().collect();
    let (mut restored, mut removed) = (0usize, 0usize);
    for (id, entry) in items {
        if id.owner.is_some_and(|owner| owner != eid) {
            continue; // other servers' copies live elsewhere; the engine re-applies those
        }
        match (&entry.value, current.get(&*id.key)) {
            (Some(value), Some(now)) if now.as_str() == &**value => {}
            (Some(value), _) => {
                if db::put(family, &id.key, value).is_ok() {
                    restored += 1;
                }
            }
            (None, Some(_)) => {
                if db::del(family, &id.key) {
                    removed += 1;
                }
            }
            (None, None) => {}
        }
    }
    if restored + removed > 0 {
        warning!(
            "family '{family}': after an unclean stop, AstDB had lost recent changes; {restored} key(s) restored and {removed} deleted again from the replication state"
        );
    }
}

/// Restores func_db's callbacks; the loop has stopped.
pub fn release_capture() {
    asterisk::capture_unhook();
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
