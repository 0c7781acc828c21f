//! The module's own files beside astdb: `astdb_cluster.sqlite3` (SQLite: which
//! families are shared, the module's run state) and `astdb_cluster.replica` (the
//! replicated state, an append-only log: see `replica`). AstDB itself is only ever
//! touched through Asterisk's API.
//!
//! rusqlite links the system libsqlite3, the same library Asterisk uses, so the
//! process has a single SQLite and its file locks stay coherent.

pub mod legacy;
pub mod replica;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags};

use crate::engine::family::{Mode, Origin, SharedFamily, SharingPolicy, SyncMode};
use crate::engine::{PersistDelta, PersistedState, RestoredState};
use replica::ReplicaLog;

pub const FILE_NAME: &str = "astdb_cluster.sqlite3";
const SCHEMA_VERSION: i64 = 1;

/// Both files, as opened at load.
pub struct Metadata {
    pub marks: Marks,
    pub replica: Replica,
    /// What the replica log held when opened, for the engine.
    pub restored: RestoredState,
}

/// `astdb_cluster.sqlite3`: the families shared at run time and the module's run state.
/// Used by the CLI and dialplan (share, unshare) and by load and unload.
pub struct Marks {
    conn: Connection,
    path: PathBuf,
}

/// `astdb_cluster.replica`: the replicated state, owned by the module's thread.
pub struct Replica {
    log: ReplicaLog,
    path: PathBuf,
}

/// What opening found, for the caller to log.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// A damaged file that was renamed out of the way, and why it was judged damaged.
    pub set_aside: Option<(PathBuf, String)>,
    /// What opening the replica log found that is wrong (cut-off writes, a file set
    /// aside), one warning each.
    pub replica_notes: Vec<String>,
    /// State moved from an earlier build's tables into the log: for a notice.
    pub replica_moved: Option<String>,
}

/// Why the metadata file could not be used.
enum Unusable {
    /// Damaged: set aside and started afresh.
    Damaged(String),
    /// Written by a newer build: left as it is (a downgrade must not lose it).
    Newer(String),
}

fn open_checked(path: &Path) -> Result<Connection, Unusable> {
    open_with_schema(path)
        .map_err(Unusable::Damaged)?
        .map_err(Unusable::Newer)
}

/// The connection, or (inside) why a newer build's file is not ours to change.
fn open_with_schema(path: &Path) -> Result<Result<Connection, String>, String> {
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
        return Ok(Err(format!("it was written by a newer res_astdb_cluster (schema {version}; this build knows {SCHEMA_VERSION}) and is left untouched")));
    }
    Ok(Ok(conn))
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
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
}

