//! AstDB through Asterisk's own API: the module never opens astdb.sqlite3 itself.

use std::borrow::Cow;
use std::ffi::{c_char, CStr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{c_bytes, c_string, sys};
use crate::node::db::{AstDb, Rows};

/// A stamp of AstDB's committed state: the SQLite file change counter of
/// `astdb.sqlite3` (bytes 24..28 of its header, which SQLite increments at every
/// commit in the rollback-journal mode Asterisk uses) and the file's length.
///
/// Equal stamps at two moments mean nothing was committed in between. Asterisk
/// keeps a transaction open and commits about once a second, so a write made after
/// a read shows in the stamp within about a second. Read without any lock (SQLite's
/// locks are not taken, so Asterisk is never made to wait): a torn read can only
/// look like a change. `None` (no file, a WAL file beside it, an error) means
/// "assume changed".
pub fn committed_stamp() -> Option<(u32, u64)> {
    use std::os::unix::fs::FileExt;
    let path = super::astdb_file()?;
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    if std::path::Path::new(&wal).exists() {
        return None;
    }
    let file = std::fs::File::open(&path).ok()?;
    let mut counter = [0u8; 4];
    file.read_exact_at(&mut counter, 24).ok()?;
    let len = file.metadata().ok()?.len();
    Some((u32::from_be_bytes(counter), len))
}

/// Appends `strings` to `buf` as C strings; where each starts.
fn push_c_strings<const N: usize>(buf: &mut Vec<u8>, strings: [&str; N]) -> [usize; N] {
    let mut starts = [0usize; N];
    for (i, s) in strings.into_iter().enumerate() {
        starts[i] = buf.len();
        // Like c_string: an interior NUL (never valid in AstDB text) ends the string.
        let end = s.find('\0').unwrap_or(s.len());
        buf.extend_from_slice(&s.as_bytes()[..end]);
        buf.push(0);
    }
    starts
}

/// The C string at `start` of `buf`, as Rust text (for a message).
fn text_at(buf: &[u8], start: usize) -> Cow<'_, str> {
    let end = buf[start..]
        .iter()
        .position(|&b| b == 0)
        .map_or(buf.len(), |n| start + n);
    String::from_utf8_lossy(&buf[start..end])
}

/// ast_db_put of the C strings at `starts` (family, key, value) of `buf`.
fn put_at(buf: &[u8], starts: [usize; 3]) -> Result<(), String> {
    let at = |i: usize| buf[starts[i]..].as_ptr().cast::<c_char>();
    // SAFETY: each pointer is to a NUL-terminated string inside `buf`, which is not
    // touched until the call returns.
    match unsafe { sys::ast_db_put(at(0), at(1), at(2)) } {
        0 => Ok(()),
        _ => Err(format!(
            "AstDB refused to store /{}/{}",
            text_at(buf, starts[0]),
            text_at(buf, starts[1])
        )),
    }
}

/// Writes `/family/key` = `value`. The three C strings are built in `scratch`, one
/// buffer reused for every write instead of three allocations each.
fn put_with(scratch: &mut Vec<u8>, family: &str, key: &str, value: &str) -> Result<(), String> {
    scratch.clear();
    let starts = push_c_strings(scratch, [family, key, value]);
    put_at(scratch, starts)
}

/// Deletes the C strings at `starts` (family, key) of `buf`, if it exists.
fn del_at(buf: &[u8], starts: [usize; 2]) {
    let at = |i: usize| buf[starts[i]..].as_ptr().cast::<c_char>();
    // SAFETY: NUL-terminated strings inside `buf`, untouched until the calls return.
    unsafe {
        if sys::ast_db_exists(at(0), at(1)) == 1 {
            sys::ast_db_del(at(0), at(1));
        }
    }
}

/// The value of `/family/key`, if it exists.
pub fn get(family: &str, key: &str) -> Option<String> {
    get_bytes(family, key.as_bytes())
}

