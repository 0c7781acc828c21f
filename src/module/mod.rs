//! The running module, with `load`, `unload` and `reload` as Asterisk calls them.
//!
//! The module's thread owns the replication loop ([`Node`]: engine, replica log, link,
//! read schedule). CLI commands and dialplan functions see only a small shared view:
//! the shared families ([`Runtime`]), the status the loop publishes after each turn,
//! and the loop's inbox, where they leave commands. None of them waits on the loop's
//! disk I/O.

pub(crate) mod ami;
pub(crate) mod capture;
pub(crate) mod cli;
pub(crate) mod dialplan;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::asterisk::events::StasisEvents;
use crate::asterisk::thread::{self, OwnedThread, Signal};
use crate::asterisk::{self, config::Loaded, db::AsteriskDb, Capture};
use crate::config::{self, ClusterConfig, Transport, CONFIG_FILE};
use crate::eid::Eid;
use crate::engine::family::{validate_family_name, Mode, Registry, SharedFamily};
use crate::engine::{Engine, EngineConfig};
use crate::metadata::{self, Marks, Metadata};
use crate::node::events::{EventSink, NoEvents};
use crate::node::inbox::{Command, Inbox};
use crate::node::link::{Chosen, Link};
use crate::node::mesh::Mesh;
use crate::node::pjsip::PjsipLink;
use crate::node::redis::RedisLink;

/// Where the Redis link keeps where it stands, beside the replica log.
const REDIS_STATE_FILE: &str = "astdb_cluster.redis";
use crate::node::{self, Level, Node, Parts, Say, Status, SystemClock, Tuning};
use crate::{error, notice, warning};

/// Asterisk's load results.
const LOAD_SUCCESS: i32 = 0;
const LOAD_DECLINE: i32 = 1;
/// How often the wrapping of DB()/DB_DELETE() is checked (func_db may be reloaded).
const HOOK_CHECK: Duration = Duration::from_secs(1);

/// What the CLI and dialplan share with the module's thread: the configuration and the
/// shared families. The loop never takes this lock; it hears of changes through its
/// inbox.
pub(crate) struct Runtime {
    pub config: Arc<ClusterConfig>,
    pub eid: Eid,
    /// `astdb_cluster.sqlite3`: families marked from the dialplan or CLI.
    marks_file: Marks,
    /// Families marked from the dialplan or CLI, as stored.
    marks: Vec<SharedFamily>,
    /// Presets unshared at run time; the next reload shares them again.
    unshared_presets: BTreeSet<String>,
    pub registry: Registry,
    /// Where the CLI and dialplan leave commands for the module's thread.
    pub inbox: Arc<Inbox>,
    pub loaded_at_ms: u64,
    pub config_loaded_at_ms: u64,
}

/// What the module's thread publishes after each turn.
#[derive(Clone, Debug, Default)]
pub(crate) struct Published {
    pub node: Status,
    /// Which dialplan write paths are seen at once.
    pub capture: Capture,
}

struct Worker {
    stop: Arc<Signal>,
    thread: OwnedThread,
}

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
static STATUS: Mutex<Option<Arc<Published>>> = Mutex::new(None);
static WORKER: Mutex<Option<Worker>> = Mutex::new(None);

pub(crate) fn now_ms() -> u64 {
    node::unix_ms(SystemTime::now())
}

/// A lock that a panic elsewhere never leaves unusable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` on the loaded runtime; Err when the module is not running.
pub(crate) fn with_runtime<T>(f: impl FnOnce(&mut Runtime) -> T) -> Result<T, String> {
    match lock(&RUNTIME).as_mut() {
        Some(rt) => Ok(f(rt)),
        None => Err("res_astdb_cluster is not running".into()),
    }
}

/// What the module's thread last published (empty until its first turn).
pub(crate) fn published() -> Arc<Published> {
    lock(&STATUS).clone().unwrap_or_default()
}

