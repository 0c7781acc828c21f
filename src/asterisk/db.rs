//! AstDB through Asterisk's own API: the module never opens astdb.sqlite3 itself.

use std::ffi::c_char;

use super::{c_string, owned, sys};

/// Reads `/family/key`.
pub fn get(family: &str, key: &str) -> Option<String> {
    let (family, key) = (c_string(family), c_string(key));
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: Asterisk allocates `out` on success; we copy it and free it with ast_free.
    unsafe {
        if sys::ast_db_get_allocated(family.as_ptr(), key.as_ptr(), &mut out) != 0 {
            return None;
        }
        let value = owned(out);
        sys::astdb_cluster_free(out.cast());
        value
    }
}

/// Writes `/family/key` = `value`.
pub fn put(family: &str, key: &str, value: &str) -> Result<(), String> {
    let (f, k, v) = (c_string(family), c_string(key), c_string(value));
    // SAFETY: the strings outlive the call.
    match unsafe { sys::ast_db_put(f.as_ptr(), k.as_ptr(), v.as_ptr()) } {
        0 => Ok(()),
        _ => Err(format!("AstDB refused to store /{family}/{key}")),
    }
}

/// Deletes `/family/key`; false when it did not exist.
pub fn del(family: &str, key: &str) -> bool {
    let (f, k) = (c_string(family), c_string(key));
    // SAFETY: the strings outlive the call.
    unsafe { sys::ast_db_del2(f.as_ptr(), k.as_ptr()) == 0 }
}

/// Every `(key below family, value)` in `family`'s subtree.
pub fn tree(family: &str) -> Vec<(String, String)> {
    let f = c_string(family);
    let prefix = format!("/{family}/");
    let mut rows = Vec::new();
    // SAFETY: we walk the list Asterisk returns, copy each row and free the list.
    unsafe {
        let head = sys::ast_db_gettree(f.as_ptr(), std::ptr::null());
        let mut entry = head;
        while !entry.is_null() {
            let key = owned((*entry).key).unwrap_or_default();
            let value = owned((*entry).data.as_ptr()).unwrap_or_default();
            if let Some(below) = key.strip_prefix(&prefix) {
                rows.push((below.to_string(), value));
            }
            entry = (*entry).next;
        }
        if !head.is_null() {
            sys::ast_db_freetree(head);
        }
    }
    rows
}
