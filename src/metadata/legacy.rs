//! Replication state as builds before the replica log kept it: tables in the module's
//! SQLite file (`replica_item` and its companions). Only read, once, to move the state
//! into the log (`super::replica`); the tables are dropped after that.

use std::collections::HashMap;

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension};

use crate::engine::{Eid, Entry, FamilyMeta, Hlc, ItemId, Mode, PeerMeta, RestoredState, Version};

const TABLES: [&str; 7] = [
    "replica_meta",
    "replica_family",
    "replica_item",
    "replica_peer",
    "replica_peer_stale",
    "replica_pending_batch",
    "replica_pending_apply",
];

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )
}

/// Whether the file still holds the old tables.
pub fn present(conn: &Connection) -> rusqlite::Result<bool> {
    for t in TABLES {
        if table_exists(conn, t)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Drops the old tables (after their state was saved elsewhere).
pub fn drop_tables(conn: &Connection) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    for t in TABLES {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {t}"))?;
    }
    tx.commit()
}

/// One pending apply in a batch row: family id (8 bytes LE), owner length (1 byte) and
/// bytes (0 or 6), key length (4 bytes LE) and UTF-8 bytes.
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

/// The state the old tables hold (tables missing from older files count as empty).
pub fn load(conn: &Connection) -> rusqlite::Result<RestoredState> {
    let mut state = RestoredState::default();
    if table_exists(conn, "replica_meta")? {
        let clock: Option<i64> = conn
            .query_row(
                "SELECT value FROM replica_meta WHERE name = 'clock'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        state.clock = Hlc(clock.unwrap_or(0) as u64);
    }
    if !table_exists(conn, "replica_family")? {
        return Ok(state);
    }
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
    if table_exists(conn, "replica_item")? {
        let mut q =
            conn.prepare("SELECT family, owner, key, hlc, origin, value FROM replica_item")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let family: i64 = r.get(0)?;
            let Some(name) = names.get(&family) else {
                continue;
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
    if table_exists(conn, "replica_peer")? {
        let stale = table_exists(conn, "replica_peer_stale")?;
        let mut q = conn.prepare("SELECT eid, node FROM replica_peer")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let blob: Vec<u8> = r.get(0)?;
            let eid = eid_from(0, &blob)?;
            let stale_below = if stale {
                conn.prepare_cached("SELECT family, below FROM replica_peer_stale WHERE eid = ?1")?
                    .query_map([&blob], |s| {
                        Ok((s.get::<_, String>(0)?, Hlc(s.get::<_, i64>(1)? as u64)))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            state.peers.push(PeerMeta {
                eid,
                node: r.get(1)?,
                stale_below,
            });
        }
    }
    let mut pending: Vec<(i64, Option<Eid>, String)> = Vec::new();
    if table_exists(conn, "replica_pending_apply")? {
        let mut q = conn.prepare("SELECT family, owner, key FROM replica_pending_apply")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let owner = owner_from(1, &r.get::<_, Vec<u8>>(1)?)?;
            pending.push((r.get(0)?, owner, r.get(2)?));
        }
    }
    if table_exists(conn, "replica_pending_batch")? {
        let mut q = conn.prepare("SELECT items FROM replica_pending_batch ORDER BY id")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let blob = r.get_ref(0)?.as_blob()?;
            for (family, owner, key) in decode_pending(blob)? {
                pending.push((family, owner, key.to_string()));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (family, owner, key) in pending {
        let Some(name) = names.get(&family) else {
            continue;
        };
        if seen.insert((family, owner, key.clone())) {
            state.applies_unconfirmed.push((
                name.clone(),
                ItemId {
                    owner,
                    key: key.into(),
                },
            ));
        }
    }
    Ok(state)
}