/// The metadata file beside astdb.
fn metadata_path() -> PathBuf {
    asterisk::astdb_dir().join(metadata::FILE_NAME)
}

/// Reads and validates astdb_cluster.conf, logging every problem.
fn read_config(only_if_changed: bool) -> Option<Option<ClusterConfig>> {
    match asterisk::config::load(CONFIG_FILE, only_if_changed) {
        Loaded::Unchanged => Some(None),
        Loaded::Missing => {
            error!("{CONFIG_FILE} is missing: see astdb_cluster.conf.sample for a starting point");
            None
        }
        Loaded::Invalid => {
            error!("{CONFIG_FILE} could not be read (syntax error; Asterisk's log names the line)");
            None
        }
        Loaded::Sections(sections) => match config::parse(&sections) {
            Ok(cfg) => Some(Some(cfg)),
            Err(errors) => {
                for e in &errors {
                    error!("{e}");
                }
                error!(
                    "{CONFIG_FILE} has {} error(s); none of it was applied",
                    errors.len()
                );
                None
            }
        },
    }
}

impl Runtime {
    /// Rebuilds the effective set: dialplan marks, overridden by presets, and tells the
    /// module's thread.
    fn rebuild_registry(&mut self) {
        let mut registry = Registry::new();
        for mark in &self.marks {
            registry.share(mark.clone());
        }
        for preset in &self.config.presets {
            if !self.unshared_presets.contains(&preset.name) {
                registry.share(preset.clone());
            }
        }
        self.inbox.push_command(Command::Families(registry.clone()));
        self.registry = registry;
    }

    fn is_preset(&self, name: &str) -> bool {
        self.config.presets.iter().any(|p| p.name == name)
    }

    /// The metadata file's path, for `astdb cluster show status`.
    pub fn metadata_path(&self) -> &std::path::Path {
        self.marks_file.path()
    }

    /// Shares `name` in `mode` (DB_SHARED(put) or `database shared put`).
    pub fn share(&mut self, name: &str, mode: Mode) -> Result<String, String> {
        validate_family_name(name)?;
        if let Some(preset) = self
            .config
            .presets
            .iter()
            .find(|p| p.name == name && !self.unshared_presets.contains(name))
        {
            if preset.mode != mode {
                return Err(format!(
                    "family '{name}' is shared {} by a preset in {CONFIG_FILE}; the preset wins, so it stays {}",
                    preset.mode, preset.mode
                ));
            }
        }
        let family = SharedFamily::from_dialplan(name, mode);
        let previous = self.marks.iter().position(|m| m.name == name);
        if previous.is_some_and(|i| self.marks[i].mode == mode) {
            return Ok(format!("family '{name}' is already shared {mode}"));
        }
        self.marks_file.save_family(&family)?;
        match previous {
            Some(i) => self.marks[i] = family,
            None => self.marks.push(family),
        }
        self.unshared_presets.remove(name);
        self.rebuild_registry();
        Ok(match previous {
            Some(_) => format!("family '{name}' is now shared {mode} (was shared otherwise)"),
            None => format!("family '{name}' is now shared {mode}"),
        })
    }

    /// Stops sharing `name`; its data stays as it is.
    pub fn unshare(&mut self, name: &str) -> Result<String, String> {
        if self.registry.get(name).is_none() {
            return Err(format!("family '{name}' is not shared"));
        }
        self.marks_file.remove_family(name)?;
        self.marks.retain(|m| m.name != name);
        let mut message = format!("family '{name}' is no longer shared; its keys are kept");
        if self.is_preset(name) {
            self.unshared_presets.insert(name.to_string());
            message.push_str(&format!(
                " (it is a preset in {CONFIG_FILE}: the next reload shares it again)"
            ));
        }
        self.rebuild_registry();
        Ok(message)
    }
}

