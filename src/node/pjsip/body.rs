//! The body of one `Event: asterisk-db` PUBLISH: JSON with the sender's EID and the
//! family in the clear, and what it carries sealed with XChaCha20-Poly1305 under a key
//! derived from `cluster_secret`:
//!
//! ```json
//! {"type":"asterisk-db","eid":"02:00:00:00:00:01","family":"blacklist","sealed":"<base64>"}
//! ```
//!
//! Opened, `sealed` holds the sender's node number, its session (drawn at start, so a
//! restart is seen), the body's sequence number (0 for a body that only acknowledges or
//! says the sender is there), the highest sequence number it has had from the receiver,
//! and the engine's messages about `family`, each in the mesh's binary encoding. The
//! seal's associated data binds the cluster, the EID and the family: a body moved to
//! another family or sender, or made up without the secret, does not open.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::eid::Eid;
use crate::engine::{codec, Body, Message};

/// The longest body sent or accepted, in bytes of JSON text: a PUBLISH stays well
/// inside one UDP datagram and res_pjsip's 64 KiB packet limit.
pub const MAX_BODY: usize = 60_000;
/// The most bytes of messages one body carries (base64 and the JSON around it make
/// the text a third longer).
pub const MESSAGE_BUDGET: usize = 43_000;
/// The event package.
pub const EVENT: &str = "asterisk-db";
const LABEL: &[u8] = b"res_astdb_cluster sip v1";
const NONCE_LEN: usize = 24;
const FRAME_VERSION: u8 = 1;

/// What one body says, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub node: u32,
    pub session: u64,
    /// 0: a body with no messages (an acknowledgement, or a heartbeat).
    pub seq: u64,
    /// The receiver's session that `ack` counts in.
    pub ack_session: u64,
    /// The highest sequence number the sender has had from the receiver.
    pub ack: u64,
    /// The engine's messages about the body's family, encoded.
    pub messages: Vec<Vec<u8>>,
}

/// Why a body was refused: the short cause logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Not JSON of the body's shape, or not application/json.
    Malformed,
    /// Longer than [`MAX_BODY`].
    Oversized,
    /// Does not open with this cluster's key.
    Seal,
    /// Opens, but its node is not the one the publication is configured for.
    WrongNode,
    /// From a publication whose `event_asterisk-db` names no node section.
    NotConfigured,
    /// An older session of the sender, or a message about another family.
    Replayed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed body",
            Refusal::Oversized => "oversized body",
            Refusal::Seal => "body does not open with cluster_secret",
            Refusal::WrongNode => "body from another node than the publication's",
            Refusal::NotConfigured => "publication not configured",
            Refusal::Replayed => "replayed or misplaced body",
        }
    }
}

/// The cluster's key for bodies.
pub struct Seal {
    aead: XChaCha20Poly1305,
    cluster: String,
}

