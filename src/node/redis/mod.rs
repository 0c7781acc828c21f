//! Redis (or Valkey) as the loop's [`Link`]: the cluster's state kept in Redis, every
//! node reading the others' changes from one stream.
//!
//! To the engine, Redis is one peer, the relay ([`RELAY_EID`], node [`RELAY_NODE`]):
//! it pushes its changes to it once, whatever the number of nodes, and hears every
//! other node's changes from it. The relay answers the engine's sync like a peer:
//!
//! - a push is merged in Redis by version, atomically (a Lua script), and appended to
//!   the change stream; a change that lost comes back with the winner;
//! - a digest is answered "equal" while the link knows the engine holds what Redis
//!   holds (it has read every change since it last compared, and lost none of its
//!   own), otherwise with the family's full state from Redis: its records as changes,
//!   then a summary, so the engine pushes what Redis lacks;
//! - a pull is answered from the family's hash.
//!
//! A node away (restarted, cut off, Redis down) resumes reading the stream where it
//! stopped when the stream still holds that point, at a cost in proportion to what
//! changed; otherwise, and after a crash, it compares each family in full. Pushes
//! made while Redis cannot be reached wait (up to [`HELD_CHANGES`]) and are merged
//! when it returns. Where it stopped is saved beside the replica log
//! (`astdb_cluster.redis`), moved only after the loop saved what it made of it.
//!
//! Two threads: the reader blocks on the stream; the writer runs the loop's sends,
//! the heartbeat in the node table and the collection of old tombstones.

mod reader;
pub mod record;
pub mod server;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{unbounded, Sender};

use super::inbox::Inbox;
use super::link::{Link, LinkEvent, LinkStatus, Notices, PeerState, PeerView};
use super::{Level, Say};
use crate::config::{ClusterConfig, RedisSettings};
use crate::eid::Eid;
use crate::engine::{Body, Change, ItemId, Message, Mode, SharingPolicy, Version, RELAY_NODE};
use record::{Opened, Refusal, Sealer};
use server::StreamId;

/// The EID the engine knows Redis by: a broadcast address, never a server's.
pub const RELAY_EID: Eid = Eid([0xff; 6]);
/// Changes held while Redis cannot be reached; beyond this they are dropped and the
/// families concerned are compared in full once it is back.
pub const HELD_CHANGES: usize = 200_000;
/// How long the loop waits for the writer to take a burst of pushes before it lets
/// them go (their families are then compared in full).
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// A node not heard from for this long is shown down.
pub const NODE_SILENT_MS: u64 = 5_000;

/// The settings that need new threads when they change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    cluster: String,
    secret: String,
    node: u32,
    eid: Eid,
    settings: RedisSettings,
}

/// What the threads share with each other and with the link.
struct Context {
    id: Identity,
    keys: server::Keys,
    sealer: Sealer,
    inbox: Arc<Inbox>,
    say: Say,
    stop: AtomicBool,
    /// Changes handed to the writer and not yet taken: bounded like the held ones,
    /// so that a Redis that hangs rather than refuses cannot make the queue grow.
    queued: AtomicUsize,
    state: Mutex<State>,
    /// What is said once, and the refused records by cause.
    notices: Notices,
    /// Multicast presets: a change from a node outside the list is not applied.
    policies: Mutex<BTreeMap<String, SharingPolicy>>,
    file: PathBuf,
}

/// One node seen in the node table.
#[derive(Clone, Debug)]
struct Seen {
    eid: Eid,
    node: u32,
    seen_ms: u64,
    read_to: u64,
}

