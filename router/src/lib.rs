//! `kvrouter`: the stateless front door of the store. It serves the public `kv.v1.Kv` API,
//! works out which shard group holds each key from a cached cluster map, and sends each request
//! to that group's leader, retrying across replicas until the request's deadline.
//!
//! Modules, in the order a request meets them:
//!
//! - [`service`](crate::service) and [`admin`](crate::admin): the gRPC handlers of `Kv` and
//!   `Admin`; thin, they only fix the deadline, call the router and count outcomes.
//! - `keyspaces`: keyspace and directory administration: answers from the cached map, changes
//!   proposed to the meta group after checking the data they would strand.
//! - `routing`: validation, placement and the one retry loop every node RPC goes through
//!   (leader cache, `NOT_LEADER` redirects, backoff across replicas).
//! - `fanout`: pure helpers for requests spanning groups: batch splitting and reassembly,
//!   scan merging.
//! - `retry`: pure policy: which node errors are worth retrying, backoff, deadlines.
//! - `map_cache`: the cluster map, followed with `WatchClusterMap`, polled as a fallback, and
//!   read on demand when a node says a request was routed with an old one.
//! - `leader`: which replica leads each group, as far as the router knows.
//! - `session`: session tokens (merging, the per-group entry an eventual read must have
//!   applied) and the order in which eventual reads try replicas.
//! - `pool`: one lazily connected gRPC channel per node.
//! - [`auth`]: who a caller is (bearer token or client certificate) and what its roles grant;
//!   `users`: the user, role and token admin calls; [`audit`]: the audit log.
//! - [`error`]: [`RouterError`], and the single function that turns it into a gRPC status.
//! - `http` and `metrics`: `/health`, `/ready`, `/metrics`.
//! - [`config`]: [`Config`] and the duration syntax of the flags.
//!
//! Placement itself (hash ring, keyspaces) lives in the `shardmap` crate, shared with nodes and
//! clients so that they can never disagree.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
#[cfg(test)]
mod fake_node;
mod fanout;
mod http;
mod keyspaces;
mod leader;
mod map_cache;
mod metrics;
mod pool;
mod retry;
mod routing;
pub mod service;
mod session;
mod users;

use std::sync::Arc;

use kv_proto::kv::admin_server::AdminServer;
use kv_proto::kv::kv_server::KvServer;
use kv_proto::peer::CertRole;
use kv_proto::tls::{ClientAuth, TlsCerts};
use kv_proto::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{parse_duration, Config, DurationParseError};
pub use error::{to_status, RouterError};

use admin::AdminService;
use map_cache::MapCache;
use metrics::Metrics;
use pool::NodePool;
use routing::Router;
use service::KvService;

