//! Hello exchange and Noise handshake on a fresh connection, for both the
//! dialing and the accepting side. Blocking reads in short slices, so a stop
//! or a silent peer is noticed within ~100 ms.

use super::wire::{self, Cause, Hello, Reject, HELLO_LEN, MAX_HANDSHAKE_MSG};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a connection needs to know about this node to greet and check a peer.
pub(crate) struct Local {
    /// Its `min_version` is the start of `versions`.
    pub hello: Hello,
    pub versions: RangeInclusive<u8>,
    pub psk: [u8; 32],
}

pub(crate) struct Established {
    pub session: snow::StatelessTransportState,
    pub peer: Hello,
    /// The protocol version both sides now speak.
    pub protocol: u8,
}

/// A refused handshake; `node` is the peer's number when its hello said it.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub reject: Reject,
    pub node: Option<u32>,
}

impl Refusal {
    fn new(cause: Cause, node: Option<u32>, detail: impl Into<String>) -> Refusal {
        Refusal {
            reject: Reject::new(cause, detail),
            node,
        }
    }
}

pub(crate) const POLL: Duration = Duration::from_millis(100);

enum ReadErr {
    /// End of stream after this many bytes.
    Closed(usize),
    /// Deadline passed after this many bytes.
    Timeout(usize),
    Stopped,
    Io(io::Error),
}