#[derive(Default)]
struct State {
    /// The reader is connected and reading.
    reading: bool,
    /// The writer is connected.
    writing: bool,
    /// The server as last reached, or why it cannot be.
    server: String,
    problem: Option<String>,
    epoch: Option<String>,
    /// Bumped whenever what the link knows is void (new epoch, a gap in the stream):
    /// a comparison started before it does not count.
    generation: u64,
    /// Delivered to the inbox up to here.
    delivered: StreamId,
    /// The stream entry of this node's latest change merged into Redis.
    pushed_to: StreamId,
    /// Marks handed to the loop with the position each stands for.
    marks: VecDeque<(u64, StreamId)>,
    next_mark: u64,
    /// Saved by the loop up to here (what the file says).
    saved: StreamId,
    /// Families whose every change in Redis the engine has: their digests are
    /// answered equal.
    synced: BTreeSet<String>,
    shared: BTreeSet<String>,
    /// Tombstones merged into Redis, acknowledged to the engine once the reader has
    /// read past them (so no older change of the key can still come from the stream).
    acks: Vec<(StreamId, String, Mode, ItemId, Version)>,
    nodes: Vec<Seen>,
    send_errors: u64,
    held: usize,
    lag_ms: Option<u64>,
    /// The relay was announced to the engine.
    announced: bool,
    /// Unsent or unmerged work was dropped at some point: not a clean stop.
    dirty: bool,
    /// Families compared with Redis in full, and times the stream was resumed where
    /// this node had stopped (what a node away cost).
    compares: u64,
    resumed: u64,
}

impl Context {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets what the link knew of every family: each is compared in full next.
    fn forget_all(st: &mut State) {
        st.synced.clear();
        st.generation += 1;
    }

    /// Forgets what the link knew of `family`; a comparison under way (of any family)
    /// no longer counts either, as it may have started before what was lost.
    fn forget(st: &mut State, family: &str) {
        st.synced.remove(family);
        st.generation += 1;
    }

    /// Redis gives out stream IDs in order: one whose last ID is below what this node
    /// already read or wrote there lost those changes (a failover to a replica that
    /// lagged, a restart from an older snapshot).
    fn lost_writes(st: &State, span: &server::StreamSpan) -> bool {
        span.last < st.delivered.max(st.pushed_to)
    }

    /// Counts a refused record and says so once per cause.
    fn refuse(&self, cause: Refusal, what: &str) {
        let text = cause.as_str();
        self.notices.refuse(
            text,
            &format!("Redis holds a {text} ({what}); it was not applied (said once per cause, counted in 'astdb cluster show status')"),
            "redis".into(),
            None,
            text,
            what.to_string(),
        );
    }

    /// Says `text` once until `clear_said` (a connection problem, say).
    fn say_once(&self, level: Level, key: &str, text: &str) {
        self.notices.say_once(key, level, text);
    }

    fn clear_said(&self, key: &str) -> bool {
        self.notices.clear(key)
    }

    /// Whether this node applies `opened`, a change to `family`: it was meant for this
    /// node, and its writer is among the family's nodes here.
    fn admit(&self, family: &str, opened: &Opened) -> bool {
        if !opened.meant_for(self.id.node) {
            return false;
        }
        let policies = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        policies
            .get(family)
            .is_none_or(|p| matches!(p, SharingPolicy::Broadcast) || policy_has(p, opened.node))
    }

    /// Opens `rec`, the record Redis holds for item `field` of `family`: the change, if
    /// it opens and is meant for this node. A refusal is counted, with `what` (where
    /// the record was found) for the log.
    fn open_change(
        &self,
        family: &str,
        mode: Mode,
        field: &[u8],
        rec: &[u8],
        what: impl Fn() -> String,
    ) -> Option<Change> {
        let Some(item) = record::item_of(mode, field) else {
            self.refuse(Refusal::Malformed, &what());
            return None;
        };
        match self.sealer.open(family, mode, field, rec) {
            Ok(o) if self.admit(family, &o) => Some(Change {
                item,
                entry: o.entry,
            }),
            Ok(_) => None,
            Err(cause) => {
                self.refuse(cause, &what());
                None
            }
        }
    }

