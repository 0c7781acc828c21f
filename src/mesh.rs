//! This node's place in the TCP mesh: the transport, the thread that hands its
//! events to the module's inbox, and which EID is which node. Owned by the
//! module's thread, which alone starts, reconfigures and stops it (the
//! transport starts threads, which must never happen on an Asterisk thread;
//! see asterisk/thread.rs). The CLI reads the status it publishes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::unbounded;

use crate::capture::Inbox;
use crate::config::ClusterConfig;
use crate::engine::{codec, Eid, Message};
use crate::transport::{self, Event, LogLevel, PeerAddr, PeerStatus, Transport, TransportConfig};
use crate::{error, notice, warning};

/// What the CLI shows about the network, refreshed by the module's thread.
#[derive(Clone, Debug, Default)]
pub struct MeshStatus {
    /// Why the network is closed, or where it listens.
    pub state: String,
    pub peers: Vec<PeerStatus>,
    pub rejects: Vec<(String, u64)>,
    pub send_errors: u64,
    pub undecodable: u64,
}

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
    transport: Option<Transport>,
    forwarder: Option<JoinHandle<()>>,
    identity: Option<Identity>,
    peers: Vec<PeerAddr>,
    node_of: HashMap<Eid, u32>,
    closed_because: String,
    send_errors: u64,
    undecodable: u64,
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

fn log_line(level: LogLevel, text: String) {
    match level {
        LogLevel::Notice => notice!("{text}"),
        LogLevel::Warning => warning!("{text}"),
        LogLevel::Error => error!("{text}"),
    }
}

impl Mesh {
    pub fn new() -> Self {
        Mesh {
            transport: None,
            forwarder: None,
            identity: None,
            peers: Vec::new(),
            node_of: HashMap::new(),
            closed_because: "not started".into(),
            send_errors: 0,
            undecodable: 0,
        }
    }

    /// Brings the transport in line with `cfg`: started, restarted when the
    /// identity, secret or listening address changed, or told of new peers.
    pub fn reconcile(&mut self, cfg: &ClusterConfig, eid: Eid, inbox: &Arc<Inbox>) {
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
        let (tx, rx) = unbounded::<Event>();
        match Transport::start(tc, tx, Arc::new(log_line)) {
            Ok(t) => {
                let inbox = Arc::clone(inbox);
                // Ends when the transport stops and drops its sender.
                let forwarder = std::thread::Builder::new()
                    .name("astdb-cl-events".into())
                    .spawn(move || {
                        while let Ok(event) = rx.recv() {
                            inbox.push_event(event);
                        }
                    });
                match forwarder {
                    Ok(handle) => self.forwarder = Some(handle),
                    Err(e) => error!("could not start the transport event thread: {e}"),
                }
                notice!("listening for cluster peers on {}", t.local_addr());
                self.transport = Some(t);
                self.peers = peers;
            }
            Err(why) => {
                error!("the cluster network is closed: {why}");
                self.closed_because = format!("closed: {why}");
            }
        }
    }

    /// Notes which EID belongs to which node as peers come and go.
    pub fn observe(&mut self, event: &Event) {
        if let Event::PeerUp { node, eid } = event {
            self.node_of.insert(*eid, *node);
        }
    }

    /// Decodes a received payload; a bad one is counted and logged.
    pub fn decode(&mut self, node: u32, payload: &[u8]) -> Option<Message> {
        match codec::decode(payload) {
            Ok(msg) => Some(msg),
            Err(why) => {
                self.undecodable += 1;
                warning!(
                    "node {node} sent a message that does not decode ({why:?}); it was dropped"
                );
                None
            }
        }
    }

    /// Sends `msg` to the peer with EID `to`; failures are counted (anti-entropy repairs them).
    pub fn send(&mut self, to: Eid, msg: &Message) {
        let (Some(t), Some(node)) = (&self.transport, self.node_of.get(&to)) else {
            self.send_errors += 1;
            return;
        };
        if t.send(*node, codec::encode(msg)).is_err() {
            self.send_errors += 1;
        }
    }

    pub fn status(&self) -> MeshStatus {
        match &self.transport {
            Some(t) => MeshStatus {
                state: format!("open on {}", t.local_addr()),
                peers: t.peers(),
                rejects: t.rejects(),
                send_errors: self.send_errors,
                undecodable: self.undecodable,
            },
            None => MeshStatus {
                state: self.closed_because.clone(),
                ..MeshStatus::default()
            },
        }
    }

    /// Stops the transport and joins its threads.
    pub fn shutdown(&mut self) {
        if let Some(t) = self.transport.take() {
            t.stop();
        }
        if let Some(f) = self.forwarder.take() {
            let _ = f.join();
        }
        self.identity = None;
        self.node_of.clear();
    }
}

impl Default for Mesh {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Turns a peer-status time into Unix ms for display.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub use transport::PeerState;
