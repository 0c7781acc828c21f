//! The transport: an authenticated, encrypted TCP mesh between nodes. It
//! moves opaque payloads between configured peers and reports events; it
//! knows nothing of Asterisk or of the replication engine.
//!
//! One connection per peer: the node with the lower number dials, the higher
//! accepts. A node that starts knocks at each lower-numbered peer (a connection that
//! only says its hello), so that the peer's dialer calls at once rather than at its
//! next try, up to a second later. Every byte after a 32-byte cleartext hello is a Noise
//! (`NNpsk0`, PSK from `cluster_secret`) message; see `wire` for the format.
//! The hello and the handshake carry the range of protocol versions each side
//! offers, and the connection speaks the highest both do.
//!
//! Threads (all started here, all joined by `stop`): one listener, one dialer
//! per peer with a higher number, one short-lived knock per peer with a lower
//! number, and per live connection a reader (the thread
//! that did the handshake) and a writer. None blocks longer than ~100 ms
//! without checking for stop.

mod connect;
mod handshake;
mod peer;
mod rejects;
pub mod wire;

use crate::eid::Eid;
use crossbeam_channel::Sender;
use handshake::{Local, Refusal};
use peer::{Out, Peer};
use rejects::Rejects;
use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    pub node: u32,
    pub name: String,
    /// host:port; a hostname is resolved again at each connect.
    pub address: String,
}

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub cluster_name: String,
    pub secret: String,
    pub local_node: u32,
    pub local_eid: Eid,
    pub bind: SocketAddr,
    pub peers: Vec<PeerAddr>,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    pub max_payload: usize,
    pub send_queue_bytes: usize,
    /// The protocol versions this node offers; the default, every one this build
    /// speaks ([`wire::PROTOCOL_VERSIONS`]), is what a cluster wants: a narrower
    /// range is for tests that play an older build.
    pub protocol_versions: RangeInclusive<u8>,
}

impl TransportConfig {
    /// Defaults for everything but identity, secret and addresses.
    pub fn new(cluster_name: &str, secret: &str, local_node: u32, local_eid: Eid) -> Self {
        TransportConfig {
            cluster_name: cluster_name.into(),
            secret: secret.into(),
            local_node,
            local_eid,
            bind: SocketAddr::from(([0, 0, 0, 0], 5039)),
            peers: Vec::new(),
            heartbeat: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            max_payload: 16 << 20,
            send_queue_bytes: 64 << 20,
            protocol_versions: wire::PROTOCOL_VERSIONS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    PeerUp {
        node: u32,
        eid: Eid,
    },
    PeerDown {
        node: u32,
        eid: Eid,
        reason: String,
    },
    Received {
        node: u32,
        eid: Eid,
        payload: Vec<u8>,
    },
    /// A connection was refused or broken for `cause`; sent when it is logged, once per
    /// peer and cause until the peer connects. `who`: "node 3", or the remote IP.
    Refused {
        who: String,
        node: Option<u32>,
        cause: String,
        detail: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Notice,
    Warning,
    Error,
}

pub(crate) type LogFn = Arc<dyn Fn(LogLevel, String) + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    NotConnected,
    QueueFull,
    TooLarge,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::NotConnected => "peer not connected",
            SendError::QueueFull => "send queue full",
            SendError::TooLarge => "payload too large",
        })
    }
}

impl std::error::Error for SendError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Up,
    Connecting,
    Down,
}

#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub node: u32,
    pub name: String,
    pub address: String,
    pub eid: Option<Eid>,
    pub state: PeerState,
    pub connected_since: Option<SystemTime>,
    pub last_seen: Option<SystemTime>,
    pub rtt: Option<Duration>,
    /// The protocol version spoken on the connection, while it is up.
    pub protocol: Option<u8>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub send_queue_bytes: usize,
    pub dropped_sends: u64,
}

/// Settings the threads read.
pub(crate) struct Settings {
    pub local_node: u32,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    pub max_payload: usize,
    pub send_queue_bytes: usize,
}

