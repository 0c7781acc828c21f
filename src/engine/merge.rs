//! Receiving from a peer: the checks every message passes, and the merge of the changes
//! it carries (the other bodies are handled in `anti_entropy` and `tombstones`).

use super::codec::check_key;
use super::engine::Engine;
use super::family::{Mode, SyncMode};
use super::item::{Entry, ItemId};
use super::message::{Body, Change, Message};
use super::output::{ChangeCount, Changed, DbOp, Output, Source};
use super::peers::RELAY_NODE;
use super::store::Merged;
use super::version::{Hlc, Version};
use crate::asterisk::cpu;
use crate::eid::Eid;

/// How many changes ahead of the one merged [`Engine::on_changes`] prefetches the
/// store's slot (see [`super::store::ItemStore::prefetch`]).
const PREFETCH_AHEAD: usize = 16;

/// How many changes ahead of the one whose position [`Engine::on_changes`] computes it
/// prefetches the strings of.
const DECODED_AHEAD: usize = 8;

/// Asks for the cache lines of `change`'s key and value.
fn prefetch_strings(change: &Change) {
    if let Some(b) = change.item.key.as_bytes().first() {
        cpu::prefetch(b);
    }
    if let Some(b) = change
        .entry
        .value
        .as_ref()
        .and_then(|v| v.as_bytes().first())
    {
        cpu::prefetch(b);
    }
}

/// The position of a change's item, and of the item merged [`PREFETCH_AHEAD`]
/// changes later (to prefetch).
pub(super) struct Placed {
    pub at: u64,
    pub ahead: Option<u64>,
}

/// What became of one incoming change.
pub(super) enum Accepted {
    Stored,
    Kept,
    /// Refused as a stale copy; the sender is to be told.
    Retired(ItemId),
}

impl Engine {
    /// A message from `from`.
    pub fn receive(&mut self, from: Eid, msg: Message, now_ms: u64) {
        self.queue(|e, out| e.on_message(from, msg, now_ms, out));
    }

    /// [`Engine::receive`]: a message from an unknown peer, stamped too far ahead or
    /// sent too long ago, for a family not shared here or in the other mode, or from a
    /// peer outside the family's policy is dropped and counted.
    fn on_message(&mut self, from: Eid, msg: Message, now_ms: u64, out: &mut Vec<Output>) {
        let Some(peer_node) = self.peers.get(&from).map(|p| p.node) else {
            self.counters.dropped_unknown_peer += 1;
            return;
        };
        let weight = match &msg.body {
            Body::Changes(c) => c.len() as u64,
            _ => 1,
        };
        if msg.sent.wall_ms() > now_ms.saturating_add(self.cfg.max_clock_skew_ms) {
            self.counters.dropped_skew += weight;
            return;
        }
        if msg
            .sent
            .wall_ms()
            .saturating_add(self.cfg.max_message_age_ms)
            < now_ms
        {
            self.counters.dropped_stale += weight;
            return;
        }
        let Some(fs) = self.families.get(&msg.family) else {
            self.counters.dropped_unshared += weight;
            return;
        };
        let Some(shared) = fs.shared.as_ref() else {
            self.counters.dropped_unshared += weight;
            return;
        };
        if fs.mode != msg.mode {
            self.counters.dropped_mode += weight;
            return;
        }
        if peer_node != RELAY_NODE && !shared.policy.includes(peer_node) {
            self.counters.dropped_policy += weight;
            return;
        }
        self.clock.observe(msg.sent);
        let family = msg.family;
        match msg.body {
            Body::Changes(changes) => self.on_changes(from, &family, changes, now_ms, out),
            Body::Acks(acks) => self.on_acks(from, &family, acks),
            Body::Digest(nodes) => self.on_digest(from, &family, nodes, now_ms, out),
            Body::Summary(ranges) => self.on_summary(from, &family, ranges, now_ms, out),
            Body::Pull(items) => self.on_pull(from, &family, items, now_ms, out),
        }
        self.refresh_gauges();
    }

    pub(super) fn valid_item(&self, family: &str, item: &ItemId) -> bool {
        let mode = self.families.get(family).map(|f| f.mode);
        valid_in(mode, item)
    }

    /// Changes from `from`, merged one by one: received tombstones are acknowledged, and
    /// stale copies of keys whose tombstones were collected here are retired.
    fn on_changes(
        &mut self,
        from: Eid,
        family: &str,
        changes: Vec<Change>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let mut acks = Vec::new();
        let mut retired = Vec::new();
        let (mut received, mut deleted) = (0, 0);
        // Neither changes while a message is merged.
        let mode = self.families.get(family).map(|f| f.mode);
        let stale_below = self.stale_below(from, family);
        // A message too large for an event per key: its changes are counted instead.
        let counting = self.cfg.events && changes.len() > self.cfg.event_batch_limit;
        out.reserve(changes.len());
        self.applies_started.reserve(changes.len());
        // Over Redis and SIP the changes were decoded on another thread, so their strings
        // are in another core's cache (the mesh's were decoded just now, on this one):
        // each is fetched a few changes before it is read.
        let positions: Vec<u64> = (0..changes.len())
            .map(|i| {
                if let Some(ahead) = changes.get(i + DECODED_AHEAD) {
                    prefetch_strings(ahead);
                }
                changes[i].item.position()
            })
            .collect();
        for (i, change) in changes.into_iter().enumerate() {
            let ahead = positions.get(i + PREFETCH_AHEAD).copied();
            if !valid_in(mode, &change.item) || check_key(&change.item.key).is_err() {
                self.counters.dropped_invalid += 1;
                continue;
            }
            if change.entry.version.hlc.wall_ms()
                > now_ms.saturating_add(self.cfg.max_clock_skew_ms)
            {
                self.counters.dropped_skew += 1;
                continue;
            }
            self.counters.received_changes += 1;
            let version = change.entry.version;
            let ack = change
                .entry
                .is_tombstone()
                .then(|| (change.item.clone(), version));
            let pos = Placed {
                at: positions[i],
                ahead,
            };
            match self.accept(
                from,
                family,
                stale_below,
                change,
                pos,
                !counting,
                now_ms,
                out,
            ) {
                Accepted::Retired(item) => retired.push(Change {
                    item,
                    entry: Entry {
                        version,
                        value: None,
                    },
                }),
                Accepted::Stored => {
                    if ack.is_some() {
                        deleted += 1;
                    } else {
                        received += 1;
                    }
                    acks.extend(ack);
                }
                Accepted::Kept => acks.extend(ack),
            }
        }
        if counting && received + deleted > 0 {
            if let Some(fs) = self.families.get(family) {
                out.push(Output::ChangesCounted(ChangeCount {
                    family: fs.name.clone(),
                    mode: fs.mode,
                    source: Source::Peer(from),
                    puts: received,
                    deletes: deleted,
                }));
            }
        }
        self.catch_up_progress(from, family, received, deleted, now_ms);
        self.send_batched(out, from, now_ms, family, acks);
        self.send_batched(out, from, now_ms, family, retired);
    }