impl Seal {
    /// HKDF-SHA256 of `secret`, salted with the cluster name.
    pub fn new(cluster: &str, secret: &str) -> Seal {
        let hk = Hkdf::<Sha256>::new(Some(cluster.as_bytes()), secret.as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's output limit: this cannot fail.
        let _ = hk.expand(LABEL, &mut key);
        Seal {
            aead: XChaCha20Poly1305::new((&key).into()),
            cluster: cluster.to_string(),
        }
    }

    fn aad(&self, eid: &str, family: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(LABEL.len() + self.cluster.len() + 40);
        for part in [
            LABEL,
            self.cluster.as_bytes(),
            eid.as_bytes(),
            family.as_bytes(),
        ] {
            aad.extend_from_slice(part);
            aad.push(0);
        }
        aad
    }

    /// The JSON text of `frame` from `eid` about `family` ("" for a body with no
    /// messages). None only when the system gives no randomness for the nonce.
    pub fn seal(&self, eid: Eid, family: &str, frame: &Frame) -> Option<String> {
        let mut plain =
            Vec::with_capacity(41 + frame.messages.iter().map(|m| m.len() + 4).sum::<usize>());
        plain.push(FRAME_VERSION);
        plain.extend_from_slice(&frame.node.to_be_bytes());
        for n in [frame.session, frame.seq, frame.ack_session, frame.ack] {
            plain.extend_from_slice(&n.to_be_bytes());
        }
        plain.extend_from_slice(&(frame.messages.len() as u32).to_be_bytes());
        for m in &frame.messages {
            plain.extend_from_slice(&(m.len() as u32).to_be_bytes());
            plain.extend_from_slice(m);
        }
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let eid_text = eid.to_string();
        let aad = self.aad(&eid_text, family);
        let sealed = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .ok()?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        let body = json!({
            "type": EVENT,
            "eid": eid_text,
            "family": family,
            "sealed": base64::engine::general_purpose::STANDARD.encode(raw),
        });
        Some(body.to_string())
    }

    /// Opens a body's text: the sender's EID, the family and the frame.
    pub fn open(&self, text: &[u8]) -> Result<(Eid, String, Frame), Refusal> {
        if text.len() > MAX_BODY {
            return Err(Refusal::Oversized);
        }
        let value: Value = serde_json::from_slice(text).map_err(|_| Refusal::Malformed)?;
        let field = |name: &str| value.get(name).and_then(Value::as_str);
        if field("type") != Some(EVENT) {
            return Err(Refusal::Malformed);
        }
        let (Some(eid_text), Some(family), Some(sealed)) =
            (field("eid"), field("family"), field("sealed"))
        else {
            return Err(Refusal::Malformed);
        };
        let eid: Eid = eid_text.parse().map_err(|_| Refusal::Malformed)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| Refusal::Malformed)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(Refusal::Malformed);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let aad = self.aad(eid_text, family);
        let plain = self
            .aead
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| Refusal::Seal)?;
        let frame = parse_frame(&plain).ok_or(Refusal::Malformed)?;
        Ok((eid, family.to_string(), frame))
    }
}

fn parse_frame(plain: &[u8]) -> Option<Frame> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let part = plain.get(at..at.checked_add(n)?)?;
        at += n;
        Some(part)
    };
    if take(1)? != [FRAME_VERSION] {
        return None;
    }
    let node = u32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut numbers = [0u64; 4];
    for n in &mut numbers {
        *n = u64::from_be_bytes(take(8)?.try_into().ok()?);
    }
    let count = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let mut messages = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        messages.push(take(len)?.to_vec());
    }
    if take(1).is_some() {
        return None;
    }
    let [session, seq, ack_session, ack] = numbers;
    Some(Frame {
        node,
        session,
        seq,
        ack_session,
        ack,
        messages,
    })
}

