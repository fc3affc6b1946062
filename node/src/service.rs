//! The gRPC services: `Node` (data RPCs naming a group, cluster map, status) and `Raft` (the
//! multi-raft transport). Handlers stay thin: decode, call [`Node`], encode.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use kv_proto::kv::{Consistency, KeyValue};
use kv_proto::multi::{bounded, call_error};
use kv_proto::node::node_call::Call;
use kv_proto::node::node_call_result::Result as Outcome;
use kv_proto::node::node_server::Node as NodeApi;
use kv_proto::node::raft_server::Raft as RaftApi;
use kv_proto::node::{
    write_op, FenceRequest, FenceResponse, GetClusterMapRequest, GetClusterMapResponse,
    GroupStatus, GroupStatusRequest, GroupStatusResponse, NodeCall, NodeCallResult,
    NodeMultiRequest, NodeMultiResponse, NodeScanRequest, NodeScanResponse,
    ProposeMapChangeRequest, ProposeMapChangeResponse, RaftReply, RaftRequest, ReadRequest,
    ReadResponse, ReadResult, WatchClusterMapRequest, WriteRequest, WriteResponse, WriteResult,
};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response as GrpcResponse, Status};

use crate::error::NodeError;
use crate::keys;
use crate::node::{Group, Node};
use crate::raft_guard;
use crate::types::{
    Dedup, Fence, FenceChange, NodeId, Op, SubWrite, TypeConfig, MAX_REQUEST_ID_BYTES,
};

/// Scan results per group when the request sets no limit, and the most it may ask for.
pub const DEFAULT_SCAN_LIMIT: usize = 1_000;
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// Serves data RPCs.
#[derive(Clone)]
pub struct NodeService {
    pub node: Arc<Node>,
}

fn strong(consistency: i32) -> bool {
    Consistency::try_from(consistency).unwrap_or(Consistency::Strong) != Consistency::Eventual
}

impl NodeService {
    /// Strong reads: leadership confirmed by a quorum and applied up to the read index.
    /// Eventual reads: the session token (`min_applied_index`) and max staleness, if any,
    /// waiting at most `budget`, the caller's remaining time if it sent one.
    async fn read_barrier(
        &self,
        group: &Group,
        consistency: i32,
        min_applied_index: u64,
        max_staleness_ms: u32,
        budget: Option<Duration>,
    ) -> Result<(), NodeError> {
        if strong(consistency) {
            self.node.linearizable(group).await
        } else {
            self.node
                .eventual_read_allowed(group, min_applied_index, max_staleness_ms, budget)
                .await
        }
    }

    /// A write, as the unary handler and a streamed call serve it.
    async fn write_request(&self, req: WriteRequest) -> Result<WriteResponse, NodeError> {
        let group = self.node.group(req.group_id)?;
        let ops = self.decode_ops(req.ops)?;
        self.node
            .check_routing(group.id, req.epoch, ops.iter().map(|op| op.key()))
            .await?;
        // A fence seen already refuses at once. One raised meanwhile still refuses at apply,
        // except that an eventual write may be acknowledged before it is applied.
        if let Some(key) = group.data.fenced(ops.iter().map(|op| op.key())) {
            return Err(self.node.fenced_error(&group, Some(key)));
        }
        let dedup = dedup_of(&req.request_id)?;
        // A conditional write's outcome is only known at apply: always strong.
        let conditional = ops.iter().any(Op::is_conditional);
        let results = if strong(req.consistency) || conditional {
            self.node
                .write_strong(&group, SubWrite { ops, dedup })
                .await?
        } else {
            self.node.write_eventual(&group, ops, dedup).await?
        };
        Ok(WriteResponse {
            results: results
                .into_iter()
                .map(|r| WriteResult {
                    version: r.version,
                    existed: r.existed,
                    condition_failed: r.condition_failed,
                    previous_version: r.previous_version,
                })
                .collect(),
        })
    }

    /// A read within `budget`, the caller's remaining time if it sent one.
    async fn read_request(
        &self,
        req: ReadRequest,
        budget: Option<Duration>,
    ) -> Result<ReadResponse, NodeError> {
        let group = self.node.group(req.group_id)?;
        if req.keys.len() > kv_proto::MAX_BATCH_KEYS {
            return Err(NodeError::TooManyKeys {
                count: req.keys.len(),
                max: kv_proto::MAX_BATCH_KEYS,
            });
        }
        for k in &req.keys {
            self.node.limits.check_key(k).map_err(NodeError::from)?;
        }
        self.node
            .check_routing(group.id, req.epoch, req.keys.iter().map(|k| k.as_ref()))
            .await?;
        self.read_barrier(
            &group,
            req.consistency,
            req.min_applied_index,
            req.max_staleness_ms,
            budget,
        )
        .await?;
        let view = group.data.read_view();
        let applied_index = group.data.applied_index();
        let mut results = Vec::with_capacity(req.keys.len());
        let mut bytes = 0;
        for k in &req.keys {
            results.push(match group.data.get(k).map_err(NodeError::from)? {
                Some((version, value)) => {
                    bytes += value.len();
                    if bytes > kv_proto::MAX_READ_BYTES {
                        return Err(NodeError::ReadTooLarge {
                            max: kv_proto::MAX_READ_BYTES,
                        });
                    }
                    ReadResult {
                        found: true,
                        value: value.into(),
                        version,
                    }
                }
                None => ReadResult::default(),
            });
        }
        drop(view);
        Ok(ReadResponse {
            results,
            served_by: self.node.id,
            applied_index,
        })
    }

