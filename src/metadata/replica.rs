//! Persistence of the engine's replicated state (versions, tombstones, peer progress).
//!
//! The engine hands out [`PersistDelta`]s; each is written here in one transaction, so
//! the file always holds a state the engine was in. [`load`] gives back the
//! [`RestoredState`] for `Engine::new`. Values are kept with their versions so that
//! changes made in AstDB while the module was not running can be told apart.
//!
//! Layout: items live in a `WITHOUT ROWID` table keyed by (family id, owner, key), so a
//! key is stored once and the metadata per key is the family id, the clock (8 bytes) and
//! the origin EID (6 bytes) plus SQLite's record header.

use std::collections::HashMap;

use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension};

use crate::engine::{
    Eid, Entry, FamilyMeta, Hlc, ItemId, Mode, PeerMeta, PersistDelta, RestoredState, Version,
};

/// Creates the replica tables if they are missing.
pub fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS replica_meta (
             name TEXT PRIMARY KEY,
             value INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS replica_family (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             mode TEXT NOT NULL,
             baseline INTEGER NOT NULL,
             horizon INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS replica_item (
             family INTEGER NOT NULL,
             owner BLOB NOT NULL,      -- empty for global families
             key TEXT NOT NULL,
             hlc INTEGER NOT NULL,
             origin BLOB NOT NULL,
             value TEXT,               -- NULL is a tombstone
             PRIMARY KEY (family, owner, key)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS replica_peer (
             eid BLOB PRIMARY KEY,
             node INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS replica_peer_stale (
             eid BLOB NOT NULL,
             family TEXT NOT NULL,
             below INTEGER NOT NULL,
             PRIMARY KEY (eid, family)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS replica_pending_batch (
             id INTEGER PRIMARY KEY,
             items BLOB NOT NULL       -- see encode_pending
         );",
    )?;
    migrate_pending_rows(conn)
}

/// Files written before pending applies were kept one row per delta hold them one row
/// per item in `replica_pending_apply`: move those into one batch row.
fn migrate_pending_rows(conn: &Connection) -> rusqlite::Result<()> {
    let old: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master
                            WHERE type = 'table' AND name = 'replica_pending_apply')",
        [],
        |r| r.get(0),
    )?;
    if !old {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let mut blob = Vec::new();
    {
        let mut q = tx.prepare("SELECT family, owner, key FROM replica_pending_apply")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let owner = owner_from(1, &r.get::<_, Vec<u8>>(1)?)?;
            let key: String = r.get(2)?;
            encode_pending(&mut blob, r.get(0)?, &owner, &key);
        }
    }
    if !blob.is_empty() {
        tx.execute(
            "INSERT INTO replica_pending_batch (items) VALUES (?1)",
            [&blob],
        )?;
    }
    tx.execute_batch("DROP TABLE replica_pending_apply")?;
    tx.commit()
}

/// One pending apply in a batch row: family id (8 bytes LE), owner length (1 byte) and
/// bytes (0 or 6), key length (4 bytes LE) and UTF-8 bytes.
fn encode_pending(out: &mut Vec<u8>, family: i64, owner: &Option<Eid>, key: &str) {
    let owner = owner_blob(owner);
    out.extend_from_slice(&family.to_le_bytes());
    out.push(owner.len() as u8);
    out.extend_from_slice(owner);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
}

fn take<'a>(blob: &mut &'a [u8], n: usize) -> rusqlite::Result<&'a [u8]> {
    if blob.len() < n {
        return Err(bad(1, "damaged pending-apply batch"));
    }
    let (head, rest) = blob.split_at(n);
    *blob = rest;
    Ok(head)
}

fn take_array<const N: usize>(blob: &mut &[u8]) -> rusqlite::Result<[u8; N]> {
    let mut a = [0; N];
    a.copy_from_slice(take(blob, N)?);
    Ok(a)
}

