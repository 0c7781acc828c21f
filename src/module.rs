//! The running module: configuration, shared families, the metadata file and
//! the scan thread, with `load`, `unload` and `reload` as Asterisk calls them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::asterisk::thread::{self, OwnedThread, Signal};
use crate::asterisk::{self, config::Loaded};
use crate::capture::{self, Inbox};
use crate::config::{self, ClusterConfig, CONFIG_FILE};
use crate::engine::family::{validate_family_name, Mode, Registry, SharedFamily};
use crate::engine::{Eid, Engine, EngineConfig};
use crate::mesh::{Mesh, MeshStatus};
use crate::metadata::{self, Metadata};
use crate::node::{self, Node};
use crate::{error, notice, warning};

/// Asterisk's load results.
const LOAD_SUCCESS: i32 = 0;
const LOAD_DECLINE: i32 = 1;

pub struct Runtime {
    pub config: ClusterConfig,
    pub eid: Eid,
    pub metadata: Metadata,
    /// Families marked from the dialplan or CLI, as stored.
    marks: Vec<SharedFamily>,
    /// Presets unshared at run time; the next reload shares them again.
    unshared_presets: BTreeSet<String>,
    pub registry: Registry,
    pub node: Node,
    /// The network as the module's thread last saw it.
    pub mesh: MeshStatus,
    /// Where capture and the CLI leave work for the module's thread.
    pub inbox: Arc<Inbox>,
    pub loaded_at_ms: u64,
    pub config_loaded_at_ms: u64,
    /// Counts configurations applied, so the module's thread reconciles the network
    /// only when one was.
    pub config_generation: u64,
}

struct Worker {
    stop: Arc<Signal>,
    thread: OwnedThread,
}

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
static WORKER: Mutex<Option<Worker>> = Mutex::new(None);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The runtime, if loaded. A panic elsewhere never leaves it unusable.
fn runtime() -> MutexGuard<'static, Option<Runtime>> {
    RUNTIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` on the loaded runtime; Err when the module is not running.
pub fn with_runtime<T>(f: impl FnOnce(&mut Runtime) -> T) -> Result<T, String> {
    match runtime().as_mut() {
        Some(rt) => Ok(f(rt)),
        None => Err("res_astdb_cluster is not running".into()),
    }
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
    /// Rebuilds the effective set: dialplan marks, overridden by presets.
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
        self.registry = registry;
        // The module's thread tells the engine on its next turn.
        self.inbox.poke();
    }

    fn is_preset(&self, name: &str) -> bool {
        self.config.presets.iter().any(|p| p.name == name)
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
        self.metadata.save_family(&family)?;
        match previous {
            Some(i) => self.marks[i] = family,
            None => self.marks.push(family),
        }
        self.unshared_presets.remove(name);
        self.rebuild_registry();
        asterisk::manager_event(
            "AstDBClusterFamilyShared",
            &[("Family", name), ("Mode", &mode.to_string())],
        );
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
        self.metadata.remove_family(name)?;
        self.marks.retain(|m| m.name != name);
        let mut message = format!("family '{name}' is no longer shared; its keys are kept");
        if self.is_preset(name) {
            self.unshared_presets.insert(name.to_string());
            message.push_str(&format!(
                " (it is a preset in {CONFIG_FILE}: the next reload shares it again)"
            ));
        }
        self.rebuild_registry();
        asterisk::manager_event("AstDBClusterFamilyUnshared", &[("Family", name)]);
        Ok(message)
    }
}

fn worker_loop(stop: &Signal, inbox: &Arc<Inbox>) {
    let mut mesh = Mesh::new();
    let mut reconciled = None;
    let mut linger = Duration::ZERO;
    while !stop.is_raised() {
        // A turn that panics is logged and the next one starts afresh.
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let config = with_runtime(|rt| {
                (reconciled != Some(rt.config_generation))
                    .then(|| (rt.config.clone(), rt.eid, rt.config_generation))
            });
            if let Ok(Some((config, eid, generation))) = config {
                mesh.reconcile(&config, eid, inbox);
                reconciled = Some(generation);
            }
            let pending = inbox.take(node::TICK, linger);
            if stop.is_raised() {
                return;
            }
            // While dialplan writes keep coming, look for more a moment after each
            // turn rather than being woken for each (a system call on the PBX thread).
            linger = if pending.writes.is_empty() {
                Duration::ZERO
            } else {
                node::LINGER
            };
            node::turn(pending, &mut mesh);
            let status = mesh.status();
            let _ = with_runtime(|rt| rt.mesh = status);
        }));
        if turn.is_err() {
            error!("the replication loop hit an internal error; continuing");
        }
    }
    mesh.shutdown();
}

fn start_worker(inbox: Arc<Inbox>) -> Result<(), String> {
    let stop = Arc::new(Signal::new());
    let signal = Arc::clone(&stop);
    let thread = thread::spawn("astdb-cl-node", move || worker_loop(&signal, &inbox))?;
    *WORKER.lock().unwrap_or_else(|p| p.into_inner()) = Some(Worker { stop, thread });
    Ok(())
}

fn stop_worker() {
    let worker = WORKER.lock().unwrap_or_else(|p| p.into_inner()).take();
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
    let path = asterisk::astdb_dir().join(metadata::FILE_NAME);
    let (mut metadata, report) = match Metadata::open(&path) {
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
    let (marks, bad) = metadata
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
    let restored = Some(metadata.take_restored());
    let crashed = match metadata.mark_running(true) {
        Ok(crashed) => crashed,
        Err(why) => {
            error!("{why}; declining to load");
            return LOAD_DECLINE;
        }
    };
    let eid = asterisk::local_eid();
    let engine = Engine::new(
        EngineConfig::new(eid, config.general.cluster_node),
        restored,
    );
    let inbox = Arc::new(Inbox::default());
    let now = now_ms();
    let mut rt = Runtime {
        config,
        eid,
        metadata,
        marks,
        unshared_presets: BTreeSet::new(),
        registry: Registry::new(),
        node: {
            let mut node = Node::new(engine);
            if crashed {
                node.repair_after_crash();
            }
            node
        },
        mesh: MeshStatus::default(),
        inbox: Arc::clone(&inbox),
        loaded_at_ms: now,
        config_loaded_at_ms: now,
        config_generation: 0,
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
    *runtime() = Some(rt);
    capture::set_inbox(Some(Arc::clone(&inbox)));
    if let Err(why) = start_worker(inbox) {
        error!("{why}; declining to load");
        capture::set_inbox(None);
        runtime().take();
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
    node::release_capture();
    capture::set_inbox(None);
    if let Some(rt) = runtime().take() {
        if let Err(why) = rt.metadata.mark_running(false) {
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
        rt.config = config;
        rt.unshared_presets.clear();
        rt.config_loaded_at_ms = now_ms();
        rt.config_generation += 1;
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
