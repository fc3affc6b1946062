//! The state machine's persisted records (node/src/storage/state_machine.rs, request_ids.rs,
//! raft_meta.rs, keys.rs): the apply journal, the applied marker, membership, fences, the
//! request-id records and checkpoint, the vote and purge marker, a stored value, and the
//! cluster map the meta group stores (JSON). The first byte picks the record, the rest is its
//! bytes. Each decodes as opening a group reads it; what decodes must encode and decode again
//! to the same bytes.

#![no_main]

use kv_fuzz::bincode_value;
use kvnode::keys;
use kvnode::storage::fuzzing::{decode, Record, RECORDS};
use kvnode::types::{LogId, Vote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let n = RECORDS.len() + 4;
    match which as usize % n {
        i if i < RECORDS.len() => {
            let record = RECORDS[i];
            if matches!(record, Record::StoredSnapshot | Record::SnapshotBody) {
                // The snapshot target's.
                return;
            }
            if let Ok(once) = decode(record, bytes) {
                let twice = decode(record, &once).expect("an encoded record decodes");
                assert_eq!(twice, once, "{record:?} round trip changed the record");
            }
        }
        i if i == RECORDS.len() => drop(bincode_value::<Option<Vote>>(bytes)),
        i if i == RECORDS.len() + 1 => drop(bincode_value::<Option<LogId>>(bytes)),
        i if i == RECORDS.len() + 2 => {
            if let Some((version, value)) = keys::decode_value(bytes) {
                assert_eq!(keys::encode_value(version, value), bytes);
            }
        }
        _ => {
            // The cluster map as stored (meta group `cluster_map`, node tree `map`), compiled
            // as every node and router does on load.
            if let Ok(map) = serde_json::from_slice::<shardmap::ClusterMap>(bytes) {
                let json = serde_json::to_vec(&map).expect("a map encodes");
                let again: shardmap::ClusterMap =
                    serde_json::from_slice(&json).expect("an encoded map decodes");
                assert_eq!(again, map, "the cluster map round trips");
                if let Ok(compiled) = shardmap::CompiledMap::new(map) {
                    for name in compiled.map.keyspaces.keys() {
                        let _ = compiled.locate(name, b"k");
                    }
                }
            }
        }
    }
});
