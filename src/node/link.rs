//! The seam between the loop and the other nodes. The loop sends the engine's messages
//! through a [`Link`] and hears from it through [`LinkEvent`]s in its inbox; what carries
//! them (the TCP mesh today, Redis or SIP PUBLISH tomorrow) is the link's business.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::{ClusterConfig, Transport};
use crate::eid::Eid;
use crate::engine::Message;

use super::inbox::Inbox;
use super::{Level, Say};

/// What a link tells the loop, in order, through the inbox.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkEvent {
    /// A peer can be reached (its EID and node number are known).
    PeerUp { node: u32, eid: Eid },
    /// A peer can no longer be reached.
    PeerDown { eid: Eid },
    /// A message from a peer, already opened and decoded.
    Received { from: Eid, msg: Message },
    /// A message from peer `node`, opened (authenticated and decrypted) but not decoded:
    /// the loop decodes it where it merges the changes, so that their strings are made
    /// and freed by one thread, in its cache. One that does not decode is counted in
    /// `undecodable` and logged, never applied.
    Encoded {
        from: Eid,
        node: u32,
        payload: Vec<u8>,
        undecodable: SharedCount,
    },
    /// A connection with a peer was refused (said once per peer and cause until it
    /// connects): `peer` names it ("node 3", or an address), `cause` is the short name.
    Refused {
        peer: String,
        node: Option<u32>,
        cause: String,
        detail: String,
    },
    /// Everything the link delivered before this is in the inbox ahead of it: once the
    /// loop has saved what it made of them, it tells the link with [`Link::saved`]
    /// (a link that resumes from a position it keeps moves that position then).
    Reached(u64),
}

/// A count a link shows in its status and the loop adds to (two events carrying the
/// same counter are equal).
#[derive(Clone, Debug, Default)]
pub struct SharedCount(Arc<AtomicU64>);

impl SharedCount {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl PartialEq for SharedCount {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What a link says once (until cleared) and the refusals it counts by cause: for a
/// link's threads and, over SIP, PJSIP's (Mutexes only, no channel).
pub struct Notices {
    say: Say,
    inbox: Arc<Inbox>,
    said: Mutex<BTreeSet<String>>,
    refusals: Mutex<BTreeMap<String, u64>>,
}

impl Notices {
    pub fn new(say: Say, inbox: Arc<Inbox>) -> Self {
        Notices {
            say,
            inbox,
            said: Mutex::default(),
            refusals: Mutex::default(),
        }
    }

    /// True the first time `key` is marked since it was last cleared.
    pub fn first(&self, key: &str) -> bool {
        self.said
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string())
    }

    /// Says `text` the first time `key` is marked.
    pub fn say_once(&self, key: &str, level: Level, text: &str) {
        if self.first(key) {
            (self.say)(level, text);
        }
    }

    /// Lets `key` be said again; whether it had been.
    pub fn clear(&self, key: &str) -> bool {
        self.said
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
    }

    /// Counts a refusal under `cause`; the first time `once` is marked, says `warning`
    /// and tells the loop (a `Refused` event).
    pub fn refuse(
        &self,
        once: &str,
        warning: &str,
        peer: String,
        node: Option<u32>,
        cause: &str,
        detail: String,
    ) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cause.to_string())
            .or_default() += 1;
        if self.first(once) {
            (self.say)(Level::Warning, warning);
            self.inbox.push_event(LinkEvent::Refused {
                peer,
                node,
                cause: cause.to_string(),
                detail,
            });
        }
    }

    /// The refusals by cause, for [`LinkStatus::refusals`].
    pub fn refusals(&self) -> Vec<(String, u64)> {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// How the loop reaches the other nodes.
pub trait Link: Send {
    /// Brings the link in line with `cfg`: starts it, restarts it when the identity or
    /// secret changed, tells it of new peers. Called at load and after each reload.
    fn configure(&mut self, cfg: &ClusterConfig, eid: Eid);
    /// Sends `msg` to the peer `to`; a failure is counted (anti-entropy repairs it).
    fn send(&mut self, to: Eid, msg: &Message);
    /// What `astdb cluster show nodes` and `status` show about the link.
    fn status(&self) -> LinkStatus;
    /// Stops the link and joins its threads.
    fn shutdown(&mut self);
    /// The loop saved the state it made of everything up to [`LinkEvent::Reached`]`(mark)`.
    fn saved(&mut self, _mark: u64) {}
    /// The families shared now, whenever they change (a link that keeps per-family
    /// state forgets the families no longer shared: their changes were not applied).
    fn shared(&mut self, _families: &BTreeSet<String>) {}
    /// The loop stops with changes it has not sent yet (the rest of a large push): the
    /// link must not count on its peers holding everything it holds.
    fn unsent(&mut self) {}
    /// The node number of `eid` when the link knows it and the engine may not (over
    /// Redis the other nodes are not the engine's peers).
    fn node_of(&self, _eid: Eid) -> Option<u32> {
        None
    }
    /// `database shared refresh`: the family is compared in full at its next sync,
    /// whatever the link believes it knows.
    fn refresh(&mut self, _family: &str) {}
    /// Bytes sent to `to` that the link still holds, not yet on their way (a link that
    /// cannot tell says 0). The loop sends the rest of a large push only once this is
    /// small: a new node's catch-up then waits in the store, not as messages in memory.
    fn backlog(&self, _to: Eid) -> usize {
        0
    }
}

/// A peer as the link sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Up,
    Connecting,
    Down,
}

