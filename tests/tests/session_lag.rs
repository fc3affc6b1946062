//! Read-your-writes with a session token on eventual reads served by a lagging follower.
//!
//! Kept apart from `partition.rs` because it is written against the session API
//! (`Client::session`, `Session::token`, `Client::session_from`), so that a change there
//! cannot stop the partition tests from compiling.
//!
//! The follower is made to lag by SIGSTOPping it during the write (the other two replicas
//! commit it) and resumed right before the read; the read goes through a router that the
//! network lets reach that follower alone, so no other replica can serve it.

use std::time::Duration;

use cluster_tests::netns::require_netns;
use cluster_tests::{Cluster, ClusterOptions, Peer};
use kvclient::{ClientOptions, Consistency, ReadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reads_its_writes_on_a_lagging_follower() {
    if !require_netns() {
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions {
        shards: 1,
        routers: 2,
        netns: true,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let options = ClientOptions {
        timeout: Duration::from_secs(30),
        max_retries: 10,
        ..Default::default()
    };
    let writer = cluster.client_of(0, options.clone());
    let reader = cluster.client_of(1, options);
    let key = "ryw";
    writer.put(key, "r0").await.expect("first put");
    // Warm the reader's router (map, leader cache) while it reaches everything.
    reader.get(key).await.expect("reader's first get");
    let group = writer.get(key).await.expect("get").expect("found").group_id;
    let leader = cluster
        .wait_leader(group, None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ids = cluster.node_ids();
    let follower = *ids.iter().find(|&&n| n != leader).expect("a follower");
    let others: Vec<Peer> = ids
        .iter()
        .filter(|&&n| n != follower)
        .map(|&n| Peer::Node(n))
        .collect();
    // The reader's router reaches the follower alone.
    cluster
        .partition_peers(&[Peer::Router(1)], &others)
        .expect("partition");
    eprintln!("group {group}: leader node{leader}, reads served by node{follower} only");
    let eventual = ReadOptions {
        consistency: Consistency::Eventual,
        ..Default::default()
    };

    for round in 1..=5 {
        let value = format!("r{round}");
        cluster.node_mut(follower).pause().expect("SIGSTOP");
        let session = writer.session();
        let written = session.put(key, value.clone()).await;
        cluster.node_mut(follower).resume().expect("SIGCONT");
        let version = written.unwrap_or_else(|e| {
            panic!("round {round}: put with node{follower} paused: {e} {diag}")
        });
        let continued = reader.session_from(session.token());
        let got = continued
            .get_with(key, &eventual)
            .await
            .unwrap_or_else(|e| panic!("round {round}: eventual read in the session: {e} {diag}"))
            .unwrap_or_else(|| panic!("round {round}: key absent in the session {diag}"));
        assert_eq!(
            got.served_by, follower,
            "round {round}: only node{follower} is reachable {diag}"
        );
        assert_eq!(
            String::from_utf8_lossy(&got.value),
            value,
            "round {round}: the session did not read its write (v{version}), got v{} {diag}",
            got.version
        );
        assert!(got.version >= version, "round {round} {diag}");
    }
}
