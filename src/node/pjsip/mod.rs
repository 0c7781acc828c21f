//! SIP PUBLISH as the loop's [`Link`] (`transport = pjsip`): the original design's
//! transport. Each `type = node` section names the pjsip.conf outbound-publish
//! (`event = asterisk-db`) that reaches that node; the node publishes back to us
//! through its own, and our inbound-publication's `event_asterisk-db` names the
//! section it comes from. res_pjsip carries the requests: its TLS, auth and ACLs,
//! visible with `pjsip set logger on`.
//!
//! SIP gives no connection, so the link makes one of the bodies: each node sends a
//! body at least every [`HEARTBEAT`], a peer is up from its first body that opens and
//! down after [`SILENCE`] without one. Bodies with messages are numbered; the
//! receiver says in its own bodies how far it got, and a sender keeps at most
//! [`WINDOW`] bodies unacknowledged per peer, so res_pjsip's queue (each client sends
//! one PUBLISH at a time) never holds more than that. A body lost on the way (a
//! PUBLISH that timed out) is repaired like any loss: by the engine's digests.

mod body;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::inbox::Inbox;
use super::link::{Link, LinkEvent, LinkStatus, Notices, PeerState, PeerView};
use super::{Level, Say};
use crate::asterisk::sip as bridge;
use crate::config::ClusterConfig;
use crate::eid::Eid;
use crate::engine::{codec, Message};
use body::{Frame, Refusal, Seal, MESSAGE_BUDGET};
pub use body::{EVENT, MAX_BODY};

/// A node sends a body to each peer at least this often.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A peer is down after this long without a body from it.
pub const SILENCE: Duration = Duration::from_secs(5);
/// Bodies with messages sent to one peer and not yet acknowledged.
pub const WINDOW: u64 = 6;
/// An acknowledgement waits this long for a body with messages to ride on.
const ACK_DELAY: Duration = Duration::from_millis(3);
/// Bodies in flight this long without an acknowledgement are given up (their PUBLISH
/// timed out): the window opens again and the digests repair what they carried.
const STALL: Duration = Duration::from_secs(40);
/// Encoded messages waiting for one peer's window; beyond this, messages are dropped
/// (and counted) until it drains.
const QUEUE_BYTES: usize = 64 << 20;

/// The settings that need a new link (and session) when they change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    cluster_name: String,
    secret: String,
    node: u32,
    eid: Eid,
}

/// One configured peer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PeerConf {
    node: u32,
    section: String,
    publish: String,
}

/// What the inbound side knows of one peer.
#[derive(Default)]
struct Heard {
    eid: Option<Eid>,
    session: u64,
    /// Highest sequence number received in `session`.
    seq: u64,
    up: bool,
    last: Option<(Instant, SystemTime)>,
    bytes_in: u64,
    frames_in: u64,
}

/// State shared by the link thread, PJSIP's threads (inbound bodies) and `status`.
struct Shared {
    identity: Identity,
    seal: Seal,
    session: u64,
    inbox: Arc<Inbox>,
    say: Say,
    peers: RwLock<Vec<PeerConf>>,
    heard: Mutex<BTreeMap<u32, Heard>>,
    notices: Notices,
    send_errors: AtomicU64,
    undecodable: AtomicU64,
    /// Bytes and bodies sent to each peer.
    out: Mutex<BTreeMap<u32, (u64, u64)>>,
    /// Tells the link thread what to send and what arrived. A Mutex and Condvar, not
    /// a channel: PJSIP's threads are Asterisk's, where a channel's thread-locals
    /// would pin or crash the library (see asterisk/thread.rs).
    tx: Queue,
}

#[derive(Default)]
struct Queue {
    cmds: Mutex<VecDeque<Cmd>>,
    ready: Condvar,
}

impl Queue {
    fn send(&self, cmd: Cmd) {
        self.cmds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(cmd);
        self.ready.notify_one();
    }

    /// What was queued, waiting up to `wait` for something.
    fn take(&self, wait: Duration) -> VecDeque<Cmd> {
        let cmds = self.cmds.lock().unwrap_or_else(|p| p.into_inner());
        let (mut cmds, _) = self
            .ready
            .wait_timeout_while(cmds, wait, |c| c.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *cmds)
    }
}

enum Cmd {
    Send(u32, Message),
    Peers(Vec<PeerConf>),
    /// From node: a body numbered `seq` (0: none) acknowledging `ack` of `ack_session`.
    Heard {
        node: u32,
        seq: u64,
        ack_session: u64,
        ack: u64,
    },
    /// The peer went silent or restarted: what is in flight to it will not be
    /// acknowledged (the engine's sync after it is back repairs what it carried).
    Reset(u32),
    Stop,
}

