//! The replication engine: plain data and functions, no I/O.
