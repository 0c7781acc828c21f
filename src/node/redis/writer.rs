//! The writer: runs what the engine sends to the relay against Redis (merges,
//! comparisons, pulls), holds pushes while Redis is away, keeps this node's entry in
//! the node table and collects old tombstones.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{Connection, Value};

use super::reader::{send, send_acks};
use super::record::{self, field, Presence};
use super::server::{self, bytes, lost_connection, mode_letter, Scripts, StreamId};
use super::{Context, Job, Seen, HELD_CHANGES};
use crate::eid::Eid;
use crate::engine::item::{digest_hash, position_of};
use crate::engine::{Body, Change, DigestNode, ItemId, Message, Mode, SummaryItem, SummaryRange};
use crate::node::link::LinkEvent;
use crate::node::{unix_ms, Level};

/// How often the node table is written and read.
const BEAT: Duration = Duration::from_secs(1);
/// How often old tombstones are looked for.
const COLLECT_EVERY: Duration = Duration::from_secs(30);
/// Tombstones collected per family and round.
const COLLECT_LIMIT: usize = 1000;
/// How long a tombstone stays after every node has read past it: longer than any
/// change can be in flight (the engine's message age and clock skew bounds).
const COLLECT_GRACE_MS: u64 = 150_000;
/// A node silent this long no longer holds tombstones back, and leaves the table.
const FORGET_NODE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Items per HSCAN or HMGET.
const SCAN_COUNT: usize = 2000;
/// Changes per message handed to the loop from a comparison.
const COMPARE_CHANGES: usize = 4096;
/// Changes merged by one script call (Redis runs nothing else meanwhile: a few ms).
const MERGE_CHANGES: usize = 2048;
/// The state file is written at most this often while running.
const FILE_EVERY: Duration = Duration::from_millis(500);

struct Writer<'a> {
    ctx: &'a Context,
    con: Option<Connection>,
    next_try: Instant,
    backoff: Duration,
    scripts: Scripts,
    /// Pushes waiting for Redis, and how many changes they hold.
    held: VecDeque<Message>,
    held_changes: usize,
    /// Each family's mode, as the engine last sent it.
    modes: BTreeMap<String, Mode>,
    next_beat: Instant,
    next_collect: Instant,
    next_file: Instant,
    file_at: StreamId,
}

pub(super) fn run(ctx: &Context, rx: &Receiver<Job>) {
    let now = Instant::now();
    let mut w = Writer {
        ctx,
        con: None,
        next_try: now,
        backoff: Duration::from_millis(200),
        scripts: Scripts::default(),
        held: VecDeque::new(),
        held_changes: 0,
        modes: BTreeMap::new(),
        next_beat: now,
        next_collect: now + COLLECT_EVERY,
        next_file: now,
        file_at: StreamId::default(),
    };
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => Ok(job),
            None => rx.recv_timeout(Duration::from_millis(100)),
        };
        match job {
            Ok(Job::Send(msg)) => {
                let (msg, after) = coalesce(msg, rx);
                next = after;
                w.job(Job::Send(msg));
            }
            Ok(job) => w.job(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if ctx.stopping() && w.con.is_none() {
            // Stopping and Redis is away: what is left cannot be merged now.
            while rx.try_recv().is_ok() {}
            ctx.state().dirty = true;
            break;
        }
        w.tick();
    }
    if !w.held.is_empty() {
        ctx.state().dirty = true;
    }
    ctx.state().writing = false;
}

/// Pushes to one family queued behind `msg`, joined to it (up to [`MERGE_CHANGES`]):
/// one script call merges them all. Returns the first job that could not join.
fn coalesce(mut msg: Message, rx: &Receiver<Job>) -> (Message, Option<Job>) {
    let Body::Changes(changes) = &mut msg.body else {
        return (msg, None);
    };
    while changes.len() < MERGE_CHANGES {
        match rx.try_recv() {
            Ok(Job::Send(m))
                if m.family == msg.family
                    && m.mode == msg.mode
                    && matches!(&m.body, Body::Changes(c) if c.len() + changes.len() <= MERGE_CHANGES) =>
            {
                if let Body::Changes(more) = m.body {
                    changes.extend(more);
                }
            }
            Ok(other) => return (msg, Some(other)),
            Err(_) => break,
        }
    }
    (msg, None)
}