/// The loop's log lines, into Asterisk's logger.
fn say() -> Say {
    Arc::new(|level, text| match level {
        Level::Notice => notice!("{text}"),
        Level::Warning => warning!("{text}"),
        Level::Error => error!("{text}"),
    })
}

/// Changes handled (local, applied, sent or received) after which the heap's free pages
/// go back to the system.
const TRIM_EVERY: u64 = 100_000;
/// A turn that took this long (a large family read, even one that found nothing) also
/// makes a trim due.
const TRIM_LONG_TURN: Duration = Duration::from_millis(50);
/// A due trim waits for the loop to fall idle (a wait that ended with nothing to do)
/// for at most this long; the loop looks again this soon after its last busy turn.
const TRIM_MAX_DEFER: Duration = Duration::from_secs(1);
const TRIM_IDLE_CHECK: Duration = Duration::from_millis(100);

/// When to trim the heap: a catch-up, a bulk import or a large read leaves the
/// allocator holding the pages of its transient buffers (decoded messages, rows read,
/// outputs), which it would keep for good: a million-key catch-up left the process
/// 100 MB larger than the items it holds. A trim is due once per [`TRIM_EVERY`]
/// changes, or after a long turn, and is done once the loop falls idle: trimming in the
/// middle of a catch-up would hand back the pages of the batch just freed, and the next
/// batch would fault every one of them in again (about a third of a sender's CPU).
#[derive(Default)]
struct HeapTrim {
    trimmed_at: u64,
    /// The changes handled up to the last turn.
    seen: u64,
    due_since: Option<Instant>,
}

impl HeapTrim {
    /// After a turn that took `took`; `woken`: it was given something to do (the loop
    /// is idle when it was not and handled no change either, as between the slices of
    /// a push it sends).
    fn after_turn(&mut self, c: &crate::engine::Counters, took: Duration, woken: bool) {
        let work = c.applied + c.local_changes + c.sent_changes + c.received_changes;
        let idle = !woken && work == self.seen;
        self.seen = work;
        if self.due_since.is_none()
            && (took >= TRIM_LONG_TURN || work.saturating_sub(self.trimmed_at) >= TRIM_EVERY)
        {
            self.due_since = Some(Instant::now());
        }
        let Some(since) = self.due_since else { return };
        if idle || since.elapsed() >= TRIM_MAX_DEFER {
            self.trimmed_at = work;
            self.due_since = None;
            asterisk::trim_heap();
        }
    }

    /// How long the loop may wait for work before its next turn: not long while a trim
    /// waits for it to fall idle.
    fn wait(&self, sleep: Duration) -> Duration {
        if self.due_since.is_some() {
            sleep.min(TRIM_IDLE_CHECK)
        } else {
            sleep
        }
    }
}

/// The module's thread: turns of the loop, each after waiting for work or the loop's
/// next deadline, and the status published after each.
fn worker_loop(stop: &Signal, inbox: &Inbox, mut node: Node) {
    let mut linger = Duration::ZERO;
    let mut sleep = Duration::ZERO;
    let mut capture = Capture::default();
    let mut hooked_at: Option<Instant> = None;
    let mut trim = HeapTrim::default();
    while !stop.is_raised() {
        // A turn that panics is logged and the next one starts afresh.
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let hook_in =
                hooked_at.map_or(Duration::ZERO, |t| HOOK_CHECK.saturating_sub(t.elapsed()));
            let pending = inbox.take(trim.wait(sleep.min(hook_in)), linger);
            let woken = !pending.is_empty();
            if stop.is_raised() {
                return;
            }
            // While dialplan writes keep coming, look for more a moment after each turn
            // rather than being woken for each (a system call on the PBX thread).
            linger = if pending.writes.is_empty() {
                Duration::ZERO
            } else {
                node::LINGER
            };
            if hooked_at.is_none_or(|t| t.elapsed() >= HOOK_CHECK) {
                capture = asterisk::capture_hook();
                hooked_at = Some(Instant::now());
            }
            let began = Instant::now();
            sleep = node.turn(pending);
            trim.after_turn(node.engine().counters(), began.elapsed(), woken);
            let status = Published {
                node: node.status(),
                capture,
            };
            *lock(&STATUS) = Some(Arc::new(status));
        }));
        if turn.is_err() {
            error!("the replication loop hit an internal error; continuing");
            sleep = node::MAX_SLEEP.min(Duration::from_millis(100));
        }
    }
    node.shutdown();
}

