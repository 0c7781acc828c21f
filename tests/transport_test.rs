//! The transport over real sockets on 127.0.0.1: mesh forming, delivery,
//! reconnects, every reject cause, replay, stop and reload.
//!
//! Tests run one at a time (SERIAL): the thread-count test reads
//! /proc/self/task, which other tests' threads would disturb.

use crossbeam_channel::{unbounded, Receiver};
use res_astdb_cluster::eid::Eid;
use res_astdb_cluster::transport::wire::{self, Hello};
use res_astdb_cluster::transport::{
    Event, LogLevel, PeerAddr, PeerState, SendError, Transport, TransportConfig,
};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const CLUSTER: &str = "test.cluster";
const SECRET: &str = "a.very.secret.cluster.key";

fn eid(n: u32) -> Eid {
    Eid([0x02, 0, 0, 0, 0, n as u8])
}

struct Node {
    t: Option<Transport>,
    events: Receiver<Event>,
    logs: Arc<Mutex<Vec<(LogLevel, String)>>>,
    addr: SocketAddr,
    n: u32,
}

impl Node {
    fn t(&self) -> &Transport {
        self.t.as_ref().unwrap()
    }

    fn logs_containing(&self, s: &str) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(s))
            .map(|(_, l)| l.clone())
            .collect()
    }

    fn reject_count(&self, cause: &str) -> u64 {
        self.t()
            .rejects()
            .into_iter()
            .find(|(c, _)| c == cause)
            .map_or(0, |(_, n)| n)
    }

    fn stop(&mut self) {
        if let Some(t) = self.t.take() {
            t.stop();
        }
    }
}

fn config(n: u32, bind: SocketAddr) -> TransportConfig {
    let mut c = TransportConfig::new(CLUSTER, SECRET, n, eid(n));
    c.bind = bind;
    c.heartbeat = Duration::from_millis(50);
    c.peer_timeout = Duration::from_millis(600);
    c
}

fn start(cfg: TransportConfig) -> Node {
    let (tx, rx) = unbounded();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let l2 = Arc::clone(&logs);
    let n = cfg.local_node;
    let t = Transport::start(
        cfg,
        tx,
        Arc::new(move |lvl, msg| l2.lock().unwrap().push((lvl, msg))),
    )
    .expect("transport starts");
    let addr = t.local_addr();
    Node {
        t: Some(t),
        events: rx,
        logs,
        addr,
        n,
    }
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn peer(n: &Node) -> PeerAddr {
    PeerAddr {
        node: n.n,
        name: format!("n{}", n.n),
        address: n.addr.to_string(),
    }
}

/// Starts `count` nodes, numbered from 1, all configured with each other.
fn mesh(count: u32) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=count).map(|n| start(config(n, local()))).collect();
    // Higher numbers first, so they know their callers before the calls come.
    for n in nodes.iter().rev() {
        let others = nodes.iter().filter(|o| o.n != n.n).map(peer).collect();
        n.t().set_peers(others);
    }
    nodes
}

/// Waits for the first event matching `f`, failing after `secs`.
fn wait_for(rx: &Receiver<Event>, secs: u64, what: &str, f: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) if f(&ev) => return ev,
            Ok(_) => {}
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// Waits until `n` has seen every one of `peers` come up, in any order.
fn wait_up(n: &Node, peers: &[u32]) {
    let mut left: Vec<u32> = peers.to_vec();
    while !left.is_empty() {
        let ev = wait_for(
            &n.events,
            10,
            &format!("node {} sees {left:?} up", n.n),
            |e| matches!(e, Event::PeerUp { .. }),
        );
        if let Event::PeerUp { node, .. } = ev {
            left.retain(|&p| p != node);
        }
    }
}

fn until(secs: u64, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn received(rx: &Receiver<Event>, from: u32, count: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < count {
        if let Event::Received { node, payload, .. } =
            wait_for(rx, 20, "payloads", |e| matches!(e, Event::Received { .. }))
        {
            assert_eq!(node, from);
            out.push(payload);
        }
    }
    out
}

/// No connection and no delivery within 300 ms (a refusal, which is reported, may come).
fn no_events(n: &Node, what: &str) {
    let until = std::time::Instant::now() + Duration::from_millis(300);
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        match n.events.recv_timeout(left) {
            Ok(Event::Refused { .. }) => continue,
            Ok(ev) => panic!("{what}: unexpected event {ev:?}"),
            Err(_) => break,
        }
    }
}

