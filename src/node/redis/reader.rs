//! The reader: follows the change stream and hands the other nodes' changes to the
//! loop, from where this node stopped when the stream still holds it.

use std::time::Duration;

use redis::{Connection, Value};

use super::record::{self, Refusal};
use super::server::{self, bytes, lost_connection, mode_of, StreamId};
use super::{announce, Context, RELAY_EID};
use crate::engine::{Body, Change, Hlc, ItemId, Message, Mode, Version};
use crate::node::link::LinkEvent;
use crate::node::{unix_ms, Level};

/// Entries asked for per read, and how long a read waits for one (ms).
const READ_COUNT: usize = 4096;
const BLOCK_MS: u64 = 500;
/// Changes per message handed to the loop.
const MESSAGE_CHANGES: usize = 1024;
/// The longest wait between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) fn run(ctx: &Context) {
    let mut backoff = Duration::from_millis(200);
    while !ctx.stopping() {
        let mut server = match server::connect(&ctx.id.settings) {
            Ok(s) => s,
            Err(why) => {
                {
                    let mut st = ctx.state();
                    st.reading = false;
                    st.problem = Some(why.clone());
                }
                ctx.say_once(
                    Level::Warning,
                    "redis down",
                    &format!("cannot reach Redis: {why}; AstDB works as before and local changes wait; retrying"),
                );
                pause(ctx, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let pos = match start(ctx, &mut server.con) {
            Ok(pos) => pos,
            Err(e) => {
                ctx.state().problem = Some(e.to_string());
                pause(ctx, backoff);
                continue;
            }
        };
        {
            let mut st = ctx.state();
            st.reading = true;
            st.problem = None;
            st.server = server.describe.clone();
        }
        if ctx.clear_said("redis down") {
            (ctx.say)(
                Level::Notice,
                &format!("connected to Redis at {}", server.describe),
            );
        }
        announce(ctx);
        if let Err(e) = follow(ctx, &mut server.con, pos) {
            let mut st = ctx.state();
            st.reading = false;
            st.problem = Some(e.to_string());
            drop(st);
            ctx.say_once(
                Level::Warning,
                "redis down",
                &format!(
                    "lost Redis ({e}); AstDB works as before and local changes wait; reconnecting"
                ),
            );
        }
    }
    ctx.state().reading = false;
}

/// Sleeps `d`, or less when the link stops.
pub(super) fn pause(ctx: &Context, d: Duration) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !ctx.stopping() && !left.is_zero() {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

/// Where to read from: where this node stopped when the data set is the one it knew
/// and the stream still holds everything after it; otherwise the stream's end, and
/// every family is compared in full.
fn start(ctx: &Context, con: &mut Connection) -> redis::RedisResult<StreamId> {
    let epoch = server::epoch(con, &ctx.keys)?;
    let span = server::stream_span(con, &ctx.keys)?;
    let mut st = ctx.state();
    let known = st.epoch.as_deref() == Some(epoch.as_str());
    let lost = super::Context::lost_writes(&st, &span);
    if known && !lost && span.holds_after(st.delivered) {
        // (An empty stream at a first start is no resumption.)
        if st.delivered > StreamId::default() {
            st.resumed += 1;
        }
        return Ok(st.delivered);
    }
    let why = if !known && st.epoch.is_some() {
        Some("Redis no longer holds the data set this node knew (it was emptied or replaced)")
    } else if known && lost {
        Some("Redis holds fewer changes than this node already saw there (a failover or a restart lost the last writes)")
    } else if known {
        Some("the change stream no longer holds everything since this node last read it")
    } else {
        None
    };
    super::Context::forget_all(&mut st);
    st.epoch = Some(epoch);
    st.delivered = span.last;
    st.saved = span.last;
    st.marks.clear();
    drop(st);
    if let Some(why) = why {
        (ctx.say)(
            Level::Notice,
            &format!("{why}: each shared family is compared with Redis in full"),
        );
    }
    Ok(span.last)
}

/// One change as read from the stream.
struct Entry {
    family: String,
    mode: Mode,
    change: Change,
}

fn follow(ctx: &Context, con: &mut Connection, mut pos: StreamId) -> redis::RedisResult<()> {
    let log = ctx.keys.log();
    while !ctx.stopping() {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&log)
            .arg(pos.to_string())
            .query(con)
            .map_err(|e| {
                if lost_connection(&e) {
                    e
                } else {
                    redis::RedisError::from(std::io::Error::other(e.to_string()))
                }
            })?;
        let now = unix_ms(std::time::SystemTime::now());
        let raw = entries(reply);
        let mut batch: Vec<Entry> = Vec::with_capacity(raw.len());
        let mut last = None;
        for (id, fields) in raw {
            last = Some(id);
            if let Some(e) = open(ctx, id, fields) {
                batch.push(e);
            }
        }
        if let Some(id) = last {
            pos = id;
            ctx.state().lag_ms = Some(now.saturating_sub(id.ms));
        } else {
            ctx.state().lag_ms = Some(0);
        }
        deliver(ctx, batch, now);
        if last.is_some() {
            let mark = {
                let mut st = ctx.state();
                st.delivered = pos;
                st.next_mark += 1;
                let m = st.next_mark;
                st.marks.push_back((m, pos));
                m
            };
            ctx.inbox.push_event(LinkEvent::Reached(mark));
        }
        acks_due(ctx, pos, now);
    }
    Ok(())
}

/// The entries of an XREAD reply: ID and field/value pairs.
fn entries(reply: Value) -> Vec<(StreamId, Vec<Value>)> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in streams {
        let Value::Array(mut parts) = s else { continue };
        if parts.len() != 2 {
            continue;
        }
        let Value::Array(list) = parts.swap_remove(1) else {
            continue;
        };
        for e in list {
            let Value::Array(mut idf) = e else { continue };
            if idf.len() != 2 {
                continue;
            }
            let Value::Array(fields) = idf.swap_remove(1) else {
                continue;
            };
            let Some(id) = server::text(&idf[0]).and_then(|t| StreamId::parse(&t)) else {
                continue;
            };
            out.push((id, fields));
        }
    }
    out
}

/// Opens one entry: `None` for this node's own changes, changes not meant for it, and
/// entries that fail to open (counted).
fn open(ctx: &Context, id: StreamId, fields: Vec<Value>) -> Option<Entry> {
    let (mut f, mut m, mut i, mut r) = (None, None, None, None);
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match bytes(k).as_deref() {
            Some(b"f") => f = bytes(v),
            Some(b"m") => m = bytes(v),
            Some(b"i") => i = bytes(v),
            Some(b"r") => r = bytes(v),
            _ => {}
        }
    }
    let (Some(f), Some(m), Some(i), Some(r)) = (f, m, i, r) else {
        ctx.refuse(Refusal::Malformed, &format!("stream entry {id}"));
        return None;
    };
    if record::peek(&r).is_some_and(|(v, _)| v.origin == ctx.id.eid) {
        return None;
    }
    let (Ok(family), Some(mode)) = (String::from_utf8(f), mode_of(&m)) else {
        ctx.refuse(Refusal::Malformed, &format!("stream entry {id}"));
        return None;
    };
    let change = ctx.open_change(&family, mode, &i, &r, || {
        format!("stream entry {id}, family {family}")
    })?;
    Some(Entry {
        family,
        mode,
        change,
    })
}

