//! A router serving its client API over TLS (issue #12): certificates from `kvctl certs
//! create`, `kvctl` and the client library over `https://` with the CA (a client certificate
//! optional), and the refusals: a plaintext client, a client that trusts another CA, https
//! without a CA, and processes started with another role's certificate.

use std::path::Path;
use std::process::Output;

use cluster_tests::cluster::kvctl;
use cluster_tests::ports::free_addr;
use cluster_tests::{Cluster, ClusterOptions};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check(what: &str, out: &Output, code: i32, diag: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {:?} stderr {:?} {diag}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_router_serves_https_clients_and_refuses_the_others() {
    let cluster = Cluster::start(ClusterOptions {
        tls: true,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let certs = cluster
        .certs()
        .expect("a TLS cluster has certificates")
        .to_path_buf();
    let other = cluster.dir().join("other-ca");
    let out = kvctl(
        "http://127.0.0.1:1",
        ["certs", "create", "--dir", &other.display().to_string()],
    )
    .await
    .expect("kvctl runs");
    check("certs create", &out, 0, &diag);
    let addr = cluster.router().addr().to_string();
    let https = cluster.router_endpoint();
    assert_eq!(https, format!("https://{addr}"));
    let ca = path(&certs, "ca.pem");

    let out = kvctl(&https, ["put", "k", "v", "--tls-ca", &ca])
        .await
        .unwrap();
    check("put over https", &out, 0, &diag);
    let out = kvctl(&https, ["get", "k", "--tls-ca", &ca]).await.unwrap();
    check("get over https", &out, 0, &diag);
    assert_eq!(text(&out.stdout), "v\n", "{diag}");
    // With a client certificate as well.
    let out = kvctl(
        &https,
        [
            "get",
            "k",
            "--tls-ca",
            &ca,
            "--tls-cert",
            &path(&certs, "client.pem"),
            "--tls-key",
            &path(&certs, "client-key.pem"),
        ],
    )
    .await
    .unwrap();
    check("get with a client certificate", &out, 0, &diag);

    // Refused: plaintext to a TLS port; a router whose certificate another CA signed; https
    // without a CA to trust.
    let out = kvctl(&format!("http://{addr}"), ["get", "k", "--timeout", "2s"])
        .await
        .unwrap();
    check("plaintext get", &out, 1, &diag);
    let out = kvctl(
        &https,
        [
            "get",
            "k",
            "--timeout",
            "2s",
            "--tls-ca",
            &path(&other, "ca.pem"),
        ],
    )
    .await
    .unwrap();
    check("get trusting another CA", &out, 1, &diag);
    let out = kvctl(&https, ["get", "k"]).await.unwrap();
    check("https without --tls-ca", &out, 1, &diag);
    assert!(
        text(&out.stderr).contains("--tls-ca"),
        "{}",
        text(&out.stderr)
    );

    // The library, as an application would use it.
    let client = kvclient::Client::with_options(
        [https.clone()],
        kvclient::ClientOptions {
            tls: Some(kv_proto::tls::ClientTls {
                ca: certs.join("ca.pem"),
                identity: None,
            }),
            ..Default::default()
        },
    )
    .expect("client");
    client
        .put("lib", "x")
        .await
        .unwrap_or_else(|e| panic!("library put over https: {e} {diag}"));
    let got = client
        .get("lib")
        .await
        .unwrap_or_else(|e| panic!("get: {e} {diag}"));
    assert_eq!(got.map(|v| v.value), Some("x".into()), "{diag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_refuses_a_certificate_of_another_role() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = kvctl(
        "http://127.0.0.1:1",
        [
            "certs",
            "create",
            "--dir",
            &dir.path().display().to_string(),
        ],
    )
    .await
    .expect("kvctl runs");
    check("certs create", &out, 0, "");
    // A router given the node's certificate, and a node given the router's.
    let router = tokio::process::Command::new(cluster_tests::bins::bin_path("kvrouter"))
        .args(["--listen", &free_addr(), "--nodes", "127.0.0.1:1"])
        .args(["--tls-cert", &path(dir.path(), "node.pem")])
        .args(["--tls-key", &path(dir.path(), "node-key.pem")])
        .args(["--tls-ca", &path(dir.path(), "ca.pem")])
        .output();
    let node_dir = dir.path().join("node1");
    let node = tokio::process::Command::new(cluster_tests::bins::bin_path("kvnode"))
        .args(["--id", "1", "--listen", &free_addr()])
        .args(["--data-dir", &node_dir.display().to_string()])
        .args(["--initial-cluster", "1=127.0.0.1:1"])
        .args(["--tls-cert", &path(dir.path(), "router.pem")])
        .args(["--tls-key", &path(dir.path(), "router-key.pem")])
        .args(["--tls-ca", &path(dir.path(), "ca.pem")])
        .output();
    for (what, out, needed) in [
        ("kvrouter", router.await.expect("runs"), "router role"),
        ("kvnode", node.await.expect("runs"), "node role"),
    ] {
        assert!(!out.status.success(), "{what} started: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needed), "{what}: {err}");
    }
}