/// Names of this process's live transport threads ("astdb-tx-*"); the test
/// harness's own threads come and go on their own. A thread that has been joined can
/// stay listed in /proc for a moment while the kernel ends it: by then it has given up
/// the process's memory (its status shows no VmRSS) or is a zombie, and is not counted.
fn threads() -> Vec<String> {
    let live = |status: &str| {
        status.contains("\nVmRSS:")
            && !status.contains("State:\tZ")
            && !status.contains("State:\tX")
    };
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.ok()?.path().join("status")).ok()?;
            let name = status
                .strip_prefix("Name:")?
                .lines()
                .next()?
                .trim()
                .to_string();
            live(&status).then_some(name)
        })
        .filter(|s| s.starts_with("astdb-tx"))
        .collect();
    v.sort();
    v
}

#[test]
fn three_nodes_form_a_full_mesh_and_deliver_in_order_both_ways() {
    let _s = serial();
    let mut nodes = mesh(3);
    for n in &nodes {
        let others: Vec<u32> = (1..=3).filter(|&o| o != n.n).collect();
        wait_up(n, &others);
        assert!(n.t().peers().iter().all(|p| p.state == PeerState::Up));
    }
    for from in &nodes {
        for to in 1..=3u32 {
            if to != from.n {
                for i in 0..200u32 {
                    let p = [from.n.to_be_bytes(), i.to_be_bytes()].concat();
                    from.t().send(to, p).unwrap();
                }
            }
        }
    }
    for to in &nodes {
        let mut next = [0u32; 4];
        let mut got = 0;
        while got < 400 {
            let ev = wait_for(&to.events, 20, "payloads", |e| {
                matches!(e, Event::Received { .. })
            });
            let Event::Received {
                node,
                eid: e,
                payload,
            } = ev
            else {
                unreachable!()
            };
            assert_eq!(e, eid(node), "EID comes from the peer's hello");
            assert_eq!(&payload[..4], &node.to_be_bytes());
            let i = u32::from_be_bytes(payload[4..8].try_into().unwrap());
            assert_eq!(i, next[node as usize], "in order from node {node}");
            next[node as usize] += 1;
            got += 1;
        }
    }
    let st = nodes[0].t().peers();
    assert!(st.iter().all(|p| p.frames_out >= 200 && p.bytes_in > 0));
    assert!(st.iter().all(|p| p.eid.is_some() && p.last_seen.is_some()));
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn a_payload_of_several_mib_arrives_intact() {
    let _s = serial();
    let mut nodes = mesh(2);
    // Each side sends: each must have seen the other come up.
    wait_up(&nodes[0], &[2]);
    wait_up(&nodes[1], &[1]);
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    nodes[0].t().send(2, big.clone()).unwrap();
    nodes[1].t().send(1, b"small".to_vec()).unwrap();
    assert_eq!(received(&nodes[1].events, 1, 1)[0], big);
    assert_eq!(received(&nodes[0].events, 2, 1)[0], b"small");
    let too_big = vec![0u8; 16 * 1024 * 1024 + 1];
    assert_eq!(nodes[0].t().send(2, too_big), Err(SendError::TooLarge));
    assert_eq!(nodes[0].t().send(9, vec![1]), Err(SendError::NotConnected));
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn a_restarted_peer_is_reconnected_and_down_and_up_are_reported() {
    let _s = serial();
    let mut nodes = mesh(2);
    wait_up(&nodes[0], &[2]);
    let addr2 = nodes[1].addr;
    nodes[1].stop();
    wait_for(&nodes[0].events, 10, "node 2 down", |e| {
        matches!(e, Event::PeerDown { node: 2, .. })
    });
    assert_eq!(nodes[0].t().send(2, vec![1]), Err(SendError::NotConnected));
    let restarted = start(config(2, addr2));
    restarted.t().set_peers(vec![peer(&nodes[0])]);
    wait_for(&nodes[0].events, 10, "node 2 up again", |e| {
        matches!(e, Event::PeerUp { node: 2, .. })
    });
    nodes[0].t().send(2, b"again".to_vec()).unwrap();
    assert_eq!(received(&restarted.events, 1, 1)[0], b"again");
    nodes[1] = restarted;
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn a_node_that_starts_late_is_called_and_its_knock_is_no_refusal() {
    let _s = serial();
    // Node 2's address, free until it starts: below Linux's ephemeral range (32768
    // and up), where node 1's own calls to it (or any connection of a test beside
    // it) could be given that very port as their local end in the meantime.
    let addr2 = (0..1000u16)
        .map(|i| 19000 + (std::process::id() as u16 % 1000 + i) % 1000)
        .find_map(|port| {
            TcpListener::bind(("127.0.0.1", port))
                .ok()
                .and_then(|l| l.local_addr().ok())
        })
        .expect("a free port below 20000");
    let mut n1 = start(config(1, local()));
    n1.t().set_peers(vec![PeerAddr {
        node: 2,
        name: "n2".into(),
        address: addr2.to_string(),
    }]);
    // Long enough for node 1's dialer to back off to its longest wait.
    thread::sleep(Duration::from_millis(2500));
    let mut n2 = start(config(2, addr2));
    n2.t().set_peers(vec![peer(&n1)]);
    wait_up(&n1, &[2]);
    wait_up(&n2, &[1]);
    n1.t().send(2, b"late".to_vec()).unwrap();
    assert_eq!(received(&n2.events, 1, 1)[0], b"late");
    // Node 2 knocked at node 1 (its hello says a higher number): neither side counts
    // or logs a refusal.
    for n in [&n1, &n2] {
        let total: u64 = n.t().rejects().iter().map(|(_, c)| c).sum();
        assert_eq!(total, 0, "node {}: {:?}", n.n, n.logs.lock());
        assert!(n.logs_containing("wait for our call").is_empty());
    }
    n1.stop();
    n2.stop();
}

/// Node 1 started with `c`, calling a raw node 2: the connection as node 2 accepted it.
fn calling_a_raw_node_2(c: TransportConfig) -> (Node, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let n1 = start(c);
    n1.t().set_peers(vec![PeerAddr {
        node: 2,
        name: "n2".into(),
        address: l.local_addr().unwrap().to_string(),
    }]);
    let (s, _) = l.accept().unwrap();
    (n1, s)
}

/// Node 2, called by a raw node 1 (of the first build) that has done the handshake.
fn called_by_a_raw_node_1() -> (Node, TcpStream, snow::StatelessTransportState) {
    let n2 = start(config(2, local()));
    n2.t().set_peers(vec![PeerAddr {
        node: 1,
        name: "n1".into(),
        address: "127.0.0.1:9".into(),
    }]);
    let mut s = TcpStream::connect(n2.addr).unwrap();
    let session = todays_handshake(&mut s, 1, true);
    (n2, s, session)
}

#[test]
fn a_silent_peer_is_marked_down_after_peer_timeout() {
    let _s = serial();
    // A raw peer that does the whole handshake, then says nothing at all.
    let (mut n2, mut s, session) = called_by_a_raw_node_1();
    let mut w = wire::FrameWriter::new(session);
    w.ping(&mut s, 1).unwrap();
    wait_up(&n2, &[1]);
    let ev = wait_for(&n2.events, 5, "silent node 1 down", |e| {
        matches!(e, Event::PeerDown { node: 1, .. })
    });
    let Event::PeerDown { reason, .. } = ev else {
        unreachable!()
    };
    assert!(reason.contains("no heartbeat"), "{reason}");
    n2.stop();
}

fn hello(node: u32) -> Hello {
    Hello {
        min_version: 1,
        cluster_hash: wire::cluster_hash(CLUSTER),
        node,
        eid: eid(node),
    }
}

/// The hello of the first build (protocol 1), byte by byte as its `Hello::encode`
/// wrote it.
fn todays_hello(node: u32) -> Vec<u8> {
    let mut b = b"ADBC".to_vec();
    b.push(1); // version
    b.push(32); // length
    b.extend_from_slice(&wire::cluster_hash(CLUSTER));
    b.extend_from_slice(&node.to_be_bytes());
    b.extend_from_slice(&eid(node).0);
    b
}

/// What the first build checked of a peer's hello before anything else.
fn todays_check(theirs: &[u8]) {
    assert_eq!(
        (&theirs[..4], theirs[4], theirs[5], theirs.len()),
        (&b"ADBC"[..], 1, 32, 32),
        "a node of the first build refuses this hello"
    );
}

fn read_handshake_msg(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let len = u16::from_be_bytes(len) as usize;
    assert!(
        len <= 256,
        "the first build refuses a handshake message of {len} bytes"
    );
    let mut m = vec![0u8; len];
    s.read_exact(&mut m).unwrap();
    m
}

fn write_handshake_msg(s: &mut TcpStream, hs: &mut snow::HandshakeState) {
    let mut buf = [0u8; 256];
    // The first build's payloads were empty.
    let n = hs.write_message(&[], &mut buf[2..]).unwrap();
    buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
    s.write_all(&buf[..2 + n]).unwrap();
}

/// Plays a node of the first build, numbered `node`, on `s`: its hello, its checks
/// of ours, the Noise handshake with empty payloads (ignoring whatever ours carry).
fn todays_handshake(s: &mut TcpStream, node: u32, dialer: bool) -> snow::StatelessTransportState {
    let ours = todays_hello(node);
    let mut theirs = [0u8; wire::HELLO_LEN];
    if dialer {
        s.write_all(&ours).unwrap();
        s.read_exact(&mut theirs).unwrap();
    } else {
        s.read_exact(&mut theirs).unwrap();
        s.write_all(&ours).unwrap();
    }
    todays_check(&theirs);
    let ours: [u8; wire::HELLO_LEN] = ours.try_into().unwrap();
    let pro = if dialer {
        wire::prologue(&ours, &theirs)
    } else {
        wire::prologue(&theirs, &ours)
    };
    let params: snow::params::NoiseParams = wire::NOISE_PARAMS.parse().unwrap();
    let psk = wire::derive_psk(CLUSTER, SECRET);
    let b = snow::Builder::new(params)
        .psk(0, &psk)
        .unwrap()
        .prologue(&pro)
        .unwrap();
    let mut payload = [0u8; 256];
    let hs = if dialer {
        let mut hs = b.build_initiator().unwrap();
        write_handshake_msg(s, &mut hs);
        hs.read_message(&read_handshake_msg(s), &mut payload)
            .unwrap();
        hs
    } else {
        let mut hs = b.build_responder().unwrap();
        hs.read_message(&read_handshake_msg(s), &mut payload)
            .unwrap();
        write_handshake_msg(s, &mut hs);
        hs
    };
    hs.into_stateless_transport_mode().unwrap()
}

fn protocol_of(n: &Node, peer: u32) -> Option<u8> {
    n.t().peers().iter().find(|p| p.node == peer)?.protocol
}

/// Two nodes, node 1 offering `v1` and node 2 `v2`, up with each other.
fn pair(v1: RangeInclusive<u8>, v2: RangeInclusive<u8>) -> Vec<Node> {
    let nodes: Vec<Node> = [(1, v1), (2, v2)]
        .into_iter()
        .map(|(n, v)| {
            let mut c = config(n, local());
            c.protocol_versions = v;
            start(c)
        })
        .collect();
    nodes[1].t().set_peers(vec![peer(&nodes[0])]);
    nodes[0].t().set_peers(vec![peer(&nodes[1])]);
    wait_up(&nodes[0], &[2]);
    wait_up(&nodes[1], &[1]);
    nodes
}

#[test]
fn a_node_offering_only_version_1_and_a_current_node_exchange_data_over_version_1() {
    let _s = serial();
    // Both ways round: the old node dialing, and the old node called.
    for (v1, v2) in [(1..=1, 1..=2), (1..=2, 1..=1)] {
        let mut nodes = pair(v1.clone(), v2.clone());
        assert_eq!(protocol_of(&nodes[0], 2), Some(1), "{v1:?} with {v2:?}");
        assert_eq!(protocol_of(&nodes[1], 1), Some(1), "{v1:?} with {v2:?}");
        nodes[0].t().send(2, b"to the new".to_vec()).unwrap();
        nodes[1].t().send(1, b"to the old".to_vec()).unwrap();
        assert_eq!(received(&nodes[1].events, 1, 1)[0], b"to the new");
        assert_eq!(received(&nodes[0].events, 2, 1)[0], b"to the old");
        for n in &mut nodes {
            n.stop();
        }
    }
}

#[test]
fn two_current_nodes_speak_version_2() {
    let _s = serial();
    let default = TransportConfig::new(CLUSTER, SECRET, 1, eid(1)).protocol_versions;
    assert_eq!(
        default,
        1..=2,
        "a node offers every version this build speaks"
    );
    let mut nodes = pair(default.clone(), default);
    assert_eq!(protocol_of(&nodes[0], 2), Some(2));
    assert_eq!(protocol_of(&nodes[1], 1), Some(2));
    nodes[0].t().send(2, b"v2".to_vec()).unwrap();
    assert_eq!(received(&nodes[1].events, 1, 1)[0], b"v2");
    assert_eq!(nodes[1].logs_containing("is up (EID").len(), 1);
    assert_eq!(nodes[1].logs_containing("protocol 2)").len(), 1);
    nodes[1].stop();
    wait_for(&nodes[0].events, 10, "node 2 down", |e| {
        matches!(e, Event::PeerDown { node: 2, .. })
    });
    assert_eq!(protocol_of(&nodes[0], 2), None, "no protocol while down");
    nodes[0].stop();
}

#[test]
fn no_version_in_common_is_refused_as_its_own_cause_naming_both_ranges() {
    let _s = serial();
    let cause = "no protocol version in common";
    // Node 5 accepts, node 1 dials; each offering what the other does not.
    for (v5, v1) in [(1..=1, 2..=2), (2..=2, 1..=1)] {
        let (logs5, logs1) = refused_dial_both(
            1,
            |c| c.protocol_versions = v5.clone(),
            |c| c.protocol_versions = v1.clone(),
            cause,
        );
        let (r5, r1) = (wire::show_versions(&v5), wire::show_versions(&v1));
        assert_eq!(logs5.len(), 1, "{logs5:?}");
        assert!(
            logs5[0].contains(&format!("node 1 speaks protocol {r1}, this node {r5}")),
            "{logs5:?}"
        );
        assert_eq!(logs1.len(), 1, "{logs1:?}");
        assert!(
            logs1[0].contains(&format!("node 5 speaks protocol {r5}, this node {r1}")),
            "{logs1:?}"
        );
    }
}

#[test]
fn a_range_this_build_does_not_speak_is_refused_at_start() {
    let (tx, _rx) = unbounded();
    #[allow(clippy::reversed_empty_ranges)] // an empty range is one of the cases
    for v in [0..=2, 1..=3, 2..=1] {
        let mut c = config(1, local());
        c.protocol_versions = v.clone();
        let e = Transport::start(c, tx.clone(), Arc::new(|_, _| {}))
            .err()
            .unwrap_or_else(|| panic!("{v:?} accepted"));
        assert!(e.contains("this build speaks 1..=2"), "{e}");
    }
}

#[test]
fn a_node_of_the_first_build_is_accepted_and_answered_in_version_1() {
    let _s = serial();
    // This raw peer sends no heartbeats: a long timeout keeps it up meanwhile.
    let mut c = config(2, local());
    c.peer_timeout = Duration::from_secs(10);
    let mut n2 = start(c);
    n2.t().set_peers(vec![PeerAddr {
        node: 1,
        name: "n1".into(),
        address: "127.0.0.1:9".into(),
    }]);
    let mut s = TcpStream::connect(n2.addr).unwrap();
    let session = todays_handshake(&mut s, 1, true);
    let mut w = wire::FrameWriter::new(session);
    w.data(&mut s, b"from the first build").unwrap();
    wait_up(&n2, &[1]);
    assert_eq!(received(&n2.events, 1, 1)[0], b"from the first build");
    assert_eq!(protocol_of(&n2, 1), Some(1));
    n2.stop();
}

#[test]
fn a_current_node_dials_a_node_of_the_first_build_in_version_1() {
    let _s = serial();
    // This raw peer answers no heartbeats: a long timeout keeps it up meanwhile.
    let mut c = config(1, local());
    c.peer_timeout = Duration::from_secs(10);
    let (mut n1, mut s) = calling_a_raw_node_2(c);
    let session = Arc::new(todays_handshake(&mut s, 2, false));
    let mut w = wire::FrameWriter::new(Arc::clone(&session));
    w.data(&mut s, b"from the first build").unwrap();
    wait_up(&n1, &[2]);
    assert_eq!(received(&n1.events, 2, 1)[0], b"from the first build");
    assert_eq!(protocol_of(&n1, 2), Some(1));
    n1.t().send(2, b"to the first build".to_vec()).unwrap();
    let mut r = wire::FrameReader::new(session, 1 << 20);
    let got = loop {
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed");
        let data: Vec<Vec<u8>> = r
            .push(&buf[..n])
            .unwrap()
            .into_iter()
            .filter_map(|f| match f {
                wire::Frame::Data(d) => Some(d),
                _ => None,
            })
            .collect();
        if let Some(d) = data.into_iter().next() {
            break d;
        }
    };
    assert_eq!(got, b"to the first build");
    n1.stop();
}

/// Node 5 waits for node 1; node `dialer` dials it with a twisted config.
/// Node 5 must refuse with `cause`, log it once over many retries, and
/// deliver nothing.
fn refused_dial(dialer: u32, twist: impl FnOnce(&mut TransportConfig), cause: &str) {
    refused_dial_both(dialer, |_| {}, twist, cause);
}

/// `refused_dial`, with node 5's config twisted too; returns the log lines naming
/// `cause` of node 5 and of the dialer.
fn refused_dial_both(
    dialer: u32,
    twist5: impl FnOnce(&mut TransportConfig),
    twist: impl FnOnce(&mut TransportConfig),
    cause: &str,
) -> (Vec<String>, Vec<String>) {
    let mut c5 = config(5, local());
    twist5(&mut c5);
    let mut n5 = start(c5);
    n5.t().set_peers(vec![PeerAddr {
        node: 1,
        name: "n1".into(),
        address: "127.0.0.1:9".into(),
    }]);
    let mut c = config(dialer, local());
    twist(&mut c);
    let mut d = start(c);
    d.t().set_peers(vec![peer(&n5)]);
    until(10, &format!("3 rejects for {cause}"), || {
        n5.reject_count(cause) >= 3
    });
    assert_eq!(n5.logs_containing(cause).len(), 1, "{:?}", n5.logs.lock());
    // Reported once, as it is logged once.
    let mut refused = Vec::new();
    while let Ok(ev) = n5.events.recv_timeout(Duration::from_millis(300)) {
        match ev {
            Event::Refused { cause: c, .. } => refused.push(c),
            other => panic!("{cause}: unexpected event {other:?}"),
        }
    }
    assert_eq!(refused, [cause.to_string()], "refusal events");
    no_events(&d, cause);
    assert_eq!(d.t().send(5, vec![1]), Err(SendError::NotConnected));
    let total: u64 = n5.t().rejects().iter().map(|(_, n)| n).sum();
    assert_eq!(total, n5.reject_count(cause), "only {cause}");
    let logged = (n5.logs_containing(cause), d.logs_containing(cause));
    d.stop();
    n5.stop();
    logged
}

#[test]
fn wrong_secret_is_refused_logged_once_and_delivers_nothing() {
    let _s = serial();
    refused_dial(
        1,
        |c| c.secret = "another.secret.entirely".into(),
        "wrong secret or corrupted handshake",
    );
}

#[test]
fn different_cluster_name_is_refused_as_its_own_cause() {
    let _s = serial();
    refused_dial(
        1,
        |c| c.cluster_name = "other.cluster".into(),
        "cluster name differs",
    );
}

#[test]
fn unconfigured_node_number_is_refused_as_unknown_node() {
    let _s = serial();
    refused_dial(3, |_| {}, "unknown node");
}

/// Node 1 dials a raw node 2 that answers its hello and then ends the connection in the
/// handshake: `reset` with node 1's handshake message unread (the kernel then sends a
/// reset, as for a peer that went away), else after reading it (a refusing peer's
/// close). Returns node 1's refusal log line.
fn ended_in_the_handshake(reset: bool) -> String {
    let (mut n1, mut s) = calling_a_raw_node_2(config(1, local()));
    let mut theirs = [0u8; wire::HELLO_LEN];
    s.read_exact(&mut theirs).unwrap();
    s.write_all(&todays_hello(2)).unwrap();
    if reset {
        // Until node 1's handshake message is here, unread.
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 2];
        while s.peek(&mut b).unwrap() < 2 {}
    } else {
        read_handshake_msg(&mut s);
    }
    drop(s);
    until(5, "node 1 logs the refusal", || {
        !n1.logs_containing("refused").is_empty()
    });
    n1.stop();
    n1.logs_containing("refused").remove(0)
}

#[test]
fn a_peer_that_closes_in_the_handshake_is_logged_with_the_secret_hint_and_one_that_resets_without()
{
    let _s = serial();
    let closed = ended_in_the_handshake(false);
    assert!(
        closed.contains("closed the connection during the handshake")
            && closed.contains("check cluster_secret"),
        "{closed}"
    );
    let reset = ended_in_the_handshake(true);
    assert!(
        reset.contains("connection lost: during the handshake"),
        "{reset}"
    );
    assert!(!reset.contains("cluster_secret"), "{reset}");
}

#[test]
fn a_peer_that_goes_away_right_after_the_handshake_is_a_lost_connection_not_a_refusal() {
    let _s = serial();
    // Node 1 calls node 2, completes the handshake and closes before its first frame.
    let (mut n2, s, _) = called_by_a_raw_node_1();
    drop(s);
    until(5, "node 2 logs the lost connection", || {
        !n2.logs_containing("right after the handshake").is_empty()
    });
    let line = n2.logs_containing("right after the handshake").remove(0);
    n2.stop();
    assert!(line.contains("connection lost"), "{line}");
    assert!(!line.contains("refused by peer"), "{line}");
}

/// Sends `bytes` on a raw connection and expects node 2 to close it.
fn raw_is_closed(to: SocketAddr, bytes: &[u8], half_close: bool) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let mut sink = Vec::new();
    // Ends with EOF or a reset; a timeout would mean the connection stayed open.
    let r = s.read_to_end(&mut sink);
    if let Err(e) = r {
        assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "left open");
    }
}