impl Writer<'_> {
    fn job(&mut self, job: Job) {
        match job {
            Job::Send(msg) => self.send(msg),
            Job::Shared(names) => {
                let mut st = self.ctx.state();
                // A family no longer shared drops its changes in the engine: forgotten
                // (which also voids a comparison of it under way).
                let gone: Vec<String> = st.shared.difference(&names).cloned().collect();
                for family in gone {
                    super::Context::forget(&mut st, &family);
                }
                // (What the state file said is known counts only for families shared.)
                st.synced.retain(|f| names.contains(f));
                st.shared = names;
            }
            Job::Refresh(family) => {
                super::Context::forget(&mut self.ctx.state(), &family);
            }
            Job::Saved(mark) => {
                let mut st = self.ctx.state();
                while st.marks.front().is_some_and(|(m, _)| *m <= mark) {
                    if let Some((_, pos)) = st.marks.pop_front() {
                        st.saved = pos;
                    }
                }
            }
        }
    }

    /// The connection, made if it is time to try.
    fn ensure(&mut self) -> bool {
        if self.con.is_some() {
            return true;
        }
        if Instant::now() < self.next_try || self.ctx.stopping() {
            return false;
        }
        match server::connect(&self.ctx.id.settings) {
            Ok(mut s) => {
                self.backoff = Duration::from_millis(200);
                if let Err(e) = self.check_epoch(&mut s.con) {
                    self.lost(e);
                    return false;
                }
                self.con = Some(s.con);
                self.ctx.state().writing = true;
                self.replay();
                self.con.is_some()
            }
            Err(why) => {
                self.ctx.state().problem.get_or_insert(why);
                self.next_try = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                false
            }
        }
    }

    /// A new data set (Redis emptied or replaced), or one that lost changes this node
    /// saw, voids what the link knew. Checked before anything is pushed on a new
    /// connection: a push would move the stream past the evidence.
    fn check_epoch(&self, con: &mut Connection) -> redis::RedisResult<()> {
        let epoch = server::epoch(con, &self.ctx.keys)?;
        let span = server::stream_span(con, &self.ctx.keys)?;
        let mut st = self.ctx.state();
        if st.epoch.as_deref() == Some(epoch.as_str()) && super::Context::lost_writes(&st, &span) {
            super::Context::forget_all(&mut st);
            // The stream starts over from what Redis has.
            st.pushed_to = span.last;
            drop(st);
            (self.ctx.say)(
                Level::Notice,
                "Redis holds fewer changes than this node already saw there (a failover or a restart lost the last writes): each shared family is compared and put back",
            );
            return Ok(());
        }
        if st.epoch.as_deref() != Some(epoch.as_str()) {
            let had = st.epoch.replace(epoch).is_some();
            super::Context::forget_all(&mut st);
            drop(st);
            if had {
                (self.ctx.say)(
                    Level::Notice,
                    "Redis no longer holds the data set this node knew (it was emptied or replaced): each shared family is compared and put back",
                );
            }
        }
        Ok(())
    }

    fn lost(&mut self, e: redis::RedisError) {
        self.con = None;
        self.next_try = Instant::now() + self.backoff;
        let mut st = self.ctx.state();
        st.writing = false;
        st.problem = Some(e.to_string());
    }

    fn send(&mut self, msg: Message) {
        if let Body::Changes(c) = &msg.body {
            self.ctx
                .queued
                .fetch_sub(c.len(), std::sync::atomic::Ordering::Relaxed);
        }
        self.modes.insert(msg.family.clone(), msg.mode);
        let Message {
            family, mode, body, ..
        } = msg;
        match body {
            Body::Changes(changes) => {
                if self.ensure() {
                    self.merge_or_hold(family, mode, changes);
                } else {
                    self.hold(family, mode, changes);
                }
            }
            // Stopping: a comparison now would only delay the unload.
            Body::Digest(_) if self.ctx.stopping() => {}
            Body::Digest(nodes) if self.ensure() => self.digest(family, mode, nodes),
            Body::Pull(items) if self.ensure() => self.pull(family, mode, items),
            Body::Pull(_) => {
                super::Context::forget(&mut self.ctx.state(), &family);
            }
            // Redis keeps tombstones itself; the engine never summarises to the relay.
            _ => {}
        }
    }

    fn merge_or_hold(&mut self, family: String, mode: Mode, changes: Vec<Change>) {
        match self.merge(&family, mode, &changes) {
            Ok(()) => {}
            Err(e) if lost_connection(&e) => {
                self.lost(e);
                self.hold(family, mode, changes);
            }
            Err(e) => {
                {
                    let mut st = self.ctx.state();
                    st.send_errors += 1;
                    super::Context::forget(&mut st, &family);
                }
                if self.ctx.notices.first(&format!("merge {e}")) {
                    (self.ctx.say)(
                        Level::Error,
                        &format!("Redis refused changes to family {family}: {e}; the family is compared again at its next sync"),
                    );
                }
            }
        }
    }

    fn hold(&mut self, family: String, mode: Mode, changes: Vec<Change>) {
        self.held_changes += changes.len();
        self.held.push_back(Message {
            sent: crate::engine::Hlc::ZERO,
            family,
            mode,
            body: Body::Changes(changes),
        });
        if self.held_changes > HELD_CHANGES {
            let dropped = std::mem::take(&mut self.held);
            self.held_changes = 0;
            let mut st = self.ctx.state();
            for m in &dropped {
                super::Context::forget(&mut st, &m.family);
            }
            st.dirty = true;
            st.held = 0;
            drop(st);
            self.ctx.say_once(
                Level::Warning,
                "held overflow",
                &format!("more than {HELD_CHANGES} changes waited for Redis; they were let go and their families are compared with Redis in full once it is back"),
            );
            return;
        }
        self.ctx.state().held = self.held_changes;
    }

    /// Merges the held pushes, oldest first.
    fn replay(&mut self) {
        while let Some(m) = self.held.pop_front() {
            let Body::Changes(changes) = m.body else {
                continue;
            };
            self.held_changes = self.held_changes.saturating_sub(changes.len());
            match self.merge(&m.family, m.mode, &changes) {
                Ok(()) => {}
                Err(e) if lost_connection(&e) => {
                    self.held_changes += changes.len();
                    self.held.push_front(Message {
                        body: Body::Changes(changes),
                        ..m
                    });
                    self.lost(e);
                    break;
                }
                Err(_) => {
                    super::Context::forget(&mut self.ctx.state(), &m.family);
                }
            }
        }
        self.ctx.state().held = self.held_changes;
        if self.held.is_empty() {
            self.ctx.clear_said("held overflow");
        }
    }

    /// Merges `changes` into the family in Redis. Winners Redis already held come
    /// back to the engine; tombstones are acknowledged once the reader passes them.
    fn merge(&mut self, family: &str, mode: Mode, changes: &[Change]) -> redis::RedisResult<()> {
        let Some(con) = self.con.as_mut() else {
            return Err(std::io::Error::other("not connected").into());
        };
        let ctx = self.ctx;
        let policy = ctx.policy(family);
        let keys = &ctx.keys;
        let now = unix_ms(SystemTime::now());
        for chunk in changes.chunks(MERGE_CHANGES) {
            let mut inv = self.scripts.merge.prepare_invoke();
            inv.key(keys.items(mode, family))
                .key(keys.tombstones(mode, family))
                .key(keys.log())
                .arg(ctx.id.settings.stream_max)
                .arg(family)
                .arg(mode_letter(mode));
            for c in chunk {
                inv.arg(field(&c.item)).arg(ctx.sealer.seal(
                    family,
                    mode,
                    &c.item,
                    &c.entry,
                    ctx.id.node,
                    &policy,
                ));
            }
            let replies: Vec<Value> = inv.invoke(con)?;
            let mut winners = Vec::new();
            let mut pushed_to = StreamId::default();
            let mut acks_now = Vec::new();
            let mut acks_later = Vec::new();
            for (c, reply) in chunk.iter().zip(replies) {
                let Some(reply) = bytes(reply) else { continue };
                let tomb = c.entry.is_tombstone();
                match reply.first() {
                    Some(b'=') => {
                        if tomb {
                            acks_now.push((c.item.clone(), c.entry.version));
                        }
                    }
                    Some(b'+') => {
                        let id = std::str::from_utf8(&reply[1..])
                            .ok()
                            .and_then(StreamId::parse)
                            .unwrap_or_default();
                        pushed_to = pushed_to.max(id);
                        if tomb {
                            acks_later.push((
                                id,
                                family.to_string(),
                                mode,
                                c.item.clone(),
                                c.entry.version,
                            ));
                        }
                    }
                    _ => {
                        if tomb {
                            acks_now.push((c.item.clone(), c.entry.version));
                        }
                        winners.extend(ctx.open_change(
                            family,
                            mode,
                            field(&c.item).as_bytes(),
                            &reply,
                            || format!("family {family}"),
                        ));
                    }
                }
            }
            {
                let mut st = ctx.state();
                st.pushed_to = st.pushed_to.max(pushed_to);
                st.acks.extend(acks_later);
            }
            if !winners.is_empty() {
                send(ctx, family.to_string(), mode, Body::Changes(winners), now);
            }
            if !acks_now.is_empty() {
                send_acks(
                    ctx,
                    acks_now
                        .into_iter()
                        .map(|(i, v)| (family.to_string(), mode, i, v)),
                    now,
                );
            }
        }
        Ok(())
    }

    /// The engine's digest: answered equal while the family is known in sync, else
    /// with Redis's whole family (changes, then a summary of them).
    fn digest(&mut self, family: String, mode: Mode, nodes: Vec<DigestNode>) {
        let (synced, generation, reading) = {
            let st = self.ctx.state();
            (st.synced.contains(&family), st.generation, st.reading)
        };
        // Without the reader following the stream, changes made during the
        // comparison could be missed: the next sync tries again.
        if !reading {
            return;
        }
        let now = unix_ms(SystemTime::now());
        if synced {
            send(self.ctx, family, mode, Body::Digest(nodes), now);
            return;
        }
        self.ctx.state().compares += 1;
        let root = nodes.iter().find(|n| n.depth == 0).map(|n| n.hash);
        match self.compare(&family, mode, root) {
            Ok(()) => {
                let mut st = self.ctx.state();
                if st.generation == generation && st.shared.contains(&family) {
                    st.synced.insert(family);
                }
            }
            Err(e) if lost_connection(&e) => self.lost(e),
            Err(e) => {
                self.ctx.say_once(
                    Level::Warning,
                    &format!("compare {family}"),
                    &format!("comparing family {family} with Redis failed: {e}"),
                );
            }
        }
    }

    /// Sends the engine everything Redis holds of the family, then a summary of it so
    /// that the engine pushes what Redis lacks, unless `root` (the engine's digest
    /// root) says it holds nothing, or exactly what Redis holds.
    fn compare(&mut self, family: &str, mode: Mode, root: Option<u64>) -> redis::RedisResult<()> {
        let Some(con) = self.con.as_mut() else {
            return Err(std::io::Error::other("not connected").into());
        };
        let ctx = self.ctx;
        let key = ctx.keys.items(mode, family);
        let now = unix_ms(SystemTime::now());
        // First the versions alone: when they add up to the engine's digest, nothing
        // needs to move (and nothing is applied, so their seals need not be opened).
        if root.is_some_and(|r| r != 0) && root == Some(header_root(ctx, con, &key, mode)?) {
            send(
                ctx,
                family.to_string(),
                mode,
                Body::Digest(vec![DigestNode {
                    depth: 0,
                    prefix: 0,
                    hash: root.unwrap_or(0),
                }]),
                now,
            );
            return Ok(());
        }
        let mut redis_root = 0u64;
        let mut seen = std::collections::HashSet::new();
        let mut summary = Vec::new();
        let mut changes = Vec::new();
        scan(ctx, con, &key, |f, rec| {
            let Some(c) = ctx.open_change(family, mode, &f, &rec, || format!("family {family}"))
            else {
                return;
            };
            let pos = position_of(c.item.owner, &c.item.key);
            // HSCAN may return an item twice (while Redis resizes the hash).
            if !seen.insert(pos) {
                return;
            }
            redis_root ^= digest_hash(pos, c.entry.version, c.entry.is_tombstone());
            summary.push(SummaryItem {
                item: c.item.clone(),
                version: c.entry.version,
                tombstone: c.entry.is_tombstone(),
            });
            changes.push(c);
            if changes.len() >= COMPARE_CHANGES {
                let batch = std::mem::take(&mut changes);
                send(ctx, family.to_string(), mode, Body::Changes(batch), now);
            }
        })?;
        if !changes.is_empty() {
            send(ctx, family.to_string(), mode, Body::Changes(changes), now);
        }
        // An empty family (a new node) or the same contents: Redis lacks nothing.
        if root == Some(0) || root == Some(redis_root) {
            return Ok(());
        }
        send(
            ctx,
            family.to_string(),
            mode,
            Body::Summary(vec![SummaryRange {
                depth: 0,
                prefix: 0,
                items: summary,
            }]),
            now,
        );
        Ok(())
    }

    fn pull(&mut self, family: String, mode: Mode, items: Vec<ItemId>) {
        let result = (|| -> redis::RedisResult<()> {
            let Some(con) = self.con.as_mut() else {
                return Ok(());
            };
            let key = self.ctx.keys.items(mode, &family);
            let now = unix_ms(SystemTime::now());
            for chunk in items.chunks(SCAN_COUNT) {
                let fields: Vec<String> = chunk.iter().map(field).collect();
                let recs: Vec<Option<Vec<u8>>> =
                    redis::cmd("HMGET").arg(&key).arg(&fields).query(con)?;
                let changes: Vec<Change> = fields
                    .iter()
                    .zip(recs)
                    .filter_map(|(f, rec)| {
                        self.ctx
                            .open_change(&family, mode, f.as_bytes(), &rec?, || {
                                format!("family {family}")
                            })
                    })
                    .collect();
                if !changes.is_empty() {
                    send(self.ctx, family.clone(), mode, Body::Changes(changes), now);
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            super::Context::forget(&mut self.ctx.state(), &family);
            if lost_connection(&e) {
                self.lost(e);
            }
        }
    }

    /// The heartbeat, the epoch check, the collection of tombstones and the state file.
    fn tick(&mut self) {
        let now = Instant::now();
        if now >= self.next_file {
            self.next_file = now + FILE_EVERY;
            let saved = self.ctx.state().saved;
            if saved != self.file_at {
                self.file_at = saved;
                self.ctx.save_file(false);
            }
        }
        if now < self.next_beat || !self.ensure() {
            return;
        }
        self.next_beat = now + BEAT;
        if let Err(e) = self.beat() {
            if lost_connection(&e) {
                self.lost(e);
            }
            return;
        }
        if now >= self.next_collect {
            self.next_collect = now + COLLECT_EVERY;
            if let Err(e) = self.collect() {
                if lost_connection(&e) {
                    self.lost(e);
                }
            }
        }
    }

    fn beat(&mut self) -> redis::RedisResult<()> {
        let Some(mut con) = self.con.take() else {
            return Ok(());
        };
        let result = self.beat_on(&mut con);
        self.con = Some(con);
        result
    }

    fn beat_on(&mut self, con: &mut Connection) -> redis::RedisResult<()> {
        let ctx = self.ctx;
        let epoch_now: Option<String> = redis::cmd("GET").arg(ctx.keys.epoch()).query(con)?;
        if epoch_now.as_deref() != ctx.state().epoch.as_deref() {
            self.check_epoch(con)?;
        }
        let now = unix_ms(SystemTime::now());
        let me = Presence {
            node: ctx.id.node,
            seen_ms: now,
            read_to: ctx.state().saved.ms,
        };
        let nodes = ctx.keys.nodes();
        let _: Value = redis::cmd("HSET")
            .arg(&nodes)
            .arg(ctx.id.eid.to_string())
            .arg(ctx.sealer.seal_presence(ctx.id.eid, &me))
            .query(con)?;
        let table: Vec<Vec<u8>> = redis::cmd("HGETALL").arg(&nodes).query(con)?;
        let mut seen = Vec::new();
        let mut forget = Vec::new();
        let mut it = table.into_iter();
        while let (Some(eid), Some(rec)) = (it.next(), it.next()) {
            let parsed = std::str::from_utf8(&eid)
                .ok()
                .and_then(|t| t.parse::<Eid>().ok());
            let Some(e) = parsed else {
                ctx.refuse(record::Refusal::Malformed, "node table entry");
                continue;
            };
            match ctx.sealer.open_presence(&eid, &rec) {
                Ok(p) if now.saturating_sub(p.seen_ms) > FORGET_NODE_MS => forget.push(eid),
                Ok(p) => seen.push(Seen {
                    eid: e,
                    node: p.node,
                    seen_ms: p.seen_ms,
                    read_to: p.read_to,
                }),
                Err(cause) => ctx.refuse(cause, &format!("node table entry {e}")),
            }
        }
        if !forget.is_empty() {
            let _: Value = redis::cmd("HDEL").arg(&nodes).arg(&forget).query(con)?;
        }
        for s in &seen {
            let live = now.saturating_sub(s.seen_ms) <= super::NODE_SILENT_MS;
            if s.eid != ctx.id.eid && s.node == ctx.id.node && live {
                let key = format!("clash {}", s.eid);
                if ctx.notices.first(&key) {
                    (ctx.say)(
                        Level::Error,
                        &format!(
                            "node {} ({}) in Redis has this server's cluster_node {}; give each server its own number",
                            s.node, s.eid, ctx.id.node
                        ),
                    );
                    ctx.inbox.push_event(LinkEvent::Refused {
                        peer: format!("node {}", s.node),
                        node: Some(s.node),
                        cause: "node number clash".into(),
                        detail: format!("{} claims node {}", s.eid, s.node),
                    });
                }
            }
        }
        ctx.state().nodes = seen;
        Ok(())
    }

    /// Forgets tombstones every node has read past (plus a grace), or older than the
    /// longest a node may stay away.
    fn collect(&mut self) -> redis::RedisResult<()> {
        let ctx = self.ctx;
        let now = unix_ms(SystemTime::now());
        let (below, families) = {
            let st = ctx.state();
            (
                collect_below(st.nodes.iter().map(|n| n.read_to), now),
                st.shared.clone(),
            )
        };
        let Some(below) = below else {
            return Ok(());
        };
        let Some(con) = self.con.as_mut() else {
            return Ok(());
        };
        for family in families {
            let modes: Vec<Mode> = match self.modes.get(&family) {
                Some(m) => vec![*m],
                None => vec![Mode::Global, Mode::Unique],
            };
            for mode in modes {
                let _: i64 = self
                    .scripts
                    .collect
                    .key(ctx.keys.items(mode, &family))
                    .key(ctx.keys.tombstones(mode, &family))
                    .arg(below)
                    .arg(COLLECT_LIMIT)
                    .invoke(con)?;
            }
        }
        Ok(())
    }
}

/// Tombstones deleted at or before this (Redis ms) may go, given how far each node in
/// the table has read (`None` before any node is known): every node has read past
/// them and a grace has passed, or they are older than a node may stay away.
pub fn collect_below(read_to: impl Iterator<Item = u64>, now_ms: u64) -> Option<u64> {
    let slowest = read_to.min()?;
    let by_age = now_ms.saturating_sub(FORGET_NODE_MS);
    Some(slowest.max(by_age).saturating_sub(COLLECT_GRACE_MS))
}

/// The digest root of a family as the clear headers of its records in Redis say.
fn header_root(
    ctx: &Context,
    con: &mut Connection,
    key: &str,
    mode: Mode,
) -> redis::RedisResult<u64> {
    let mut root = 0u64;
    let mut seen = std::collections::HashSet::new();
    scan(ctx, con, key, |f, rec| {
        if let (Some(item), Some((version, tomb))) = (record::item_of(mode, &f), record::peek(&rec))
        {
            let pos = position_of(item.owner, &item.key);
            if seen.insert(pos) {
                root ^= digest_hash(pos, version, tomb);
            }
        }
    })?;
    Ok(root)
}

/// Every field and value of the hash `key`, through HSCAN (an item may come twice);
/// given up when the link stops.
fn scan(
    ctx: &Context,
    con: &mut Connection,
    key: &str,
    mut each: impl FnMut(Vec<u8>, Vec<u8>),
) -> redis::RedisResult<()> {
    let mut cursor: u64 = 0;
    loop {
        if ctx.stopping() {
            return Err(std::io::Error::other("the link is stopping").into());
        }
        let (next, pairs): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(con)?;
        let mut it = pairs.into_iter();
        while let (Some(f), Some(rec)) = (it.next(), it.next()) {
            each(f, rec);
        }
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_wait_for_the_slowest_node_plus_a_grace_but_not_beyond_the_longest_absence() {
        let now = 10 * FORGET_NODE_MS;
        assert_eq!(collect_below(std::iter::empty(), now), None);
        let slow = now - 3_600_000;
        assert_eq!(
            collect_below([now, slow, now - 10].into_iter(), now),
            Some(slow - COLLECT_GRACE_MS)
        );
        // A node silent for longer than a node may stay away holds nothing back.
        assert_eq!(
            collect_below([now, 5].into_iter(), now),
            Some(now - FORGET_NODE_MS - COLLECT_GRACE_MS)
        );
    }
}
