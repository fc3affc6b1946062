//! Bad requests get `INVALID_ARGUMENT` (or `NOT_FOUND` for an unknown group) with a message and
//! a stable code naming the problem, and leave the cluster serving.

use cluster_tests::{Cluster, ClusterOptions};
use kv_proto::kv::{GetRequest, KeyValue, PutRequest, ScanRequest};
use kv_proto::node::{ReadRequest, WriteRequest};
use kv_proto::{codes, meta};
use tonic::{Code, Status};

const MAX_KEY: usize = 4096;
const MAX_VALUE: usize = 1024 * 1024;

/// Checks `result` failed with `code`, a message naming the problem (for each entry of
/// `words`, one of its `|`-separated alternatives, case-insensitive), and the stable
/// `error_code` in metadata.
fn expect_status<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Status>,
    code: Code,
    error_code: &str,
    words: &[&str],
    diag: &str,
) {
    let status = match result {
        Ok(ok) => panic!("{what}: succeeded with {ok:?}, expected {code:?} {diag}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{what}: {status:?} {diag}");
    let message = status.message().to_lowercase();
    for word in words {
        assert!(
            word.split('|').any(|w| message.contains(w)),
            "{what}: message {:?} does not mention {word:?} {diag}",
            status.message()
        );
    }
    let got = status
        .metadata()
        .get(meta::ERROR_CODE)
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        got,
        Some(error_code),
        "{what}: {} metadata of {status:?} {diag}",
        meta::ERROR_CODE
    );
}

fn put(key: Vec<u8>, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_cluster_keeps_serving() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let mut kv = cluster.kv_client().await.expect("router client");

    let r = kv.put(put(Vec::new(), b"x".to_vec())).await;
    expect_status(
        "put empty key",
        r,
        Code::InvalidArgument,
        codes::INVALID_KEY,
        &["key", "empty"],
        &diag,
    );

    let r = kv
        .get(GetRequest {
            key: Vec::new().into(),
            ..Default::default()
        })
        .await;
    expect_status(
        "get empty key",
        r,
        Code::InvalidArgument,
        codes::INVALID_KEY,
        &["key", "empty"],
        &diag,
    );

    let r = kv.put(put(vec![b'k'; MAX_KEY + 1], b"x".to_vec())).await;
    expect_status(
        "put 4097-byte key",
        r,
        Code::InvalidArgument,
        codes::INVALID_KEY,
        &["key", "4097|4096|large|long|limit"],
        &diag,
    );

    let r = kv
        .get(GetRequest {
            key: vec![b'k'; MAX_KEY + 1].into(),
            ..Default::default()
        })
        .await;
    expect_status(
        "get 4097-byte key",
        r,
        Code::InvalidArgument,
        codes::INVALID_KEY,
        &["key"],
        &diag,
    );

    let r = kv
        .put(put(b"big".to_vec(), vec![b'v'; MAX_VALUE + 1]))
        .await;
    expect_status(
        "put 1 MiB + 1 value",
        r,
        Code::InvalidArgument,
        codes::INVALID_VALUE,
        &["value", "1048577|1048576|large|limit"],
        &diag,
    );

    let r = kv
        .scan(ScanRequest {
            start: b"b".to_vec().into(),
            end: b"a".to_vec().into(),
            ..Default::default()
        })
        .await;
    expect_status(
        "scan start > end",
        r,
        Code::InvalidArgument,
        codes::INVALID_RANGE,
        &["start|range|end"],
        &diag,
    );

    let r = kv
        .batch_put(kv_proto::kv::BatchPutRequest {
            kvs: vec![
                KeyValue {
                    key: b"ok-key".to_vec().into(),
                    value: b"v".to_vec().into(),
                    version: 0,
                },
                KeyValue {
                    key: Vec::new().into(),
                    value: b"v".to_vec().into(),
                    version: 0,
                },
            ],
            ..Default::default()
        })
        .await;
    expect_status(
        "batch_put with an empty key",
        r,
        Code::InvalidArgument,
        codes::INVALID_KEY,
        &["key"],
        &diag,
    );

    // The client library refuses the same, as a non-retryable invalid argument.
    let client = cluster.client();
    for (what, result) in [
        ("empty key", client.put("", "x").await),
        (
            "oversized key",
            client.put(vec![b'k'; MAX_KEY + 1], "x").await,
        ),
        (
            "oversized value",
            client.put("k", vec![b'v'; MAX_VALUE + 1]).await,
        ),
    ] {
        match result {
            Err(e @ kvclient::Error::InvalidArgument { .. }) => {
                assert!(!e.is_retryable(), "{what}: {e} is retryable");
            }
            other => panic!("client put with {what}: {other:?}, expected InvalidArgument {diag}"),
        }
    }

    // A node asked about a group it does not host.
    let mut node = cluster.node(1).node_client().await.expect("node client");
    let r = node
        .read(ReadRequest {
            group_id: 999,
            keys: vec![b"a".to_vec().into()],
            ..Default::default()
        })
        .await;
    expect_status(
        "node read of group 999",
        r,
        Code::NotFound,
        codes::UNKNOWN_GROUP,
        &[],
        &diag,
    );
    let r = node
        .write(WriteRequest {
            group_id: 999,
            ..Default::default()
        })
        .await;
    expect_status(
        "node write to group 999",
        r,
        Code::NotFound,
        codes::UNKNOWN_GROUP,
        &[],
        &diag,
    );

    // Nobody died, and the cluster still serves.
    for node in cluster.nodes_mut() {
        assert!(
            node.is_running(),
            "node{} stopped after bad input {diag}",
            node.id()
        );
    }
    assert!(
        cluster.router_mut().is_running(),
        "router stopped after bad input {diag}"
    );
    let version = client
        .put("still", "serving")
        .await
        .unwrap_or_else(|e| panic!("put after bad input: {e:#} {diag}"));
    let got = client
        .get("still")
        .await
        .unwrap_or_else(|e| panic!("get after bad input: {e:#} {diag}"))
        .expect("just written");
    assert_eq!(
        (got.value.as_ref(), got.version),
        (&b"serving"[..], version),
        "{diag}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_allowed_key_and_value_are_accepted() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let mut kv = cluster.kv_client().await.expect("router client");

    // The limits are inclusive: a 4096-byte key and a 1 MiB value are fine.
    kv.put(put(vec![b'k'; MAX_KEY], b"x".to_vec()))
        .await
        .unwrap_or_else(|e| panic!("put of a 4096-byte key: {e:?} {diag}"));
    kv.put(put(b"big".to_vec(), vec![b'v'; MAX_VALUE]))
        .await
        .unwrap_or_else(|e| panic!("put of a 1 MiB value: {e:?} {diag}"));
    let big = kv
        .get(GetRequest {
            key: b"big".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("get big: {e:?} {diag}"))
        .into_inner();
    assert!(
        big.found && big.value.len() == MAX_VALUE,
        "1 MiB value read back {diag}"
    );

    let keyed = kv
        .get(GetRequest {
            key: vec![b'k'; MAX_KEY].into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("get of the 4096-byte key: {e:?} {diag}"))
        .into_inner();
    assert!(keyed.found && keyed.value.as_ref() == b"x", "{diag}");
}
