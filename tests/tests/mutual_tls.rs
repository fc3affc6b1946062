//! A cluster with TLS on every hop (issue #12): nodes take `Raft` calls from node
//! certificates only and `Node` calls from node or router certificates, both of the cluster's
//! CA. Each attack the outside run made on a plaintext cluster is made here from callers
//! without a cluster certificate (plaintext, another CA, the client certificate, a router
//! certificate on `Raft`), and refused with nothing changed. Then every certificate is
//! replaced while writers and readers run: no call fails, and new connections present the new
//! certificates.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_proto::node::node_client::NodeClient;
use kv_proto::node::raft_client::RaftClient;
use kv_proto::node::{
    write_op, ProposeMapChangeRequest, PutOp, RaftRequest, WriteOp, WriteRequest,
};
use kv_proto::peer::CertRole;
use kv_proto::tls::{ClientAuth, TlsCerts, TlsFiles};
use rustls_pki_types::pem::PemObject;

use cluster_tests::cluster::kvctl;
use cluster_tests::forge::{forged_append, heartbeat, vote};
use cluster_tests::node::node_channel;
use cluster_tests::probe::http_get;
use cluster_tests::{Cluster, ClusterOptions};

/// The files of role `role` in a `kvctl certs create` dir.
fn files(dir: &Path, role: &str) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{role}.pem")),
        key: dir.join(format!("{role}-key.pem")),
        ca: dir.join("ca.pem"),
    }
}

