//! The storage node: many openraft groups per process on one sled database.
//!
//! - [`node`]: the runtime: configuration, hosted groups, bootstrap, reads and writes.
//! - [`service`]: the gRPC services (data RPCs per group, the Raft transport).
//! - [`read_index`]: one strong read's read-index round, and the read floor of a leadership
//!   restored at startup.
//! - [`batch`]: concurrent requests of a group gathered into shared rounds (strong writes
//!   into Raft entries, strong reads into read-index rounds).
//! - [`network`]: the outgoing multi-raft transport, one connection per peer node.
//! - [`storage`]: the segment-file Raft log, the sled state machine and group commit.
//! - [`keys`]: the on-disk layout.
//! - [`types`]: the Raft type configuration and log commands.
//! - [`error`]: the node's errors and their mapping to gRPC statuses.
//! - [`freshness`]: how recently each replica heard from its leader (max staleness).
//! - [`http`]: health, readiness and metrics.
//! - [`peer_roles`]: which certificate roles may call `Raft` and `Node` under TLS.
//! - [`supervise`]: a group whose Raft core stops at run time stops the node.

// openraft's StorageError is large and is the error type its traits demand.
#![allow(clippy::result_large_err)]

pub mod batch;
pub mod error;
pub mod freshness;
pub mod http;
pub mod keys;
pub mod network;
pub mod node;
pub mod peer_roles;
pub mod raft_guard;
pub mod read_index;
pub mod service;
pub mod storage;
pub mod supervise;
pub mod types;

use kv_proto::node::node_server::NodeServer;
use kv_proto::node::raft_server::RaftServer;
use kv_proto::MAX_MESSAGE_BYTES;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use peer_roles::{RoleCheck, Service};

pub use node::{NodeConfig, RaftTuning};

/// How often the TLS files are checked for a rotation.
pub const TLS_RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a node until `shutdown` is cancelled: starts its groups, then serves gRPC on `listener`
/// and HTTP on `http` if given.
pub async fn run(
    config: NodeConfig,
    listener: tokio::net::TcpListener,
    http: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), error::NodeError> {
    let node = node::Node::start(config, shutdown.clone()).await?;
    tokio::spawn(supervise::watch_groups(node.clone(), shutdown.clone()));
    if let Some(tls) = &node.tls {
        tokio::spawn(
            tls.clone()
                .watch(TLS_RELOAD_POLL, shutdown.clone().cancelled_owned()),
        );
    }
    if let Some(http) = http {
        let (node, shutdown) = (node.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = http::serve(http, node, shutdown).await {
                tracing::error!(error = %e, "http server");
            }
        });
    }
    let tls = node.tls.clone();
    let enforce = tls.is_some();
    let node_svc = NodeServer::new(service::NodeService { node: node.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let raft_svc = RaftServer::new(service::RaftService { node: node.clone() })
        .max_decoding_message_size(network::RAFT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(network::RAFT_MAX_MESSAGE_BYTES);
    let roles = |svc| RoleCheck::new(svc, enforce, node.roles_refused.clone());
    let served = tonic::transport::Server::builder()
        .add_service(InterceptedService::new(node_svc, roles(Service::Node)))
        .add_service(InterceptedService::new(raft_svc, roles(Service::Raft)))
        .serve_with_incoming_shutdown(kv_proto::tls::incoming(listener, tls), shutdown.cancelled())
        .await;
    node.shutdown().await;
    served.map_err(|e| error::NodeError::Fatal(format!("grpc server: {e}")))?;
    match node.storage_failure() {
        Some(why) => Err(error::NodeError::Fatal(why)),
        None => Ok(()),
    }
}