fn start_worker(inbox: Arc<Inbox>, node: Node) -> Result<(), String> {
    let stop = Arc::new(Signal::new());
    let signal = Arc::clone(&stop);
    let thread = thread::spawn("astdb-cl-node", move || worker_loop(&signal, &inbox, node))?;
    *lock(&WORKER) = Some(Worker { stop, thread });
    Ok(())
}

fn stop_worker() {
    let worker = lock(&WORKER).take();
    if let Some(worker) = worker {
        worker.stop.raise();
        if let Ok(inbox) = with_runtime(|rt| Arc::clone(&rt.inbox)) {
            inbox.poke();
        }
        worker.thread.join();
    }
}

pub fn load() -> i32 {
    thread::install_panic_hook();
    let Some(Some(config)) = read_config(false) else {
        error!("res_astdb_cluster declined to load: no valid configuration");
        return LOAD_DECLINE;
    };
    let path = metadata_path();
    let (metadata, report) = match Metadata::open(&path) {
        Ok(opened) => opened,
        Err(why) => {
            error!("cannot open {}: {why}; declining to load", path.display());
            return LOAD_DECLINE;
        }
    };
    if let Some((aside, why)) = &report.set_aside {
        error!(
            "{} was damaged ({why}); it was moved to {} and a new one was started. Runtime-shared families must be shared again; AstDB data is untouched",
            path.display(),
            aside.display()
        );
    }
    let Metadata {
        marks: marks_file,
        replica,
        restored,
    } = metadata;
    let (marks, bad) = marks_file
        .families()
        .unwrap_or_else(|e| (Vec::new(), vec![e]));
    for why in bad {
        warning!("{}: ignoring {why}", path.display());
    }
    for note in &report.replica_notes {
        warning!("{note}");
    }
    if let Some(moved) = &report.replica_moved {
        notice!("{moved}");
    }
    let crashed = match marks_file.mark_running(true) {
        Ok(crashed) => crashed,
        Err(why) => {
            error!("{why}; declining to load");
            return LOAD_DECLINE;
        }
    };
    let eid = asterisk::local_eid();
    let events: Box<dyn EventSink> = match asterisk::events::start() {
        Ok(true) => Box::new(StasisEvents { eid, failed: 0 }),
        Ok(false) => {
            notice!(
                "stasis.conf declines this module's message types: no change events are published"
            );
            Box::new(NoEvents)
        }
        Err(why) => {
            error!("{why}; declining to load");
            return LOAD_DECLINE;
        }
    };
    let mut engine_config = EngineConfig::new(eid, config.general.cluster_node);
    engine_config.events = config.general.events;
    let engine = Engine::new(engine_config, Some(restored));
    let inbox = Arc::new(Inbox::default());
    let node = Node::new(
        Parts {
            engine,
            db: Box::new(AsteriskDb::default()),
            link: Box::new(Chosen::new({
                let inbox = Arc::clone(&inbox);
                let file = path.with_file_name(REDIS_STATE_FILE);
                Box::new(move |transport| -> Box<dyn Link> {
                    match transport {
                        Transport::Mesh => Box::new(Mesh::new(Arc::clone(&inbox), say())),
                        Transport::Pjsip => Box::new(PjsipLink::new(Arc::clone(&inbox), say())),
                        Transport::Redis => Box::new(RedisLink::new(
                            Arc::clone(&inbox),
                            say(),
                            file.clone(),
                            crashed,
                        )),
                    }
                })
            })),
            log: Box::new(replica),
            clock: Box::new(SystemClock::default()),
            say: say(),
            shared: Box::new(capture::set_shared),
            events,
            tuning: Tuning::default(),
        },
        crashed,
    );
    let now = now_ms();
    let config = Arc::new(config);
    inbox.push_command(Command::Config(Arc::clone(&config)));
    let mut rt = Runtime {
        config,
        eid,
        marks_file,
        marks,
        unshared_presets: BTreeSet::new(),
        registry: Registry::new(),
        inbox: Arc::clone(&inbox),
        loaded_at_ms: now,
        config_loaded_at_ms: now,
    };
    rt.rebuild_registry();
    let summary = format!(
        "res_astdb_cluster: this is node {} ({}) of cluster '{}', {} peer(s) configured, {} famil{} shared",
        rt.config.general.cluster_node,
        rt.eid,
        rt.config.general.cluster_name,
        rt.config.nodes.len(),
        rt.registry.len(),
        if rt.registry.len() == 1 { "y" } else { "ies" }
    );
    if rt.config.general.cluster_secret.is_none() {
        warning!("no cluster_secret in [general] of {CONFIG_FILE}: the network stays closed until one is set");
    }
    *lock(&RUNTIME) = Some(rt);
    capture::set_inbox(Some(Arc::clone(&inbox)));
    if let Err(why) = start_worker(inbox, node) {
        error!("{why}; declining to load");
        capture::set_inbox(None);
        asterisk::events::stop();
        lock(&RUNTIME).take();
        return LOAD_DECLINE;
    }
    if let Err(why) = asterisk::register_interfaces() {
        error!("{why}; declining to load");
        stop_and_release();
        return LOAD_DECLINE;
    }
    notice!("{summary}");
    LOAD_SUCCESS
}

