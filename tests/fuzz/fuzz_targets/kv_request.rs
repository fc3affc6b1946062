//! Every request message of the public API (`kv.v1.Kv` and `kv.v1.Admin`, served by
//! kvrouter): the first byte picks the message, the rest is its protobuf encoding. What
//! decodes goes through the checks the router makes before it calls a node (router/src/
//! routing.rs and keyspaces.rs): limits on keys, values, ranges, batches and request ids,
//! placement in a map holding every strategy, and admin changes checked against that map with
//! `ClusterMap::apply`, as the router checks them before proposing. The users, roles and
//! grants requests of `Admin` are decoded and round-tripped only: the router hands them on.

#![no_main]

use kv_fuzz::{cluster_map, proto, raw_map};
use kv_proto::kv::{self as pb, call::Call as Which};
use libfuzzer_sys::fuzz_target;
use shardmap::{CompiledMap, KeyspaceSpec, Limits, MapChange, Placement, StrategyKind};

/// The router's `MAX_REQUEST_ID_BYTES` (router/src/routing.rs).
const MAX_REQUEST_ID_BYTES: usize = 64;

fn limits() -> Limits {
    Limits::default()
}

/// Where a single-key request goes: its key's checks, then its group.
fn route_key(keyspace: &str, key: &[u8]) {
    if limits().check_key(key).is_ok() {
        if let Ok(group) = cluster_map().locate(keyspace, key) {
            assert!(
                raw_map().groups.contains_key(&group),
                "located group {group} is in the map"
            );
        }
    }
}

fn get(r: &pb::GetRequest) {
    route_key(&r.keyspace, &r.key);
}

fn put(r: &pb::PutRequest) {
    if limits().check_value(&r.value).is_ok() && r.request_id.len() <= MAX_REQUEST_ID_BYTES {
        route_key(&r.keyspace, &r.key);
    }
}

fn delete(r: &pb::DeleteRequest) {
    if r.request_id.len() <= MAX_REQUEST_ID_BYTES {
        route_key(&r.keyspace, &r.key);
    }
}

fn scan(r: &pb::ScanRequest) {
    if limits().check_range(&r.start, &r.end).is_err() {
        return;
    }
    if let Ok(placement) = cluster_map().placement(&r.keyspace) {
        for group in placement.groups_for_scan(&r.start, &r.end) {
            assert!(
                raw_map().groups.contains_key(&group),
                "scanned group {group} is in the map"
            );
        }
    }
}

fn batch<'k>(keyspace: &str, keys: impl ExactSizeIterator<Item = &'k [u8]>) {
    if keys.len() > kv_proto::MAX_BATCH_KEYS {
        return;
    }
    for key in keys {
        route_key(keyspace, key);
    }
}

/// The router's `spec_from_proto` (router/src/keyspaces.rs): strategy names parsed, the rest
/// copied.
fn spec(spec: &pb::KeyspaceSpec) -> Option<KeyspaceSpec> {
    let strategy: StrategyKind = spec.strategy.parse().ok()?;
    let fallback = match spec.fallback.as_str() {
        "" => None,
        name => Some(name.parse::<StrategyKind>().ok()?),
    };
    Some(KeyspaceSpec {
        name: spec.name.clone(),
        strategy,
        shards: spec.shards,
        split_points: spec.split_points.iter().map(|p| p.to_vec()).collect(),
        vnodes: spec.vnodes,
        fallback,
        separator: spec.separator.to_vec(),
        replication: spec.replication as usize,
    })
}

/// An admin change as the router checks it: applied to its cached map, and the map it gives
/// compiled (the meta group refuses a map routers could not compile).
fn change(change: MapChange) {
    if let Ok(next) = raw_map().apply(&change) {
        assert!(
            next.epoch > raw_map().epoch,
            "an applied change moves the epoch"
        );
        let compiled = CompiledMap::new(next).expect("an applied change compiles");
        if let MapChange::CreateKeyspace(spec) = &change {
            let placement = compiled
                .placement(&spec.name)
                .expect("the new keyspace places");
            let _ = placement.locate(b"k");
        }
    }
}

