//! One lazily connected gRPC channel per node address.
//!
//! A tonic `Channel` multiplexes any number of concurrent requests over one HTTP/2
//! connection and reconnects by itself, so the pool only has to create each one once. The map
//! sits behind a `std::sync::Mutex`: it is held only to look up or insert a cheap clone, never
//! across an `.await`, so an async mutex would only add cost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kv_proto::node::node_client::NodeClient;
use kv_proto::MAX_MESSAGE_BYTES;
use tonic::transport::{Channel, Endpoint};

use crate::error::RouterError;

/// How long opening a TCP connection to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Node clients by address (`HOST:PORT`).
#[derive(Debug, Default)]
pub struct NodePool {
    clients: Mutex<HashMap<String, NodeClient<Channel>>>,
}

impl NodePool {
    /// The client for `addr`, creating its channel on first use (no I/O happens here; the
    /// connection is opened by the first request).
    pub fn client(&self, addr: &str) -> Result<NodeClient<Channel>, RouterError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(addr) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|source| {
            RouterError::BadAddress {
                addr: addr.to_string(),
                source,
            }
        })?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let client = NodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }
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
