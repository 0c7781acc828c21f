//! Every function Asterisk calls into the module. Each one catches panics, so
//! that none crosses back into C, and converts its arguments to owned values.

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::owned;
use crate::module::{self, ami, cli, dialplan};

/// Runs `f`; a panic is logged and turned into `fallback`.
fn guard<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".into());
            crate::error!("internal error in {what}: {why}; the request was not completed");
            fallback
        }
    }
}

#[no_mangle]
pub extern "C" fn astdb_cluster_load() -> c_int {
    guard("module load", 1, module::load)
}

#[no_mangle]
pub extern "C" fn astdb_cluster_unload() -> c_int {
    guard("module unload", -1, module::unload)
}

#[no_mangle]
pub extern "C" fn astdb_cluster_reload() -> c_int {
    guard("module reload", -1, module::reload)
}

#[no_mangle]
pub extern "C" fn astdb_cluster_function_read(
    which: c_int,
    data: *const c_char,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    guard("dialplan function read", -1, || {
        // SAFETY: Asterisk passes a NUL-terminated argument string.
        let data = unsafe { owned(data) }.unwrap_or_default();
        let result = match which {
            0 => dialplan::read_db_shared(&data),
            _ => dialplan::read_db_shared_exists(&data),
        };
        match result {
            Some(text) if !buf.is_null() && len > 0 => {
                let n = text.len().min(len - 1);
                // SAFETY: `buf` holds `len` bytes; we write n < len bytes and a NUL.
                unsafe {
                    std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
                    *buf.add(n) = 0;
                }
                0
            }
            Some(_) => 0,
            None => -1,
        }
    })
}

#[no_mangle]
pub extern "C" fn astdb_cluster_function_write(
    which: c_int,
    data: *const c_char,
    value: *const c_char,
) -> c_int {
    guard("dialplan function write", -1, || {
        // SAFETY: Asterisk passes NUL-terminated strings.
        let (data, value) = unsafe {
            (
                owned(data).unwrap_or_default(),
                owned(value).unwrap_or_default(),
            )
        };
        match which {
            0 => dialplan::write_db_shared(&data, &value),
            _ => -1,
        }
    })
}

#[no_mangle]
pub extern "C" fn astdb_cluster_cli_count() -> c_int {
    cli::COMMANDS.len() as c_int
}

fn static_text(idx: c_int, pick: fn(&cli::Command) -> &'static CStr) -> *const c_char {
    usize::try_from(idx)
        .ok()
        .and_then(|i| cli::COMMANDS.get(i))
        .map_or(std::ptr::null(), |c| pick(c).as_ptr())
}

#[no_mangle]
pub extern "C" fn astdb_cluster_cli_command(idx: c_int) -> *const c_char {
    static_text(idx, |c| c.command)
}

#[no_mangle]
pub extern "C" fn astdb_cluster_cli_summary(idx: c_int) -> *const c_char {
    static_text(idx, |c| c.summary)
}

#[no_mangle]
pub extern "C" fn astdb_cluster_cli_usage(idx: c_int) -> *const c_char {
    static_text(idx, |c| c.usage)
}

/// Copies argv into owned strings.
///
/// # Safety
/// `argv` holds `argc` NUL-terminated strings.
unsafe fn args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    (0..argc.max(0) as usize)
        .map(|i| owned(*argv.add(i)).unwrap_or_default())
        .collect()
}

#[no_mangle]
pub extern "C" fn astdb_cluster_cli_exec(
    idx: c_int,
    fd: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard("CLI command", 2, || {
        // SAFETY: Asterisk passes argc strings in argv.
        let argv = if argv.is_null() {
            Vec::new()
        } else {
            unsafe { args(argc, argv) }
        };
        let mut out = cli::Output::new(fd);
        let result = cli::exec(idx as usize, &argv, &mut out);
        out.flush();
        result as c_int
    })
}

