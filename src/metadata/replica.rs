//! The engine's replicated state on disk: an append-only log of its deltas.
//!
//! Each [`PersistDelta`] becomes one record appended to `astdb_cluster.replica`, written
//! before the delta's outputs run (as the engine asks). A record is its length, a
//! checksum and the delta in a compact binary form; loading folds the records in order.
//! When the log has grown to twice what the state needs (and at least
//! [`COMPACT_FLOOR`]), the node writes the engine's whole state as the first records of
//! a new file and renames it over the old one ([`ReplicaLog::compact`]).
//!
//! Why not SQLite tables (what earlier builds used, see `legacy`): a row per changed key,
//! with its B-tree search, record encoding and statement round trip, cost about half of
//! the module's CPU per replicated update; an appended record costs a few hundred
//! nanoseconds. Durability is the same as SQLite's WAL with `synchronous = NORMAL`: a
//! write is in the kernel when `write` returns, so a crash of Asterisk loses nothing; a
//! power cut may lose the last records but never leaves a log that loads wrong, since
//! a record whose checksum fails ends the log (and is cut off at the next open).
//!
//! Layout: a 16-byte header (`ADBCRLOG`, format version u32 LE, four zero bytes), then
//! records: payload length (u32 LE), xxh3-64 of the payload seeded with its length
//! (u64 LE), payload. Payload: kind (1 = delta, 2 = part of a compaction's snapshot), clock (u64),
//! reset families, family metadata, item runs (family name, then items), peers, started
//! and confirmed applies. Strings and counts are LEB128-prefixed; clocks are u64 LE.
//!
//! A file that is not a replica log is renamed aside and a new log started; a log of a
//! format newer than `FORMAT` (a later build's, after a downgrade) is refused and left
//! as it is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::engine::{
    Eid, Entry, FamilyMeta, Hlc, ItemDelta, ItemId, ItemRef, ItemRefs, ItemState, ItemView, Mode,
    PeerMeta, PersistDelta, PersistedState, RestoredState, Version,
};

/// The log's file name, beside astdb.
pub const FILE_NAME: &str = "astdb_cluster.replica";
const MAGIC: &[u8; 8] = b"ADBCRLOG";
const FORMAT: u32 = 1;
const HEADER_LEN: u64 = 16;
const RECORD_HEAD: usize = 12;
/// A record longer than this is damage, not data (a delta of every key of a large
/// family is a few hundred MB at most).
const MAX_RECORD: usize = 1 << 30;
const KIND_DELTA: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;
/// The log is compacted once the records after the last snapshot exceed both this and
/// the snapshot's own size.
pub const COMPACT_FLOOR: u64 = 64 << 20;
/// Items per record: a delta or a snapshot with more goes in several records (bounds
/// the memory a load needs per record).
const RECORD_ITEMS: usize = 65_536;
/// About the most item bytes per record (with `RECORD_ITEMS`, keeps records far below
/// `MAX_RECORD` however large the items).
const RECORD_BYTES: usize = 64 << 20;
/// The write buffer is given back when a large delta has grown it beyond this.
const KEEP_BUFFER: usize = 4 << 20;

/// What opening the log found that an administrator should hear about.
#[derive(Debug, Default)]
pub struct LogNotes {
    /// Bytes at the end that did not form whole, intact records (an interrupted
    /// write), cut off.
    pub dropped_tail: u64,
    /// A file that was not a replica log, renamed aside, and why.
    pub set_aside: Option<(PathBuf, String)>,
}

pub struct ReplicaLog {
    path: PathBuf,
    file: File,
    /// Where the next record goes.
    len: u64,
    /// End of the snapshot records at the start of the file.
    base: u64,
    /// A failed write may have left part of a record at `len`: cut it before the next.
    torn: bool,
    floor: u64,
    /// After a failed compaction, the next waits until the log reaches this length.
    retry_at: u64,
    buf: Vec<u8>,
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h
}

