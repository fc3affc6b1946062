//! Killing a group leader (SIGKILL) under a steady stream of writes: another replica takes
//! over, the writer keeps getting acknowledgements after retrying, and no acknowledged write is
//! lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_tests::data::{key, value};
use cluster_tests::{data, wait_for, Cluster, ClusterOptions};

/// Keys acknowledged by the writer, in order. A std mutex: held only to push or copy, never
/// across `.await`.
type Acked = Arc<Mutex<Vec<(String, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client();

    // The writer: sequential puts of distinct keys. A failed put is retried with the same key
    // and value until acknowledged (a put that failed may still have applied: same value, so
    // retrying is harmless); only acknowledged keys are recorded.
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (key("fo", i), value("fo", i));
                match client.put(k.clone(), v.clone()).await {
                    Ok(_) => {
                        acked.lock().unwrap().push((k, v));
                        i += 1;
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(format!("{k}: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };
    let acked_len = || acked.lock().unwrap().len();

    wait_for(Duration::from_secs(60), "the writer has 200 acks", || {
        let n = acked_len();
        async move { n >= 200 }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#} {diag}"));

    // The group of the first key, and its leader.
    let first = client
        .get(key("fo", 0))
        .await
        .unwrap_or_else(|e| panic!("get fo-0: {e:#} {diag}"))
        .unwrap_or_else(|| panic!("acknowledged key fo-000000 missing {diag}"));
    let group = first.group_id;
    let old_leader = cluster
        .wait_leader(group, None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("killing node{old_leader}, leader of group {group}");
    cluster
        .node_mut(old_leader)
        .kill()
        .expect("kill -9 the leader");
    let acked_at_kill = acked_len();

    let new_leader = cluster
        .wait_leader(group, Some(old_leader), Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("no new leader after killing node{old_leader}: {e:#}"));
    assert_ne!(new_leader, old_leader);

    // The writer goes on: 300 more acknowledgements after the kill, enough that every group
    // (the one that lost its leader included) has taken writes again.
    wait_for(
        Duration::from_secs(90),
        "the writer has 300 more acks after the kill",
        || {
            let n = acked_len();
            async move { n >= acked_at_kill + 300 }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}; {} acks at kill, {} now; recent errors: {:?} {diag}",
            acked_at_kill,
            acked_len(),
            errors
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
        )
    });
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer task");

    // Every acknowledged write is readable with its value.
    let acked = acked.lock().unwrap().clone();
    let groups = data::verify(&client, &acked, 200)
        .await
        .unwrap_or_else(|e| panic!("after failover: {e:#} {diag}"));
    assert!(groups.contains(&group), "{groups:?} {diag}");

    // Writes acknowledged after the kill include some of the group that lost its leader.
    let after: Vec<String> = acked[acked_at_kill..]
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    let results = client
        .batch_get(after, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    let in_group = results
        .iter()
        .flatten()
        .filter(|r| r.group_id == group)
        .count();
    assert!(
        in_group > 0,
        "no write to group {group} was acknowledged after its leader died {diag}"
    );
    eprintln!(
        "{} acks, {} after the kill ({in_group} in group {group}); {} failed attempts",
        acked.len(),
        acked.len() - acked_at_kill,
        errors.lock().unwrap().len()
    );
}
