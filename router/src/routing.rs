//! Request routing: from a validated request to the right replica of the right group, with
//! the leader cache, retries and fan-out.
//!
//! [`Router::call`] is the one retry loop every node RPC goes through: it sends to the cached
//! leader, follows `NOT_LEADER` hints at once, walks the replicas with backoff on other
//! retryable errors, and gives up with [`RouterError::Unavailable`] at the deadline. The
//! operations above it only build node requests and shape answers.
//!
//! Retrying a write after a transport error or a timeout can apply it twice when the first
//! attempt did reach the leader; for a conditional write the second attempt then reports a
//! version mismatch. Nodes do not deduplicate requests yet.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::try_join_all;
use kv_proto::kv::{
    BatchGetRequest, BatchGetResponse, BatchPutRequest, BatchPutResponse, DeleteRequest,
    DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, ScanRequest, ScanResponse,
};
use kv_proto::node::node_client::NodeClient;
use kv_proto::node::{
    write_op, DeleteOp, NodeScanRequest, PutOp, ReadRequest, ReadResponse, WriteOp, WriteRequest,
    WriteResponse, WriteResult,
};
use shardmap::{CompiledMap, GroupId, Limits, NodeId};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

use crate::error::RouterError;
use crate::fanout::{merge_scans, reassemble, scan_limit, split_by_group, GroupScan};
use crate::leader::{next_replica, LeaderCache};
use crate::map_cache::MapCache;
use crate::metrics::Metrics;
use crate::pool::NodePool;
use crate::retry::{attempt_budget, classify, error_code, Backoff, Decision};

/// Routes requests to shard groups. Shared by all connections.
#[derive(Debug)]
pub struct Router {
    maps: Arc<MapCache>,
    pool: Arc<NodePool>,
    leaders: LeaderCache,
    metrics: Arc<Metrics>,
    limits: Limits,
}

/// A node request carrying the attempt's budget as its gRPC timeout.
fn timed<T>(message: T, budget: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(budget);
    request
}