fn side_path(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// One writer per log: a second process (another Asterisk given the same astdbdir)
/// appending to it would interleave records. An flock(2) lock, held until the file
/// is closed.
fn lock(file: &File) -> io::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::other(
            "in use by another process (another Asterisk with the same astdbdir?)",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ReplicaLog {
    /// Opens (or creates) the log at `path` and folds it into the state it holds.
    pub fn open(path: &Path) -> io::Result<(ReplicaLog, RestoredState, LogNotes)> {
        let mut notes = LogNotes::default();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        lock(&file)?;
        let size = file.metadata()?.len();
        let mut head = [0u8; HEADER_LEN as usize];
        if size >= HEADER_LEN {
            file.read_exact_at(&mut head, 0)?;
        }
        let format = (size >= HEADER_LEN && &head[..8] == MAGIC)
            .then(|| u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
        if let Some(newer) = format.filter(|&f| f > FORMAT) {
            // Neither readable nor damage: a later build's log (a downgrade). Setting it
            // aside would start this node afresh and leave that state behind when the
            // later build comes back, so nothing is touched, its compaction included.
            return Err(io::Error::other(format!(
                "written by a newer res_astdb_cluster (log format {newer}; this build reads \
                 format {FORMAT}); it is left as it is: run a build that reads it, or move \
                 it away to start the replication state afresh (AstDB is not in it)"
            )));
        }
        // A compaction that did not finish: the old file is still the whole truth.
        let _ = std::fs::remove_file(side_path(path, ".new"));
        let readable = size >= HEADER_LEN && head == header();
        if !readable && size > 0 {
            let why = match format {
                None => "not a replica log".to_string(),
                Some(f) => format!("a replica log with a damaged header (format {f})"),
            };
            let aside = side_path(path, &format!(".damaged-{}", unix_secs()));
            drop(file);
            std::fs::rename(path, &aside)?;
            notes.set_aside = Some((aside, why));
            file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            lock(&file)?;
        }
        let mut log = ReplicaLog {
            path: path.to_path_buf(),
            file,
            len: HEADER_LEN,
            base: HEADER_LEN,
            torn: false,
            floor: COMPACT_FLOOR,
            retry_at: 0,
            buf: Vec::new(),
        };
        if !readable {
            log.file.set_len(0)?;
            log.file.write_all_at(&header(), 0)?;
            log.file.sync_all()?;
            sync_dir(path)?;
            return Ok((log, RestoredState::default(), notes));
        }
        let state = log.fold()?;
        let size = log.file.metadata()?.len();
        if size > log.len {
            notes.dropped_tail = size - log.len;
            log.file.set_len(log.len)?;
        }
        Ok((log, state, notes))
    }

    /// Reads the file again from the start: the state it holds now.
    pub fn load(&mut self) -> io::Result<RestoredState> {
        self.fold()
    }

    /// Folds every intact record; sets `len` to the end of the last one and `base` to
    /// the end of the leading snapshot records.
    fn fold(&mut self) -> io::Result<RestoredState> {
        let size = self.file.metadata()?.len();
        let mut reader = io::BufReader::with_capacity(1 << 20, &self.file);
        io::Seek::seek(&mut reader, io::SeekFrom::Start(HEADER_LEN))?;
        let mut fold = Fold::default();
        let mut at = HEADER_LEN;
        let mut base = HEADER_LEN;
        let mut in_snapshot = true;
        let mut payload = Vec::new();
        loop {
            let mut head = [0u8; RECORD_HEAD];
            if read_full(&mut reader, &mut head)? < RECORD_HEAD {
                break;
            }
            let n = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
            let check = u64::from_le_bytes(head[4..].try_into().unwrap_or_default());
            // A length the file cannot hold is damage: never allocate for it.
            if n == 0 || n > MAX_RECORD || at + (RECORD_HEAD + n) as u64 > size {
                break;
            }
            payload.resize(n, 0);
            if read_full(&mut reader, &mut payload)? < n
                || xxh3_64_with_seed(&payload, n as u64) != check
            {
                break;
            }
            let Ok((kind, delta)) = decode(&payload) else {
                break;
            };
            fold.apply(&delta);
            at += (RECORD_HEAD + n) as u64;
            if kind == KIND_SNAPSHOT && in_snapshot {
                base = at;
            } else {
                in_snapshot = false;
            }
        }
        self.len = at;
        self.base = base;
        Ok(fold.finish())
    }

    /// The log compacts when `bytes` past the last snapshot are exceeded (tests use a
    /// small one to make it happen often).
    pub fn set_compaction_floor(&mut self, bytes: u64) {
        self.floor = bytes;
    }

    /// Bytes in the file (header included).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// Appends one delta: one record, or for a delta of many items several, written
    /// together (a crash between them leaves the first ones, which is the state of a
    /// delta taken part-way: the delta's outputs have not run yet).
    pub fn write(&mut self, delta: &PersistDelta) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_delta(&mut buf, delta);
        let done = self.append(&buf);
        if buf.capacity() <= KEEP_BUFFER {
            self.buf = buf;
        }
        done
    }

    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        match self.file.write_all_at(record, self.len) {
            Ok(()) => {
                self.len += record.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.torn = true;
                Err(e)
            }
        }
    }

    /// Whether the log holds enough superseded records to be worth rewriting.
    pub fn wants_compaction(&self) -> bool {
        let tail = self.len - self.base;
        tail > self.floor.max(self.base) && self.len >= self.retry_at
    }

    /// Replaces the log by a new file holding just `state` (which must be what the
    /// records written so far add up to). On failure the old log stays in use and the
    /// next attempt waits for the log to grow by the floor again.
    pub fn compact(&mut self, state: PersistedState<'_>) -> io::Result<()> {
        let result = self.write_snapshot(state);
        if result.is_err() {
            let _ = std::fs::remove_file(side_path(&self.path, ".new"));
            self.retry_at = self.len + self.floor;
        }
        result
    }

    fn write_snapshot(&mut self, state: PersistedState<'_>) -> io::Result<()> {
        let new_path = side_path(&self.path, ".new");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&new_path)?;
        lock(&file)?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&header())?;
        let mut len = HEADER_LEN;
        let items = state
            .items
            .map(|(family, v)| (family, v.owner, v.key, Some((v.version, v.value))));
        let head = |b: &mut Vec<u8>| {
            put_len(b, 0);
            encode_families(b, &state.families);
        };
        let tail = |b: &mut Vec<u8>| {
            encode_peers(b, &state.peers);
            encode_refs(b, state.unconfirmed.iter().copied());
            put_len(b, 0);
        };
        let mut buf = Vec::new();
        encode_records(
            &mut buf,
            KIND_SNAPSHOT,
            state.clock,
            items,
            head,
            tail,
            |b| {
                out.write_all(b)?;
                len += b.len() as u64;
                b.clear();
                Ok(())
            },
        )?;
        out.flush()?;
        drop(out);
        file.sync_all()?;
        std::fs::rename(&new_path, &self.path)?;
        // The rename is the switch: from here on the new file is the log.
        self.file = file;
        self.len = len;
        self.base = len;
        self.torn = false;
        self.retry_at = 0;
        sync_dir(&self.path)
    }

    /// Writes `state` (as loaded from elsewhere) as the log's snapshot.
    pub fn replace_with(&mut self, state: &RestoredState) -> io::Result<()> {
        let view = PersistedState {
            clock: state.clock,
            families: state.families.clone(),
            peers: state.peers.clone(),
            unconfirmed: state
                .applies_unconfirmed
                .iter()
                .map(|(f, i)| (f.as_str(), i.owner, &*i.key))
                .collect(),
            items: Box::new(
                state
                    .items
                    .iter()
                    .map(|(f, i, e)| (f.as_str(), ItemView::of(i, e))),
            ),
        };
        self.compact(view)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

// ---- encoding ----

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_len(b: &mut Vec<u8>, mut v: usize) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            b.push(byte);
            return;
        }
        b.push(byte | 0x80);
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_len(b, s.len());
    b.extend_from_slice(s.as_bytes());
}

