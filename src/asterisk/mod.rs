//! The Asterisk side of the border: raw bindings and the C glue live here, and
//! everything that leaves this module is an owned Rust value. Nothing outside
//! this folder touches a raw pointer.

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unnecessary_transmutes,
    clippy::all
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub(crate) mod ami;
pub mod config;
pub(crate) mod cpu;
pub mod db;
mod entry;
pub mod events;
pub mod log;
pub mod sip;
pub mod thread;

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;

use crate::eid::Eid;

/// Copies a C string from Asterisk into an owned `String` (lossy on bad UTF-8).
///
/// # Safety
/// `ptr` is NULL or points at a NUL-terminated string alive for the call.
pub(crate) unsafe fn owned(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        None
    } else {
        Some(CStr::from_ptr(ptr).to_string_lossy().into_owned())
    }
}

/// Hands the heap's free pages back to the system (glibc's `malloc_trim`; elsewhere
/// nothing). After a large read or catch-up the allocator otherwise keeps the pages its
/// transient buffers used, and the process stays that much larger.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: a plain call with no pointers; glibc serialises it with the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A C string for Asterisk; interior NULs (never valid in AstDB or config text) are cut.
pub(crate) fn c_string(s: &str) -> CString {
    c_bytes(s.as_bytes())
}

/// `bytes` as a C string, cut at a NUL as [`c_string`] is.
pub(crate) fn c_bytes(bytes: &[u8]) -> CString {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).unwrap_or_default()
}

/// This server's entity ID (`entityid` in asterisk.conf).
pub fn local_eid() -> Eid {
    // SAFETY: a plain global that Asterisk sets at start-up and never frees.
    Eid(unsafe { sys::ast_eid_default.eid })
}

/// The AstDB directory: our metadata file lives beside astdb.sqlite3.
pub fn astdb_dir() -> PathBuf {
    // SAFETY: set by Asterisk at start-up, valid for the process's life.
    let db = unsafe { owned(sys::ast_config_AST_DB) }.unwrap_or_else(|| "astdb".into());
    PathBuf::from(db)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// AstDB's SQLite file, `<astdb>.sqlite3` (Asterisk's own naming), if Asterisk
/// has set its path.
pub fn astdb_file() -> Option<PathBuf> {
    // SAFETY: set by Asterisk at start-up, valid for the process's life.
    let db = unsafe { owned(sys::ast_config_AST_DB) }?;
    Some(PathBuf::from(format!("{db}.sqlite3")))
}

/// Which headers this build used: "installed" or "bundled".
pub fn headers() -> String {
    // SAFETY: returns a static string.
    unsafe { owned(sys::astdb_cluster_headers()) }.unwrap_or_default()
}

/// Writes CLI output to the console or remote console `fd`.
pub fn cli_write(fd: i32, text: &str) {
    let text = c_string(text);
    // SAFETY: the glue passes it to ast_cli with a "%s" format.
    unsafe { sys::astdb_cluster_cli_write(fd, text.as_ptr()) }
}

/// Offers one tab-completion candidate to the CLI.
pub fn cli_complete_offer(candidate: &str) {
    let candidate = c_string(candidate);
    // SAFETY: the glue copies it with Asterisk's allocator before handing it over.
    unsafe { sys::astdb_cluster_cli_completion_add(candidate.as_ptr()) };
}

/// Registers the dialplan functions and CLI commands.
pub(crate) fn register_interfaces() -> Result<(), String> {
    // SAFETY: the glue's static records are registered once per load.
    if unsafe { sys::astdb_cluster_register_functions() } != 0 {
        return Err("could not register DB_SHARED / DB_SHARED_EXISTS (already registered by another module?)".into());
    }
    // SAFETY: as above.
    if unsafe { sys::astdb_cluster_register_cli() } != 0 {
        // SAFETY: undoing the registration just made.
        unsafe { sys::astdb_cluster_unregister_functions() };
        return Err("could not register the CLI commands".into());
    }
    // SAFETY: as above.
    if unsafe { sys::astdb_cluster_register_ami() } != 0 {
        // SAFETY: undoing the registrations just made.
        unsafe {
            sys::astdb_cluster_unregister_cli();
            sys::astdb_cluster_unregister_functions();
        }
        return Err(
            "could not register the AMI actions (already registered by another module?)".into(),
        );
    }
    Ok(())
}

pub(crate) fn unregister_interfaces() {
    // SAFETY: unregistering what register_interfaces registered; Asterisk waits
    // for handlers in progress.
    unsafe {
        sys::astdb_cluster_unregister_ami();
        sys::astdb_cluster_unregister_cli();
        sys::astdb_cluster_unregister_functions();
    }
}

/// Local time as `YYYY-MM-DD HH:MM:SS`.
pub fn local_time(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as libc::time_t;
    // SAFETY: localtime_r fills the zeroed struct we own.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Which dialplan write paths are seen at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    pub db_write: bool,
    pub db_delete: bool,
}

/// Wraps DB()/DB_DELETE() so dialplan writes are reported at once (nothing is
/// wrapped while func_db is not loaded). Idempotent.
pub(crate) fn capture_hook() -> Capture {
    // SAFETY: the glue swaps function pointers in func_db's registered records.
    let mask = unsafe { sys::astdb_cluster_capture_hook() } as u32;
    Capture {
        db_write: mask & sys::ASTDB_CLUSTER_CAPTURE_DB != 0,
        db_delete: mask & sys::ASTDB_CLUSTER_CAPTURE_DB_DELETE_READ != 0,
    }
}

/// Restores func_db's callbacks; returns after calls in progress have left.
pub(crate) fn capture_unhook() {
    // SAFETY: restores what capture_hook swapped.
    unsafe { sys::astdb_cluster_capture_unhook() }
}

/// The library's own unit tests run without Asterisk and never call it, but an
/// unoptimised test build keeps the wrappers that would; these stand in for the
/// symbols only Asterisk and the glue provide, so that the test binary links. They
/// are in no other build.
#[cfg(test)]
mod unit_test_links {
    use std::ffi::{c_char, c_void};

    #[no_mangle]
    extern "C" fn astdb_cluster_headers() -> *const c_char {
        c"unit tests".as_ptr()
    }
    #[no_mangle]
    extern "C" fn astdb_cluster_db_get(_family: *const c_char, _key: *const c_char) -> *mut c_char {
        std::ptr::null_mut()
    }
    #[no_mangle]
    extern "C" fn astdb_cluster_free(_ptr: *mut c_void) {}
    #[no_mangle]
    extern "C" fn ast_db_gettree_by_prefix(
        _family: *const c_char,
        _key_prefix: *const c_char,
    ) -> *mut c_void {
        std::ptr::null_mut()
    }
    #[no_mangle]
    extern "C" fn ast_db_freetree(_entry: *mut c_void) {}
}