impl Router {
    pub fn new(
        maps: Arc<MapCache>,
        pool: Arc<NodePool>,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Router {
        Router {
            maps,
            pool,
            leaders: LeaderCache::default(),
            metrics,
            limits,
        }
    }

    /// Runs one node RPC against `group` until it succeeds, fails for good, or `deadline`
    /// passes. `rpc` gets a client for the chosen replica, the map epoch routed with, and the
    /// time the attempt may take.
    pub async fn call<T, F, Fut>(
        &self,
        group: GroupId,
        deadline: Instant,
        mut rpc: F,
    ) -> Result<T, RouterError>
    where
        F: FnMut(NodeClient<Channel>, u64, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = Backoff::default();
        let mut attempts: u32 = 0;
        let mut last_error = String::from("no replica was tried");
        let mut last_code: Option<String> = None;
        // Where the next attempt goes when the previous one said so.
        let mut next: Option<(NodeId, Option<String>)> = None;
        let mut quick_redirects = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(RouterError::Unavailable {
                    group,
                    attempts,
                    last_error,
                    code: last_code,
                });
            }
            let map = self.maps.wait(deadline).await?;
            let replicas = match map.map.replicas(group) {
                Ok(r) if !r.is_empty() => r.to_vec(),
                _ => {
                    last_error = format!(
                        "the cluster map (epoch {}) has no replicas for the group",
                        map.map.epoch
                    );
                    self.maps.request_refresh();
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
            };
            let hinted = next.take().and_then(|(id, addr)| {
                addr.or_else(|| map.map.node_addr(id).map(str::to_string))
                    .map(|addr| (id, addr))
            });
            let (node, addr) = match hinted {
                Some(target) => target,
                None => {
                    let id = self.leaders.pick(group, &replicas).unwrap_or(replicas[0]);
                    match map.map.node_addr(id) {
                        Some(addr) => (id, addr.to_string()),
                        None => {
                            last_error = format!("node {id} has no address in the cluster map");
                            self.maps.request_refresh();
                            if let Some(n) = next_replica(&replicas, id) {
                                self.leaders.advance(group, id, n);
                            }
                            self.pause(&mut backoff, deadline).await;
                            continue;
                        }
                    }
                }
            };
            let client = match self.pool.client(&addr) {
                Ok(c) => c,
                Err(e) => {
                    last_error = e.to_string();
                    if let Some(n) = next_replica(&replicas, node) {
                        self.leaders.advance(group, node, n);
                        next = Some((n, None));
                    }
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
            };
            attempts += 1;
            let budget = attempt_budget(deadline.saturating_duration_since(now));
            let outcome = tokio::time::timeout(budget, rpc(client, map.map.epoch, budget)).await;
            let status = match outcome {
                Ok(Ok(response)) => {
                    self.leaders.set(group, node);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!("no answer within {budget:?}")),
            };
            last_error = format!(
                "node {node} ({addr}): {:?}: {}",
                status.code(),
                status.message()
            );
            last_code = error_code(&status).map(str::to_string);
            let decision = classify(&status);
            tracing::debug!(group, node, %addr, ?decision, error = %last_error, "node request failed");
            match decision {
                Decision::Fail => {
                    return Err(RouterError::Node {
                        group,
                        code: status.code(),
                        message: status.message().to_string(),
                        error_code: last_code,
                    });
                }
                Decision::Redirect { leader, addr: hint } => {
                    self.metrics.node_retries.fetch_add(1, Ordering::Relaxed);
                    self.leaders.set(group, leader);
                    if !replicas.contains(&leader) || map.map.node_addr(leader).is_none() {
                        self.maps.request_refresh();
                    }
                    let hint = hint.or_else(|| map.map.node_addr(leader).map(str::to_string));
                    match hint {
                        Some(hint) => next = Some((leader, Some(hint))),
                        None => {
                            if let Some(n) = next_replica(&replicas, node) {
                                next = Some((n, None));
                            }
                        }
                    }
                    // Follow a hint at once, unless hints keep going round in circles.
                    if leader == node || quick_redirects >= replicas.len() {
                        quick_redirects = 0;
                        self.pause(&mut backoff, deadline).await;
                    } else {
                        quick_redirects += 1;
                    }
                }
                Decision::NextReplica { refresh_map } => {
                    self.metrics.node_retries.fetch_add(1, Ordering::Relaxed);
                    if refresh_map {
                        self.maps.request_refresh();
                    }
                    if let Some(n) = next_replica(&replicas, node) {
                        self.leaders.advance(group, node, n);
                        next = Some((n, None));
                    }
                    quick_redirects = 0;
                    self.pause(&mut backoff, deadline).await;
                }
            }
        }
    }

    /// Sleeps for the next backoff step, but not past the deadline.
    async fn pause(&self, backoff: &mut Backoff, deadline: Instant) {
        let until = (Instant::now() + backoff.next_delay()).min(deadline);
        tokio::time::sleep_until(until).await;
    }

    /// The map, and the group holding `key` in `keyspace`.
    async fn locate(
        &self,
        keyspace: &str,
        key: &[u8],
        deadline: Instant,
    ) -> Result<(Arc<CompiledMap>, GroupId), RouterError> {
        let map = self.maps.wait(deadline).await?;
        let group = map.locate(keyspace, key)?;
        Ok((map, group))
    }

    /// Reads `keys` (all in `group`) with one node Read.
    async fn read(
        &self,
        group: GroupId,
        keys: Vec<Bytes>,
        consistency: i32,
        deadline: Instant,
    ) -> Result<ReadResponse, RouterError> {
        let count = keys.len();
        let base = ReadRequest {
            group_id: group,
            epoch: 0,
            consistency,
            keys,
        };
        let response: ReadResponse = self
            .call(group, deadline, |mut client, epoch, budget| {
                let request = timed(
                    ReadRequest {
                        epoch,
                        ..base.clone()
                    },
                    budget,
                );
                async move { client.read(request).await }
            })
            .await?;
        if response.results.len() != count {
            return Err(RouterError::BadResponse {
                group,
                reason: format!("{} read results for {count} keys", response.results.len()),
            });
        }
        Ok(response)
    }

    /// Applies `ops` (all in `group`) with one node Write.
    async fn write(
        &self,
        group: GroupId,
        ops: Vec<WriteOp>,
        consistency: i32,
        deadline: Instant,
    ) -> Result<Vec<WriteResult>, RouterError> {
        let count = ops.len();
        let base = WriteRequest {
            group_id: group,
            epoch: 0,
            consistency,
            ops,
        };
        let response: WriteResponse = self
            .call(group, deadline, |mut client, epoch, budget| {
                let request = timed(
                    WriteRequest {
                        epoch,
                        ..base.clone()
                    },
                    budget,
                );
                async move { client.write(request).await }
            })
            .await?;
        if response.results.len() != count {
            return Err(RouterError::BadResponse {
                group,
                reason: format!(
                    "{} write results for {count} operations",
                    response.results.len()
                ),
            });
        }
        Ok(response.results)
    }

    /// Reads one key.
    pub async fn get(
        &self,
        req: GetRequest,
        deadline: Instant,
    ) -> Result<GetResponse, RouterError> {
        self.limits
            .check_key(&req.key)
            .map_err(RouterError::InvalidKey)?;
        let (_, group) = self.locate(&req.keyspace, &req.key, deadline).await?;
        let response = self
            .read(group, vec![req.key.clone()], req.consistency, deadline)
            .await?;
        let (served_by, applied_index) = (response.served_by, response.applied_index);
        let result = response.results.into_iter().next().unwrap_or_default();
        Ok(GetResponse {
            found: result.found,
            key: req.key,
            value: result.value,
            version: result.version,
            group_id: group,
            served_by,
            applied_index,
        })
    }

    /// Writes one key, optionally on condition of its current version.
    pub async fn put(
        &self,
        req: PutRequest,
        deadline: Instant,
    ) -> Result<PutResponse, RouterError> {
        self.limits
            .check_key(&req.key)
            .map_err(RouterError::InvalidKey)?;
        self.limits
            .check_value(&req.value)
            .map_err(RouterError::InvalidValue)?;
        let (_, group) = self.locate(&req.keyspace, &req.key, deadline).await?;
        let op = WriteOp {
            op: Some(write_op::Op::Put(PutOp {
                key: req.key,
                value: req.value,
                expected_version: req.expected_version,
            })),
        };
        let result = self
            .write_one(group, op, req.consistency, req.expected_version, deadline)
            .await?;
        Ok(PutResponse {
            version: result.version,
            group_id: group,
        })
    }

    /// Deletes one key, optionally on condition of its current version.
    pub async fn delete(
        &self,
        req: DeleteRequest,
        deadline: Instant,
    ) -> Result<DeleteResponse, RouterError> {
        self.limits
            .check_key(&req.key)
            .map_err(RouterError::InvalidKey)?;
        let (_, group) = self.locate(&req.keyspace, &req.key, deadline).await?;
        let op = WriteOp {
            op: Some(write_op::Op::Delete(DeleteOp {
                key: req.key,
                expected_version: req.expected_version,
            })),
        };
        let result = self
            .write_one(group, op, req.consistency, req.expected_version, deadline)
            .await?;
        Ok(DeleteResponse {
            existed: result.existed,
            version: result.version,
            group_id: group,
        })
    }

    async fn write_one(
        &self,
        group: GroupId,
        op: WriteOp,
        consistency: i32,
        expected: Option<u64>,
        deadline: Instant,
    ) -> Result<WriteResult, RouterError> {
        let result = self
            .write(group, vec![op], consistency, deadline)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        if result.condition_failed {
            return Err(RouterError::ConditionFailed {
                expected: expected.unwrap_or_default(),
                current: result.previous_version,
            });
        }
        Ok(result)
    }

    /// Scans `[start, end)` across every group that may hold keys of it, in key order.
    pub async fn scan(
        &self,
        req: ScanRequest,
        deadline: Instant,
    ) -> Result<ScanResponse, RouterError> {
        self.limits
            .check_range(&req.start, &req.end)
            .map_err(RouterError::InvalidRange)?;
        let limit = scan_limit(req.limit);
        let map = self.maps.wait(deadline).await?;
        let groups = map
            .placement(&req.keyspace)?
            .groups_for_scan(&req.start, &req.end);
        let scans = groups.into_iter().map(|group| {
            let base = NodeScanRequest {
                group_id: group,
                epoch: 0,
                consistency: req.consistency,
                start: req.start.clone(),
                end: req.end.clone(),
                limit,
                keys_only: req.keys_only,
            };
            async move {
                let response = self
                    .call(group, deadline, |mut client, epoch, budget| {
                        let request = timed(
                            NodeScanRequest {
                                epoch,
                                ..base.clone()
                            },
                            budget,
                        );
                        async move { client.scan(request).await }
                    })
                    .await?;
                Ok::<_, RouterError>(GroupScan {
                    kvs: response.kvs,
                    more: response.more,
                })
            }
        });
        let parts = try_join_all(scans).await?;
        let (kvs, more) = merge_scans(parts, limit as usize);
        Ok(ScanResponse { kvs, more })
    }

    /// Reads many keys: one node Read per group, in parallel; answers in request order.
    pub async fn batch_get(
        &self,
        req: BatchGetRequest,
        deadline: Instant,
    ) -> Result<BatchGetResponse, RouterError> {
        for key in &req.keys {
            self.limits
                .check_key(key)
                .map_err(RouterError::InvalidKey)?;
        }
        let map = self.maps.wait(deadline).await?;
        let placement = map.placement(&req.keyspace)?;
        let groups = split_by_group(&req.keys, |key| Ok::<_, RouterError>(placement.locate(key)))?;
        let reads = groups.into_iter().map(|(group, positions)| {
            let keys: Vec<Bytes> = positions.iter().map(|&i| req.keys[i].clone()).collect();
            async move {
                let response = self
                    .read(group, keys.clone(), req.consistency, deadline)
                    .await?;
                let (served_by, applied_index) = (response.served_by, response.applied_index);
                let answers = response
                    .results
                    .into_iter()
                    .zip(keys)
                    .map(|(r, key)| GetResponse {
                        found: r.found,
                        key,
                        value: r.value,
                        version: r.version,
                        group_id: group,
                        served_by,
                        applied_index,
                    })
                    .collect::<Vec<_>>();
                Ok::<_, RouterError>((positions, answers))
            }
        });
        let parts = try_join_all(reads).await?;
        let results = reassemble(req.keys.len(), parts)
            .map_err(|reason| RouterError::BadResponse { group: 0, reason })?;
        Ok(BatchGetResponse { results })
    }

    /// Writes many keys: one atomic node Write per group, in parallel; versions in request order.
    pub async fn batch_put(
        &self,
        req: BatchPutRequest,
        deadline: Instant,
    ) -> Result<BatchPutResponse, RouterError> {
        for kv in &req.kvs {
            self.limits
                .check_key(&kv.key)
                .map_err(RouterError::InvalidKey)?;
            self.limits
                .check_value(&kv.value)
                .map_err(RouterError::InvalidValue)?;
        }
        let map = self.maps.wait(deadline).await?;
        let placement = map.placement(&req.keyspace)?;
        let groups = split_by_group(&req.kvs, |kv| {
            Ok::<_, RouterError>(placement.locate(&kv.key))
        })?;
        let writes = groups.into_iter().map(|(group, positions)| {
            let ops = positions
                .iter()
                .map(|&i| WriteOp {
                    op: Some(write_op::Op::Put(PutOp {
                        key: req.kvs[i].key.clone(),
                        value: req.kvs[i].value.clone(),
                        expected_version: None,
                    })),
                })
                .collect();
            async move {
                let results = self.write(group, ops, req.consistency, deadline).await?;
                let versions = results.into_iter().map(|r| r.version).collect::<Vec<_>>();
                Ok::<_, RouterError>((positions, versions))
            }
        });
        let parts = try_join_all(writes).await?;
        let versions = reassemble(req.kvs.len(), parts)
            .map_err(|reason| RouterError::BadResponse { group: 0, reason })?;
        Ok(BatchPutResponse { versions })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kv_proto::kv::KeyValue;
    use shardmap::LimitError;
    use tonic::Code;

    use super::*;
    use crate::fake_node::FakeCluster;

    async fn router_for(cluster: &FakeCluster) -> Router {
        let maps = Arc::new(MapCache::new(cluster.addrs.clone()));
        maps.install(CompiledMap::new(cluster.map.clone()).unwrap());
        Router::new(
            maps,
            Arc::new(NodePool::default()),
            Arc::new(Metrics::default()),
            Limits::default(),
        )
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn put(key: &str, value: &str, expected: Option<u64>) -> PutRequest {
        PutRequest {
            keyspace: String::new(),
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            consistency: 0,
            expected_version: expected,
        }
    }

    fn get(key: &str) -> GetRequest {
        GetRequest {
            keyspace: String::new(),
            key: Bytes::copy_from_slice(key.as_bytes()),
            consistency: 0,
        }
    }

    #[tokio::test]
    async fn follows_not_leader_hints_and_caches_the_leader() {
        let cluster = FakeCluster::start(3, 4).await;
        cluster.set_leader(3);
        let router = router_for(&cluster).await;
        let put = router.put(put("k", "v", None), soon()).await.unwrap();
        assert!(put.version > 0);
        let got = router.get(get("k"), soon()).await.unwrap();
        assert!(got.found);
        assert_eq!(got.value, Bytes::from_static(b"v"));
        assert_eq!(got.served_by, 3);
        assert_eq!(got.group_id, put.group_id);
        // The leader is cached: one more request costs one node call.
        let before = cluster.shared.calls.load(Ordering::Relaxed);
        router.get(get("k"), soon()).await.unwrap();
        assert_eq!(cluster.shared.calls.load(Ordering::Relaxed) - before, 1);
    }

    #[tokio::test]
    async fn finds_the_leader_without_hints() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.shared.hints.store(0, Ordering::Relaxed);
        cluster.set_leader(2);
        let router = router_for(&cluster).await;
        router.put(put("a", "1", None), soon()).await.unwrap();
        assert_eq!(router.get(get("a"), soon()).await.unwrap().served_by, 2);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_naming_the_group() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(0);
        let router = router_for(&cluster).await;
        let started = std::time::Instant::now();
        let err = router
            .get(get("a"), Instant::now() + Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        match &err {
            RouterError::Unavailable {
                attempts,
                last_error,
                code,
                ..
            } => {
                assert!(*attempts > 1);
                assert!(last_error.contains("no_quorum"), "{last_error}");
                assert_eq!(code.as_deref(), Some(kv_proto::codes::NO_QUORUM));
            }
            other => panic!("unexpected {other:?}"),
        }
        let status = crate::error::to_status(err);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("shard group"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn a_dead_node_is_skipped() {
        let cluster = FakeCluster::start(3, 1).await;
        cluster.set_leader(2);
        let mut map = cluster.map.clone();
        // Node 1 (first replica, tried first) points at a closed port.
        map.nodes.get_mut(&1).unwrap().addr = "127.0.0.1:1".into();
        let maps = Arc::new(MapCache::new(cluster.addrs.clone()));
        maps.install(CompiledMap::new(map).unwrap());
        let router = Router::new(
            maps,
            Arc::new(NodePool::default()),
            Arc::new(Metrics::default()),
            Limits::default(),
        );
        router.put(put("x", "y", None), soon()).await.unwrap();
    }

    #[tokio::test]
    async fn conditional_writes_report_the_current_version() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(1);
        let router = router_for(&cluster).await;
        let v1 = router
            .put(put("c", "1", Some(0)), soon())
            .await
            .unwrap()
            .version;
        let err = router
            .put(put("c", "2", Some(0)), soon())
            .await
            .unwrap_err();
        assert!(
            matches!(err, RouterError::ConditionFailed { expected: 0, current } if current == v1)
        );
        let del = DeleteRequest {
            keyspace: String::new(),
            key: Bytes::from_static(b"c"),
            consistency: 0,
            expected_version: Some(v1),
        };
        assert!(router.delete(del, soon()).await.unwrap().existed);
        assert!(!router.get(get("c"), soon()).await.unwrap().found);
    }

    #[tokio::test]
    async fn rejects_bad_input_before_calling_nodes() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(1);
        let router = router_for(&cluster).await;
        let err = router.get(get(""), soon()).await.unwrap_err();
        assert!(matches!(err, RouterError::InvalidKey(LimitError::EmptyKey)));
        let big = "v".repeat(Limits::default().max_value_bytes + 1);
        let err = router.put(put("k", &big, None), soon()).await.unwrap_err();
        assert!(matches!(err, RouterError::InvalidValue(_)));
        let scan = ScanRequest {
            start: Bytes::from_static(b"b"),
            end: Bytes::from_static(b"a"),
            ..Default::default()
        };
        assert!(matches!(
            router.scan(scan, soon()).await.unwrap_err(),
            RouterError::InvalidRange(_)
        ));
        let mut req = get("k");
        req.keyspace = "nope".into();
        assert!(matches!(
            router.get(req, soon()).await.unwrap_err(),
            RouterError::UnknownKeyspace(_)
        ));
        assert_eq!(cluster.shared.calls.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn scan_and_batches_keep_order_across_groups() {
        let cluster = FakeCluster::start(3, 4).await;
        cluster.set_leader(2);
        let router = router_for(&cluster).await;
        let keys: Vec<String> = (0..40).rev().map(|i| format!("key{i:03}")).collect();
        let kvs = keys
            .iter()
            .map(|k| KeyValue {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(k.to_uppercase().as_bytes()),
                version: 0,
            })
            .collect();
        let req = BatchPutRequest {
            keyspace: String::new(),
            kvs,
            consistency: 0,
        };
        let versions = router.batch_put(req, soon()).await.unwrap().versions;
        assert_eq!(versions.len(), 40);
        assert!(versions.iter().all(|v| *v > 0));

        let req = BatchGetRequest {
            keyspace: String::new(),
            keys: keys
                .iter()
                .map(|k| Bytes::copy_from_slice(k.as_bytes()))
                .chain([Bytes::from_static(b"missing")])
                .collect(),
            consistency: 0,
        };
        let results = router.batch_get(req, soon()).await.unwrap().results;
        assert_eq!(results.len(), 41);
        for (r, k) in results.iter().zip(&keys) {
            assert!(r.found);
            assert_eq!(r.key, k.as_bytes());
            assert_eq!(r.value, k.to_uppercase().as_bytes());
        }
        assert!(!results[40].found);

        let scan = ScanRequest {
            limit: 15,
            ..Default::default()
        };
        let page = router.scan(scan, soon()).await.unwrap();
        let mut sorted = keys.clone();
        sorted.sort();
        let got: Vec<String> = page
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
            .collect();
        assert_eq!(got, sorted[..15].to_vec());
        assert!(page.more);

        let scan = ScanRequest {
            start: Bytes::from_static(b"key030"),
            keys_only: true,
            ..Default::default()
        };
        let page = router.scan(scan, soon()).await.unwrap();
        assert_eq!(page.kvs.len(), 10);
        assert!(page.kvs.iter().all(|kv| kv.value.is_empty()));
        assert!(!page.more);
    }
}
