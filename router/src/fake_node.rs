//! A fake storage cluster for the router's tests: real gRPC `Node` servers on loopback that
//! share one in-memory store (one key space per group), with a switchable leader, error
//! injection, the map checks a real node makes (`STALE_EPOCH`, `WRONG_GROUP`), map changes
//! through `ProposeMapChange` and map streams through `WatchClusterMap`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;
use kv_proto::kv::KeyValue;
use kv_proto::node::node_server::{Node, NodeServer};
use kv_proto::node::{
    write_op, FenceRequest, FenceResponse, GetClusterMapRequest, GetClusterMapResponse,
    GroupStatusRequest, GroupStatusResponse, NodeScanRequest, NodeScanResponse,
    ProposeMapChangeRequest, ProposeMapChangeResponse, ReadRequest, ReadResponse, ReadResult,
    WatchClusterMapRequest, WriteRequest, WriteResponse, WriteResult,
};
use kv_proto::{codes, meta};
use shardmap::{ClusterMap, CompiledMap, GroupId, MapChange, MapError, NodeId};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, WatchStream};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

/// One group's keys: value and version.
pub type GroupData = BTreeMap<Bytes, (Bytes, u64)>;

/// A fence as a real group keeps it (see the node's `types::Fence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeFence {
    pub group: GroupId,
    pub start: Bytes,
    pub end: Bytes,
    pub epoch: u64,
    pub tag: u64,
}

impl FakeFence {
    fn covers(&self, key: &[u8]) -> bool {
        key >= &self.start[..] && (self.end.is_empty() || key < &self.end[..])
    }
}

/// State shared by every fake node.
#[derive(Debug)]
pub struct Shared {
    pub data: Mutex<BTreeMap<GroupId, GroupData>>,
    pub index: AtomicU64,
    /// The node that accepts requests (0: none, everyone answers NO_QUORUM).
    pub leader: AtomicU64,
    /// Whether NOT_LEADER errors carry the leader hint.
    pub hints: AtomicU64,
    /// The nodes' cluster map; watchers see every change.
    pub map: watch::Sender<Option<CompiledMap>>,
    /// Data requests received, by any node.
    pub calls: AtomicU64,
    /// The groups scanned or fenced (an emptiness check), in the order the calls arrived.
    pub scans: Mutex<Vec<GroupId>>,
    /// Fences raised, as a real group keeps them: (group, start, end, epoch, tag).
    pub fences: Mutex<Vec<FakeFence>>,
    /// Map changes proposed (accepted or not).
    pub proposals: AtomicU64,
    /// Non-zero: map changes are answered `NO_QUORUM` (a meta group that cannot commit).
    pub refuse_proposals: AtomicU64,
    /// Nodes that refuse eventual reads carrying a session token, as `LAGGING`.
    pub lagging: Mutex<Vec<NodeId>>,
    /// Nodes that refuse eventual reads with a max staleness, as `STALE_REPLICA`.
    pub stale: Mutex<Vec<NodeId>>,
    /// The nodes that served eventual reads, in order.
    pub eventual_reads: Mutex<Vec<NodeId>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            data: Mutex::default(),
            index: AtomicU64::new(0),
            leader: AtomicU64::new(0),
            hints: AtomicU64::new(0),
            map: watch::Sender::new(None),
            calls: AtomicU64::new(0),
            scans: Mutex::default(),
            fences: Mutex::default(),
            proposals: AtomicU64::new(0),
            refuse_proposals: AtomicU64::new(0),
            lagging: Mutex::default(),
            stale: Mutex::default(),
            eventual_reads: Mutex::default(),
        }
    }
}

impl Shared {
    fn map(&self) -> Option<CompiledMap> {
        self.map.borrow().clone()
    }
}

#[derive(Debug, Clone)]
struct FakeNode {
    id: NodeId,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

fn status(code: Code, error_code: &'static str) -> Status {
    status_msg(code, error_code, error_code.to_lowercase())
}

fn status_msg(code: Code, error_code: &'static str, message: String) -> Status {
    let mut s = Status::new(code, message);
    s.metadata_mut()
        .insert(meta::ERROR_CODE, MetadataValue::from_static(error_code));
    s
}

fn map_response(map: &ClusterMap) -> GetClusterMapResponse {
    GetClusterMapResponse {
        epoch: map.epoch,
        map_json: serde_json::to_vec(map).unwrap().into(),
    }
}

impl FakeNode {
    fn check_leader(&self) -> Result<(), Status> {
        self.shared.calls.fetch_add(1, Ordering::Relaxed);
        let leader = self.shared.leader.load(Ordering::Relaxed);
        if leader == self.id {
            return Ok(());
        }
        if leader == 0 {
            return Err(status(Code::Unavailable, codes::NO_QUORUM));
        }
        let mut s = status(Code::Unavailable, codes::NOT_LEADER);
        if self.shared.hints.load(Ordering::Relaxed) != 0 {
            s.metadata_mut()
                .insert(meta::LEADER_ID, MetadataValue::from(leader));
            let addr = self
                .shared
                .map()
                .and_then(|m| m.map.node_addr(leader).map(str::to_string));
            if let Some(addr) = addr.and_then(|a| MetadataValue::try_from(a).ok()) {
                s.metadata_mut().insert(meta::LEADER_ADDR, addr);
            }
        }
        Err(s)
    }

