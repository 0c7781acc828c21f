//! What goes on the wire between nodes, as pure functions over bytes: the
//! cleartext hello, the version offer, key derivation, and the framing of Noise
//! transport messages. No sockets here, so all of it can be unit-tested and fuzzed.
//!
//! ```text
//! hello (32 bytes, each side, cleartext):
//!   "ADBC" | lowest version offered u8 | length u8 = 32
//!   | SHA-256(label | cluster_name)[..16] | node u32 BE | EID 6 bytes
//! handshake: Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s, prologue = label | dialer hello
//!   | acceptor hello; each message as u16 BE length (<= 256) | bytes
//! offer (the payload of the dialer's message and of the acceptor's answer):
//!   empty if the node offers one version only, else highest version offered u8
//!   (bytes after it are for later versions, and ignored)
//! record:  u16 BE length (16..=65535) | Noise transport message (ciphertext + tag)
//! frame (a record's plaintext): type u8 | body
//!   1 Ping  u64 BE stamp        2 Pong u64 BE stamp (echoed)
//!   3 Data  payload             4 DataStart u32 BE total | first chunk
//!   5 DataCont next chunk       (a payload > one record is DataStart + DataCont..)
//! ```
//!
//! Protocol versions: 1 is the first build's, whose hello says version 1 and whose
//! handshake payloads are empty; it refuses a hello whose byte 4 is not 1 or whose
//! length byte is not 32, and ignores handshake payloads. 2 offers a range: byte 4
//! became the lowest version offered and the offer in the handshake payload carries
//! the highest, so a node offering 1..=2 sends a hello a version-1 node accepts.
//! Both sides use the highest version in both ranges; with none in common the
//! connection is refused as `Cause::NoCommonVersion`. The hellos are bound into the
//! prologue and the offers travel inside the handshake, so each side authenticates
//! what the other offered and nobody in between can downgrade it. This build
//! speaks [`PROTOCOL_VERSIONS`], 1..=2; version 2's records and frames are version 1's.

use crate::eid::Eid;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::ops::RangeInclusive;

const MAGIC: [u8; 4] = *b"ADBC";
/// The protocol versions this build speaks (see the module's comment).
pub const PROTOCOL_VERSIONS: RangeInclusive<u8> = 1..=2;
pub const HELLO_LEN: usize = 32;
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Binds the prologue, PSK and cluster hash to this protocol, so keys or hashes
/// made for anything else never match ours. It names version 1 and stays so: every
/// version derives the same keys.
const LABEL: &[u8] = b"res_astdb_cluster transport v1";
/// Noise caps a message (ciphertext with tag) at 65535 bytes.
const MAX_RECORD: usize = 65535;
const TAG_LEN: usize = 16;
const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;
/// NNpsk0's two handshake messages are 48 bytes each; anything much larger is abuse.
pub(crate) const MAX_HANDSHAKE_MSG: usize = 256;

const T_PING: u8 = 1;
const T_PONG: u8 = 2;
const T_DATA: u8 = 3;
const T_DATA_START: u8 = 4;
const T_DATA_CONT: u8 = 5;

/// Why a connection was refused or closed; each has its own counter and is
/// logged once per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Cause {
    MalformedHello,
    ClusterNameDiffers,
    UnknownNode,
    WrongSecret,
    FrameAuth,
    OversizedFrame,
    MalformedFrame,
    RefusedByPeer,
    ConnectionLost,
    Unreachable,
    HandshakeTimeout,
    NoCommonVersion,
}

impl Cause {
    pub(crate) const ALL: [Cause; 12] = [
        Cause::MalformedHello,
        Cause::ClusterNameDiffers,
        Cause::UnknownNode,
        Cause::WrongSecret,
        Cause::FrameAuth,
        Cause::OversizedFrame,
        Cause::MalformedFrame,
        Cause::RefusedByPeer,
        Cause::ConnectionLost,
        Cause::Unreachable,
        Cause::HandshakeTimeout,
        Cause::NoCommonVersion,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::MalformedHello => "malformed hello",
            Cause::ClusterNameDiffers => "cluster name differs",
            Cause::UnknownNode => "unknown node",
            Cause::WrongSecret => "wrong secret or corrupted handshake",
            Cause::FrameAuth => "frame failed authentication",
            Cause::OversizedFrame => "oversized frame",
            Cause::MalformedFrame => "malformed frame",
            Cause::RefusedByPeer => "refused by peer",
            Cause::ConnectionLost => "connection lost",
            Cause::Unreachable => "address not resolved",
            Cause::HandshakeTimeout => "handshake timed out",
            Cause::NoCommonVersion => "no protocol version in common",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cause with the detail that goes into the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub(crate) cause: Cause,
    pub(crate) detail: String,
}

impl Reject {
    pub(crate) fn new(cause: Cause, detail: impl Into<String>) -> Reject {
        Reject {
            cause,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.cause.as_str())
        } else {
            write!(f, "{}: {}", self.cause, self.detail)
        }
    }
}

