//! What the module stores in Redis, and its seal.
//!
//! Every item is one record, kept in the family's hash and appended to the change
//! stream: a clear header the merge script can order by, then the value sealed with
//! XChaCha20-Poly1305 under a key derived from `cluster_secret`:
//!
//! ```text
//! <hlc: 16 hex><origin EID: 12 hex><0 value | 1 tombstone>|<origin node>|<to>|<nonce 24><ciphertext+tag>
//! ```
//!
//! The first 29 bytes order records exactly as the engine orders entries (version,
//! then a tombstone above a value), so Redis merges by comparing them as strings.
//! `<to>` is `*` or the writer's `sharing_nodes` (`1,2,5`): a multicast family's
//! change is applied only by the nodes it was meant for. The seal's associated data
//! binds the cluster, family, mode, item and the whole header: a record moved to
//! another key, edited or made up without the secret does not open.

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::eid::Eid;
use crate::engine::{Entry, Hlc, ItemId, Mode, SharingPolicy, Version};

/// Bytes of the clear sort key: version and kind.
pub const SORT_LEN: usize = 29;
const NONCE_LEN: usize = 24;
const LABEL: &[u8] = b"res_astdb_cluster redis v1";

/// Why a record was refused: the short cause logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Not laid out as a record.
    Malformed,
    /// Laid out as one but does not open with this cluster's key.
    Seal,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed record",
            Refusal::Seal => "record does not open with cluster_secret",
        }
    }
}

/// The cluster's sealing key.
pub struct Sealer {
    aead: XChaCha20Poly1305,
    cluster: String,
    /// Nonces are this random prefix, drawn once, and a counter: never repeated under
    /// one key without a system call per record.
    nonce_prefix: [u8; 16],
    nonces: std::sync::atomic::AtomicU64,
}

/// An opened record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub entry: Entry,
    /// The writer's node number.
    pub node: u32,
    /// The writer's multicast list; `None` for every node.
    pub to: Option<Vec<u32>>,
}

impl Opened {
    /// Whether node `node` is among those the change was written for.
    pub fn meant_for(&self, node: u32) -> bool {
        self.to.as_ref().is_none_or(|to| to.contains(&node))
    }
}

fn mode_char(mode: Mode) -> u8 {
    match mode {
        Mode::Global => b'g',
        Mode::Unique => b'u',
    }
}

/// The hash field of an item: its key, or `<owner EID>/<key>` in a unique family.
pub fn field(item: &ItemId) -> String {
    match item.owner {
        None => item.key.to_string(),
        Some(owner) => format!("{owner}/{}", item.key),
    }
}

/// The item a hash field names, in a family of `mode`.
pub fn item_of(mode: Mode, field: &[u8]) -> Option<ItemId> {
    let field = std::str::from_utf8(field).ok()?;
    match mode {
        Mode::Global => Some(ItemId::global(field)),
        Mode::Unique => {
            let (owner, key) = field.split_at_checked(17)?;
            let key = key.strip_prefix('/')?;
            Some(ItemId::unique(owner.parse().ok()?, key))
        }
    }
}

/// The sort key of a version and kind, as the header starts.
pub fn sort_key(version: Version, tombstone: bool) -> [u8; SORT_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; SORT_LEN];
    let mut bytes = [0u8; 14];
    bytes[..8].copy_from_slice(&version.hlc.0.to_be_bytes());
    bytes[8..].copy_from_slice(&version.origin.0);
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    out[28] = b'0' + u8::from(tombstone);
    out
}

fn parse_sort_key(head: &[u8]) -> Option<(Version, bool)> {
    let text = std::str::from_utf8(head.get(..SORT_LEN)?).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hlc = u64::from_str_radix(&text[..16], 16).ok()?;
    let mut origin = [0u8; 6];
    for (i, o) in origin.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[16 + 2 * i..18 + 2 * i], 16).ok()?;
    }
    let tombstone = match &text[28..] {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    Some((Version::new(Hlc(hlc), Eid(origin)), tombstone))
}