#[test]
fn garbage_truncated_hello_and_oversized_length_are_closed_and_the_listener_keeps_serving() {
    let _s = serial();
    let mut nodes = mesh(2);
    wait_up(&nodes[1], &[1]);
    let to = nodes[1].addr;
    raw_is_closed(to, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    raw_is_closed(to, &hello(1).encode()[..10], true);
    let mut oversized = hello(1).encode().to_vec();
    oversized.extend_from_slice(&[0xff, 0xff]);
    oversized.extend_from_slice(&[0u8; 64]);
    raw_is_closed(to, &oversized, false);
    let n2 = &nodes[1];
    until(5, "three rejects", || {
        n2.reject_count("malformed hello") == 2 && n2.reject_count("oversized frame") == 1
    });
    // Both malformed hellos came from 127.0.0.1: one log line for the pair.
    assert_eq!(n2.logs_containing("malformed hello").len(), 1);
    assert_eq!(n2.logs_containing("oversized frame").len(), 1);
    no_events(n2, "raw connections");
    nodes[0].t().send(2, b"still here".to_vec()).unwrap();
    assert_eq!(received(&nodes[1].events, 1, 1)[0], b"still here");
    for n in &mut nodes {
        n.stop();
    }
}

/// Forwards one connection to `to`, recording what the dialer sent.
fn recording_relay(to: SocketAddr) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (mut a, _) = l.accept().unwrap();
        let mut b = TcpStream::connect(to).unwrap();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        let back = thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
            let _ = a2.shutdown(Shutdown::Write);
        });
        let mut rec = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match a.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    rec.extend_from_slice(&buf[..n]);
                    if b.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = b.shutdown(Shutdown::Both);
        let _ = back.join();
        rec
    });
    (addr, h)
}