/// The entries of a batch row: (family id, owner, key).
fn decode_pending(mut blob: &[u8]) -> rusqlite::Result<Vec<(i64, Option<Eid>, &str)>> {
    let mut out = Vec::new();
    while !blob.is_empty() {
        let family = i64::from_le_bytes(take_array(&mut blob)?);
        let owner_len = take(&mut blob, 1)?[0] as usize;
        let owner = owner_from(1, take(&mut blob, owner_len)?)?;
        let key_len = u32::from_le_bytes(take_array(&mut blob)?) as usize;
        let key = std::str::from_utf8(take(&mut blob, key_len)?)
            .map_err(|_| bad(1, "damaged pending-apply batch"))?;
        out.push((family, owner, key));
    }
    Ok(out)
}

/// Removes from every pending batch row the entries `gone` says to; rows left empty go.
fn strip_pending(
    tx: &rusqlite::Transaction,
    mut gone: impl FnMut(i64, &Option<Eid>, &str) -> bool,
) -> rusqlite::Result<()> {
    let rows: Vec<(i64, Vec<u8>)> = tx
        .prepare_cached("SELECT id, items FROM replica_pending_batch")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, blob) in rows {
        let entries = decode_pending(&blob)?;
        let kept: Vec<_> = entries.iter().filter(|(f, o, k)| !gone(*f, o, k)).collect();
        if kept.len() == entries.len() {
            continue;
        }
        if kept.is_empty() {
            tx.prepare_cached("DELETE FROM replica_pending_batch WHERE id = ?1")?
                .execute([id])?;
        } else {
            let mut rest = Vec::new();
            for (f, o, k) in kept {
                encode_pending(&mut rest, *f, o, k);
            }
            tx.prepare_cached("UPDATE replica_pending_batch SET items = ?2 WHERE id = ?1")?
                .execute(params![id, rest])?;
        }
    }
    Ok(())
}

/// The replica tables of an open metadata connection.
pub struct ReplicaStore {
    conn: Connection,
}

impl ReplicaStore {
    /// Uses `conn` (already opened, WAL) and creates the tables if needed.
    pub fn open_in(conn: Connection) -> rusqlite::Result<Self> {
        create_schema(&conn)?;
        Ok(ReplicaStore { conn })
    }

    pub fn write(&mut self, delta: &PersistDelta) -> rusqlite::Result<()> {
        write(&mut self.conn, delta)
    }

    pub fn load(&self) -> rusqlite::Result<RestoredState> {
        load(&self.conn)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn into_connection(self) -> Connection {
        self.conn
    }
}

fn owner_blob(owner: &Option<Eid>) -> &[u8] {
    owner.as_ref().map_or(&[][..], |e| &e.0[..])
}

fn bad(col: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, Type::Blob, what.to_string().into())
}

fn eid_from(col: usize, blob: &[u8]) -> rusqlite::Result<Eid> {
    let a: [u8; 6] = blob
        .try_into()
        .map_err(|_| bad(col, "EID is not 6 bytes"))?;
    Ok(Eid(a))
}

fn owner_from(col: usize, blob: &[u8]) -> rusqlite::Result<Option<Eid>> {
    if blob.is_empty() {
        Ok(None)
    } else {
        eid_from(col, blob).map(Some)
    }
}

fn mode_text(mode: Mode) -> &'static str {
    match mode {
        Mode::Global => "global",
        Mode::Unique => "unique",
    }
}

