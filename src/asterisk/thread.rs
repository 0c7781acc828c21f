//! Threads the module owns, started without leaving anything behind on the
//! Asterisk thread that starts them.
//!
//! `std::thread::spawn` registers a thread-local destructor on the *calling*
//! thread (std's spawn hooks). When that thread is Asterisk's (the main thread
//! at start-up, a CLI thread later), glibc keeps our library mapped for as long
//! as that thread lives, so `module unload` cannot unmap it and the next
//! `module load` finds a stale copy. Seen in Asterisk 22.10.1 with gdb on
//! `__cxa_thread_atexit_impl`. So threads are created with pthread_create here;
//! inside them std is free to do as it likes, because they are joined on unload.
//!
//! The same rule holds for ALL Rust code that runs on an Asterisk thread: it
//! must not touch a thread-local that has a destructor. Besides pinning the
//! library as above, std's fallback registers such destructors through a
//! process-wide pthread key whose destructor lives in our code: an Asterisk
//! thread that exits after `module unload` then jumps into unmapped memory
//! (seen: SIGSEGV in __nptl_deallocate_tsd after `module unload`). Known
//! culprits: `std::thread::spawn`, `std::thread::current()`, and crossbeam
//! channels (even `try_send` calls `thread::current()` when a receiver waits).
//! Hand work to our threads through Mutex + Condvar pairs (the loop's inbox) and
//! atomics ([`Signal`]), which use only futexes.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

/// A running thread of ours; `join` waits for it to end.
pub struct OwnedThread {
    id: libc::pthread_t,
    name: String,
}

type Body = Box<dyn FnOnce() + Send + 'static>;

extern "C" fn trampoline(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `arg` is the Box<Body> leaked by `spawn`, handed over exactly once.
    let body: Box<Body> = unsafe { Box::from_raw(arg.cast()) };
    if catch_unwind(AssertUnwindSafe(body)).is_err() {
        crate::error!("a res_astdb_cluster thread ended with an internal error");
    }
    std::ptr::null_mut()
}

/// Starts `body` on a new thread named `name` (at most 15 bytes are shown by tools).
pub fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<OwnedThread, String> {
    let boxed: Box<Body> = Box::new(Box::new(body));
    let arg = Box::into_raw(boxed).cast::<c_void>();
    let mut id: libc::pthread_t = 0;
    // SAFETY: trampoline takes ownership of `arg`; on failure we take it back.
    let rc = unsafe { libc::pthread_create(&mut id, std::ptr::null(), trampoline, arg) };
    if rc != 0 {
        // SAFETY: the thread was not created, so `arg` is still ours.
        drop(unsafe { Box::from_raw(arg.cast::<Body>()) });
        return Err(format!(
            "could not start thread {name}: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    let short: String = name.chars().take(15).collect();
    let cname = super::c_string(&short);
    // SAFETY: naming a thread we just created; failure is harmless.
    unsafe { libc::pthread_setname_np(id, cname.as_ptr()) };
    Ok(OwnedThread {
        id,
        name: name.to_string(),
    })
}

impl OwnedThread {
    /// Waits until the thread has ended, its thread-local destructors included.
    pub fn join(self) {
        // SAFETY: joining a joinable thread we created, exactly once.
        let rc = unsafe { libc::pthread_join(self.id, std::ptr::null_mut()) };
        if rc != 0 {
            crate::error!("could not wait for thread {}: error {rc}", self.name);
        }
    }
}

/// A stop request that an Asterisk thread can raise safely (no thread-locals). The
/// thread it stops is woken through its inbox.
#[derive(Default)]
pub struct Signal {
    raised: AtomicBool,
}

impl Signal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }
}

/// Logs panics through Asterisk without the default hook's thread-name lookup,
/// which would leave a thread-local destructor on an Asterisk thread.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::error!("internal error (panic) at {at}: {what}");
    }));
}
