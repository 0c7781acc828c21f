//! The module's own SQLite file, `astdb_cluster.sqlite3` beside astdb: which
//! families are shared, and (in `replica`) the replicated state. AstDB itself is
//! only ever touched through Asterisk's API.
//!
//! rusqlite links the system libsqlite3, the same library Asterisk uses, so the
//! process has a single SQLite and its file locks stay coherent.

pub mod replica;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags};

use crate::engine::family::{Mode, Origin, SharedFamily, SharingPolicy, SyncMode};
use crate::engine::{PersistDelta, RestoredState};

pub const FILE_NAME: &str = "astdb_cluster.sqlite3";
const SCHEMA_VERSION: i64 = 1;

pub struct Metadata {
    conn: Connection,
    path: PathBuf,
}

/// What opening found, for the caller to log.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// A damaged file that was renamed out of the way, and why it was judged damaged.
    pub set_aside: Option<(PathBuf, String)>,
}

fn open_checked(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("integrity check failed: {check}"));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!("written by a newer res_astdb_cluster (schema {version}, this one knows {SCHEMA_VERSION})"));
    }
    Ok(conn)
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS shared_family (
             name TEXT PRIMARY KEY,
             mode TEXT NOT NULL,
             policy TEXT NOT NULL,
             sync_interval_ms INTEGER NOT NULL,
             sync_mode TEXT NOT NULL,
             origin TEXT NOT NULL,
             shared_at_ms INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS module_state (
             name TEXT PRIMARY KEY,
             value TEXT NOT NULL
         );",
    )?;
    replica::create_schema(conn)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Metadata {
    /// Opens (or creates) the file. A damaged file is renamed aside with a time
    /// suffix and a fresh one is made; the report says so.
    pub fn open(path: &Path) -> Result<(Metadata, OpenReport), String> {
        let mut report = OpenReport::default();
        let conn = match open_checked(path)
            .and_then(|c| create_schema(&c).map(|_| c).map_err(|e| e.to_string()))
        {
            Ok(conn) => conn,
            Err(why) => {
                let aside =
                    PathBuf::from(format!("{}.damaged-{}", path.display(), now_ms() / 1000));
                std::fs::rename(path, &aside).map_err(|e| {
                    format!(
                        "{} is damaged ({why}) and could not be set aside: {e}",
                        path.display()
                    )
                })?;
                for suffix in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{suffix}", path.display()));
                    let _ = std::fs::rename(&side, format!("{}{suffix}", aside.display()));
                }
                report.set_aside = Some((aside, why));
                let conn = open_checked(path)?;
                create_schema(&conn).map_err(|e| e.to_string())?;
                conn
            }
        };
        Ok((
            Metadata {
                conn,
                path: path.to_path_buf(),
            },
            report,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Writes what the engine changed, in one transaction.
    pub fn write_replica(&mut self, delta: &PersistDelta) -> Result<(), String> {
        replica::write(&mut self.conn, delta)
            .map_err(|e| format!("could not save replication state: {e}"))
    }

    /// The replication state saved before the last stop.
    pub fn load_replica(&self) -> Result<RestoredState, String> {
        replica::load(&self.conn).map_err(|e| format!("could not read replication state: {e}"))
    }

    /// Marks the module running (at load) or cleanly stopped (at unload); returns
    /// whether the previous run was still marked running, i.e. ended in a crash.
    pub fn mark_running(&self, running: bool) -> Result<bool, String> {
        let was: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM module_state WHERE name = 'running'",
                [],
                |r| r.get(0),
            )
            .ok();
        self.conn
            .execute(
                "INSERT INTO module_state (name, value) VALUES ('running', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = ?1",
                [if running { "1" } else { "0" }],
            )
            .map_err(|e| format!("could not record the module's state: {e}"))?;
        Ok(was.as_deref() == Some("1"))
    }

    /// Remembers a family shared at run time (presets come from the config file).
    pub fn save_family(&self, family: &SharedFamily) -> Result<(), String> {
        let policy = match &family.policy {
            SharingPolicy::Broadcast => "broadcast".to_string(),
            SharingPolicy::Multicast(nodes) => {
                let list: Vec<String> = nodes.iter().map(u32::to_string).collect();
                format!("multicast:{}", list.join(","))
            }
        };
        self.conn
            .execute(
                "INSERT INTO shared_family (name, mode, policy, sync_interval_ms, sync_mode, origin, shared_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(name) DO UPDATE SET mode = ?2, policy = ?3, sync_interval_ms = ?4,
                     sync_mode = ?5, origin = ?6",
                params![
                    family.name,
                    family.mode.to_string(),
                    policy,
                    family.sync_interval_ms as i64,
                    family.sync_mode.to_string(),
                    family.origin.to_string(),
                    now_ms()
                ],
            )
            .map(|_| ())
            .map_err(|e| format!("could not record shared family '{}': {e}", family.name))
    }

    pub fn remove_family(&self, name: &str) -> Result<(), String> {
        self.conn
            .execute("DELETE FROM shared_family WHERE name = ?1", [name])
            .map(|_| ())
            .map_err(|e| format!("could not forget shared family '{name}': {e}"))
    }

    /// The families shared at run time; rows that no longer parse are skipped and named.
    pub fn families(&self) -> Result<(Vec<SharedFamily>, Vec<String>), String> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, mode, policy, sync_interval_ms, sync_mode, origin FROM shared_family ORDER BY name")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(|e| e.to_string())?;
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for row in rows {
            let (name, mode, policy, interval, sync_mode, origin) =
                row.map_err(|e| e.to_string())?;
            let parsed = (|| -> Result<SharedFamily, String> {
                let policy = match policy.strip_prefix("multicast:") {
                    None if policy == "broadcast" => SharingPolicy::Broadcast,
                    None => return Err(format!("unknown policy '{policy}'")),
                    Some(list) => SharingPolicy::Multicast(
                        list.split(',')
                            .map(|n| n.parse::<u32>().map_err(|e| e.to_string()))
                            .collect::<Result<_, _>>()?,
                    ),
                };
                Ok(SharedFamily {
                    name: name.clone(),
                    mode: mode.parse::<Mode>()?,
                    policy,
                    sync_interval_ms: u64::try_from(interval).map_err(|e| e.to_string())?,
                    sync_mode: sync_mode.parse::<SyncMode>()?,
                    origin: origin.parse::<Origin>()?,
                })
            })();
            match parsed {
                Ok(f) => good.push(f),
                Err(why) => bad.push(format!("shared family '{name}': {why}")),
            }
        }
        Ok((good, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("astdb-cluster-meta-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(FILE_NAME)
    }

    #[test]
    fn shared_families_survive_reopening_the_file() {
        let path = temp_path("reopen");
        {
            let (meta, report) = Metadata::open(&path).unwrap();
            assert!(report.set_aside.is_none());
            meta.save_family(&SharedFamily::from_dialplan("blacklist", Mode::Global))
                .unwrap();
            meta.save_family(&SharedFamily::from_dialplan("registrar", Mode::Unique))
                .unwrap();
            meta.save_family(&SharedFamily::from_dialplan("gone", Mode::Unique))
                .unwrap();
            meta.remove_family("gone").unwrap();
        }
        let (meta, _) = Metadata::open(&path).unwrap();
        let (families, bad) = meta.families().unwrap();
        assert!(bad.is_empty());
        let names: Vec<(&str, Mode)> = families.iter().map(|f| (f.name.as_str(), f.mode)).collect();
        assert_eq!(
            names,
            vec![("blacklist", Mode::Global), ("registrar", Mode::Unique)]
        );
    }

    #[test]
    fn a_damaged_file_is_set_aside_and_replaced() {
        let path = temp_path("damaged");
        std::fs::write(&path, b"this is not a database, it is a shopping list").unwrap();
        let (meta, report) = Metadata::open(&path).unwrap();
        let (aside, why) = report.set_aside.expect("damage reported");
        assert!(aside.exists(), "the damaged file is kept for inspection");
        assert!(!why.is_empty());
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            b"this is not a database, it is a shopping list"
        );
        assert!(meta.families().unwrap().0.is_empty());
    }

    #[test]
    fn a_run_that_never_marked_a_clean_stop_is_reported_as_a_crash() {
        let path = temp_path("running");
        let (meta, _) = Metadata::open(&path).unwrap();
        assert!(
            !meta.mark_running(true).unwrap(),
            "a new file has no earlier run"
        );
        drop(meta);
        let (meta, _) = Metadata::open(&path).unwrap();
        assert!(
            meta.mark_running(true).unwrap(),
            "the first run never stopped cleanly"
        );
        assert!(meta.mark_running(false).unwrap());
        assert!(
            !meta.mark_running(true).unwrap(),
            "a clean stop is not a crash"
        );
    }

    #[test]
    fn changing_a_familys_mode_replaces_its_record() {
        let path = temp_path("mode");
        let (meta, _) = Metadata::open(&path).unwrap();
        meta.save_family(&SharedFamily::from_dialplan("foo", Mode::Global))
            .unwrap();
        meta.save_family(&SharedFamily::from_dialplan("foo", Mode::Unique))
            .unwrap();
        let (families, _) = meta.families().unwrap();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].mode, Mode::Unique);
    }
}