impl Shared {
    fn heard(&self) -> MutexGuard<'_, BTreeMap<u32, Heard>> {
        self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn peers(&self) -> Vec<PeerConf> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The peer whose node section an inbound-publication's `event_asterisk-db` names.
    fn publication_peer(&self, config: &str) -> Option<PeerConf> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|p| p.section == config)
            .cloned()
    }

    /// Counts a refused body and says so once per cause and publication.
    fn refuse(&self, cause: Refusal, resource: &str, config: &str, node: Option<u32>) {
        let text = cause.as_str();
        let peer = format!("publication {resource} (event_{EVENT} = {config})");
        self.notices.refuse(
            &format!("refused {text} {peer}"),
            &format!("a PUBLISH on {peer} was refused: {text}; nothing of it was applied (said once per cause, counted in 'astdb cluster show status')"),
            peer.clone(),
            node,
            text,
            format!("resource {resource}"),
        );
    }

    /// Marks peers silent for [`SILENCE`] down.
    fn check_silence(&self, now: Instant) {
        let mut gone = Vec::new();
        for (node, h) in self.heard().iter_mut() {
            if h.up && h.last.is_none_or(|(t, _)| now.duration_since(t) >= SILENCE) {
                h.up = false;
                if let Some(eid) = h.eid {
                    gone.push((*node, eid));
                }
            }
        }
        for (node, eid) in gone {
            self.tx.send(Cmd::Reset(node));
            (self.say)(
                Level::Notice,
                &format!(
                    "node {node} ({eid}) is silent over SIP for {} s: down",
                    SILENCE.as_secs()
                ),
            );
            self.inbox.push_event(LinkEvent::PeerDown { eid });
        }
    }
}

impl bridge::Inbound for Shared {
    fn accept(&self, resource: &str, config: &str) -> u16 {
        if self.publication_peer(config).is_some() {
            200
        } else {
            self.refuse(Refusal::NotConfigured, resource, config, None);
            403
        }
    }

    fn body(&self, resource: &str, config: &str, json: bool, text: &[u8]) -> Result<(), ()> {
        let Some(peer) = self.publication_peer(config) else {
            self.refuse(Refusal::NotConfigured, resource, config, None);
            return Err(());
        };
        let node = peer.node;
        if text.is_empty() {
            // A refresh of the publication: nothing to take.
            return Ok(());
        }
        if !json {
            self.refuse(Refusal::Malformed, resource, config, Some(node));
            return Err(());
        }
        let (eid, family, frame) = match self.seal.open(text) {
            Ok(opened) => opened,
            Err(cause) => {
                self.refuse(cause, resource, config, Some(node));
                return Err(());
            }
        };
        if frame.node != node || eid == self.identity.eid {
            self.refuse(Refusal::WrongNode, resource, config, Some(node));
            return Err(());
        }
        let mut messages = Vec::with_capacity(frame.messages.len());
        for bytes in &frame.messages {
            match codec::decode(bytes) {
                Ok(msg) if msg.family == family => messages.push(msg),
                Ok(_) => {
                    self.refuse(Refusal::Replayed, resource, config, Some(node));
                    return Err(());
                }
                Err(why) => {
                    self.undecodable.fetch_add(1, Ordering::Relaxed);
                    self.notices.say_once(
                        &format!("undecodable {node}"),
                        Level::Warning,
                        &format!("node {node} sent a message that does not decode ({why:?}); it was dropped"),
                    );
                    return Err(());
                }
            }
        }
        let (came_up, went_down, fresh) = {
            let mut heard = self.heard();
            let h = heard.entry(node).or_default();
            if frame.session != h.session {
                // A new session (the sender restarted) is taken when it is newer, or
                // when the old one has gone silent; an older one is a replay.
                if frame.session < h.session && h.up {
                    drop(heard);
                    self.refuse(Refusal::Replayed, resource, config, Some(node));
                    return Err(());
                }
                let was_up = h.up.then_some(h.eid).flatten();
                self.tx.send(Cmd::Reset(node));
                h.session = frame.session;
                h.seq = 0;
                h.up = false;
                if let Some(old) = was_up {
                    self.inbox.push_event(LinkEvent::PeerDown { eid: old });
                }
            }
            let fresh = frame.seq == 0 || frame.seq > h.seq;
            if frame.seq > h.seq {
                h.seq = frame.seq;
            }
            let came_up = !h.up;
            h.up = true;
            let went_down = h.eid.filter(|old| *old != eid);
            h.eid = Some(eid);
            h.last = Some((Instant::now(), SystemTime::now()));
            h.bytes_in += text.len() as u64;
            h.frames_in += 1;
            (came_up, went_down, fresh)
        };
        if let Some(old) = went_down {
            if !came_up {
                self.inbox.push_event(LinkEvent::PeerDown { eid: old });
            }
        }
        if came_up || went_down.is_some() {
            (self.say)(
                Level::Notice,
                &format!(
                    "node {node} ({eid}) is up over SIP PUBLISH ({})",
                    peer.section
                ),
            );
            self.inbox.push_event(LinkEvent::PeerUp { node, eid });
        }
        if fresh {
            for msg in messages {
                self.inbox
                    .push_event(LinkEvent::Received { from: eid, msg });
            }
        }
        self.tx.send(Cmd::Heard {
            node,
            seq: frame.seq,
            ack_session: frame.ack_session,
            ack: frame.ack,
        });
        Ok(())
    }
}