/// The version and kind a record's clear header claims, unchecked (what the merge
/// script sees); `None` when it is not laid out as a record.
pub fn peek(record: &[u8]) -> Option<(Version, bool)> {
    parse_sort_key(record)
}

impl Sealer {
    /// The key for `cluster` from `secret`: HKDF-SHA256, salted with the cluster name.
    pub fn new(cluster: &str, secret: &str) -> Sealer {
        let hk = Hkdf::<Sha256>::new(Some(cluster.as_bytes()), secret.as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's output limit: this cannot fail.
        let _ = hk.expand(LABEL, &mut key);
        let mut nonce_prefix = [0u8; 16];
        // Without randomness every seal fails (see `finish`) rather than risk a nonce.
        let random = getrandom::fill(&mut nonce_prefix).is_ok();
        Sealer {
            aead: XChaCha20Poly1305::new((&key).into()),
            cluster: cluster.to_string(),
            nonce_prefix,
            nonces: std::sync::atomic::AtomicU64::new(if random { 0 } else { u64::MAX }),
        }
    }

    fn aad(&self, what: &[u8], family: &str, mode: u8, field: &[u8], header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            LABEL.len() + self.cluster.len() + family.len() + field.len() + header.len() + 8,
        );
        for part in [
            LABEL,
            what,
            self.cluster.as_bytes(),
            family.as_bytes(),
            &[mode],
            field,
        ] {
            aad.extend_from_slice(part);
            aad.push(0);
        }
        aad.extend_from_slice(header);
        aad
    }

    /// The record of `entry` for `item` of `family`, written by node `node` with
    /// `policy` as its sharing policy.
    pub fn seal(
        &self,
        family: &str,
        mode: Mode,
        item: &ItemId,
        entry: &Entry,
        node: u32,
        policy: &SharingPolicy,
    ) -> Vec<u8> {
        let to = match policy {
            SharingPolicy::Broadcast => "*".to_string(),
            SharingPolicy::Multicast(nodes) => nodes
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        };
        let value_len = entry.value.as_deref().map_or(0, str::len);
        let mut header = Vec::with_capacity(SORT_LEN + 16 + to.len() + NONCE_LEN + value_len + 16);
        header.extend_from_slice(&sort_key(entry.version, entry.is_tombstone()));
        header.push(b'|');
        header.extend_from_slice(node.to_string().as_bytes());
        header.push(b'|');
        header.extend_from_slice(to.as_bytes());
        header.push(b'|');
        let aad = self.aad(
            b"item",
            family,
            mode_char(mode),
            field(item).as_bytes(),
            &header,
        );
        let plain = entry.value.as_deref().unwrap_or("").as_bytes();
        self.finish(header, &aad, plain)
    }