fn directory(keyspace: &str, dir: &[u8]) {
    if let Ok(Placement::Directory(d)) = cluster_map().placement(keyspace) {
        let _ = d.group_of_directory(dir);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 29 {
        0 => drop(proto::<pb::GetRequest>(bytes).map(|r| get(&r))),
        1 => drop(proto::<pb::PutRequest>(bytes).map(|r| put(&r))),
        2 => drop(proto::<pb::DeleteRequest>(bytes).map(|r| delete(&r))),
        3 => drop(proto::<pb::ScanRequest>(bytes).map(|r| scan(&r))),
        4 => {
            if let Some(r) = proto::<pb::BatchGetRequest>(bytes) {
                batch(&r.keyspace, r.keys.iter().map(|k| k.as_ref()));
            }
        }
        5 => {
            if let Some(r) = proto::<pb::BatchPutRequest>(bytes) {
                if r.kvs
                    .iter()
                    .all(|kv| limits().check_value(&kv.value).is_ok())
                {
                    batch(&r.keyspace, r.kvs.iter().map(|kv| kv.key.as_ref()));
                }
            }
        }
        6 => {
            // Multi and each message of MultiStream.
            for call in proto::<pb::MultiRequest>(bytes)
                .into_iter()
                .flat_map(|r| r.calls)
            {
                match call.call {
                    Some(Which::Get(r)) => get(&r),
                    Some(Which::Put(r)) => put(&r),
                    Some(Which::Delete(r)) => delete(&r),
                    None => {}
                }
            }
        }
        7 => {
            if let Some(s) = proto::<pb::CreateKeyspaceRequest>(bytes).and_then(|r| r.spec) {
                if let Some(spec) = spec(&s) {
                    change(MapChange::CreateKeyspace(spec));
                }
            }
        }
        8 => {
            if let Some(r) = proto::<pb::DropKeyspaceRequest>(bytes) {
                change(MapChange::DropKeyspace { name: r.name });
            }
        }
        9 => drop(proto::<pb::ListKeyspacesRequest>(bytes)),
        10 => {
            if let Some(r) = proto::<pb::DescribeKeyspaceRequest>(bytes) {
                let _ = cluster_map().placement(&r.name).map(|p| p.ordered_scan());
            }
        }
        11 => {
            if let Some(r) = proto::<pb::SetDirectoryRequest>(bytes) {
                change(MapChange::SetDirectory {
                    keyspace: r.keyspace,
                    directory: r.directory.to_vec(),
                    group: r.group_id,
                });
            }
        }
        12 => drop(
            proto::<pb::GetDirectoryRequest>(bytes).map(|r| directory(&r.keyspace, &r.directory)),
        ),
        13 => {
            if let Some(r) = proto::<pb::ListDirectoryRequest>(bytes) {
                let _ = raw_map()
                    .keyspaces
                    .get(shardmap::keyspace_name(&r.keyspace));
            }
        }
        14 => {
            if let Some(r) = proto::<pb::RemoveDirectoryRequest>(bytes) {
                change(MapChange::RemoveDirectory {
                    keyspace: r.keyspace,
                    directory: r.directory.to_vec(),
                });
            }
        }
        15 => {
            if let Some(r) = proto::<pb::LocateRequest>(bytes) {
                batch(&r.keyspace, r.keys.iter().map(|k| k.as_ref()));
            }
        }
        // The users, roles and grants of the Admin service: decoded and round-tripped only.
        16 => drop(proto::<pb::CreateUserRequest>(bytes)),
        17 => drop(proto::<pb::DeleteUserRequest>(bytes)),
        18 => drop(proto::<pb::ListUsersRequest>(bytes)),
        19 => drop(proto::<pb::SetUserRolesRequest>(bytes)),
        20 => drop(proto::<pb::IssueTokenRequest>(bytes)),
        21 => drop(proto::<pb::RevokeTokenRequest>(bytes)),
        22 => drop(proto::<pb::CreateRoleRequest>(bytes)),
        23 => drop(proto::<pb::DeleteRoleRequest>(bytes)),
        24 => drop(proto::<pb::ListRolesRequest>(bytes)),
        25 => drop(proto::<pb::GrantRequest>(bytes)),
        26 => drop(proto::<pb::RevokeGrantRequest>(bytes)),
        27 => drop(proto::<pb::SetAuthEnabledRequest>(bytes)),
        _ => drop(proto::<pb::WhoAmIRequest>(bytes)),
    }
});