/// The value of the key of `family` that is exactly the bytes `key` (not always UTF-8:
/// a piece of a family's read may end inside a character), if it exists.
fn get_bytes(family: &str, key: &[u8]) -> Option<String> {
    let (f, k) = (c_string(family), c_bytes(key));
    // SAFETY: the strings outlive the call; the value returned is Asterisk's to free,
    // copied then freed once here.
    unsafe {
        let value = sys::astdb_cluster_db_get(f.as_ptr(), k.as_ptr());
        let copy = super::owned(value);
        if !value.is_null() {
            sys::astdb_cluster_free(value.cast());
        }
        copy
    }
}

/// Deletes `/family/key`; false when it did not exist. (Not `ast_db_del2`, which logs
/// a WARNING for a missing key: a deletion arriving for a key this server never had,
/// a new node's catch-up say, is no fault.)
pub fn del(family: &str, key: &str) -> bool {
    let (f, k) = (c_string(family), c_string(key));
    // SAFETY: the strings outlive the calls.
    unsafe {
        sys::ast_db_exists(f.as_ptr(), k.as_ptr()) == 1
            && sys::ast_db_del(f.as_ptr(), k.as_ptr()) == 0
    }
}

/// `family`'s subtree as AstDB returned it, freed on drop. Its rows are read in place:
/// a read that turns out to hold nothing new copies nothing.
pub struct Tree {
    head: *mut sys::ast_db_entry,
    prefix: String,
}

impl Tree {
    /// Every `(key below family, value)` row, in AstDB's order (ascending keys).
    pub fn rows(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> + '_ {
        let mut entry = self.head;
        std::iter::from_fn(move || {
            while !entry.is_null() {
                // SAFETY: the list stays allocated until `self` is dropped, and each
                // entry's key and data are NUL-terminated strings Asterisk wrote.
                let (key, value) = unsafe {
                    let e = &*entry;
                    entry = e.next;
                    (
                        CStr::from_ptr(e.key).to_string_lossy(),
                        CStr::from_ptr(e.data.as_ptr()).to_string_lossy(),
                    )
                };
                let below = match key {
                    Cow::Borrowed(k) => k.strip_prefix(&self.prefix).map(Cow::Borrowed),
                    Cow::Owned(k) => k.strip_prefix(&self.prefix).map(|b| Cow::Owned(b.into())),
                };
                if let Some(below) = below {
                    return Some((below, value));
                }
            }
            None
        })
    }

    /// The rows, copied.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.rows()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !self.head.is_null() {
            // SAFETY: the list came from ast_db_gettree and is freed once.
            unsafe { sys::ast_db_freetree(self.head) };
        }
    }
}

/// Reads `family`'s subtree.
///
/// Through `ast_db_gettree_by_prefix`, a range scan of AstDB's key index, rather than
/// `ast_db_gettree`, whose `LIKE` makes SQLite look at every key of every family. The
/// range also holds families whose names merely begin with this one's (`/family2/`):
/// [`Tree::rows`] leaves them out.
pub fn read_tree(family: &str) -> Tree {
    read_tree_under(family, b"")
}

/// The rows of `family` whose keys begin with the bytes `prefix` and are longer (the
/// key equal to it is left out by AstDB), as [`read_tree`] reads them.
fn read_tree_under(family: &str, prefix: &[u8]) -> Tree {
    let (f, p) = (c_string(family), c_bytes(prefix));
    // SAFETY: a plain call; the list returned is owned by the Tree.
    let head = unsafe { sys::ast_db_gettree_by_prefix(f.as_ptr(), p.as_ptr()) };
    Tree {
        head,
        prefix: format!("/{family}/"),
    }
}

impl Rows for Tree {
    fn each(&self, visit: &mut dyn FnMut(&str, &str)) {
        for (key, value) in self.rows() {
            visit(&key, &value);
        }
    }

    fn to_vec(&self) -> Vec<(String, String)> {
        Tree::to_vec(self)
    }
}

/// Writes and deletions handed to the writer thread: their C strings in one buffer.
#[derive(Default)]
struct Ops {
    text: Vec<u8>,
    /// Per op, where its strings start; a deletion has no value (usize::MAX).
    ops: Vec<[usize; 3]>,
}

