//! Keyspaces with their own strategies, checked on real processes: where the routers say keys
//! go (`Admin.Locate`), where they really are (node `Scan` of each group on its leader), that
//! every router and a client-side `shardmap::CompiledMap` agree, and that range scans visit
//! groups in key order and stop at their limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cluster_tests::admin::{
    counts, create_keyspace, describe, directory_spec, first_difference, hash_spec, locate,
    range_spec, wait_locate,
};
use cluster_tests::{Cluster, ClusterOptions};
use kv_proto::kv::{GetDirectoryRequest, RemoveDirectoryRequest, SetDirectoryRequest};
use kvclient::{Bytes, ReadOptions, ScanOptions, WriteOptions};
use rand::{Rng, SeedableRng};

/// Keys whose placement is checked.
const HASH_KEYS: usize = 100_000;
/// Of those, the keys actually written (and found again on the nodes).
const HASH_WRITTEN: usize = 10_000;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `n` distinct random keys: random bytes (any value, `/` and `\0` included), 1 to 40 long, so
/// that the ring's canonical encoding is exercised beyond ASCII.
fn random_keys(n: usize, seed: u64) -> Vec<Bytes> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut seen = BTreeSet::new();
    while seen.len() < n {
        let len = rng.gen_range(1..=40);
        let key: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        seen.insert(key);
    }
    // A stable but unsorted order.
    let mut keys: Vec<Bytes> = seen.into_iter().map(Bytes::from).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    for i in (1..keys.len()).rev() {
        keys.swap(i, rng.gen_range(0..=i));
    }
    keys
}

fn value_of(key: &[u8]) -> Bytes {
    let mut v = b"v:".to_vec();
    v.extend_from_slice(key);
    Bytes::from(v)
}

fn write_opts(keyspace: &str) -> WriteOptions {
    WriteOptions {
        keyspace: keyspace.into(),
        ..Default::default()
    }
}

fn read_opts(keyspace: &str) -> ReadOptions {
    ReadOptions {
        keyspace: keyspace.into(),
        ..Default::default()
    }
}

/// Writes `keys` (value: [`value_of`]) with `batch_put`, 500 per call, 4 calls in flight.
async fn load(client: &kvclient::Client, keyspace: &str, keys: &[Bytes]) -> anyhow::Result<()> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(keys.chunks(500))
        .map(|part| async move {
            let versions = client
                .batch_put(
                    part.iter().map(|k| (k.clone(), value_of(k))),
                    &write_opts(keyspace),
                )
                .await?;
            anyhow::ensure!(
                versions.len() == part.len() && versions.iter().all(|&v| v > 0),
                "batch_put returned versions {versions:?}"
            );
            Ok(())
        })
        .buffer_unordered(4)
        .try_collect::<()>()
        .await
}

/// Reads `keys` with strong `batch_get` and returns the group each was served from; fails if
/// one is missing or has another value.
async fn read_groups(
    client: &kvclient::Client,
    keyspace: &str,
    keys: &[Bytes],
) -> anyhow::Result<Vec<u64>> {
    let mut groups = Vec::with_capacity(keys.len());
    for part in keys.chunks(1_000) {
        let results = client
            .batch_get(part.iter().cloned(), &read_opts(keyspace))
            .await?;
        for (k, got) in part.iter().zip(results) {
            let got = got.ok_or_else(|| anyhow::anyhow!("key {:?} is missing", text(k)))?;
            anyhow::ensure!(got.value == value_of(k), "key {:?}: wrong value", text(k));
            groups.push(got.group_id);
        }
    }
    Ok(groups)
}

