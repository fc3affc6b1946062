//! Refused keyspace and directory changes: each gets a gRPC status naming the problem (and a
//! stable `kv-error-code`), through the raw `Admin` API and through `kvctl` (exit 1, message on
//! stderr), and leaves the map exactly as it was (same keyspaces, same epoch, same groups on
//! the nodes). Changes that would move keys away from their data are refused.

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_tests::admin::{
    create_keyspace, describe, directory_spec, hash_spec, keyspaces_snapshot, range_spec,
};
use cluster_tests::{wait_for, Cluster, ClusterOptions};
use kv_proto::kv::admin_client::AdminClient;
use kv_proto::kv::{
    DropKeyspaceRequest, KeyspaceInfo, KeyspaceSpec, RemoveDirectoryRequest, SetDirectoryRequest,
};
use kv_proto::{codes, meta};
use kvclient::{Bytes, ReadOptions, WriteOptions};
use tonic::transport::Channel;
use tonic::{Code, Status};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Checks `result` failed with `code`, the stable `error_code` in metadata, and a message
/// naming the problem (each entry of `words`: one of its `|`-separated alternatives,
/// case-insensitive).
fn expect_refused<T: std::fmt::Debug>(
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
    let got = status
        .metadata()
        .get(meta::ERROR_CODE)
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        got,
        Some(error_code),
        "{what}: error code of {status:?} {diag}"
    );
    let message = status.message().to_lowercase();
    for word in words {
        assert!(
            word.split('|').any(|w| message.contains(w)),
            "{what}: message {:?} does not mention {word:?} {diag}",
            status.message()
        );
    }
}

/// The map as the router shows it, and the groups the nodes host.
async fn state(
    cluster: &Cluster,
    admin: &mut AdminClient<Channel>,
) -> ((u64, Vec<KeyspaceInfo>), BTreeSet<u64>) {
    let snapshot = keyspaces_snapshot(admin)
        .await
        .unwrap_or_else(|e| panic!("ListKeyspaces: {e:?}"));
    (snapshot, cluster.group_ids().await)
}

fn set_dir(keyspace: &str, directory: &str, group_id: u64) -> SetDirectoryRequest {
    SetDirectoryRequest {
        keyspace: keyspace.into(),
        directory: Bytes::copy_from_slice(directory.as_bytes()),
        group_id,
    }
}