impl Ops {
    fn len(&self) -> usize {
        self.ops.len()
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn clear(&mut self) {
        self.text.clear();
        self.ops.clear();
    }

    fn put(&mut self, family: &str, key: &str, value: &str) {
        let starts = push_c_strings(&mut self.text, [family, key, value]);
        self.ops.push(starts);
    }

    fn del(&mut self, family: &str, key: &str) {
        let [f, k] = push_c_strings(&mut self.text, [family, key]);
        self.ops.push([f, k, usize::MAX]);
    }

    /// Moves `other`'s ops after these.
    fn append(&mut self, other: &mut Ops) {
        let base = self.text.len();
        self.text.append(&mut other.text);
        self.ops.extend(other.ops.drain(..).map(|[f, k, v]| {
            [
                f + base,
                k + base,
                if v == usize::MAX { v } else { v + base },
            ]
        }));
    }

    /// Executes them in order; the errors.
    fn run(&self, errors: &mut Vec<String>) {
        for &[f, k, v] in &self.ops {
            if v == usize::MAX {
                del_at(&self.text, [f, k]);
            } else if let Err(why) = put_at(&self.text, [f, k, v]) {
                errors.push(why);
            }
        }
    }
}

/// What the loop and the writer thread share.
#[derive(Default)]
struct PipeState {
    /// Handed over, not yet taken by the writer.
    queue: Ops,
    /// The writer is executing ops it took.
    busy: bool,
    stop: bool,
    /// Errors of executed ops, not yet told.
    errors: Vec<String>,
    /// How many ops handed over the writer has executed.
    done: u64,
    /// An emptied buffer the writer gives back, for the loop's next ops.
    spare: Option<Ops>,
}

#[derive(Default)]
struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, PipeState>) -> MutexGuard<'a, PipeState> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// The writer thread: executes what is handed over, in order, until stopped with
    /// nothing left.
    fn write_loop(&self) {
        let mut taken = Ops::default();
        let mut errors = Vec::new();
        loop {
            {
                let mut st = self.lock();
                st.busy = false;
                st.errors.append(&mut errors);
                st.done += taken.len() as u64;
                if !taken.is_empty() || taken.text.capacity() > 0 {
                    taken.clear();
                    if st.spare.is_none() {
                        st.spare = Some(std::mem::take(&mut taken));
                    }
                }
                self.changed.notify_all();
                while st.queue.is_empty() && !st.stop {
                    st = self.wait(st);
                }
                if st.queue.is_empty() {
                    return;
                }
                std::mem::swap(&mut taken, &mut st.queue);
                st.busy = true;
            }
            taken.run(&mut errors);
        }
    }
}

/// Writes handed over at once (a batch of outputs is mostly a few thousand).
const HAND_OVER: usize = 1024;
/// The most ops waiting for the writer before the loop waits for it.
const MAX_QUEUED: usize = 65_536;

/// AstDB through Asterisk's API, as the module's loop uses it. Writes and deletions
/// of replicated changes run on a writer thread of their own, in order, while the loop
/// merges what comes next; anything that reads AstDB, and [`AstDb::settle`] (before
/// the replica log confirms an apply), first waits until they are all done.
#[derive(Default)]
pub struct AsteriskDb {
    /// One buffer for the C strings of every write made here.
    scratch: Vec<u8>,
    /// Ops not yet handed over.
    pending: Ops,
    pipe: Arc<Pipe>,
    writer: Option<super::thread::OwnedThread>,
    /// The writer thread could not be started: writes are made here.
    no_writer: bool,
    /// How many ops were handed to the writer so far, and that count at the last two
    /// [`AstDb::applies_made`] calls (the older first).
    handed: u64,
    made: [u64; 2],
}

