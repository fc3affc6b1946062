//! A fake storage cluster for the router's tests: real gRPC `Node` servers on loopback that
//! share one in-memory store, with a switchable leader and error injection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kv_proto::kv::KeyValue;
use kv_proto::node::node_server::{Node, NodeServer};
use kv_proto::node::{
    write_op, GetClusterMapRequest, GetClusterMapResponse, GroupStatusRequest, GroupStatusResponse,
    NodeScanRequest, NodeScanResponse, ReadRequest, ReadResponse, ReadResult, WriteRequest,
    WriteResponse, WriteResult,
};
use kv_proto::{codes, meta};
use shardmap::{ClusterMap, NodeId};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

/// State shared by every fake node.
#[derive(Debug, Default)]
pub struct Shared {
    pub data: Mutex<BTreeMap<Bytes, (Bytes, u64)>>,
    pub index: AtomicU64,
    /// The node that accepts requests (0: none, everyone answers NO_QUORUM).
    pub leader: AtomicU64,
    /// Whether NOT_LEADER errors carry the leader hint.
    pub hints: AtomicU64,
    pub map: Mutex<Option<ClusterMap>>,
    /// Data requests received, by any node.
    pub calls: AtomicU64,
}

#[derive(Debug, Clone)]
struct FakeNode {
    id: NodeId,
    shared: Arc<Shared>,
}

fn status(code: Code, error_code: &'static str) -> Status {
    let mut s = Status::new(code, error_code.to_lowercase());
    s.metadata_mut()
        .insert(meta::ERROR_CODE, MetadataValue::from_static(error_code));
    s
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
                .map
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|m| m.node_addr(leader).map(str::to_string));
            if let Some(addr) = addr.and_then(|a| MetadataValue::try_from(a).ok()) {
                s.metadata_mut().insert(meta::LEADER_ADDR, addr);
            }
        }
        Err(s)
    }
}

#[tonic::async_trait]
impl Node for FakeNode {
    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        self.check_leader()?;
        let req = request.into_inner();
        let mut data = self.shared.data.lock().unwrap();
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

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        self.check_leader()?;
        let data = self.shared.data.lock().unwrap();
        let results = request
            .into_inner()
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
        let map = self.shared.map.lock().unwrap().clone();
        let compiled = map.and_then(|m| shardmap::CompiledMap::new(m).ok());
        let data = self.shared.data.lock().unwrap();
        let mut kvs = Vec::new();
        let mut more = false;
        for (k, (v, ver)) in data.range(req.start.clone()..) {
            if !req.end.is_empty() && *k >= req.end {
                break;
            }
            // Only the keys of the requested group, as a real node would hold.
            if compiled.as_ref().and_then(|m| m.locate("", k).ok()) != Some(req.group_id) {
                continue;
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
        let map = self.shared.map.lock().unwrap().clone();
        match map {
            Some(map) => Ok(Response::new(GetClusterMapResponse {
                epoch: map.epoch,
                map_json: serde_json::to_vec(&map).unwrap().into(),
            })),
            None => Err(status(Code::Unavailable, codes::NOT_READY)),
        }
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
}

impl FakeCluster {
    pub async fn start(n: u64, shards: u32) -> FakeCluster {
        let shared = Arc::new(Shared::default());
        shared.hints.store(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let node = FakeNode {
                id,
                shared: shared.clone(),
            };
            let stop = stop.clone();
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(NodeServer::new(node))
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listener),
                        stop.cancelled_owned(),
                    )
                    .await
                    .unwrap();
            });
            nodes.push((id, addr));
        }
        let map = ClusterMap::bootstrap(&nodes, shards, n.min(3) as usize).unwrap();
        *shared.map.lock().unwrap() = Some(map.clone());
        FakeCluster {
            shared,
            addrs: nodes.into_iter().map(|(_, a)| a).collect(),
            map,
            stop,
        }
    }

    pub fn set_leader(&self, id: NodeId) {
        self.shared.leader.store(id, Ordering::Relaxed);
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