fn read_full(
    s: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<(), ReadErr> {
    let mut got = 0;
    while got < buf.len() {
        if stop.load(Ordering::Relaxed) {
            return Err(ReadErr::Stopped);
        }
        if Instant::now() >= deadline {
            return Err(ReadErr::Timeout(got));
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(ReadErr::Closed(got)),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(ReadErr::Io(e)),
        }
    }
    Ok(())
}

fn io_refusal(node: Option<u32>, what: &str, e: ReadErr) -> Refusal {
    match e {
        ReadErr::Closed(_) => Refusal::new(
            Cause::RefusedByPeer,
            node,
            format!("the peer closed the connection {what}"),
        ),
        ReadErr::Timeout(_) => {
            Refusal::new(Cause::HandshakeTimeout, node, format!("no answer {what}"))
        }
        ReadErr::Stopped => Refusal::new(Cause::RefusedByPeer, node, "this node is stopping"),
        ReadErr::Io(e) => Refusal::new(Cause::ConnectionLost, node, format!("{what}: {e}")),
    }
}

/// Reads the peer's hello: the first 6 bytes are checked before the rest, so
/// garbage is refused at once instead of after a timeout.
fn read_hello(
    s: &mut TcpStream,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<[u8; HELLO_LEN], Refusal> {
    let mut b = [0u8; HELLO_LEN];
    let truncated = |got: usize| {
        Refusal::new(
            Cause::MalformedHello,
            None,
            format!("truncated hello ({got} of {HELLO_LEN} bytes)"),
        )
    };
    match read_full(s, &mut b[..6], deadline, stop) {
        Ok(()) => {}
        Err(ReadErr::Closed(0)) => {
            return Err(Refusal::new(
                Cause::RefusedByPeer,
                None,
                "the peer closed the connection before its hello",
            ))
        }
        Err(ReadErr::Closed(n) | ReadErr::Timeout(n)) if n > 0 => return Err(truncated(n)),
        Err(e) => return Err(io_refusal(None, "before its hello", e)),
    }
    wire::check_hello_prefix(&b).map_err(|reject| Refusal { reject, node: None })?;
    match read_full(s, &mut b[6..], deadline, stop) {
        Ok(()) => Ok(b),
        Err(ReadErr::Closed(n) | ReadErr::Timeout(n)) => Err(truncated(6 + n)),
        Err(e) => Err(io_refusal(None, "in its hello", e)),
    }
}

fn read_msg(
    s: &mut TcpStream,
    node: u32,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<Vec<u8>, Refusal> {
    // A peer that refuses our handshake message (another cluster_secret, say) closes
    // the connection; a reset is a peer that went away (unloading, stopping), so the
    // hint goes with a close only.
    let refusal = |e| match e {
        ReadErr::Closed(_) => Refusal::new(
            Cause::RefusedByPeer,
            Some(node),
            "the peer closed the connection during the handshake \
             (it refused us: check cluster_secret and its node list)",
        ),
        e => io_refusal(Some(node), "during the handshake", e),
    };
    let mut len = [0u8; 2];
    read_full(s, &mut len, deadline, stop).map_err(refusal)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MSG {
        return Err(Refusal::new(
            Cause::OversizedFrame,
            Some(node),
            format!("handshake message of {len} bytes"),
        ));
    }
    let mut msg = vec![0u8; len];
    read_full(s, &mut msg, deadline, stop).map_err(refusal)?;
    Ok(msg)
}

fn write_msg(s: &mut TcpStream, node: u32, msg: &[u8]) -> Result<(), Refusal> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).map_err(|e| {
        Refusal::new(
            Cause::ConnectionLost,
            Some(node),
            format!("handshake write: {e}"),
        )
    })
}

fn builder<'a>(local: &'a Local, prologue: &'a [u8]) -> Result<snow::Builder<'a>, snow::Error> {
    let params: snow::params::NoiseParams = wire::NOISE_PARAMS.parse()?;
    snow::Builder::new(params)
        .psk(0, &local.psk)?
        .prologue(prologue)
}

/// The version to speak with `peer`, whose offer came in its handshake message.
fn agree(local: &Local, peer: &Hello, offer: &[u8]) -> Result<u8, Refusal> {
    let node = Some(peer.node);
    let theirs =
        wire::decode_offer(peer.min_version, offer).map_err(|reject| Refusal { reject, node })?;
    wire::negotiate(&local.versions, &theirs).ok_or_else(|| {
        Refusal::new(
            Cause::NoCommonVersion,
            node,
            format!(
                "node {} speaks protocol {}, this node {}",
                peer.node,
                wire::show_versions(&theirs),
                wire::show_versions(&local.versions)
            ),
        )
    })
}

fn check_cluster(local: &Local, peer: &Hello) -> Result<(), Refusal> {
    if peer.cluster_hash != local.hello.cluster_hash {
        return Err(Refusal::new(
            Cause::ClusterNameDiffers,
            Some(peer.node),
            format!("node {} belongs to another cluster_name", peer.node),
        ));
    }
    Ok(())
}

fn setup(s: &TcpStream, local_timeout: Duration) -> Result<(), Refusal> {
    let io = |e: io::Error| Refusal::new(Cause::ConnectionLost, None, format!("socket: {e}"));
    s.set_nodelay(true).map_err(io)?;
    s.set_read_timeout(Some(POLL)).map_err(io)?;
    s.set_write_timeout(Some(local_timeout.max(Duration::from_secs(1))))
        .map_err(io)?;
    Ok(())
}

/// The dialing side: we expect `node` at the other end.
pub(crate) fn dial(
    s: &mut TcpStream,
    local: &Local,
    node: u32,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Established, Refusal> {
    let deadline = Instant::now() + timeout;
    setup(s, timeout)?;
    let ours = local.hello.encode();
    s.write_all(&ours).map_err(|e| {
        Refusal::new(
            Cause::ConnectionLost,
            Some(node),
            format!("hello write: {e}"),
        )
    })?;
    let theirs = read_hello(s, deadline, stop).map_err(|mut r| {
        r.node = Some(node);
        r
    })?;
    let peer = wire::decode_hello(&theirs).map_err(|reject| Refusal {
        reject,
        node: Some(node),
    })?;
    check_cluster(local, &peer).map_err(|mut r| {
        r.node = Some(node);
        r
    })?;
    if peer.node != node {
        return Err(Refusal::new(
            Cause::UnknownNode,
            Some(node),
            format!("node {node}'s address answered as node {}", peer.node),
        ));
    }
    let prologue = wire::prologue(&ours, &theirs);
    let wrong = |e: snow::Error| Refusal::new(Cause::WrongSecret, Some(node), e.to_string());
    let mut hs = builder(local, &prologue)
        .and_then(|b| b.build_initiator())
        .map_err(wrong)?;
    let mut buf = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs
        .write_message(&wire::encode_offer(&local.versions), &mut buf)
        .map_err(wrong)?;
    write_msg(s, node, &buf[..n])?;
    let msg = read_msg(s, node, deadline, stop)?;
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs.read_message(&msg, &mut payload).map_err(wrong)?;
    let protocol = agree(local, &peer, &payload[..n])?;
    let session = hs.into_stateless_transport_mode().map_err(wrong)?;
    Ok(Established {
        session,
        peer,
        protocol,
    })
}

/// A knock on a lower-numbered peer (see [`super::knock`]): our hello, then the
/// peer's, read so that the peer has had ours before the connection closes. Gives up
/// after a second.
pub(crate) fn knock(s: &mut TcpStream, local: &Local, stop: &AtomicBool) {
    let timeout = Duration::from_secs(1);
    if setup(s, timeout).is_err() || s.write_all(&local.hello.encode()).is_err() {
        return;
    }
    let _ = read_hello(s, Instant::now() + timeout, stop);
}

/// The accepting side. `allowed(node)` says whether that node may dial us.
pub(crate) fn accept(
    s: &mut TcpStream,
    local: &Local,
    allowed: &dyn Fn(u32) -> Result<(), String>,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Established, Refusal> {
    let deadline = Instant::now() + timeout;
    setup(s, timeout)?;
    let theirs = read_hello(s, deadline, stop)?;
    let peer = wire::decode_hello(&theirs).map_err(|reject| Refusal { reject, node: None })?;
    // Answer even a peer we will refuse, so it can tell why (cluster name, node number).
    let ours = local.hello.encode();
    s.write_all(&ours).map_err(|e| {
        Refusal::new(
            Cause::ConnectionLost,
            Some(peer.node),
            format!("hello write: {e}"),
        )
    })?;
    check_cluster(local, &peer)?;
    if let Err(why) = allowed(peer.node) {
        return Err(Refusal::new(
            Cause::UnknownNode,
            Some(peer.node),
            format!("unknown node {}: {why}", peer.node),
        ));
    }
    let node = peer.node;
    let prologue = wire::prologue(&theirs, &ours);
    let wrong = |e: snow::Error| Refusal::new(Cause::WrongSecret, Some(node), e.to_string());
    let mut hs = builder(local, &prologue)
        .and_then(|b| b.build_responder())
        .map_err(wrong)?;
    let msg = read_msg(s, node, deadline, stop)?;
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs.read_message(&msg, &mut payload).map_err(wrong)?;
    let protocol = agree(local, &peer, &payload[..n]);
    // Answer with our offer even without a version in common, so the dialer can
    // name both ranges too.
    let mut buf = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs
        .write_message(&wire::encode_offer(&local.versions), &mut buf)
        .map_err(wrong)?;
    write_msg(s, node, &buf[..n])?;
    let protocol = protocol?;
    let session = hs.into_stateless_transport_mode().map_err(wrong)?;
    Ok(Established {
        session,
        peer,
        protocol,
    })
}
