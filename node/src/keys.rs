//! The whole on-disk layout of a node's sled database, in one place.
//!
//! One sled database per node. Each group has these trees, named by the group id:
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `g{id}.raft` | `vote`, `purged` | bincode `Vote` / `LogId` |
//! | `g{id}.data` | the user key | version (u64 big-endian) then the value bytes |
//! | `g{id}.sm` | `applied`, `membership`, `installing`, `cluster_map`, `journal`, `fences` | bincode |
//! | `g{id}.snap` | `snapshot`, `request_ids` | bincode |
//! | `g{id}.dedup` | `e` + aging clock + index (u64 big-endian each) | the entry's (id, results) pairs the log cannot tell |
//!
//! Each group's Raft log is in segment files in `raft-log/g{id}/` beside the database `db/`.
//!
//! The node tree `node` holds `config`: the bootstrap configuration (JSON) written on first
//! start, so that a restart from the data dir ignores changed flags, and `map`: the newest
//! cluster map the node has seen.

use std::path::{Path, PathBuf};

use crate::types::GroupId;

pub const NODE_TREE: &str = "node";
pub const NODE_CONFIG: &[u8] = b"config";
/// The newest cluster map this node has seen (JSON), so a restart knows its groups at once.
pub const NODE_MAP: &[u8] = b"map";

pub const VOTE: &[u8] = b"vote";
pub const PURGED: &[u8] = b"purged";

pub const APPLIED: &[u8] = b"applied";
pub const MEMBERSHIP: &[u8] = b"membership";
pub const SNAPSHOT: &[u8] = b"snapshot";
pub const INSTALLING: &[u8] = b"installing";
/// The decisions of the latest `apply` call, written before its effects (see
/// `storage::state_machine::Decided`).
pub const JOURNAL: &[u8] = b"journal";
pub const CLUSTER_MAP: &[u8] = b"cluster_map";
/// In a group's `sm` tree: its fences (`Vec<types::Fence>`, bincode).
pub const FENCES: &[u8] = b"fences";
/// In a group's snapshot tree: the request-id table as of the stored snapshot or later
/// (`storage::request_ids::Checkpoint`), from which opening the group rebuilds it.
pub const REQUEST_IDS: &[u8] = b"request_ids";

/// The sled database, under the data dir.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// A group's Raft log segments under the data dir: `raft-log/g{id}/{first index:020}.wal`.
pub fn log_dir(data_dir: &Path, group: GroupId) -> PathBuf {
    data_dir.join("raft-log").join(format!("g{group}"))
}

pub fn raft_tree(group: GroupId) -> String {
    format!("g{group}.raft")
}

pub fn data_tree(group: GroupId) -> String {
    format!("g{group}.data")
}

/// The request ids whose results the log cannot tell (see `storage::request_ids`): `e` +
/// aging clock + log index (both u64 big-endian) → bincode list of the entry's (id, results)
/// pairs, empty results for a write a fence refused. Ordered by age, so that old records are
/// forgotten by a range scan.
pub fn dedup_tree(group: GroupId) -> String {
    format!("g{group}.dedup")
}

pub fn dedup_entry_key(at_ms: u64, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'e';
    k[1..9].copy_from_slice(&at_ms.to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

pub fn sm_tree(group: GroupId) -> String {
    format!("g{group}.sm")
}

/// The group's current snapshot (`SNAPSHOT` → bincode `StoredSnapshot`), alone in its tree:
/// in the `sm` tree it shared a sled leaf with the applied marker and the journal, written on
/// every apply, and sled rewrote the whole leaf, snapshot included (megabytes: it carries the
/// request ids of the last two minutes), every few of those writes. Earlier versions kept it
/// in the `sm` tree; opening a group moves it.
pub fn snapshot_tree(group: GroupId) -> String {
    format!("g{group}.snap")
}

/// Encodes a stored value: its version, then its bytes.
pub fn encode_value(version: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// Splits a stored value into (version, bytes). `None` for a value shorter than its header,
/// which only a corrupted tree could hold.
pub fn decode_value(raw: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = raw.split_at_checked(8)?;
    let version = u64::from_be_bytes(head.try_into().ok()?);
    Some((version, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_layout() {
        assert_eq!(raft_tree(3), "g3.raft");
        assert_eq!(data_tree(12), "g12.data");
        assert_eq!(
            encode_value(5, b"ab"),
            vec![0, 0, 0, 0, 0, 0, 0, 5, b'a', b'b']
        );
    }

    #[test]
    fn value_round_trip() {
        let raw = encode_value(u64::MAX - 1, b"hello");
        assert_eq!(decode_value(&raw), Some((u64::MAX - 1, &b"hello"[..])));
        assert_eq!(decode_value(&raw[..7]), None);
        assert_eq!(decode_value(&encode_value(1, b"")), Some((1, &b""[..])));
    }
}