/// Writes one delta in one transaction.
pub fn write(conn: &mut Connection, delta: &PersistDelta) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for name in &delta.reset_families {
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM replica_family WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = id {
            tx.execute("DELETE FROM replica_item WHERE family = ?1", [id])?;
            strip_pending(&tx, |f, _, _| f == id)?;
            tx.execute("DELETE FROM replica_family WHERE id = ?1", [id])?;
        }
    }
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO replica_family (name, mode, baseline, horizon) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET mode = ?2, baseline = ?3, horizon = ?4",
        )?;
        for f in &delta.families {
            up.execute(params![
                f.name,
                mode_text(f.mode),
                f.baseline,
                f.horizon.0 as i64
            ])?;
        }
    }
    let mut ids: HashMap<String, i64> = HashMap::new();
    // Items come family by family: the last one looked up is the usual answer.
    let mut last: Option<(String, i64)> = None;
    let mut family_id = |tx: &rusqlite::Transaction, name: &str| -> rusqlite::Result<i64> {
        if let Some((n, id)) = &last {
            if n == name {
                return Ok(*id);
            }
        }
        let id = match ids.get(name) {
            Some(id) => *id,
            None => {
                let id = tx
                    .prepare_cached("SELECT id FROM replica_family WHERE name = ?1")?
                    .query_row([name], |r| r.get(0))?;
                ids.insert(name.to_string(), id);
                id
            }
        };
        last = Some((name.to_string(), id));
        Ok(id)
    };
    {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO replica_item (family, owner, key, hlc, origin, value)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut del = tx.prepare_cached(
            "DELETE FROM replica_item WHERE family = ?1 AND owner = ?2 AND key = ?3",
        )?;
        for d in &delta.items {
            let id = family_id(&tx, &d.item.family)?;
            let owner = owner_blob(&d.item.owner);
            let key: &str = &d.item.key;
            match &d.state {
                Some(s) => put.execute(params![
                    id,
                    owner,
                    key,
                    s.version.hlc.0 as i64,
                    &s.version.origin.0[..],
                    s.value.as_deref()
                ])?,
                None => del.execute(params![id, owner, key])?,
            };
        }
        // Pending applies are kept one row per delta: the next delta confirms exactly
        // the previous one's (the usual case: its row is deleted whole).
        if !delta.applies_confirmed.is_empty() {
            let mut confirmed = Vec::new();
            let mut listed = Vec::with_capacity(delta.applies_confirmed.len());
            for item in delta.applies_confirmed.iter() {
                if let Ok(id) = family_id(&tx, &item.family) {
                    encode_pending(&mut confirmed, id, &item.owner, &item.key);
                    listed.push((id, item.owner, &*item.key));
                }
            }
            let whole: Option<i64> = tx
                .prepare_cached("SELECT id FROM replica_pending_batch WHERE items = ?1")?
                .query_row([&confirmed], |r| r.get(0))
                .optional()?;
            match whole {
                Some(id) => {
                    tx.prepare_cached("DELETE FROM replica_pending_batch WHERE id = ?1")?
                        .execute([id])?;
                }
                None => {
                    // Rare (a delta whose save failed, or a restart in between): look
                    // each pending item up in the confirmed ones.
                    let set: std::collections::HashSet<_> = listed.into_iter().collect();
                    strip_pending(&tx, |f, o, k| set.contains(&(f, *o, k)))?
                }
            }
        }
        if !delta.applies_started.is_empty() {
            let mut started = Vec::new();
            for item in delta.applies_started.iter() {
                if let Ok(id) = family_id(&tx, &item.family) {
                    encode_pending(&mut started, id, &item.owner, &item.key);
                }
            }
            if !started.is_empty() {
                tx.prepare_cached("INSERT INTO replica_pending_batch (items) VALUES (?1)")?
                    .execute([&started])?;
            }
        }
    }
    for p in &delta.peers {
        tx.prepare_cached("INSERT OR REPLACE INTO replica_peer (eid, node) VALUES (?1, ?2)")?
            .execute(params![&p.eid.0[..], p.node])?;
        tx.prepare_cached("DELETE FROM replica_peer_stale WHERE eid = ?1")?
            .execute([&p.eid.0[..]])?;
        let mut ins = tx.prepare_cached(
            "INSERT INTO replica_peer_stale (eid, family, below) VALUES (?1, ?2, ?3)",
        )?;
        for (family, below) in &p.stale_below {
            ins.execute(params![&p.eid.0[..], family, below.0 as i64])?;
        }
    }
    // The clock only moves forward, even if deltas were ever written out of order.
    tx.prepare_cached(
        "INSERT INTO replica_meta (name, value) VALUES ('clock', ?1)
         ON CONFLICT(name) DO UPDATE SET value = max(value, ?1)",
    )?
    .execute([delta.clock.0 as i64])?;
    tx.commit()
}