/// Hash of the cluster name: peers compare it without the name being sent.
pub fn cluster_hash(cluster_name: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update([0u8]);
    h.update(cluster_name.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// The Noise pre-shared key: HKDF-SHA256 over the secret, salted with the
/// cluster name so two clusters sharing a secret still get different keys.
pub fn derive_psk(cluster_name: &str, secret: &str) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(cluster_name.as_bytes()), secret.as_bytes());
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so this cannot fail.
    let _ = hk.expand(LABEL, &mut okm);
    okm
}

/// Prologue both sides feed into Noise: the two hellos are thereby authenticated.
pub fn prologue(dialer_hello: &[u8; HELLO_LEN], acceptor_hello: &[u8; HELLO_LEN]) -> Vec<u8> {
    let mut p = Vec::with_capacity(LABEL.len() + 2 * HELLO_LEN);
    p.extend_from_slice(LABEL);
    p.extend_from_slice(dialer_hello);
    p.extend_from_slice(acceptor_hello);
    p
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The lowest protocol version the node offers (1 from the first build, which
    /// offers nothing else); the highest comes in its [offer](decode_offer).
    pub min_version: u8,
    pub cluster_hash: [u8; 16],
    pub node: u32,
    pub eid: Eid,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.min_version;
        b[5] = HELLO_LEN as u8;
        b[6..22].copy_from_slice(&self.cluster_hash);
        b[22..26].copy_from_slice(&self.node.to_be_bytes());
        b[26..32].copy_from_slice(&self.eid.0);
        b
    }
}

/// Checks magic, version and length byte: the first 6 bytes of a hello, so a
/// reader can refuse garbage before waiting for the rest. Any version but 0 passes:
/// it is only the lowest the peer offers, and whether it has one in common with
/// ours is known once its offer is (so that the refusal can name both ranges).
pub fn check_hello_prefix(b: &[u8]) -> Result<(), Reject> {
    let malformed = |d: String| Err(Reject::new(Cause::MalformedHello, d));
    let Some(p) = b.get(..6) else {
        return malformed(format!("{} bytes", b.len()));
    };
    if p[0..4] != MAGIC {
        return malformed("not a cluster peer (bad magic)".into());
    }
    if p[4] == 0 {
        return malformed("protocol version 0".into());
    }
    if p[5] as usize != HELLO_LEN {
        return malformed(format!("hello length {}", p[5]));
    }
    Ok(())
}

/// Parses a hello; anything but exactly one well-formed hello is "malformed hello".
pub fn decode_hello(b: &[u8]) -> Result<Hello, Reject> {
    check_hello_prefix(b)?;
    if b.len() != HELLO_LEN {
        return Err(Reject::new(
            Cause::MalformedHello,
            format!("{} bytes, want {HELLO_LEN}", b.len()),
        ));
    }
    let mut cluster_hash = [0u8; 16];
    cluster_hash.copy_from_slice(&b[6..22]);
    let node = u32::from_be_bytes([b[22], b[23], b[24], b[25]]);
    let mut eid = [0u8; 6];
    eid.copy_from_slice(&b[26..32]);
    Ok(Hello {
        min_version: b[4],
        cluster_hash,
        node,
        eid: Eid(eid),
    })
}

/// The handshake payload offering `versions` (whose start is the hello's byte 4):
/// empty for a single version, as the first build sends, else the highest.
pub fn encode_offer(versions: &RangeInclusive<u8>) -> Vec<u8> {
    if versions.start() == versions.end() {
        Vec::new()
    } else {
        vec![*versions.end()]
    }
}