    /// What a real node checks before serving a data request for `keys` of `group` routed
    /// with map `epoch`.
    fn check_routing<'k>(
        &self,
        group: GroupId,
        epoch: u64,
        keys: impl IntoIterator<Item = &'k Bytes>,
    ) -> Result<CompiledMap, Status> {
        let map = self
            .shared
            .map()
            .ok_or_else(|| status(Code::Unavailable, codes::NOT_READY))?;
        let Some(key_set_epoch) = map.key_set_epoch(group) else {
            return Err(status(Code::NotFound, codes::UNKNOWN_GROUP));
        };
        if epoch != 0 && epoch < key_set_epoch {
            return Err(status(Code::Aborted, codes::STALE_EPOCH));
        }
        for key in keys {
            if !map.owns(group, key).unwrap_or(false) {
                return Err(status(Code::Aborted, codes::WRONG_GROUP));
            }
        }
        Ok(map)
    }
}

type MapStream = Pin<Box<dyn Stream<Item = Result<GetClusterMapResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Node for FakeNode {
    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        self.check_leader()?;
        let req = request.into_inner();
        let keys: Vec<Bytes> = req
            .ops
            .iter()
            .filter_map(|op| match &op.op {
                Some(write_op::Op::Put(p)) => Some(p.key.clone()),
                Some(write_op::Op::Delete(d)) => Some(d.key.clone()),
                None => None,
            })
            .collect();
        self.check_routing(req.group_id, req.epoch, &keys)?;
        let fenced = self
            .shared
            .fences
            .lock()
            .unwrap()
            .iter()
            .any(|f| f.group == req.group_id && keys.iter().any(|k| f.covers(k)));
        if fenced {
            return Err(status(Code::Aborted, codes::STALE_EPOCH));
        }
        let mut all = self.shared.data.lock().unwrap();
        let data = all.entry(req.group_id).or_default();
        let index = self.shared.index.fetch_add(1, Ordering::Relaxed) + 1;
        let mut results = Vec::new();
        for op in req.ops {
            let (key, value, expected) = match op.op {
                Some(write_op::Op::Put(p)) => (p.key, Some(p.value), p.expected_version),
                Some(write_op::Op::Delete(d)) => (d.key, None, d.expected_version),
                None => return Err(Status::invalid_argument("empty op")),
            };
            let previous = data.get(&key).map(|(_, v)| *v).unwrap_or(0);
            if expected.is_some_and(|e| e != previous) {
                results.push(WriteResult {
                    condition_failed: true,
                    previous_version: previous,
                    ..Default::default()
                });
                continue;
            }
            match value {
                Some(v) => data.insert(key, (v, index)),
                None => data.remove(&key),
            };
            results.push(WriteResult {
                version: index,
                existed: previous != 0,
                condition_failed: false,
                previous_version: previous,
            });
        }
        Ok(Response::new(WriteResponse { results }))
    }

    async fn multi(
        &self,
        request: Request<kv_proto::node::NodeMultiRequest>,
    ) -> Result<Response<kv_proto::node::NodeMultiResponse>, Status> {
        kv_proto::multi::serve_node(self, request)
            .await
            .map(Response::new)
    }

    type MultiStreamStream = kv_proto::multi::Inbound<kv_proto::node::NodeMultiResponse>;

    async fn multi_stream(
        &self,
        request: Request<tonic::Streaming<kv_proto::node::NodeMultiRequest>>,
    ) -> Result<Response<Self::MultiStreamStream>, Status> {
        Ok(Response::new(kv_proto::multi::serve_node_stream(
            self.clone(),
            request,
        )))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let req = request.into_inner();
        if req.consistency == kv_proto::kv::Consistency::Eventual as i32 {
            // Any replica serves eventual reads, unless it lags behind the session token or
            // is staler than the read's bound.
            self.shared.calls.fetch_add(1, Ordering::Relaxed);
            if req.min_applied_index > 0 && self.shared.lagging.lock().unwrap().contains(&self.id) {
                return Err(status(Code::Unavailable, codes::LAGGING));
            }
            if req.max_staleness_ms > 0 && self.shared.stale.lock().unwrap().contains(&self.id) {
                return Err(status_msg(
                    Code::Unavailable,
                    codes::STALE_REPLICA,
                    format!(
                        "replica last heard from its leader longer ago than the read's max \
                         staleness of {} ms",
                        req.max_staleness_ms
                    ),
                ));
            }
            self.shared.eventual_reads.lock().unwrap().push(self.id);
        } else {
            self.check_leader()?;
        }
        self.check_routing(req.group_id, req.epoch, &req.keys)?;
        let all = self.shared.data.lock().unwrap();
        let empty = GroupData::new();
        let data = all.get(&req.group_id).unwrap_or(&empty);
        let results = req
            .keys
            .iter()
            .map(|k| match data.get(k) {
                Some((v, ver)) => ReadResult {
                    found: true,
                    value: v.clone(),
                    version: *ver,
                },
                None => ReadResult::default(),
            })
            .collect();
        Ok(Response::new(ReadResponse {
            results,
            served_by: self.id,
            applied_index: self.shared.index.load(Ordering::Relaxed),
        }))
    }

    async fn scan(
        &self,
        request: Request<NodeScanRequest>,
    ) -> Result<Response<NodeScanResponse>, Status> {
        self.check_leader()?;
        let req = request.into_inner();
        self.check_routing(req.group_id, req.epoch, [])?;
        self.shared.scans.lock().unwrap().push(req.group_id);
        let all = self.shared.data.lock().unwrap();
        let mut kvs = Vec::new();
        let mut more = false;
        if let Some(data) = all.get(&req.group_id) {
            for (k, (v, ver)) in data.range(req.start.clone()..) {
                if !req.end.is_empty() && *k >= req.end {
                    break;
                }
                if kvs.len() == req.limit as usize {
                    more = true;
                    break;
                }
                kvs.push(KeyValue {
                    key: k.clone(),
                    value: if req.keys_only {
                        Bytes::new()
                    } else {
                        v.clone()
                    },
                    version: *ver,
                });
            }
        }
        Ok(Response::new(NodeScanResponse {
            kvs,
            more,
            served_by: self.id,
            applied_index: 0,
        }))
    }

    async fn get_cluster_map(
        &self,
        _: Request<GetClusterMapRequest>,
    ) -> Result<Response<GetClusterMapResponse>, Status> {
        match self.shared.map() {
            Some(map) => Ok(Response::new(map_response(&map.map))),
            None => Err(status(Code::Unavailable, codes::NOT_READY)),
        }
    }

    type WatchClusterMapStream = MapStream;

    async fn watch_cluster_map(
        &self,
        request: Request<WatchClusterMapRequest>,
    ) -> Result<Response<MapStream>, Status> {
        let mut last = request.into_inner().from_epoch;
        let updates = WatchStream::new(self.shared.map.subscribe()).filter_map(move |map| {
            let map = map?;
            (map.map.epoch > last).then(|| {
                last = map.map.epoch;
                Ok(map_response(&map.map))
            })
        });
        let updates = futures::StreamExt::take_until(updates, self.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(updates)))
    }

    async fn fence(
        &self,
        request: Request<FenceRequest>,
    ) -> Result<Response<FenceResponse>, Status> {
        self.check_leader()?;
        let req = request.into_inner();
        self.check_routing(req.group_id, req.epoch, [])?;
        let mut fences = self.shared.fences.lock().unwrap();
        let mut holds_keys = false;
        if req.raise {
            self.shared.scans.lock().unwrap().push(req.group_id);
            let fence = FakeFence {
                group: req.group_id,
                start: req.start,
                end: req.end,
                epoch: req.fence_epoch,
                tag: req.tag,
            };
            let all = self.shared.data.lock().unwrap();
            holds_keys = all
                .get(&req.group_id)
                .is_some_and(|data| data.keys().any(|k| fence.covers(k)));
            if !fences.contains(&fence) {
                fences.push(fence);
            }
        } else {
            let within = |f: &FakeFence| {
                f.start >= req.start
                    && (req.end.is_empty() || (!f.end.is_empty() && f.end <= req.end))
            };
            fences.retain(|f| {
                let lifted = f.group == req.group_id
                    && within(f)
                    && (f.epoch < req.fence_epoch || (req.tag != 0 && f.tag == req.tag));
                !lifted
            });
        }
        let count = fences.iter().filter(|f| f.group == req.group_id).count();
        Ok(Response::new(FenceResponse {
            holds_keys,
            fences: count as u32,
        }))
    }

    async fn propose_map_change(
        &self,
        request: Request<ProposeMapChangeRequest>,
    ) -> Result<Response<ProposeMapChangeResponse>, Status> {
        self.shared.proposals.fetch_add(1, Ordering::Relaxed);
        self.check_leader()?;
        if self.shared.refuse_proposals.load(Ordering::Relaxed) != 0 {
            return Err(status(Code::Unavailable, codes::NO_QUORUM));
        }
        let req = request.into_inner();
        let change: MapChange = serde_json::from_slice(&req.change_json)
            .map_err(|e| Status::invalid_argument(format!("undecodable change: {e}")))?;
        let mut result = Err(status(Code::Unavailable, codes::NOT_READY));
        self.shared.map.send_if_modified(|current| {
            let Some(map) = current else {
                return false;
            };
            if req.expected_epoch != 0 && req.expected_epoch != map.map.epoch {
                result = Err(status(Code::Aborted, codes::STALE_EPOCH));
                return false;
            }
            match map.map.apply(&change) {
                Ok(next) => {
                    result = Ok(ProposeMapChangeResponse {
                        epoch: next.epoch,
                        map_json: serde_json::to_vec(&next).unwrap().into(),
                    });
                    *current = Some(CompiledMap::new(next).unwrap());
                    true
                }
                Err(e) => {
                    result = Err(match &e {
                        MapError::UnknownKeyspace(_) => status_msg(
                            Code::InvalidArgument,
                            codes::UNKNOWN_KEYSPACE,
                            e.to_string(),
                        ),
                        MapError::KeyspaceExists(_) => {
                            status_msg(Code::AlreadyExists, codes::KEYSPACE_EXISTS, e.to_string())
                        }
                        _ => status_msg(
                            Code::InvalidArgument,
                            codes::INVALID_MAP_CHANGE,
                            e.to_string(),
                        ),
                    });
                    false
                }
            }
        });
        result.map(Response::new)
    }

    async fn group_status(
        &self,
        _: Request<GroupStatusRequest>,
    ) -> Result<Response<GroupStatusResponse>, Status> {
        Ok(Response::new(GroupStatusResponse {
            node_id: self.id,
            groups: vec![],
        }))
    }
}

