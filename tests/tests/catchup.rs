//! A replica that lost its disk catches up by snapshot install, and then carries a quorum.
//!
//! Small `--snapshot-logs` and `--max-logs-kept` make the leaders purge their logs, so a node
//! whose data dir was wiped cannot be brought up to date by log replay alone: it must install a
//! snapshot. Once it reports having caught up, another node is killed, so every strong read
//! needs the wiped node's vote.

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_tests::data::{self, pairs};
use cluster_tests::{wait_until, Cluster, ClusterOptions};

const VICTIM: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_catches_up_by_snapshot_and_serves_quorum() {
    let mut cluster = Cluster::start(ClusterOptions {
        snapshot_logs: Some(200),
        max_logs_kept: Some(20),
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client();

    // One Raft entry per put: about 375 entries per data group before the wipe.
    data::load_single(&client, "cu", 0..1500, 16)
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));

    // The groups the victim hosts, as the others see them.
    let survivor = 1;
    let status = cluster
        .group_status(survivor)
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    let victim_groups: Vec<u64> = status
        .groups
        .iter()
        .filter(|g| g.voters.contains(&VICTIM))
        .map(|g| g.group_id)
        .collect();
    assert!(
        victim_groups.iter().any(|&g| g != 0),
        "node{VICTIM} hosts no data group: {status:?} {diag}"
    );

    cluster.node_mut(VICTIM).kill().expect("kill -9");
    cluster.node_mut(VICTIM).wipe_data().expect("wipe data dir");

    // More writes while it is down: 2500 keys, about 625 entries per data group.
    data::load_single(&client, "cu", 1500..2500, 16)
        .await
        .unwrap_or_else(|e| panic!("writes with node{VICTIM} down: {e:#} {diag}"));

    // Where each group's leader stands now that writes stopped; the data groups' leaders must
    // have purged logs (otherwise this test would not exercise snapshot install).
    let mut targets = BTreeMap::new();
    for &group in &victim_groups {
        let leader = cluster
            .wait_leader(group, Some(VICTIM), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let s = cluster
            .group_status_of(leader, group)
            .await
            .unwrap_or_else(|| panic!("node{leader} has no status for group {group} {diag}"));
        if group != 0 {
            assert!(
                s.purged_index > 0 && s.snapshot_index > 0,
                "leader node{leader} of group {group} never snapshotted and purged with \
                 --snapshot-logs 200 --max-logs-kept 20: {s:?} {diag}"
            );
        }
        targets.insert(group, (s.applied_index, s.purged_index));
    }
    eprintln!("leaders' (applied, purged) per group: {targets:?}");

    cluster
        .node_mut(VICTIM)
        .start()
        .expect("restart wiped node");
    let victim_status = wait_until(
        Duration::from_secs(90),
        &format!("wiped node{VICTIM} catches up with every group's leader"),
        || async {
            let status = cluster.group_status(VICTIM).await.ok()?;
            let caught_up = targets.iter().all(|(group, (applied, purged))| {
                status.groups.iter().any(|g| {
                    g.group_id == *group
                        && g.applied_index >= *applied
                        && (*purged == 0 || g.snapshot_index > 0)
                })
            });
            caught_up.then_some(status)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!("{e:#} {diag}");
    });
    for g in &victim_status.groups {
        if let Some((_, purged)) = targets.get(&g.group_id) {
            if *purged > 0 {
                assert!(
                    g.snapshot_index > 0,
                    "group {} on node{VICTIM} caught up without a snapshot although the \
                     leader had purged its log up to {purged}: {g:?} {diag}",
                    g.group_id
                );
            }
        }
    }
    eprintln!("node{VICTIM} after catch-up: {:?}", victim_status.groups);
    cluster
        .node_mut(VICTIM)
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));

    // Now the quorum of every group needs the wiped node.
    let other = cluster
        .node_ids()
        .into_iter()
        .find(|&id| id != VICTIM)
        .expect("another node");
    cluster
        .node_mut(other)
        .kill()
        .expect("kill -9 another node");

    let expected = pairs("cu", 0..2500);
    wait_until(
        Duration::from_secs(120),
        &format!("all keys read strongly with node{other} down"),
        || async {
            match data::verify(&client, &expected, 500).await {
                Ok(_) => Some(()),
                Err(e) => {
                    eprintln!("not yet: {e:#}");
                    None
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#} {diag}"));

    // The two remaining nodes also take writes.
    client
        .put("cu-after", "ok")
        .await
        .unwrap_or_else(|e| panic!("put with node{other} down: {e:#} {diag}"));
}
