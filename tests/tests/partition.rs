//! Network partitions between real processes (each in its own network namespace, see
//! `cluster_tests::netns`), and conditional writes racing on one key.
//!
//! The partition tests need root; without it they fail with a message saying so, unless
//! `KV_SKIP_NETNS=1` asks to skip them.

use std::time::{Duration, Instant};

use cluster_tests::netns::require_netns;
use cluster_tests::{Cluster, ClusterOptions, Peer};
use kvclient::{Client, ClientOptions, Consistency, Error, ReadOptions, WriteOptions};

/// A client that gives up after one attempt: what a router answers is what the test sees.
fn one_shot(timeout: Duration) -> ClientOptions {
    ClientOptions {
        timeout,
        max_retries: 0,
        ..Default::default()
    }
}

fn eventual() -> ReadOptions {
    ReadOptions {
        consistency: Consistency::Eventual,
        ..Default::default()
    }
}

/// The value of `key` read strongly, retrying until it answers (30 s).
async fn strong_value(client: &Client, key: &str, diag: &str) -> Option<(String, u64)> {
    let start = Instant::now();
    loop {
        match client.get(key.to_string()).await {
            Ok(found) => {
                return found.map(|v| (String::from_utf8_lossy(&v.value).into_owned(), v.version))
            }
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                eprintln!("strong get {key}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("strong get {key} keeps failing: {e} {diag}"),
        }
    }
}

/// The leader of a group partitioned away from its two followers (and from the main router):
/// the majority elects a new leader and serves strong writes and reads; a router that reaches
/// only the old leader gets UNAVAILABLE for strong requests within its deadline, never the old
/// value; eventual reads are served on both sides, by a replica of that side. After healing,
/// every router reads the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_partitioned_from_the_majority() {
    if !require_netns() {
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions {
        shards: 1,
        netns: true,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let main = cluster.client();
    let key = "part-key";

    let v1 = main
        .put(key, "before")
        .await
        .unwrap_or_else(|e| panic!("put before: {e} {diag}"));
    let group = main
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get: {e} {diag}"))
        .expect("key written")
        .group_id;
    let old = cluster
        .wait_leader(group, None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let majority: Vec<u64> = cluster
        .node_ids()
        .into_iter()
        .filter(|&n| n != old)
        .collect();
    eprintln!("group {group}: leader node{old}, majority {majority:?}, v{v1}");

    // A second router inside the old leader's namespace: it ends up on the minority side.
    let minority_router = cluster
        .start_router_in_node_ns(old)
        .await
        .unwrap_or_else(|e| panic!("router in node{old}'s namespace: {e:#} {diag}"));
    let minority = cluster.client_of(minority_router, one_shot(Duration::from_secs(30)));
    // Warm it up (map, leader cache) while the network is whole.
    let warm = strong_value(&minority, key, &diag).await;
    assert_eq!(warm.map(|(v, _)| v).as_deref(), Some("before"), "{diag}");

    // The old leader (and the router next to it) on one side; the other two nodes and the
    // main router on the other. The harness still reaches every node.
    let mut other_side: Vec<Peer> = majority.iter().map(|&n| Peer::Node(n)).collect();
    other_side.push(Peer::Router(0));
    cluster
        .partition_peers(&[Peer::Node(old)], &other_side)
        .expect("partition");

    let new = cluster
        .wait_leader(group, Some(old), Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("no new leader on the majority side: {e:#}"));
    assert!(majority.contains(&new), "new leader node{new} {diag}");
    eprintln!("group {group}: new leader node{new}");

    // A strong write on the majority side succeeds (the main client retries through the
    // router while the router finds the new leader).
    let v2 = main
        .put(key, "after")
        .await
        .unwrap_or_else(|e| panic!("strong put on the majority side: {e} {diag}"));
    assert!(v2 > v1, "versions go up: {v1} then {v2}");

    // Strong reads through the main router see it, never the old value.
    for _ in 0..5 {
        let got = strong_value(&main, key, &diag).await;
        assert_eq!(got, Some(("after".to_string(), v2)), "{diag}");
    }

    // Strong requests that can reach only the old leader fail with UNAVAILABLE within the
    // router's deadline (5 s by default; the client allows 30 s, so a hang shows as TIMEOUT).
    let started = Instant::now();
    let read = minority.get(key).await;
    let read_took = started.elapsed();
    match &read {
        Err(Error::Unavailable { .. }) => {}
        Ok(Some(v)) => panic!(
            "strong read on the minority side answered {:?} v{} (served by node{}) {diag}",
            String::from_utf8_lossy(&v.value),
            v.version,
            v.served_by
        ),
        other => panic!("strong read on the minority side: {other:?}, expected UNAVAILABLE {diag}"),
    }
    assert!(
        read_took < Duration::from_secs(25),
        "strong read on the minority side took {read_took:?} {diag}"
    );
    let started = Instant::now();
    let write = minority.put(key, "minority-write").await;
    let write_took = started.elapsed();
    assert!(
        matches!(write, Err(Error::Unavailable { .. })),
        "strong write on the minority side: {write:?}, expected UNAVAILABLE {diag}"
    );
    assert!(
        write_took < Duration::from_secs(25),
        "strong write on the minority side took {write_took:?} {diag}"
    );
    eprintln!("minority side: read failed after {read_took:?}, write after {write_took:?}");

    // Eventual reads are served on both sides, each by a replica it can reach.
    let stale = minority
        .get_with(key, &eventual())
        .await
        .unwrap_or_else(|e| panic!("eventual read on the minority side: {e} {diag}"))
        .expect("the key exists on the minority side");
    assert_eq!(
        stale.served_by, old,
        "only node{old} is reachable from its namespace {diag}"
    );
    assert_eq!(
        String::from_utf8_lossy(&stale.value),
        "before",
        "the old leader cannot have applied a write made after the partition {diag}"
    );
    let fresh = main
        .get_with(key, &eventual())
        .await
        .unwrap_or_else(|e| panic!("eventual read on the majority side: {e} {diag}"))
        .expect("the key exists on the majority side");
    assert!(
        majority.contains(&fresh.served_by),
        "eventual read on the majority side served by node{} {diag}",
        fresh.served_by
    );
    assert!(
        ["before", "after"].contains(&String::from_utf8_lossy(&fresh.value).as_ref()),
        "eventual read returned {:?} {diag}",
        fresh.value
    );

    // Heal: the old leader rejoins as a follower, and the minority router reads the new value
    // (its write was never committed: it is not the value).
    cluster.heal().expect("heal");
    let minority_retrying = cluster.client_of(
        minority_router,
        ClientOptions {
            timeout: Duration::from_secs(30),
            max_retries: 20,
            ..Default::default()
        },
    );
    let got = strong_value(&minority_retrying, key, &diag).await;
    assert_eq!(got, Some(("after".to_string(), v2)), "{diag}");
    let leader = cluster
        .wait_leader(group, None, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("after heal: group {group} led by node{leader}");
}

/// A node cut off from the other nodes and from every router: the cluster goes on without
/// it, and it catches up once the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_node_catches_up_after_heal() {
    if !require_netns() {
        return;
    }
    let cluster = Cluster::start(ClusterOptions {
        shards: 2,
        netns: true,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client();
    client.put("iso-0", "v0").await.expect("first put");
    let group = client
        .get("iso-0")
        .await
        .expect("get")
        .expect("found")
        .group_id;
    let leader = cluster
        .wait_leader(group, None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    cluster.isolate_node(leader).expect("isolate");
    for i in 1..20 {
        client
            .put(format!("iso-{i}"), format!("v{i}"))
            .await
            .unwrap_or_else(|e| panic!("put iso-{i} with node{leader} isolated: {e} {diag}"));
    }
    cluster.heal().expect("heal");
    // The isolated node catches up: its eventual reads (through its own GroupStatus applied
    // index) reach the majority's.
    let what = format!("node{leader} catches up after the heal {diag}");
    cluster_tests::wait_for(Duration::from_secs(60), &what, || async {
        let Some(mine) = cluster.group_status_of(leader, group).await else {
            return false;
        };
        let Some(new) = cluster.leader_of(group).await else {
            return false;
        };
        let Some(theirs) = cluster.group_status_of(new, group).await else {
            return false;
        };
        mine.applied_index >= theirs.applied_index && mine.applied_index > 0
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    for i in 0..20 {
        let got = client
            .get(format!("iso-{i}"))
            .await
            .unwrap_or_else(|e| panic!("get iso-{i}: {e} {diag}"))
            .unwrap_or_else(|| panic!("iso-{i} lost {diag}"));
        assert_eq!(got.value, format!("v{i}").as_bytes(), "{diag}");
    }
}

/// Two clients race conditional writes on one key: in every round both try to move the key
/// from the same version, and exactly one wins; then both increment a counter with
/// read-compare-and-swap loops, 1,000 increments in total, and the counter ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_conditional_writes_have_one_winner() {
    let cluster = Cluster::start(ClusterOptions {
        shards: 1,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    // No faults here, so every call should answer; one attempt each, so that a condition
    // failure is never the echo of a retried write that applied.
    let options = one_shot(Duration::from_secs(30));
    let a = cluster.client_with(options.clone());
    let b = cluster.client_with(options);
    let cas = |version: u64| WriteOptions {
        if_version: Some(version),
        ..Default::default()
    };

    // Rounds: both start from the same version.
    let key = "race";
    let mut version = a.put(key, "0").await.expect("initial put");
    for round in 1..=50 {
        let condition = cas(version);
        let (ra, rb) = tokio::join!(
            a.put_with(key, format!("a{round}"), &condition),
            b.put_with(key, format!("b{round}"), &condition),
        );
        let (winner, new_version, loser) = match (ra, rb) {
            (Ok(v), Err(e)) => ("a", v, e),
            (Err(e), Ok(v)) => ("b", v, e),
            other => panic!("round {round}: expected exactly one winner, got {other:?} {diag}"),
        };
        match loser {
            Error::ConditionFailed { current_version } => {
                // Its condition named the old version, so it found the winner's.
                assert_eq!(
                    current_version,
                    Some(new_version),
                    "round {round}: the loser must report the winner's version {diag}"
                );
            }
            e => {
                panic!("round {round}: the loser failed with {e:?}, not a condition failure {diag}")
            }
        }
        assert!(
            new_version > version,
            "round {round}: version went from {version} to {new_version}"
        );
        let got = a.get(key).await.expect("get").expect("found");
        assert_eq!(
            String::from_utf8_lossy(&got.value),
            format!("{winner}{round}"),
            "round {round} {diag}"
        );
        assert_eq!(got.version, new_version);
        version = new_version;
    }

    // Counter: 2 clients x 500 increments with get + compare-and-swap.
    const PER_CLIENT: usize = 500;
    let counter = "counter";
    a.put(counter, "0").await.expect("counter starts at 0");
    let increment = |client: Client, name: &'static str| async move {
        let mut done = 0;
        let mut conflicts = 0;
        while done < PER_CLIENT {
            let current = client
                .get(counter)
                .await
                .unwrap_or_else(|e| panic!("{name}: get counter: {e}"))
                .expect("counter exists");
            let n: u64 = String::from_utf8_lossy(&current.value)
                .parse()
                .expect("a number");
            match client
                .put_with(
                    counter,
                    (n + 1).to_string(),
                    &WriteOptions {
                        if_version: Some(current.version),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(_) => done += 1,
                Err(Error::ConditionFailed { .. }) => conflicts += 1,
                Err(e) => panic!("{name}: increment failed with {e:?} (outcome unknown)"),
            }
        }
        conflicts
    };
    let started = Instant::now();
    let (ca, cb) = tokio::join!(increment(a.clone(), "a"), increment(b.clone(), "b"));
    let total = a.get(counter).await.expect("get").expect("found");
    eprintln!(
        "{} increments in {:?}, {ca} + {cb} conflicts",
        2 * PER_CLIENT,
        started.elapsed()
    );
    assert_eq!(
        String::from_utf8_lossy(&total.value),
        (2 * PER_CLIENT).to_string(),
        "the counter after {} successful increments {diag}",
        2 * PER_CLIENT
    );
}