/// `msg` cut into messages whose encodings each fit in `budget` bytes, by halving
/// its lists; a single item larger than that is left whole (and refused by the
/// caller).
pub fn split(msg: Message, budget: usize) -> Vec<(Message, Vec<u8>)> {
    let bytes = codec::encode(&msg);
    if bytes.len() <= budget {
        return vec![(msg, bytes)];
    }
    fn halves<T: Clone>(list: &[T], make: impl Fn(Vec<T>) -> Body) -> Option<(Body, Body)> {
        (list.len() > 1).then(|| {
            let (a, b) = list.split_at(list.len() / 2);
            (make(a.to_vec()), make(b.to_vec()))
        })
    }
    let parts = match &msg.body {
        Body::Changes(l) => halves(l, Body::Changes),
        Body::Acks(l) => halves(l, Body::Acks),
        Body::Digest(l) => halves(l, Body::Digest),
        Body::Summary(l) => halves(l, Body::Summary),
        Body::Pull(l) => halves(l, Body::Pull),
    };
    let Some((a, b)) = parts else {
        return vec![(msg, bytes)];
    };
    let with = |body| Message {
        sent: msg.sent,
        family: msg.family.clone(),
        mode: msg.mode,
        body,
    };
    let mut out = split(with(a), budget);
    out.extend(split(with(b), budget));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Change, Entry, Hlc, ItemId, Mode, Version};

    fn eid() -> Eid {
        "02:00:00:00:00:01".parse().unwrap()
    }

    fn frame(messages: Vec<Vec<u8>>) -> Frame {
        Frame {
            node: 1,
            session: 7,
            seq: 3,
            ack_session: 9,
            ack: 2,
            messages,
        }
    }

    fn changes(n: usize) -> Message {
        Message {
            sent: Hlc(5),
            family: "blacklist".into(),
            mode: Mode::Global,
            body: Body::Changes(
                (0..n)
                    .map(|i| Change {
                        item: ItemId::global(&format!("key{i}")),
                        entry: Entry {
                            version: Version::new(Hlc(5), eid()),
                            value: Some("x".repeat(40).into()),
                        },
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn a_sealed_body_opens_with_the_same_secret_and_keeps_its_family_and_sender() {
        let seal = Seal::new("c", "0123456789abcdef");
        let f = frame(vec![b"one".to_vec(), b"two".to_vec()]);
        let text = seal.seal(eid(), "blacklist", &f).unwrap();
        assert!(text.contains("\"family\":\"blacklist\""));
        assert!(text.contains("\"eid\":\"02:00:00:00:00:01\""));
        assert!(!text.contains("one"));
        assert_eq!(
            seal.open(text.as_bytes()),
            Ok((eid(), "blacklist".to_string(), f))
        );
    }

    #[test]
    fn a_body_under_another_secret_family_or_sender_does_not_open() {
        let text = Seal::new("c", "0123456789abcdef")
            .seal(eid(), "blacklist", &frame(vec![]))
            .unwrap();
        let other = Seal::new("c", "fedcba9876543210");
        assert_eq!(other.open(text.as_bytes()), Err(Refusal::Seal));
        let seal = Seal::new("c", "0123456789abcdef");
        let moved = text.replace("blacklist", "registrar");
        assert_eq!(seal.open(moved.as_bytes()), Err(Refusal::Seal));
        let sender = text.replace("02:00:00:00:00:01", "02:00:00:00:00:02");
        assert_eq!(seal.open(sender.as_bytes()), Err(Refusal::Seal));
    }

    #[test]
    fn malformed_and_oversized_bodies_are_named_as_such() {
        let seal = Seal::new("c", "0123456789abcdef");
        for bad in [
            &b"not json"[..],
            b"{}",
            b"{\"type\":\"asterisk-db\",\"eid\":\"x\",\"family\":\"f\",\"sealed\":\"AA==\"}",
            b"{\"type\":\"asterisk-db\",\"eid\":\"02:00:00:00:00:01\",\"family\":\"f\",\"sealed\":\"!!\"}",
            b"[1,2]",
        ] {
            assert_eq!(seal.open(bad), Err(Refusal::Malformed), "{bad:?}");
        }
        assert_eq!(
            seal.open(&vec![b' '; MAX_BODY + 1]),
            Err(Refusal::Oversized)
        );
    }

    #[test]
    fn a_large_message_is_split_into_parts_that_fit_and_keep_every_change() {
        let msg = changes(5000);
        let parts = split(msg.clone(), MESSAGE_BUDGET);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|(_, b)| b.len() <= MESSAGE_BUDGET));
        let mut all = Vec::new();
        for (m, bytes) in parts {
            assert_eq!(codec::decode(&bytes).unwrap(), m);
            if let Body::Changes(c) = m.body {
                all.extend(c);
            }
        }
        assert_eq!(Body::Changes(all), msg.body);
    }

    #[test]
    fn a_full_body_stays_under_the_size_limit() {
        let seal = Seal::new("cluster-name", "0123456789abcdef");
        let f = frame(vec![vec![0xa5; MESSAGE_BUDGET]]);
        let text = seal.seal(eid(), &"f".repeat(200), &f).unwrap();
        assert!(text.len() <= MAX_BODY, "{}", text.len());
    }
}
