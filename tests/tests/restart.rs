//! Crash of the whole cluster: every node SIGKILLed at once, restarted from its data dir, and
//! every acknowledged write is still there.

use cluster_tests::data::{self, pairs};
use cluster_tests::{Cluster, ClusterOptions, READY_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_killed_and_restarted_keep_acknowledged_data() {
    kill_all_and_restart(ClusterOptions::default()).await;
}

async fn kill_all_and_restart(options: ClusterOptions) {
    let mut cluster = Cluster::start(options).await.expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client();

    // Batched writes, plus single puts (one Raft entry each), plus a delete.
    data::load(&client, "rs", 0..2000, 200, 4)
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    data::load_single(&client, "rs1", 0..200, 8)
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    let deleted = client
        .delete(data::key("rs", 7))
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    assert!(deleted.existed, "{diag}");

    cluster.router_mut().kill().expect("kill router");
    cluster.kill_nodes().expect("kill -9 every node");
    for node in cluster.nodes_mut() {
        node.start().expect("restart node");
    }
    cluster
        .wait_nodes_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("nodes come back: {e:#} {diag}"));
    cluster.router_mut().start().expect("restart router");
    cluster
        .wait_routers_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("router comes back: {e:#} {diag}"));

    let client = cluster.client();
    let mut expected = pairs("rs", 0..2000);
    expected.retain(|(k, _)| *k != data::key("rs", 7));
    expected.extend(pairs("rs1", 0..200));
    data::verify(&client, &expected, 500)
        .await
        .unwrap_or_else(|e| panic!("after restart: {e:#} {diag}"));
    let gone = client
        .get(data::key("rs", 7))
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    assert!(gone.is_none(), "deleted key came back after restart {diag}");

    // And the restarted cluster takes new writes.
    let version = client
        .put("after-restart", "yes")
        .await
        .unwrap_or_else(|e| panic!("put after restart: {e:#} {diag}"));
    assert!(version > 0);
    let got = client
        .get("after-restart")
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"))
        .expect("just written");
    assert_eq!(got.value.as_ref(), b"yes");
}