/// What the link thread keeps for one peer.
struct Outbound {
    conf: PeerConf,
    queue: VecDeque<(Message, Vec<u8>)>,
    queued_bytes: usize,
    next_seq: u64,
    acked: u64,
    progress: Instant,
    /// An acknowledgement is owed since then.
    owe_ack: Option<Instant>,
    last_sent: Option<Instant>,
}

impl Outbound {
    fn new(conf: PeerConf) -> Self {
        Outbound {
            conf,
            queue: VecDeque::new(),
            queued_bytes: 0,
            next_seq: 1,
            acked: 0,
            progress: Instant::now(),
            owe_ack: None,
            last_sent: None,
        }
    }

    fn in_flight(&self) -> u64 {
        self.next_seq - 1 - self.acked
    }
}

/// The link thread: packs messages into bodies, paces them by the window, sends
/// acknowledgements and heartbeats, and watches for silent peers.
fn run(shared: Arc<Shared>) {
    let mut out: BTreeMap<u32, Outbound> = shared
        .peers()
        .into_iter()
        .map(|p| (p.node, Outbound::new(p)))
        .collect();
    let started = Instant::now();
    let mut last_check = started;
    loop {
        let busy = out
            .values()
            .any(|o| o.owe_ack.is_some() || (!o.queue.is_empty() && o.in_flight() < WINDOW));
        let wait = if busy {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        };
        for cmd in shared.tx.take(wait) {
            if !take(&shared, &mut out, cmd) {
                return;
            }
        }
        let now = Instant::now();
        for o in out.values_mut() {
            pump(&shared, o, now);
        }
        if now.duration_since(last_check) >= Duration::from_millis(250) {
            last_check = now;
            shared.check_silence(now);
            if !bridge::attached() && now.duration_since(started) >= SILENCE {
                shared.notices.say_once(
                    "not attached",
                    Level::Warning,
                    "transport = pjsip, but res_astdb_cluster_pjsip.so is not loaded: nothing is sent or received (load it; it needs res_pjsip, res_pjsip_pubsub and res_pjsip_outbound_publish)",
                );
            }
        }
    }
}

