//! Shared pieces of the fuzz targets in `fuzz_targets/`: the properties every decoder must
//! keep, and the cluster map requests are checked against.
//!
//! Each target takes raw bytes, decodes them as the process does with the same decoder, feeds
//! what decodes to the code that checks or interprets it next, and asserts what is cheap to
//! assert: nothing panics (libFuzzer reports a panic as a crash), and where an encoder exists,
//! encoding a decoded value and decoding it again gives the same value.

use std::sync::OnceLock;

use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shardmap::{ClusterMap, CompiledMap, KeyspaceSpec, MapChange, StrategyKind};

/// Decodes a protobuf message; for one that decodes, checks that its encoding decodes to the
/// same message.
pub fn proto<M: Message + Default + PartialEq>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
    assert!(again == m, "protobuf round trip changed the message");
    Some(m)
}

/// Decodes a bincode value as the node does; for one that decodes, checks that its encoding
/// decodes and encodes to the same bytes (bincode's fixed-width encoding is canonical, except
/// for maps and sets, which encoding once normalises).
pub fn bincode_value<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let v: T = bincode::deserialize(bytes).ok()?;
    let once = bincode::serialize(&v).expect("a decoded value encodes");
    let again: T = bincode::deserialize(&once).expect("an encoded value decodes");
    assert_eq!(
        bincode::serialize(&again).expect("a decoded value encodes"),
        once,
        "bincode round trip changed the value"
    );
    Some(v)
}

/// Three nodes, the default keyspace (hash, 4 groups), and one keyspace of each strategy,
/// the directory one with two entries: every placement a request can meet.
pub fn cluster_map() -> &'static CompiledMap {
    static MAP: OnceLock<CompiledMap> = OnceLock::new();
    MAP.get_or_init(|| CompiledMap::new(raw_map().clone()).expect("the fixture map compiles"))
}

/// [`cluster_map`] uncompiled.
pub fn raw_map() -> &'static ClusterMap {
    static MAP: OnceLock<ClusterMap> = OnceLock::new();
    MAP.get_or_init(|| {
        let nodes: Vec<_> = (1..=3)
            .map(|id| (id, format!("127.0.0.1:700{id}")))
            .collect();
        let mut map = ClusterMap::bootstrap(&nodes, 4, 3).expect("bootstrap");
        let splits = vec![b"g".to_vec(), b"p".to_vec()];
        let spec = |name: &str, strategy, shards, split_points| KeyspaceSpec {
            name: name.into(),
            strategy,
            shards,
            split_points,
            vnodes: 0,
            fallback: None,
            separator: Vec::new(),
            replication: 3,
        };
        let tenants = KeyspaceSpec {
            fallback: Some(StrategyKind::Range),
            ..spec("tenants", StrategyKind::Directory, 0, splits.clone())
        };
        for change in [
            MapChange::CreateKeyspace(spec("users", StrategyKind::Hash, 3, Vec::new())),
            MapChange::CreateKeyspace(spec("events", StrategyKind::Range, 0, splits.clone())),
            MapChange::CreateKeyspace(tenants),
        ] {
            map = map.apply(&change).expect("fixture keyspace");
        }
        let group = *map
            .groups
            .iter()
            .find(|(_, g)| g.keyspace == "tenants")
            .expect("a tenants group")
            .0;
        for dir in [&b"a"[..], b"tenant-b"] {
            map = map
                .apply(&MapChange::SetDirectory {
                    keyspace: "tenants".into(),
                    directory: dir.to_vec(),
                    group,
                })
                .expect("fixture directory");
        }
        map
    })
}

/// The fixture map as the meta group stores it (JSON).
pub fn map_json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_vec(raw_map()).expect("the map encodes"))
}
