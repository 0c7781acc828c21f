//! AstDB through Asterisk's own API: the module never opens astdb.sqlite3 itself.

use std::borrow::Cow;
use std::ffi::{c_char, CStr};

use super::{c_string, sys};
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

/// Writes `/family/key` = `value`. The three C strings are built in `scratch`, one
/// buffer reused for every write instead of three allocations each.
fn put_with(scratch: &mut Vec<u8>, family: &str, key: &str, value: &str) -> Result<(), String> {
    scratch.clear();
    let mut starts = [0usize; 3];
    for (i, s) in [family, key, value].into_iter().enumerate() {
        starts[i] = scratch.len();
        // Like c_string: an interior NUL (never valid in AstDB text) ends the string.
        let end = s.find('\0').unwrap_or(s.len());
        scratch.extend_from_slice(&s.as_bytes()[..end]);
        scratch.push(0);
    }
    let at = |i: usize| scratch[starts[i]..].as_ptr().cast::<c_char>();
    // SAFETY: each pointer is to a NUL-terminated string inside `scratch`, which is not
    // touched again until the call returns.
    match unsafe { sys::ast_db_put(at(0), at(1), at(2)) } {
        0 => Ok(()),
        _ => Err(format!("AstDB refused to store /{family}/{key}")),
    }
}

/// The value of `/family/key`, if it exists.
pub fn get(family: &str, key: &str) -> Option<String> {
    let (f, k) = (c_string(family), c_string(key));
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
    let f = c_string(family);
    // SAFETY: a plain call; the list returned is owned by the Tree.
    let head = unsafe { sys::ast_db_gettree_by_prefix(f.as_ptr(), c"".as_ptr()) };
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

/// AstDB through Asterisk's API, as the module's loop uses it.
#[derive(Default)]
pub struct AsteriskDb {
    /// One buffer for the C strings of every write.
    scratch: Vec<u8>,
}

impl AstDb for AsteriskDb {
    fn read(&mut self, family: &str) -> Box<dyn Rows + '_> {
        Box::new(read_tree(family))
    }

    fn put(&mut self, family: &str, key: &str, value: &str) -> Result<(), String> {
        put_with(&mut self.scratch, family, key, value)
    }

    fn del(&mut self, family: &str, key: &str) -> bool {
        del(family, key)
    }

    fn committed_stamp(&mut self) -> Option<(u32, u64)> {
        committed_stamp()
    }
}
