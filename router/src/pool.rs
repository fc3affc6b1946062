//! One lazily connected gRPC channel per node address, and one coalescer per node that
//! carries concurrent reads and writes to it as shared `Multi` requests.
//!
//! A tonic `Channel` multiplexes any number of concurrent requests over one HTTP/2
//! connection and reconnects by itself, so the pool only has to create each one once. The map
//! sits behind a `std::sync::Mutex`: it is held only to look up or insert a cheap clone, never
//! across an `.await`, so an async mutex would only add cost.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use kv_proto::multi::{self, Answer, Mux, Outbound};
use kv_proto::node::node_call_result::Result as Outcome;
use kv_proto::node::node_client::NodeClient;
use kv_proto::node::{
    node_call, NodeCall, NodeCallResult, NodeMultiRequest, NodeMultiResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};
use kv_proto::peer::CertRole;
use kv_proto::tls::TlsCerts;
use kv_proto::MAX_MESSAGE_BYTES;
use tonic::transport::{Channel, Endpoint};

use crate::error::RouterError;

/// How long opening a TCP connection to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads and writes bound for one node, carried over one shared `MultiStream` call.
#[derive(Debug)]
pub struct NodeCalls(Mux<NodeMultiRequest, NodeMultiResponse>);

// Plain functions returning the call's future with its answer mapped, rather than `async fn`s
// or `async` blocks awaiting it: each of those would keep a second copy of the future inside
// its own (the one it was handed and the one it awaits), and every router request holds and
// moves this one.
impl NodeCalls {
    /// Runs one read; `budget` becomes the call's `timeout_ms`, and the caller bounds the wait.
    pub fn read(
        &self,
        request: ReadRequest,
        budget: Duration,
    ) -> impl Future<Output = Result<tonic::Response<ReadResponse>, tonic::Status>> + '_ {
        self.call(node_call::Call::Read(request), budget)
            .map(|answer| match answer?.outcome()? {
                Outcome::Read(r) => Ok(tonic::Response::new(r)),
                _ => Err(tonic::Status::internal(
                    "the node answered a read with another kind",
                )),
            })
    }

    /// Runs one write, as [`NodeCalls::read`].
    pub fn write(
        &self,
        request: WriteRequest,
        budget: Duration,
    ) -> impl Future<Output = Result<tonic::Response<WriteResponse>, tonic::Status>> + '_ {
        self.call(node_call::Call::Write(request), budget)
            .map(|answer| match answer?.outcome()? {
                Outcome::Write(r) => Ok(tonic::Response::new(r)),
                _ => Err(tonic::Status::internal(
                    "the node answered a write with another kind",
                )),
            })
    }

    fn call(
        &self,
        call: node_call::Call,
        budget: Duration,
    ) -> impl Future<Output = Result<NodeCallResult, tonic::Status>> + '_ {
        self.0.call(NodeCall {
            call: Some(call),
            timeout_ms: multi::timeout_ms(budget),
            id: 0,
        })
    }
}

/// What the router holds for one node: its client, and the call stream beside it. Handed out
/// behind an `Arc`: every node request takes one, and cloning the client (a channel of several
/// senders) for requests that go over `calls` would cost more than the request's own routing.
#[derive(Debug)]
pub struct NodeConn {
    pub client: NodeClient<Channel>,
    pub calls: Arc<NodeCalls>,
}

/// Node connections by address (`HOST:PORT`).
#[derive(Debug, Default)]
pub struct NodePool {
    clients: Mutex<HashMap<String, Arc<NodeConn>>>,
    /// Dial nodes with mutual TLS, expecting node certificates, when set.
    tls: Option<Arc<TlsCerts>>,
}

impl NodePool {
    pub fn new(tls: Option<Arc<TlsCerts>>) -> NodePool {
        NodePool {
            clients: Mutex::default(),
            tls,
        }
    }

    /// The client for `addr`; see [`NodePool::conn`].
    pub fn client(&self, addr: &str) -> Result<NodeClient<Channel>, RouterError> {
        self.conn(addr).map(|c| c.client.clone())
    }

    /// The connection to `addr`, creating its channel and coalescer on first use (no I/O
    /// happens here; the connection is opened by the first request).
    pub fn conn(&self, addr: &str) -> Result<Arc<NodeConn>, RouterError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(conn) = clients.get(addr) {
            return Ok(conn.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|source| {
            RouterError::BadAddress {
                addr: addr.to_string(),
                source,
            }
        })?;
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = kv_proto::tls::channel(endpoint, self.tls.as_ref(), Some(CertRole::Node));
        let client = NodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let conn = Arc::new(NodeConn {
            calls: Arc::new(coalescer(client.clone())),
            client,
        });
        clients.insert(addr.to_string(), conn.clone());
        Ok(conn)
    }
}

/// Opens the node's `MultiStream` on the shared channel when the first call needs it.
fn coalescer(client: NodeClient<Channel>) -> NodeCalls {
    NodeCalls(Mux::new(move |outbound: Outbound<NodeMultiRequest>| {
        let mut client = client.clone();
        multi::opening(async move { client.multi_stream(tonic::Request::new(outbound)).await })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reuses_clients_and_rejects_bad_addresses() {
        let pool = NodePool::default();
        assert!(pool.client("127.0.0.1:1").is_ok());
        assert!(pool.client("127.0.0.1:1").is_ok());
        assert_eq!(pool.clients.lock().unwrap().len(), 1);
        assert!(matches!(
            pool.client("not a uri"),
            Err(RouterError::BadAddress { .. })
        ));
    }
}