/// One peer, for display.
#[derive(Clone, Debug)]
pub struct PeerView {
    pub node: u32,
    pub eid: Option<Eid>,
    pub state: PeerState,
    pub last_seen: Option<SystemTime>,
    pub rtt: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    /// The protocol version in use while connected.
    pub protocol: Option<u8>,
}

/// The link as the CLI shows it.
#[derive(Clone, Debug, Default)]
pub struct LinkStatus {
    /// Why the network is closed, or where it listens.
    pub state: String,
    pub peers: Vec<PeerView>,
    /// Refused connections, by cause.
    pub refusals: Vec<(String, u64)>,
    pub send_errors: u64,
    pub undecodable: u64,
}

/// The link `[general] transport` names; a reload that names another one stops the
/// old link and starts the new.
pub struct Chosen {
    current: Option<(Transport, Box<dyn Link>)>,
    make: Box<dyn FnMut(Transport) -> Box<dyn Link> + Send>,
    shared: Option<BTreeSet<String>>,
}

impl Chosen {
    pub fn new(make: Box<dyn FnMut(Transport) -> Box<dyn Link> + Send>) -> Self {
        Chosen {
            current: None,
            make,
            shared: None,
        }
    }
}

impl Link for Chosen {
    fn configure(&mut self, cfg: &ClusterConfig, eid: Eid) {
        let want = cfg.general.transport;
        if self.current.as_ref().is_some_and(|(t, _)| *t != want) {
            if let Some((_, mut old)) = self.current.take() {
                old.shutdown();
            }
        }
        let (_, link) = self.current.get_or_insert_with(|| {
            let mut link = (self.make)(want);
            if let Some(names) = &self.shared {
                link.shared(names);
            }
            (want, link)
        });
        link.configure(cfg, eid);
    }

    fn send(&mut self, to: Eid, msg: &Message) {
        if let Some((_, l)) = &mut self.current {
            l.send(to, msg);
        }
    }

    fn status(&self) -> LinkStatus {
        self.current
            .as_ref()
            .map_or_else(LinkStatus::default, |(_, l)| l.status())
    }

    fn shutdown(&mut self) {
        if let Some((_, l)) = &mut self.current {
            l.shutdown();
        }
    }

    fn saved(&mut self, mark: u64) {
        if let Some((_, l)) = &mut self.current {
            l.saved(mark);
        }
    }

    fn shared(&mut self, families: &BTreeSet<String>) {
        self.shared = Some(families.clone());
        if let Some((_, l)) = &mut self.current {
            l.shared(families);
        }
    }

    fn unsent(&mut self) {
        if let Some((_, l)) = &mut self.current {
            l.unsent();
        }
    }

    fn refresh(&mut self, family: &str) {
        if let Some((_, l)) = &mut self.current {
            l.refresh(family);
        }
    }

    fn node_of(&self, eid: Eid) -> Option<u32> {
        self.current.as_ref().and_then(|(_, l)| l.node_of(eid))
    }
}
