//! The binary form of a [`Message`]: compact, versioned, with strict limits.
//!
//! The transport wraps this payload in an authenticated, encrypted frame; the decoder
//! still treats every byte as hostile and returns an error, never panics, on any input.
//!
//! Layout (integers marked `v` are LEB128 varints, at most 10 bytes):
//!
//! ```text
//! message  = WIRE_VERSION:u8 sent:v family:str mode:u8 tag:u8 body
//! str      = len:v bytes (UTF-8)
//! item     = [owner:6 bytes, unique families only] key:str
//! version  = hlc:v origin:6 bytes
//! Changes  = n:v (item version flag:u8 [value:str if flag = 1])*
//! Acks     = n:v (item version)*
//! Digest   = n:v (depth:u8 prefix:v hash:u64le)*
//! Summary  = n:v (depth:u8 prefix:v m:v (item version tombstone:u8)*)*
//! Pull     = n:v item*
//! ```

use std::fmt;
use std::sync::Arc;

use super::family::{validate_family_name, Mode};
use super::item::{Entry, ItemId};
use super::message::{Body, Change, DigestNode, Message, SummaryItem, SummaryRange};
use super::store::MAX_DEPTH;
use super::version::{Hlc, Version};
use crate::eid::Eid;

/// Bumped on any incompatible change of the layout.
pub(crate) const WIRE_VERSION: u8 = 1;
/// Largest encoded message accepted.
pub(crate) const MAX_MESSAGE_LEN: usize = 1 << 20;
/// Longest key below a family.
pub(crate) const MAX_KEY_LEN: usize = 1024;
/// Longest value.
pub(crate) const MAX_VALUE_LEN: usize = 32 * 1024;
/// Most changes, acks, pulls, digest nodes or summary ranges in one message.
pub(crate) const MAX_ITEMS: usize = 4096;
/// Most items in all the summary ranges of one message.
pub(crate) const MAX_SUMMARY_ITEMS: usize = 65_536;

const TAG_CHANGES: u8 = 1;
const TAG_ACKS: u8 = 2;
const TAG_DIGEST: u8 = 3;
const TAG_SUMMARY: u8 = 4;
const TAG_PULL: u8 = 5;