/// A running fake cluster of `n` nodes (ids 1..=n), `shards` hash groups on all of them.
pub struct FakeCluster {
    pub shared: Arc<Shared>,
    pub addrs: Vec<String>,
    pub map: ClusterMap,
    stop: CancellationToken,
    node_stops: Vec<CancellationToken>,
}

impl FakeCluster {
    pub async fn start(n: u64, shards: u32) -> FakeCluster {
        let shared = Arc::new(Shared::default());
        shared.hints.store(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let mut nodes = Vec::new();
        let mut node_stops = Vec::new();
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let node_stop = stop.child_token();
            let node = FakeNode {
                id,
                shared: shared.clone(),
                stop: node_stop.clone(),
            };
            let serve_stop = node_stop.clone();
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(NodeServer::new(node))
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listener),
                        serve_stop.cancelled_owned(),
                    )
                    .await
                    .unwrap();
            });
            nodes.push((id, addr));
            node_stops.push(node_stop);
        }
        let map = ClusterMap::bootstrap(&nodes, shards, n.min(3) as usize).unwrap();
        shared
            .map
            .send_replace(Some(CompiledMap::new(map.clone()).unwrap()));
        FakeCluster {
            shared,
            addrs: nodes.into_iter().map(|(_, a)| a).collect(),
            map,
            stop,
            node_stops,
        }
    }

    pub fn set_leader(&self, id: NodeId) {
        self.shared.leader.store(id, Ordering::Relaxed);
    }

    /// The nodes' current map.
    pub fn current_map(&self) -> ClusterMap {
        self.shared.map().unwrap().map
    }

    /// Applies `change` to the nodes' map directly (as if through another router).
    pub fn change_map(&self, change: &MapChange) -> ClusterMap {
        let next = self.current_map().apply(change).unwrap();
        self.shared
            .map
            .send_replace(Some(CompiledMap::new(next.clone()).unwrap()));
        next
    }

    /// Stores a key in `group` directly.
    pub fn insert(&self, group: GroupId, key: &[u8], value: &[u8]) {
        let index = self.shared.index.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared
            .data
            .lock()
            .unwrap()
            .entry(group)
            .or_default()
            .insert(
                Bytes::copy_from_slice(key),
                (Bytes::copy_from_slice(value), index),
            );
    }

    /// The keys stored in `group`.
    pub fn keys_of(&self, group: GroupId) -> Vec<Bytes> {
        self.shared
            .data
            .lock()
            .unwrap()
            .get(&group)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops node `id`'s server (its watch streams end).
    pub fn stop_node(&self, id: NodeId) {
        self.node_stops[id as usize - 1].cancel();
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