impl AsteriskDb {
    /// Hands the pending ops to the writer thread (started at the first). Fewer than
    /// [`HAND_OVER`] while the writer is idle are written here and now, as before there
    /// was a writer: a single replicated update reaches AstDB without a thread's wake-up,
    /// and a dialplan write racing it on the same key has no wider window than that.
    fn hand_over(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let idle = || {
            let st = self.pipe.lock();
            st.queue.is_empty() && !st.busy
        };
        if self.pending.len() < HAND_OVER && idle() {
            let mut errors = Vec::new();
            self.pending.run(&mut errors);
            self.pending.clear();
            if !errors.is_empty() {
                self.pipe.lock().errors.append(&mut errors);
            }
            return;
        }
        if self.writer.is_none() && !self.no_writer {
            let pipe = Arc::clone(&self.pipe);
            match super::thread::spawn("astdb-cl-dbw", move || pipe.write_loop()) {
                Ok(t) => self.writer = Some(t),
                Err(why) => {
                    crate::error!("{why}; AstDB is written by the module's thread");
                    self.no_writer = true;
                }
            }
        }
        if self.writer.is_none() {
            let mut errors = Vec::new();
            self.pending.run(&mut errors);
            self.pending.clear();
            self.pipe.lock().errors.append(&mut errors);
            return;
        }
        let mut st = self.pipe.lock();
        while st.queue.len() >= MAX_QUEUED {
            st = self.pipe.wait(st);
        }
        self.handed += self.pending.len() as u64;
        if st.queue.is_empty() {
            std::mem::swap(&mut st.queue, &mut self.pending);
            if let Some(spare) = st.spare.take() {
                self.pending = spare;
            }
        } else {
            st.queue.append(&mut self.pending);
        }
        drop(st);
        self.pipe.changed.notify_all();
    }

    fn queued(&mut self) {
        if self.pending.len() >= HAND_OVER {
            self.hand_over();
        }
    }

    /// Waits until every op handed over or pending is done; their errors.
    fn drain(&mut self) -> Vec<String> {
        self.hand_over();
        let mut st = self.pipe.lock();
        while !st.queue.is_empty() || st.busy {
            st = self.pipe.wait(st);
        }
        std::mem::take(&mut st.errors)
    }
}

impl Drop for AsteriskDb {
    fn drop(&mut self) {
        for why in self.drain() {
            crate::error!("{why}");
        }
        self.pipe.lock().stop = true;
        self.pipe.changed.notify_all();
        if let Some(t) = self.writer.take() {
            t.join();
        }
    }
}

impl AstDb for AsteriskDb {
    fn read(&mut self, family: &str) -> Box<dyn Rows + '_> {
        for why in self.drain() {
            crate::error!("{why}");
        }
        Box::new(read_tree(family))
    }

    fn read_under(&mut self, family: &str, prefix: &[u8]) -> Box<dyn Rows + '_> {
        for why in self.drain() {
            crate::error!("{why}");
        }
        Box::new(read_tree_under(family, prefix))
    }

    fn read_exact(&mut self, family: &str, key: &[u8]) -> Option<String> {
        for why in self.drain() {
            crate::error!("{why}");
        }
        get_bytes(family, key)
    }

    fn put(&mut self, family: &str, key: &str, value: &str) -> Result<(), String> {
        for why in self.drain() {
            crate::error!("{why}");
        }
        put_with(&mut self.scratch, family, key, value)
    }

    fn del(&mut self, family: &str, key: &str) -> bool {
        for why in self.drain() {
            crate::error!("{why}");
        }
        del(family, key)
    }

    fn apply_put(&mut self, family: &str, key: &str, value: &str) -> Result<(), String> {
        self.pending.put(family, key, value);
        self.queued();
        Ok(())
    }

    fn apply_del(&mut self, family: &str, key: &str) {
        self.pending.del(family, key);
        self.queued();
    }

    fn applies_made(&mut self) {
        self.hand_over();
        self.made = [self.made[1], self.handed];
    }

    fn settle(&mut self) -> Vec<String> {
        self.drain()
    }

    fn settle_before_last(&mut self) -> Vec<String> {
        self.hand_over();
        let mut st = self.pipe.lock();
        while st.done < self.made[0] {
            st = self.pipe.wait(st);
        }
        std::mem::take(&mut st.errors)
    }

    fn committed_stamp(&mut self) -> Option<(u32, u64)> {
        for why in self.drain() {
            crate::error!("{why}");
        }
        committed_stamp()
    }
}