fn write_opts(keyspace: &str) -> WriteOptions {
    WriteOptions {
        keyspace: keyspace.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_keyspace_changes_name_the_problem_and_change_nothing() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let mut admin = cluster.admin().await.unwrap();
    let client = cluster.client();

    // A keyspace with data, and a directory keyspace with data in a mapped directory
    // (tenant-a) and in an unmapped one (tenant-b, spread by the hash fallback).
    create_keyspace(&mut admin, hash_spec("full", 2, 3))
        .await
        .unwrap_or_else(|e| panic!("create full: {e:?} {diag}"));
    client
        .put_with("k", "v", &write_opts("full"))
        .await
        .unwrap_or_else(|e| panic!("put in full: {e} {diag}"));
    let dir = create_keyspace(&mut admin, directory_spec("dir", 3, 3))
        .await
        .unwrap_or_else(|e| panic!("create dir: {e:?} {diag}"))
        .keyspace
        .unwrap();
    let groups: Vec<u64> = dir.groups.iter().map(|g| g.id).collect();
    admin
        .set_directory(set_dir("dir", "tenant-a", groups[1]))
        .await
        .unwrap_or_else(|e| panic!("set tenant-a: {e:?} {diag}"));
    let tenant_keys: Vec<(String, String)> = (0..30)
        .flat_map(|i| {
            [
                (format!("tenant-a/{i:03}"), format!("a{i}")),
                (format!("tenant-b/{i:03}"), format!("b{i}")),
            ]
        })
        .collect();
    client
        .batch_put(tenant_keys.clone(), &write_opts("dir"))
        .await
        .unwrap_or_else(|e| panic!("writing tenants: {e} {diag}"));
    let b_groups: BTreeSet<u64> = client
        .batch_get(
            tenant_keys
                .iter()
                .filter(|(k, _)| k.starts_with("tenant-b/"))
                .map(|(k, _)| k.clone()),
            &ReadOptions {
                keyspace: "dir".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.expect("tenant-b key").group_id)
        .collect();
    assert!(
        b_groups.len() > 1,
        "30 tenant-b keys all hashed to {b_groups:?}; the test needs them spread"
    );

    let before = state(&cluster, &mut admin).await;

    let spec = |f: &dyn Fn(&mut KeyspaceSpec)| {
        let mut s = hash_spec("bad", 2, 3);
        f(&mut s);
        s
    };
    let bad_creates: Vec<(&str, KeyspaceSpec, Code, &str, &[&str])> = vec![
        (
            "unknown strategy",
            spec(&|s| s.strategy = "consistent".into()),
            Code::InvalidArgument,
            codes::INVALID_MAP_CHANGE,
            &["strategy", "consistent"],
        ),
        (
            "duplicate split points",
            range_spec("bad", &["b", "m", "m"], 3),
            Code::InvalidArgument,
            codes::INVALID_MAP_CHANGE,
            &["duplicate"],
        ),
        (
            "unsorted split points",
            range_spec("bad", &["m", "c"], 3),
            Code::InvalidArgument,
            codes::INVALID_MAP_CHANGE,
            &["sorted"],
        ),
        (
            "zero shards",
            spec(&|s| s.shards = 0),
            Code::InvalidArgument,
            codes::INVALID_MAP_CHANGE,
            &["shards"],
        ),
        (
            "replication 5 on 3 nodes",
            spec(&|s| s.replication = 5),
            Code::InvalidArgument,
            codes::INVALID_MAP_CHANGE,
            &["replication", "nodes"],
        ),
        (
            "replication 2",
            spec(&|s| s.replication = 2),
            Code::InvalidArgument,
            codes::INVALID_MAP_CHANGE,
            &["replication", "1, 3 or 5"],
        ),
        (
            "directory without a fallback",
            spec(&|s| s.strategy = "directory".into()),
            Code::InvalidArgument,
            codes::INVALID_MAP_CHANGE,
            &["fallback"],
        ),
        (
            "an existing name",
            hash_spec("full", 2, 3),
            Code::AlreadyExists,
            codes::KEYSPACE_EXISTS,
            &["full"],
        ),
    ];
    for (what, bad, code, error_code, words) in bad_creates {
        let result = create_keyspace(&mut admin, bad).await;
        expect_refused(what, result, code, error_code, words, &diag);
        let now = keyspaces_snapshot(&mut admin).await.unwrap();
        assert_eq!(
            now, before.0,
            "{what} changed the keyspaces or the epoch {diag}"
        );
    }

    let default_group = describe(&mut admin, "default").await.unwrap().groups[0].id;
    let bad_sets = [
        (
            "a directory entry naming a missing group",
            set_dir("dir", "tenant-c", 9_999),
            Code::InvalidArgument,
            codes::INVALID_MAP_CHANGE,
            &["9999"][..],
        ),
        (
            "a directory entry naming another keyspace's group",
            set_dir("dir", "tenant-c", default_group),
            Code::InvalidArgument,
            codes::INVALID_MAP_CHANGE,
            &["group"][..],
        ),
        (
            "moving a directory that holds keys",
            set_dir("dir", "tenant-a", groups[0]),
            Code::FailedPrecondition,
            codes::DIRECTORY_NOT_EMPTY,
            &["tenant-a"][..],
        ),
        (
            "mapping an unlisted directory whose keys the fallback spread",
            set_dir("dir", "tenant-b", *b_groups.iter().next().unwrap()),
            Code::FailedPrecondition,
            codes::DIRECTORY_NOT_EMPTY,
            &["tenant-b"][..],
        ),
    ];
    for (what, request, code, error_code, words) in bad_sets {
        let result = admin.set_directory(request).await;
        expect_refused(what, result, code, error_code, words, &diag);
        let now = keyspaces_snapshot(&mut admin).await.unwrap();
        assert_eq!(
            now, before.0,
            "{what} changed the keyspaces or the epoch {diag}"
        );
    }

    let result = admin
        .remove_directory(RemoveDirectoryRequest {
            keyspace: "dir".into(),
            directory: Bytes::from_static(b"tenant-a"),
        })
        .await;
    expect_refused(
        "removing the entry of a directory that holds keys",
        result,
        Code::FailedPrecondition,
        codes::DIRECTORY_NOT_EMPTY,
        &["tenant-a"],
        &diag,
    );

    let result = admin
        .drop_keyspace(DropKeyspaceRequest {
            name: "full".into(),
            force: false,
        })
        .await;
    expect_refused(
        "dropping a keyspace that holds keys",
        result,
        Code::FailedPrecondition,
        codes::KEYSPACE_NOT_EMPTY,
        &["full", "force"],
        &diag,
    );

    // Through kvctl: exit 1, a message on stderr, nothing on stdout.
    let kvctl_cases: [(&str, &[&str], &str); 5] = [
        (
            "unknown strategy",
            &[
                "keyspace",
                "create",
                "bad",
                "--strategy",
                "consistent",
                "--shards",
                "2",
            ],
            "strategy",
        ),
        (
            "unsorted split points",
            &[
                "keyspace",
                "create",
                "bad",
                "--strategy",
                "range",
                "--split-points",
                "m,c",
            ],
            "sorted",
        ),
        (
            "replication above the node count",
            &[
                "keyspace",
                "create",
                "bad",
                "--strategy",
                "hash",
                "--shards",
                "2",
                "--replication",
                "5",
            ],
            "replication",
        ),
        (
            "dropping a keyspace that holds keys",
            &["keyspace", "drop", "full"],
            "force",
        ),
        (
            "moving a directory that holds keys",
            &[
                "directory",
                "set",
                "dir",
                "tenant-a",
                &groups[0].to_string(),
            ],
            "tenant-a",
        ),
    ];
    for (what, args, word) in kvctl_cases {
        let out = cluster.kvctl(args).await.unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "kvctl {args:?} ({what}): {:?}, stdout {:?}, stderr {stderr:?} {diag}",
            out.status,
            text(&out.stdout)
        );
        assert!(
            stderr.to_lowercase().contains(word),
            "kvctl {args:?} ({what}): stderr {stderr:?} does not mention {word:?}"
        );
        assert!(
            out.stdout.is_empty(),
            "kvctl {args:?} ({what}) printed on stdout: {:?}",
            text(&out.stdout)
        );
    }

    // Nothing changed: same keyspaces, same epoch, same groups on the nodes, data in place.
    let after = state(&cluster, &mut admin).await;
    assert_eq!(
        after, before,
        "refused changes changed the map or the nodes' groups {diag}"
    );
    let got = client
        .batch_get(
            tenant_keys.iter().map(|(k, _)| k.clone()),
            &ReadOptions {
                keyspace: "dir".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("reading tenants back: {e} {diag}"));
    for ((k, v), got) in tenant_keys.iter().zip(got) {
        let got = got.unwrap_or_else(|| panic!("{k} lost {diag}"));
        assert_eq!(text(&got.value), *v, "{k} {diag}");
        if k.starts_with("tenant-a/") {
            assert_eq!(got.group_id, groups[1], "{k} left tenant-a's group {diag}");
        }
    }

    // With --force the non-empty keyspace goes, its groups leave the nodes, and its name is
    // unknown afterwards.
    let full_groups: Vec<u64> = describe(&mut admin, "full")
        .await
        .unwrap()
        .groups
        .iter()
        .map(|g| g.id)
        .collect();
    let dropped = admin
        .drop_keyspace(DropKeyspaceRequest {
            name: "full".into(),
            force: true,
        })
        .await
        .unwrap_or_else(|e| panic!("drop --force: {e:?} {diag}"))
        .into_inner();
    assert!(
        dropped.epoch > before.0 .0,
        "drop's epoch {} not above {} {diag}",
        dropped.epoch,
        before.0 .0
    );
    let (epoch, keyspaces) = keyspaces_snapshot(&mut admin).await.unwrap();
    assert!(
        epoch >= dropped.epoch,
        "router epoch {epoch} after drop at {}",
        dropped.epoch
    );
    assert!(
        keyspaces.iter().all(|k| k.name != "full"),
        "full still listed after drop: {keyspaces:?}"
    );
    let result = describe(&mut admin, "full").await;
    let status = result.expect_err("describe of a dropped keyspace");
    assert_eq!(
        status
            .metadata()
            .get(meta::ERROR_CODE)
            .and_then(|v| v.to_str().ok()),
        Some(codes::UNKNOWN_KEYSPACE),
        "describe of a dropped keyspace: {status:?}"
    );
    let put = client.put_with("k", "v", &write_opts("full")).await;
    assert!(
        matches!(&put, Err(e) if e.code() == codes::UNKNOWN_KEYSPACE),
        "put in a dropped keyspace: {put:?}"
    );
    wait_for(
        Duration::from_secs(30),
        "the dropped keyspace's groups leave the nodes",
        || async {
            let hosted = cluster.group_ids().await;
            full_groups.iter().all(|g| !hosted.contains(g))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#} {diag}"));
}