    /// Merges one remote change (`stale_below` is [`Engine::stale_below`]; `pos`, where
    /// its item and the one merged some changes later are; `key_event`: a stored change
    /// is reported with a `Changed` of its own, with `events` on).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn accept(
        &mut self,
        from: Eid,
        family: &str,
        stale_below: Option<Hlc>,
        change: Change,
        pos: Placed,
        key_event: bool,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Accepted {
        let local = self.cfg.local;
        let Some(fs) = self.families.get_mut(family) else {
            return Accepted::Kept;
        };
        if let Some(ahead) = pos.ahead {
            fs.store.prefetch(ahead);
        }
        let pos = pos.at;
        let ro = fs
            .shared
            .as_ref()
            .is_some_and(|s| s.sync_mode == SyncMode::Ro);
        let Change { item, entry } = change;

        if item.owner == Some(local) {
            let held = fs.store.get(item.owner, &item.key);
            // Only this node writes its own unique items. A newer version of one coming
            // back means this node lost its state: issue a newer version of what it holds.
            let deleted_here = held.is_none_or(|h| h.is_tombstone());
            if (entry.is_tombstone() && deleted_here)
                || held.is_some_and(|h| !entry.beats_held(h.version, h.value))
                || ro
                || !fs.baseline
            {
                return Accepted::Kept;
            }
            self.clock.observe(entry.version.hlc);
            let reissued = Entry {
                version: Version::new(self.clock.tick(now_ms), local),
                value: held.and_then(|h| h.value.map(Into::into)),
            };
            fs.store.put_shared(item.owner, &item.key, reissued.clone());
            fs.tombstones.track(&item, &reissued);
            self.publish(
                family,
                Change {
                    item,
                    entry: reissued,
                },
                now_ms,
                out,
            );
            return Accepted::Kept;
        }

        let is_value = entry.value.is_some();
        let version = entry.version;
        let (horizon, tombstones) = (fs.horizon, &fs.tombstones);
        let refuse_new = || {
            if is_value {
                // A copy of a key whose tombstone was collected here must never come
                // back: the sender is told to retire it.
                (version.hlc == Hlc::ZERO && horizon > Hlc::ZERO)
                    || stale_below.is_some_and(|h| version.hlc <= h)
                    || tombstones.collected_since(&item, version)
            } else {
                tombstones.collected_since(&item, version)
            }
        };
        match fs
            .store
            .merge_unless(pos, item.owner, &item.key, entry, refuse_new)
        {
            Merged::Kept => Accepted::Kept,
            Merged::Refused if is_value => {
                self.counters.retired += 1;
                Accepted::Retired(item)
            }
            Merged::Refused => Accepted::Kept,
            Merged::Inserted | Merged::Replaced(_) => {
                self.clock.observe(version.hlc);
                if is_value {
                    fs.tombstones.remove(&item);
                } else {
                    fs.tombstones.hold_from(item.clone(), version, from);
                }
                fs.last_change_ms = Some(now_ms);
                self.counters.applied += 1;
                // The store has just logged the new state: share its value (the key is
                // the change's own, which the log shares already).
                let value = match fs.store.last_logged() {
                    Some(logged) => logged.state.as_ref().and_then(|s| s.value.clone()),
                    None => fs
                        .store
                        .get_at(pos, item.owner, &item.key)
                        .and_then(|e| e.value.map(Into::into)),
                };
                let (op, applied) = fs.apply(item.owner, item.key, value);
                let changed = (self.cfg.events && key_event).then(|| {
                    let value = match &op {
                        DbOp::Put { value, .. } => Some(value.clone()),
                        DbOp::Delete { .. } => None,
                    };
                    Changed {
                        family: fs.name.clone(),
                        mode: fs.mode,
                        owner: item.owner,
                        key: applied.key.clone(),
                        value,
                        version,
                        source: Source::Peer(from),
                    }
                });
                out.push(Output::Apply(op));
                out.extend(changed.map(Output::Changed));
                self.applies_started.push(applied);
                Accepted::Stored
            }
        }
    }
}

/// Whether `item` belongs in a family of `mode` (`None`: not held here).
fn valid_in(mode: Option<Mode>, item: &ItemId) -> bool {
    match item.owner {
        None => mode == Some(Mode::Global),
        Some(_) => mode == Some(Mode::Unique),
    }
}
