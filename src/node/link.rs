//! The seam between the loop and the other nodes. The loop sends the engine's messages
//! through a [`Link`] and hears from it through [`LinkEvent`]s in its inbox; what carries
//! them (the TCP mesh today, Redis or SIP PUBLISH tomorrow) is the link's business.

use std::time::{Duration, SystemTime};

use crate::config::ClusterConfig;
use crate::eid::Eid;
use crate::engine::Message;

/// What a link tells the loop, in order, through the inbox.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkEvent {
    /// A peer can be reached (its EID and node number are known).
    PeerUp { node: u32, eid: Eid },
    /// A peer can no longer be reached.
    PeerDown { eid: Eid },
    /// A message from a peer, already opened and decoded.
    Received { from: Eid, msg: Message },
    /// A connection with a peer was refused (said once per peer and cause until it
    /// connects): `peer` names it ("node 3", or an address), `cause` is the short name.
    Refused {
        peer: String,
        node: Option<u32>,
        cause: String,
        detail: String,
    },
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