/// Why a payload was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooLong(usize),
    UnknownWireVersion(u8),
    Truncated,
    TrailingBytes(usize),
    BadVarint,
    BadFamily(String),
    BadMode(u8),
    BadTag(u8),
    TooMany(&'static str, u64),
    BadKey(&'static str),
    BadValue(&'static str),
    BadUtf8,
    BadDepth(u8),
    BadPrefix,
    BadFlag(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLong(n) => write!(f, "message of {n} bytes exceeds {MAX_MESSAGE_LEN}"),
            DecodeError::UnknownWireVersion(v) => write!(f, "unknown wire version {v}"),
            DecodeError::Truncated => f.write_str("message is truncated"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes after the end of the message"),
            DecodeError::BadVarint => f.write_str("malformed integer"),
            DecodeError::BadFamily(why) => write!(f, "bad family: {why}"),
            DecodeError::BadMode(m) => write!(f, "unknown mode {m}"),
            DecodeError::BadTag(t) => write!(f, "unknown message type {t}"),
            DecodeError::TooMany(what, n) => write!(f, "too many {what}: {n}"),
            DecodeError::BadKey(why) => write!(f, "bad key: {why}"),
            DecodeError::BadValue(why) => write!(f, "bad value: {why}"),
            DecodeError::BadUtf8 => f.write_str("text is not UTF-8"),
            DecodeError::BadDepth(d) => write!(f, "digest depth {d} is beyond {MAX_DEPTH}"),
            DecodeError::BadPrefix => f.write_str("digest prefix is longer than its depth"),
            DecodeError::BadFlag(b) => write!(f, "bad flag byte {b}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Whether `key` can travel: the engine declines to replicate items that cannot.
pub(crate) fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty");
    }
    if key.len() > MAX_KEY_LEN {
        return Err("longer than 1024 bytes");
    }
    if key.contains('\0') {
        return Err("contains a NUL byte");
    }
    Ok(())
}

/// Whether `value` can travel.
pub(crate) fn check_value(value: &str) -> Result<(), &'static str> {
    if value.len() > MAX_VALUE_LEN {
        return Err("longer than 32768 bytes");
    }
    if value.contains('\0') {
        return Err("contains a NUL byte");
    }
    Ok(())
}

/// Encodes `msg`. The engine keeps its messages within the limits, so the result decodes.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64));
    w.u8(WIRE_VERSION);
    w.varint(msg.sent.0);
    w.str(&msg.family);
    w.u8(match msg.mode {
        Mode::Global => 0,
        Mode::Unique => 1,
    });
    match &msg.body {
        Body::Changes(changes) => {
            w.u8(TAG_CHANGES);
            w.varint(changes.len() as u64);
            for c in changes {
                w.item(&c.item);
                w.version(&c.entry.version);
                match &c.entry.value {
                    None => w.u8(0),
                    Some(v) => {
                        w.u8(1);
                        w.str(v);
                    }
                }
            }
        }
        Body::Acks(acks) => {
            w.u8(TAG_ACKS);
            w.varint(acks.len() as u64);
            for (item, version) in acks {
                w.item(item);
                w.version(version);
            }
        }
        Body::Digest(nodes) => {
            w.u8(TAG_DIGEST);
            w.varint(nodes.len() as u64);
            for n in nodes {
                w.u8(n.depth);
                w.varint(n.prefix);
                w.0.extend_from_slice(&n.hash.to_le_bytes());
            }
        }
        Body::Summary(ranges) => {
            w.u8(TAG_SUMMARY);
            w.varint(ranges.len() as u64);
            for r in ranges {
                w.u8(r.depth);
                w.varint(r.prefix);
                w.varint(r.items.len() as u64);
                for i in &r.items {
                    w.item(&i.item);
                    w.version(&i.version);
                    w.u8(u8::from(i.tombstone));
                }
            }
        }
        Body::Pull(items) => {
            w.u8(TAG_PULL);
            w.varint(items.len() as u64);
            for i in items {
                w.item(i);
            }
        }
    }
    w.0
}

/// How many changes a payload says it carries (0 for another body, or a payload that
/// does not get that far), reading only its head: for the inbox, which holds back a
/// link while too many received changes wait, before the loop decodes them.
pub fn change_count(bytes: &[u8]) -> usize {
    let mut r = Reader { bytes, pos: 0 };
    let head = (|| {
        r.u8()?;
        r.varint()?;
        r.str_ref(usize::from(u8::MAX))?;
        r.u8()?;
        if r.u8()? != TAG_CHANGES {
            return Ok(0);
        }
        r.count("changes", MAX_ITEMS)
    })();
    head.unwrap_or(0)
}

/// Decodes a payload, checking every length and limit.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLong(bytes.len()));
    }
    let mut r = Reader { bytes, pos: 0 };
    let version = r.u8()?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownWireVersion(version));
    }
    let sent = Hlc(r.varint()?);
    let family = r.str(usize::from(u8::MAX))?;
    validate_family_name(&family).map_err(DecodeError::BadFamily)?;
    let mode = match r.u8()? {
        0 => Mode::Global,
        1 => Mode::Unique,
        m => return Err(DecodeError::BadMode(m)),
    };
    let body = match r.u8()? {
        TAG_CHANGES => {
            let n = r.count("changes", MAX_ITEMS)?;
            let mut changes = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                let item = r.item(mode)?;
                let version = r.version()?;
                let value = match r.u8()? {
                    0 => None,
                    1 => {
                        let v = r.str_ref(MAX_VALUE_LEN)?;
                        check_value(v).map_err(DecodeError::BadValue)?;
                        Some(Arc::from(v))
                    }
                    b => return Err(DecodeError::BadFlag(b)),
                };
                changes.push(Change {
                    item,
                    entry: Entry { version, value },
                });
            }
            Body::Changes(changes)
        }
        TAG_ACKS => {
            let n = r.count("acks", MAX_ITEMS)?;
            let mut acks = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                let item = r.item(mode)?;
                acks.push((item, r.version()?));
            }
            Body::Acks(acks)
        }
        TAG_DIGEST => {
            let n = r.count("digest nodes", MAX_ITEMS)?;
            let mut nodes = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                let (depth, prefix) = r.node()?;
                let hash = u64::from_le_bytes(r.array::<8>()?);
                nodes.push(DigestNode {
                    depth,
                    prefix,
                    hash,
                });
            }
            Body::Digest(nodes)
        }
        TAG_SUMMARY => {
            let n = r.count("summary ranges", MAX_ITEMS)?;
            let mut ranges = Vec::with_capacity(n.min(r.remaining()));
            let mut total = 0usize;
            for _ in 0..n {
                let (depth, prefix) = r.node()?;
                let m = r.count("summary items", MAX_SUMMARY_ITEMS)?;
                total += m;
                if total > MAX_SUMMARY_ITEMS {
                    return Err(DecodeError::TooMany("summary items", total as u64));
                }
                let mut items = Vec::with_capacity(m.min(r.remaining()));
                for _ in 0..m {
                    let item = r.item(mode)?;
                    let version = r.version()?;
                    let tombstone = match r.u8()? {
                        0 => false,
                        1 => true,
                        b => return Err(DecodeError::BadFlag(b)),
                    };
                    items.push(SummaryItem {
                        item,
                        version,
                        tombstone,
                    });
                }
                ranges.push(SummaryRange {
                    depth,
                    prefix,
                    items,
                });
            }
            Body::Summary(ranges)
        }
        TAG_PULL => {
            let n = r.count("pulls", MAX_ITEMS)?;
            let mut items = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                items.push(r.item(mode)?);
            }
            Body::Pull(items)
        }
        t => return Err(DecodeError::BadTag(t)),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok(Message {
        sent,
        family,
        mode,
        body,
    })
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, b: u8) {
        self.0.push(b);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn item(&mut self, item: &ItemId) {
        if let Some(owner) = item.owner {
            self.0.extend_from_slice(&owner.0);
        }
        self.str(&item.key);
    }

    fn version(&mut self, v: &Version) {
        self.varint(v.hlc.0);
        self.0.extend_from_slice(&v.origin.0);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            // The tenth byte may carry only the top bit of a u64.
            if i == 9 && part > 1 {
                return Err(DecodeError::BadVarint);
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint)
    }

    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > max as u64 {
            return Err(DecodeError::TooMany(what, n));
        }
        Ok(n as usize)
    }

    fn str(&mut self, max: usize) -> Result<String, DecodeError> {
        self.str_ref(max).map(str::to_string)
    }

    /// A string borrowed from the message (copied once, by the caller, into what keeps it).
    fn str_ref(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        let n = self.varint()?;
        if n > max as u64 {
            return Err(DecodeError::TooMany("bytes in a string", n));
        }
        let bytes = self.take(n as usize)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8)
    }

    fn item(&mut self, mode: Mode) -> Result<ItemId, DecodeError> {
        let owner = match mode {
            Mode::Global => None,
            Mode::Unique => Some(Eid(self.array::<6>()?)),
        };
        let key = self.str_ref(MAX_KEY_LEN)?;
        check_key(key).map_err(DecodeError::BadKey)?;
        Ok(ItemId {
            owner,
            key: Arc::from(key),
        })
    }

    fn version(&mut self) -> Result<Version, DecodeError> {
        let hlc = Hlc(self.varint()?);
        Ok(Version::new(hlc, Eid(self.array::<6>()?)))
    }

    fn node(&mut self) -> Result<(u8, u64), DecodeError> {
        let depth = self.u8()?;
        if depth > MAX_DEPTH {
            return Err(DecodeError::BadDepth(depth));
        }
        let prefix = self.varint()?;
        if depth < MAX_DEPTH && prefix >> (4 * u32::from(depth)) != 0 {
            return Err(DecodeError::BadPrefix);
        }
        Ok((depth, prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mode: Mode) -> Vec<Message> {
        let owner = match mode {
            Mode::Global => None,
            Mode::Unique => Some(Eid([1, 2, 3, 4, 5, 6])),
        };
        let item = ItemId {
            owner,
            key: "sub/key".into(),
        };
        let version = Version::new(Hlc::from_parts(1_700_000_000_000, 3), Eid([9; 6]));
        let bodies = vec![
            Body::Changes(vec![
                Change {
                    item: item.clone(),
                    entry: Entry {
                        version,
                        value: Some("v".into()),
                    },
                },
                Change {
                    item: item.clone(),
                    entry: Entry {
                        version,
                        value: None,
                    },
                },
            ]),
            Body::Acks(vec![(item.clone(), version)]),
            Body::Digest(vec![DigestNode {
                depth: 2,
                prefix: 0xab,
                hash: u64::MAX,
            }]),
            Body::Summary(vec![SummaryRange {
                depth: 16,
                prefix: u64::MAX,
                items: vec![SummaryItem {
                    item: item.clone(),
                    version,
                    tombstone: true,
                }],
            }]),
            Body::Pull(vec![item]),
        ];
        bodies
            .into_iter()
            .map(|body| Message {
                sent: Hlc(u64::MAX),
                family: "queue/state".into(),
                mode,
                body,
            })
            .collect()
    }

    #[test]
    fn every_message_round_trips() {
        for mode in [Mode::Global, Mode::Unique] {
            for msg in sample(mode) {
                assert_eq!(decode(&encode(&msg)), Ok(msg));
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused_without_panic() {
        for msg in sample(Mode::Unique) {
            let bytes = encode(&msg);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(decode(&longer), Err(DecodeError::TrailingBytes(1)));
        }
    }

    #[test]
    fn the_change_count_is_read_from_the_head_alone() {
        for msg in sample(Mode::Unique).into_iter().chain(sample(Mode::Global)) {
            let bytes = encode(&msg);
            let want = match &msg.body {
                Body::Changes(c) => c.len(),
                _ => 0,
            };
            assert_eq!(change_count(&bytes), want);
            // The changes themselves need not be there yet, nor be valid.
            let head = bytes.len() - bytes.len().min(3);
            let _ = change_count(&bytes[..head]);
        }
        assert_eq!(change_count(&[]), 0);
        assert_eq!(
            change_count(&[WIRE_VERSION, 1, 1, b'f', 0, TAG_CHANGES, 3]),
            3
        );
        assert_eq!(change_count(&[WIRE_VERSION, 1, 1, b'f', 0, TAG_CHANGES]), 0);
    }

    #[test]
    fn huge_claimed_counts_are_refused_before_allocating() {
        let mut bytes = vec![WIRE_VERSION, 1, 1, b'f', 0, TAG_CHANGES];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(decode(&bytes), Err(DecodeError::TooMany(..))));
        let mut bytes = vec![WIRE_VERSION, 1, 1, b'f', 0, TAG_PULL, 1];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn family_names_that_could_not_be_shared_are_refused() {
        let mut msg = sample(Mode::Global).remove(0);
        msg.family = "11:22:33:44:55:66/registrar".into();
        assert!(matches!(
            decode(&encode(&msg)),
            Err(DecodeError::BadFamily(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoding_mutated_messages_never_panics(i in 0usize..64, b in proptest::num::u8::ANY) {
            for msg in sample(Mode::Unique) {
                let mut bytes = encode(&msg);
                let at = i % bytes.len();
                bytes[at] = b;
                let _ = decode(&bytes);
            }
        }
    }
}