/// Stops the module's thread, gives func_db its callbacks back and drops the state.
fn stop_and_release() {
    stop_worker();
    // The thread was the only publisher; the messages it sent may still be on their way.
    let alive = asterisk::events::stop();
    if alive > 0 {
        warning!("{alive} change event(s) were still being delivered after 5 s");
    }
    asterisk::capture_unhook();
    capture::set_inbox(None);
    lock(&STATUS).take();
    if let Some(rt) = lock(&RUNTIME).take() {
        if let Err(why) = rt.marks_file.mark_running(false) {
            error!("{why}");
        }
    }
}

pub fn unload() -> i32 {
    asterisk::unregister_interfaces();
    stop_and_release();
    0
}

pub fn reload() -> i32 {
    let config = match read_config(true) {
        Some(Some(config)) => config,
        Some(None) => return 0,
        None => {
            warning!("{CONFIG_FILE} not applied; keeping the last good configuration");
            return 0;
        }
    };
    let applied = with_runtime(|rt| {
        let before: BTreeSet<String> = rt.registry.iter().map(|f| f.name.clone()).collect();
        rt.config = Arc::new(config);
        rt.unshared_presets.clear();
        rt.config_loaded_at_ms = now_ms();
        rt.inbox
            .push_command(Command::Config(Arc::clone(&rt.config)));
        rt.rebuild_registry();
        let after: BTreeSet<String> = rt.registry.iter().map(|f| f.name.clone()).collect();
        let added: Vec<&String> = after.difference(&before).collect();
        let removed: Vec<&String> = before.difference(&after).collect();
        notice!(
            "{CONFIG_FILE} reloaded: {} famil{} shared ({} added, {} no longer shared), {} peer(s)",
            after.len(),
            if after.len() == 1 { "y" } else { "ies" },
            added.len(),
            removed.len(),
            rt.config.nodes.len()
        );
    });
    if let Err(why) = applied {
        warning!("reload ignored: {why}");
    }
    0
}