/// The versions a peer offers, from the lowest in its hello and the handshake
/// payload it sent.
pub fn decode_offer(min_version: u8, payload: &[u8]) -> Result<RangeInclusive<u8>, Reject> {
    let Some(&max) = payload.first() else {
        return Ok(min_version..=min_version);
    };
    if max < min_version {
        return Err(Reject::new(
            Cause::MalformedHello,
            format!("offers protocol {min_version}..={max}"),
        ));
    }
    Ok(min_version..=max)
}

/// The version two nodes speak: the highest both offer.
pub fn negotiate(ours: &RangeInclusive<u8>, theirs: &RangeInclusive<u8>) -> Option<u8> {
    let v = *ours.end().min(theirs.end());
    (v >= *ours.start() && v >= *theirs.start()).then_some(v)
}

/// "1..=2", as log lines show a range of versions.
pub fn show_versions(v: &RangeInclusive<u8>) -> String {
    format!("{}..={}", v.start(), v.end())
}

/// Opens (decrypts and authenticates) one record; None if it does not verify.
/// `nonce` counts records in order.
pub trait Open {
    fn open(&self, nonce: u64, record: &[u8], out: &mut [u8]) -> Option<usize>;
}

/// Seals one plaintext frame into a record; None if it does not fit.
pub trait Seal {
    fn seal(&self, nonce: u64, plain: &[u8], out: &mut [u8]) -> Option<usize>;
}

impl Open for snow::StatelessTransportState {
    fn open(&self, nonce: u64, record: &[u8], out: &mut [u8]) -> Option<usize> {
        self.read_message(nonce, record, out).ok()
    }
}

impl Seal for snow::StatelessTransportState {
    fn seal(&self, nonce: u64, plain: &[u8], out: &mut [u8]) -> Option<usize> {
        self.write_message(nonce, plain, out).ok()
    }
}

impl<T: Open> Open for std::sync::Arc<T> {
    fn open(&self, nonce: u64, record: &[u8], out: &mut [u8]) -> Option<usize> {
        (**self).open(nonce, record, out)
    }
}

impl<T: Seal> Seal for std::sync::Arc<T> {
    fn seal(&self, nonce: u64, plain: &[u8], out: &mut [u8]) -> Option<usize> {
        (**self).seal(nonce, plain, out)
    }
}

/// No encryption, a zero "tag": lets tests and the fuzzer reach the frame
/// layer without keys.
pub struct Cleartext;

impl Open for Cleartext {
    fn open(&self, _nonce: u64, record: &[u8], out: &mut [u8]) -> Option<usize> {
        let n = record.len().checked_sub(TAG_LEN)?;
        if record[n..].iter().any(|&b| b != 0) || out.len() < n {
            return None;
        }
        out[..n].copy_from_slice(&record[..n]);
        Some(n)
    }
}

impl Seal for Cleartext {
    fn seal(&self, _nonce: u64, plain: &[u8], out: &mut [u8]) -> Option<usize> {
        let n = plain.len() + TAG_LEN;
        if out.len() < n {
            return None;
        }
        out[..plain.len()].copy_from_slice(plain);
        out[plain.len()..n].fill(0);
        Some(n)
    }
}

/// A complete message from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Ping(u64),
    Pong(u64),
    Data(Vec<u8>),
}

/// Turns a byte stream of records into frames: splits records, opens them
/// in nonce order, and reassembles fragmented payloads up to `max_payload`.
pub struct FrameReader<C: Open> {
    cipher: C,
    nonce: u64,
    buf: Vec<u8>,
    head: usize,
    tail: usize,
    plain: Vec<u8>,
    max_payload: usize,
    partial: Option<(usize, Vec<u8>)>,
    pub(crate) records: u64,
}

const READ_BUF: usize = 256 * 1024;

impl<C: Open> FrameReader<C> {
    pub fn new(cipher: C, max_payload: usize) -> Self {
        FrameReader {
            cipher,
            nonce: 0,
            buf: vec![0; READ_BUF],
            head: 0,
            tail: 0,
            plain: vec![0; MAX_RECORD],
            max_payload,
            partial: None,
            records: 0,
        }
    }

    /// Makes room after the unread bytes; a whole record always fits.
    fn make_room(&mut self) {
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        } else if self.buf.len() - self.tail < 2 + MAX_RECORD && self.head > 0 {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
    }

