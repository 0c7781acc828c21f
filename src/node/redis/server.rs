//! Reaching Redis: the connection (TLS, AUTH, Sentinel), the names of the keys the
//! module writes, the scripts that merge and collect in Redis, and small readers of
//! its replies.
//!
//! Every key lives under `astdbc:{<cluster_name>}:` (one hash tag: a Redis Cluster
//! keeps a cluster's keys in one slot, which the scripts need):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `epoch` | string | a random name of this Redis's data set: a new one means Redis lost it |
//! | `log` | stream | every change kept (`f` family, `m` g/u, `i` item, `r` record), trimmed to about `redis_stream_max` |
//! | `h:<g or u>:<family>` | hash | item → record: the family's state |
//! | `t:<g or u>:<family>` | sorted set | tombstoned items, scored by when they were deleted |
//! | `nodes` | hash | EID → sealed presence: node number, last heartbeat, how far it has read |

use std::time::Duration;

use redis::{Client, Connection, ConnectionAddr, IntoConnectionInfo, Script, Value};

use crate::config::RedisSettings;
use crate::engine::Mode;

/// How long to wait for a reply (a blocked read waits less), and for a connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The names of one cluster's keys.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("astdbc:{{{cluster}}}:"),
        }
    }
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
    pub fn log(&self) -> String {
        format!("{}log", self.prefix)
    }
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    pub fn items(&self, mode: Mode, family: &str) -> String {
        format!("{}h:{}:{family}", self.prefix, mode_letter(mode))
    }
    pub fn tombstones(&self, mode: Mode, family: &str) -> String {
        format!("{}t:{}:{family}", self.prefix, mode_letter(mode))
    }
}

pub fn mode_letter(mode: Mode) -> &'static str {
    match mode {
        Mode::Global => "g",
        Mode::Unique => "u",
    }
}

pub fn mode_of(letter: &[u8]) -> Option<Mode> {
    match letter {
        b"g" => Some(Mode::Global),
        b"u" => Some(Mode::Unique),
        _ => None,
    }
}

/// Merges records into a family, atomically: each is stored (and appended to the
/// stream) only when its sort key (the first 29 bytes: version, then kind) is above
/// the stored one's. Replies per record: `+<stream id>` stored, `=` already held, or
/// the newer record Redis holds. The stream is trimmed once per call.
///
/// KEYS: items hash, tombstones, stream. ARGV: stream length, family, mode letter,
/// then item and record pairs.
const MERGE: &str = r"
local out = {}
local added = false
for i = 4, #ARGV, 2 do
  local item, rec = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], item)
  local new = string.sub(rec, 1, 29)
  local held = cur and string.sub(cur, 1, 29)
  if held and held >= new then
    if held == new then out[#out + 1] = '=' else out[#out + 1] = cur end
  else
    redis.call('HSET', KEYS[1], item, rec)
    local id = redis.call('XADD', KEYS[3], '*', 'f', ARGV[2], 'm', ARGV[3], 'i', item, 'r', rec)
    added = true
    if string.byte(rec, 29) == 49 then
      redis.call('ZADD', KEYS[2], tonumber(string.match(id, '^(%d+)')), item)
    elseif held and string.byte(held, 29) == 49 then
      redis.call('ZREM', KEYS[2], item)
    end
    out[#out + 1] = '+' .. id
  end
end
if added then redis.call('XTRIM', KEYS[3], 'MAXLEN', '~', ARGV[1]) end
return out
";

/// Forgets tombstones deleted at or before ARGV[1] (ms), at most ARGV[2] of them,
/// unless the item was written again since. KEYS: items hash, tombstones.
const COLLECT: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for _, item in ipairs(gone) do
  local cur = redis.call('HGET', KEYS[1], item)
  if cur and string.sub(cur, 29, 29) == '1' then
    redis.call('HDEL', KEYS[1], item)
    n = n + 1
  end
  redis.call('ZREM', KEYS[2], item)
end
return n
";

/// The scripts, loaded once per link (Redis caches them by hash).
pub struct Scripts {
    pub merge: Script,
    pub collect: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            merge: Script::new(MERGE),
            collect: Script::new(COLLECT),
        }
    }
}

/// A connected server, and what to show of it.
pub struct Server {
    pub con: Connection,
    /// `host:port (Redis 7.0.15)`.
    pub describe: String,
}

