//! What goes to the peers: the per-peer outbox of local changes, and the one way
//! anything (changes, acknowledgements, digests, summaries, pulls) is cut into messages.

use std::collections::BTreeMap;
use std::mem;

use super::codec::{MAX_ITEMS, MAX_SUMMARY_ITEMS};
use super::engine::{Engine, EngineConfig};
use super::item::ItemId;
use super::message::{Body, Change, DigestNode, Message, SummaryRange};
use super::output::Output;
use super::version::Version;
use crate::eid::Eid;

/// Bytes at which a batch is cut, well below the codec's message limit.
const BATCH_BYTES: usize = 256 * 1024;

/// Per peer, per family: local changes waiting for the next tick or a full batch.
#[derive(Debug, Default)]
pub(super) struct Outbox(BTreeMap<Eid, BTreeMap<String, Vec<Change>>>);

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `change` to the batch of `family` waiting for each of `peers`, and hands back
    /// the batches that are now full (`max_n` changes), taken out of the outbox.
    fn add(
        &mut self,
        peers: &[Eid],
        family: &str,
        change: Change,
        max_n: usize,
    ) -> Vec<(Eid, Vec<Change>)> {
        let mut full = Vec::new();
        let mut change = Some(change);
        for (i, &peer) in peers.iter().enumerate() {
            let batches = self.0.entry(peer).or_default();
            if !batches.contains_key(family) {
                batches.insert(family.to_string(), Vec::new());
            }
            let Some(batch) = batches.get_mut(family) else {
                continue;
            };
            // The last peer takes the change itself; the others a copy.
            let c = if i + 1 == peers.len() {
                change.take()
            } else {
                change.clone()
            };
            batch.extend(c);
            if batch.len() >= max_n {
                full.push(peer);
            }
        }
        full.into_iter()
            .filter_map(|peer| {
                let batch = self.0.get_mut(&peer).and_then(|b| b.remove(family));
                if self.0.get(&peer).is_some_and(BTreeMap::is_empty) {
                    self.0.remove(&peer);
                }
                batch.map(|b| (peer, b))
            })
            .collect()
    }

    /// Drops the changes waiting for family `name`, to every peer.
    pub(super) fn drop_family(&mut self, name: &str) {
        for batches in self.0.values_mut() {
            batches.remove(name);
        }
        self.0.retain(|_, batches| !batches.is_empty());
    }

    /// Drops the changes waiting for `peer`.
    pub(super) fn drop_peer(&mut self, peer: Eid) {
        self.0.remove(&peer);
    }

    /// Empties the outbox: every waiting batch, peer by peer, family by family.
    pub(super) fn take_all(&mut self) -> impl Iterator<Item = (Eid, String, Vec<Change>)> {
        mem::take(&mut self.0)
            .into_iter()
            .flat_map(|(peer, batches)| batches.into_iter().map(move |(f, b)| (peer, f, b)))
    }
}

/// What goes to a peer in batches, a message each: how much an item adds to a message,
/// and the body a batch of such items makes.
pub(super) trait Batched: Sized {
    /// About how many bytes the item adds to a message.
    fn size(&self) -> usize;
    /// How many summary items it adds (the codec bounds them per message).
    fn summary_items(&self) -> usize {
        0
    }
    /// The most items in one message.
    fn max_per_message(_cfg: &EngineConfig) -> usize {
        MAX_ITEMS
    }
    fn body(batch: Vec<Self>) -> Body;
}

impl Batched for Change {
    fn size(&self) -> usize {
        self.item.key.len() + self.entry.value.as_ref().map_or(0, |v| v.len()) + 32
    }
    fn max_per_message(cfg: &EngineConfig) -> usize {
        cfg.batch_max_changes.clamp(1, MAX_ITEMS)
    }
    fn body(batch: Vec<Self>) -> Body {
        Body::Changes(batch)
    }
}

/// An acknowledgement of a tombstone.
impl Batched for (ItemId, Version) {
    fn size(&self) -> usize {
        self.0.key.len() + 24
    }
    fn body(batch: Vec<Self>) -> Body {
        Body::Acks(batch)
    }
}

impl Batched for DigestNode {
    fn size(&self) -> usize {
        20
    }
    fn body(batch: Vec<Self>) -> Body {
        Body::Digest(batch)
    }
}

impl Batched for SummaryRange {
    fn size(&self) -> usize {
        self.items
            .iter()
            .map(|i| i.item.key.len() + 24)
            .sum::<usize>()
            + 12
    }
    fn summary_items(&self) -> usize {
        self.items.len()
    }
    fn body(batch: Vec<Self>) -> Body {
        Body::Summary(batch)
    }
}

/// A pull of one item.
impl Batched for ItemId {
    fn size(&self) -> usize {
        self.key.len() + 8
    }
    fn body(batch: Vec<Self>) -> Body {
        Body::Pull(batch)
    }
}

impl Engine {
    /// Sends one message about `family` (nothing if the family is not held here).
    pub(super) fn send(
        &mut self,
        out: &mut Vec<Output>,
        to: Eid,
        now_ms: u64,
        family: &str,
        body: Body,
    ) {
        let Some(mode) = self.families.get(family).map(|f| f.mode) else {
            return;
        };
        if let Body::Changes(c) = &body {
            self.counters.sent_changes += c.len() as u64;
        }
        let msg = Message {
            sent: self.clock.tick(now_ms),
            family: family.to_string(),
            mode,
            body,
        };
        out.push(Output::Send { to, msg });
    }

    /// Sends `items` to `to` in as many messages as they need: a message is cut at
    /// [`Batched::max_per_message`] items, about [`BATCH_BYTES`] bytes, or the codec's
    /// limit of summary items.
    pub(super) fn send_batched<T: Batched>(
        &mut self,
        out: &mut Vec<Output>,
        to: Eid,
        now_ms: u64,
        family: &str,
        items: Vec<T>,
    ) {
        let max_n = T::max_per_message(&self.cfg);
        let mut cur = Vec::new();
        let (mut bytes, mut summary_items) = (0, 0);
        for item in items {
            let (size, n) = (item.size(), item.summary_items());
            if !cur.is_empty()
                && (cur.len() >= max_n
                    || summary_items + n > MAX_SUMMARY_ITEMS
                    || bytes + size > BATCH_BYTES)
            {
                self.send(out, to, now_ms, family, T::body(mem::take(&mut cur)));
                (bytes, summary_items) = (0, 0);
            }
            bytes += size;
            summary_items += n;
            cur.push(item);
        }
        if !cur.is_empty() {
            self.send(out, to, now_ms, family, T::body(cur));
        }
    }

    /// Queues a change for every peer that is up and takes part in the family; sends the
    /// batches it fills.
    pub(super) fn publish(
        &mut self,
        family: &str,
        change: Change,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let max_n = Change::max_per_message(&self.cfg);
        let peers: Vec<Eid> = self
            .eligible(family)
            .into_iter()
            .filter_map(|(peer, up)| up.then_some(peer))
            .collect();
        for (peer, batch) in self.outbox.add(&peers, family, change, max_n) {
            self.send_batched(out, peer, now_ms, family, batch);
        }
    }
}
