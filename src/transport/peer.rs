//! A configured peer and the life of one authenticated connection to it:
//! the thread that finished the handshake reads, a second thread writes
//! (queued payloads, heartbeats, the silence check).

use super::handshake::{Established, POLL};
use super::wire::{Cause, Frame, FrameReader, FrameWriter, Reject};
use super::{Event, LogLevel, PeerAddr, Shared};
use crate::eid::Eid;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::io::{self, BufWriter, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

pub(crate) struct Peer {
    pub addr: PeerAddr,
    /// Set when the peer left the configuration or the transport stops.
    pub removed: AtomicBool,
    state: Mutex<PeerState>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub dropped_sends: AtomicU64,
    /// Milliseconds since the transport's epoch, plus one; 0 = never.
    pub last_seen: AtomicU64,
    /// "cannot connect" was logged; cleared when the peer comes up.
    pub connect_logged: AtomicBool,
    /// The (higher-numbered) peer called to say it has started: its dialer tries at
    /// once instead of waiting out its backoff.
    pub knocked: AtomicBool,
}

#[derive(Default)]
pub(crate) struct PeerState {
    pub conn: Option<Arc<Conn>>,
    pub eid: Option<Eid>,
    pub dialing: bool,
    pub connected_since: Option<SystemTime>,
    pub rtt: Option<Duration>,
    /// The version the current connection speaks.
    pub protocol: Option<u8>,
}

pub(crate) enum Out {
    Data(Vec<u8>),
    Pong(u64),
}

/// One live connection, as seen by senders and by whoever closes it.
pub(crate) struct Conn {
    stream: TcpStream,
    pub queue: Sender<Out>,
    pub queued: AtomicUsize,
    closing: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Conn {
    /// Closes the socket (which wakes both threads); the first reason given wins.
    fn close(&self, reason: &str) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.to_string());
        }
        self.closing.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Peer {
    pub fn new(addr: PeerAddr) -> Peer {
        Peer {
            addr,
            removed: AtomicBool::new(false),
            state: Mutex::new(PeerState::default()),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            dropped_sends: AtomicU64::new(0),
            last_seen: AtomicU64::new(0),
            connect_logged: AtomicBool::new(false),
            knocked: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn who(&self) -> String {
        format!("node {}", self.addr.node)
    }

    pub fn describe(&self) -> String {
        format!(
            "node {} ({}, {})",
            self.addr.node, self.addr.name, self.addr.address
        )
    }

    /// Closes the current connection, if any.
    pub fn disconnect(&self, reason: &str) {
        if let Some(c) = self.state().conn.clone() {
            c.close(reason);
        }
    }
}

fn now_ms(shared: &Shared) -> u64 {
    shared.epoch.elapsed().as_millis() as u64 + 1
}

/// Hands an event over without blocking forever on a full channel.
fn emit(shared: &Shared, mut ev: Event, give_up: &dyn Fn() -> bool) {
    loop {
        match shared.events.send_timeout(ev, POLL) {
            Ok(()) => return,
            Err(crossbeam_channel::SendTimeoutError::Timeout(e)) => {
                if give_up() || shared.stopping() {
                    return;
                }
                ev = e;
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return,
        }
    }
}

/// Runs an established connection until it ends; blocks the calling thread.
/// `from` names the remote address for log lines. On the accepting side
/// (`confirm_first`), the peer only counts as up once its first frame has
/// authenticated: a replayed handshake gets that far but never further.
pub(crate) fn run(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    stream: TcpStream,
    est: Established,
    confirm_first: bool,
) {
    let session = Arc::new(est.session);
    let eid = est.peer.eid;
    let protocol = est.protocol;
    let mut reader = FrameReader::new(Arc::clone(&session), shared.cfg.max_payload);
    let mut stream = stream;
    let mut first = Vec::new();
    if confirm_first {
        match first_frame(shared, &mut stream, &mut reader) {
            Ok(f) => first.push(f),
            Err(r) => {
                let ctx = format!("connection from {} closed", peer.describe());
                shared.refused(&peer.who(), Some(peer.addr.node), &ctx, &r);
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let Ok(close_half) = stream.try_clone() else {
        return;
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let conn = Arc::new(Conn {
        stream: close_half,
        queue: tx,
        queued: AtomicUsize::new(0),
        closing: AtomicBool::new(false),
        reason: Mutex::new(None),
    });

    // Install: replace a stale connection (the peer restarted before we noticed).
    {
        let mut st = peer.state();
        if peer.removed.load(Ordering::Acquire) || shared.stopping() {
            return;
        }
        if let Some(old) = st.conn.take() {
            old.close("replaced by a new connection");
            emit(
                shared,
                Event::PeerDown {
                    node: peer.addr.node,
                    eid: st.eid.unwrap_or_default(),
                    reason: "replaced by a new connection".into(),
                },
                &|| false,
            );
        }
        st.conn = Some(Arc::clone(&conn));
        st.eid = Some(eid);
        st.connected_since = Some(SystemTime::now());
        st.rtt = None;
        st.protocol = Some(protocol);
        peer.last_seen.store(now_ms(shared), Ordering::Relaxed);
        emit(
            shared,
            Event::PeerUp {
                node: peer.addr.node,
                eid,
            },
            &|| false,
        );
    }
    shared.rejects.forget(&peer.who());
    peer.connect_logged.store(false, Ordering::Relaxed);
    (shared.log)(
        LogLevel::Notice,
        format!("{} is up (EID {eid}, protocol {protocol})", peer.describe()),
    );

    let writer = {
        let (shared, peer, conn, session) = (
            Arc::clone(shared),
            Arc::clone(peer),
            Arc::clone(&conn),
            Arc::clone(&session),
        );
        std::thread::Builder::new()
            .name(format!("astdb-tx-w{}", peer.addr.node))
            .spawn(move || write_loop(&shared, &peer, &conn, write_half, session, rx))
    };
    let reason = match writer {
        Ok(writer) => {
            let reason = read_loop(shared, peer, &conn, &mut stream, &mut reader, eid, first);
            conn.close(&reason);
            let _ = writer.join();
            conn.reason().unwrap_or(reason)
        }
        Err(e) => format!("cannot start writer thread: {e}"),
    };
    conn.close(&reason);

    let mut st = peer.state();
    if st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
        st.conn = None;
        st.connected_since = None;
        st.rtt = None;
        st.protocol = None;
        emit(
            shared,
            Event::PeerDown {
                node: peer.addr.node,
                eid,
                reason: reason.clone(),
            },
            &|| false,
        );
        drop(st);
        (shared.log)(
            LogLevel::Notice,
            format!("{} is down: {reason}", peer.describe()),
        );
    }
}

/// Reads until the first frame; anything else in time is a refusal.
fn first_frame(
    shared: &Shared,
    stream: &mut TcpStream,
    reader: &mut FrameReader<Arc<snow::StatelessTransportState>>,
) -> Result<Frame, Reject> {
    let deadline = Instant::now() + shared.cfg.peer_timeout;
    loop {
        if let Some(f) = reader.next_frame()? {
            return Ok(f);
        }
        if shared.stopping() {
            return Err(Reject::new(Cause::RefusedByPeer, "this node is stopping"));
        }
        if Instant::now() >= deadline {
            return Err(Reject::new(
                Cause::HandshakeTimeout,
                "no frame after the handshake",
            ));
        }
        match reader.fill_from(stream) {
            Ok(0) => {
                // Every check of a peer is in the handshake, so one that closes now
                // has gone away (unloading, stopping) rather than refused us.
                return Err(Reject::new(
                    Cause::ConnectionLost,
                    "the peer closed the connection right after the handshake",
                ));
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(Reject::new(Cause::ConnectionLost, e.to_string())),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Returns why the connection ended.
fn read_loop(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    conn: &Arc<Conn>,
    stream: &mut TcpStream,
    reader: &mut FrameReader<Arc<snow::StatelessTransportState>>,
    eid: Eid,
    first: Vec<Frame>,
) -> String {
    let node = peer.addr.node;
    let mut pending = first;
    let mut records_seen = reader.records;
    loop {
        // Deliver everything already buffered before reading more.
        loop {
            for frame in pending.drain(..) {
                match frame {
                    Frame::Ping(stamp) => {
                        let _ = conn.queue.send(Out::Pong(stamp));
                    }
                    Frame::Pong(stamp) => {
                        let now = shared.epoch.elapsed().as_nanos() as u64;
                        peer.state().rtt = Some(Duration::from_nanos(now.saturating_sub(stamp)));
                    }
                    Frame::Data(payload) => {
                        if conn.closing() {
                            return "closing".into();
                        }
                        // While the event waits for room, this connection reads
                        // nothing, heartbeats included; the peer is not silent, only
                        // unheard: its last frame counts as just seen.
                        emit(shared, Event::Received { node, eid, payload }, &|| {
                            peer.last_seen.store(now_ms(shared), Ordering::Relaxed);
                            conn.closing()
                        });
                    }
                }
            }
            match reader.next_frame() {
                Ok(Some(f)) => pending.push(f),
                Ok(None) => break,
                Err(r) => {
                    let ctx = format!("connection with {} closed", peer.describe());
                    shared.refused(&peer.who(), Some(peer.addr.node), &ctx, &r);
                    return r.to_string();
                }
            }
        }
        peer.frames_in
            .fetch_add(reader.records - records_seen, Ordering::Relaxed);
        records_seen = reader.records;
        if conn.closing() || shared.stopping() {
            return conn
                .reason()
                .unwrap_or_else(|| "this node is stopping".into());
        }
        match reader.fill_from(stream) {
            Ok(0) => return "connection closed by the peer".into(),
            Ok(n) => {
                peer.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                peer.last_seen.store(now_ms(shared), Ordering::Relaxed);
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return format!("read failed: {e}"),
        }
    }
}

const WRITE_BUF: usize = 256 * 1024;

fn write_loop(
    shared: &Shared,
    peer: &Peer,
    conn: &Conn,
    stream: TcpStream,
    session: Arc<snow::StatelessTransportState>,
    rx: Receiver<Out>,
) {
    let cfg = &shared.cfg;
    let mut w = BufWriter::with_capacity(WRITE_BUF, stream);
    let mut fw = FrameWriter::new(session);
    let mut next_ping = Instant::now();
    let result: io::Result<()> = (|| loop {
        if conn.closing() || shared.stopping() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next_ping {
            let stamp = shared.epoch.elapsed().as_nanos() as u64;
            let n = fw.ping(&mut w, stamp)?;
            count_out(peer, n, 1);
            w.flush()?;
            next_ping = now + cfg.heartbeat;
            let seen = peer.last_seen.load(Ordering::Relaxed);
            let silent = now_ms(shared).saturating_sub(seen);
            if silent > cfg.peer_timeout.as_millis() as u64 {
                conn.close(&format!("no heartbeat for {silent} ms"));
                return Ok(());
            }
        }
        let wait = next_ping.saturating_duration_since(now).min(POLL);
        let first = match rx.recv_timeout(wait) {
            Ok(o) => o,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        // Coalesce: write everything queued, then one flush (one syscall for many frames).
        let mut item = Some(first);
        while let Some(o) = item.take() {
            match o {
                Out::Data(p) => {
                    let (n, records) = fw.data(&mut w, &p)?;
                    conn.queued.fetch_sub(p.len(), Ordering::Relaxed);
                    count_out(peer, n, records);
                }
                Out::Pong(stamp) => {
                    let n = fw.pong(&mut w, stamp)?;
                    count_out(peer, n, 1);
                }
            }
            match rx.try_recv() {
                Ok(o) => item = Some(o),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            }
        }
        w.flush()?;
    })();
    if let Err(e) = result {
        conn.close(&format!("write failed: {e}"));
    }
}

fn count_out(peer: &Peer, bytes: usize, records: u64) {
    peer.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    peer.frames_out.fetch_add(records, Ordering::Relaxed);
}
