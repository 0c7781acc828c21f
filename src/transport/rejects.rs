//! Refused and broken connections: a counter per cause, and a log line once
//! per (peer, cause) so a peer retrying every few seconds does not flood the log.

use super::wire::{Cause, Reject};
use super::{LogFn, LogLevel};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Rejects {
    counts: Mutex<HashMap<Cause, u64>>,
    logged: Mutex<HashSet<(String, Cause)>>,
}

impl Rejects {
    /// Counts `reject` and logs it unless this `who` was already logged with this cause;
    /// whether it was logged. `who` names the peer stably across retries: "node 3", or
    /// the remote IP before its hello said who it is.
    pub fn record(&self, log: &LogFn, who: &str, context: &str, reject: &Reject) -> bool {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reject.cause)
            .or_insert(0) += 1;
        let first = self
            .logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((who.to_string(), reject.cause));
        if first {
            log(
                LogLevel::Warning,
                format!("{context}: {reject} (logged once until it connects)"),
            );
        }
        first
    }

    /// After a good connection, its next problem is news again.
    pub fn forget(&self, who: &str) {
        self.logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(w, _)| w != who);
    }

    /// Every cause with its count, zeros included, in a fixed order.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        Cause::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), counts.get(c).copied().unwrap_or(0)))
            .collect()
    }
}