pub(crate) struct Shared {
    pub cfg: Settings,
    local: Local,
    peers: RwLock<HashMap<u32, Arc<Peer>>>,
    stop: AtomicBool,
    pub events: Sender<Event>,
    pub log: LogFn,
    pub rejects: Rejects,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pub epoch: Instant,
    epoch_wall: SystemTime,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Counts a refused or broken connection, logs it and tells the owner once per
    /// peer and cause (see [`Rejects::record`]). Connections this node breaks off
    /// because it is stopping are neither: nothing went wrong with the peer.
    pub fn refused(&self, who: &str, node: Option<u32>, context: &str, reject: &wire::Reject) {
        if self.stopping() {
            return;
        }
        if self.rejects.record(&self.log, who, context, reject) {
            let _ = self.events.send(Event::Refused {
                who: who.to_string(),
                node,
                cause: reject.cause.as_str().to_string(),
                detail: reject.detail.clone(),
            });
        }
    }

    fn peer(&self, node: u32) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .cloned()
    }

    /// Starts a thread that `stop` will join.
    fn spawn(self: &Arc<Self>, name: String, f: impl FnOnce() + Send + 'static) {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        // Reap finished threads so the list stays short on long runs.
        let mut i = 0;
        while i < threads.len() {
            if threads[i].is_finished() {
                let _ = threads.swap_remove(i).join();
            } else {
                i += 1;
            }
        }
        match std::thread::Builder::new().name(name.clone()).spawn(f) {
            Ok(h) => threads.push(h),
            Err(e) => (self.log)(
                LogLevel::Error,
                format!("astdb cluster: cannot start thread {name}: {e}"),
            ),
        }
    }

    fn live_threads(&self) -> usize {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|h| !h.is_finished())
            .count()
    }
}

pub struct Transport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listener: Option<JoinHandle<()>>,
}

/// At most this many connections may be in their handshake at once; more
/// are dropped (a port scan must not cost a thread each).
const MAX_HANDSHAKES: usize = 64;

