//! Persistence of the engine's replicated state (versions, tombstones, peer progress).