#[test]
fn a_recorded_session_replayed_later_delivers_nothing() {
    let _s = serial();
    let mut n2 = start(config(2, local()));
    let (relay, recorder) = recording_relay(n2.addr);
    let mut n1 = start(config(1, local()));
    n2.t().set_peers(vec![peer(&n1)]);
    n1.t().set_peers(vec![PeerAddr {
        node: 2,
        name: "n2".into(),
        address: relay.to_string(),
    }]);
    wait_up(&n1, &[2]);
    for i in 0..20u8 {
        n1.t().send(2, vec![i; 100]).unwrap();
    }
    assert_eq!(received(&n2.events, 1, 20).len(), 20);
    n1.stop();
    wait_for(&n2.events, 10, "node 1 down", |e| {
        matches!(e, Event::PeerDown { node: 1, .. })
    });
    let recorded = recorder.join().unwrap();
    assert!(
        recorded.len() > 20 * 100,
        "recorded {} bytes",
        recorded.len()
    );

    raw_is_closed(n2.addr, &recorded, false);
    until(5, "replay refused", || {
        n2.reject_count("frame failed authentication") == 1
    });
    no_events(&n2, "replayed session");
    n2.stop();
}

#[test]
fn stop_returns_promptly_and_leaves_no_thread() {
    let _s = serial();
    let before = threads();
    let mut nodes = mesh(3);
    for n in &nodes {
        let others: Vec<u32> = (1..=3).filter(|&o| o != n.n).collect();
        wait_up(n, &others);
    }
    // A half-open raw connection in its handshake must not hold stop up either.
    let _lingering = TcpStream::connect(nodes[2].addr).unwrap();
    thread::sleep(Duration::from_millis(100));
    assert!(threads().len() > before.len() + 9, "{:?}", threads());
    for n in &mut nodes {
        let t0 = Instant::now();
        n.stop();
        assert!(
            t0.elapsed() < Duration::from_millis(700),
            "{:?}",
            t0.elapsed()
        );
    }
    assert_eq!(threads(), before);
}

