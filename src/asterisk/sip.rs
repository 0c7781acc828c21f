//! The border with res_astdb_cluster_pjsip.so (see node/pjsip for the link), the small C module that holds the
//! res_pjsip side (this library must load in an Asterisk without PJSIP, so it names
//! no res_pjsip symbol). That module finds the functions below with `dlsym` once it
//! loads, hands over its [`Ops`], and calls in from PJSIP's threads when a PUBLISH
//! for `asterisk-db` arrives. It requires this module, so this one cannot be
//! unloaded beneath it; when it unloads it detaches, which waits for any call into
//! its code to return.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, RwLock};

/// The ops version this library understands.
const OPS_VERSION: u32 = 1;

/// What the C module offers (its `struct astdb_cluster_sip_ops`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ops {
    pub version: u32,
    /// Queues one PUBLISH with an application/json body on the named outbound-publish:
    /// 0 when queued, -1 when no such outbound-publish runs.
    /// `fresh` non-zero: the client was stopped before (see [`SPENT`]).
    pub publish: Option<
        unsafe extern "C" fn(client: *const c_char, body: *const c_char, fresh: c_int) -> c_int,
    >,
}

/// What the link does with calls from PJSIP's threads.
pub trait Inbound: Send + Sync {
    /// The SIP response code for a new publication whose inbound-publication has
    /// `event_asterisk-db = <config>`.
    fn accept(&self, resource: &str, config: &str) -> u16;
    /// A body on a publication of `config`: Ok when it was taken.
    fn body(&self, resource: &str, config: &str, json: bool, text: &[u8]) -> Result<(), ()>;
}

static OPS: RwLock<Option<Ops>> = RwLock::new(None);
static INBOUND: RwLock<Option<Arc<dyn Inbound>>> = RwLock::new(None);
/// The outbound-publish objects with `event = asterisk-db` that res_pjsip runs now,
/// by client (its address, which is all `stop_publishing` is given).
static CLIENTS: Mutex<BTreeMap<usize, String>> = Mutex::new(BTreeMap::new());
/// Outbound-publish objects whose client was stopped once (the C module unloaded):
/// res_pjsip keeps their spent publisher, which sends nothing; the first send after
/// they start again asks for a new one.
static SPENT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Whether the C module is loaded and attached.
pub fn attached() -> bool {
    OPS.read().unwrap_or_else(|p| p.into_inner()).is_some()
}

/// Whether res_pjsip runs the outbound-publish `name` for our event.
pub fn client_running(name: &str) -> bool {
    CLIENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .any(|n| n == name)
}

/// Sends `body` through the outbound-publish `client`. Err says why not.
pub fn publish(client: &str, body: &str) -> Result<(), &'static str> {
    let ops = OPS.read().unwrap_or_else(|p| p.into_inner());
    let Some(publish) = ops.as_ref().and_then(|o| o.publish) else {
        return Err("res_astdb_cluster_pjsip.so is not loaded");
    };
    if !client_running(client) {
        return Err("the outbound-publish is not running");
    }
    let (Ok(name), Ok(text)) = (CString::new(client), CString::new(body)) else {
        return Err("a NUL byte in the name or body");
    };
    let spent = SPENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(client);
    // SAFETY: the C module's function, valid until it detaches, which takes the write
    // lock this read lock holds off; both strings outlive the call.
    let call = |fresh: bool| unsafe { publish(name.as_ptr(), text.as_ptr(), c_int::from(fresh)) };
    let mut res = call(spent);
    if res == -2 && !spent && renew_due(client) {
        // A publisher spent before this library was loaded (the modules were
        // unloaded and loaded again): replaced, at most once a minute.
        res = call(true);
    }
    match res {
        0 => {
            if spent {
                SPENT
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(client);
            }
            Ok(())
        }
        -2 => Err("res_pjsip refused the PUBLISH (its publisher has stopped)"),
        _ => Err("the outbound-publish is not running"),
    }
}