impl Transport {
    pub fn start(
        cfg: TransportConfig,
        events: Sender<Event>,
        log: Arc<dyn Fn(LogLevel, String) + Send + Sync>,
    ) -> Result<Transport, String> {
        if cfg.secret.is_empty() {
            return Err("no cluster_secret: the network stays closed".into());
        }
        if cfg.max_payload > u32::MAX as usize {
            return Err(format!("max_payload {} is over 4 GiB", cfg.max_payload));
        }
        if cfg.heartbeat.is_zero() || cfg.peer_timeout <= cfg.heartbeat {
            return Err(format!(
                "peer_timeout ({:?}) must be longer than heartbeat ({:?})",
                cfg.peer_timeout, cfg.heartbeat
            ));
        }
        let (ours, all) = (&cfg.protocol_versions, &wire::PROTOCOL_VERSIONS);
        if ours.is_empty() || ours.start() < all.start() || ours.end() > all.end() {
            return Err(format!(
                "protocol versions {}: this build speaks {}",
                wire::show_versions(ours),
                wire::show_versions(all)
            ));
        }
        let listener = TcpListener::bind(cfg.bind)
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
        let shared = Arc::new(Shared {
            cfg: Settings {
                local_node: cfg.local_node,
                heartbeat: cfg.heartbeat,
                peer_timeout: cfg.peer_timeout,
                max_payload: cfg.max_payload,
                send_queue_bytes: cfg.send_queue_bytes,
            },
            local: Local {
                hello: wire::Hello {
                    min_version: *cfg.protocol_versions.start(),
                    cluster_hash: wire::cluster_hash(&cfg.cluster_name),
                    node: cfg.local_node,
                    eid: cfg.local_eid,
                },
                versions: cfg.protocol_versions.clone(),
                psk: wire::derive_psk(&cfg.cluster_name, &cfg.secret),
            },
            peers: RwLock::new(HashMap::new()),
            stop: AtomicBool::new(false),
            events,
            log,
            rejects: Rejects::default(),
            threads: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            epoch_wall: SystemTime::now(),
        });
        let l = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("astdb-tx-listen".into())
                .spawn(move || listen(&shared, listener))
                .map_err(|e| format!("cannot start the listener thread: {e}"))?
        };
        let t = Transport {
            shared,
            local_addr,
            listener: Some(l),
        };
        t.set_peers(cfg.peers);
        Ok(t)
    }

    /// Where we actually listen (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues `payload` for `node`. Never blocks on the network: a full queue
    /// is an error (and counted); the engine's anti-entropy repairs drops.
    pub fn send(&self, node: u32, payload: Vec<u8>) -> Result<(), SendError> {
        if payload.len() > self.shared.cfg.max_payload {
            return Err(SendError::TooLarge);
        }
        let peer = self.shared.peer(node).ok_or(SendError::NotConnected)?;
        let conn = peer.state().conn.clone().ok_or(SendError::NotConnected)?;
        let len = payload.len();
        let queued = conn.queued.fetch_add(len, Ordering::Relaxed);
        // An empty queue takes any payload, so one larger than the queue can still go.
        if queued > 0 && queued + len > self.shared.cfg.send_queue_bytes {
            conn.queued.fetch_sub(len, Ordering::Relaxed);
            peer.dropped_sends.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::QueueFull);
        }
        if conn.queue.send(Out::Data(payload)).is_err() {
            conn.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(SendError::NotConnected);
        }
        Ok(())
    }

    /// Bytes queued for `node` and not yet written to its connection (0 when it is
    /// not connected).
    pub fn queued_bytes(&self, node: u32) -> usize {
        self.shared.peer(node).map_or(0, |p| {
            p.state()
                .conn
                .as_ref()
                .map_or(0, |c| c.queued.load(Ordering::Relaxed))
        })
    }

    /// Applies a new peer list: new peers are dialed or awaited, removed ones
    /// disconnected, unchanged ones left alone. A changed address is a new peer.
    pub fn set_peers(&self, peers: Vec<PeerAddr>) {
        let shared = &self.shared;
        let local = shared.cfg.local_node;
        let mut map = shared.peers.write().unwrap_or_else(|e| e.into_inner());
        let wanted: HashMap<u32, PeerAddr> = peers
            .into_iter()
            .filter(|p| p.node != local)
            .map(|p| (p.node, p))
            .collect();
        map.retain(|node, peer| {
            let keep = wanted
                .get(node)
                .is_some_and(|w| w.address == peer.addr.address && w.name == peer.addr.name);
            if !keep {
                peer.removed.store(true, Ordering::Release);
                peer.disconnect("removed from the configuration");
            }
            keep
        });
        for (node, addr) in wanted {
            if map.contains_key(&node) {
                continue;
            }
            let peer = Arc::new(Peer::new(addr));
            map.insert(node, Arc::clone(&peer));
            let shared2 = Arc::clone(shared);
            if node > local {
                shared.spawn(format!("astdb-tx-d{node}"), move || {
                    dial_loop(&shared2, &peer)
                });
            } else {
                shared.spawn(format!("astdb-tx-k{node}"), move || knock(&shared2, &peer));
            }
        }
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let shared = &self.shared;
        let map = shared.peers.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<PeerStatus> = map
            .values()
            .map(|p| {
                let st = p.state();
                let seen = p.last_seen.load(Ordering::Relaxed);
                PeerStatus {
                    node: p.addr.node,
                    name: p.addr.name.clone(),
                    address: p.addr.address.clone(),
                    eid: st.eid,
                    state: if st.conn.is_some() {
                        PeerState::Up
                    } else if st.dialing {
                        PeerState::Connecting
                    } else {
                        PeerState::Down
                    },
                    connected_since: st.connected_since,
                    last_seen: (seen > 0)
                        .then(|| shared.epoch_wall + Duration::from_millis(seen - 1)),
                    rtt: st.rtt,
                    protocol: st.protocol,
                    bytes_in: p.bytes_in.load(Ordering::Relaxed),
                    bytes_out: p.bytes_out.load(Ordering::Relaxed),
                    frames_in: p.frames_in.load(Ordering::Relaxed),
                    frames_out: p.frames_out.load(Ordering::Relaxed),
                    send_queue_bytes: st
                        .conn
                        .as_ref()
                        .map_or(0, |c| c.queued.load(Ordering::Relaxed)),
                    dropped_sends: p.dropped_sends.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by_key(|p| p.node);
        out
    }

    /// Every reject cause with how often it happened, zeros included.
    pub fn rejects(&self) -> Vec<(String, u64)> {
        self.shared.rejects.counts()
    }

    /// Closes every connection and joins every thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let shared = &self.shared;
        shared.stop.store(true, Ordering::Release);
        for p in shared
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            p.removed.store(true, Ordering::Release);
            p.disconnect("this node is stopping");
        }
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        // Threads spawned before the stop flag was seen are in the list by now.
        loop {
            let batch: Vec<JoinHandle<()>> =
                std::mem::take(&mut *shared.threads.lock().unwrap_or_else(|e| e.into_inner()));
            if batch.is_empty() {
                break;
            }
            for h in batch {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        if self.listener.is_some() {
            self.shutdown();
        }
    }
}

fn listen(shared: &Arc<Shared>, listener: TcpListener) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, from)) => {
                if shared.live_threads() >= MAX_HANDSHAKES + 2 * shared_peer_count(shared) {
                    drop(stream);
                    continue;
                }
                let shared2 = Arc::clone(shared);
                shared.spawn("astdb-tx-accept".into(), move || {
                    accept_one(&shared2, stream, from)
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                (shared.log)(
                    LogLevel::Warning,
                    format!("astdb cluster: accept failed: {e}"),
                );
                std::thread::sleep(handshake::POLL);
            }
        }
    }
}

