//! Eventual reads on replicas that are behind: read-your-writes with a session token on a
//! lagging follower, and max staleness on a follower cut off from its leader.
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

/// Max staleness: a follower cut off from its leader keeps answering unbounded eventual reads,
/// refuses reads bounded by `max_staleness` once it has not heard from the leader for longer
/// (`UNAVAILABLE`, code `STALE_REPLICA`), and serves them again after the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_staleness_refuses_a_replica_cut_off_from_its_leader() {
    if !require_netns() {
        return;
    }
    let cluster = Cluster::start(ClusterOptions {
        shards: 1,
        routers: 2,
        netns: true,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let options = ClientOptions {
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let writer = cluster.client_of(0, options.clone());
    let reader = cluster.client_of(1, options);
    let key = "stale";
    writer.put(key, "v1").await.expect("put");
    reader.get(key).await.expect("reader's first get");
    let group = writer.get(key).await.expect("get").expect("found").group_id;
    let leader = cluster
        .wait_leader(group, None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ids = cluster.node_ids();
    let follower = *ids.iter().find(|&&n| n != leader).expect("a follower");
    let others: Vec<u64> = ids.iter().copied().filter(|&n| n != follower).collect();
    let other_peers: Vec<Peer> = others.iter().map(|&n| Peer::Node(n)).collect();
    // The reader's router reaches the follower alone, and the follower hears no leader.
    cluster
        .partition_peers(&[Peer::Router(1)], &other_peers)
        .expect("partition the router");
    cluster
        .partition(&[follower], &others)
        .expect("partition the follower");
    let bounded = ReadOptions {
        consistency: Consistency::Eventual,
        max_staleness: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let unbounded = ReadOptions {
        consistency: Consistency::Eventual,
        ..Default::default()
    };
    // Past the bound (the follower last heard from its leader when the partition began).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let got = reader
        .get_with(key, &unbounded)
        .await
        .unwrap_or_else(|e| panic!("unbounded eventual read on the cut-off follower: {e} {diag}"))
        .expect("found");
    assert_eq!(got.served_by, follower, "{diag}");
    match reader.get_with(key, &bounded).await {
        Err(kvclient::Error::Unavailable { code, message }) => assert_eq!(
            code.as_deref(),
            Some("STALE_REPLICA"),
            "bounded read refused with another code: {message} {diag}"
        ),
        other => panic!(
            "a bounded read on a replica cut off for 1.5 s must be refused, got {other:?} {diag}"
        ),
    }
    cluster.heal().expect("heal");
    cluster_tests::wait_for(
        Duration::from_secs(30),
        "bounded reads served after heal",
        || async { reader.get_with(key, &bounded).await.is_ok() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#} {diag}"));
}
