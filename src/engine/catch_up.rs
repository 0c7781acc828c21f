//! Catch-ups, for the events an administrator sees: a family's exchange with a peer
//! that found the two holding it differently. One opens when a digest or summary from
//! the peer shows a difference; it counts the keys that come from the peer and go; it
//! closes when the peer's root digest equals this node's, when nothing has come from
//! the peer for the family for [`QUIET_MS`], or (incomplete) when the peer goes down or
//! the family is unshared. Kept only with `EngineConfig::events`.

use std::collections::BTreeMap;

use super::engine::Engine;
use super::output::{CatchUp, CatchUpEnd, CatchUpPhase, Output};
use crate::eid::Eid;

/// A catch-up with no traffic from the peer for this long is over.
pub(super) const QUIET_MS: u64 = 1_500;

#[derive(Clone, Copy, Debug)]
struct Open {
    node: u32,
    started_ms: u64,
    last_ms: u64,
    received: u64,
    deleted: u64,
}

/// The catch-ups in progress, by peer and family.
#[derive(Debug, Default)]
pub(super) struct CatchUps {
    open: BTreeMap<(Eid, String), Open>,
}

impl CatchUps {
    /// When the next catch-up falls quiet.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.open
            .values()
            .map(|o| o.last_ms.saturating_add(QUIET_MS))
            .min()
    }
}

fn finished(peer: Eid, family: String, o: &Open, ended: CatchUpEnd) -> Output {
    Output::CatchUp(CatchUp {
        family,
        peer,
        node: o.node,
        phase: CatchUpPhase::Finished {
            received: o.received,
            deleted: o.deleted,
            duration_ms: o.last_ms.saturating_sub(o.started_ms),
            ended,
        },
    })
}

impl Engine {
    /// A digest or summary from `peer` showed that it holds `family` differently.
    pub(super) fn catch_up_differs(
        &mut self,
        peer: Eid,
        family: &str,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        if !self.cfg.events {
            return;
        }
        let Some(node) = self.peers.get(&peer).map(|p| p.node) else {
            return;
        };
        let key = (peer, family.to_string());
        if let Some(open) = self.catch_ups.open.get_mut(&key) {
            open.last_ms = open.last_ms.max(now_ms);
            return;
        }
        self.catch_ups.open.insert(
            key,
            Open {
                node,
                started_ms: now_ms,
                last_ms: now_ms,
                received: 0,
                deleted: 0,
            },
        );
        out.push(Output::CatchUp(CatchUp {
            family: family.to_string(),
            peer,
            node,
            phase: CatchUpPhase::Started,
        }));
    }

    /// Traffic from `peer` about `family` during a catch-up: `received` keys came and
    /// `deleted` went.
    pub(super) fn catch_up_progress(
        &mut self,
        peer: Eid,
        family: &str,
        received: u64,
        deleted: u64,
        now_ms: u64,
    ) {
        if self.catch_ups.open.is_empty() {
            return;
        }
        if let Some(open) = self.catch_ups.open.get_mut(&(peer, family.to_string())) {
            open.last_ms = open.last_ms.max(now_ms);
            open.received += received;
            open.deleted += deleted;
        }
    }

    /// `peer`'s root digest of `family` equals this node's: a catch-up is complete.
    pub(super) fn catch_up_equal(&mut self, peer: Eid, family: &str, out: &mut Vec<Output>) {
        if let Some(open) = self.catch_ups.open.remove(&(peer, family.to_string())) {
            out.push(finished(
                peer,
                family.to_string(),
                &open,
                CatchUpEnd::InSync,
            ));
        }
    }

    /// Closes the catch-ups that fell quiet.
    pub(super) fn catch_ups_tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if self.catch_ups.open.is_empty() {
            return;
        }
        let quiet: Vec<(Eid, String)> = self
            .catch_ups
            .open
            .iter()
            .filter(|(_, o)| o.last_ms.saturating_add(QUIET_MS) <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in quiet {
            if let Some(open) = self.catch_ups.open.remove(&key) {
                out.push(finished(key.0, key.1, &open, CatchUpEnd::Quiet));
            }
        }
    }

    /// Ends, incomplete, the catch-ups with `peer` (None: any) of `family` (None: any).
    pub(super) fn catch_ups_interrupted(
        &mut self,
        peer: Option<Eid>,
        family: Option<&str>,
        out: &mut Vec<Output>,
    ) {
        let gone: Vec<(Eid, String)> = self
            .catch_ups
            .open
            .keys()
            .filter(|(p, f)| peer.is_none_or(|x| x == *p) && family.is_none_or(|x| x == f))
            .cloned()
            .collect();
        for key in gone {
            if let Some(open) = self.catch_ups.open.remove(&key) {
                out.push(finished(key.0, key.1, &open, CatchUpEnd::Interrupted));
            }
        }
    }
}