/// Hands `batch` to the loop as messages from the relay, one per run of changes to
/// one family.
fn deliver(ctx: &Context, batch: Vec<Entry>, now: u64) {
    let mut current: Option<(String, Mode, Vec<Change>)> = None;
    for e in batch {
        match &mut current {
            Some((f, m, changes))
                if *f == e.family && *m == e.mode && changes.len() < MESSAGE_CHANGES =>
            {
                changes.push(e.change);
            }
            _ => {
                if let Some((f, m, changes)) = current.take() {
                    send(ctx, f, m, Body::Changes(changes), now);
                }
                current = Some((e.family, e.mode, vec![e.change]));
            }
        }
    }
    if let Some((f, m, changes)) = current {
        send(ctx, f, m, Body::Changes(changes), now);
    }
}

/// One message from the relay to the loop.
pub(super) fn send(ctx: &Context, family: String, mode: Mode, body: Body, now: u64) {
    ctx.inbox.push_event(LinkEvent::Received {
        from: RELAY_EID,
        msg: Message {
            sent: Hlc::from_parts(now, 0),
            family,
            mode,
            body,
        },
    });
}

/// Acknowledges the tombstones merged into Redis at or before `pos`.
fn acks_due(ctx: &Context, pos: StreamId, now: u64) {
    let due: Vec<(StreamId, String, Mode, ItemId, Version)> = {
        let mut st = ctx.state();
        if st.acks.is_empty() {
            return;
        }
        let (due, keep) = std::mem::take(&mut st.acks)
            .into_iter()
            .partition(|a| a.0 <= pos);
        st.acks = keep;
        due
    };
    send_acks(
        ctx,
        due.into_iter().map(|(_, f, m, i, v)| (f, m, i, v)),
        now,
    );
}

/// A family's tombstone acknowledgements.
type FamilyAcks = (String, Mode, Vec<(ItemId, Version)>);

/// Acknowledgements to the engine, one message per family.
pub(super) fn send_acks(
    ctx: &Context,
    acks: impl Iterator<Item = (String, Mode, ItemId, Version)>,
    now: u64,
) {
    let mut by_family: Vec<FamilyAcks> = Vec::new();
    for (f, m, i, v) in acks {
        match by_family
            .iter_mut()
            .find(|(bf, bm, _)| *bf == f && *bm == m)
        {
            Some((_, _, list)) => list.push((i, v)),
            None => by_family.push((f, m, vec![(i, v)])),
        }
    }
    for (f, m, list) in by_family {
        send(ctx, f, m, Body::Acks(list), now);
    }
}