/// Checks that each group holds exactly the keys `expected` assigns to it, reading each group
/// straight from its leader.
async fn check_on_nodes(
    cluster: &Cluster,
    groups: &[u64],
    expected: &BTreeMap<u64, BTreeSet<Bytes>>,
) {
    let diag = cluster.diag();
    for &g in groups {
        let kvs = cluster
            .scan_group(g)
            .await
            .unwrap_or_else(|e| panic!("reading group {g} on its leader: {e:#} {diag}"));
        let got: BTreeSet<Bytes> = kvs.iter().map(|kv| kv.key.clone()).collect();
        let want = expected.get(&g).cloned().unwrap_or_default();
        let extra: Vec<String> = got.difference(&want).take(5).map(|k| text(k)).collect();
        let missing: Vec<String> = want.difference(&got).take(5).map(|k| text(k)).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "group {g} holds {} keys, expected {}: keys that belong elsewhere {extra:?}, \
             missing {missing:?} {diag}",
            got.len(),
            want.len()
        );
        for kv in &kvs {
            assert_eq!(
                kv.value,
                value_of(&kv.key),
                "group {g}: value of {:?}",
                text(&kv.key)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keyspace_spreads_keys_and_every_router_maps_them_alike() {
    let mut cluster = Cluster::start(ClusterOptions {
        routers: 2,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let mut admin1 = cluster.admin_of(0).await.unwrap();
    let mut admin2 = cluster.admin_of(1).await.unwrap();

    let created = create_keyspace(&mut admin1, hash_spec("users", 8, 3))
        .await
        .unwrap_or_else(|e| panic!("create hash keyspace: {e:?} {diag}"));
    let info = created
        .keyspace
        .expect("CreateKeyspace returns the keyspace");
    assert_eq!(info.strategy, "hash", "{info:?}");
    assert_eq!(info.replication, 3, "{info:?}");
    assert_eq!(info.vnodes, 256, "default vnodes {info:?}");
    assert_eq!(info.groups.len(), 8, "{info:?}");
    let groups: Vec<u64> = info.groups.iter().map(|g| g.id).collect();
    assert!(
        !groups.contains(&0),
        "a keyspace group is the meta group: {groups:?}"
    );
    let share_sum: f64 = info.groups.iter().map(|g| g.ring_share_percent).sum();
    assert!(
        (share_sum - 100.0).abs() < 0.01,
        "ring shares sum to {share_sum} {info:?}"
    );
    for g in &info.groups {
        let distinct: BTreeSet<u64> = g.replicas.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            3,
            "group {} replicas {:?} not distinct",
            g.id,
            g.replicas
        );
    }

    let seed: u64 = rand::random();
    eprintln!("random key seed: {seed}");
    let keys = random_keys(HASH_KEYS, seed);

    // Router 2 learns of the keyspace through its map watch.
    wait_locate(&admin2, "users", &keys[0], Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));

    let (by_router1, epoch1) = locate(&mut admin1, "users", &keys)
        .await
        .unwrap_or_else(|e| panic!("Locate on router 1: {e:?} {diag}"));
    assert!(
        epoch1 >= created.epoch,
        "router 1 epoch {epoch1} < {}",
        created.epoch
    );

    // Each group holds between half and one and a half times its fair share.
    let per_group = counts(&by_router1);
    let fair = HASH_KEYS as f64 / groups.len() as f64;
    for g in &groups {
        let c = per_group.get(g).copied().unwrap_or(0) as f64;
        assert!(
            c >= 0.5 * fair && c <= 1.5 * fair,
            "group {g} holds {c} of {HASH_KEYS} keys, fair share {fair}: {per_group:?} {diag}"
        );
    }
    assert!(
        per_group.keys().all(|g| groups.contains(g)),
        "keys located outside the keyspace's groups {groups:?}: {per_group:?}"
    );

    let (by_router2, _) = locate(&mut admin2, "users", &keys)
        .await
        .unwrap_or_else(|e| panic!("Locate on router 2: {e:?} {diag}"));
    if let Some(d) = first_difference(&keys, &by_router1, &by_router2) {
        panic!("router 1 and router 2 map keys differently: {d} {diag}");
    }

    let compiled = cluster.compiled_map(created.epoch).await.unwrap();
    let by_client: Vec<u64> = keys
        .iter()
        .map(|k| {
            compiled
                .locate("users", k)
                .expect("users in the nodes' map")
        })
        .collect();
    if let Some(d) = first_difference(&keys, &by_router1, &by_client) {
        panic!("router 1 and shardmap::CompiledMap map keys differently: {d} {diag}");
    }

    // Written keys are served from, and stored in, the group they were located in.
    let client = cluster.client();
    let written = &keys[..HASH_WRITTEN];
    load(&client, "users", written)
        .await
        .unwrap_or_else(|e| panic!("writing {HASH_WRITTEN} keys: {e:#} {diag}"));
    let served = read_groups(&client, "users", written)
        .await
        .unwrap_or_else(|e| panic!("reading back: {e:#} {diag}"));
    if let Some(d) = first_difference(written, &by_router1[..HASH_WRITTEN], &served) {
        panic!("BatchGet's group_id differs from Locate: {d} {diag}");
    }
    let mut expected: BTreeMap<u64, BTreeSet<Bytes>> = BTreeMap::new();
    for (k, g) in written.iter().zip(&by_router1) {
        expected.entry(*g).or_default().insert(k.clone());
    }
    check_on_nodes(&cluster, &groups, &expected).await;

    // After restarting every process, all three still agree with the first mapping.
    cluster
        .restart_all()
        .await
        .unwrap_or_else(|e| panic!("restarting everything: {e:#}"));
    let mut admin1 = cluster.admin_of(0).await.unwrap();
    let mut admin2 = cluster.admin_of(1).await.unwrap();
    for (name, admin) in [("router 1", &mut admin1), ("router 2", &mut admin2)] {
        wait_locate(admin, "users", &keys[0], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{name} after restart: {e:#} {diag}"));
        let (after, _) = locate(admin, "users", &keys)
            .await
            .unwrap_or_else(|e| panic!("Locate on {name} after restart: {e:?} {diag}"));
        if let Some(d) = first_difference(&keys, &by_router1, &after) {
            panic!("{name} maps keys differently after a restart: {d} {diag}");
        }
    }
    let compiled = cluster.compiled_map(created.epoch).await.unwrap();
    let by_client: Vec<u64> = keys
        .iter()
        .map(|k| {
            compiled
                .locate("users", k)
                .expect("users in the nodes' map")
        })
        .collect();
    if let Some(d) = first_difference(&keys, &by_router1, &by_client) {
        panic!("CompiledMap maps keys differently after a restart: {d} {diag}");
    }
    let client = cluster.client();
    let served = read_groups(&client, "users", written)
        .await
        .unwrap_or_else(|e| panic!("reading back after restart: {e:#} {diag}"));
    if let Some(d) = first_difference(written, &by_router1[..HASH_WRITTEN], &served) {
        panic!("after restart, BatchGet's group_id differs from Locate: {d} {diag}");
    }
}

/// The range index of `key` for split points `splits`.
fn range_index(key: &[u8], splits: &[&str]) -> usize {
    splits.iter().filter(|s| s.as_bytes() <= key).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_keyspace_keeps_ranges_on_their_groups_and_scans_stop_at_the_limit() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let mut admin = cluster.admin().await.unwrap();
    let splits = ["g", "p"];

    // Replication 1: each range's group lives on one node, so pausing that node makes exactly
    // that range unavailable.
    let created = create_keyspace(&mut admin, range_spec("events", &splits, 1))
        .await
        .unwrap_or_else(|e| panic!("create range keyspace: {e:?} {diag}"));
    let info = created
        .keyspace
        .expect("CreateKeyspace returns the keyspace");
    assert_eq!(info.strategy, "range", "{info:?}");
    assert_eq!(info.replication, 1, "{info:?}");
    assert_eq!(info.groups.len(), 3, "{info:?}");
    let bounds: Vec<(String, String)> = info
        .groups
        .iter()
        .map(|g| (text(&g.range_start), text(&g.range_end)))
        .collect();
    assert_eq!(
        bounds,
        vec![
            (String::new(), "g".to_string()),
            ("g".to_string(), "p".to_string()),
            ("p".to_string(), String::new())
        ],
        "group ranges {info:?}"
    );
    let groups: Vec<u64> = info.groups.iter().map(|g| g.id).collect();
    let homes: Vec<u64> = info
        .groups
        .iter()
        .map(|g| {
            assert_eq!(g.replicas.len(), 1, "replication 1: {g:?}");
            g.replicas[0]
        })
        .collect();
    let distinct: BTreeSet<u64> = homes.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3,
        "three single-replica groups on three nodes must be spread one per node: {homes:?}"
    );

    // Keys a000..z019: every range gets some.
    let mut keys: Vec<Bytes> = Vec::new();
    for letter in b'a'..=b'z' {
        for i in 0..20 {
            keys.push(Bytes::from(format!("{}{i:03}", letter as char)));
        }
    }
    let expected_group = |k: &[u8]| groups[range_index(k, &splits)];

    let client = cluster.client();
    load(&client, "events", &keys)
        .await
        .unwrap_or_else(|e| panic!("writing: {e:#} {diag}"));

    let (located, _) = locate(&mut admin, "events", &keys)
        .await
        .unwrap_or_else(|e| panic!("Locate: {e:?} {diag}"));
    let want: Vec<u64> = keys.iter().map(|k| expected_group(k)).collect();
    if let Some(d) = first_difference(&keys, &want, &located) {
        panic!("Locate does not follow the ranges: {d} {diag}");
    }
    let served = read_groups(&client, "events", &keys)
        .await
        .unwrap_or_else(|e| panic!("reading back: {e:#} {diag}"));
    if let Some(d) = first_difference(&keys, &want, &served) {
        panic!("BatchGet's group_id does not follow the ranges: {d} {diag}");
    }
    let mut expected: BTreeMap<u64, BTreeSet<Bytes>> = BTreeMap::new();
    for k in &keys {
        expected
            .entry(expected_group(k))
            .or_default()
            .insert(k.clone());
    }
    check_on_nodes(&cluster, &groups, &expected).await;

    let mut sorted = keys.clone();
    sorted.sort();
    let scan_keys = |kvs: &[kvclient::KeyValue]| -> Vec<Bytes> {
        kvs.iter().map(|kv| kv.key.clone()).collect()
    };
    let events = |limit: u32| ScanOptions {
        keyspace: "events".into(),
        limit,
        ..Default::default()
    };

    // A scan across the three ranges returns their keys in key order.
    let all = client
        .scan_all("", "", &events(0))
        .await
        .unwrap_or_else(|e| panic!("scan of the whole keyspace: {e:#} {diag}"));
    assert_eq!(scan_keys(&all), sorted, "whole-keyspace scan {diag}");
    let across = client
        .scan_all("e", "r", &events(0))
        .await
        .unwrap_or_else(|e| panic!("scan [e, r): {e:#} {diag}"));
    let want_across: Vec<Bytes> = sorted
        .iter()
        .filter(|k| k.as_ref() >= b"e".as_slice() && k.as_ref() < b"r".as_slice())
        .cloned()
        .collect();
    assert_eq!(scan_keys(&across), want_across, "scan [e, r) {diag}");

    // With the last range's only replica hung, scans whose limit the earlier ranges satisfy
    // still succeed: they never ask the last group.
    let last_home = homes[2];
    cluster.node_mut(last_home).pause().unwrap();
    let first_range = expected[&groups[0]].len();
    for limit in [10, first_range as u32 + 5] {
        let started = Instant::now();
        let page =
            tokio::time::timeout(Duration::from_secs(20), client.scan("", "", &events(limit)))
                .await
                .unwrap_or_else(|_| {
                    panic!("scan limit {limit} hung with node{last_home} paused {diag}")
                });
        let page = page.unwrap_or_else(|e| {
            panic!(
                "scan with limit {limit} failed with node{last_home} (last range only) paused \
                 after {:?}: it must not need the last group: {e:#} {diag}",
                started.elapsed()
            )
        });
        eprintln!(
            "scan limit {limit} with the last range paused: {:?}",
            started.elapsed()
        );
        assert_eq!(
            scan_keys(&page.kvs),
            sorted[..limit as usize].to_vec(),
            "first {limit} keys {diag}"
        );
        assert!(page.more, "a page cut by its limit says more {diag}");
    }
    // The control: a scan that does need the last range fails while its node hangs, so the
    // pause above really took that group away.
    let impatient = cluster.client_with(kvclient::ClientOptions {
        timeout: Duration::from_secs(3),
        max_retries: 0,
        ..Default::default()
    });
    let needs_last = impatient.scan("q", "", &events(10)).await;
    assert!(
        needs_last.is_err(),
        "a scan of the last range answered with its only replica (node{last_home}) paused: \
         {needs_last:?} {diag}"
    );
    cluster.node_mut(last_home).resume().unwrap();

    let all = client
        .scan_all("", "", &events(0))
        .await
        .unwrap_or_else(|e| panic!("scan after resume: {e:#} {diag}"));
    assert_eq!(
        scan_keys(&all),
        sorted,
        "whole-keyspace scan after resume {diag}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_keyspace_routes_by_table_and_changes_reach_every_router() {
    let cluster = Cluster::start(ClusterOptions {
        routers: 2,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let mut admin1 = cluster.admin_of(0).await.unwrap();
    let mut admin2 = cluster.admin_of(1).await.unwrap();

    let created = create_keyspace(&mut admin1, directory_spec("tenants", 3, 3))
        .await
        .unwrap_or_else(|e| panic!("create directory keyspace: {e:?} {diag}"));
    let info = created
        .keyspace
        .expect("CreateKeyspace returns the keyspace");
    assert_eq!(info.strategy, "directory", "{info:?}");
    assert_eq!(info.fallback, "hash", "{info:?}");
    assert_eq!(text(&info.separator), "/", "default separator {info:?}");
    let groups: Vec<u64> = info.groups.iter().map(|g| g.id).collect();
    assert_eq!(groups.len(), 3, "{info:?}");

    let set = admin1
        .set_directory(SetDirectoryRequest {
            keyspace: "tenants".into(),
            directory: Bytes::from_static(b"tenant-a"),
            group_id: groups[1],
        })
        .await
        .unwrap_or_else(|e| panic!("set tenant-a: {e:?} {diag}"))
        .into_inner();
    assert!(
        set.epoch > created.epoch,
        "epoch {} after {}",
        set.epoch,
        created.epoch
    );
    let got = admin1
        .get_directory(GetDirectoryRequest {
            keyspace: "tenants".into(),
            directory: Bytes::from_static(b"tenant-a"),
        })
        .await
        .unwrap_or_else(|e| panic!("get tenant-a: {e:?} {diag}"))
        .into_inner();
    assert!(
        got.found && got.group_id == groups[1],
        "GetDirectory tenant-a: {got:?}"
    );
    let info = describe(&mut admin1, "tenants").await.unwrap();
    assert_eq!(info.directory.len(), 1, "{info:?}");
    assert_eq!(info.directory[0].group_id, groups[1], "{info:?}");

    // tenant-a's keys go to its group; other tenants (and keys without a directory) follow
    // the hash fallback, as the nodes' map computes it.
    let mut a_keys: Vec<Bytes> = (0..200)
        .map(|i| Bytes::from(format!("tenant-a/item-{i:04}")))
        .collect();
    a_keys.push(Bytes::from_static(b"tenant-a/"));
    a_keys.push(Bytes::from_static(b"tenant-a/x/y/z"));
    let other_keys: Vec<Bytes> = (0..300)
        .map(|i| match i % 3 {
            0 => Bytes::from(format!("tenant-b/item-{i:04}")),
            1 => Bytes::from(format!("tenant-c/item-{i:04}")),
            _ => Bytes::from(format!("no-directory-{i:04}")),
        })
        .chain([
            Bytes::from_static(b"tenant-a"),
            Bytes::from_static(b"tenant-ab/1"),
        ])
        .collect();
    let client = cluster.client();
    load(&client, "tenants", &a_keys)
        .await
        .unwrap_or_else(|e| panic!("writing tenant-a: {e:#} {diag}"));
    load(&client, "tenants", &other_keys)
        .await
        .unwrap_or_else(|e| panic!("writing other tenants: {e:#} {diag}"));

    let compiled = cluster.compiled_map(set.epoch).await.unwrap();
    let fallback = shardmap::HashPlacement::new(&groups, shardmap::DEFAULT_VNODES);
    let all: Vec<Bytes> = a_keys.iter().chain(&other_keys).cloned().collect();
    let want: Vec<u64> = all
        .iter()
        .map(|k| {
            if a_keys.contains(k) {
                groups[1]
            } else {
                fallback.locate(k)
            }
        })
        .collect();
    let by_client: Vec<u64> = all
        .iter()
        .map(|k| compiled.locate("tenants", k).unwrap())
        .collect();
    if let Some(d) = first_difference(&all, &want, &by_client) {
        panic!("CompiledMap does not follow the table and the hash fallback: {d}");
    }
    for (name, admin) in [("router 1", &mut admin1), ("router 2", &mut admin2)] {
        let (located, _) = locate(admin, "tenants", &all)
            .await
            .unwrap_or_else(|e| panic!("Locate on {name}: {e:?} {diag}"));
        if let Some(d) = first_difference(&all, &want, &located) {
            panic!("{name} does not follow the table and the fallback: {d} {diag}");
        }
    }
    let served = read_groups(&client, "tenants", &all)
        .await
        .unwrap_or_else(|e| panic!("reading back: {e:#} {diag}"));
    if let Some(d) = first_difference(&all, &want, &served) {
        panic!("BatchGet's group_id does not follow the directory: {d} {diag}");
    }
    let mut expected: BTreeMap<u64, BTreeSet<Bytes>> = BTreeMap::new();
    for (k, g) in all.iter().zip(&want) {
        expected.entry(*g).or_default().insert(k.clone());
    }
    check_on_nodes(&cluster, &groups, &expected).await;

    // An empty directory can be set, moved and removed; every router follows within a couple
    // of seconds of the change (generous: the machines running this are small and shared).
    let probe = Bytes::from_static(b"tenant-new/probe");
    let fallback_group = fallback.locate(&probe);
    let others: Vec<u64> = groups
        .iter()
        .copied()
        .filter(|g| *g != fallback_group)
        .collect();
    let propagation = Duration::from_secs(2);
    for (step, target) in [
        ("set", Some(others[0])),
        ("move", Some(others[1])),
        ("remove", None),
    ] {
        let changed_at = match target {
            Some(g) => admin1
                .set_directory(SetDirectoryRequest {
                    keyspace: "tenants".into(),
                    directory: Bytes::from_static(b"tenant-new"),
                    group_id: g,
                })
                .await
                .map(|r| r.into_inner().epoch),
            None => admin1
                .remove_directory(RemoveDirectoryRequest {
                    keyspace: "tenants".into(),
                    directory: Bytes::from_static(b"tenant-new"),
                })
                .await
                .map(|r| r.into_inner().epoch),
        }
        .unwrap_or_else(|e| panic!("{step} of the empty directory tenant-new: {e:?} {diag}"));
        let started = Instant::now();
        let want = target.unwrap_or(fallback_group);
        // The router that made the change answers with it at once.
        let (now, _) = locate(&mut admin1, "tenants", std::slice::from_ref(&probe))
            .await
            .unwrap();
        assert_eq!(
            now[0], want,
            "router 1 right after {step} (epoch {changed_at}) {diag}"
        );
        let last = loop {
            let (got, epoch) = locate(&mut admin2, "tenants", std::slice::from_ref(&probe))
                .await
                .unwrap_or_else(|e| panic!("Locate on router 2: {e:?} {diag}"));
            if got[0] == want {
                assert!(epoch >= changed_at, "router 2 answered with epoch {epoch}");
                break got[0];
            }
            if started.elapsed() > propagation {
                break got[0];
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!("router 2 followed the {step} after {:?}", started.elapsed());
        assert_eq!(
            last,
            want,
            "router 2 still maps tenant-new to group {last} {:?} after the {step} (epoch \
             {changed_at}) on router 1; expected group {want} {diag}",
            started.elapsed()
        );
    }

    // The data of the other tenants did not move.
    let served = read_groups(&client, "tenants", &all)
        .await
        .unwrap_or_else(|e| panic!("reading back at the end: {e:#} {diag}"));
    if let Some(d) = first_difference(&all, &want, &served) {
        panic!("keys moved after directory changes of another tenant: {d} {diag}");
    }
}
