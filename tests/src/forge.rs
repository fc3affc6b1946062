//! Raft messages an attacker would forge, as the bincode payloads of `kv.node.v1.RaftRequest`,
//! for the tests that send them to nodes from outside the cluster.

use kvnode::types::{Entry, LogId, NodeId, Op, Request, TypeConfig};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, Vote};

/// A vote request from `from` in `term`.
pub fn vote(term: u64, from: NodeId) -> Vec<u8> {
    encode(&VoteRequest::new(Vote::new(term, from), None))
}

/// An empty append (a heartbeat) from leader `from` in `term`.
pub fn heartbeat(term: u64, from: NodeId) -> Vec<u8> {
    encode(&AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, from),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    })
}

/// An append from `leader` in `term` carrying a made-up put of `key` at log `index`, committed
/// at once.
pub fn forged_append(term: u64, leader: NodeId, index: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let log_id = |index| LogId::new(CommittedLeaderId::new(term, leader), index);
    let entry = Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request::Write {
            ops: vec![Op::Put {
                key: key.to_vec(),
                value: value.to_vec(),
                expected_version: None,
            }],
            dedup: None,
        }),
    };
    encode(&AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: Some(log_id(index - 1)),
        leader_commit: Some(log_id(index)),
        entries: vec![entry],
    })
}

fn encode(message: &impl serde::Serialize) -> Vec<u8> {
    bincode::serialize(message).expect("Raft messages encode")
}
