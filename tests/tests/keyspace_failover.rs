//! The meta group's leader crashes (SIGKILL): routers keep routing data requests with their
//! cached map, and map changes go through again once the meta group has elected a new leader.

use std::time::{Duration, Instant};

use cluster_tests::admin::{create_keyspace, describe, hash_spec};
use cluster_tests::data::{key, value};
use cluster_tests::{Cluster, ClusterOptions, READY_TIMEOUT};
use kv_proto::node::GetClusterMapRequest;
use kvclient::{ReadOptions, WriteOptions};
use tonic::Code;

const KEYS: usize = 50;

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

/// Puts `KEYS` keys of `prefix` in `keyspace` one by one, then reads each back.
async fn put_and_get(
    client: &kvclient::Client,
    keyspace: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    for i in 0..KEYS {
        client
            .put_with(key(prefix, i), value(prefix, i), &write_opts(keyspace))
            .await
            .map_err(|e| anyhow::anyhow!("put {} in {keyspace}: {e}", key(prefix, i)))?;
    }
    for i in 0..KEYS {
        let got = client
            .get_with(key(prefix, i), &read_opts(keyspace))
            .await
            .map_err(|e| anyhow::anyhow!("get {} in {keyspace}: {e}", key(prefix, i)))?
            .ok_or_else(|| anyhow::anyhow!("{} in {keyspace} is missing", key(prefix, i)))?;
        anyhow::ensure!(
            got.value.as_ref() == value(prefix, i).as_bytes(),
            "{} in {keyspace}: wrong value",
            key(prefix, i)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_changes_resume_after_the_meta_leader_crashes_and_data_keeps_flowing() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let mut admin = cluster.admin().await.unwrap();
    let client = cluster.client();

    let before = create_keyspace(&mut admin, hash_spec("orders", 3, 3))
        .await
        .unwrap_or_else(|e| panic!("create orders: {e:?} {diag}"));
    put_and_get(&client, "orders", "before")
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    put_and_get(&client, "", "before")
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));

    let meta_leader = cluster
        .wait_leader(0, None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("meta group leader: node{meta_leader}; killing it");
    cluster.node_mut(meta_leader).kill().unwrap();

    // Right after the crash the routers route with the map they have: existing keyspaces
    // serve reads and writes (data groups led by the dead node fail over on their own).
    let started = Instant::now();
    put_and_get(&client, "orders", "during")
        .await
        .unwrap_or_else(|e| panic!("orders right after the meta leader died: {e:#} {diag}"));
    put_and_get(&client, "", "during")
        .await
        .unwrap_or_else(|e| panic!("default right after the meta leader died: {e:#} {diag}"));
    for i in 0..KEYS {
        let got = client
            .get_with(key("before", i), &read_opts("orders"))
            .await
            .unwrap_or_else(|e| panic!("get before-{i}: {e} {diag}"));
        assert!(got.is_some(), "{} lost {diag}", key("before", i));
    }
    eprintln!("data requests after the kill took {:?}", started.elapsed());

    // A map change goes through once a new meta leader is elected.
    let started = Instant::now();
    let mut attempts = 0;
    let created = loop {
        attempts += 1;
        match create_keyspace(&mut admin, hash_spec("after-crash", 2, 3)).await {
            Ok(created) => break Some(created.epoch),
            // An earlier attempt went through but its answer was lost.
            Err(e) if e.code() == Code::AlreadyExists && attempts > 1 => break None,
            Err(e) if started.elapsed() > Duration::from_secs(30) => panic!(
                "no map change went through within 30 s of the meta leader's crash \
                 ({attempts} attempts); last error {e:?} {diag}"
            ),
            Err(e) => eprintln!("create after the crash, attempt {attempts}: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "map change after the crash went through after {:?} ({attempts} attempts)",
        started.elapsed()
    );
    let info = describe(&mut admin, "after-crash")
        .await
        .unwrap_or_else(|e| panic!("describe after-crash: {e:?} {diag}"));
    assert_eq!(info.groups.len(), 2, "{info:?}");
    assert!(
        info.epoch > before.epoch,
        "after-crash epoch {} not above orders' {} {diag}",
        info.epoch,
        before.epoch
    );
    if let Some(epoch) = created {
        assert_eq!(epoch, info.epoch, "create's epoch vs describe {diag}");
    }
    let new_leader = cluster
        .wait_leader(0, Some(meta_leader), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(new_leader, meta_leader);

    // The crashed node comes back, learns the new map, and the new keyspace serves data.
    cluster.node_mut(meta_leader).start().unwrap();
    cluster
        .wait_nodes_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("node{meta_leader} after restart: {e:#}"));
    let mut node = cluster.node(meta_leader).node_client().await.unwrap();
    let map = node
        .get_cluster_map(GetClusterMapRequest {})
        .await
        .unwrap_or_else(|e| panic!("GetClusterMap on node{meta_leader}: {e:?}"))
        .into_inner();
    assert!(
        map.epoch >= info.epoch,
        "restarted node{meta_leader} has map epoch {}, the change was at {} {diag}",
        map.epoch,
        info.epoch
    );
    put_and_get(&client, "after-crash", "after")
        .await
        .unwrap_or_else(|e| panic!("the keyspace created after the crash: {e:#} {diag}"));
    put_and_get(&client, "orders", "after")
        .await
        .unwrap_or_else(|e| panic!("orders at the end: {e:#} {diag}"));
}

/// A keyspace is dropped while one of its replicas' nodes is down, and a new keyspace is
/// created (group ids may be handed out again). When the node comes back, the dropped
/// keyspace's keys must not reappear in the new one, on the leader or on any replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_keyspace_stays_gone_when_a_node_that_missed_the_drop_returns() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let mut admin = cluster.admin().await.unwrap();
    let client = cluster.client();

    let old = create_keyspace(&mut admin, hash_spec("old", 2, 3))
        .await
        .unwrap_or_else(|e| panic!("create old: {e:?} {diag}"))
        .keyspace
        .unwrap();
    let old_groups: Vec<u64> = old.groups.iter().map(|g| g.id).collect();
    put_and_get(&client, "old", "ghost")
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));

    // Take down a node that does not lead the meta group, so map changes need no election.
    let meta_leader = cluster
        .wait_leader(0, None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let down = cluster
        .node_ids()
        .into_iter()
        .find(|&id| id != meta_leader)
        .unwrap();
    cluster.node_mut(down).kill().unwrap();

    let check = |started: Instant, what: &str, e: tonic::Status| {
        if started.elapsed() > Duration::from_secs(30) {
            panic!("{what} with node{down} down: {e:?} {diag}");
        }
        eprintln!("{what}: {e:?}; retrying");
    };
    let started = Instant::now();
    loop {
        match admin
            .drop_keyspace(kv_proto::kv::DropKeyspaceRequest {
                name: "old".into(),
                force: true,
            })
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == Code::NotFound || e.code() == Code::InvalidArgument => break,
            Err(e) => check(started, "drop old", e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let new = loop {
        match create_keyspace(&mut admin, hash_spec("new", 2, 3)).await {
            Ok(created) => break created.keyspace.unwrap(),
            Err(e) if e.code() == Code::AlreadyExists => {
                break describe(&mut admin, "new").await.unwrap()
            }
            Err(e) => check(started, "create new", e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new_groups: Vec<u64> = new.groups.iter().map(|g| g.id).collect();
    eprintln!("old groups {old_groups:?}, new groups {new_groups:?}, node{down} was down");

    cluster.node_mut(down).start().unwrap();
    cluster
        .wait_nodes_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("node{down} after restart: {e:#}"));
    put_and_get(&client, "new", "fresh")
        .await
        .unwrap_or_else(|e| panic!("the new keyspace after node{down} returned: {e:#} {diag}"));

    let ghost_prefix = "ghost-";
    let scanned = client
        .scan_all(
            "",
            "",
            &kvclient::ScanOptions {
                keyspace: "new".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("scan of new: {e} {diag}"));
    let ghosts: Vec<String> = scanned
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .filter(|k| k.starts_with(ghost_prefix))
        .collect();
    assert!(
        ghosts.is_empty(),
        "keys of the dropped keyspace `old` (groups {old_groups:?}) appear in `new` (groups \
         {new_groups:?}) after node{down}, which missed the drop, returned: {ghosts:?} {diag}"
    );
    assert_eq!(
        scanned.len(),
        KEYS,
        "scan of new holds only its own {KEYS} keys {diag}"
    );

    // Every replica of every new group, read locally (eventual), holds no ghost either.
    for &group in &new_groups {
        for node in cluster.node_ids() {
            let mut c = cluster.node(node).node_client().await.unwrap();
            let Ok(resp) = c
                .scan(kv_proto::node::NodeScanRequest {
                    group_id: group,
                    epoch: 0,
                    consistency: kv_proto::kv::Consistency::Eventual as i32,
                    start: Default::default(),
                    end: Default::default(),
                    limit: 10_000,
                    keys_only: true,
                    ..Default::default()
                })
                .await
            else {
                continue; // the node does not host the group
            };
            let ghosts: Vec<String> = resp
                .into_inner()
                .kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .filter(|k| k.starts_with(ghost_prefix))
                .collect();
            assert!(
                ghosts.is_empty(),
                "node{node}'s replica of group {group} (keyspace `new`) holds keys of the \
                 dropped keyspace `old`: {ghosts:?} {diag}"
            );
        }
    }
}