#[no_mangle]
pub extern "C" fn astdb_cluster_cli_complete(
    idx: c_int,
    line: *const c_char,
    word: *const c_char,
    pos: c_int,
) {
    guard("CLI completion", (), || {
        // SAFETY: Asterisk passes NUL-terminated strings.
        let (line, word) = unsafe {
            (
                owned(line).unwrap_or_default(),
                owned(word).unwrap_or_default(),
            )
        };
        for candidate in cli::complete(idx as usize, &line, &word, pos.max(0) as usize) {
            super::cli_complete_offer(&candidate);
        }
    })
}

/// Called by the DB()/DB_DELETE() wrappers on a PBX thread: hand the path to
/// the module's own thread and return. (No thread-locals here: see thread.rs.)
#[no_mangle]
pub extern "C" fn astdb_cluster_db_written(path: *const c_char, value: *const c_char) {
    guard("dialplan write capture", (), || {
        if path.is_null() {
            return;
        }
        // SAFETY: the glue passes a NUL-terminated copy of the function argument
        // and the value written (NULL for a delete), alive for this call.
        let path = unsafe { CStr::from_ptr(path) }.to_string_lossy();
        if !crate::module::capture::wanted(&path) {
            return; // not a shared family: nothing to copy or wake anyone for
        }
        // SAFETY: as above.
        let value = (!value.is_null()).then(|| unsafe { CStr::from_ptr(value) }.to_string_lossy());
        crate::module::capture::dialplan_wrote(&path, value.as_deref());
    })
}

#[no_mangle]
pub extern "C" fn astdb_cluster_ami_count() -> c_int {
    ami::ACTIONS.len() as c_int
}

#[no_mangle]
pub extern "C" fn astdb_cluster_ami_name(idx: c_int) -> *const c_char {
    usize::try_from(idx)
        .ok()
        .and_then(|i| ami::ACTIONS.get(i))
        .map_or(std::ptr::null(), |a| a.name.as_ptr())
}

#[no_mangle]
pub extern "C" fn astdb_cluster_ami_authority(idx: c_int) -> c_int {
    usize::try_from(idx)
        .ok()
        .and_then(|i| ami::ACTIONS.get(i))
        .map_or(0, |a| a.authority)
}

#[no_mangle]
pub extern "C" fn astdb_cluster_ami_exec(
    idx: c_int,
    s: *mut super::sys::mansession,
    m: *const super::sys::message,
) -> c_int {
    guard("AMI action", 0, || {
        let Some(action) = usize::try_from(idx).ok().and_then(|i| ami::ACTIONS.get(i)) else {
            return 0;
        };
        let request = super::ami::AmiRequest { s, m };
        let reply = (action.run)(&request);
        request.send(reply);
        0
    })
}

/// The text form of an event a message carries (see glue.c), made on a Stasis thread.
#[no_mangle]
pub extern "C" fn astdb_cluster_event_render(
    event: *const std::ffi::c_void,
    form: c_int,
) -> *mut c_char {
    guard("event rendering", std::ptr::null_mut(), || {
        if event.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: `event` is the Made that StasisEvents::publish handed over; the message
        // holding it is alive for this call, and it is only read.
        let made = unsafe { &*event.cast::<super::events::Made>() };
        super::c_string(&made.render(form == 1)).into_raw()
    })
}

#[no_mangle]
pub extern "C" fn astdb_cluster_event_text_free(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: `text` came from astdb_cluster_event_render (CString::into_raw), once.
        drop(unsafe { std::ffi::CString::from_raw(text) });
    }
}

#[no_mangle]
pub extern "C" fn astdb_cluster_event_drop(event: *mut std::ffi::c_void) {
    guard("event release", (), || {
        if !event.is_null() {
            // SAFETY: `event` is the Made that StasisEvents::publish boxed, released once
            // by its message's destructor (or the glue when it could not publish).
            drop(unsafe { Box::from_raw(event.cast::<super::events::Made>()) });
        }
    })
}