    /// Reads once from `r` into the buffer. Ok(0) is end of stream.
    pub(crate) fn fill_from<R: Read>(&mut self, r: &mut R) -> io::Result<usize> {
        self.make_room();
        let n = r.read(&mut self.buf[self.tail..])?;
        self.tail += n;
        Ok(n)
    }

    /// Feeds bytes (tests and fuzzing; the socket path uses `fill_from`).
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Frame>, Reject> {
        let mut out = Vec::new();
        while !data.is_empty() {
            self.make_room();
            let room = self.buf.len() - self.tail;
            let n = room.min(data.len());
            self.buf[self.tail..self.tail + n].copy_from_slice(&data[..n]);
            self.tail += n;
            data = &data[n..];
            while let Some(f) = self.next_frame()? {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// The next complete frame in the buffer, if any.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, Reject> {
        loop {
            let avail = &self.buf[self.head..self.tail];
            if avail.len() < 2 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
            if len < TAG_LEN {
                return Err(Reject::new(
                    Cause::FrameAuth,
                    format!("record of {len} bytes is shorter than its tag"),
                ));
            }
            if avail.len() < 2 + len {
                return Ok(None);
            }
            let record = &avail[2..2 + len];
            let n = self
                .cipher
                .open(self.nonce, record, &mut self.plain)
                .ok_or_else(|| {
                    Reject::new(
                        Cause::FrameAuth,
                        format!("record {} did not verify", self.nonce),
                    )
                })?;
            self.nonce += 1;
            self.records += 1;
            self.head += 2 + len;
            if let Some(frame) = self.take_frame(n)? {
                return Ok(Some(frame));
            }
        }
    }

    fn take_frame(&mut self, n: usize) -> Result<Option<Frame>, Reject> {
        let malformed = |d: String| Err(Reject::new(Cause::MalformedFrame, d));
        let Some((&kind, body)) = self.plain.get(..n).and_then(|p| p.split_first()) else {
            return malformed("empty frame".into());
        };
        let stamp =
            |body: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(body.try_into().ok()?)) };
        match kind {
            T_PING | T_PONG => {
                let Some(s) = stamp(body) else {
                    return malformed(format!("heartbeat of {} bytes", body.len()));
                };
                Ok(Some(if kind == T_PING {
                    Frame::Ping(s)
                } else {
                    Frame::Pong(s)
                }))
            }
            T_DATA | T_DATA_START if self.partial.is_some() => {
                malformed("new payload before the previous one was complete".into())
            }
            T_DATA => {
                if body.len() > self.max_payload {
                    return Err(self.oversized(body.len()));
                }
                Ok(Some(Frame::Data(body.to_vec())))
            }
            T_DATA_START => {
                let (Some(total), Some(chunk)) = (body.get(..4), body.get(4..)) else {
                    return malformed("payload start without its length".into());
                };
                let total = u32::from_be_bytes([total[0], total[1], total[2], total[3]]) as usize;
                if total > self.max_payload {
                    return Err(self.oversized(total));
                }
                if chunk.len() >= total {
                    return malformed(format!(
                        "payload start carries {} bytes of a {total}-byte payload",
                        chunk.len()
                    ));
                }
                let mut v = Vec::with_capacity(total);
                v.extend_from_slice(chunk);
                self.partial = Some((total, v));
                Ok(None)
            }
            T_DATA_CONT => {
                let Some((total, mut v)) = self.partial.take() else {
                    return malformed("payload continuation without a start".into());
                };
                if v.len() + body.len() > total {
                    return malformed(format!("payload continues past its {total} bytes"));
                }
                v.extend_from_slice(body);
                if v.len() == total {
                    Ok(Some(Frame::Data(v)))
                } else {
                    self.partial = Some((total, v));
                    Ok(None)
                }
            }
            other => malformed(format!("unknown frame type {other}")),
        }
    }

    fn oversized(&self, len: usize) -> Reject {
        Reject::new(
            Cause::OversizedFrame,
            format!("payload of {len} bytes, limit {}", self.max_payload),
        )
    }
}

/// Seals frames into records and writes them to a (buffered) writer.
pub struct FrameWriter<C: Seal> {
    cipher: C,
    nonce: u64,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

impl<C: Seal> FrameWriter<C> {
    pub fn new(cipher: C) -> Self {
        FrameWriter {
            cipher,
            nonce: 0,
            plain: Vec::with_capacity(MAX_PLAIN),
            sealed: vec![0; 2 + MAX_RECORD],
        }
    }