fn put_owner(b: &mut Vec<u8>, owner: Option<Eid>) {
    match owner {
        None => b.push(0),
        Some(e) => {
            b.push(1);
            b.extend_from_slice(&e.0);
        }
    }
}

/// One item: owner, key, then 0 (forget), or 1 (value) / 2 (tombstone) with its version.
fn put_item(
    b: &mut Vec<u8>,
    owner: Option<Eid>,
    key: &str,
    state: Option<(Version, Option<&str>)>,
) {
    put_owner(b, owner);
    put_str(b, key);
    match state {
        None => b.push(0),
        Some((version, value)) => {
            b.push(if value.is_some() { 1 } else { 2 });
            put_u64(b, version.hlc.0);
            b.extend_from_slice(&version.origin.0);
            if let Some(v) = value {
                put_str(b, v);
            }
        }
    }
}

/// Writes a record (head and payload) to `b`; `body` writes the payload after the kind.
fn encode_record(b: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0; RECORD_HEAD]);
    b.push(kind);
    body(b);
    let n = b.len() - start - RECORD_HEAD;
    let check = xxh3_64_with_seed(&b[start + RECORD_HEAD..], n as u64);
    b[start..start + 4].copy_from_slice(&(n.min(u32::MAX as usize) as u32).to_le_bytes());
    b[start + 4..start + RECORD_HEAD].copy_from_slice(&check.to_le_bytes());
}

/// Items grouped in runs of one family: count of runs, then per run the family name,
/// the item count and the items. The counts are patched in when known.
struct Runs<'b> {
    b: &'b mut Vec<u8>,
    runs_at: usize,
    runs: usize,
    count_at: usize,
    count: usize,
    family: Option<String>,
    /// Address and length of the family string last given.
    given: (usize, usize),
}

/// Counts are written as fixed 5-byte LEB128 so they can be patched in place.
fn put_len_fixed(b: &mut [u8], v: usize) {
    for (i, slot) in b.iter_mut().enumerate().take(5) {
        let byte = ((v >> (7 * i)) & 0x7f) as u8;
        *slot = if i < 4 { byte | 0x80 } else { byte };
    }
}

impl<'b> Runs<'b> {
    fn new(b: &'b mut Vec<u8>) -> Self {
        let runs_at = b.len();
        b.extend_from_slice(&[0; 5]);
        Runs {
            b,
            runs_at,
            runs: 0,
            count_at: 0,
            count: 0,
            family: None,
            given: (0, 0),
        }
    }

    /// The buffer to write the next item of `family` into.
    fn item(&mut self, family: &str) -> &mut Vec<u8> {
        // The items of a run usually share one string: its address settles most.
        let given = (family.as_ptr() as usize, family.len());
        let same = self.given == given || self.family.as_deref() == Some(family);
        self.given = given;
        if !same {
            self.close_run();
            self.runs += 1;
            put_str(self.b, family);
            self.count_at = self.b.len();
            self.b.extend_from_slice(&[0; 5]);
            self.count = 0;
            self.family = Some(family.to_string());
        }
        self.count += 1;
        self.b
    }

    fn close_run(&mut self) {
        if self.family.is_some() {
            put_len_fixed(&mut self.b[self.count_at..self.count_at + 5], self.count);
        }
    }

    fn finish(mut self) {
        self.close_run();
        put_len_fixed(&mut self.b[self.runs_at..self.runs_at + 5], self.runs);
    }
}

