//! The node's `Raft` service (kv.node.v1.Raft, served by kvnode): a `RaftRequest` whose
//! payload is openraft's own message, bincode-encoded, for the `TypeConfig` of
//! node/src/types.rs. The first byte picks the method (AppendEntries, Vote, InstallSnapshot),
//! which decides the payload's type; the rest is the protobuf `RaftRequest`. A payload that
//! decodes goes through `raft_guard`, the check node/src/service.rs makes before openraft
//! sees a message, and an accepted one must keep the guard's promise: a sender that is a
//! replica, terms openraft can count past, indexes far from overflow.

#![no_main]

use kv_fuzz::{bincode_value, proto};
use kv_proto::node::RaftRequest;
use kvnode::raft_guard::{Group, MAX_TERM_OR_INDEX, MAX_TERM_STEP};
use kvnode::types::{LogId, NodeId, TypeConfig, Vote};
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::EntryPayload;

const CURRENT_TERM: u64 = 5;
const REPLICAS: [NodeId; 3] = [1, 2, 3];

fn group() -> Group<'static> {
    Group {
        id: 2,
        current_term: CURRENT_TERM,
        is_replica: &|id| REPLICAS.contains(&id),
    }
}

/// What the guard promises of every message it lets through.
fn sane_vote(vote: &Vote) {
    let leader = vote.leader_id();
    assert!(REPLICAS.contains(&leader.node_id), "accepted a non-replica");
    assert!(
        leader.get_term() <= CURRENT_TERM + MAX_TERM_STEP,
        "accepted a far term"
    );
}

fn sane_log_id(log_id: Option<&LogId>) {
    if let Some(l) = log_id {
        assert!(l.leader_id.term <= MAX_TERM_OR_INDEX && l.index <= MAX_TERM_OR_INDEX);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let Some(req) = proto::<RaftRequest>(bytes) else {
        return;
    };
    let payload = &req.payload[..];
    match which % 3 {
        0 => {
            let Some(rpc) = bincode_value::<AppendEntriesRequest<TypeConfig>>(payload) else {
                return;
            };
            if group().check_append(&rpc).is_ok() {
                sane_vote(&rpc.vote);
                sane_log_id(rpc.prev_log_id.as_ref());
                for e in &rpc.entries {
                    sane_log_id(Some(&e.log_id));
                    // What the transport sizes entries by (network::fit_entries).
                    if let EntryPayload::Normal(r) = &e.payload {
                        let _ = r.bytes();
                    }
                }
            }
        }
        1 => {
            let Some(rpc) = bincode_value::<VoteRequest<NodeId>>(payload) else {
                return;
            };
            if group().check_vote_request(&rpc).is_ok() {
                sane_vote(&rpc.vote);
                sane_log_id(rpc.last_log_id.as_ref());
            }
        }
        _ => {
            let Some(rpc) = bincode_value::<InstallSnapshotRequest<TypeConfig>>(payload) else {
                return;
            };
            if group().check_snapshot(&rpc).is_ok() {
                sane_vote(&rpc.vote);
                sane_log_id(rpc.meta.last_log_id.as_ref());
            }
        }
    }
});
