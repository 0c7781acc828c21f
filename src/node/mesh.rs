//! The built-in TCP mesh as the loop's [`Link`]: the transport, the thread that opens
//! its events into the inbox, and which EID is which node. Owned by the module's thread,
//! which alone starts, reconfigures and stops it (the transport starts threads, which
//! must never happen on an Asterisk thread; see asterisk/thread.rs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::bounded;

use super::inbox::Inbox;
use super::link::{Link, LinkEvent, LinkStatus, PeerState, PeerView, SharedCount};
use super::{Level, Say};
use crate::config::ClusterConfig;
use crate::eid::Eid;
use crate::engine::{codec, Message};
use crate::transport::{self, Event, LogLevel, PeerAddr, Transport, TransportConfig};

/// Transport events (most of them received messages, each up to some tens of KB)
/// waiting for the thread that hands them to the loop.
const EVENT_QUEUE: usize = 128;

/// The settings that need a new transport when they change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    cluster_name: String,
    secret: String,
    node: u32,
    eid: Eid,
    bind: SocketAddr,
}

pub struct Mesh {
    inbox: Arc<Inbox>,
    say: Say,
    transport: Option<Transport>,
    forwarder: Option<JoinHandle<()>>,
    identity: Option<Identity>,
    peers: Vec<PeerAddr>,
    /// Which node each EID is, as peers come up (written by the forwarder).
    node_of: Arc<RwLock<HashMap<Eid, u32>>>,
    closed_because: String,
    send_errors: u64,
    undecodable: SharedCount,
}

fn peer_addrs(cfg: &ClusterConfig) -> Vec<PeerAddr> {
    cfg.nodes
        .iter()
        .map(|n| PeerAddr {
            node: n.node,
            name: n.section.clone(),
            address: n.address(),
        })
        .collect()
}

impl Mesh {
    /// A mesh whose events go to `inbox`; started by the first `configure`.
    pub fn new(inbox: Arc<Inbox>, say: Say) -> Self {
        Mesh {
            inbox,
            say,
            transport: None,
            forwarder: None,
            identity: None,
            peers: Vec::new(),
            node_of: Arc::default(),
            closed_because: "not started".into(),
            send_errors: 0,
            undecodable: SharedCount::default(),
        }
    }

    /// Starts the thread that turns the transport's events into the loop's: EIDs mapped
    /// to nodes, payloads handed on for the loop to decode (see [`LinkEvent::Encoded`]).
    fn forward(&mut self, rx: crossbeam_channel::Receiver<Event>) {
        let inbox = Arc::clone(&self.inbox);
        let node_of = Arc::clone(&self.node_of);
        let undecodable = self.undecodable.clone();
        // Ends when the transport stops and drops its sender.
        let forwarder = std::thread::Builder::new()
            .name("astdb-cl-events".into())
            .spawn(move || {
                while let Ok(event) = rx.recv() {
                    let event = match event {
                        Event::PeerUp { node, eid } => {
                            node_of
                                .write()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(eid, node);
                            LinkEvent::PeerUp { node, eid }
                        }
                        Event::PeerDown { eid, .. } => LinkEvent::PeerDown { eid },
                        Event::Refused {
                            who,
                            node,
                            cause,
                            detail,
                        } => LinkEvent::Refused {
                            peer: who,
                            node,
                            cause,
                            detail,
                        },
                        Event::Received { node, eid, payload } => LinkEvent::Encoded {
                            from: eid,
                            node,
                            payload,
                            undecodable: undecodable.clone(),
                        },
                    };
                    inbox.push_event(event);
                }
            });
        match forwarder {
            Ok(handle) => self.forwarder = Some(handle),
            Err(e) => (self.say)(
                Level::Error,
                &format!("could not start the transport event thread: {e}"),
            ),
        }
    }
}

impl Mesh {
    /// The node number of the peer `eid`, as its connection told.
    fn node_number(&self, eid: Eid) -> Option<u32> {
        self.node_of
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&eid)
            .copied()
    }
}

