//! `kvctl keyspace create|list|describe|locate|drop` and `kvctl directory set|get|list|remove`
//! against a real cluster, round trip, with `put/get --keyspace` in between: text and JSON
//! output, exit codes (0 success, 2 absent, 1 error with a message on stderr).

use std::process::Output;

use cluster_tests::{Cluster, ClusterOptions};
use serde_json::Value;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `kvctl ARGS`, checks the exit code, and returns stdout.
async fn run(cluster: &Cluster, args: &[&str], code: i32) -> String {
    let out: Output = cluster.kvctl(args).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "kvctl {args:?}: {:?}, expected exit {code}; stdout {:?}, stderr {:?} {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        cluster.diag()
    );
    if code == 1 {
        assert!(
            !out.stderr.is_empty(),
            "kvctl {args:?} failed without a message"
        );
    }
    text(&out.stdout)
}

async fn run_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let stdout = run(cluster, &all, 0).await;
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("kvctl {all:?} printed {stdout:?}: {e}"))
}

fn group_ids(keyspace: &Value) -> Vec<u64> {
    keyspace["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("no groups in {keyspace}"))
        .iter()
        .map(|g| g["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_keyspace_and_directory_commands_round_trip() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");

    // create prints the keyspace as describe does.
    let out = run(
        &cluster,
        &[
            "keyspace",
            "create",
            "users",
            "--strategy",
            "hash",
            "--shards",
            "3",
        ],
        0,
    )
    .await;
    for line in [
        "keyspace:    users",
        "strategy:    hash",
        "vnodes:      256",
        "groups:      3",
    ] {
        assert!(
            out.contains(line),
            "create printed {out:?}, without {line:?}"
        );
    }
    run(
        &cluster,
        &[
            "keyspace",
            "create",
            "events",
            "--strategy",
            "range",
            "--split-points",
            "g,p",
            "--replication",
            "1",
        ],
        0,
    )
    .await;
    run(
        &cluster,
        &[
            "keyspace",
            "create",
            "tenants",
            "--strategy",
            "directory",
            "--fallback",
            "hash",
            "--shards",
            "2",
        ],
        0,
    )
    .await;
    // Creating one again is an error.
    run(
        &cluster,
        &[
            "keyspace",
            "create",
            "users",
            "--strategy",
            "hash",
            "--shards",
            "3",
        ],
        1,
    )
    .await;

    // list: NAME<TAB>STRATEGY<TAB>GROUPS<TAB>REPLICATION.
    let list = run(&cluster, &["keyspace", "list"], 0).await;
    let lines: Vec<&str> = list.lines().collect();
    for want in [
        "default\thash\t4\t3",
        "users\thash\t3\t3",
        "events\trange\t3\t1",
        "tenants\tdirectory\t2\t3",
    ] {
        assert!(
            lines.contains(&want),
            "keyspace list {list:?} lacks {want:?}"
        );
    }
    let json = run_json(&cluster, &["keyspace", "list"]).await;
    let names: Vec<&str> = json
        .as_array()
        .unwrap_or_else(|| panic!("list -o json: {json}"))
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    for name in ["default", "users", "events", "tenants"] {
        assert!(names.contains(&name), "list -o json names {names:?}");
    }

    // describe, text and JSON.
    let out = run(&cluster, &["keyspace", "describe", "events"], 0).await;
    for part in [
        "strategy:    range",
        "replication: 1",
        "range [-inf, g)",
        "range [g, p)",
        "range [p, +inf)",
    ] {
        assert!(
            out.contains(part),
            "describe events printed {out:?}, without {part:?}"
        );
    }
    let events = run_json(&cluster, &["keyspace", "describe", "events"]).await;
    assert_eq!(events["name"], "events", "{events}");
    assert_eq!(events["strategy"], "range", "{events}");
    assert_eq!(events["replication"], 1, "{events}");
    assert!(events["epoch"].as_u64().is_some_and(|e| e > 0), "{events}");
    let ranges: Vec<(String, String)> = events["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            assert_eq!(g["replicas"].as_array().map(Vec::len), Some(1), "{g}");
            (
                g["range_start"].as_str().unwrap().to_string(),
                g["range_end"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ranges,
        vec![
            (String::new(), "g".into()),
            ("g".into(), "p".into()),
            ("p".into(), String::new())
        ],
        "{events}"
    );
    let users = run_json(&cluster, &["keyspace", "describe", "users"]).await;
    assert_eq!(users["vnodes"], 256, "{users}");
    let share: f64 = users["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["ring_share_percent"].as_f64().unwrap())
        .sum();
    assert!(
        (share - 100.0).abs() < 0.01,
        "ring shares sum to {share}: {users}"
    );
    let user_groups = group_ids(&users);
    run(&cluster, &["keyspace", "describe", "no-such-keyspace"], 1).await;

    // Data commands with --keyspace: keyspaces are separate key spaces.
    run(&cluster, &["put", "k1", "v1", "--keyspace", "users"], 0).await;
    assert_eq!(
        run(&cluster, &["get", "k1", "--keyspace", "users"], 0).await,
        "v1\n"
    );
    run(&cluster, &["get", "k1"], 2).await;
    run(&cluster, &["get", "k1", "--keyspace", "events"], 2).await;
    run(
        &cluster,
        &["put", "k1", "v1", "--keyspace", "no-such-keyspace"],
        1,
    )
    .await;
    let located = run(&cluster, &["keyspace", "locate", "users", "k1"], 0).await;
    let (key, group) = located
        .trim_end()
        .split_once('\t')
        .unwrap_or_else(|| panic!("keyspace locate printed {located:?}"));
    assert_eq!(key, "k1");
    let group: u64 = group.parse().unwrap();
    assert!(
        user_groups.contains(&group),
        "k1 located in {group}, not a users group {user_groups:?}"
    );

    // Directory table round trip.
    let tenants = run_json(&cluster, &["keyspace", "describe", "tenants"]).await;
    assert_eq!(tenants["fallback"], "hash", "{tenants}");
    assert_eq!(tenants["separator"], "/", "{tenants}");
    let tenant_groups = group_ids(&tenants);
    let g = tenant_groups[1].to_string();
    assert_eq!(
        run(
            &cluster,
            &["directory", "set", "tenants", "tenant-a", &g],
            0
        )
        .await,
        "OK\n"
    );
    assert_eq!(
        run(&cluster, &["directory", "get", "tenants", "tenant-a"], 0).await,
        format!("{g}\n")
    );
    run(&cluster, &["directory", "get", "tenants", "tenant-z"], 2).await;
    assert_eq!(
        run(&cluster, &["directory", "list", "tenants"], 0).await,
        format!("tenant-a\t{g}\n")
    );
    let entries = run_json(&cluster, &["directory", "list", "tenants"]).await;
    assert_eq!(
        entries,
        serde_json::json!([{ "directory": "tenant-a", "group_id": tenant_groups[1] }]),
        "directory list -o json"
    );
    let out = run(&cluster, &["keyspace", "describe", "tenants"], 0).await;
    assert!(
        out.contains("directory:   1"),
        "describe tenants printed {out:?}"
    );
    run(
        &cluster,
        &["directory", "set", "tenants", "tenant-a", "9999"],
        1,
    )
    .await;
    run(
        &cluster,
        &[
            "directory",
            "set",
            "users",
            "tenant-a",
            &user_groups[0].to_string(),
        ],
        1,
    )
    .await;

    run(
        &cluster,
        &["put", "tenant-a/doc", "d1", "--keyspace", "tenants"],
        0,
    )
    .await;
    assert_eq!(
        run(
            &cluster,
            &["keyspace", "locate", "tenants", "tenant-a/doc"],
            0
        )
        .await,
        format!("tenant-a/doc\t{g}\n")
    );
    let got = run_json(&cluster, &["get", "tenant-a/doc", "--keyspace", "tenants"]).await;
    assert_eq!(got["value"], "d1", "{got}");
    // The directory holds a key: its entry can be neither moved nor removed.
    let other = tenant_groups[0].to_string();
    run(
        &cluster,
        &["directory", "set", "tenants", "tenant-a", &other],
        1,
    )
    .await;
    run(&cluster, &["directory", "remove", "tenants", "tenant-a"], 1).await;
    // Once empty, it can.
    run(
        &cluster,
        &["delete", "tenant-a/doc", "--keyspace", "tenants"],
        0,
    )
    .await;
    assert_eq!(
        run(
            &cluster,
            &["directory", "set", "tenants", "tenant-a", &other],
            0
        )
        .await,
        "OK\n"
    );
    assert_eq!(
        run(&cluster, &["directory", "remove", "tenants", "tenant-a"], 0).await,
        "OK\n"
    );
    assert_eq!(
        run(&cluster, &["directory", "list", "tenants"], 0).await,
        ""
    );
    run(&cluster, &["directory", "get", "tenants", "tenant-a"], 2).await;
    run(&cluster, &["directory", "remove", "tenants", "tenant-a"], 1).await;

    // drop: refused while the keyspace holds keys, done with --force; an empty one needs none.
    run(&cluster, &["keyspace", "drop", "users"], 1).await;
    assert_eq!(
        run(&cluster, &["keyspace", "drop", "users", "--force"], 0).await,
        "OK\n"
    );
    let dropped = run_json(&cluster, &["keyspace", "drop", "events"]).await;
    assert_eq!(dropped["dropped"], true, "{dropped}");
    assert!(
        dropped["epoch"].as_u64().is_some_and(|e| e > 0),
        "{dropped}"
    );
    run(&cluster, &["keyspace", "describe", "users"], 1).await;
    run(&cluster, &["get", "k1", "--keyspace", "users"], 1).await;
    run(&cluster, &["keyspace", "drop", "default", "--force"], 1).await;
    let list = run(&cluster, &["keyspace", "list"], 0).await;
    let names: Vec<&str> = list.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(
        names,
        vec!["default", "tenants"],
        "keyspace list after drops: {list:?}"
    );
}
