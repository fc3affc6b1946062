//! Authentication and authorization through a real router, in front of a cluster started with
//! `kvnode --bootstrap-admin-token-file`: who is refused, with which status, code and message;
//! what each grant allows; that the admin can do everything; that refusals and admin changes
//! reach the audit log; and that `kvctl` exits 1 with the reason on stderr.

use std::process::Output;
use std::time::Duration;

use cluster_tests::cluster::{cleanup_dir, test_dir};
use cluster_tests::ports::free_addr;
use cluster_tests::probe::http_get;
use cluster_tests::{kvctl, Cluster, ClusterOptions, RouterProcess};
use kvclient::{
    codes, Client, ClientOptions, Error, Grant, KeyspaceSpec, ReadOptions, ScanOptions,
    WriteOptions,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn client(endpoint: &str, token: Option<&str>, coalesce: bool) -> Client {
    Client::with_options(
        [endpoint.to_string()],
        ClientOptions {
            token: token.map(Into::into),
            coalesce,
            timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

fn ks_read(keyspace: &str) -> ReadOptions {
    ReadOptions {
        keyspace: keyspace.into(),
        ..Default::default()
    }
}

fn ks_write(keyspace: &str) -> WriteOptions {
    WriteOptions {
        keyspace: keyspace.into(),
        ..Default::default()
    }
}

fn ks_scan(keyspace: &str) -> ScanOptions {
    ScanOptions {
        keyspace: keyspace.into(),
        ..Default::default()
    }
}

/// Panics unless `result` is `UNAUTHENTICATED` whose message mentions `reason`.
#[track_caller]
fn unauthenticated<T: std::fmt::Debug>(what: &str, result: Result<T, Error>, reason: &str) {
    match result {
        Err(e @ Error::Unauthenticated { .. }) => {
            assert_eq!(e.code(), codes::UNAUTHENTICATED, "{what}: {e}");
            assert!(e.to_string().contains(reason), "{what}: {e}");
        }
        other => panic!("{what}: expected UNAUTHENTICATED ({reason}), got {other:?}"),
    }
}

/// Panics unless `result` is `PERMISSION_DENIED` whose message names every one of `parts`.
#[track_caller]
fn denied<T: std::fmt::Debug>(what: &str, result: Result<T, Error>, parts: &[&str]) {
    match result {
        Err(e @ Error::PermissionDenied { .. }) => {
            assert_eq!(e.code(), codes::PERMISSION_DENIED, "{what}: {e}");
            let message = e.to_string();
            for part in parts {
                assert!(message.contains(part), "{what}: {message:?} lacks {part:?}");
            }
        }
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    }
}

fn expect_exit(what: &str, out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {:?}, stderr {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// One cluster, one router with an audit log, every rule of the auth checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_and_allows_as_granted_and_audits() {
    let dir = test_dir("auth").expect("test dir");
    let token_file = dir.join("admin-token");
    // The bootstrap token, made as an operator would.
    let out = kvctl(
        "http://127.0.0.1:1",
        [
            "auth".as_ref(),
            "token-new".as_ref(),
            "--file".as_ref(),
            token_file.as_os_str(),
        ],
    )
    .await
    .unwrap();
    expect_exit("auth token-new", &out, 0);
    let admin_token = text(&out.stdout).trim().to_string();
    assert!(admin_token.starts_with("kvt_"), "{admin_token}");
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        admin_token
    );

    let cluster = Cluster::start(ClusterOptions {
        routers: 0,
        shards: 2,
        node_args: vec![
            "--bootstrap-admin-token-file".into(),
            token_file.display().to_string(),
        ],
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts");
    let audit_path = dir.join("audit.log");
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.addr().to_string())
        .collect();
    let mut router = RouterProcess::new(
        "router-audit",
        free_addr(),
        free_addr(),
        &nodes,
        cluster.logs_dir().join("router-audit.log"),
    )
    .with_args(["--audit-log".to_string(), audit_path.display().to_string()]);
    router.start().expect("router starts");
    router
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("router ready");
    let endpoint = router.endpoint();

    let anonymous = client(&endpoint, None, true);
    let admin = client(&endpoint, Some(&admin_token), true);

    // No credential, a malformed one, an unknown one, a known id with the wrong secret.
    unauthenticated("get, no token", anonymous.get("k").await, "no credential");
    unauthenticated(
        "list keyspaces, no token",
        anonymous.list_keyspaces().await,
        "no credential",
    );
    unauthenticated(
        "malformed token",
        client(&endpoint, Some("hunter2"), true).get("k").await,
        "malformed token",
    );
    let unknown = "kvt_0011223344556677_".to_string() + &"ab".repeat(32);
    unauthenticated(
        "unknown token",
        client(&endpoint, Some(&unknown), true).get("k").await,
        "unknown or revoked token",
    );
    let admin_id = &admin_token[4..20];
    let forged = format!("kvt_{admin_id}_{}", "cd".repeat(32));
    unauthenticated(
        "wrong secret",
        client(&endpoint, Some(&forged), false).get("k").await,
        "invalid token",
    );

    // The admin may do everything.
    let me = admin.who_am_i().await.unwrap();
    assert_eq!(
        (me.user.as_str(), me.admin, me.auth_enabled),
        ("admin", true, true)
    );
    for name in ["ka", "kb"] {
        admin
            .create_keyspace(&KeyspaceSpec::hash(name, 1))
            .await
            .unwrap();
    }
    admin.put_with("x", "1", &ks_write("ka")).await.unwrap();
    admin.put_with("t1/x", "1", &ks_write("kb")).await.unwrap();
    admin.put_with("t2/x", "2", &ks_write("kb")).await.unwrap();

    // A read-only role on keyspace ka; a read-write role on the prefix t1/ of keyspace kb.
    admin.create_role("reader-a", false).await.unwrap();
    let read_a = Grant {
        keyspace: "ka".into(),
        prefix: Default::default(),
        access: "read".into(),
    };
    admin.grant("reader-a", &read_a).await.unwrap();
    admin.create_role("tenant1", false).await.unwrap();
    let t1 = Grant {
        keyspace: "kb".into(),
        prefix: "t1/".into(),
        access: "read-write".into(),
    };
    let role = admin.grant("tenant1", &t1).await.unwrap();
    assert_eq!(role.grants, vec![t1.clone()]);
    let (alice, alice_token) = admin
        .create_user("alice", &["reader-a".into()], true, 0)
        .await
        .unwrap();
    assert_eq!(alice.roles, ["reader-a"]);
    let alice_token = alice_token.expect("a token");
    let (_, bob_token) = admin
        .create_user("bob", &["tenant1".into()], true, 0)
        .await
        .unwrap();
    let bob_token = bob_token.expect("a token");
    let (users, enabled) = admin.list_users().await.unwrap();
    assert!(enabled);
    assert_eq!(
        users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["admin", "alice", "bob"]
    );
    // Tokens are listed by id, never with their secret.
    assert_eq!(users[1].tokens.len(), 1);
    assert_eq!(users[1].tokens[0].id, alice_token[4..20]);

    for coalesce in [true, false] {
        let alice = client(&endpoint, Some(&alice_token), coalesce);
        // Read-only: reads ka, cannot write it, cannot read kb.
        let got = alice.get_with("x", &ks_read("ka")).await.unwrap();
        assert_eq!(got.unwrap().value, "1");
        assert_eq!(
            alice.scan("", "", &ks_scan("ka")).await.unwrap().kvs.len(),
            1
        );
        denied(
            "read-only put",
            alice.put_with("x", "2", &ks_write("ka")).await,
            &["alice", "Put", "\"x\"", "\"ka\"", "write"],
        );
        denied(
            "read-only delete",
            alice.delete_with("x", &ks_write("ka")).await,
            &["alice", "Delete"],
        );
        denied(
            "keyspace a role reads b",
            alice.get_with("t1/x", &ks_read("kb")).await,
            &["alice", "Get", "\"kb\"", "read"],
        );
        denied(
            "keyspace a role scans b",
            alice.scan("", "", &ks_scan("kb")).await,
            &["alice", "Scan", "\"kb\""],
        );
        denied(
            "the default keyspace is a keyspace too",
            alice.get("x").await,
            &["\"default\""],
        );

        // A prefix grant allows keys under it only.
        let bob = client(&endpoint, Some(&bob_token), coalesce);
        bob.put_with("t1/y", "3", &ks_write("kb")).await.unwrap();
        assert!(bob
            .get_with("t1/x", &ks_read("kb"))
            .await
            .unwrap()
            .is_some());
        denied(
            "outside the prefix",
            bob.get_with("t2/x", &ks_read("kb")).await,
            &["bob", "\"t2/x\""],
        );
        denied(
            "write outside the prefix",
            bob.put_with("t2/y", "3", &ks_write("kb")).await,
            &["bob", "Put"],
        );
        let page = bob.scan("t1/", "t10", &ks_scan("kb")).await.unwrap();
        assert_eq!(page.kvs.len(), 2, "{page:?}");
        denied(
            "a scan beyond the prefix",
            bob.scan("t1/", "", &ks_scan("kb")).await,
            &["bob", "Scan"],
        );
        denied(
            "a batch with one key outside",
            bob.batch_put([("t1/a", "1"), ("t2/a", "1")], &ks_write("kb"))
                .await,
            &["bob", "BatchPut", "2 keys"],
        );
        denied(
            "a batch read with one key outside",
            bob.batch_get(["t1/x", "t2/x"], &ks_read("kb")).await,
            &["bob", "BatchGet"],
        );

        // Admin-only operations by a data role.
        denied(
            "create keyspace",
            alice.create_keyspace(&KeyspaceSpec::hash("kc", 1)).await,
            &["alice", "CreateKeyspace", "\"kc\"", "an admin role"],
        );
        denied(
            "drop keyspace",
            alice.drop_keyspace("kb", true).await,
            &["alice", "DropKeyspace"],
        );
        denied(
            "create user",
            alice
                .create_user("mallory", &["tenant1".into()], true, 0)
                .await,
            &["alice", "CreateUser", "\"mallory\""],
        );
        denied(
            "grant itself more",
            alice.grant("reader-a", &t1).await,
            &["alice", "Grant"],
        );
        denied(
            "list users",
            alice.list_users().await,
            &["alice", "ListUsers"],
        );
        // Listing keyspaces needs only a known caller.
        assert!(alice.list_keyspaces().await.unwrap().len() >= 3);
        assert_eq!(alice.who_am_i().await.unwrap().user, "alice");
    }
    // Nothing the refusals tried happened.
    assert_eq!(
        admin
            .get_with("x", &ks_read("ka"))
            .await
            .unwrap()
            .unwrap()
            .value,
        "1"
    );
    assert!(admin
        .get_with("t2/y", &ks_read("kb"))
        .await
        .unwrap()
        .is_none());
    assert!(admin.describe_keyspace("kc").await.is_err());
    assert_eq!(admin.list_users().await.unwrap().0.len(), 3);

    // An expired token, then a revoked one.
    let short = admin.issue_token("bob", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    unauthenticated(
        "expired token",
        client(&endpoint, Some(&short.token), true)
            .get_with("t1/x", &ks_read("kb"))
            .await,
        "expired",
    );
    // A token that expires while its stream is open stops working on that stream too (the
    // router remembers a verified token per stream, but only until it expires).
    let expiring = admin.issue_token("bob", 1_500).await.unwrap();
    let expiring_stream = client(&endpoint, Some(&expiring.token), true);
    assert!(expiring_stream
        .get_with("t1/x", &ks_read("kb"))
        .await
        .unwrap()
        .is_some());
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    unauthenticated(
        "token expired on an open stream",
        expiring_stream.get_with("t1/x", &ks_read("kb")).await,
        "expired",
    );
    // A stream opened before the revocation is checked call by call, so it stops too.
    let open_stream = client(&endpoint, Some(&bob_token), true);
    assert!(open_stream
        .get_with("t1/x", &ks_read("kb"))
        .await
        .unwrap()
        .is_some());
    admin.revoke_token(&bob_token).await.unwrap();
    unauthenticated(
        "revoked token",
        client(&endpoint, Some(&bob_token), true)
            .get_with("t1/x", &ks_read("kb"))
            .await,
        "unknown or revoked token",
    );
    unauthenticated(
        "revoked token on an open stream",
        open_stream.get_with("t1/x", &ks_read("kb")).await,
        "unknown or revoked token",
    );
    // The admin cannot lock everyone out.
    let refused = admin.revoke_token(admin_id).await.unwrap_err();
    assert!(refused.to_string().contains("locking every"), "{refused}");

    // kvctl: exit 1 and the reason on stderr.
    let out = kvctl(&endpoint, ["get", "x", "--keyspace", "ka"])
        .await
        .unwrap();
    expect_exit("kvctl get without a token", &out, 1);
    assert!(
        text(&out.stderr).contains("unauthenticated"),
        "{}",
        text(&out.stderr)
    );
    let out = kvctl(
        &endpoint,
        [
            "--token",
            alice_token.as_str(),
            "put",
            "x",
            "9",
            "--keyspace",
            "ka",
        ],
    )
    .await
    .unwrap();
    expect_exit("kvctl put by a reader", &out, 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("permission denied") && stderr.contains("alice"),
        "{stderr}"
    );
    let out = kvctl(
        &endpoint,
        [
            "get",
            "x",
            "--keyspace",
            "ka",
            "--token",
            alice_token.as_str(),
        ],
    )
    .await
    .unwrap();
    expect_exit("kvctl get by a reader", &out, 0);
    assert_eq!(text(&out.stdout), "1\n");
    let out = tokio::process::Command::new(cluster_tests::bins::bin_path("kvctl"))
        .args([
            "--router",
            endpoint.as_str(),
            "user",
            "token",
            "alice",
            "-o",
            "json",
        ])
        .env("KVCTL_TOKEN", &admin_token)
        .output()
        .await
        .unwrap();
    expect_exit("kvctl user token (token from KVCTL_TOKEN)", &out, 0);
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(issued["token"].as_str().unwrap().starts_with("kvt_"));
    let out = kvctl(&endpoint, ["--token", admin_token.as_str(), "role", "list"])
        .await
        .unwrap();
    expect_exit("kvctl role list", &out, 0);
    assert!(
        text(&out.stdout).contains("tenant1\t-\tkb:t1/*:read-write"),
        "{}",
        text(&out.stdout)
    );

    // kvctl bench sends the token too (it builds clients of its own).
    let out = kvctl(
        &endpoint,
        [
            "--token",
            admin_token.as_str(),
            "bench",
            "--workload",
            "mixed",
            "--concurrency",
            "4",
            "--duration",
            "1s",
            "--keys",
            "50",
            "-o",
            "json",
        ],
    )
    .await
    .unwrap();
    expect_exit("kvctl bench with a token", &out, 0);
    let bench: serde_json::Value = serde_json::from_slice(
        out.stdout
            .rsplit(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bench["errors"], 0, "bench with a token: {bench}");
    assert!(bench["ops_per_s"].as_f64().unwrap() > 0.0, "{bench}");

    // The admin can drop what it made.
    admin.drop_keyspace("kb", true).await.unwrap();

    // Denials are counted by reason.
    let (_, metrics) = http_get(router.http_addr(), "/metrics")
        .await
        .expect("metrics");
    for reason in [
        "forbidden",
        "no_credential",
        "expired_token",
        "unknown_token",
    ] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "kvrouter_auth_denied_total{{reason=\"{reason}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no {reason} line"));
        let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count > 0, "{line}");
    }

    // The audit log: a line per refusal and per admin change, with who, what and why.
    let lines: Vec<serde_json::Value> = {
        let mut lines = Vec::new();
        for _ in 0..100 {
            let raw = std::fs::read_to_string(&audit_path).unwrap_or_default();
            lines = raw
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect();
            if lines
                .iter()
                .any(|l: &serde_json::Value| l["action"] == "DropKeyspace")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lines
    };
    let find = |action: &str, identity: &str, outcome: &str| {
        lines
            .iter()
            .find(|l| l["action"] == action && l["identity"] == identity && l["outcome"] == outcome)
    };
    let put = find("Put", "alice", "denied").expect("the denied put is audited");
    assert!(put["target"].as_str().unwrap().contains("\"ka\""), "{put}");
    assert!(
        put["reason"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{put}"
    );
    assert!(
        put["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{put}"
    );
    assert!(put["time_ms"].as_u64().unwrap() > 0, "{put}");
    let create = find("CreateKeyspace", "admin", "ok").expect("the admin change is audited");
    assert_eq!(create["target"], "keyspace \"ka\"");
    assert!(find("CreateUser", "admin", "ok").is_some());
    assert!(
        find("RevokeToken", "admin", "failed").is_some(),
        "refused changes too"
    );
    let anon = find("Get", "anonymous", "denied").expect("anonymous refusals");
    assert!(anon["reason"].as_str().unwrap().contains("no credential"));
    // Tokens are named by id, never by their secret.
    let raw = std::fs::read_to_string(&audit_path).unwrap();
    for secret in [&admin_token[21..], &alice_token[21..], &bob_token[21..]] {
        assert!(!raw.contains(secret), "a token secret is in the audit log");
    }

    drop(router);
    drop(cluster);
    cleanup_dir(&dir);
}

/// An empty or malformed bootstrap token file stops the first start with a clear error.
#[tokio::test]
async fn a_bad_bootstrap_token_file_is_refused() {
    let dir = test_dir("auth-bad-token").expect("test dir");
    for (i, (content, expect)) in [("", "empty"), ("password123\n", "kvt_")]
        .into_iter()
        .enumerate()
    {
        let file = dir.join(format!("token{i}"));
        std::fs::write(&file, content).unwrap();
        let addr = free_addr();
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(cluster_tests::bins::bin_path("kvnode"))
                .args(["--id", "1", "--listen", addr.as_str(), "--shards", "1"])
                .args(["--replication", "1"])
                .arg("--data-dir")
                .arg(dir.join(format!("data{i}")))
                .arg("--initial-cluster")
                .arg(format!("1={addr}"))
                .arg("--bootstrap-admin-token-file")
                .arg(&file)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("kvnode exits")
        .unwrap();
        assert!(!out.status.success(), "kvnode started with {content:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("--bootstrap-admin-token-file") && stderr.contains(expect),
            "{stderr}"
        );
    }
    cleanup_dir(&dir);
}

/// Over TLS a client certificate (role `client`) is an identity: its common name is the user,
/// known only once a user of that name exists; a token sent beside it wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_user() {
    let dir = test_dir("auth-cert").expect("test dir");
    let token_file = dir.join("admin-token");
    let out = kvctl(
        "http://127.0.0.1:1",
        [
            "auth".as_ref(),
            "token-new".as_ref(),
            "--file".as_ref(),
            token_file.as_os_str(),
        ],
    )
    .await
    .unwrap();
    expect_exit("auth token-new", &out, 0);
    let admin_token = text(&out.stdout).trim().to_string();
    let cluster = Cluster::start(ClusterOptions {
        shards: 1,
        tls: true,
        node_args: vec![
            "--bootstrap-admin-token-file".into(),
            token_file.display().to_string(),
        ],
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts");
    // `kvctl certs create` names the client certificate `kvclient`.
    let cert = cluster.client();
    unauthenticated(
        "an unknown certificate user",
        cert.get("k").await,
        "\"kvclient\"",
    );
    let no_cert = cluster.client_with(ClientOptions {
        tls: cluster.client_tls().map(|t| kv_proto::tls::ClientTls {
            identity: None,
            ..t
        }),
        ..ClientOptions::default()
    });
    unauthenticated(
        "TLS without a certificate",
        no_cert.get("k").await,
        "no credential",
    );

    let admin = cluster.client_with(ClientOptions {
        token: Some(admin_token.as_str().into()),
        ..ClientOptions::default()
    });
    assert_eq!(
        admin.who_am_i().await.unwrap().user,
        "admin",
        "the token wins"
    );
    admin.put("k", "v").await.unwrap();
    admin.create_role("reader", false).await.unwrap();
    let read_all = Grant {
        keyspace: String::new(),
        prefix: Default::default(),
        access: "read".into(),
    };
    admin.grant("reader", &read_all).await.unwrap();
    let (_, token) = admin
        .create_user("kvclient", &["reader".into()], false, 0)
        .await
        .unwrap();
    assert!(token.is_none());

    assert_eq!(cert.who_am_i().await.unwrap().user, "kvclient");
    assert_eq!(cert.get("k").await.unwrap().unwrap().value, "v");
    denied(
        "a read-only certificate user writes",
        cert.put("k", "w").await,
        &["\"kvclient\"", "Put", "write"],
    );
    drop(cluster);
    cleanup_dir(&dir);
}
