//! Every request message of the node's `Node` service (kv.node.v1, served by kvnode): the
//! first byte picks the message, the rest is its protobuf encoding. What decodes goes through
//! the checks node/src/service.rs and `Node::check_routing` make (limits, batch size, request
//! id, key ownership under the map), writes become the log command they are proposed as and
//! back (bincode, as the log stores them), fences are applied to a fence list, and a proposed
//! map change is applied to the stored map exactly as every replica of the meta group applies
//! it (`storage::fuzzing::change_map`): a panic there would stop the meta group for good.

#![no_main]

use kv_fuzz::{bincode_value, cluster_map, map_json, proto};
use kv_proto::node::{self as pb, node_call::Call, write_op};
use kvnode::storage::fuzzing::change_map;
use kvnode::types::{Dedup, Fence, FenceChange, Op, Request, MAX_FENCES, MAX_REQUEST_ID_BYTES};
use libfuzzer_sys::fuzz_target;
use shardmap::{CompiledMap, Limits};

fn limits() -> Limits {
    Limits::default()
}

/// Whether every key belongs to `group` under the fixture map, as `check_routing` asks.
fn routed<'k>(group: u64, keys: impl Iterator<Item = &'k [u8]>) -> bool {
    if group == shardmap::META_GROUP {
        return false;
    }
    let map = cluster_map();
    let _ = map.key_set_epoch(group);
    keys.into_iter().all(|k| map.owns(group, k) == Ok(true))
}

/// `NodeService::decode_ops`, then the command the write is proposed as.
fn write(r: pb::WriteRequest) {
    if r.ops.is_empty() || r.request_id.len() > MAX_REQUEST_ID_BYTES {
        return;
    }
    let bytes: usize = r
        .ops
        .iter()
        .map(|op| match &op.op {
            Some(write_op::Op::Put(p)) => p.key.len() + p.value.len(),
            Some(write_op::Op::Delete(d)) => d.key.len(),
            None => 0,
        })
        .sum();
    if limits().check_write_bytes(bytes).is_err() {
        return;
    }
    let mut ops = Vec::new();
    for op in r.ops {
        ops.push(match op.op {
            Some(write_op::Op::Put(p)) => {
                if limits().check_key(&p.key).is_err() || limits().check_value(&p.value).is_err() {
                    return;
                }
                Op::Put {
                    key: p.key.to_vec(),
                    value: p.value.to_vec(),
                    expected_version: p.expected_version,
                }
            }
            Some(write_op::Op::Delete(d)) => {
                if limits().check_key(&d.key).is_err() {
                    return;
                }
                Op::Delete {
                    key: d.key.to_vec(),
                    expected_version: d.expected_version,
                }
            }
            None => return,
        });
    }
    if !routed(r.group_id, ops.iter().map(Op::key)) {
        return;
    }
    let dedup = (!r.request_id.is_empty()).then(|| Dedup {
        id: r.request_id.to_vec(),
        at_ms: 1,
    });
    let command = Request::Write { ops, dedup };
    assert_eq!(command.bytes(), bytes);
    let encoded = bincode::serialize(&command).expect("a write encodes");
    let back: Request = bincode_value(&encoded).expect("an encoded write decodes");
    assert_eq!(back, command, "a write's log command round trips");
}

fn read(r: &pb::ReadRequest) {
    if r.keys.len() > kv_proto::MAX_BATCH_KEYS
        || r.keys.iter().any(|k| limits().check_key(k).is_err())
    {
        return;
    }
    routed(r.group_id, r.keys.iter().map(|k| k.as_ref()));
}

fn fence(r: pb::FenceRequest) {
    if limits().check_range(&r.start, &r.end).is_err() || !routed(r.group_id, std::iter::empty()) {
        return;
    }
    let change = if r.raise {
        FenceChange::Raise(Fence {
            start: r.start.to_vec(),
            end: r.end.to_vec(),
            epoch: r.fence_epoch,
            tag: r.tag,
        })
    } else {
        FenceChange::Lift {
            start: r.start.to_vec(),
            end: r.end.to_vec(),
            older_than: r.fence_epoch,
            tag: r.tag,
        }
    };
    let existing = vec![Fence {
        start: b"a".to_vec(),
        end: b"m".to_vec(),
        epoch: 3,
        tag: 7,
    }];
    if let Some(after) = change.apply(&existing) {
        assert!(after.len() <= MAX_FENCES);
        let _ = after.iter().any(|f| f.covers(b"b"));
    }
    let command = Request::Fence(change);
    let encoded = bincode::serialize(&command).expect("a fence encodes");
    assert_eq!(bincode_value::<Request>(&encoded), Some(command));
}

fn propose(r: pb::ProposeMapChangeRequest) {
    // As the meta group applies it, against its stored map and against no map at all.
    assert!(change_map(None, &r.change_json, r.expected_epoch).is_err());
    if let Ok((epoch, json)) = change_map(Some(map_json()), &r.change_json, r.expected_epoch) {
        let map: shardmap::ClusterMap =
            serde_json::from_slice(&json).expect("a stored map decodes");
        assert_eq!(map.epoch, epoch);
        CompiledMap::new(map).expect("a stored map compiles");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 10 {
        0 => drop(proto::<pb::WriteRequest>(bytes).map(write)),
        1 => drop(proto::<pb::ReadRequest>(bytes).map(|r| read(&r))),
        2 => {
            if let Some(r) = proto::<pb::NodeScanRequest>(bytes) {
                if limits().check_range(&r.start, &r.end).is_ok() {
                    routed(r.group_id, std::iter::empty());
                }
            }
        }
        3 => {
            // Multi and each message of MultiStream.
            for call in proto::<pb::NodeMultiRequest>(bytes)
                .into_iter()
                .flat_map(|r| r.calls)
            {
                match call.call {
                    Some(Call::Write(r)) => write(r),
                    Some(Call::Read(r)) => read(&r),
                    None => {}
                }
            }
        }
        4 => drop(proto::<pb::GetClusterMapRequest>(bytes)),
        5 => drop(proto::<pb::WatchClusterMapRequest>(bytes)),
        6 => drop(proto::<pb::ProposeMapChangeRequest>(bytes).map(propose)),
        7 => drop(proto::<pb::FenceRequest>(bytes).map(fence)),
        8 => drop(proto::<pb::GroupStatusRequest>(bytes)),
        _ => {
            // The change JSON alone, so that the fuzzer need not learn protobuf framing first.
            propose(pb::ProposeMapChangeRequest {
                change_json: bytes.to_vec().into(),
                expected_epoch: 0,
            });
        }
    }
});