/// Connects as `settings` say: asks the sentinels for the master first when there are
/// any (and checks that the server it reaches is the master), then AUTH and SELECT as
/// the URL says, over TLS for `rediss://`.
pub fn connect(settings: &RedisSettings) -> Result<Server, String> {
    let mut info = settings
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("redis_url: {e}"))?;
    if let Some(master) = &settings.master {
        let (host, port) = ask_sentinels(&settings.sentinels, master)?;
        let addr = match info.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        info = info.set_addr(addr);
    }
    let shown = match info.addr() {
        ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        ConnectionAddr::Unix(p) => p.display().to_string(),
        other => format!("{other:?}"),
    };
    let client = match &settings.ca_file {
        Some(path) => {
            let ca = std::fs::read(path).map_err(|e| format!("redis_ca_file {path}: {e}"))?;
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                },
            )
        }
        None => Client::open(info),
    }
    .map_err(|e| format!("{shown}: {e}"))?;
    let mut con = client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map_err(|e| format!("{shown}: {e}"))?;
    con.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| con.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("{shown}: {e}"))?;
    if settings.master.is_some() {
        let role: Value = redis::cmd("ROLE")
            .query(&mut con)
            .map_err(|e| format!("{shown}: {e}"))?;
        let first = match &role {
            Value::Array(parts) => parts.first().and_then(text),
            _ => None,
        };
        if first.as_deref() != Some("master") {
            return Err(format!(
                "{shown} is not the master (the sentinels' answer is out of date)"
            ));
        }
    }
    let version = server_version(&mut con).unwrap_or_default();
    Ok(Server {
        con,
        describe: format!("{shown} ({version})"),
    })
}

fn server_version(con: &mut Connection) -> Option<String> {
    let info: String = redis::cmd("INFO").arg("server").query(con).ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    match field("valkey_version:") {
        Some(v) => Some(format!("Valkey {v}")),
        None => field("redis_version:").map(|v| format!("Redis {v}")),
    }
}

/// The master's address as the first sentinel that knows `master` says.
fn ask_sentinels(sentinels: &[String], master: &str) -> Result<(String, u16), String> {
    let mut why = Vec::new();
    for s in sentinels {
        let answer = Client::open(format!("redis://{s}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut con| {
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query::<Option<(String, u16)>>(&mut con)
            });
        match answer {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => why.push(format!("sentinel {s} does not know master '{master}'")),
            Err(e) => why.push(format!("sentinel {s}: {e}")),
        }
    }
    Err(why.join("; "))
}

/// A reply as text, when it is one.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// A reply's bytes (bulk or simple string).
pub fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// A stream entry ID, `ms-seq`, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What the stream holds now: its first entry and the last ID it gave.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamSpan {
    pub first: Option<StreamId>,
    pub last: StreamId,
}

impl StreamSpan {
    /// Whether every entry after `pos` is still in the stream.
    pub fn holds_after(&self, pos: StreamId) -> bool {
        match self.first {
            None => pos >= self.last,
            Some(first) => first <= pos,
        }
    }
}

pub fn stream_span(con: &mut Connection, keys: &Keys) -> redis::RedisResult<StreamSpan> {
    let first: Value = redis::cmd("XRANGE")
        .arg(keys.log())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    let first = match first {
        Value::Array(entries) => entries.into_iter().next().and_then(|e| match e {
            Value::Array(mut parts) if !parts.is_empty() => {
                text(&parts.swap_remove(0)).and_then(|t| StreamId::parse(&t))
            }
            _ => None,
        }),
        _ => None,
    };
    let info: redis::RedisResult<Value> =
        redis::cmd("XINFO").arg("STREAM").arg(keys.log()).query(con);
    let last = match info {
        Ok(Value::Array(fields)) => field_of(&fields, "last-generated-id"),
        Ok(Value::Map(pairs)) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some("last-generated-id"))
            .and_then(|(_, v)| text(v))
            .and_then(|t| StreamId::parse(&t)),
        // No stream yet.
        _ => None,
    }
    .unwrap_or_default();
    Ok(StreamSpan { first, last })
}

fn field_of(fields: &[Value], name: &str) -> Option<StreamId> {
    fields
        .chunks(2)
        .find(|kv| text(&kv[0]).as_deref() == Some(name))
        .and_then(|kv| kv.get(1))
        .and_then(text)
        .and_then(|t| StreamId::parse(&t))
}

/// This data set's epoch: made (by whichever node comes first) when Redis has none.
pub fn epoch(con: &mut Connection, keys: &Keys) -> redis::RedisResult<String> {
    let mut fresh = [0u8; 12];
    let _ = getrandom::fill(&mut fresh);
    let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
    let _: Value = redis::cmd("SET")
        .arg(keys.epoch())
        .arg(&fresh)
        .arg("NX")
        .query(con)?;
    let e: Option<String> = redis::cmd("GET").arg(keys.epoch()).query(con)?;
    Ok(e.unwrap_or(fresh))
}

/// Whether an error means the connection is gone (rather than a refused command).
pub fn lost_connection(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_holds_what_follows_a_position_until_it_is_trimmed_past_it() {
        let id = |ms, seq| StreamId { ms, seq };
        let span = StreamSpan {
            first: Some(id(100, 0)),
            last: id(200, 3),
        };
        assert!(span.holds_after(id(150, 0)));
        assert!(span.holds_after(id(100, 0)));
        assert!(!span.holds_after(id(99, 5)), "entries after it may be gone");
        let empty = StreamSpan {
            first: None,
            last: id(200, 3),
        };
        assert!(empty.holds_after(id(200, 3)));
        assert!(!empty.holds_after(id(200, 2)));
        assert_eq!(StreamId::parse("12-3"), Some(id(12, 3)));
        assert_eq!(StreamId::parse("12"), None);
        assert!(id(12, 3) < id(13, 0) && id(12, 3) < id(12, 4));
    }
}