    /// Answers one call of a `MultiStream` as the unary handlers would, within the call's
    /// budget, without building a unary request per call (a metadata map and a formatted
    /// `grpc-timeout` that the read handler parses right back).
    fn stream_call(self, call: NodeCall) -> impl Future<Output = NodeCallResult> + Send {
        let NodeCall {
            call,
            timeout_ms: t,
            id,
        } = call;
        let handler = async move {
            let budget = (t > 0).then(|| Duration::from_millis(t.into()));
            match call {
                Some(Call::Write(r)) => Ok(Outcome::Write(self.write_request(r).await?)),
                Some(Call::Read(r)) => Ok(Outcome::Read(self.read_request(r, budget).await?)),
                None => Err(Status::invalid_argument("a call names no request")),
            }
        };
        bounded(t, handler).map(move |outcome| NodeCallResult {
            result: Some(outcome.unwrap_or_else(|s| Outcome::Error(call_error(&s)))),
            id,
        })
    }

    fn decode_ops(&self, ops: Vec<kv_proto::node::WriteOp>) -> Result<Vec<Op>, NodeError> {
        if ops.is_empty() {
            return Err(NodeError::BadRequest(
                "a write needs at least one operation".into(),
            ));
        }
        let bytes: usize = ops
            .iter()
            .map(|op| match &op.op {
                Some(write_op::Op::Put(p)) => p.key.len() + p.value.len(),
                Some(write_op::Op::Delete(d)) => d.key.len(),
                None => 0,
            })
            .sum();
        self.node.limits.check_write_bytes(bytes)?;
        ops.into_iter()
            .map(|op| match op.op {
                Some(write_op::Op::Put(p)) => {
                    self.node.limits.check_key(&p.key)?;
                    self.node.limits.check_value(&p.value)?;
                    Ok(Op::Put {
                        key: p.key.to_vec(),
                        value: p.value.to_vec(),
                        expected_version: p.expected_version,
                    })
                }
                Some(write_op::Op::Delete(d)) => {
                    self.node.limits.check_key(&d.key)?;
                    Ok(Op::Delete {
                        key: d.key.to_vec(),
                        expected_version: d.expected_version,
                    })
                }
                None => Err(NodeError::BadRequest(
                    "write operation without a kind".into(),
                )),
            })
            .collect()
    }
}

/// The dedup record of a write: its request id, stamped with this leader's clock.
fn dedup_of(request_id: &[u8]) -> Result<Option<Dedup>, NodeError> {
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(NodeError::BadRequest(format!(
            "request_id is {} bytes, over the limit of {MAX_REQUEST_ID_BYTES}",
            request_id.len()
        )));
    }
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Some(Dedup {
        id: request_id.to_vec(),
        at_ms,
    }))
}

#[tonic::async_trait]
impl NodeApi for NodeService {
    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<GrpcResponse<WriteResponse>, Status> {
        Ok(GrpcResponse::new(
            self.write_request(request.into_inner()).await?,
        ))
    }

    async fn multi(
        &self,
        request: Request<NodeMultiRequest>,
    ) -> Result<GrpcResponse<NodeMultiResponse>, Status> {
        kv_proto::multi::serve_node(self, request)
            .await
            .map(GrpcResponse::new)
    }

    type MultiStreamStream = kv_proto::multi::Inbound<NodeMultiResponse>;

    async fn multi_stream(
        &self,
        request: Request<tonic::Streaming<NodeMultiRequest>>,
    ) -> Result<GrpcResponse<Self::MultiStreamStream>, Status> {
        let service = self.clone();
        Ok(GrpcResponse::new(kv_proto::multi::serve_stream(
            request.into_inner(),
            move |call| service.clone().stream_call(call),
        )))
    }

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<GrpcResponse<ReadResponse>, Status> {
        let budget = grpc_timeout(request.metadata());
        Ok(GrpcResponse::new(
            self.read_request(request.into_inner(), budget).await?,
        ))
    }

