//! The storage node: many openraft groups per process on one sled database.
//!
//! - [`types`]: the Raft type configuration and log commands.
//! - [`keys`]: the on-disk layout.
//! - [`storage`]: the sled log store, state machine and group-commit flusher.

pub mod keys;
pub mod storage;
pub mod types;
