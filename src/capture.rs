//! Capture of writes to AstDB. Asterisk has no change notification, so there
//! are two ways in:
//!
//! - Dialplan `DB()` / `DB_DELETE()`: func_db's callbacks are wrapped (see
//!   glue.c) and each write is reported here at once, from the PBX thread.
//! - Every other writer (CLI, AMI, other modules, edits while unloaded): the
//!   module's thread reads each shared family every `sync_interval` and the
//!   engine works out what changed.
//!
//! The PBX thread only pushes the path into [`Inbox`] and wakes the module's
//! thread: a mutex and a condition variable, no thread-locals (see
//! asterisk/thread.rs for why that matters).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

/// Dialplan writes waiting beyond this many are dropped, and the module falls
/// back to reading every family (nothing is lost, only later).
pub const MAX_PENDING: usize = 1_000_000;

/// Work for the module's thread, filled by Asterisk threads and the transport.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
pub struct Pending {
    /// Dialplan writes in order: "family/key" and the value (None: deleted).
    pub paths: VecDeque<(String, Option<String>)>,
    /// Paths were dropped: every shared family must be read again.
    pub overflowed: bool,
    /// Something else needs the thread's attention (registry change, stop).
    pub poked: bool,
    /// Events from the transport, in order.
    pub events: Vec<crate::transport::Event>,
}

impl Pending {
    /// Nothing for the thread to do.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.events.is_empty() && !self.overflowed && !self.poked
    }
}

impl Inbox {
    pub fn push_path(&self, path: String, value: Option<String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Only the first write after a take needs to wake the thread; waking
        // costs a system call on every push, on the dialplan's own thread.
        let wake = state.is_empty();
        if state.paths.len() >= MAX_PENDING {
            state.overflowed = true;
        } else {
            state.paths.push_back((path, value));
        }
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }

    pub fn push_event(&self, event: crate::transport::Event) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events
            .push(event);
        self.wake.notify_one();
    }

    pub fn poke(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).poked = true;
        self.wake.notify_one();
    }

    /// Waits up to `timeout` for work, then takes all of it.
    pub fn take(&self, timeout: Duration) -> Pending {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut state, _) = self
            .wake
            .wait_timeout_while(state, timeout, |s| s.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *state)
    }
}

static INBOX: Mutex<Option<std::sync::Arc<Inbox>>> = Mutex::new(None);

/// The families the module's thread shares, for the PBX threads to leave other writes
/// alone (no copy, no wake-up).
static SHARED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Sets (or clears) where dialplan writes go; clearing also forgets the shared names.
pub fn set_inbox(inbox: Option<std::sync::Arc<Inbox>>) {
    if inbox.is_none() {
        set_shared(Vec::new());
    }
    *INBOX.lock().unwrap_or_else(|p| p.into_inner()) = inbox;
}

/// The families now shared (the module's thread calls this when they change). A write
/// to a family shared a moment before this is called is not lost: a newly shared
/// family is read whole at once.
pub fn set_shared(names: Vec<String>) {
    *SHARED.write().unwrap_or_else(|p| p.into_inner()) = names;
}

/// Whether a dialplan write to `path` ("family/key", the family possibly nested) is in
/// a shared family: some leading run of its family's `/`-separated parts is a shared
/// name, as the engine decides (`Engine::local_change`).
pub fn wanted(path: &str) -> bool {
    let path = path.trim_matches('/');
    let Some((family, _)) = path.rsplit_once('/') else {
        return false;
    };
    let shared = SHARED.read().unwrap_or_else(|p| p.into_inner());
    shared.iter().any(|name| {
        family
            .strip_prefix(name.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// A dialplan write of `value` to `path` ("family/key") succeeded (None: a delete).
pub fn dialplan_wrote(path: String, value: Option<String>) {
    let inbox = INBOX.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(inbox) = inbox {
        inbox.push_path(path, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_write_wakes_the_waiting_thread_and_is_taken_in_order() {
        let inbox = Arc::new(Inbox::default());
        let writer = Arc::clone(&inbox);
        let t = std::thread::spawn(move || {
            writer.push_path("blacklist/1".into(), Some("a".into()));
            writer.push_path("blacklist/2".into(), None);
        });
        t.join().unwrap();
        let got = inbox.take(Duration::from_secs(5));
        assert_eq!(
            got.paths,
            [
                ("blacklist/1".to_string(), Some("a".to_string())),
                ("blacklist/2".to_string(), None)
            ]
        );
        assert!(inbox.take(Duration::from_millis(1)).paths.is_empty());
    }
}

#[cfg(test)]
mod wake_tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// Waits for what `push` delivers from another thread; how long it took.
    fn wait_for(push: impl FnOnce(&Inbox) + Send + 'static) -> (Pending, Duration) {
        let inbox = Arc::new(Inbox::default());
        let pusher = Arc::clone(&inbox);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            push(&pusher);
        });
        let start = Instant::now();
        let got = inbox.take(Duration::from_secs(5));
        let waited = start.elapsed();
        t.join().unwrap();
        (got, waited)
    }

    // Generous bounds (the machine is shared): what matters is waking long
    // before the 5 s timeout. Before the fix, a peer's message waited for it.
    #[test]
    fn a_dialplan_write_wakes_the_waiting_thread_at_once() {
        let (got, waited) = wait_for(|i| i.push_path("blacklist/x".into(), Some("1".into())));
        assert_eq!(got.paths.len(), 1);
        assert!(
            waited < Duration::from_secs(4),
            "woke only at the timeout: {waited:?}"
        );
    }

    #[test]
    fn a_message_from_a_peer_wakes_the_waiting_thread_at_once() {
        let eid = crate::engine::Eid([2, 0, 0, 0, 0, 2]);
        let (got, waited) =
            wait_for(move |i| i.push_event(crate::transport::Event::PeerUp { node: 2, eid }));
        assert_eq!(got.events.len(), 1);
        assert!(
            waited < Duration::from_secs(4),
            "woke only at the timeout: {waited:?}"
        );
    }

    #[test]
    fn only_writes_in_shared_families_are_wanted() {
        set_shared(vec!["blacklist".into(), "foo/sub".into()]);
        assert!(wanted("blacklist/5551234"));
        assert!(wanted("/blacklist/a/b"), "a key with slashes");
        assert!(wanted("foo/sub/k") && wanted("foo/sub/deeper/k"));
        assert!(
            !wanted("blacklist2/5551234"),
            "a family that only begins alike"
        );
        assert!(!wanted("foo/k"), "the parent of a shared family");
        assert!(!wanted("other/k") && !wanted("blacklist"));
        assert!(!wanted("020000000001/blacklist/k"), "another node's copies");
        set_inbox(None);
        assert!(
            !wanted("blacklist/5551234"),
            "nothing once the module stops"
        );
    }
}
