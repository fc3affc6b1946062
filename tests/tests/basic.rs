//! Three nodes and a router: bulk writes land in several shard groups and read back intact,
//! by key and by a scan over the whole key space.

use std::time::Duration;

use cluster_tests::data::{self, pairs};
use cluster_tests::{Cluster, ClusterOptions};
use kvclient::ScanOptions;

const KEYS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_read_back_and_scan_in_order_across_groups() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client();

    data::load(&client, "basic", 0..KEYS, 250, 4)
        .await
        .unwrap_or_else(|e| panic!("loading {KEYS} keys: {e:#} {diag}"));

    let expected = pairs("basic", 0..KEYS);
    let groups = data::verify(&client, &expected, 500)
        .await
        .unwrap_or_else(|e| panic!("reading back: {e:#} {diag}"));
    assert!(
        groups.len() > 1,
        "all {KEYS} keys landed in groups {groups:?}; expected them spread over several {diag}"
    );
    assert!(
        !groups.contains(&0),
        "data keys reported in the meta group 0: {groups:?} {diag}"
    );

    // The whole key space, across all groups, in key order.
    let scanned = client
        .scan_all("", "", &ScanOptions::default())
        .await
        .unwrap_or_else(|e| panic!("scan_all: {e:#} {diag}"));
    assert_eq!(
        scanned.len(),
        KEYS,
        "scan over the whole key space returned {} keys, expected {KEYS} {diag}",
        scanned.len()
    );
    for (i, (kv, (k, v))) in scanned.iter().zip(&expected).enumerate() {
        assert_eq!(
            kv.key.as_ref(),
            k.as_bytes(),
            "scan position {i}: key {:?}, expected {k} {diag}",
            String::from_utf8_lossy(&kv.key)
        );
        assert_eq!(kv.value.as_ref(), v.as_bytes(), "scan value of {k} {diag}");
        assert!(kv.version > 0, "scan version of {k} is 0 {diag}");
    }

    // A bounded scan with a page limit: the first page is the first keys, in order.
    let page = client
        .scan(
            data::key("basic", 100),
            data::key("basic", 200),
            &ScanOptions {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("scan page: {e:#} {diag}"));
    let keys: Vec<String> = page
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    let want: Vec<String> = (100..110).map(|i| data::key("basic", i)).collect();
    assert_eq!(keys, want, "first page of [100, 200) {diag}");
    assert!(page.more, "a 10-key page of 100 keys must say more {diag}");

    // Every group still has a leader that confirms itself.
    for group in cluster.group_ids().await {
        cluster
            .wait_leader(group, None, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}