fn encode_families(b: &mut Vec<u8>, families: &[FamilyMeta]) {
    put_len(b, families.len());
    for f in families {
        put_str(b, &f.name);
        b.push(match f.mode {
            Mode::Global => 0,
            Mode::Unique => 1,
        });
        b.push(f.baseline as u8);
        put_u64(b, f.horizon.0);
    }
}

fn encode_peers(b: &mut Vec<u8>, peers: &[PeerMeta]) {
    put_len(b, peers.len());
    for p in peers {
        b.extend_from_slice(&p.eid.0);
        put_len(b, p.node as usize);
        put_len(b, p.stale_below.len());
        for (family, below) in &p.stale_below {
            put_str(b, family);
            put_u64(b, below.0);
        }
    }
}

fn encode_refs<'a>(b: &mut Vec<u8>, refs: impl Iterator<Item = (&'a str, Option<Eid>, &'a str)>) {
    let mut runs = Runs::new(b);
    for (family, owner, key) in refs {
        let b = runs.item(family);
        put_owner(b, owner);
        put_str(b, key);
    }
    runs.finish();
}

/// One item for a record: family, owner, key and state (`None`: forgotten; else the
/// version and value, `None` for a tombstone).
type ItemRow<'a> = (
    &'a str,
    Option<Eid>,
    &'a str,
    Option<(Version, Option<&'a str>)>,
);

/// Appends to `b` the records of a delta (or of a snapshot: `kind`) holding `items`:
/// at most `RECORD_ITEMS` and about `RECORD_BYTES` of items in each, at least one
/// record. The first record has what `head` writes before its items (reset families
/// and family metadata) and what `tail` writes after them (peers, started and confirmed
/// applies); the others have empty ones. `done` is called after each record, with
/// the buffer (a snapshot writes it out and empties it; a delta keeps its records
/// together, for one write).
fn encode_records<'a>(
    b: &mut Vec<u8>,
    kind: u8,
    clock: Hlc,
    items: impl Iterator<Item = ItemRow<'a>>,
    head: impl FnOnce(&mut Vec<u8>),
    tail: impl FnOnce(&mut Vec<u8>),
    mut done: impl FnMut(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let mut items = items.peekable();
    let (mut head, mut tail) = (Some(head), Some(tail));
    loop {
        encode_record(b, kind, |b| {
            put_u64(b, clock.0);
            match head.take() {
                Some(head) => head(b),
                None => {
                    put_len(b, 0);
                    put_len(b, 0);
                }
            }
            let start = b.len();
            let mut runs = Runs::new(b);
            let mut n = 0;
            while n < RECORD_ITEMS && runs.b.len() - start < RECORD_BYTES {
                let Some((family, owner, key, state)) = items.next() else {
                    break;
                };
                put_item(runs.item(family), owner, key, state);
                n += 1;
            }
            runs.finish();
            match tail.take() {
                Some(tail) => tail(b),
                None => {
                    put_len(b, 0);
                    put_len(b, 0);
                    put_len(b, 0);
                }
            }
        });
        done(b)?;
        if items.peek().is_none() {
            return Ok(());
        }
    }
}

/// Appends to `b` the records of one delta (several for a delta of many items: written
/// together, a crash between them leaves the state of a delta taken part-way, whose
/// outputs have not run).
fn encode_delta(b: &mut Vec<u8>, d: &PersistDelta) {
    let items = d.items.iter().map(|i| {
        let state = i.state.as_ref().map(|s| (s.version, s.value.as_deref()));
        (&*i.item.family, i.item.owner, &*i.item.key, state)
    });
    let head = |b: &mut Vec<u8>| {
        put_len(b, d.reset_families.len());
        for name in &d.reset_families {
            put_str(b, name);
        }
        encode_families(b, &d.families);
    };
    let tail = |b: &mut Vec<u8>| {
        encode_peers(b, &d.peers);
        for refs in [&d.applies_started, &d.applies_confirmed] {
            encode_refs(b, refs.iter().map(|r| (&*r.family, r.owner, &*r.key)));
        }
    };
    let _ = encode_records(b, KIND_DELTA, d.clock, items, head, tail, |_| Ok(()));
}

// ---- decoding ----

struct Damaged;

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        if self.b.len() < n {
            return Err(Damaged);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Damaged> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, Damaged> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| Damaged)?,
        ))
    }

    fn len(&mut self) -> Result<usize, Damaged> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return usize::try_from(v).map_err(|_| Damaged);
            }
        }
        Err(Damaged)
    }

    /// A count of things each at least `min` bytes long: more than the rest could hold
    /// is damage (and must not size an allocation).
    fn count(&mut self, min: usize) -> Result<usize, Damaged> {
        let n = self.len()?;
        if n.saturating_mul(min) > self.b.len() {
            return Err(Damaged);
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<&'a str, Damaged> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| Damaged)
    }

    fn eid(&mut self) -> Result<Eid, Damaged> {
        Ok(Eid(self.take(6)?.try_into().map_err(|_| Damaged)?))
    }

    fn owner(&mut self) -> Result<Option<Eid>, Damaged> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.eid()?)),
            _ => Err(Damaged),
        }
    }

    /// Runs of items: calls `each(family, reader)` per item.
    fn runs(
        &mut self,
        mut each: impl FnMut(&Arc<str>, &mut Self) -> Result<(), Damaged>,
    ) -> Result<(), Damaged> {
        let runs = self.count(2)?;
        for _ in 0..runs {
            let family: Arc<str> = self.str()?.into();
            let n = self.count(2)?;
            for _ in 0..n {
                each(&family, self)?;
            }
        }
        Ok(())
    }

    fn refs(&mut self) -> Result<ItemRefs, Damaged> {
        let mut out = Vec::new();
        self.runs(|family, r| {
            out.push(ItemRef {
                family: family.clone(),
                owner: r.owner()?,
                key: r.str()?.into(),
            });
            Ok(())
        })?;
        Ok(Arc::new(out))
    }
}