    fn policy(&self, family: &str) -> SharingPolicy {
        let policies = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        policies.get(family).cloned().unwrap_or_default()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Writes where the link stands (epoch, saved position, families known in sync).
    fn save_file(&self, clean: bool) {
        let text = {
            let st = self.state();
            let mut t = format!(
                "epoch {}\nposition {}\nclean {}\n",
                st.epoch.as_deref().unwrap_or("-"),
                st.saved,
                u8::from(clean && !st.dirty)
            );
            // A family counts as known only while it is shared and compared.
            for f in st.synced.iter().filter(|f| st.shared.contains(*f)) {
                t.push_str("synced ");
                t.push_str(f);
                t.push('\n');
            }
            t
        };
        let tmp = self.file.with_extension("redis.tmp");
        let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.file));
        if let Err(e) = result {
            self.say_once(
                Level::Warning,
                "state file",
                &format!(
                    "cannot write {}: {e}; after a restart every family is compared with Redis in full",
                    self.file.display()
                ),
            );
        }
    }
}

fn policy_has(p: &SharingPolicy, node: u32) -> bool {
    match p {
        SharingPolicy::Broadcast => true,
        SharingPolicy::Multicast(nodes) => nodes.contains(&node),
    }
}

/// What the file said at start.
#[derive(Debug, Default, PartialEq, Eq)]
struct Resume {
    epoch: Option<String>,
    position: StreamId,
    clean: bool,
    synced: BTreeSet<String>,
}

fn read_file(path: &std::path::Path) -> Resume {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Resume::default();
    };
    let mut r = Resume::default();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("epoch", e)) if e != "-" => r.epoch = Some(e.to_string()),
            Some(("position", p)) => r.position = StreamId::parse(p).unwrap_or_default(),
            Some(("clean", c)) => r.clean = c == "1",
            Some(("synced", f)) => {
                r.synced.insert(f.to_string());
            }
            _ => {}
        }
    }
    r
}

/// Work for the writer, in the loop's order.
enum Job {
    Send(Message),
    Shared(BTreeSet<String>),
    Refresh(String),
    Saved(u64),
}

struct Running {
    ctx: Arc<Context>,
    jobs: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

pub struct RedisLink {
    inbox: Arc<Inbox>,
    say: Say,
    file: PathBuf,
    /// The previous run crashed: the families known in sync are not trusted.
    crashed: bool,
    running: Option<Running>,
    closed_because: String,
    shared: BTreeSet<String>,
    /// When a wait for the writer last ran out.
    gave_up: Option<std::time::Instant>,
}

impl RedisLink {
    /// A link whose events go to `inbox`, keeping where it stands in `file`; started
    /// by the first `configure`.
    pub fn new(inbox: Arc<Inbox>, say: Say, file: PathBuf, crashed: bool) -> Self {
        RedisLink {
            inbox,
            say,
            file,
            crashed,
            running: None,
            closed_because: "not started".into(),
            shared: BTreeSet::new(),
            gave_up: None,
        }
    }

    fn start(&mut self, id: Identity) {
        let resume = read_file(&self.file);
        let trusted = resume.clean && !self.crashed;
        // Only the first start after loading may trust the file's word.
        self.crashed = true;
        let mut state = State {
            epoch: resume.epoch.clone(),
            delivered: resume.position,
            saved: resume.position,
            synced: if trusted {
                resume.synced.clone()
            } else {
                BTreeSet::new()
            },
            shared: self.shared.clone(),
            server: id.settings.url_shown(),
            ..State::default()
        };
        if resume.epoch.is_none() {
            state.generation = 1;
        }
        let ctx = Arc::new(Context {
            keys: server::Keys::new(&id.cluster),
            sealer: Sealer::new(&id.cluster, &id.secret),
            id,
            inbox: Arc::clone(&self.inbox),
            say: Arc::clone(&self.say),
            stop: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            state: Mutex::new(state),
            notices: Notices::new(Arc::clone(&self.say), Arc::clone(&self.inbox)),
            policies: Mutex::new(BTreeMap::new()),
            file: self.file.clone(),
        });
        // From here a crash leaves the file unclean.
        ctx.save_file(false);
        let (tx, rx) = unbounded();
        let mut threads = Vec::new();
        let spawned = [
            ("astdb-cl-rd-in", {
                let ctx = Arc::clone(&ctx);
                Box::new(move || reader::run(&ctx)) as Box<dyn FnOnce() + Send>
            }),
            ("astdb-cl-rd-out", {
                let ctx = Arc::clone(&ctx);
                Box::new(move || writer::run(&ctx, &rx))
            }),
        ];
        for (name, body) in spawned {
            match std::thread::Builder::new().name(name.into()).spawn(body) {
                Ok(h) => threads.push(h),
                Err(e) => (self.say)(
                    Level::Error,
                    &format!("could not start the Redis thread {name}: {e}"),
                ),
            }
        }
        self.running = Some(Running {
            ctx,
            jobs: tx,
            threads,
        });
    }