/// The replica log beside the metadata file at `path`.
pub fn replica_path(path: &Path) -> PathBuf {
    path.with_file_name(replica::FILE_NAME)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Metadata {
    /// Opens (or creates) the file. A damaged file is renamed aside with a time
    /// suffix and a fresh one is made; the report says so. A file of a newer build is
    /// refused and left as it is.
    pub fn open(path: &Path) -> Result<(Metadata, OpenReport), String> {
        let mut report = OpenReport::default();
        let conn = match open_checked(path).and_then(|c| {
            create_schema(&c)
                .map(|_| c)
                .map_err(|e| Unusable::Damaged(e.to_string()))
        }) {
            Ok(conn) => conn,
            Err(Unusable::Newer(why)) => return Err(why),
            Err(Unusable::Damaged(why)) => {
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
                let conn = open_checked(path).map_err(|e| match e {
                    Unusable::Damaged(why) | Unusable::Newer(why) => why,
                })?;
                create_schema(&conn).map_err(|e| e.to_string())?;
                conn
            }
        };
        let log_path = replica_path(path);
        let (mut log, mut restored, notes) = ReplicaLog::open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        if notes.dropped_tail > 0 {
            report.replica_notes.push(format!(
                "{}: the last {} bytes were an interrupted write and were cut off (the state before it is intact)",
                log_path.display(),
                notes.dropped_tail
            ));
        }
        if let Some((aside, why)) = notes.set_aside {
            report.replica_notes.push(format!(
                "{} was {why}; it was moved to {} and replication state starts afresh (AstDB is untouched; peers fill it in)",
                log_path.display(),
                aside.display()
            ));
        }
        match legacy::present(&conn) {
            Ok(false) => {}
            Ok(true) if !log.is_empty() => {
                // Moved by an earlier start that stopped before dropping the tables.
                let _ = legacy::drop_tables(&conn);
            }
            Ok(true) => match legacy::load(&conn) {
                Ok(state) => match log.replace_with(&state) {
                    Ok(()) => {
                        report.replica_moved = Some(format!(
                            "replication state ({} items) moved from {} to {}",
                            state.items.len(),
                            path.display(),
                            log_path.display()
                        ));
                        let _ = legacy::drop_tables(&conn);
                        restored = state;
                    }
                    Err(e) => {
                        return Err(format!(
                            "could not move replication state to {}: {e}",
                            log_path.display()
                        ))
                    }
                },
                Err(e) => report.replica_notes.push(format!(
                    "{}: the replication state of an earlier build could not be read ({e}); it is left in place and replication starts from AstDB and the peers",
                    path.display()
                )),
            },
            Err(e) => report.replica_notes.push(format!(
                "{}: could not look for an earlier build's replication state: {e}",
                path.display()
            )),
        }
        Ok((
            Metadata {
                marks: Marks {
                    conn,
                    path: path.to_path_buf(),
                },
                replica: Replica {
                    log,
                    path: log_path,
                },
                restored,
            },
            report,
        ))
    }
}

impl Replica {
    /// Appends what the engine changed to the replica log.
    pub fn save(&mut self, delta: &PersistDelta) -> Result<(), String> {
        self.log.write(delta).map_err(|e| {
            format!(
                "could not save replication state to {}: {e}",
                self.path.display()
            )
        })
    }

    /// Whether the replica log is due to be rewritten from the engine's state.
    pub fn wants_compaction(&self) -> bool {
        self.log.wants_compaction()
    }

    /// Rewrites the replica log as `state` (the engine's, right after its delta was
    /// written).
    pub fn compact(&mut self, state: PersistedState<'_>) -> Result<(), String> {
        self.log.compact(state).map_err(|e| {
            format!(
                "could not compact {} (it keeps growing; retried later): {e}",
                self.path.display()
            )
        })
    }

    /// The replica log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the replica log.
    pub fn len(&self) -> u64 {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }
}

impl Marks {
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    fn connection(&self) -> &Connection {
        &self.conn
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
                    key_events: true,
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

    /// A directory of its own for one test's metadata file, removed when the test ends.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("astdb-cluster-meta-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join(FILE_NAME)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn shared_families_survive_reopening_the_file() {
        let scratch = Scratch::new("reopen");
        let path = scratch.file();
        {
            let (meta, report) = Metadata::open(&path).unwrap();
            assert!(report.set_aside.is_none());
            meta.marks
                .save_family(&SharedFamily::from_dialplan("blacklist", Mode::Global))
                .unwrap();
            meta.marks
                .save_family(&SharedFamily::from_dialplan("registrar", Mode::Unique))
                .unwrap();
            meta.marks
                .save_family(&SharedFamily::from_dialplan("gone", Mode::Unique))
                .unwrap();
            meta.marks.remove_family("gone").unwrap();
        }
        let (meta, _) = Metadata::open(&path).unwrap();
        let (families, bad) = meta.marks.families().unwrap();
        assert!(bad.is_empty());
        let names: Vec<(&str, Mode)> = families.iter().map(|f| (f.name.as_str(), f.mode)).collect();
        assert_eq!(
            names,
            vec![("blacklist", Mode::Global), ("registrar", Mode::Unique)]
        );
    }

    #[test]
    fn a_damaged_file_is_set_aside_and_replaced() {
        let scratch = Scratch::new("damaged");
        let path = scratch.file();
        std::fs::write(&path, b"this is not a database, it is a shopping list").unwrap();
        let (meta, report) = Metadata::open(&path).unwrap();
        let (aside, why) = report.set_aside.expect("damage reported");
        assert!(aside.exists(), "the damaged file is kept for inspection");
        assert!(!why.is_empty());
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            b"this is not a database, it is a shopping list"
        );
        assert!(meta.marks.families().unwrap().0.is_empty());
    }

    #[test]
    fn a_file_of_a_newer_build_is_refused_and_left_untouched() {
        let scratch = Scratch::new("newer");
        let path = scratch.file();
        {
            let (meta, _) = Metadata::open(&path).unwrap();
            meta.marks
                .save_family(&SharedFamily::from_dialplan("blacklist", Mode::Global))
                .unwrap();
            meta.marks
                .conn
                .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let why = Metadata::open(&path)
            .err()
            .expect("a newer file is refused");
        assert!(why.contains("newer"), "{why}");
        assert!(
            why.contains(&format!("schema {}", SCHEMA_VERSION + 1)),
            "{why}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "left as it was");
        let aside = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(".damaged-"));
        assert!(!aside, "nothing set aside");
    }

    #[test]
    fn a_run_that_never_marked_a_clean_stop_is_reported_as_a_crash() {
        let scratch = Scratch::new("running");
        let path = scratch.file();
        let (meta, _) = Metadata::open(&path).unwrap();
        assert!(
            !meta.marks.mark_running(true).unwrap(),
            "a new file has no earlier run"
        );
        drop(meta);
        let (meta, _) = Metadata::open(&path).unwrap();
        assert!(
            meta.marks.mark_running(true).unwrap(),
            "the first run never stopped cleanly"
        );
        assert!(meta.marks.mark_running(false).unwrap());
        assert!(
            !meta.marks.mark_running(true).unwrap(),
            "a clean stop is not a crash"
        );
    }

    #[test]
    fn replication_state_of_an_earlier_build_moves_into_the_log() {
        use crate::engine::{Eid, ItemId};
        let scratch = Scratch::new("legacy");
        let path = scratch.file();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE replica_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                 INSERT INTO replica_meta VALUES ('clock', 123456);
                 CREATE TABLE replica_family (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                     mode TEXT NOT NULL, baseline INTEGER NOT NULL, horizon INTEGER NOT NULL);
                 INSERT INTO replica_family VALUES (1, 'blacklist', 'global', 1, 0),
                                                   (2, 'registrar', 'unique', 1, 0);
                 CREATE TABLE replica_item (family INTEGER NOT NULL, owner BLOB NOT NULL,
                     key TEXT NOT NULL, hlc INTEGER NOT NULL, origin BLOB NOT NULL, value TEXT,
                     PRIMARY KEY (family, owner, key)) WITHOUT ROWID;
                 INSERT INTO replica_item VALUES (1, x'', '5551234', 99, x'010203040506', 'spam'),
                                                 (2, x'090909090909', 'alice', 98, x'090909090909', NULL);
                 CREATE TABLE replica_peer (eid BLOB PRIMARY KEY, node INTEGER NOT NULL) WITHOUT ROWID;
                 INSERT INTO replica_peer VALUES (x'090909090909', 2);
                 CREATE TABLE replica_pending_apply (family INTEGER NOT NULL, owner BLOB NOT NULL,
                     key TEXT NOT NULL, PRIMARY KEY (family, owner, key)) WITHOUT ROWID;
                 INSERT INTO replica_pending_apply VALUES (2, x'090909090909', 'alice');",
            )
            .unwrap();
        }
        let (mut meta, report) = Metadata::open(&path).unwrap();
        assert!(
            report
                .replica_moved
                .as_deref()
                .is_some_and(|n| n.contains("2 items")),
            "{:?}",
            report.replica_moved
        );
        let state = std::mem::take(&mut meta.restored);
        assert_eq!(state.clock.0, 123456);
        assert_eq!(state.families.len(), 2);
        assert_eq!(state.items.len(), 2);
        assert_eq!(state.peers.len(), 1);
        assert_eq!(
            state.applies_unconfirmed,
            vec![("registrar".into(), ItemId::unique(Eid([9; 6]), "alice"))]
        );
        assert!(!legacy::present(meta.marks.connection()).unwrap());
        drop(meta);
        let (mut meta, report) = Metadata::open(&path).unwrap();
        assert!(report.replica_notes.is_empty() && report.replica_moved.is_none());
        let mut again = std::mem::take(&mut meta.restored);
        again.items.sort_by(|a, b| a.0.cmp(&b.0));
        let mut state = state;
        state.items.sort_by(|a, b| a.0.cmp(&b.0));
        again.families.sort_by(|a, b| a.name.cmp(&b.name));
        state.families.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(again, state, "the log holds what the tables held");
    }

    #[test]
    fn changing_a_familys_mode_replaces_its_record() {
        let scratch = Scratch::new("mode");
        let path = scratch.file();
        let (meta, _) = Metadata::open(&path).unwrap();
        meta.marks
            .save_family(&SharedFamily::from_dialplan("foo", Mode::Global))
            .unwrap();
        meta.marks
            .save_family(&SharedFamily::from_dialplan("foo", Mode::Unique))
            .unwrap();
        let (families, _) = meta.marks.families().unwrap();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].mode, Mode::Unique);
    }
}