#[test]
fn set_peers_removing_a_peer_disconnects_only_that_one() {
    let _s = serial();
    let mut nodes = mesh(3);
    wait_up(&nodes[0], &[2, 3]);
    let keep = vec![peer(&nodes[1])];
    nodes[0].t().set_peers(keep.clone());
    let ev = wait_for(&nodes[0].events, 5, "node 3 down", |e| {
        matches!(e, Event::PeerDown { .. })
    });
    let Event::PeerDown { node, reason, .. } = ev else {
        unreachable!()
    };
    assert_eq!(node, 3);
    assert!(reason.contains("removed"), "{reason}");
    no_events(&nodes[0], "node 2 untouched");
    let st = nodes[0].t().peers();
    assert_eq!(st.len(), 1);
    assert_eq!((st[0].node, st[0].state), (2, PeerState::Up));
    // Same list again: nothing happens.
    nodes[0].t().set_peers(keep);
    no_events(&nodes[0], "unchanged list");
    nodes[0].t().send(2, b"x".to_vec()).unwrap();
    assert_eq!(received(&nodes[1].events, 1, 1)[0], b"x");
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn a_full_send_queue_refuses_and_counts_drops() {
    let _s = serial();
    let mut c2 = config(2, local());
    c2.peer_timeout = Duration::from_secs(5);
    // Node 2's engine never reads: its reader blocks, TCP fills, node 1's queue fills.
    let (tx, _rx_kept) = crossbeam_channel::bounded(1);
    let t2 = Transport::start(c2, tx, Arc::new(|_, _| {})).unwrap();
    let mut c1 = config(1, local());
    c1.peer_timeout = Duration::from_secs(5);
    c1.send_queue_bytes = 1 << 20;
    c1.peers = vec![PeerAddr {
        node: 2,
        name: "n2".into(),
        address: t2.local_addr().to_string(),
    }];
    t2.set_peers(vec![PeerAddr {
        node: 1,
        name: "n1".into(),
        address: "127.0.0.1:9".into(),
    }]);
    let n1 = start(c1);
    wait_up(&n1, &[2]);
    let mut full = 0;
    let t0 = Instant::now();
    for _ in 0..2000 {
        match n1.t().send(2, vec![0u8; 64 * 1024]) {
            Ok(()) => {}
            Err(SendError::QueueFull) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "send never blocks long"
    );
    assert!(full > 0);
    let st = &n1.t().peers()[0];
    assert_eq!(st.dropped_sends, full);
    assert!(st.send_queue_bytes <= 1 << 20);
    let mut n1 = n1;
    n1.stop();
    t2.stop();
}
