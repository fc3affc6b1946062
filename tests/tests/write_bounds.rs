//! Writes are bounded in bytes where they become Raft entries and AppendEntries messages.
//!
//! - A write to one group over `--max-write-bytes` is refused with `WRITE_TOO_LARGE` (it would
//!   be one Raft entry that every replica holds whole), and concurrent large writes under the
//!   limit all succeed: gathered strong writes stop at the limit too.
//! - A follower that lagged by more entries than fit in one AppendEntries message
//!   (`--raft-append-bytes`) catches up in several, and then carries the quorum.

use std::time::Duration;

use cluster_tests::{wait_until, Cluster, ClusterOptions};
use kvclient::{Error, ReadOptions, WriteOptions};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_writes_are_refused_and_large_concurrent_ones_all_succeed() {
    let cluster = Cluster::start(ClusterOptions {
        shards: 1,
        node_args: vec!["--max-write-bytes".into(), (4 * MIB).to_string()],
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client();
    let value = vec![b'v'; MIB - 64];

    let too_big: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("big-{i}"), value.clone()))
        .collect();
    match client.batch_put(too_big, &WriteOptions::default()).await {
        Err(Error::InvalidArgument { code, message }) => {
            assert_eq!(code.as_deref(), Some("WRITE_TOO_LARGE"), "{message} {diag}");
            assert!(message.contains("split the batch"), "{message}");
        }
        other => panic!("a 6 MiB write to one group under a 4 MiB limit: {other:?} {diag}"),
    }

    // Six writers of 3 MiB each plus a small one, all at once: every one fits alone, no two
    // fit in one entry, and all must succeed.
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (client, value) = (client.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let kvs: Vec<(String, Vec<u8>)> = (0..3)
                .map(|i| (format!("w{w}-{i}"), value.clone()))
                .collect();
            client
                .batch_put(kvs, &WriteOptions::default())
                .await
                .map(|_| ())
        }));
    }
    let small = {
        let client = client.clone();
        tokio::spawn(async move { client.put("small", "s").await.map(|_| ()) })
    };
    for t in tasks {
        t.await
            .expect("writer")
            .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    }
    small
        .await
        .expect("small writer")
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    for w in 0..6 {
        for i in 0..3 {
            let got = client
                .get_with(format!("w{w}-{i}"), &ReadOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{e:#} {diag}"))
                .unwrap_or_else(|| panic!("w{w}-{i} is missing {diag}"));
            assert_eq!(got.value.len(), value.len());
        }
    }
    assert!(
        client.get("big-0").await.expect("get").is_none(),
        "a refused write left data behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_many_messages_catches_up_and_carries_the_quorum() {
    let mut cluster = Cluster::start(ClusterOptions {
        shards: 1,
        node_args: vec!["--raft-append-bytes".into(), (256 * 1024).to_string()],
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client();
    let group = cluster
        .group_ids()
        .await
        .into_iter()
        .find(|&g| g != 0)
        .expect("a data group");
    let leader = cluster
        .wait_leader(group, None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|&n| n != leader)
        .expect("a follower");
    cluster.node_mut(follower).kill().expect("kill -9 follower");

    // 200 entries of 64 KiB: about 50 AppendEntries messages of 256 KiB to catch up.
    let value = vec![b'x'; 64 * 1024];
    for i in 0..200 {
        client
            .put(format!("lag-{i:03}"), value.clone())
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e:#} {diag}"));
    }
    let target = cluster
        .group_status_of(leader, group)
        .await
        .map(|s| s.applied_index)
        .unwrap_or_else(|| panic!("no status from node{leader} {diag}"));

    cluster
        .node_mut(follower)
        .start()
        .expect("restart follower");
    wait_until(
        Duration::from_secs(60),
        &format!("node{follower} applies group {group} up to {target}"),
        || async {
            let s = cluster.group_status_of(follower, group).await?;
            (s.applied_index >= target).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#} {diag}"));

    // The third node goes: the quorum is the leader and the follower that caught up.
    let third = cluster
        .node_ids()
        .into_iter()
        .find(|&n| n != leader && n != follower)
        .expect("a third node");
    cluster.node_mut(third).kill().expect("kill -9 third node");
    for i in [0, 99, 199] {
        let got = client
            .get(format!("lag-{i:03}"))
            .await
            .unwrap_or_else(|e| panic!("{e:#} {diag}"))
            .unwrap_or_else(|| panic!("lag-{i:03} missing {diag}"));
        assert_eq!(got.value.len(), value.len());
    }
    client
        .put("after", "ok")
        .await
        .unwrap_or_else(|e| panic!("a write needing node{follower}'s vote: {e:#} {diag}"));
}