/// Applies one command; false to stop.
fn take(shared: &Shared, out: &mut BTreeMap<u32, Outbound>, cmd: Cmd) -> bool {
    match cmd {
        Cmd::Stop => return false,
        Cmd::Peers(peers) => {
            out.retain(|node, _| peers.iter().any(|p| p.node == *node));
            for p in peers {
                match out.get_mut(&p.node) {
                    Some(o) => o.conf = p,
                    None => {
                        out.insert(p.node, Outbound::new(p));
                    }
                }
            }
        }
        Cmd::Send(node, msg) => {
            let Some(o) = out.get_mut(&node) else {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
                return true;
            };
            for (part, bytes) in body::split(msg, MESSAGE_BUDGET) {
                if bytes.len() > MESSAGE_BUDGET {
                    shared.send_errors.fetch_add(1, Ordering::Relaxed);
                    shared.notices.say_once(
                        "too big",
                        Level::Warning,
                        &format!("a change of family '{}' is too large for a SIP body ({} bytes, at most {MESSAGE_BUDGET}); it is not sent over SIP", part.family, bytes.len()),
                    );
                    continue;
                }
                if o.queued_bytes + bytes.len() > QUEUE_BYTES {
                    shared.send_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                o.queued_bytes += bytes.len();
                o.queue.push_back((part, bytes));
            }
        }
        Cmd::Reset(node) => {
            if let Some(o) = out.get_mut(&node) {
                o.acked = o.next_seq - 1;
                o.progress = Instant::now();
            }
        }
        Cmd::Heard {
            node,
            seq,
            ack_session,
            ack,
        } => {
            if let Some(o) = out.get_mut(&node) {
                if ack_session == shared.session && ack > o.acked && ack < o.next_seq {
                    o.acked = ack;
                    o.progress = Instant::now();
                }
                if seq > 0 && o.owe_ack.is_none() {
                    o.owe_ack = Some(Instant::now());
                }
            }
        }
    }
    true
}

/// Sends what peer `o` may have now.
fn pump(shared: &Shared, o: &mut Outbound, now: Instant) {
    if o.in_flight() > 0 && now.duration_since(o.progress) >= STALL {
        // Their PUBLISHes timed out: let them go (the digests repair it).
        o.acked = o.next_seq - 1;
        o.progress = now;
    }
    if o.in_flight() == 0 {
        o.progress = now;
    }
    while o.in_flight() < WINDOW && !o.queue.is_empty() {
        let family = o.queue[0].0.family.clone();
        let mut messages = Vec::new();
        let mut size = 0;
        while let Some((m, bytes)) = o.queue.front() {
            if m.family != family || (size > 0 && size + bytes.len() + 4 > MESSAGE_BUDGET) {
                break;
            }
            size += bytes.len() + 4;
            if let Some((_, bytes)) = o.queue.pop_front() {
                o.queued_bytes -= bytes.len();
                messages.push(bytes);
            }
        }
        let seq = o.next_seq;
        if send(shared, o, &family, seq, messages) {
            o.next_seq += 1;
        } else {
            // Not running: what waits is dropped (the digests repair it once it is).
            shared
                .send_errors
                .fetch_add(o.queue.len() as u64 + 1, Ordering::Relaxed);
            o.queue.clear();
            o.queued_bytes = 0;
            return;
        }
    }
    let ack_due = o
        .owe_ack
        .is_some_and(|t| now.duration_since(t) >= ACK_DELAY);
    let beat_due = o
        .last_sent
        .is_none_or(|t| now.duration_since(t) >= HEARTBEAT);
    if ack_due || beat_due {
        send(shared, o, "", 0, Vec::new());
    }
}

/// Seals and publishes one body to `o`; false when it could not be handed to res_pjsip.
fn send(shared: &Shared, o: &mut Outbound, family: &str, seq: u64, messages: Vec<Vec<u8>>) -> bool {
    let (ack_session, ack) = shared
        .heard()
        .get(&o.conf.node)
        .map_or((0, 0), |h| (h.session, h.seq));
    let frame = Frame {
        node: shared.identity.node,
        session: shared.session,
        seq,
        ack_session,
        ack,
        messages,
    };
    o.last_sent = Some(Instant::now());
    let Some(text) = shared.seal.seal(shared.identity.eid, family, &frame) else {
        shared.notices.say_once(
            "random",
            Level::Error,
            "the system gives no randomness for a nonce: nothing is sent over SIP",
        );
        return false;
    };
    let key = format!("publish {}", o.conf.publish);
    // Owed or not, an acknowledgement is not tried again before the next body.
    o.owe_ack = None;
    match bridge::publish(&o.conf.publish, &text) {
        Ok(()) => {
            let mut out = shared.out.lock().unwrap_or_else(|p| p.into_inner());
            let (bytes, frames) = out.entry(o.conf.node).or_default();
            *bytes += text.len() as u64;
            *frames += 1;
            drop(out);
            shared.notices.clear(&key);
            true
        }
        Err(why) => {
            shared.notices.say_once(
                &key,
                Level::Warning,
                &format!("cannot PUBLISH to node {} through outbound-publish '{}': {why} (it needs a type = outbound-publish section of that name with event = {EVENT} in pjsip.conf, and res_astdb_cluster_pjsip.so loaded)", o.conf.node, o.conf.publish),
            );
            false
        }
    }
}

fn peer_confs(cfg: &ClusterConfig) -> Vec<PeerConf> {
    cfg.nodes
        .iter()
        .filter_map(|n| {
            Some(PeerConf {
                node: n.node,
                section: n.section.clone(),
                publish: n.outbound_publish.clone()?,
            })
        })
        .collect()
}

/// A session number: the start time in ms, then 16 random bits (a restart gives a
/// higher one, see [`Shared`]'s body check).
fn new_session() -> u64 {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut r = [0u8; 2];
    let _ = getrandom::fill(&mut r);
    (ms << 16) | u64::from(u16::from_be_bytes(r))
}

pub struct PjsipLink {
    inbox: Arc<Inbox>,
    say: Say,
    shared: Option<Arc<Shared>>,
    thread: Option<JoinHandle<()>>,
    closed_because: String,
}

impl PjsipLink {
    pub fn new(inbox: Arc<Inbox>, say: Say) -> Self {
        PjsipLink {
            inbox,
            say,
            shared: None,
            thread: None,
            closed_because: "not started".into(),
        }
    }
}

impl Link for PjsipLink {
    fn configure(&mut self, cfg: &ClusterConfig, eid: Eid) {
        let g = &cfg.general;
        let Some(secret) = &g.cluster_secret else {
            self.shutdown();
            self.closed_because = "closed: no cluster_secret in [general]".into();
            return;
        };
        let identity = Identity {
            cluster_name: g.cluster_name.clone(),
            secret: secret.clone(),
            node: g.cluster_node,
            eid,
        };
        let peers = peer_confs(cfg);
        if let Some(shared) = &self.shared {
            if shared.identity == identity {
                if shared.peers() != peers {
                    *shared.peers.write().unwrap_or_else(|p| p.into_inner()) = peers.clone();
                    shared.tx.send(Cmd::Peers(peers));
                }
                return;
            }
        }
        self.shutdown();
        let shared = Arc::new(Shared {
            seal: Seal::new(&identity.cluster_name, secret),
            identity,
            session: new_session(),
            inbox: Arc::clone(&self.inbox),
            say: Arc::clone(&self.say),
            peers: RwLock::new(peers),
            heard: Mutex::default(),
            notices: Notices::new(Arc::clone(&self.say), Arc::clone(&self.inbox)),
            send_errors: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            out: Mutex::default(),
            tx: Queue::default(),
        });
        let for_thread = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name("astdb-cl-sip".into())
            .spawn(move || run(for_thread))
        {
            Ok(handle) => {
                bridge::set_inbound(Some(Arc::clone(&shared) as Arc<dyn bridge::Inbound>));
                self.thread = Some(handle);
                self.shared = Some(shared);
            }
            Err(e) => {
                (self.say)(
                    Level::Error,
                    &format!("could not start the SIP link thread: {e}"),
                );
                self.closed_because = format!("closed: {e}");
            }
        }
    }

    fn send(&mut self, to: Eid, msg: &Message) {
        let Some(shared) = &self.shared else {
            return;
        };
        let node = shared
            .heard()
            .iter()
            .find(|(_, h)| h.up && h.eid == Some(to))
            .map(|(n, _)| *n);
        match node {
            Some(node) => {
                shared.tx.send(Cmd::Send(node, msg.clone()));
            }
            None => {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn status(&self) -> LinkStatus {
        let Some(shared) = &self.shared else {
            return LinkStatus {
                state: self.closed_because.clone(),
                ..LinkStatus::default()
            };
        };
        let heard = shared.heard();
        let out = shared.out.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let peers = shared
            .peers()
            .into_iter()
            .map(|p| {
                let h = heard.get(&p.node);
                let (bytes_out, frames_out) = out.get(&p.node).copied().unwrap_or_default();
                PeerView {
                    node: p.node,
                    eid: h.and_then(|h| h.eid),
                    state: match h {
                        Some(h) if h.up => PeerState::Up,
                        _ if bridge::client_running(&p.publish) => PeerState::Connecting,
                        _ => PeerState::Down,
                    },
                    last_seen: h.and_then(|h| h.last).map(|(_, t)| t),
                    rtt: None,
                    bytes_in: h.map_or(0, |h| h.bytes_in),
                    bytes_out,
                    frames_in: h.map_or(0, |h| h.frames_in),
                    frames_out,
                    protocol: None,
                }
            })
            .collect();
        LinkStatus {
            state: if bridge::attached() {
                format!("SIP PUBLISH (Event: {EVENT}) through res_pjsip")
            } else {
                "waiting for res_astdb_cluster_pjsip.so".into()
            },
            peers,
            refusals: shared.notices.refusals(),
            send_errors: shared.send_errors.load(Ordering::Relaxed),
            undecodable: shared.undecodable.load(Ordering::Relaxed),
        }
    }

    fn shutdown(&mut self) {
        if let Some(shared) = self.shared.take() {
            // Waits for a body under way on a PJSIP thread.
            bridge::set_inbound(None);
            shared.tx.send(Cmd::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn node_of(&self, eid: Eid) -> Option<u32> {
        let shared = self.shared.as_ref()?;
        let heard = shared.heard();
        heard
            .iter()
            .find(|(_, h)| h.eid == Some(eid))
            .map(|(n, _)| *n)
    }
}

impl Drop for PjsipLink {
    fn drop(&mut self) {
        self.shutdown();
    }
}
