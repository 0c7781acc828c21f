//! The loop's inbox: what Asterisk threads and the transport leave for the module's
//! thread. Dialplan writes (from the PBX threads, via capture), commands from the CLI
//! and dialplan (share, unshare, refresh, reload) and the transport's events, each in
//! order. A mutex and a condition variable, no thread-locals (see asterisk/thread.rs
//! for why that matters).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::link::LinkEvent;
use crate::config::ClusterConfig;
use crate::engine::{codec, Body, Message, Registry};

/// What the CLI, the dialplan and `module reload` ask of the loop.
#[derive(Debug)]
pub enum Command {
    /// The shared families are now these (a family was shared or unshared, or a
    /// reload changed the presets).
    Families(Registry),
    /// A configuration was applied (at load or by `module reload`).
    Config(Arc<ClusterConfig>),
    /// `database shared refresh`: read these families now and pull them from the peers.
    Refresh(Vec<String>),
    /// `database shared show key`: what the loop holds for AstDB family `family`, key
    /// `key`, answered on `reply`.
    Inspect {
        family: String,
        key: String,
        reply: crossbeam_channel::Sender<super::KeyInfo>,
    },
}

/// Dialplan writes waiting beyond this many are dropped, and the module falls
/// back to reading every family (nothing is lost, only later).
pub const MAX_PENDING: usize = 1_000_000;

/// Changes from peers waiting for the module's thread beyond which the link's thread
/// waits for it to take them (for at most [`MAX_RECEIVED_WAIT`]). A new node's catch-up
/// arrives faster than AstDB takes it; decoded, a change costs some hundred bytes, so the
/// backlog waits undecoded, on the link's side, rather than as a million decoded changes.
pub const MAX_PENDING_RECEIVED: usize = 65_536;
/// The longest the link's thread waits for the module's thread to take its changes; if
/// the thread takes nothing for that long (it is stopping, say), pushes no longer wait
/// until it takes something again.
pub const MAX_RECEIVED_WAIT: Duration = Duration::from_secs(1);

/// Work for the module's thread, filled by Asterisk threads and the transport.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<State>,
    wake: Condvar,
    /// Signalled when the module's thread takes what is pending.
    taken: Condvar,
}

#[derive(Default)]
struct State {
    pending: Pending,
    /// The module's thread is waiting for work: the next push wakes it. While it is
    /// busy, pushes only queue (waking costs the pusher, often a PBX thread, a system
    /// call).
    waiting: bool,
    /// Changes carried by the messages in `pending.events`.
    received: usize,
    /// A push waited [`MAX_RECEIVED_WAIT`] in vain: none waits until the next take.
    stalled: bool,
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
    pub fn push(&mut self, path: &str, value: Option<&str>) {
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
    /// Something else needs the thread's attention (a stop).
    pub poked: bool,
    /// Commands, in order.
    pub commands: Vec<Command>,
    /// Events from the transport, in order.
    pub events: Vec<LinkEvent>,
}

impl Pending {
    /// Nothing for the thread to do.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.events.is_empty()
            && self.commands.is_empty()
            && !self.overflowed
            && !self.poked
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

    /// Queues an event from the link. A message with changes waits first while more
    /// than [`MAX_PENDING_RECEIVED`] changes are pending (see there).
    pub fn push_event(&self, event: LinkEvent) {
        let changes = match &event {
            LinkEvent::Received {
                msg:
                    Message {
                        body: Body::Changes(c),
                        ..
                    },
                ..
            } => c.len(),
            LinkEvent::Encoded { payload, .. } => codec::change_count(payload),
            _ => 0,
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if changes > 0 && !state.stalled && state.received >= MAX_PENDING_RECEIVED {
            let (s, waited) = self
                .taken
                .wait_timeout_while(state, MAX_RECEIVED_WAIT, |s| {
                    s.received >= MAX_PENDING_RECEIVED
                })
                .unwrap_or_else(|p| p.into_inner());
            state = s;
            state.stalled = waited.timed_out();
        }
        state.received += changes;
        state.pending.events.push(event);
        let wake = state.wake();
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }

    pub fn push_command(&self, command: Command) {
        self.push(|pending| pending.commands.push(command));
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
        let taken = std::mem::take(&mut state.pending);
        let waiters = std::mem::take(&mut state.received) >= MAX_PENDING_RECEIVED;
        state.stalled = false;
        drop(state);
        if waiters {
            self.taken.notify_all();
        }
        taken
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
        let eid = crate::eid::Eid([2, 0, 0, 0, 0, 2]);
        let (got, waited) = wait_for(move |i| i.push_event(LinkEvent::PeerUp { node: 2, eid }));
        assert_eq!(got.events.len(), 1);
        assert!(
            waited < Duration::from_secs(4),
            "woke only at the timeout: {waited:?}"
        );
    }
}