impl Link for Mesh {
    fn configure(&mut self, cfg: &ClusterConfig, eid: Eid) {
        let g = &cfg.general;
        let Some(secret) = &g.cluster_secret else {
            if self.transport.is_some() {
                self.shutdown();
            }
            self.closed_because = "closed: no cluster_secret in [general]".into();
            return;
        };
        let identity = Identity {
            cluster_name: g.cluster_name.clone(),
            secret: secret.clone(),
            node: g.cluster_node,
            eid,
            bind: SocketAddr::new(g.bindaddr, g.bindport),
        };
        let peers = peer_addrs(cfg);
        if self.identity.as_ref() == Some(&identity) {
            if let Some(t) = &self.transport {
                if self.peers != peers {
                    t.set_peers(peers.clone());
                    self.peers = peers;
                }
            }
            return;
        }
        self.shutdown();
        // Remembered even when starting fails, so a bad bind is not retried every turn.
        self.identity = Some(identity.clone());
        let mut tc = TransportConfig::new(&identity.cluster_name, secret, identity.node, eid);
        tc.bind = identity.bind;
        tc.peers = peers.clone();
        // Bounded: when the loop falls behind (a new node's catch-up arrives faster than
        // AstDB takes it), the connections stop reading and TCP holds the sender back,
        // instead of this process holding the rest of the catch-up as messages.
        let (tx, rx) = bounded::<Event>(EVENT_QUEUE);
        let say = Arc::clone(&self.say);
        let log = Arc::new(move |level: LogLevel, text: String| {
            let level = match level {
                LogLevel::Notice => Level::Notice,
                LogLevel::Warning => Level::Warning,
                LogLevel::Error => Level::Error,
            };
            say(level, &text);
        });
        match Transport::start(tc, tx, log) {
            Ok(t) => {
                self.forward(rx);
                (self.say)(
                    Level::Notice,
                    &format!("listening for cluster peers on {}", t.local_addr()),
                );
                self.transport = Some(t);
                self.peers = peers;
            }
            Err(why) => {
                (self.say)(
                    Level::Error,
                    &format!("the cluster network is closed: {why}"),
                );
                self.closed_because = format!("closed: {why}");
            }
        }
    }

    fn send(&mut self, to: Eid, msg: &Message) {
        let node = self.node_number(to);
        let (Some(t), Some(node)) = (&self.transport, node) else {
            self.send_errors += 1;
            return;
        };
        if t.send(node, codec::encode(msg)).is_err() {
            self.send_errors += 1;
        }
    }

    fn status(&self) -> LinkStatus {
        let undecodable = self.undecodable.get();
        match &self.transport {
            Some(t) => LinkStatus {
                state: format!("open on {}", t.local_addr()),
                peers: t
                    .peers()
                    .into_iter()
                    .map(|p| PeerView {
                        node: p.node,
                        eid: p.eid,
                        state: match p.state {
                            transport::PeerState::Up => PeerState::Up,
                            transport::PeerState::Connecting => PeerState::Connecting,
                            transport::PeerState::Down => PeerState::Down,
                        },
                        last_seen: p.last_seen,
                        rtt: p.rtt,
                        bytes_in: p.bytes_in,
                        bytes_out: p.bytes_out,
                        frames_in: p.frames_in,
                        frames_out: p.frames_out,
                        protocol: p.protocol,
                    })
                    .collect(),
                refusals: t.rejects(),
                send_errors: self.send_errors,
                undecodable,
            },
            None => LinkStatus {
                state: self.closed_because.clone(),
                send_errors: self.send_errors,
                undecodable,
                ..LinkStatus::default()
            },
        }
    }

    fn backlog(&self, to: Eid) -> usize {
        match (&self.transport, self.node_number(to)) {
            (Some(t), Some(node)) => t.queued_bytes(node),
            _ => 0,
        }
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.transport.take() {
            t.stop();
        }
        if let Some(f) = self.forwarder.take() {
            let _ = f.join();
        }
        self.identity = None;
        self.node_of
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown();
    }
}