    fn job(&mut self, job: Job) {
        if let Some(r) = &self.running {
            let _ = r.jobs.send(job);
        }
    }
}

impl RedisSettings {
    /// The URL without its password, for display.
    pub fn url_shown(&self) -> String {
        match redis::parse_redis_url(&self.url) {
            Some(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => self.url.clone(),
        }
    }
}

impl Link for RedisLink {
    fn configure(&mut self, cfg: &ClusterConfig, eid: Eid) {
        let g = &cfg.general;
        let (Some(secret), Some(settings)) = (&g.cluster_secret, &g.redis) else {
            self.shutdown();
            self.closed_because = "closed: no cluster_secret in [general]".into();
            return;
        };
        let id = Identity {
            cluster: g.cluster_name.clone(),
            secret: secret.clone(),
            node: g.cluster_node,
            eid,
            settings: settings.clone(),
        };
        if self.running.as_ref().is_some_and(|r| r.ctx.id != id) {
            self.shutdown();
        }
        let fresh = self.running.is_none();
        if fresh {
            self.start(id);
        }
        if let Some(r) = &self.running {
            let new: BTreeMap<String, SharingPolicy> = cfg
                .presets
                .iter()
                .map(|f| (f.name.clone(), f.policy.clone()))
                .collect();
            let mut policies = r.ctx.policies.lock().unwrap_or_else(|p| p.into_inner());
            if *policies != new {
                *policies = new;
                drop(policies);
                // Changes once filtered out may now apply (and the reverse): every
                // family is compared again.
                if !fresh {
                    Context::forget_all(&mut r.ctx.state());
                }
            }
        }
    }