    async fn scan(
        &self,
        request: Request<NodeScanRequest>,
    ) -> Result<GrpcResponse<NodeScanResponse>, Status> {
        let budget = grpc_timeout(request.metadata());
        let req = request.into_inner();
        let group = self.node.group(req.group_id)?;
        self.node
            .limits
            .check_range(&req.start, &req.end)
            .map_err(NodeError::from)?;
        // Keys in a group's tree always belong to it (writes are checked), so a scan checks
        // only that the router's map is current.
        self.node
            .check_routing(group.id, req.epoch, std::iter::empty())
            .await?;
        let limit = match req.limit as usize {
            0 => DEFAULT_SCAN_LIMIT,
            n => n.min(MAX_SCAN_LIMIT),
        };
        self.read_barrier(
            &group,
            req.consistency,
            req.min_applied_index,
            req.max_staleness_ms,
            budget,
        )
        .await?;
        // Off the async workers: a page is thousands of keys under the state machine's read
        // lock, and other requests must not wait behind it.
        let data = group.data.clone();
        let (kvs, more, applied_index) =
            tokio::task::spawn_blocking(move || scan_page(&data, &req, limit))
                .await
                .map_err(|e| NodeError::Fatal(format!("a scan task failed: {e}")))??;
        Ok(GrpcResponse::new(NodeScanResponse {
            kvs,
            more,
            served_by: self.node.id,
            applied_index,
        }))
    }

    async fn get_cluster_map(
        &self,
        _request: Request<GetClusterMapRequest>,
    ) -> Result<GrpcResponse<GetClusterMapResponse>, Status> {
        let map = self.node.map();
        Ok(GrpcResponse::new(GetClusterMapResponse {
            epoch: map.epoch(),
            map_json: map.json.clone().into(),
        }))
    }

    type WatchClusterMapStream =
        Pin<Box<dyn Stream<Item = Result<GetClusterMapResponse, Status>> + Send + 'static>>;

    async fn watch_cluster_map(
        &self,
        request: Request<WatchClusterMapRequest>,
    ) -> Result<GrpcResponse<Self::WatchClusterMapStream>, Status> {
        let from_epoch = request.into_inner().from_epoch;
        // WatchStream yields the current map first, then every change; skip what the watcher
        // already has.
        let stream = WatchStream::new(self.node.subscribe_map())
            .filter(move |m| m.epoch() > from_epoch)
            .map(|m| {
                Ok(GetClusterMapResponse {
                    epoch: m.epoch(),
                    map_json: m.json.clone().into(),
                })
            });
        Ok(GrpcResponse::new(Box::pin(stream)))
    }

    async fn propose_map_change(
        &self,
        request: Request<ProposeMapChangeRequest>,
    ) -> Result<GrpcResponse<ProposeMapChangeResponse>, Status> {
        let req = request.into_inner();
        let map = self
            .node
            .change_map(req.change_json.to_vec(), req.expected_epoch)
            .await?;
        Ok(GrpcResponse::new(ProposeMapChangeResponse {
            epoch: map.epoch(),
            map_json: map.json.clone().into(),
        }))
    }

    async fn fence(
        &self,
        request: Request<FenceRequest>,
    ) -> Result<GrpcResponse<FenceResponse>, Status> {
        let req = request.into_inner();
        let group = self.node.group(req.group_id)?;
        self.node
            .limits
            .check_range(&req.start, &req.end)
            .map_err(NodeError::from)?;
        self.node
            .check_routing(group.id, req.epoch, std::iter::empty())
            .await?;
        let change = if req.raise {
            FenceChange::Raise(Fence {
                start: req.start.to_vec(),
                end: req.end.to_vec(),
                epoch: req.fence_epoch,
                tag: req.tag,
            })
        } else {
            FenceChange::Lift {
                start: req.start.to_vec(),
                end: req.end.to_vec(),
                older_than: req.fence_epoch,
                tag: req.tag,
            }
        };
        let outcome = self.node.fence(&group, change).await?;
        Ok(GrpcResponse::new(FenceResponse {
            holds_keys: outcome.holds_keys,
            fences: outcome.fences.len() as u32,
        }))
    }

    async fn group_status(
        &self,
        _request: Request<GroupStatusRequest>,
    ) -> Result<GrpcResponse<GroupStatusResponse>, Status> {
        let groups = self
            .node
            .groups()
            .iter()
            .map(|g| {
                let m = g.raft.metrics().borrow().clone();
                GroupStatus {
                    group_id: g.id,
                    leader: m.current_leader.unwrap_or(0),
                    term: m.current_term,
                    last_log_index: m.last_log_index.unwrap_or(0),
                    applied_index: m.last_applied.map_or(0, |l| l.index),
                    snapshot_index: m.snapshot.map_or(0, |l| l.index),
                    purged_index: m.purged.map_or(0, |l| l.index),
                    voters: m.membership_config.membership().voter_ids().collect(),
                }
            })
            .collect();
        Ok(GrpcResponse::new(GroupStatusResponse {
            node_id: self.node.id,
            groups,
        }))
    }
}