    fn finish(&self, mut out: Vec<u8>, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let n = self
            .nonces
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_add(1),
            )
            .ok();
        let Some(n) = n else {
            // No randomness at start, or 2^64 seals: a record that never opens is
            // refused by every reader, which is better than reusing a nonce.
            return Vec::new();
        };
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&self.nonce_prefix);
        nonce[16..].copy_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        match self.aead.encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            aad,
            &mut out[start..],
        ) {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                out
            }
            Err(_) => Vec::new(),
        }
    }

    /// Opens the record stored for `field` of `family`.
    pub fn open(
        &self,
        family: &str,
        mode: Mode,
        field: &[u8],
        record: &[u8],
    ) -> Result<Opened, Refusal> {
        // The header is the sort key and three '|'-ended fields.
        let (header, sealed) = split_sealed(record, SORT_LEN)?;
        let (version, tombstone) = parse_sort_key(header).ok_or(Refusal::Malformed)?;
        let text = std::str::from_utf8(&header[SORT_LEN..]).map_err(|_| Refusal::Malformed)?;
        let mut parts = text.split('|');
        let (Some(""), Some(node), Some(to)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Refusal::Malformed);
        };
        let node: u32 = node.parse().map_err(|_| Refusal::Malformed)?;
        let to = match to {
            "*" => None,
            list => Some(
                list.split(',')
                    .map(|n| n.parse::<u32>().map_err(|_| Refusal::Malformed))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let aad = self.aad(b"item", family, mode_char(mode), field, header);
        let plain = self.unseal(sealed, &aad)?;
        let value = if tombstone {
            if !plain.is_empty() {
                return Err(Refusal::Malformed);
            }
            None
        } else {
            Some(
                String::from_utf8(plain)
                    .map_err(|_| Refusal::Malformed)?
                    .into(),
            )
        };
        Ok(Opened {
            entry: Entry { version, value },
            node,
            to,
        })
    }

    fn unseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, Refusal> {
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| Refusal::Seal)
    }

    /// A node's entry in the cluster's node table: its number, when it last said so
    /// (Redis time, ms) and how far it has read the change stream.
    pub fn seal_presence(&self, eid: Eid, p: &Presence) -> Vec<u8> {
        let header = format!("{}|{}|{}|", p.node, p.seen_ms, p.read_to);
        let aad = self.aad(
            b"node",
            "",
            b'-',
            eid.to_string().as_bytes(),
            header.as_bytes(),
        );
        self.finish(header.into_bytes(), &aad, b"")
    }

    pub fn open_presence(&self, eid: &[u8], record: &[u8]) -> Result<Presence, Refusal> {
        let (header, sealed) = split_sealed(record, 0)?;
        let aad = self.aad(b"node", "", b'-', eid, header);
        self.unseal(sealed, &aad)?;
        let text = std::str::from_utf8(header).map_err(|_| Refusal::Malformed)?;
        let mut parts = text.split('|');
        let mut num = || -> Result<u64, Refusal> {
            parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or(Refusal::Malformed)
        };
        Ok(Presence {
            node: u32::try_from(num()?).map_err(|_| Refusal::Malformed)?,
            seen_ms: num()?,
            read_to: num()?,
        })
    }
}

/// Splits a sealed record into its clear header (up to the third '|' at or after
/// `from`) and the sealed part, which must hold at least a nonce and a tag.
fn split_sealed(record: &[u8], from: usize) -> Result<(&[u8], &[u8]), Refusal> {
    let mut bars = 0;
    let end = record
        .iter()
        .skip(from)
        .position(|b| {
            bars += usize::from(*b == b'|');
            bars == 3
        })
        .ok_or(Refusal::Malformed)?
        + from
        + 1;
    if record.len() < end + NONCE_LEN + 16 {
        return Err(Refusal::Malformed);
    }
    Ok(record.split_at(end))
}

