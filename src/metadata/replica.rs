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
         CREATE TABLE IF NOT EXISTS replica_pending_apply (
             family INTEGER NOT NULL,
             owner BLOB NOT NULL,
             key TEXT NOT NULL,
             PRIMARY KEY (family, owner, key)
         ) WITHOUT ROWID;",
    )
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
            tx.execute("DELETE FROM replica_pending_apply WHERE family = ?1", [id])?;
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
        let mut unpend = tx.prepare_cached(
            "DELETE FROM replica_pending_apply WHERE family = ?1 AND owner = ?2 AND key = ?3",
        )?;
        for item in delta.applies_confirmed.iter() {
            if let Ok(id) = family_id(&tx, &item.family) {
                unpend.execute(params![id, owner_blob(&item.owner), &*item.key])?;
            }
        }
        let mut pend = tx.prepare_cached(
            "INSERT OR IGNORE INTO replica_pending_apply (family, owner, key) VALUES (?1, ?2, ?3)",
        )?;
        for item in delta.applies_started.iter() {
            if let Ok(id) = family_id(&tx, &item.family) {
                pend.execute(params![id, owner_blob(&item.owner), &*item.key])?;
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
        let mut q = conn.prepare("SELECT family, owner, key FROM replica_pending_apply")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let family: i64 = r.get(0)?;
            let Some(name) = names.get(&family) else {
                continue;
            };
            let owner = owner_from(1, &r.get::<_, Vec<u8>>(1)?)?;
            state.applies_unconfirmed.push((
                name.clone(),
                ItemId {
                    owner,
                    key: r.get(2)?,
                },
            ));
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
