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

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

use crate::engine::family::leading_parts;

/// Dialplan writes waiting beyond this many are dropped, and the module falls
/// back to reading every family (nothing is lost, only later).
pub const MAX_PENDING: usize = 1_000_000;

/// Work for the module's thread, filled by Asterisk threads and the transport.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    pending: Pending,
    /// The module's thread is waiting for work: the next push wakes it. While it is
    /// busy, pushes only queue (waking costs the pusher, often a PBX thread, a system
    /// call).
    waiting: bool,
}

impl State {
    /// Whether the thread must be woken for what was just pushed (at most once).
    fn wake(&mut self) -> bool {
        std::mem::take(&mut self.waiting)
    }
}

/// Dialplan writes in order, packed in one buffer: a PBX thread appends bytes instead of
/// allocating strings that the module's thread would free (frees across threads
/// contend on the allocator).
#[derive(Default)]
pub struct Writes {
    /// Per write: path length (u32), path, 0 or 1 (value present), then if present the
    /// value's length (u32) and the value.
    bytes: Vec<u8>,
    count: usize,
}

impl Writes {
    fn push(&mut self, path: &str, value: Option<&str>) {
        self.bytes
            .extend_from_slice(&(path.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(path.as_bytes());
        match value {
            None => self.bytes.push(0),
            Some(v) => {
                self.bytes.push(1);
                self.bytes
                    .extend_from_slice(&(v.len() as u32).to_le_bytes());
                self.bytes.extend_from_slice(v.as_bytes());
            }
        }
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The writes in order: "family/key" and the value (None: deleted).
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        let mut rest = &self.bytes[..];
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let mut take = |n: usize| {
                let (head, tail) = rest.split_at(n);
                rest = tail;
                head
            };
            let len = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let n = len(take(4));
            // Written from &str just above: valid UTF-8.
            let path = std::str::from_utf8(take(n)).unwrap_or_default();
            let value = match take(1)[0] {
                0 => None,
                _ => {
                    let n = len(take(4));
                    Some(std::str::from_utf8(take(n)).unwrap_or_default())
                }
            };
            Some((path, value))
        })
    }
}

#[derive(Default)]
pub struct Pending {
    /// Dialplan writes in order.
    pub writes: Writes,
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
        self.writes.is_empty() && self.events.is_empty() && !self.overflowed && !self.poked
    }
}

impl Inbox {
    /// Queues with `add` and wakes the thread if it is waiting.
    fn push(&self, add: impl FnOnce(&mut Pending)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        add(&mut state.pending);
        let wake = state.wake();
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }

    pub fn push_write(&self, path: &str, value: Option<&str>) {
        self.push(|pending| {
            if pending.writes.len() >= MAX_PENDING {
                pending.overflowed = true;
            } else {
                pending.writes.push(path, value);
            }
        });
    }

    pub fn push_event(&self, event: crate::transport::Event) {
        self.push(|pending| pending.events.push(event));
    }

    pub fn poke(&self) {
        self.push(|pending| pending.poked = true);
    }

    /// Waits up to `timeout` for work, then takes all of it. With `linger`, when there is
    /// nothing yet, first sleeps that long without asking to be woken, so that pushes in
    /// the meantime skip the wake-up.
    pub fn take(&self, timeout: Duration, linger: Duration) -> Pending {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.pending.is_empty() && !linger.is_zero() {
            drop(state);
            std::thread::sleep(linger);
            state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        }
        if state.pending.is_empty() {
            state.waiting = true;
            state = self
                .wake
                .wait_timeout_while(state, timeout, |s| s.pending.is_empty())
                .unwrap_or_else(|p| p.into_inner())
                .0;
            state.waiting = false;
        }
        std::mem::take(&mut state.pending)
    }
}

static INBOX: RwLock<Option<std::sync::Arc<Inbox>>> = RwLock::new(None);

/// The families the module's thread shares, for the PBX threads to leave other writes
/// alone (no copy, no wake-up).
static SHARED: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// Sets (or clears) where dialplan writes go; clearing also forgets the shared names.
pub fn set_inbox(inbox: Option<std::sync::Arc<Inbox>>) {
    if inbox.is_none() {
        set_shared(BTreeSet::new());
    }
    *INBOX.write().unwrap_or_else(|p| p.into_inner()) = inbox;
}

/// The families now shared (the module's thread calls this when they change). A write
/// to a family shared a moment before this is called is not lost: a newly shared
/// family is read whole at once.
pub fn set_shared(names: BTreeSet<String>) {
    *SHARED.write().unwrap_or_else(|p| p.into_inner()) = names;
}

/// Whether a dialplan write to `path` ("family/key", the family possibly nested) is in
/// a shared family, by the rule the engine and registry use (`leading_parts`).
pub fn wanted(path: &str) -> bool {
    let Some((family, _)) = path.trim_matches('/').rsplit_once('/') else {
        return false;
    };
    let shared = SHARED.read().unwrap_or_else(|p| p.into_inner());
    leading_parts(family).any(|(part, _)| shared.contains(part))
}

/// A dialplan write of `value` to `path` ("family/key") succeeded (None: a delete).
pub fn dialplan_wrote(path: &str, value: Option<&str>) {
    if let Some(inbox) = INBOX.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        inbox.push_write(path, value);
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
            writer.push_write("blacklist/1", Some("a"));
            writer.push_write("blacklist/2", None);
            writer.push_write("blacklist/é", Some(""));
        });
        t.join().unwrap();
        let got = inbox.take(Duration::from_secs(5), Duration::ZERO);
        assert_eq!(
            got.writes.iter().collect::<Vec<_>>(),
            [
                ("blacklist/1", Some("a")),
                ("blacklist/2", None),
                ("blacklist/é", Some(""))
            ]
        );
        assert!(inbox
            .take(Duration::from_millis(1), Duration::ZERO)
            .writes
            .is_empty());
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
        let got = inbox.take(Duration::from_secs(5), Duration::ZERO);
        let waited = start.elapsed();
        t.join().unwrap();
        (got, waited)
    }

    // Generous bounds (the machine is shared): what matters is waking long
    // before the 5 s timeout. Before the fix, a peer's message waited for it.
    #[test]
    fn a_dialplan_write_wakes_the_waiting_thread_at_once() {
        let (got, waited) = wait_for(|i| i.push_write("blacklist/x", Some("1")));
        assert_eq!(got.writes.len(), 1);
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
        set_shared(
            ["blacklist", "foo/sub"]
                .into_iter()
                .map(String::from)
                .collect(),
        );
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