/// What a node says of itself in the node table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    pub node: u32,
    pub seen_ms: u64,
    /// The ms part of the last stream entry it has applied and saved.
    pub read_to: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ms: u64, value: Option<&str>) -> Entry {
        Entry {
            version: Version::new(Hlc::from_parts(ms, 3), Eid([2, 0, 0, 0, 0, 1])),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn a_sealed_record_opens_only_for_its_own_cluster_family_and_key() {
        let s = Sealer::new("c1", "0123456789abcdef");
        let item = ItemId::global("k1");
        let rec = s.seal(
            "fam",
            Mode::Global,
            &item,
            &entry(5, Some("secret-value")),
            3,
            &SharingPolicy::Broadcast,
        );
        assert!(!rec.windows(12).any(|w| w == b"secret-value"));
        let opened = s.open("fam", Mode::Global, b"k1", &rec).unwrap();
        assert_eq!(opened.entry, entry(5, Some("secret-value")));
        assert_eq!(opened.node, 3);
        assert!(opened.meant_for(9));
        assert_eq!(
            s.open("fam", Mode::Global, b"k2", &rec),
            Err(Refusal::Seal),
            "moved to another key"
        );
        assert_eq!(
            s.open("other", Mode::Global, b"k1", &rec),
            Err(Refusal::Seal)
        );
        assert_eq!(s.open("fam", Mode::Unique, b"k1", &rec), Err(Refusal::Seal));
        let other = Sealer::new("c1", "another secret!!");
        assert_eq!(
            other.open("fam", Mode::Global, b"k1", &rec),
            Err(Refusal::Seal)
        );
        let other_cluster = Sealer::new("c2", "0123456789abcdef");
        assert_eq!(
            other_cluster.open("fam", Mode::Global, b"k1", &rec),
            Err(Refusal::Seal)
        );
        // A raised version in the clear header is caught too.
        let mut forged = rec.clone();
        forged[0] = b'f';
        assert_eq!(
            s.open("fam", Mode::Global, b"k1", &forged),
            Err(Refusal::Seal)
        );
        assert_eq!(
            s.open("fam", Mode::Global, b"k1", b"junk"),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn sealing_the_same_change_twice_never_reuses_a_nonce() {
        let s = Sealer::new("c1", "0123456789abcdef");
        let item = ItemId::global("k");
        let e = entry(5, Some("v"));
        let seal = || s.seal("f", Mode::Global, &item, &e, 1, &SharingPolicy::Broadcast);
        let (a, b) = (seal(), seal());
        assert_ne!(a, b);
        let nonce = |r: &[u8]| r[r.len() - 16 - 1 - NONCE_LEN..r.len() - 16 - 1].to_vec();
        assert_ne!(nonce(&a), nonce(&b));
        assert_eq!(s.open("f", Mode::Global, b"k", &a).unwrap().entry, e);
        assert_eq!(s.open("f", Mode::Global, b"k", &b).unwrap().entry, e);
        // Another sealer (another start of the link) draws another prefix.
        let t = Sealer::new("c1", "0123456789abcdef");
        let c = t.seal("f", Mode::Global, &item, &e, 1, &SharingPolicy::Broadcast);
        assert_ne!(nonce(&a)[..16], nonce(&c)[..16]);
        assert_eq!(s.open("f", Mode::Global, b"k", &c).unwrap().entry, e);
    }

    #[test]
    fn sort_keys_order_records_as_the_engine_orders_entries() {
        let a = entry(5, Some("x"));
        let b = entry(6, Some("x"));
        let t = entry(5, None);
        let key = |e: &Entry| sort_key(e.version, e.is_tombstone());
        assert!(key(&a) < key(&b));
        assert!(
            key(&a) < key(&t),
            "a tombstone beats a value of its version"
        );
        assert!(key(&t) < key(&b));
        let later_origin = Entry {
            version: Version::new(a.version.hlc, Eid([2, 0, 0, 0, 0, 2])),
            value: None,
        };
        assert!(key(&t) < key(&later_origin));
        assert_eq!(peek(&key(&t)), Some((t.version, true)));
    }

    #[test]
    fn multicast_records_name_their_nodes_and_tombstones_carry_no_value() {
        let s = Sealer::new("c1", "0123456789abcdef");
        let owner = Eid([2, 0, 0, 0, 0, 7]);
        let item = ItemId::unique(owner, "a/b");
        let f = field(&item);
        assert_eq!(item_of(Mode::Unique, f.as_bytes()), Some(item.clone()));
        let policy = SharingPolicy::Multicast([1, 2].into_iter().collect());
        let rec = s.seal("fam", Mode::Unique, &item, &entry(9, None), 1, &policy);
        let opened = s.open("fam", Mode::Unique, f.as_bytes(), &rec).unwrap();
        assert!(opened.entry.is_tombstone());
        assert!(opened.meant_for(2) && !opened.meant_for(3));
    }

    #[test]
    fn presence_entries_are_sealed_to_their_eid() {
        let s = Sealer::new("c1", "0123456789abcdef");
        let eid = Eid([2, 0, 0, 0, 0, 1]);
        let p = Presence {
            node: 4,
            seen_ms: 1000,
            read_to: 900,
        };
        let rec = s.seal_presence(eid, &p);
        assert_eq!(s.open_presence(eid.to_string().as_bytes(), &rec), Ok(p));
        assert_eq!(
            s.open_presence(b"02:00:00:00:00:02", &rec),
            Err(Refusal::Seal)
        );
    }
}