/// How often the TLS files are checked for a rotation.
pub const TLS_RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the router on `listener` until `shutdown` is cancelled: loads the cluster map, follows
/// it with `WatchClusterMap` and polls it as a fallback in the background, serves the `/health`, `/ready` and `/metrics` endpoints when
/// `config.http` is set, and serves the `Kv` and `Admin` APIs. Requests that arrive before the first map is
/// loaded wait for it until their deadline.
///
/// Returns once the gRPC server has drained and the background tasks have stopped.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    if config.nodes.is_empty() {
        return Err(RouterError::Config(
            "at least one node address is needed (--nodes)".to_string(),
        ));
    }
    let local = listener.local_addr()?;
    // Stops the background tasks however this function returns.
    let stop = shutdown.child_token();
    let _stop_on_return = stop.clone().drop_guard();
    // One set of certificates serves clients (whose certificates are optional: they may
    // authenticate with tokens) and dials nodes (which require this router's certificate).
    let tls = match &config.tls {
        Some(files) => Some(
            TlsCerts::load(files.clone(), ClientAuth::Optional, Some(CertRole::Router))
                .map_err(|e| RouterError::Config(e.to_string()))?,
        ),
        None => None,
    };
    if let Some(tls) = &tls {
        tokio::spawn(
            tls.clone()
                .watch(TLS_RELOAD_POLL, stop.clone().cancelled_owned()),
        );
    }

    let metrics = Arc::new(Metrics::default());
    let pool = Arc::new(NodePool::new(tls.clone()));
    let maps = Arc::new(MapCache::new(config.nodes.clone()));

    let http_task = match &config.http {
        Some(addr) => {
            let http_listener = TcpListener::bind(addr).await?;
            tracing::info!("kvrouter http endpoints on {}", http_listener.local_addr()?);
            Some(tokio::spawn(http::serve(
                http_listener,
                maps.clone(),
                metrics.clone(),
                tls.clone(),
                stop.clone(),
            )))
        }
        None => None,
    };
    let refresher = tokio::spawn(maps.clone().run_refresher(
        pool.clone(),
        metrics.clone(),
        config.map_refresh_interval,
        stop.clone(),
    ));

    let watcher = tokio::spawn(maps.clone().run_watcher(
        pool.clone(),
        metrics.clone(),
        stop.clone(),
    ));

    let router = Arc::new(Router::new(maps, pool, metrics.clone(), config.limits));
    let admin = AdminService::new(router.clone(), metrics.clone(), config.request_timeout);
    let service = KvService::new(router, metrics, config.request_timeout);
    let incoming = kv_proto::tls::incoming(listener, tls);
    let mut server = tonic::transport::Server::builder();
    tracing::info!(nodes = ?config.nodes, tls = config.tls.is_some(), "kvrouter listening on {local}");
    let served = server
        .add_service(
            KvServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServer::new(admin)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
        .await;

    stop.cancel();
    if let Err(e) = refresher.await {
        tracing::warn!(error = %e, "map refresher ended abnormally");
    }
    if let Err(e) = watcher.await {
        tracing::warn!(error = %e, "map watcher ended abnormally");
    }
    if let Some(task) = http_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "http server failed"),
            Err(e) => tracing::warn!(error = %e, "http server ended abnormally"),
        }
    }
    tracing::info!("kvrouter stopped");
    served.map_err(RouterError::Serve)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use kv_proto::kv::kv_client::KvClient;
    use kv_proto::kv::{GetRequest, PutRequest};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::fake_node::FakeCluster;

    async fn http_get(addr: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    fn free_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn serves_the_kv_api_and_http_endpoints_until_shutdown() {
        let cluster = FakeCluster::start(3, 4).await;
        cluster.set_leader(1);
        let http = free_port();
        let mut config = Config::new(cluster.addrs.clone());
        config.http = Some(http.clone());
        config.map_refresh_interval = Duration::from_millis(100);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(run(config, listener, shutdown.clone()));

        let mut client = KvClient::connect(format!("http://{addr}")).await.unwrap();
        let put = PutRequest {
            key: Bytes::from_static(b"hello"),
            value: Bytes::from_static(b"world"),
            ..Default::default()
        };
        client.put(put).await.unwrap();
        let got = client
            .get(GetRequest {
                key: Bytes::from_static(b"hello"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, Bytes::from_static(b"world"));

        let err = client.get(GetRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let code = err.metadata().get(kv_proto::meta::ERROR_CODE).unwrap();
        assert_eq!(code.to_str().unwrap(), kv_proto::codes::INVALID_KEY);

        assert!(http_get(&http, "/health").await.starts_with("HTTP/1.1 200"));
        assert!(http_get(&http, "/ready").await.starts_with("HTTP/1.1 200"));
        let metrics = http_get(&http, "/metrics").await;
        assert!(
            metrics.contains("kvrouter_requests_total{method=\"Get\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("kvrouter_errors_total{method=\"Get\"} 1"),
            "{metrics}"
        );

        shutdown.cancel();
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn not_ready_until_a_map_is_loaded() {
        let http = free_port();
        let mut config = Config::new(vec!["127.0.0.1:1".to_string()]);
        config.http = Some(http.clone());
        config.request_timeout = Duration::from_millis(200);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(run(config, listener, shutdown.clone()));
        let mut client = KvClient::connect(format!("http://{addr}")).await.unwrap();
        let err = client
            .get(GetRequest {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(http_get(&http, "/ready").await.starts_with("HTTP/1.1 503"));
        shutdown.cancel();
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn serves_admin_beside_kv_and_a_change_reaches_other_routers_within_a_second() {
        use kv_proto::kv::admin_client::AdminClient;
        use kv_proto::kv::{
            CreateKeyspaceRequest, DescribeKeyspaceRequest, KeyspaceSpec, ListKeyspacesRequest,
        };

        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(2);
        let shutdown = CancellationToken::new();
        let mut addrs = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..2 {
            let mut config = Config::new(cluster.addrs.clone());
            // Only the watch can bring the change in time.
            config.map_refresh_interval = Duration::from_secs(600);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(format!("http://{}", listener.local_addr().unwrap()));
            servers.push(tokio::spawn(run(config, listener, shutdown.clone())));
        }
        let mut first = AdminClient::connect(addrs[0].clone()).await.unwrap();
        let mut second = AdminClient::connect(addrs[1].clone()).await.unwrap();
        // Both routers have loaded the first map.
        for client in [&mut first, &mut second] {
            let listed = client
                .list_keyspaces(ListKeyspacesRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(listed.keyspaces.len(), 1);
        }

        let created = first
            .create_keyspace(CreateKeyspaceRequest {
                spec: Some(KeyspaceSpec {
                    name: "events".into(),
                    strategy: "range".into(),
                    split_points: vec![Bytes::from_static(b"m")],
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let info = created.keyspace.unwrap();
        assert_eq!(info.strategy, "range");
        assert_eq!(info.groups[0].range_end, Bytes::from_static(b"m"));
        let started = std::time::Instant::now();
        loop {
            let listed = second
                .list_keyspaces(ListKeyspacesRequest {})
                .await
                .unwrap()
                .into_inner();
            if listed.epoch >= created.epoch {
                assert!(listed.keyspaces.iter().any(|k| k.name == "events"));
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the change did not reach the second router within a second"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let err = second
            .create_keyspace(CreateKeyspaceRequest {
                spec: Some(KeyspaceSpec {
                    name: "x".into(),
                    strategy: "modulo".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("modulo"), "{}", err.message());
        let err = second
            .describe_keyspace(DescribeKeyspaceRequest {
                name: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        let mut kv = KvClient::connect(addrs[1].clone()).await.unwrap();
        let put = kv
            .put(PutRequest {
                keyspace: "events".into(),
                key: Bytes::from_static(b"z"),
                value: Bytes::from_static(b"1"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(put.group_id, info.groups[1].id);

        shutdown.cancel();
        drop((first, second, kv));
        for server in servers {
            tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}
