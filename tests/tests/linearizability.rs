//! Strong reads, writes and compare-and-swaps from several tasks for about 20 s, while a
//! nemesis kills group leaders (kill -9, restart) and partitions the network (each process in
//! its own namespace); the recorded history must be linearizable, key by key.
//!
//! Writes that time out or find the cluster unavailable are recorded with an unknown outcome:
//! the checker lets them take effect at any point after they started, or never.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::linearizability::{self, History, Outcome, RecordingClient};
use cluster_tests::netns::require_netns;
use cluster_tests::{Cluster, ClusterOptions};
use kvclient::ClientOptions;
use rand::{Rng, SeedableRng};

const KEYS: [&str; 3] = ["lin-a", "lin-b", "lin-c"];
const WORKERS: usize = 4;
const WORKLOAD: Duration = Duration::from_secs(20);

/// One worker: random strong operations on the keys until `stop`. A compare-and-swap expects
/// the version this worker saw last for the key.
async fn worker(id: usize, client: RecordingClient, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut known = [0u64; KEYS.len()];
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.gen_range(0..KEYS.len());
        let key = KEYS[k];
        seq += 1;
        let value = format!("w{id}-{seq}");
        let roll = rng.gen_range(0..10);
        let outcome = if roll < 3 {
            client.get(key).await
        } else if roll < 5 {
            client.put(key, &value).await
        } else {
            client.cas(key, known[k], &value).await
        };
        match outcome {
            Outcome::Written { version } => known[k] = version,
            Outcome::Read(Some((_, version))) => known[k] = version,
            Outcome::Read(None) => known[k] = 0,
            Outcome::CasFailed {
                current: Some(version),
            } => known[k] = version,
            Outcome::CasFailed { current: None } | Outcome::Failed => {}
            // The cluster is busy recovering: do not spin.
            Outcome::Unknown => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Completed (not unknown) operations recorded so far.
fn completed(history: &History) -> usize {
    history
        .operations()
        .iter()
        .filter(|o| !matches!(o.outcome, Outcome::Unknown))
        .count()
}

/// Waits until the workers complete `n` more operations (the cluster makes progress), or
/// `timeout`; returns whether they did.
async fn progress(history: &History, n: usize, timeout: Duration) -> bool {
    let target = completed(history) + n;
    cluster_tests::wait_for(timeout, "the workers make progress", || {
        let done = completed(history) >= target;
        async move { done }
    })
    .await
    .is_ok()
}

/// Waits until every group has a leader that confirms itself.
async fn wait_all_leaders(cluster: &Cluster, groups: &[u64]) {
    for &g in groups {
        cluster
            .wait_leader(g, None, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("group {g} does not recover: {e:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_operations_stay_linearizable_under_kills_and_partitions() {
    if !require_netns() {
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions {
        shards: 2,
        routers: 2,
        netns: true,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let groups: Vec<u64> = cluster
        .group_ids()
        .await
        .into_iter()
        .filter(|&g| g != 0)
        .collect();
    assert!(!groups.is_empty(), "no data groups {diag}");

    // One attempt per call: what the router answers is what is recorded (a client-side retry
    // of a write with unknown outcome would hide that outcome).
    let options = ClientOptions {
        timeout: Duration::from_secs(10),
        max_retries: 0,
        ..Default::default()
    };
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("workload seed {seed}, groups {groups:?}");
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| {
            let client =
                RecordingClient::new(id, cluster.client_with(options.clone()), history.clone());
            tokio::spawn(worker(
                id,
                client,
                stop.clone(),
                seed.wrapping_add(id as u64),
            ))
        })
        .collect();

    // The nemesis: one fault at a time, each followed by recovery and some progress.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut faults = Vec::new();
    progress(&history, 20, Duration::from_secs(30)).await;
    while started.elapsed() < WORKLOAD {
        let group = groups[rng.gen_range(0..groups.len())];
        let leader = cluster
            .wait_leader(group, None, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let others: Vec<u64> = cluster
            .node_ids()
            .into_iter()
            .filter(|&n| n != leader)
            .collect();
        match rng.gen_range(0..3) {
            0 => {
                faults.push(format!("kill -9 node{leader} (leader of group {group})"));
                cluster.node_mut(leader).kill().expect("kill");
                // Let the survivors elect, and serve a little without it.
                let _ = cluster
                    .wait_leader(group, Some(leader), Duration::from_secs(30))
                    .await;
                progress(&history, 10, Duration::from_secs(5)).await;
                cluster.node_mut(leader).start().expect("restart");
                cluster
                    .node_mut(leader)
                    .wait_ready(Duration::from_secs(60))
                    .await
                    .unwrap_or_else(|e| panic!("node{leader} restarts: {e:#} {diag}"));
            }
            1 => {
                faults.push(format!(
                    "partition node{leader} (leader of group {group}) | {others:?}"
                ));
                cluster.partition(&[leader], &others).expect("partition");
                let _ = cluster
                    .wait_leader(group, Some(leader), Duration::from_secs(30))
                    .await;
                progress(&history, 10, Duration::from_secs(5)).await;
                cluster.heal().expect("heal");
            }
            _ => {
                let node = cluster.node_ids()[rng.gen_range(0..3)];
                faults.push(format!("isolate node{node} from nodes and routers"));
                cluster.isolate_node(node).expect("isolate");
                progress(&history, 10, Duration::from_secs(5)).await;
                cluster.heal().expect("heal");
            }
        }
        wait_all_leaders(&cluster, &groups).await;
        progress(&history, 10, Duration::from_secs(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    cluster.heal().expect("heal");

    let ops = history.operations();
    let text: String = ops.iter().map(|o| format!("{o}\n")).collect();
    let path = cluster.dir().join("history.txt");
    std::fs::write(&path, text).expect("writing the history");
    let report = linearizability::check(&ops);
    let completed_writes = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Written { .. }))
        .count();
    let reads = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Read(_)))
        .count();
    eprintln!(
        "faults: {faults:#?}\n{} operations ({completed_writes} acknowledged writes, {reads} \
         reads, {} unknown writes checked); history in {}",
        ops.len(),
        report.unknown,
        path.display()
    );
    assert!(
        report.is_linearizable(),
        "history is not linearizable (seed {seed}, full history in {}):\n{} {diag}",
        path.display(),
        report.problems()
    );
    assert!(
        completed_writes >= 50 && reads >= 20,
        "too little work to mean anything: {completed_writes} writes, {reads} reads {diag}"
    );
    assert!(faults.len() >= 2, "too few faults injected: {faults:?}");
    canary(&ops);
}

/// Guards against a checker that accepts everything: a stale read appended to the real
/// history (after two acknowledged writes of one key that did not overlap, a read of the
/// first one's value) must be reported.
fn canary(ops: &[linearizability::Operation]) {
    let writes: Vec<&linearizability::Operation> = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Written { .. }))
        .collect();
    let pair = writes.iter().find_map(|w1| {
        let w2 = writes
            .iter()
            .find(|w2| w2.key == w1.key && w2.invoke > w1.complete)?;
        Some((*w1, *w2))
    });
    let Some((w1, w2)) = pair else {
        panic!("no two sequential acknowledged writes of one key in the history");
    };
    let (linearizability::OpKind::Put { value } | linearizability::OpKind::Cas { value, .. }) =
        &w1.kind
    else {
        unreachable!("writes are puts or cas");
    };
    let Outcome::Written { version } = w1.outcome else {
        unreachable!()
    };
    let latest = ops.iter().map(|o| o.complete).max().unwrap_or_default();
    let mut tampered = ops.to_vec();
    tampered.push(linearizability::Operation {
        client: 99,
        key: w1.key.clone(),
        kind: linearizability::OpKind::Get,
        invoke: latest.max(w2.complete) + Duration::from_millis(1),
        complete: latest.max(w2.complete) + Duration::from_millis(2),
        outcome: Outcome::Read(Some((value.clone(), version))),
        error: None,
    });
    let report = linearizability::check(&tampered);
    assert!(
        !report.is_linearizable(),
        "the checker accepted a stale read of {value:?} appended after {w2}"
    );
}