/// Reads back everything written.
pub fn load(conn: &Connection) -> rusqlite::Result<RestoredState> {
    let clock: i64 = conn
        .query_row(
            "SELECT value FROM replica_meta WHERE name = 'clock'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let mut state = RestoredState {
        clock: Hlc(clock as u64),
        ..RestoredState::default()
    };
    let mut names = HashMap::new();
    {
        let mut q = conn.prepare("SELECT id, name, mode, baseline, horizon FROM replica_family")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let name: String = r.get(1)?;
            let mode: String = r.get(2)?;
            let mode = mode.parse::<Mode>().map_err(|_| bad(2, "unknown mode"))?;
            state.families.push(FamilyMeta {
                name: name.clone(),
                mode,
                baseline: r.get(3)?,
                horizon: Hlc(r.get::<_, i64>(4)? as u64),
            });
            names.insert(id, name);
        }
    }
    {
        let mut q =
            conn.prepare("SELECT family, owner, key, hlc, origin, value FROM replica_item")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let family: i64 = r.get(0)?;
            let Some(name) = names.get(&family) else {
                return Err(bad(0, "item of an unknown family"));
            };
            let owner = owner_from(1, &r.get::<_, Vec<u8>>(1)?)?;
            let origin = eid_from(4, &r.get::<_, Vec<u8>>(4)?)?;
            state.items.push((
                name.clone(),
                ItemId {
                    owner,
                    key: r.get(2)?,
                },
                Entry {
                    version: Version::new(Hlc(r.get::<_, i64>(3)? as u64), origin),
                    value: r.get(5)?,
                },
            ));
        }
    }
    {
        let mut q = conn.prepare("SELECT eid, node FROM replica_peer")?;
        let mut rows = q.query([])?;
        let mut stale_q =
            conn.prepare("SELECT family, below FROM replica_peer_stale WHERE eid = ?1")?;
        while let Some(r) = rows.next()? {
            let blob: Vec<u8> = r.get(0)?;
            let eid = eid_from(0, &blob)?;
            let stale_below = stale_q
                .query_map([&blob], |s| {
                    Ok((s.get::<_, String>(0)?, Hlc(s.get::<_, i64>(1)? as u64)))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            state.peers.push(PeerMeta {
                eid,
                node: r.get(1)?,
                stale_below,
            });
        }
    }
    {
        let mut q = conn.prepare("SELECT items FROM replica_pending_batch ORDER BY id")?;
        let mut rows = q.query([])?;
        let mut seen = std::collections::HashSet::new();
        while let Some(r) = rows.next()? {
            let blob = r.get_ref(0)?.as_blob()?;
            for (family, owner, key) in decode_pending(blob)? {
                let Some(name) = names.get(&family) else {
                    continue;
                };
                if !seen.insert((family, owner, key.to_string())) {
                    continue;
                }
                state.applies_unconfirmed.push((
                    name.clone(),
                    ItemId {
                        owner,
                        key: key.to_string(),
                    },
                ));
            }
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ItemDelta, ItemRef};

    fn entry(ms: u64, value: Option<&str>) -> Entry {
        Entry {
            version: Version::new(Hlc::from_parts(ms, 1), Eid([1, 2, 3, 4, 5, 6])),
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn a_written_delta_loads_back_as_the_same_state() {
        let mut store = ReplicaStore::open_in(Connection::open_in_memory().unwrap()).unwrap();
        let g = ItemId::global("a/b");
        let u = ItemId::unique(Eid([9; 6]), "k");
        let delta = PersistDelta {
            clock: Hlc::from_parts(500, 2),
            families: vec![
                FamilyMeta {
                    name: "blacklist".into(),
                    mode: Mode::Global,
                    baseline: true,
                    horizon: Hlc::from_parts(7, 0),
                },
                FamilyMeta {
                    name: "registrar".into(),
                    mode: Mode::Unique,
                    baseline: false,
                    horizon: Hlc::ZERO,
                },
            ],
            items: vec![
                ItemDelta::new("blacklist", &g, Some(&entry(10, Some("x")))),
                ItemDelta::new("registrar", &u, Some(&entry(11, None))),
            ],
            peers: vec![PeerMeta {
                eid: Eid([9; 6]),
                node: 2,
                stale_below: vec![("blacklist".into(), Hlc::from_parts(3, 0))],
            }],
            applies_started: vec![ItemRef::new("blacklist", &g)].into(),
            ..PersistDelta::default()
        };
        store.write(&delta).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.clock, delta.clock);
        assert_eq!(loaded.families.len(), 2);
        assert_eq!(loaded.items.len(), 2);
        assert!(loaded
            .items
            .contains(&("registrar".into(), u, entry(11, None))));
        assert_eq!(loaded.peers, delta.peers);
        assert_eq!(
            loaded.applies_unconfirmed,
            vec![("blacklist".into(), g.clone())]
        );

        let forget = PersistDelta {
            clock: Hlc::from_parts(1, 0),
            items: vec![ItemDelta::new("blacklist", &g, None)],
            applies_confirmed: vec![ItemRef::new("blacklist", &g)].into(),
            ..PersistDelta::default()
        };
        store.write(&forget).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.items.len(), 1);
        assert!(loaded.applies_unconfirmed.is_empty());
        assert_eq!(loaded.clock, delta.clock, "the clock never moves back");
    }

    #[test]
    fn pending_applies_of_an_older_file_are_kept() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE replica_family (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                 mode TEXT NOT NULL, baseline INTEGER NOT NULL, horizon INTEGER NOT NULL);
             INSERT INTO replica_family VALUES (1, 'f', 'unique', 1, 0);
             CREATE TABLE replica_pending_apply (family INTEGER NOT NULL, owner BLOB NOT NULL,
                 key TEXT NOT NULL, PRIMARY KEY (family, owner, key)) WITHOUT ROWID;
             INSERT INTO replica_pending_apply VALUES (1, x'090909090909', 'k');",
        )
        .unwrap();
        let mut store = ReplicaStore::open_in(conn).unwrap();
        let u = ItemId::unique(Eid([9; 6]), "k");
        assert_eq!(
            store.load().unwrap().applies_unconfirmed,
            vec![("f".into(), u.clone())]
        );
        // Confirmed by a delta whose batch is not that row: taken out of it all the same.
        store
            .write(&PersistDelta {
                applies_confirmed: vec![
                    ItemRef::new("f", &u),
                    ItemRef::new("f", &ItemId::unique(Eid([8; 6]), "x")),
                ]
                .into(),
                ..PersistDelta::default()
            })
            .unwrap();
        assert!(store.load().unwrap().applies_unconfirmed.is_empty());
    }

    #[test]
    fn a_partly_confirmed_batch_keeps_the_rest() {
        let mut store = ReplicaStore::open_in(Connection::open_in_memory().unwrap()).unwrap();
        let (a, b) = (ItemId::global("a"), ItemId::global("b"));
        store
            .write(&PersistDelta {
                families: vec![FamilyMeta {
                    name: "f".into(),
                    mode: Mode::Global,
                    baseline: true,
                    horizon: Hlc::ZERO,
                }],
                applies_started: vec![ItemRef::new("f", &a), ItemRef::new("f", &b)].into(),
                ..PersistDelta::default()
            })
            .unwrap();
        store
            .write(&PersistDelta {
                applies_confirmed: vec![ItemRef::new("f", &a)].into(),
                ..PersistDelta::default()
            })
            .unwrap();
        assert_eq!(
            store.load().unwrap().applies_unconfirmed,
            vec![("f".into(), b.clone())]
        );
        store
            .write(&PersistDelta {
                applies_confirmed: vec![ItemRef::new("f", &b)].into(),
                ..PersistDelta::default()
            })
            .unwrap();
        assert!(store.load().unwrap().applies_unconfirmed.is_empty());
    }

    #[test]
    fn a_mode_change_forgets_the_family_items() {
        let mut store = ReplicaStore::open_in(Connection::open_in_memory().unwrap()).unwrap();
        let fam = |mode| FamilyMeta {
            name: "f".into(),
            mode,
            baseline: true,
            horizon: Hlc::ZERO,
        };
        store
            .write(&PersistDelta {
                families: vec![fam(Mode::Global)],
                items: vec![ItemDelta::new(
                    "f",
                    &ItemId::global("k"),
                    Some(&entry(1, Some("v"))),
                )],
                ..PersistDelta::default()
            })
            .unwrap();
        store
            .write(&PersistDelta {
                reset_families: vec!["f".into()],
                families: vec![fam(Mode::Unique)],
                ..PersistDelta::default()
            })
            .unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.items.is_empty());
        assert_eq!(loaded.families[0].mode, Mode::Unique);
    }
}