fn shared_peer_count(shared: &Shared) -> usize {
    shared.peers.read().map_or(0, |m| m.len())
}

fn accept_one(shared: &Arc<Shared>, mut stream: TcpStream, from: SocketAddr) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let local = shared.cfg.local_node;
    // A higher-numbered peer never dials: its hello is a knock (it has started), and
    // its dialer here calls it now. Not a refusal: nothing is logged or counted.
    let knocked = std::cell::Cell::new(false);
    let allowed = |node: u32| -> Result<(), String> {
        if node == local {
            return Err("that is this node's own number".into());
        }
        match shared.peer(node) {
            None => Err("not configured as a peer".into()),
            Some(peer) if node > local => {
                peer.knocked.store(true, Ordering::Release);
                knocked.set(true);
                Err(format!(
                    "node {node} should wait for our call (the lower number dials)"
                ))
            }
            Some(_) => Ok(()),
        }
    };
    let res = handshake::accept(
        &mut stream,
        &shared.local,
        &allowed,
        shared.cfg.peer_timeout,
        &shared.stop,
    );
    match res {
        Ok(est) => {
            let Some(peer) = shared.peer(est.peer.node) else {
                return;
            };
            peer::run(shared, &peer, stream, est, true);
        }
        Err(Refusal { reject, node }) => {
            if shared.stopping() || knocked.get() {
                return;
            }
            let who = node.map_or_else(|| from.ip().to_string(), |n| format!("node {n}"));
            let ctx = match node {
                Some(n) => format!("astdb cluster: connection from node {n} at {from} refused"),
                None => format!("astdb cluster: connection from {from} refused"),
            };
            shared.refused(&who, node, &ctx, &reject);
        }
    }
}

