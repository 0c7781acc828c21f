//! Where the loop saves the engine's state before it runs the outputs that depend on it.

use crate::engine::{PersistDelta, PersistedState};

/// The engine's durable state: the replica log in the module and the simulator.
pub trait StateLog: Send {
    /// Appends `delta` durably (it survives a crash of the process once this returns).
    fn save(&mut self, delta: &PersistDelta) -> Result<(), String>;
    /// Whether the log should be rewritten from the engine's whole state now.
    fn wants_compaction(&self) -> bool;
    /// Rewrites the log as `state` (the engine's, right after a save).
    fn compact(&mut self, state: PersistedState<'_>) -> Result<(), String>;
    /// Where it lives and its size in bytes, for `astdb cluster show status`.
    fn describe(&self) -> (String, u64);
}

impl StateLog for crate::metadata::Replica {
    fn save(&mut self, delta: &PersistDelta) -> Result<(), String> {
        crate::metadata::Replica::save(self, delta)
    }

    fn wants_compaction(&self) -> bool {
        crate::metadata::Replica::wants_compaction(self)
    }

    fn compact(&mut self, state: PersistedState<'_>) -> Result<(), String> {
        crate::metadata::Replica::compact(self, state)
    }

    fn describe(&self) -> (String, u64) {
        (self.path().display().to_string(), self.len())
    }
}
