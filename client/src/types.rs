//! What calls return: plain structs owning `Bytes`, so that the generated protobuf types stay
//! out of the public API and can change without breaking callers.

use bytes::Bytes;
use kv_proto::kv;

/// A key's value as read, with where and how fresh it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The key.
    pub key: Bytes,
    /// Its value.
    pub value: Bytes,
    /// The Raft log index (in the key's shard group) of the write that last set the key.
    pub version: u64,
    /// The shard group holding the key.
    pub group_id: u64,
    /// The node id of the replica that served the read.
    pub served_by: u64,
    /// That replica's applied index when it answered; with eventual reads, how far behind
    /// the replica may be.
    pub applied_index: u64,
}

impl Versioned {
    /// `None` for a key the server reports absent.
    pub(crate) fn from_proto(r: kv::GetResponse) -> Option<Self> {
        r.found.then_some(Versioned {
            key: r.key,
            value: r.value,
            version: r.version,
            group_id: r.group_id,
            served_by: r.served_by,
            applied_index: r.applied_index,
        })
    }
}

/// One key of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Its value; empty when the scan was keys-only.
    pub value: Bytes,
    /// The log index of the write that last set the key.
    pub version: u64,
}

impl From<kv::KeyValue> for KeyValue {
    fn from(kv: kv::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            version: kv.version,
        }
    }
}

/// One page of a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The keys in key order.
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut the page short: scan again from just after the last key.
    pub more: bool,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Whether the key existed before the delete. Deleting an absent key succeeds.
    pub existed: bool,
    /// The log index of the delete.
    pub version: u64,
    /// The shard group holding the key.
    pub group_id: u64,
}
