//! The multi-raft transport: one pooled gRPC connection per peer node carries the Raft traffic
//! of every group; each message names its group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_proto::node::raft_client::RaftClient;
use kv_proto::node::{RaftReply, RaftRequest};
use kv_proto::peer::CertRole;
use kv_proto::tls::TlsCerts;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, EntryPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::types::{Entry, GroupId, NodeId, TypeConfig};

/// Largest Raft message: above the client limit, since an append carries many client writes.
pub const RAFT_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Default bytes of entries per AppendEntries message: well under [`RAFT_MAX_MESSAGE_BYTES`]
/// with room for a whole entry of the largest write on top.
pub const DEFAULT_APPEND_BYTES: usize = 4 * 1024 * 1024;

/// One lazily connected channel per peer address, shared by all groups. A tonic `Channel` is an
/// HTTP/2 connection that multiplexes concurrent calls, so one per peer is enough.
#[derive(Clone)]
pub struct PeerPool {
    // std Mutex: held only to look up or insert, never across an await.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Bytes of entries per AppendEntries message ([`fit_entries`]).
    append_bytes: usize,
    /// Dial peers with mutual TLS, expecting node certificates, when set.
    tls: Option<Arc<TlsCerts>>,
}

impl PeerPool {
    pub fn new(append_bytes: usize, tls: Option<Arc<TlsCerts>>) -> Self {
        PeerPool {
            channels: Arc::default(),
            append_bytes,
            tls,
        }
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let ch = kv_proto::tls::channel(endpoint, self.tls.as_ref(), Some(CertRole::Node));
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// How many of `entries`, from the first, fit in `budget` bytes: at least one, so that an entry
/// larger than the budget still goes (alone). Sizes are those of the entries' keys and values
/// plus a fixed overhead, cheap to sum on every append.
pub fn fit_entries(entries: &[Entry], budget: usize) -> usize {
    let mut used = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        used = used.saturating_add(entry_bytes(entry));
        if used > budget && i > 0 {
            return i;
        }
    }
    entries.len()
}

/// The bytes an entry carries, roughly: keys and values, plus a fixed overhead per entry.
fn entry_bytes(entry: &Entry) -> usize {
    const OVERHEAD: usize = 64;
    match &entry.payload {
        EntryPayload::Normal(request) => OVERHEAD + request.bytes(),
        EntryPayload::Blank | EntryPayload::Membership(_) => OVERHEAD,
    }
}

/// Creates a group's connections to its peers.
pub struct GroupNetwork {
    pub group: GroupId,
    pub pool: PeerPool,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            group: self.group,
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
        }
    }
}

/// A group's view of one peer.
pub struct PeerConnection {
    group: GroupId,
    target: NodeId,
    addr: String,
    pool: PeerPool,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self
            .pool
            .channel(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(RAFT_MAX_MESSAGE_BYTES);
        let mut request = tonic::Request::new(RaftRequest {
            group_id: self.group,
            payload: payload.into(),
        });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply: RaftReply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return Err(match status.code() {
                    // The peer is down or cannot be reached: openraft backs off.
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&status)),
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // openraft bounds an append by entry count only: 64 multi-MiB entries to a lagging
        // follower would exceed the message limit on every retry, forever. Send the prefix that
        // fits; the follower's success then only covers that prefix, which openraft takes as a
        // partial success and continues from.
        let mut rpc = rpc;
        let fit = fit_entries(&rpc.entries, self.pool.append_bytes);
        if fit == rpc.entries.len() {
            return self.call(Rpc::Append, &rpc, &option).await;
        }
        rpc.entries.truncate(fit);
        let last = rpc.entries.last().map(|e| e.log_id);
        match self.call(Rpc::Append, &rpc, &option).await? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::types::{LogId, Op, Request};

    fn entry(index: u64, value_bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::Write {
                ops: vec![Op::Put {
                    key: b"k".to_vec(),
                    value: vec![0; value_bytes],
                    expected_version: None,
                }],
                dedup: None,
            }),
        }
    }

    #[test]
    fn appends_are_cut_at_the_byte_budget_but_never_empty() {
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1000)).collect();
        assert_eq!(fit_entries(&entries, usize::MAX), 10);
        assert_eq!(fit_entries(&entries, 3500), 3);
        // One entry larger than the budget still goes, alone.
        assert_eq!(fit_entries(&entries, 10), 1);
        assert_eq!(fit_entries(&[], 10), 0);
    }
}