/// Every call an attacker would make to node `addr`, as `who`, for `group` (whose leader is
/// `leader` in `term`, with `last` its last log index). Each must fail; returns the statuses of
/// those that reached the server.
async fn attack(
    who: &str,
    addr: &str,
    tls: Option<&TlsFiles>,
    group: u64,
    (leader, term, last): (u64, u64, u64),
    diag: &str,
) -> Vec<(String, tonic::Status)> {
    let channel = match node_channel(addr, tls).await {
        Ok(c) => c,
        // Refused before any call: the handshake failed.
        Err(_) => return Vec::new(),
    };
    let mut raft = RaftClient::new(channel.clone());
    let mut node = NodeClient::new(channel);
    let raft_request = |payload: Vec<u8>| RaftRequest {
        group_id: group,
        payload: payload.into(),
    };
    let mut statuses = Vec::new();
    let mut refused = |what: &str, result: Result<(), tonic::Status>| match result {
        Ok(()) => panic!("{who}: {what} to {addr} was taken {diag}"),
        Err(status) => statuses.push((what.to_string(), status)),
    };
    refused(
        "append of a forged entry",
        raft.append_entries(raft_request(forged_append(
            term,
            leader,
            last + 1,
            b"k",
            b"forged",
        )))
        .await
        .map(drop),
    );
    refused(
        "vote with term 2^64-1",
        raft.vote(raft_request(vote(u64::MAX, leader)))
            .await
            .map(drop),
    );
    refused(
        "heartbeat with term 2^64-1",
        raft.append_entries(raft_request(heartbeat(u64::MAX, leader)))
            .await
            .map(drop),
    );
    refused(
        "vote with term 2^63 from node 99",
        raft.vote(raft_request(vote(1 << 63, 99))).await.map(drop),
    );
    refused(
        "heartbeat of a fake leader",
        raft.append_entries(raft_request(heartbeat(term + 1, 99)))
            .await
            .map(drop),
    );
    refused(
        "map change dropping a keyspace with data",
        node.propose_map_change(ProposeMapChangeRequest {
            change_json: br#"{"DropKeyspace":{"name":"default"}}"#.to_vec().into(),
            expected_epoch: 0,
        })
        .await
        .map(drop),
    );
    refused(
        "write with an epoch from the future",
        node.write(WriteRequest {
            group_id: group,
            epoch: u64::MAX / 2,
            ops: vec![WriteOp {
                op: Some(write_op::Op::Put(PutOp {
                    key: b"k".to_vec().into(),
                    value: b"forged".to_vec().into(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })
        .await
        .map(drop),
    );
    statuses
}

/// `(leader, term, last log index)` of every group, as node 1 sees it... from each group's
/// leader.
async fn groups(cluster: &Cluster) -> BTreeMap<u64, (u64, u64, u64)> {
    let mut out = BTreeMap::new();
    for (node, status) in cluster.all_group_status().await {
        for g in status.groups {
            if g.leader == node {
                out.insert(g.group_id, (g.leader, g.term, g.last_log_index));
            }
        }
    }
    out
}

async fn metric(addr: &str, line_prefix: &str) -> Option<u64> {
    let (_, body) = http_get(addr, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_cluster_certificate_are_refused_and_change_nothing() {
    let cluster = Cluster::start(ClusterOptions {
        tls: true,
        ..Default::default()
    })
    .await
    .expect("TLS cluster starts");
    let diag = cluster.diag();
    let certs = cluster.certs().expect("certs").to_path_buf();
    let client = cluster.client();
    client
        .put("k", "v1")
        .await
        .unwrap_or_else(|e| panic!("put over mutual TLS: {e} {diag}"));
    let out = cluster.kvctl(["get", "k"]).await.expect("kvctl runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "v1",
        "kvctl get over https: {out:?} {diag}"
    );

    let other = cluster.dir().join("other-ca");
    let out = kvctl(
        "http://127.0.0.1:1",
        ["certs", "create", "--dir", &other.display().to_string()],
    )
    .await
    .expect("kvctl runs");
    assert!(out.status.success(), "{out:?}");

    let before = groups(&cluster).await;
    assert!(
        before.len() > 1,
        "every group has a leader: {before:?} {diag}"
    );
    let stranger = files(&other, "node");
    // The CA certificate is public: an attacker can trust ours and still present its own.
    let stranger_trusting_ours = TlsFiles {
        ca: certs.join("ca.pem"),
        ..stranger.clone()
    };
    let client_cert = files(&certs, "client");
    let router_cert = files(&certs, "router");
    for node in cluster.nodes() {
        let addr = node.addr();
        for (&group, &state) in &before {
            // No certificate, or one from another CA: no call gets through the handshake.
            for (who, tls) in [
                ("plaintext", None),
                ("another CA's node", Some(&stranger)),
                (
                    "another CA's node trusting ours",
                    Some(&stranger_trusting_ours),
                ),
            ] {
                let reached = attack(who, addr, tls, group, state, &diag).await;
                // Those that got as far as a call fail in the transport (the server's TLS
                // alert read as HTTP/2), never with an answer of the node's.
                assert!(
                    reached.iter().all(|(_, s)| s
                        .metadata()
                        .get(kv_proto::meta::ERROR_CODE)
                        .is_none()
                        && matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Internal
                                | tonic::Code::Cancelled
                        )),
                    "{who}: a call reached node {addr}: {reached:?} {diag}"
                );
            }
            // The cluster's own client certificate: every call refused by role.
            let reached = attack(
                "client certificate",
                addr,
                Some(&client_cert),
                group,
                state,
                &diag,
            )
            .await;
            assert_eq!(reached.len(), 7, "{reached:?} {diag}");
            for (what, status) in &reached {
                assert_eq!(
                    status.code(),
                    tonic::Code::PermissionDenied,
                    "{what}: {status:?} {diag}"
                );
                assert_eq!(
                    status
                        .metadata()
                        .get(kv_proto::meta::ERROR_CODE)
                        .and_then(|v| v.to_str().ok()),
                    Some(kv_proto::codes::WRONG_ROLE),
                    "{what}: {status:?}"
                );
                assert!(
                    status.message().contains("client role"),
                    "{what}: {status:?}"
                );
            }
        }
        // A router certificate may call `Node` (that is its job) but never `Raft`.
        let (&group, &(leader, term, _)) = before.iter().next().expect("a group");
        let channel = node_channel(addr, Some(&router_cert))
            .await
            .expect("a router certificate connects");
        let status = RaftClient::new(channel)
            .vote(RaftRequest {
                group_id: group,
                payload: vote(term + 1, leader).into(),
            })
            .await
            .expect_err("a vote from a router certificate");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("Raft service"), "{status:?}");

        let refused = metric(
            node.http_addr(),
            "kvnode_calls_refused_total{service=\"Raft\",reason=\"wrong_role\"}",
        )
        .await;
        assert!(
            refused.unwrap_or(0) >= 6,
            "Raft refusals counted: {refused:?} {diag}"
        );
        let failed = metric(node.http_addr(), "kvnode_tls_handshake_failures_total").await;
        assert!(
            failed.unwrap_or(0) >= 2,
            "failed handshakes counted: {failed:?} {diag}"
        );
    }

    // Nothing changed: the value, the keyspace, and no group adopted a forged term.
    let got = client
        .get("k")
        .await
        .unwrap_or_else(|e| panic!("get after the attacks: {e} {diag}"))
        .expect("k is there");
    assert_eq!(&got.value[..], b"v1", "{diag}");
    let out = cluster
        .kvctl(["keyspace", "list"])
        .await
        .expect("kvctl runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("default"),
        "{out:?} {diag}"
    );
    for (group, (_, term, _)) in groups(&cluster).await {
        assert!(term < 1 << 20, "group {group} reached term {term} {diag}");
    }
    client
        .put("k", "v2")
        .await
        .unwrap_or_else(|e| panic!("put after the attacks: {e} {diag}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_is_replaced_under_load_and_no_call_fails() {
    let cluster = Cluster::start(ClusterOptions {
        tls: true,
        ..Default::default()
    })
    .await
    .expect("TLS cluster starts");
    let diag = cluster.diag();
    let certs = cluster.certs().expect("certs").to_path_buf();
    let client = cluster.client();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let (client, stop, ok) = (client.clone(), stop.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{n}");
                let result = if w % 2 == 0 {
                    client.put(key.clone(), n.to_string()).await.map(drop)
                } else {
                    client.get(format!("w{}-{}", w - 1, n / 2)).await.map(drop)
                };
                match result {
                    Ok(()) => {
                        if w % 2 == 0 {
                            acked.push(key);
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                n += 1;
            }
            (acked, errors)
        }));
    }
    let wait_ops = |target: u64| {
        let ok = ok.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while ok.load(Ordering::Relaxed) < target {
                assert!(tokio::time::Instant::now() < deadline, "traffic stalled");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_ops(200).await;

    let old_router_cert = std::fs::read(certs.join("router.pem")).expect("router.pem");
    let out = kvctl(
        "http://127.0.0.1:1",
        ["certs", "renew", "--dir", &certs.display().to_string()],
    )
    .await
    .expect("kvctl runs");
    assert!(out.status.success(), "certs renew: {out:?}");
    let new_router_cert = std::fs::read(certs.join("router.pem")).expect("router.pem");
    assert_ne!(old_router_cert, new_router_cert);

    // Every process takes the new files without a restart.
    let mut http: Vec<(String, &str)> = cluster
        .nodes()
        .iter()
        .map(|n| (n.http_addr().to_string(), "kvnode_tls_reloads_total "))
        .collect();
    http.push((
        cluster.router().http_addr().to_string(),
        "kvrouter_tls_reloads_total ",
    ));
    for (addr, line) in &http {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if metric(addr, line).await.unwrap_or(0) >= 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{addr} did not reload its certificates {diag}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A new connection to the router is served the new certificate...
    let probe = TlsCerts::load(
        files(&certs, "client"),
        ClientAuth::Required,
        Some(CertRole::Client),
    )
    .expect("client certs load");
    let uri: http::Uri = format!("http://{}", cluster.router().addr())
        .parse()
        .unwrap();
    let mut connector = kv_proto::tls::connector(probe, Some(CertRole::Router));
    let stream = tower_service::Service::call(&mut connector, uri)
        .await
        .unwrap_or_else(|e| panic!("dialing the router after the rotation: {e} {diag}"));
    let served = stream
        .inner()
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .to_vec();
    let expected: Vec<u8> = rustls_pki_types::CertificateDer::pem_slice_iter(&new_router_cert)
        .next()
        .expect("a PEM certificate")
        .expect("parses")
        .to_vec();
    assert_eq!(
        served, expected,
        "the router still serves its old certificate {diag}"
    );
    // ...and a new client, presenting the new client certificate, is served.
    cluster
        .client()
        .put("after-rotation", "1")
        .await
        .unwrap_or_else(|e| panic!("a new client after the rotation: {e} {diag}"));

    let reached = ok.load(Ordering::Relaxed);
    wait_ops(reached + 200).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for worker in workers {
        let (keys, errors) = worker.await.expect("worker");
        assert!(
            errors.is_empty(),
            "calls failed during the rotation: {errors:?} {diag}"
        );
        acked.extend(keys);
    }
    for key in acked.iter().step_by(7) {
        let got = client
            .get(key.clone())
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e} {diag}"));
        assert!(got.is_some(), "acknowledged {key} is lost {diag}");
    }
}