    /// Seals `self.plain` as the next record and writes it.
    fn emit<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        let n = self
            .cipher
            .seal(self.nonce, &self.plain, &mut self.sealed[2..])
            .ok_or_else(|| io::Error::other("cannot seal frame"))?;
        self.nonce += 1;
        self.sealed[..2].copy_from_slice(&(n as u16).to_be_bytes());
        w.write_all(&self.sealed[..2 + n])?;
        Ok(2 + n)
    }

    pub fn ping<W: Write>(&mut self, w: &mut W, stamp: u64) -> io::Result<usize> {
        self.stamp(w, T_PING, stamp)
    }

    pub(crate) fn pong<W: Write>(&mut self, w: &mut W, stamp: u64) -> io::Result<usize> {
        self.stamp(w, T_PONG, stamp)
    }

    fn stamp<W: Write>(&mut self, w: &mut W, kind: u8, stamp: u64) -> io::Result<usize> {
        self.plain.clear();
        self.plain.push(kind);
        self.plain.extend_from_slice(&stamp.to_be_bytes());
        self.emit(w)
    }

    /// Writes one payload as one record, or as DataStart + DataCont records.
    /// Returns (bytes written, records written).
    pub fn data<W: Write>(&mut self, w: &mut W, payload: &[u8]) -> io::Result<(usize, u64)> {
        self.plain.clear();
        if payload.len() < MAX_PLAIN {
            self.plain.push(T_DATA);
            self.plain.extend_from_slice(payload);
            return Ok((self.emit(w)?, 1));
        }
        let total =
            u32::try_from(payload.len()).map_err(|_| io::Error::other("payload over 4 GiB"))?;
        let first = MAX_PLAIN - 5;
        self.plain.push(T_DATA_START);
        self.plain.extend_from_slice(&total.to_be_bytes());
        self.plain.extend_from_slice(&payload[..first]);
        let mut bytes = self.emit(w)?;
        let mut records = 1;
        for chunk in payload[first..].chunks(MAX_PLAIN - 1) {
            self.plain.clear();
            self.plain.push(T_DATA_CONT);
            self.plain.extend_from_slice(chunk);
            bytes += self.emit(w)?;
            records += 1;
        }
        Ok((bytes, records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            min_version: 1,
            cluster_hash: cluster_hash("c1"),
            node: 7,
            eid: Eid([1, 2, 3, 4, 5, 6]),
        }
    }

    #[test]
    fn hello_round_trips() {
        assert_eq!(decode_hello(&hello().encode()), Ok(hello()));
        // A later build that no longer offers version 1 still gets as far as its offer.
        let later = Hello {
            min_version: 3,
            ..hello()
        };
        assert_eq!(decode_hello(&later.encode()), Ok(later));
    }

    /// What the first build sends, byte by byte (its `Hello::encode`).
    fn todays_hello(node: u32, eid: [u8; 6]) -> Vec<u8> {
        let mut b = b"ADBC".to_vec();
        b.push(1);
        b.push(32);
        b.extend_from_slice(&cluster_hash("c1"));
        b.extend_from_slice(&node.to_be_bytes());
        b.extend_from_slice(&eid);
        b
    }

    #[test]
    fn a_hello_of_the_first_build_is_accepted_and_ours_offering_1_is_the_same() {
        let old = todays_hello(7, [1, 2, 3, 4, 5, 6]);
        assert_eq!(decode_hello(&old), Ok(hello()));
        assert_eq!(hello().encode().to_vec(), old);
        // What the first build checks of our hello, offering 1..=2: magic, 1, 32.
        let ours = Hello {
            min_version: *PROTOCOL_VERSIONS.start(),
            ..hello()
        }
        .encode();
        assert_eq!((&ours[..4], ours[4], ours[5]), (&b"ADBC"[..], 1, 32));
        // Its empty handshake payload offers just version 1.
        assert_eq!(decode_offer(old[4], &[]), Ok(1..=1));
    }

    #[test]
    fn offers_round_trip_and_a_range_upside_down_is_malformed() {
        for v in [1..=1, 1..=2, 2..=2, 3..=7] {
            let back = decode_offer(*v.start(), &encode_offer(&v));
            assert_eq!(back, Ok(v.clone()));
        }
        assert_eq!(encode_offer(&(1..=1)), Vec::<u8>::new());
        assert_eq!(encode_offer(&PROTOCOL_VERSIONS), vec![2]);
        assert_eq!(
            decode_offer(1, &[4, 9, 9]),
            Ok(1..=4),
            "later fields ignored"
        );
        assert_eq!(
            decode_offer(3, &[2]).unwrap_err().cause,
            Cause::MalformedHello
        );
    }

    #[test]
    fn the_highest_version_both_offer_is_used_and_none_in_common_is_none() {
        assert_eq!(negotiate(&(1..=2), &(1..=2)), Some(2));
        assert_eq!(negotiate(&(1..=2), &(1..=1)), Some(1));
        assert_eq!(negotiate(&(1..=1), &(1..=2)), Some(1));
        assert_eq!(negotiate(&(1..=2), &(2..=5)), Some(2));
        assert_eq!(negotiate(&(1..=1), &(2..=2)), None);
        assert_eq!(negotiate(&(1..=2), &(3..=4)), None);
        assert_eq!(negotiate(&(3..=4), &(1..=2)), None);
        assert_eq!(show_versions(&(3..=4)), "3..=4");
    }

    #[test]
    fn hello_with_bad_magic_version_or_length_is_malformed() {
        let good = hello().encode();
        let mut cases: Vec<Vec<u8>> = vec![vec![], good[..31].to_vec(), [&good[..], &[0]].concat()];
        for (i, v) in [(0, b'X'), (4, 0u8), (5, 33u8)] {
            let mut b = good.to_vec();
            b[i] = v;
            cases.push(b);
        }
        for b in cases {
            assert_eq!(
                decode_hello(&b).unwrap_err().cause,
                Cause::MalformedHello,
                "{b:?}"
            );
        }
    }

    #[test]
    fn cluster_hash_and_psk_depend_on_name_and_secret() {
        assert_ne!(cluster_hash("a"), cluster_hash("b"));
        assert_eq!(cluster_hash("a"), cluster_hash("a"));
        assert_ne!(derive_psk("a", "s1"), derive_psk("a", "s2"));
        assert_ne!(derive_psk("a", "s1"), derive_psk("b", "s1"));
        assert_eq!(derive_psk("a", "s1"), derive_psk("a", "s1"));
    }

    fn round_trip(payloads: &[Vec<u8>], max: usize, split: usize) -> Vec<Frame> {
        let mut w = FrameWriter::new(Cleartext);
        let mut wire = Vec::new();
        w.ping(&mut wire, 42).unwrap();
        for p in payloads {
            w.data(&mut wire, p).unwrap();
        }
        let mut r = FrameReader::new(Cleartext, max);
        let mut out = Vec::new();
        for piece in wire.chunks(split) {
            out.extend(r.push(piece).unwrap());
        }
        out
    }

    #[test]
    fn payloads_of_every_size_class_survive_any_read_split() {
        let payloads: Vec<Vec<u8>> = [0, 1, 200, MAX_PLAIN - 1, MAX_PLAIN, 3 * MAX_PLAIN + 17]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7) as u8).collect())
            .collect();
        for split in [1usize, 7, 4096, 1 << 20] {
            if split == 1 {
                // Byte-at-a-time over megabytes is slow; the small ones suffice.
                let out = round_trip(&payloads[..3], 1 << 20, 1);
                assert_eq!(out.len(), 4);
                continue;
            }
            let out = round_trip(&payloads, 1 << 20, split);
            assert_eq!(out[0], Frame::Ping(42));
            let data: Vec<Vec<u8>> = out[1..]
                .iter()
                .map(|f| match f {
                    Frame::Data(d) => d.clone(),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(data, payloads);
        }
    }

    #[test]
    fn payload_over_the_limit_is_an_oversized_frame() {
        let mut w = FrameWriter::new(Cleartext);
        let mut wire = Vec::new();
        w.data(&mut wire, &vec![1u8; 200_000]).unwrap();
        let mut r = FrameReader::new(Cleartext, 100_000);
        assert_eq!(r.push(&wire).unwrap_err().cause, Cause::OversizedFrame);
        let mut r = FrameReader::new(Cleartext, 100);
        let mut wire = Vec::new();
        w.data(&mut wire, &[1u8; 101]).unwrap();
        assert_eq!(r.push(&wire).unwrap_err().cause, Cause::OversizedFrame);
    }

    #[test]
    fn bad_frames_are_malformed_and_bad_records_fail_authentication() {
        let rec = |plain: &[u8]| {
            let mut v = ((plain.len() + TAG_LEN) as u16).to_be_bytes().to_vec();
            v.extend_from_slice(plain);
            v.extend_from_slice(&[0; TAG_LEN]);
            v
        };
        for plain in [
            &[][..],
            &[9],
            &[T_PING, 1, 2],
            &[T_DATA_CONT, 1],
            &[T_DATA_START, 0, 0],
            &[T_DATA_START, 0, 0, 0, 1, 5],
        ] {
            let mut r = FrameReader::new(Cleartext, 1000);
            assert_eq!(
                r.push(&rec(plain)).unwrap_err().cause,
                Cause::MalformedFrame,
                "{plain:?}"
            );
        }
        let mut r = FrameReader::new(Cleartext, 1000);
        assert_eq!(
            r.push(&[0, 3, 1, 2, 3]).unwrap_err().cause,
            Cause::FrameAuth
        );
        let mut bad_tag = rec(&[T_DATA, 1]);
        *bad_tag.last_mut().unwrap() = 1;
        let mut r = FrameReader::new(Cleartext, 1000);
        assert_eq!(r.push(&bad_tag).unwrap_err().cause, Cause::FrameAuth);
    }

    #[test]
    fn noise_records_replayed_or_reordered_fail_authentication() {
        let psk = derive_psk("c", "secret-secret-secret");
        let p = prologue(&hello().encode(), &hello().encode());
        let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
        let mut i = snow::Builder::new(params.clone())
            .psk(0, &psk)
            .unwrap()
            .prologue(&p)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = snow::Builder::new(params)
            .psk(0, &psk)
            .unwrap()
            .prologue(&p)
            .unwrap()
            .build_responder()
            .unwrap();
        let (mut m, mut pl) = ([0u8; 256], [0u8; 256]);
        let n = i.write_message(&[], &mut m).unwrap();
        r.read_message(&m[..n], &mut pl).unwrap();
        let n = r.write_message(&[], &mut m).unwrap();
        i.read_message(&m[..n], &mut pl).unwrap();
        let i = i.into_stateless_transport_mode().unwrap();
        let r = r.into_stateless_transport_mode().unwrap();
        let mut w = FrameWriter::new(i);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        w.data(&mut a, b"first").unwrap();
        w.data(&mut b, b"second").unwrap();
        let mut reader = FrameReader::new(r, 1000);
        assert_eq!(
            reader.push(&a).unwrap(),
            vec![Frame::Data(b"first".to_vec())]
        );
        // The same record again: its nonce is spent.
        assert_eq!(reader.push(&a).unwrap_err().cause, Cause::FrameAuth);
    }

    // The same properties the cargo-fuzz target checks, runnable on stable.
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            cut in 0usize..4096,
        ) {
            let _ = decode_hello(&data);
            if let Some((&min, offer)) = data.split_first() {
                if let Ok(v) = decode_offer(min, offer) {
                    proptest::prop_assert!(v.start() <= v.end());
                }
            }
            let cut = cut.min(data.len());
            let mut r = FrameReader::new(Cleartext, 1000);
            if let Ok(frames) = r.push(&data[..cut]).and_then(|mut f| {
                f.extend(r.push(&data[cut..])?);
                Ok(f)
            }) {
                for f in frames {
                    if let Frame::Data(d) = f {
                        proptest::prop_assert!(d.len() <= 1000);
                    }
                }
            }
        }

        #[test]
        fn a_corrupted_stream_fails_cleanly_or_yields_bounded_frames(
            payloads in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), 1..5),
            flip in proptest::prelude::any::<(usize, u8)>(),
        ) {
            let mut w = FrameWriter::new(Cleartext);
            let mut wire = Vec::new();
            for p in &payloads {
                w.data(&mut wire, p).unwrap();
            }
            let at = flip.0 % wire.len();
            wire[at] ^= flip.1 | 1;
            let mut r = FrameReader::new(Cleartext, 2000);
            if let Ok(frames) = r.push(&wire) {
                proptest::prop_assert!(frames.len() <= payloads.len() + 1);
            }
        }
    }
}