fn decode(payload: &[u8]) -> Result<(u8, PersistDelta), Damaged> {
    let mut r = Reader { b: payload };
    let kind = r.u8()?;
    if kind != KIND_DELTA && kind != KIND_SNAPSHOT {
        return Err(Damaged);
    }
    let mut d = PersistDelta {
        clock: Hlc(r.u64()?),
        ..PersistDelta::default()
    };
    for _ in 0..r.count(1)? {
        d.reset_families.push(r.str()?.to_string());
    }
    for _ in 0..r.count(11)? {
        d.families.push(FamilyMeta {
            name: r.str()?.to_string(),
            mode: match r.u8()? {
                0 => Mode::Global,
                1 => Mode::Unique,
                _ => return Err(Damaged),
            },
            baseline: r.u8()? != 0,
            horizon: Hlc(r.u64()?),
        });
    }
    let mut items = Vec::new();
    r.runs(|family, r| {
        let owner = r.owner()?;
        let key: Arc<str> = r.str()?.into();
        let state = match r.u8()? {
            0 => None,
            tag @ (1 | 2) => {
                let version = Version::new(Hlc(r.u64()?), r.eid()?);
                let value = if tag == 1 {
                    Some(r.str()?.into())
                } else {
                    None
                };
                Some(ItemState { version, value })
            }
            _ => return Err(Damaged),
        };
        items.push(ItemDelta {
            item: ItemRef {
                family: family.clone(),
                owner,
                key,
            },
            state,
        });
        Ok(())
    })?;
    d.items = items;
    for _ in 0..r.count(8)? {
        let eid = r.eid()?;
        let node = u32::try_from(r.len()?).map_err(|_| Damaged)?;
        let mut stale_below = Vec::new();
        for _ in 0..r.count(9)? {
            stale_below.push((r.str()?.to_string(), Hlc(r.u64()?)));
        }
        d.peers.push(PeerMeta {
            eid,
            node,
            stale_below,
        });
    }
    d.applies_started = r.refs()?;
    d.applies_confirmed = r.refs()?;
    if !r.b.is_empty() {
        return Err(Damaged);
    }
    Ok((kind, d))
}

// ---- folding ----

/// One family's items while folding, by (owner, key).
type FamilyItems = HashMap<(Option<Eid>, Arc<str>), Entry>;

/// The state the records read so far add up to.
#[derive(Default)]
struct Fold {
    clock: Hlc,
    families: BTreeMap<String, FamilyMeta>,
    items: HashMap<Arc<str>, FamilyItems>,
    pending: BTreeSet<(Arc<str>, Option<Eid>, Arc<str>)>,
    peers: BTreeMap<Eid, PeerMeta>,
}

impl Fold {
    fn apply(&mut self, d: &PersistDelta) {
        // The clock only moves forward, even if deltas were ever written out of order.
        self.clock = self.clock.max(d.clock);
        for name in &d.reset_families {
            self.families.remove(name);
            self.items.remove(name.as_str());
            self.pending.retain(|(f, _, _)| &**f != name);
        }
        for f in &d.families {
            self.families.insert(f.name.clone(), f.clone());
        }
        for item in &d.items {
            let key = (item.item.owner, item.item.key.clone());
            match &item.state {
                Some(s) => {
                    self.items
                        .entry(item.item.family.clone())
                        .or_default()
                        .insert(key, s.to_entry());
                }
                None => {
                    if let Some(family) = self.items.get_mut(&item.item.family) {
                        family.remove(&key);
                    }
                }
            }
        }
        for p in &d.peers {
            self.peers.insert(p.eid, p.clone());
        }
        for r in d.applies_confirmed.iter() {
            self.pending
                .remove(&(r.family.clone(), r.owner, r.key.clone()));
        }
        for r in d.applies_started.iter() {
            self.pending
                .insert((r.family.clone(), r.owner, r.key.clone()));
        }
    }

    fn finish(self) -> RestoredState {
        let mut state = RestoredState {
            clock: self.clock,
            ..RestoredState::default()
        };
        for (family, items) in self.items {
            if !self.families.contains_key(&*family) {
                continue;
            }
            let name = family.to_string();
            state.items.reserve(items.len());
            for ((owner, key), entry) in items {
                state.items.push((
                    name.clone(),
                    ItemId {
                        owner,
                        key: key.clone(),
                    },
                    entry,
                ));
            }
        }
        for (family, owner, key) in self.pending {
            if self.families.contains_key(&*family) {
                state.applies_unconfirmed.push((
                    family.to_string(),
                    ItemId {
                        owner,
                        key: key.clone(),
                    },
                ));
            }
        }
        state.families = self.families.into_values().collect();
        state.peers = self.peers.into_values().collect();
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ms: u64, value: Option<&str>) -> Entry {
        Entry {
            version: Version::new(Hlc::from_parts(ms, 1), Eid([1, 2, 3, 4, 5, 6])),
            value: value.map(Into::into),
        }
    }

