//! Raft messages from outside the cluster (issue #12): sent to a node's `Raft` service by a
//! plain gRPC client, each is refused by name before openraft sees it, and the cluster keeps
//! serving, also after every node is killed and restarted (a refused term is never saved).
//!
//! Before the guard in `node/src/raft_guard.rs`, a vote with term 2^64−1 was adopted and
//! persisted, and the next election overflowed it: the group stayed down across restarts.

use kv_proto::node::raft_client::RaftClient;
use kv_proto::node::RaftRequest;

use cluster_tests::forge::{heartbeat, vote};
use cluster_tests::{Cluster, ClusterOptions, READY_TIMEOUT};

/// Sends `payload` to `method` of node `addr` for `group`; the refusal's status.
async fn send(addr: &str, method: &str, group: u64, payload: Vec<u8>) -> tonic::Status {
    let mut raft = RaftClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the node");
    let request = RaftRequest {
        group_id: group,
        payload: payload.into(),
    };
    let reply = match method {
        "vote" => raft.vote(request).await,
        _ => raft.append_entries(request).await,
    };
    match reply {
        Ok(r) => panic!("{method} for group {group} was taken: {:?}", r.into_inner()),
        Err(status) => status,
    }
}

fn assert_refused(status: &tonic::Status, code: tonic::Code, what: &str, diag: &str) {
    assert_eq!(status.code(), code, "{what}: {status:?} {diag}");
    assert_eq!(
        status
            .metadata()
            .get(kv_proto::meta::ERROR_CODE)
            .and_then(|v| v.to_str().ok()),
        Some(kv_proto::codes::RAFT_REFUSED),
        "{what}: {status:?} {diag}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_from_outside_the_group_are_refused_and_change_nothing() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client();
    client
        .put("before", "1")
        .await
        .unwrap_or_else(|e| panic!("put: {e} {diag}"));
    let groups = cluster.group_ids().await;
    assert!(groups.len() > 1, "{groups:?} {diag}");

    let mut sent = 0;
    for node in cluster.nodes() {
        let addr = node.addr().to_string();
        let peer = if node.id() == 1 { 2 } else { 1 };
        for &group in &groups {
            let term = cluster
                .group_status_of(node.id(), group)
                .await
                .map_or(1, |g| g.term);
            // The largest term there is, from a replica's id: saved, it stopped the group
            // for good.
            let s = send(&addr, "vote", group, vote(u64::MAX, peer)).await;
            assert_refused(
                &s,
                tonic::Code::InvalidArgument,
                "vote of term 2^64-1",
                &diag,
            );
            // A vote from a node that is no replica.
            let s = send(&addr, "vote", group, vote(1 << 63, 99)).await;
            assert_refused(
                &s,
                tonic::Code::PermissionDenied,
                "vote from node 99",
                &diag,
            );
            // A "leader" that is no replica, one term ahead.
            let s = send(&addr, "append", group, heartbeat(term + 1, 99)).await;
            assert_refused(
                &s,
                tonic::Code::PermissionDenied,
                "heartbeat from node 99",
                &diag,
            );
            // A replica's id, a term far beyond the group's.
            let s = send(&addr, "append", group, heartbeat(term + (1 << 30), peer)).await;
            assert_refused(
                &s,
                tonic::Code::InvalidArgument,
                "heartbeat far ahead",
                &diag,
            );
            sent += 4;
        }
    }

    // Nothing changed: the cluster serves, its terms are where elections put them.
    let version = client
        .put("after", "2")
        .await
        .unwrap_or_else(|e| panic!("put after the attacks: {e} {diag}"));
    assert!(version > 0);
    for (id, status) in cluster.all_group_status().await {
        for g in status.groups {
            assert!(
                g.term < 1 << 20,
                "node{id} group {} at term {} {diag}",
                g.group_id,
                g.term
            );
        }
    }
    let (_, metrics) = cluster_tests::probe::http_get(cluster.node(1).http_addr(), "/metrics")
        .await
        .unwrap_or_else(|| panic!("node1 /metrics {diag}"));
    let refused: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("kvnode_raft_messages_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        refused,
        sent / cluster.nodes().len() as u64,
        "{metrics} {diag}"
    );

    // And nothing was saved that stops a restart.
    cluster.kill_nodes().expect("kill -9 every node");
    for node in cluster.nodes_mut() {
        node.start().expect("restart node");
    }
    cluster
        .wait_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("the cluster comes back: {e:#} {diag}"));
    let client = cluster.client();
    for key in ["before", "after"] {
        let got = client
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("get {key} after restart: {e} {diag}"));
        assert!(got.is_some(), "{key} lost {diag}");
    }
    client
        .put("restarted", "3")
        .await
        .unwrap_or_else(|e| panic!("put after restart: {e} {diag}"));
}