/// Whether a refused client's publisher may be replaced now (once a minute, so a
/// client that keeps failing, on authentication say, is not rebuilt for every body).
fn renew_due(client: &str) -> bool {
    static RENEWED: Mutex<BTreeMap<String, std::time::Instant>> = Mutex::new(BTreeMap::new());
    let mut renewed = RENEWED.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::Instant::now();
    match renewed.get(client) {
        Some(at) if now.duration_since(*at) < std::time::Duration::from_secs(60) => false,
        _ => {
            renewed.insert(client.to_string(), now);
            true
        }
    }
}

/// Sets (or with None clears) what handles calls from PJSIP. Clearing waits for a
/// call under way to return.
pub fn set_inbound(inbound: Option<Arc<dyn Inbound>>) {
    *INBOUND.write().unwrap_or_else(|p| p.into_inner()) = inbound;
}

fn text<'a>(p: *const c_char) -> &'a str {
    if p.is_null() {
        return "";
    }
    // SAFETY: the C module passes NUL-terminated strings valid for the call.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
}

/// # Safety
/// `ops` is null or points to an `Ops` (copied here).
#[no_mangle]
pub unsafe extern "C" fn astdb_cluster_sip_attach(ops: *const Ops) -> c_int {
    catch_unwind(|| {
        if ops.is_null() {
            return -1;
        }
        // SAFETY: the caller passes a valid Ops.
        let ops = unsafe { *ops };
        if ops.version != OPS_VERSION || ops.publish.is_none() {
            return -1;
        }
        *OPS.write().unwrap_or_else(|p| p.into_inner()) = Some(ops);
        0
    })
    .unwrap_or(-1)
}

#[no_mangle]
pub extern "C" fn astdb_cluster_sip_detach() {
    let _ = catch_unwind(|| {
        *OPS.write().unwrap_or_else(|p| p.into_inner()) = None;
        let left = std::mem::take(&mut *CLIENTS.lock().unwrap_or_else(|p| p.into_inner()));
        SPENT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(left.into_values());
    });
}

/// res_pjsip started (`running` 1, with its outbound-publish's name) or stopped a
/// client for our event.
#[no_mangle]
pub extern "C" fn astdb_cluster_sip_client(
    client: *const std::ffi::c_void,
    name: *const c_char,
    running: c_int,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
        if running != 0 {
            clients.insert(client as usize, text(name).to_string());
        } else if let Some(name) = clients.remove(&(client as usize)) {
            SPENT.lock().unwrap_or_else(|p| p.into_inner()).insert(name);
        }
    }));
}

/// A new publication: the SIP response code.
#[no_mangle]
pub extern "C" fn astdb_cluster_sip_accept(
    resource: *const c_char,
    config: *const c_char,
) -> c_int {
    catch_unwind(AssertUnwindSafe(|| {
        match INBOUND.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(i) => c_int::from(i.accept(text(resource), text(config))),
            // Not running over SIP now (another transport, or not configured yet).
            None => 503,
        }
    }))
    .unwrap_or(500)
}

/// A body (`json` non-zero when its type is application/json): 0 when taken.
///
/// # Safety
/// `body` points to `len` readable bytes (or is null with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn astdb_cluster_sip_body(
    resource: *const c_char,
    config: *const c_char,
    json: c_int,
    body: *const c_char,
    len: usize,
) -> c_int {
    catch_unwind(AssertUnwindSafe(|| {
        let bytes: &[u8] = if body.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: the caller's buffer of len bytes, valid for the call.
            unsafe { std::slice::from_raw_parts(body.cast::<u8>(), len) }
        };
        match INBOUND.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(i) => match i.body(text(resource), text(config), json != 0, bytes) {
                Ok(()) => 0,
                Err(()) => -1,
            },
            None => -1,
        }
    }))
    .unwrap_or(-1)
}