    fn family(name: &str, mode: Mode) -> FamilyMeta {
        FamilyMeta {
            name: name.into(),
            mode,
            baseline: true,
            horizon: Hlc::ZERO,
        }
    }

    /// The state with its lists in one order, to compare.
    fn sorted(mut s: RestoredState) -> RestoredState {
        s.items.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        s.families.sort_by(|a, b| a.name.cmp(&b.name));
        s.peers.sort_by_key(|p| p.eid);
        s.applies_unconfirmed.sort();
        s
    }

    /// A delta that writes one key of the blacklist family.
    fn one_item(key: &str, ms: u64, value: &str) -> PersistDelta {
        PersistDelta {
            items: vec![ItemDelta::new(
                "blacklist",
                &ItemId::global(key),
                Some(&entry(ms, Some(value))),
            )],
            ..PersistDelta::default()
        }
    }

    /// The sample delta with `n` more keys of the blacklist family.
    fn sample_with_bulk(n: usize) -> PersistDelta {
        let mut d = sample_delta();
        d.items.extend((0..n as u64).map(|i| {
            ItemDelta::new(
                "blacklist",
                &ItemId::global(&format!("bulk{i}")),
                Some(&entry(40 + i, Some("v"))),
            )
        }));
        d
    }

    fn temp_log() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        (dir, path)
    }

    fn reopen(path: &Path) -> (ReplicaLog, RestoredState, LogNotes) {
        ReplicaLog::open(path).unwrap()
    }

    fn sample_delta() -> PersistDelta {
        let g = ItemId::global("a/b");
        let u = ItemId::unique(Eid([9; 6]), "k");
        PersistDelta {
            clock: Hlc::from_parts(500, 2),
            families: vec![
                FamilyMeta {
                    horizon: Hlc::from_parts(7, 0),
                    ..family("blacklist", Mode::Global)
                },
                FamilyMeta {
                    baseline: false,
                    ..family("registrar", Mode::Unique)
                },
            ],
            items: vec![
                ItemDelta::new("blacklist", &g, Some(&entry(10, Some("x")))),
                ItemDelta::new(
                    "blacklist",
                    &ItemId::global("c"),
                    Some(&entry(12, Some(""))),
                ),
                ItemDelta::new("registrar", &u, Some(&entry(11, None))),
            ],
            peers: vec![PeerMeta {
                eid: Eid([9; 6]),
                node: 2,
                stale_below: vec![("blacklist".into(), Hlc::from_parts(3, 0))],
            }],
            applies_started: vec![ItemRef::new("blacklist", &g)].into(),
            ..PersistDelta::default()
        }
    }

    #[test]
    fn a_written_delta_loads_back_as_the_same_state_after_reopening() {
        let (_dir, path) = temp_log();
        let (mut log, empty, _) = reopen(&path);
        assert_eq!(empty, RestoredState::default());
        let delta = sample_delta();
        log.write(&delta).unwrap();
        drop(log);
        let (mut log, loaded, notes) = reopen(&path);
        assert_eq!(notes.dropped_tail, 0);
        assert_eq!(loaded.clock, delta.clock);
        assert_eq!(loaded.families.len(), 2);
        assert_eq!(loaded.items.len(), 3);
        assert!(loaded.items.contains(&(
            "registrar".into(),
            ItemId::unique(Eid([9; 6]), "k"),
            entry(11, None)
        )));
        assert!(loaded.items.contains(&(
            "blacklist".into(),
            ItemId::global("c"),
            entry(12, Some(""))
        )));
        assert_eq!(loaded.peers, delta.peers);
        assert_eq!(
            loaded.applies_unconfirmed,
            vec![("blacklist".into(), ItemId::global("a/b"))]
        );

        let g = ItemId::global("a/b");
        log.write(&PersistDelta {
            clock: Hlc::from_parts(1, 0),
            items: vec![ItemDelta::new("blacklist", &g, None)],
            applies_confirmed: vec![ItemRef::new("blacklist", &g)].into(),
            ..PersistDelta::default()
        })
        .unwrap();
        let loaded = log.load().unwrap();
        assert_eq!(loaded.items.len(), 2, "a forgotten item is gone");
        assert!(loaded.applies_unconfirmed.is_empty());
        assert_eq!(loaded.clock, delta.clock, "the clock never moves back");
    }

    #[test]
    fn a_partly_confirmed_batch_keeps_the_rest_pending() {
        let (_dir, path) = temp_log();
        let (mut log, _, _) = reopen(&path);
        let (a, b) = (ItemId::global("a"), ItemId::global("b"));
        log.write(&PersistDelta {
            families: vec![family("f", Mode::Global)],
            applies_started: vec![ItemRef::new("f", &a), ItemRef::new("f", &b)].into(),
            ..PersistDelta::default()
        })
        .unwrap();
        log.write(&PersistDelta {
            applies_confirmed: vec![ItemRef::new("f", &a)].into(),
            ..PersistDelta::default()
        })
        .unwrap();
        assert_eq!(
            log.load().unwrap().applies_unconfirmed,
            vec![("f".into(), b.clone())]
        );
        log.write(&PersistDelta {
            applies_confirmed: vec![ItemRef::new("f", &b)].into(),
            ..PersistDelta::default()
        })
        .unwrap();
        assert!(log.load().unwrap().applies_unconfirmed.is_empty());
    }

    #[test]
    fn a_mode_change_forgets_the_family_items() {
        let (_dir, path) = temp_log();
        let (mut log, _, _) = reopen(&path);
        log.write(&PersistDelta {
            families: vec![family("f", Mode::Global), family("g", Mode::Global)],
            items: vec![
                ItemDelta::new("f", &ItemId::global("k"), Some(&entry(1, Some("v")))),
                ItemDelta::new("g", &ItemId::global("k"), Some(&entry(1, Some("v")))),
            ],
            applies_started: vec![ItemRef::new("f", &ItemId::global("k"))].into(),
            ..PersistDelta::default()
        })
        .unwrap();
        log.write(&PersistDelta {
            reset_families: vec!["f".into()],
            families: vec![family("f", Mode::Unique)],
            ..PersistDelta::default()
        })
        .unwrap();
        let loaded = sorted(log.load().unwrap());
        assert_eq!(loaded.items.len(), 1);
        assert_eq!(loaded.items[0].0, "g", "the other family keeps its items");
        assert!(loaded.applies_unconfirmed.is_empty());
        assert_eq!(loaded.families[0].mode, Mode::Unique);
    }

    #[test]
    fn an_interrupted_write_at_the_end_is_cut_off_and_what_came_before_loads() {
        let (_dir, path) = temp_log();
        let (mut log, _, _) = reopen(&path);
        log.write(&sample_delta()).unwrap();
        let good = log.len();
        let expected = sorted(log.load().unwrap());
        // Half of a second record, as a crash in the middle of a write leaves it.
        let mut record = Vec::new();
        let d = sample_delta();
        encode_delta(&mut record, &d);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&record[..record.len() / 2]).unwrap();
        drop((f, log));

        let (mut log, loaded, notes) = reopen(&path);
        assert_eq!(sorted(loaded), expected);
        assert_eq!(notes.dropped_tail, (record.len() / 2) as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        // Later records go where the torn one was, and load.
        log.write(&PersistDelta {
            clock: Hlc::from_parts(900, 0),
            ..PersistDelta::default()
        })
        .unwrap();
        drop(log);
        let (_, loaded, notes) = reopen(&path);
        assert_eq!(notes.dropped_tail, 0);
        assert_eq!(loaded.clock, Hlc::from_parts(900, 0));
        assert_eq!(loaded.items.len(), 3);
    }

    #[test]
    fn a_delta_of_many_items_is_written_in_several_records_that_load_as_one() {
        let (_dir, path) = temp_log();
        let (mut log, _, _) = reopen(&path);
        let d = sample_with_bulk(2 * RECORD_ITEMS + 5);
        log.write(&d).unwrap();
        drop(log);
        let (_, loaded, _) = reopen(&path);
        assert_eq!(loaded.items.len(), 3 + 2 * RECORD_ITEMS + 5);
        assert_eq!(loaded.families.len(), 2);
        assert_eq!(loaded.peers, d.peers);
        assert_eq!(loaded.applies_unconfirmed.len(), 1);
    }

    #[test]
    fn a_compaction_of_more_items_than_one_record_holds_keeps_them_all() {
        let (_dir, path) = temp_log();
        let (mut log, _, _) = reopen(&path);
        let d = sample_with_bulk(RECORD_ITEMS + 10);
        log.write(&d).unwrap();
        let state = log.load().unwrap();
        log.replace_with(&state).unwrap();
        drop(log);
        let (log, loaded, _) = reopen(&path);
        assert_eq!(sorted(loaded), sorted(state));
        assert!(!log.wants_compaction());
    }

    #[test]
    fn a_damaged_record_ends_the_log_there() {
        let (_dir, path) = temp_log();
        let (mut log, _, _) = reopen(&path);
        log.write(&sample_delta()).unwrap();
        let first = log.len();
        log.write(&one_item("late", 20, "y")).unwrap();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (log, loaded, notes) = reopen(&path);
        assert_eq!(loaded.items.len(), 3, "the damaged record is not applied");
        assert_eq!(notes.dropped_tail, bytes.len() as u64 - first);
        assert_eq!(log.len(), first);
    }

    #[test]
    fn a_file_that_is_not_a_replica_log_is_set_aside_untouched() {
        let (_dir, path) = temp_log();
        std::fs::write(&path, b"this is not a log, it is a shopping list").unwrap();
        let (mut log, loaded, notes) = reopen(&path);
        assert_eq!(loaded, RestoredState::default());
        let (aside, why) = notes.set_aside.expect("reported");
        assert!(why.contains("not a replica log"), "{why}");
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            b"this is not a log, it is a shopping list"
        );
        log.write(&sample_delta()).unwrap();
        assert_eq!(log.load().unwrap().items.len(), 3);
    }

    #[test]
    fn a_log_of_a_newer_format_is_refused_naming_both_formats_and_left_untouched() {
        let (dir, path) = temp_log();
        let (mut log, _, _) = reopen(&path);
        log.write(&sample_delta()).unwrap();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(
            bytes[8..12],
            FORMAT.to_le_bytes(),
            "the header carries FORMAT"
        );
        bytes[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        // A later build's compaction in progress is its business too.
        std::fs::write(side_path(&path, ".new"), b"ADBCRLOG later").unwrap();
        let e = ReplicaLog::open(&path).err().expect("refused");
        let why = e.to_string();
        assert!(
            why.contains(&format!("log format {}", FORMAT + 1))
                && why.contains(&format!("this build reads format {FORMAT}")),
            "{why}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "not a byte changed");
        assert!(side_path(&path, ".new").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "nothing set aside: {names:?}");
        // Refusing let go of the lock: with the format put back, it opens.
        bytes[8..12].copy_from_slice(&FORMAT.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let (_, loaded, notes) = reopen(&path);
        assert_eq!(loaded.items.len(), 3);
        assert!(notes.set_aside.is_none());
    }

    #[test]
    fn a_compacted_log_is_smaller_and_holds_the_same_state() {
        let (_dir, path) = temp_log();
        let (mut log, _, _) = reopen(&path);
        log.set_compaction_floor(1024);
        log.write(&sample_delta()).unwrap();
        // The same keys written over and over: the log grows, the state does not.
        for round in 0..200u64 {
            log.write(&PersistDelta {
                clock: Hlc::from_parts(1000 + round, 0),
                items: (0..10)
                    .map(|k| {
                        ItemDelta::new(
                            "blacklist",
                            &ItemId::global(&format!("key{k}")),
                            Some(&entry(1000 + round, Some(&format!("value {round}")))),
                        )
                    })
                    .collect(),
                ..PersistDelta::default()
            })
            .unwrap();
        }
        assert!(log.wants_compaction());
        let before = log.len();
        let state = log.load().unwrap();
        log.replace_with(&state).unwrap();
        assert!(!log.wants_compaction());
        assert!(log.len() * 10 < before, "{} then {}", before, log.len());
        assert!(!side_path(&path, ".new").exists());
        // Writes after the compaction land in the new file.
        log.write(&one_item("after", 5000, "z")).unwrap();
        drop(log);
        let (_, loaded, _) = reopen(&path);
        let mut expected = state;
        expected.items.push((
            "blacklist".into(),
            ItemId::global("after"),
            entry(5000, Some("z")),
        ));
        assert_eq!(sorted(loaded), sorted(expected));
    }

    #[test]
    fn a_compaction_left_unfinished_by_a_crash_is_ignored() {
        let (_dir, path) = temp_log();
        let (mut log, _, _) = reopen(&path);
        log.write(&sample_delta()).unwrap();
        drop(log);
        std::fs::write(side_path(&path, ".new"), b"ADBCRLOG half a snapshot").unwrap();
        let (_, loaded, _) = reopen(&path);
        assert_eq!(loaded.items.len(), 3);
        assert!(!side_path(&path, ".new").exists());
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_has_the_log_open() {
        let (_dir, path) = temp_log();
        let (log, _, _) = reopen(&path);
        let second = ReplicaLog::open(&path).err().expect("refused");
        assert!(
            second.to_string().contains("in use by another process"),
            "{second}"
        );
        drop(log);
        assert!(
            ReplicaLog::open(&path).is_ok(),
            "free once the first closes it"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Whatever damage a file suffers, opening it neither panics nor invents state:
        /// it loads as some prefix of the records written.
        #[test]
        fn a_damaged_log_loads_as_a_prefix_of_what_was_written(
            flips in proptest::collection::vec((0usize..4096, 0u8..=255), 0..4),
            cut in proptest::option::of(0usize..4096),
            garbage in proptest::collection::vec(0u8..=255, 0..64),
        ) {
            let (_dir, path) = temp_log();
            let (mut log, _, _) = reopen(&path);
            let mut states = vec![sorted(log.load().unwrap())];
            for round in 0..6u64 {
                let mut d = sample_delta();
                d.clock = Hlc::from_parts(600 + round, 0);
                d.items.push(ItemDelta::new(
                    "blacklist",
                    &ItemId::global(&format!("r{round}")),
                    Some(&entry(30 + round, Some("v"))),
                ));
                log.write(&d).unwrap();
                states.push(sorted(log.load().unwrap()));
            }
            drop(log);
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, x) in &flips {
                let at = HEADER_LEN as usize + at % (bytes.len() - HEADER_LEN as usize);
                bytes[at] ^= x | 1;
            }
            if let Some(c) = cut {
                bytes.truncate((HEADER_LEN as usize + c).min(bytes.len()));
            }
            bytes.extend_from_slice(&garbage);
            std::fs::write(&path, &bytes).unwrap();
            let (_, loaded, _) = reopen(&path);
            let loaded = sorted(loaded);
            proptest::prop_assert!(states.contains(&loaded), "loaded a state never written");
        }
    }
}
