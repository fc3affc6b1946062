//! One shard group whose log is corrupt on one node: that group is fenced off on that node, and
//! everything else goes on. The node stays up and serves its other groups, says which group
//! failed and why (`/ready`, `/metrics`, its log, the status of requests for that group), and
//! the cluster serves every key through the group's other replicas.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_tests::data::{self, pairs};
use cluster_tests::node::node_client;
use cluster_tests::probe::http_get;
use cluster_tests::{wait_until, Cluster, ClusterOptions, READY_TIMEOUT};
use kv_proto::kv::Consistency as ProtoConsistency;
use kv_proto::node::ReadRequest;
use kvclient::{Bytes, Consistency, ReadOptions};

/// The group whose log is corrupted, and the node it is corrupted on.
const GROUP: u64 = 1;
const NODE: u64 = 3;

/// Small segments, so that a few thousand writes give every group's log many segment files.
const SEGMENT_BYTES: &str = "4096";

/// The segment files of `group`'s log in `data_dir`, oldest first.
fn segments(data_dir: &Path, group: u64) -> Vec<PathBuf> {
    let dir = data_dir.join("raft-log").join(format!("g{group}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    // Named by their first index, zero-padded: name order is log order.
    files.sort();
    files
}

/// Flips one bit inside the first record's entry of `segment`, so that its checksum fails.
/// Not the newest segment, where a bad record would be taken for a torn tail and cut off: in
/// an older one it is corruption no crash explains, and the group refuses to open.
fn corrupt(segment: &Path) {
    let mut bytes = std::fs::read(segment).expect("reading the segment");
    // Past the 8-byte header (length and checksum).
    assert!(
        bytes.len() > 9,
        "segment {} is too short",
        segment.display()
    );
    bytes[9] ^= 0x01;
    std::fs::write(segment, &bytes).expect("writing the segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_group_is_fenced_off_and_the_rest_keeps_serving() {
    let mut cluster = Cluster::start(ClusterOptions {
        node_args: vec!["--log-segment-bytes".into(), SEGMENT_BYTES.into()],
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client();
    data::load(&client, "cg", 0..3000, 100, 4)
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    data::load_single(&client, "cg1", 0..200, 8)
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    let mut expected = pairs("cg", 0..3000);
    expected.extend(pairs("cg1", 0..200));

    cluster.node_mut(NODE).kill().expect("kill node");
    let data_dir = cluster.node(NODE).data_dir().to_path_buf();
    let files = segments(&data_dir, GROUP);
    assert!(
        files.len() >= 3,
        "group {GROUP} has {} segments on node{NODE}, too few to corrupt a middle one {diag}",
        files.len()
    );
    corrupt(&files[files.len() / 2]);

    cluster.node_mut(NODE).start().expect("restart node");
    cluster
        .node_mut(NODE)
        .wait_healthy(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("the node answers /health despite the bad group: {e:#} {diag}"));

    // /ready: not ready, naming the group and the reason.
    let http = cluster.node(NODE).http_addr().to_string();
    let body = wait_until(READY_TIMEOUT, "node /ready names the failed group", || {
        let http = http.clone();
        async move {
            let (status, body) = http_get(&http, "/ready").await?;
            (status == 503 && body.contains(&format!("shard group {GROUP} failed"))).then_some(body)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    assert!(body.contains("bad record"), "/ready body: {body:?} {diag}");

    // /metrics: the failed-groups gauge and the group's own series.
    let (status, metrics) = http_get(&http, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200, "{diag}");
    assert!(
        metrics.lines().any(|l| l == "kvnode_groups_failed 1"),
        "metrics:\n{metrics} {diag}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("kvnode_group_failed{{group=\"{GROUP}\"}} 1")),
        "metrics:\n{metrics} {diag}"
    );

    // Its log says so.
    let log = std::fs::read_to_string(cluster.node(NODE).log_path()).expect("node log");
    assert!(
        log.contains("shard group failed to start"),
        "node{NODE} log does not report the failed group {diag}"
    );

    // A request for the failed group is answered at once with UNAVAILABLE naming the group
    // and the reason, not left to hang.
    let mut node = node_client(cluster.node(NODE).addr())
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    let (key, _) = &expected[0];
    let started = Instant::now();
    let status = node
        .read(ReadRequest {
            group_id: GROUP,
            consistency: ProtoConsistency::Eventual as i32,
            keys: vec![Bytes::from(key.clone())],
            ..Default::default()
        })
        .await
        .expect_err("the failed group does not serve");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?} {diag}",
        started.elapsed()
    );
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?} {diag}");
    assert_eq!(
        status
            .metadata()
            .get(kv_proto::meta::ERROR_CODE)
            .and_then(|v| v.to_str().ok()),
        Some(kv_proto::codes::GROUP_FAILED),
        "{status:?} {diag}"
    );
    assert!(
        status.message().contains(&format!("shard group {GROUP}"))
            && status.message().contains("bad record"),
        "{status:?} {diag}"
    );

    // The node's other groups serve: it hosts them, and answers an eventual read of each one's
    // keys itself.
    let hosted: Vec<u64> = cluster
        .group_status(NODE)
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"))
        .groups
        .iter()
        .map(|g| g.group_id)
        .collect();
    assert!(!hosted.contains(&GROUP), "{hosted:?} {diag}");
    let map = cluster
        .compiled_map(1)
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    let mut served_groups = std::collections::BTreeSet::new();
    for (key, value) in &expected {
        let group = map
            .locate("", key.as_bytes())
            .unwrap_or_else(|e| panic!("{e} {diag}"));
        if group == GROUP || !served_groups.insert(group) {
            continue;
        }
        assert!(hosted.contains(&group), "{hosted:?} {diag}");
        let what = format!("node{NODE} serves {key} of group {group}");
        wait_until(READY_TIMEOUT, &what, || {
            let mut node = node.clone();
            let key = Bytes::from(key.clone());
            async move {
                let resp = node
                    .read(ReadRequest {
                        group_id: group,
                        consistency: ProtoConsistency::Eventual as i32,
                        keys: vec![key],
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                (resp.served_by == NODE && resp.results.first()?.value.as_ref() == value.as_bytes())
                    .then_some(())
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    }
    assert!(
        served_groups.len() >= 3,
        "the test data covers only groups {served_groups:?} {diag}"
    );

    // The cluster serves every key, strong and eventual, the failed group's through its other
    // two replicas, and takes writes to that group.
    data::verify(&client, &expected, 500)
        .await
        .unwrap_or_else(|e| panic!("strong reads: {e:#} {diag}"));
    let eventual = ReadOptions {
        consistency: Consistency::Eventual,
        ..Default::default()
    };
    for part in expected.chunks(500) {
        let got = client
            .batch_get(part.iter().map(|(k, _)| k.clone()), &eventual)
            .await
            .unwrap_or_else(|e| panic!("eventual reads: {e:#} {diag}"));
        for ((k, v), got) in part.iter().zip(got) {
            let got = got.unwrap_or_else(|| panic!("{k} missing from an eventual read {diag}"));
            assert_eq!(got.value.as_ref(), v.as_bytes(), "{k} {diag}");
        }
    }
    data::load_single(&client, "after", 0..50, 4)
        .await
        .unwrap_or_else(|e| panic!("writes after the failure: {e:#} {diag}"));
    data::verify(&client, &pairs("after", 0..50), 50)
        .await
        .unwrap_or_else(|e| panic!("{e:#} {diag}"));

    // And the node is still up, still fencing the group off.
    assert!(
        cluster.node_mut(NODE).is_running(),
        "node{NODE} exited {diag}"
    );
    let (status, body) = http_get(&http, "/ready").await.expect("/ready answers");
    assert_eq!(status, 503, "{body:?} {diag}");
}
