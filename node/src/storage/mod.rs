//! Storage: one sled database per node with trees per group (layout in [`crate::keys`]), and
//! each group's Raft log in segment files of its own.
//!
//! - [`FileLog`]: a group's Raft log in append-only files, its vote on sled (`RaftLogStorage`).
//! - [`StateMachine`]: a group's data and applied state (`RaftStateMachine`), and snapshots.
//! - `request_ids`: the table of applied request ids that answers retries, in memory.
//! - [`Flusher`]: group commit, one flush (and one sync per log file) for the appends of every group.
//! - [`DurableAcks`]: eventual writes waiting for their entry to be durable in the leader's log.

mod acks;
mod file_log;
mod flusher;
mod raft_meta;
mod request_ids;
mod state_machine;

pub use acks::{DurableAcks, PendingAck};
pub use file_log::{FileLog, SEGMENT_BYTES};
pub use flusher::{FlushStats, Flusher};
pub use state_machine::{GroupData, StateMachine};

/// The persisted-format decoders, for the fuzz targets in `tests/fuzz` only (not an API).
#[doc(hidden)]
pub mod fuzzing {
    pub use super::file_log::{decode_record, encode_record};
    pub use super::state_machine::fuzzing::{change_map, decode, Record, RECORDS};
}

use openraft::{ErrorSubject, ErrorVerb};

use crate::types::{NodeId, StorageError};

/// Runs `f`, which may wait for the disk (an fsync, reads of old entries), without stalling
/// the other tasks of the Tokio worker it is called on: on a multi-threaded runtime the worker
/// hands its tasks to another thread first. Only for the rare slow steps; a plain append
/// writes to the page cache and stays inline (a hand-off costs a thread wake-up).
pub fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub(crate) fn sto_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

pub(crate) fn read_err(
    subject: ErrorSubject<NodeId>,
    e: impl std::error::Error + 'static,
) -> StorageError {
    sto_err(subject, ErrorVerb::Read, e)
}

pub(crate) fn ser<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(v).map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Write, e))
}

#[cfg(test)]
mod tests;