/// Backoff between dial attempts: doubling from 100 ms to 1 s, with jitter. A peer
/// that comes back is only ever called by the lower-numbered side, so a long cap would
/// leave a restarted server out of the cluster for that long; a refused connection
/// costs next to nothing, so once a second is cheap. A knock from the peer ends the
/// wait (a node that starts is called within about 10 ms, not up to a second later).
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    fn new(node: u32) -> Backoff {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Backoff {
            next: Self::MIN,
            seed: t ^ (u64::from(node) << 32) | 1,
        }
    }

    /// The wait before the next attempt: the current step +/- 25%.
    fn wait(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next.as_millis() as u64;
        let jitter = self.seed % (base / 2 + 1);
        self.next = (self.next * 2).min(Self::MAX);
        Duration::from_millis(base - base / 4 + jitter)
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

fn dial_loop(shared: &Arc<Shared>, peer: &Arc<Peer>) {
    let node = peer.addr.node;
    let gone = || shared.stopping() || peer.removed.load(Ordering::Acquire);
    let mut backoff = Backoff::new(node);
    while !gone() {
        peer.state().dialing = true;
        let started = Instant::now();
        // A knock from before this attempt is answered by it.
        peer.knocked.store(false, Ordering::Release);
        dial_once(shared, peer, &gone);
        peer.state().dialing = false;
        // A connection that lived a while was good: retry quickly after it.
        if started.elapsed() > shared.cfg.peer_timeout {
            backoff.reset();
        }
        let until = Instant::now() + backoff.wait();
        // A knock (the peer has started) ends the wait, though not before the shortest
        // backoff: knocks are not authenticated, so they must not make us dial faster.
        let soonest = started + Backoff::MIN;
        loop {
            let now = Instant::now();
            if gone() || now >= until {
                break;
            }
            if now >= soonest && peer.knocked.swap(false, Ordering::AcqRel) {
                backoff.reset();
                break;
            }
            std::thread::sleep(KNOCK_LOOK.min(until - now));
        }
    }
}

/// How often a dialer waiting for its next try looks for a knock.
const KNOCK_LOOK: Duration = Duration::from_millis(10);

/// Tells `peer`, a lower-numbered node (which dials us), that this node has started:
/// a connection that says our hello, waits for the peer's answer and closes. The peer's
/// dialer then calls at once. A peer that is down is not knocked again: when it starts
/// its own dialer calls us.
fn knock(shared: &Arc<Shared>, peer: &Arc<Peer>) {
    let gone = || shared.stopping() || peer.removed.load(Ordering::Acquire);
    let Ok(addrs) = peer.addr.address.to_socket_addrs() else {
        return;
    };
    for addr in addrs {
        if let Ok(mut stream) = connect::connect(addr, Duration::from_secs(1), &gone) {
            handshake::knock(&mut stream, &shared.local, &shared.stop);
            return;
        }
    }
}

fn dial_once(shared: &Arc<Shared>, peer: &Arc<Peer>, gone: &dyn Fn() -> bool) {
    let node = peer.addr.node;
    let address = &peer.addr.address;
    let addrs: Vec<SocketAddr> = match address.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            let r = wire::Reject::new(wire::Cause::Unreachable, format!("cannot resolve: {e}"));
            dial_problem(shared, peer, &r);
            return;
        }
    };
    let timeout = shared.cfg.peer_timeout.max(Duration::from_secs(1));
    let mut last_err = None;
    for addr in addrs {
        match connect::connect(addr, timeout, gone) {
            Ok(mut stream) => {
                match handshake::dial(
                    &mut stream,
                    &shared.local,
                    node,
                    shared.cfg.peer_timeout,
                    &shared.stop,
                ) {
                    Ok(est) => peer::run(shared, peer, stream, est, false),
                    Err(Refusal { reject, .. }) => {
                        if !gone() {
                            dial_problem(shared, peer, &reject);
                        }
                    }
                }
                return;
            }
            Err(e) => last_err = Some(format!("{addr}: {e}")),
        }
    }
    if gone() {
        return;
    }
    // Not being able to connect is not a reject; log it once until the peer is up.
    if !peer.connect_logged.swap(true, Ordering::Relaxed) {
        let detail = last_err.unwrap_or_else(|| "no address".into());
        (shared.log)(
            LogLevel::Notice,
            format!(
                "astdb cluster: cannot connect to {}: {detail} (retrying)",
                peer.describe()
            ),
        );
    }
}

fn dial_problem(shared: &Shared, peer: &Peer, reject: &wire::Reject) {
    let ctx = format!("astdb cluster: connection to {} refused", peer.describe());
    shared.refused(&peer.who(), Some(peer.addr.node), &ctx, reject);
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn a_peer_down_for_long_is_still_called_about_once_a_second() {
        let mut b = Backoff::new(2);
        let waits: Vec<Duration> = (0..50).map(|_| b.wait()).collect();
        assert!(waits[0] <= Duration::from_millis(125), "{waits:?}");
        assert!(waits[1] > waits[0] / 2, "it backs off: {waits:?}");
        for w in &waits[10..] {
            assert!(
                *w >= Duration::from_millis(750) && *w <= Duration::from_millis(1250),
                "{waits:?}"
            );
        }
        b.reset();
        assert!(b.wait() <= Duration::from_millis(125));
    }
}