/// The caller's deadline from the `grpc-timeout` header (digits and a unit: H, M, S, m, u, n).
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(n.saturating_mul(3600))),
        "M" => Some(Duration::from_secs(n.saturating_mul(60))),
        "S" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_millis(n)),
        "u" => Some(Duration::from_micros(n)),
        "n" => Some(Duration::from_nanos(n)),
        _ => None,
    }
}

/// Serves the Raft transport: routes each message to its group's `Raft`.
#[derive(Clone)]
pub struct RaftService {
    pub node: Arc<Node>,
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    bincode::deserialize(payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn reply<T: Serialize>(result: &T) -> Result<GrpcResponse<RaftReply>, Status> {
    let payload = bincode::serialize(result)
        .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
    Ok(GrpcResponse::new(RaftReply {
        payload: payload.into(),
    }))
}

#[tonic::async_trait]
impl RaftApi for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<GrpcResponse<RaftReply>, Status> {
        let req = request.into_inner();
        let group = self.node.group(req.group_id)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.payload)?;
        self.admit(&group, |g| g.check_append(&rpc))?;
        let result = group.raft.append_entries(rpc).await;
        // Accepted from the current leader (a higher vote or a log conflict is not "heard"):
        // the clock that max-staleness reads on this follower go by.
        if matches!(
            result,
            Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
        ) {
            group.freshness.heard_from_leader();
        }
        reply(&result)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<GrpcResponse<RaftReply>, Status> {
        let req = request.into_inner();
        let group = self.node.group(req.group_id)?;
        let rpc: VoteRequest<NodeId> = decode(&req.payload)?;
        self.admit(&group, |g| g.check_vote_request(&rpc))?;
        reply(&group.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<GrpcResponse<RaftReply>, Status> {
        let req = request.into_inner();
        let group = self.node.group(req.group_id)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&req.payload)?;
        self.admit(&group, |g| g.check_snapshot(&rpc))?;
        reply(&group.raft.install_snapshot(rpc).await)
    }
}

impl RaftService {
    /// Runs `check` against the group as this replica sees it: its term, and its replicas in
    /// the cluster map and in its Raft membership (which leads the map while one changes). A
    /// refusal is counted and logged, and openraft never sees the message.
    fn admit(
        &self,
        group: &Group,
        check: impl FnOnce(&raft_guard::Group) -> Result<(), raft_guard::Refusal>,
    ) -> Result<(), NodeError> {
        let map = self.node.map();
        let in_map = map.compiled.map.replicas(group.id).unwrap_or(&[]);
        // Borrowed, not cloned: this runs for every heartbeat and append.
        let metrics_rx = group.raft.metrics();
        let metrics = metrics_rx.borrow();
        let membership = metrics.membership_config.membership();
        let is_replica = |id: NodeId| in_map.contains(&id) || membership.get_node(&id).is_some();
        let outcome = check(&raft_guard::Group {
            id: group.id,
            current_term: metrics.current_term,
            is_replica: &is_replica,
        });
        if let Err(refusal) = &outcome {
            self.node.raft_refused.count(refusal);
            tracing::warn!(group = group.id, "{refusal}");
        }
        outcome.map_err(NodeError::from)
    }
}
/// One page of a scan of `data`: at most `limit` keys and about
/// [`kv_proto::MAX_SCAN_BYTES`], whether more remain, and the applied index it was read at.
fn scan_page(
    data: &crate::storage::GroupData,
    req: &NodeScanRequest,
    limit: usize,
) -> Result<(Vec<KeyValue>, bool, u64), NodeError> {
    let _view = data.read_view();
    let applied_index = data.applied_index();
    let iter = if req.end.is_empty() {
        data.data.range(req.start.as_ref()..)
    } else {
        data.data.range(req.start.as_ref()..req.end.as_ref())
    };
    let mut kvs = Vec::new();
    let mut more = false;
    let mut bytes = 0;
    for item in iter {
        let (k, v) = item.map_err(NodeError::from)?;
        if kvs.len() == limit || bytes >= kv_proto::MAX_SCAN_BYTES {
            more = true;
            break;
        }
        let (version, value) = keys::decode_value(&v)
            .ok_or_else(|| NodeError::Storage(format!("corrupt value under key {k:?}")))?;
        bytes += k.len() + if req.keys_only { 0 } else { value.len() };
        kvs.push(KeyValue {
            key: Bytes::copy_from_slice(&k),
            value: if req.keys_only {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(value)
            },
            version,
        });
    }
    Ok((kvs, more, applied_index))
}