    fn send(&mut self, to: Eid, msg: &Message) {
        if to != RELAY_EID {
            return;
        }
        if let (Some(r), Body::Changes(changes)) = (&self.running, &msg.body) {
            // While Redis takes changes, a burst (a bulk import) waits for the writer
            // rather than being let go; only a Redis that does not answer drops them.
            // After a wait that did not help, the next ones do not wait (for a while).
            let waited = std::time::Instant::now();
            let patient = self.gave_up.is_none_or(|at| at.elapsed() > QUEUE_WAIT * 2);
            while patient
                && r.ctx.queued.load(Ordering::Relaxed) > HELD_CHANGES
                && r.ctx.state().writing
            {
                if waited.elapsed() > QUEUE_WAIT {
                    self.gave_up = Some(std::time::Instant::now());
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let queued = r.ctx.queued.fetch_add(changes.len(), Ordering::Relaxed);
            if queued > HELD_CHANGES {
                r.ctx.queued.fetch_sub(changes.len(), Ordering::Relaxed);
                let mut st = r.ctx.state();
                Context::forget(&mut st, &msg.family);
                st.dirty = true;
                st.send_errors += 1;
                drop(st);
                r.ctx.say_once(
                    Level::Warning,
                    "queue overflow",
                    &format!("more than {HELD_CHANGES} changes wait for Redis, which does not answer; further ones are let go and their families compared in full once it does"),
                );
                return;
            }
        }
        self.job(Job::Send(msg.clone()));
    }

    fn status(&self) -> LinkStatus {
        let Some(r) = &self.running else {
            return LinkStatus {
                state: self.closed_because.clone(),
                ..LinkStatus::default()
            };
        };
        let now = super::unix_ms(SystemTime::now());
        let st = r.ctx.state();
        let connection = match (&st.problem, st.reading && st.writing) {
            (_, true) => "connected".to_string(),
            (Some(why), false) => format!("not connected: {why}"),
            (None, false) => "connecting".to_string(),
        };
        let lag = st
            .lag_ms
            .map_or(String::new(), |l| format!(", stream lag {l} ms"));
        let held = if st.held > 0 {
            format!(", {} change(s) waiting", st.held)
        } else {
            String::new()
        };
        let peers = st
            .nodes
            .iter()
            .filter(|n| n.eid != r.ctx.id.eid)
            .map(|n| PeerView {
                node: n.node,
                eid: Some(n.eid),
                state: if now.saturating_sub(n.seen_ms) <= NODE_SILENT_MS {
                    PeerState::Up
                } else {
                    PeerState::Down
                },
                last_seen: Some(
                    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(n.seen_ms),
                ),
                rtt: None,
                bytes_in: 0,
                bytes_out: 0,
                frames_in: 0,
                frames_out: 0,
                protocol: None,
            })
            .collect();
        LinkStatus {
            state: format!(
                "redis {} {connection}{lag}{held}; stream resumed {} time(s), {} full comparison(s)",
                st.server, st.resumed, st.compares
            ),
            peers,
            refusals: r.ctx.notices.refusals(),
            send_errors: st.send_errors,
            undecodable: 0,
        }
    }

    fn saved(&mut self, mark: u64) {
        self.job(Job::Saved(mark));
    }

    fn shared(&mut self, families: &BTreeSet<String>) {
        self.shared = families.clone();
        self.job(Job::Shared(families.clone()));
    }

    fn refresh(&mut self, family: &str) {
        self.job(Job::Refresh(family.to_string()));
    }

    fn node_of(&self, eid: Eid) -> Option<u32> {
        let r = self.running.as_ref()?;
        if eid == r.ctx.id.eid {
            return Some(r.ctx.id.node);
        }
        r.ctx
            .state()
            .nodes
            .iter()
            .find(|n| n.eid == eid)
            .map(|n| n.node)
    }

    fn unsent(&mut self) {
        if let Some(r) = &self.running {
            r.ctx.state().dirty = true;
        }
    }

    fn shutdown(&mut self) {
        let Some(r) = self.running.take() else {
            return;
        };
        r.ctx.stop.store(true, Ordering::Relaxed);
        drop(r.jobs);
        for t in r.threads {
            let _ = t.join();
        }
        r.ctx.save_file(true);
        self.closed_because = "stopped".into();
    }
}

impl Drop for RedisLink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Tells the engine that the relay is there, once per link.
fn announce(ctx: &Context) {
    let first = {
        let mut st = ctx.state();
        !std::mem::replace(&mut st.announced, true)
    };
    if first {
        ctx.inbox.push_event(LinkEvent::PeerUp {
            node: RELAY_NODE,
            eid: RELAY_EID,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_keeps_epoch_position_cleanliness_and_known_families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("astdb_cluster.redis");
        assert_eq!(read_file(&path), Resume::default());
        std::fs::write(
            &path,
            "epoch abc\nposition 12-3\nclean 1\nsynced blacklist\nsynced a b\n",
        )
        .unwrap();
        let r = read_file(&path);
        assert_eq!(r.epoch.as_deref(), Some("abc"));
        assert_eq!(r.position, StreamId { ms: 12, seq: 3 });
        assert!(r.clean);
        assert_eq!(
            r.synced,
            ["blacklist", "a b"].iter().map(|s| s.to_string()).collect()
        );
    }
}
