//! Request routing: from a validated request to the right replica of the right group, with
//! the leader cache, retries and fan-out.
//!
//! [`Router::call`] is the one retry loop every node RPC goes through: it sends to the cached
//! leader, follows `NOT_LEADER` hints at once, walks the replicas with backoff on other
//! retryable errors, and gives up with [`RouterError::Unavailable`] at the deadline.
//!
//! Every data request carries the epoch of the map it was routed with. A node that knows a
//! newer key-to-group mapping answers `STALE_EPOCH` or `WRONG_GROUP`; `call` then reads the map
//! from that node and returns [`RouterError::Remap`], and the operation routes the affected keys
//! again with the new map ([`Router::per_group`] for keys, a restart for scans). A request
//! naming a keyspace the map lacks reads the map once more before it is refused: the keyspace
//! may have just been created through another router.
//!
//! Retrying a write after a transport error or a timeout can apply it twice when the first
//! attempt did reach the leader; for a conditional write the second attempt then reports a
//! version mismatch. Nodes do not deduplicate requests yet.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join_all, try_join_all};
use futures::FutureExt;
use kv_proto::kv::{
    BatchGetRequest, BatchGetResponse, BatchPutRequest, BatchPutResponse, Consistency,
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, ScanRequest,
    ScanResponse, SessionToken,
};
use kv_proto::node::{
    write_op, DeleteOp, NodeScanRequest, PutOp, ReadRequest, ReadResponse, WriteOp, WriteRequest,
    WriteResponse, WriteResult,
};
use kv_proto::{codes, MAX_SCAN_BYTES};
use shardmap::{CompiledMap, GroupId, Limits, MapError, NodeId, Placement};
use tokio::time::Instant;
use tonic::Status;

use crate::error::RouterError;
use crate::fanout::{merge_scans, ordered_scan, reassemble, scan_limit, split_by_group, GroupScan};
use crate::leader::{next_replica, LeaderCache};
use crate::map_cache::MapCache;
use crate::metrics::Metrics;
use crate::pool::{NodeConn, NodePool};
use crate::retry::{attempt_budget, classify, error_code, Backoff, Decision};
use crate::session::{self, replica_order};

/// What a request that ran out of time before any attempt reports as its last error.
const NOTHING_TRIED: &str = "no replica was tried";

/// The longest one attempt of an eventual read may take: a node answers within its catch-up
/// wait (500 ms) when it is healthy.
const EVENTUAL_ATTEMPT_MAX: Duration = Duration::from_secs(1);

/// What an operation remembers while it routes again after out-of-date maps.
#[derive(Debug, Default)]
pub(crate) struct Rerouting {
    backoff: Backoff,
    /// Times the operation was routed again.
    count: u32,
    /// The last group that refused the routing: its id, the node's code and message.
    last: Option<(GroupId, String, String)>,
}

impl Rerouting {
    /// The error to report: when the operation ran out of time because it kept being routed
    /// again (the deadline passed before a new attempt could even start), the refusal that
    /// caused it, as unavailable; otherwise `err` itself.
    pub(crate) fn explain(&self, err: RouterError) -> RouterError {
        let out_of_time = matches!(
            err,
            RouterError::NotReady | RouterError::Unavailable { attempts: 0, .. }
        );
        match &self.last {
            Some((group, code, message)) if out_of_time => RouterError::Unavailable {
                group: *group,
                attempts: self.count,
                last_error: message.clone(),
                code: Some(code.clone()),
            },
            _ => err,
        }
    }
}

/// Routes requests to shard groups. Shared by all connections.
#[derive(Debug)]
pub struct Router {
    pub(crate) maps: Arc<MapCache>,
    pub(crate) pool: Arc<NodePool>,
    pub(crate) leaders: LeaderCache,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    /// Rotates eventual reads over each group's followers.
    next_replica: AtomicUsize,
    /// The auth index of the map in use (see `auth`).
    pub(crate) auth: crate::auth::Gate,
}

/// How a read is served: strong reads go to the leader; eventual reads to a replica of the
/// router's choice, which must have applied `min_applied_index` (the session token's entry for
/// the group) and, when `max_staleness_ms` is set, have heard from its leader that recently.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReadMode {
    pub consistency: i32,
    pub min_applied_index: u64,
    pub max_staleness_ms: u32,
}

impl ReadMode {
    fn new(
        consistency: i32,
        session: Option<&SessionToken>,
        group: GroupId,
        staleness: u32,
    ) -> Self {
        ReadMode {
            consistency,
            min_applied_index: session::min_applied(session, group),
            max_staleness_ms: staleness,
        }
    }

    fn eventual(&self) -> bool {
        Consistency::try_from(self.consistency).unwrap_or(Consistency::Strong)
            == Consistency::Eventual
    }
}

/// A node request carrying the attempt's budget as its gRPC timeout.
pub(crate) fn timed<T>(message: T, budget: Duration) -> tonic::Request<T> {
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
            next_replica: AtomicUsize::new(0),
            auth: Default::default(),
        }
    }

    /// Runs one node RPC against `group` until it succeeds, fails for good, or `deadline`
    /// passes. `rpc` gets a client for the chosen replica and the time the attempt may take.
    ///
    /// `routed_epoch` is the epoch of the map the caller located the group with (0 when the
    /// group was not found by locating keys, as for the meta group). When a node says the
    /// routing is out of date, or a newer map no longer has the group, this returns
    /// [`RouterError::Remap`] after reading the newer map, so that the caller routes again.
    pub async fn call<T, F, Fut>(
        &self,
        group: GroupId,
        routed_epoch: u64,
        deadline: Instant,
        mut rpc: F,
    ) -> Result<T, RouterError>
    where
        F: FnMut(Arc<NodeConn>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = Backoff::default();
        let mut attempts: u32 = 0;
        let mut last_error: Cow<'static, str> = Cow::Borrowed(NOTHING_TRIED);
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
                    last_error: last_error.into_owned(),
                    code: last_code,
                });
            }
            let map = self.maps.wait(deadline).await?;
            let replicas = match map.map.replicas(group) {
                Ok(r) if !r.is_empty() => r,
                Err(_) if routed_epoch != 0 && map.map.epoch > routed_epoch => {
                    // The group was routed to with an older map and this one no longer has it
                    // (its keyspace was dropped, say): route again.
                    return Err(RouterError::Remap {
                        group,
                        code: codes::UNKNOWN_GROUP.to_string(),
                        message: format!(
                            "the cluster map (epoch {}) no longer has the group",
                            map.map.epoch
                        ),
                    });
                }
                _ => {
                    last_error = format!(
                        "the cluster map (epoch {}) has no replicas for the group",
                        map.map.epoch
                    )
                    .into();
                    self.maps.request_refresh();
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
            };
            let hinted = next.take().and_then(|(id, addr)| {
                addr.map(Cow::Owned)
                    .or_else(|| map.map.node_addr(id).map(Cow::Borrowed))
                    .map(|addr| (id, addr))
            });
            let (node, addr) = match hinted {
                Some(target) => target,
                None => {
                    let id = self.leaders.pick(group, replicas).unwrap_or(replicas[0]);
                    match map.map.node_addr(id) {
                        Some(addr) => (id, Cow::Borrowed(addr)),
                        None => {
                            last_error =
                                format!("node {id} has no address in the cluster map").into();
                            self.maps.request_refresh();
                            if let Some(n) = next_replica(replicas, id) {
                                self.leaders.advance(group, id, n);
                            }
                            self.pause(&mut backoff, deadline).await;
                            continue;
                        }
                    }
                }
            };
            let client = match self.pool.conn(&addr) {
                Ok(c) => c,
                Err(e) => {
                    last_error = e.to_string().into();
                    if let Some(n) = next_replica(replicas, node) {
                        self.leaders.advance(group, node, n);
                        next = Some((n, None));
                    }
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
            };
            attempts += 1;
            let budget = attempt_budget(deadline.saturating_duration_since(now));
            let outcome = tokio::time::timeout(budget, rpc(client, budget)).await;
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
            )
            .into();
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
                Decision::Remap => {
                    self.metrics.node_retries.fetch_add(1, Ordering::Relaxed);
                    // The node knows a newer map than the one the request was routed with.
                    self.refresh_map_from(&addr, deadline).await;
                    return Err(RouterError::Remap {
                        group,
                        code: last_code.unwrap_or_else(|| codes::STALE_EPOCH.to_string()),
                        message: last_error.into_owned(),
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
                            if let Some(n) = next_replica(replicas, node) {
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
                    if let Some(n) = next_replica(replicas, node) {
                        self.leaders.advance(group, node, n);
                        next = Some((n, None));
                    }
                    quick_redirects = 0;
                    self.pause(&mut backoff, deadline).await;
                }
            }
        }
    }

    /// Runs an eventual read's node RPC against `group`: tries its replicas followers first
    /// ([`replica_order`]), moving on at once when one is lagging behind the session token,
    /// staler than the read allows, unavailable or unreachable; after a full round, backs off
    /// and starts another, until `deadline`. Out-of-date routing and errors retrying cannot fix
    /// end it as in [`Router::call`].
    ///
    /// A round in which a replica refused the read as staler than `max_staleness_ms` and none
    /// served it ends the read at once with [`RouterError::TooStale`]: a replica is that stale
    /// because it lost touch with its leader, which a retry moments later rarely finds mended,
    /// or because the bound is shorter than the heartbeat interval, which no retry can meet.
    /// Retrying until the deadline only hid that answer (87 attempts over 5 s for a bound of
    /// 1 ms); the client decides whether to retry later.
    pub async fn call_any<T, F, Fut>(
        &self,
        group: GroupId,
        routed_epoch: u64,
        max_staleness_ms: u32,
        deadline: Instant,
        mut rpc: F,
    ) -> Result<T, RouterError>
    where
        F: FnMut(Arc<NodeConn>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = Backoff::default();
        let mut attempts: u32 = 0;
        let mut last_error: Cow<'static, str> = Cow::Borrowed(NOTHING_TRIED);
        let mut last_code: Option<String> = None;
        loop {
            if Instant::now() >= deadline {
                return Err(RouterError::Unavailable {
                    group,
                    attempts,
                    last_error: last_error.into_owned(),
                    code: last_code,
                });
            }
            let map = self.maps.wait(deadline).await?;
            let replicas = match map.map.replicas(group) {
                Ok(r) if !r.is_empty() => r,
                Err(_) if routed_epoch != 0 && map.map.epoch > routed_epoch => {
                    return Err(RouterError::Remap {
                        group,
                        code: codes::UNKNOWN_GROUP.to_string(),
                        message: format!(
                            "the cluster map (epoch {}) no longer has the group",
                            map.map.epoch
                        ),
                    });
                }
                _ => {
                    last_error = format!(
                        "the cluster map (epoch {}) has no replicas for the group",
                        map.map.epoch
                    )
                    .into();
                    self.maps.request_refresh();
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
            };
            // This round's replicas asked, and those of them that said they were too stale
            // (with the last such refusal).
            let mut asked: u32 = 0;
            let mut stale: Option<(u32, String)> = None;
            let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
            for node in replica_order(replicas, self.leaders.known(group), start) {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let Some(addr) = map.map.node_addr(node) else {
                    last_error = format!("node {node} has no address in the cluster map").into();
                    self.maps.request_refresh();
                    continue;
                };
                let client = match self.pool.conn(addr) {
                    Ok(c) => c,
                    Err(e) => {
                        last_error = e.to_string().into();
                        continue;
                    }
                };
                attempts += 1;
                asked += 1;
                // A replica that hangs must not eat the time the others need; a healthy one
                // answers within the node's catch-up wait.
                let budget = attempt_budget(deadline.saturating_duration_since(now))
                    .min(EVENTUAL_ATTEMPT_MAX);
                let status = match tokio::time::timeout(budget, rpc(client, budget)).await {
                    Ok(Ok(response)) => return Ok(response.into_inner()),
                    Ok(Err(status)) => status,
                    Err(_) => Status::deadline_exceeded(format!("no answer within {budget:?}")),
                };
                // The error reported at the deadline: the last one a node explained (LAGGING,
                // STALE_REPLICA, ...) says more than a timeout of another replica.
                let code = error_code(&status).map(str::to_string);
                if code.as_deref() == Some(codes::STALE_REPLICA) {
                    let count = stale.as_ref().map_or(0, |(n, _)| *n) + 1;
                    stale = Some((count, format!("node {node}: {}", status.message())));
                }
                if code.is_some() || last_code.is_none() {
                    last_error = format!(
                        "node {node} ({addr}): {:?}: {}",
                        status.code(),
                        status.message()
                    )
                    .into();
                    last_code = code.clone();
                }
                let decision = classify(&status);
                tracing::debug!(group, node, %addr, ?decision, error = %last_error, "eventual read failed");
                match decision {
                    Decision::Fail => {
                        return Err(RouterError::Node {
                            group,
                            code: status.code(),
                            message: status.message().to_string(),
                            error_code: code,
                        });
                    }
                    Decision::Remap => {
                        self.metrics.node_retries.fetch_add(1, Ordering::Relaxed);
                        self.refresh_map_from(addr, deadline).await;
                        return Err(RouterError::Remap {
                            group,
                            code: last_code.unwrap_or_else(|| codes::STALE_EPOCH.to_string()),
                            message: last_error.into_owned(),
                        });
                    }
                    Decision::NextReplica { refresh_map } => {
                        self.metrics.node_retries.fetch_add(1, Ordering::Relaxed);
                        if refresh_map {
                            self.maps.request_refresh();
                        }
                    }
                    // Any replica serves eventual reads: a leader hint is no reason to stop.
                    Decision::Redirect { .. } => {
                        self.metrics.node_retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Some((refused, last_error)) = stale {
                return Err(RouterError::TooStale {
                    group,
                    max_staleness_ms,
                    refused,
                    asked,
                    last_error,
                });
            }
            self.pause(&mut backoff, deadline).await;
        }
    }

    /// Reads the map from `addr`, a node that said the request's routing is out of date, until
    /// `deadline` at most. Boxed: the read is a unary gRPC call whose large future would
    /// otherwise be part of every request's future (moved and copied with it), though it is
    /// rarely needed.
    async fn refresh_map_from(&self, addr: &str, deadline: Instant) {
        let refresh = self.maps.refresh_from(&self.pool, &self.metrics, addr);
        let _ = tokio::time::timeout_at(deadline, Box::pin(refresh)).await;
    }

    /// Sleeps for the next backoff step, but not past the deadline.
    async fn pause(&self, backoff: &mut Backoff, deadline: Instant) {
        let until = (Instant::now() + backoff.next_delay()).min(deadline);
        tokio::time::sleep_until(until).await;
    }

    /// After a [`RouterError::Remap`] from a request routed with map `routed_epoch`: waits for
    /// a newer map (usually there already), at most one backoff step, so that the caller routes
    /// again; at the deadline gives up as unavailable, naming the group and the node's code.
    /// Other errors are returned as they are (see [`Rerouting::explain`]).
    pub(crate) async fn after_remap(
        &self,
        err: RouterError,
        routed_epoch: u64,
        rerouting: &mut Rerouting,
        deadline: Instant,
    ) -> Result<(), RouterError> {
        let RouterError::Remap {
            group,
            code,
            message,
        } = err
        else {
            return Err(rerouting.explain(err));
        };
        rerouting.count += 1;
        rerouting.last = Some((group, code, message));
        let until = (Instant::now() + rerouting.backoff.next_delay()).min(deadline);
        self.maps.wait_newer(routed_epoch, until).await;
        if Instant::now() >= deadline {
            return Err(rerouting.explain(RouterError::NotReady));
        }
        Ok(())
    }

    /// The map to route a request for `keyspace` with. When the map in use lacks the keyspace
    /// it is read again, once per request (`refreshed`), before the keyspace is called unknown:
    /// it may have just been created through another router.
    pub(crate) async fn map_for(
        &self,
        keyspace: &str,
        deadline: Instant,
        refreshed: &mut bool,
    ) -> Result<Arc<CompiledMap>, RouterError> {
        self.with_placement(keyspace, deadline, refreshed, |map, _| map.clone())
            .await
    }

    /// The group that holds `key` of `keyspace`, and the epoch of the map that says so; the
    /// keyspace found as in [`Router::map_for`].
    async fn locate(
        &self,
        keyspace: &str,
        key: &[u8],
        deadline: Instant,
        refreshed: &mut bool,
    ) -> Result<(u64, GroupId), RouterError> {
        self.with_placement(keyspace, deadline, refreshed, |map, placement| {
            (map.map.epoch, placement.locate(key))
        })
        .await
    }

    /// `f` of the map to route with and the keyspace's placement in it (see
    /// [`Router::map_for`]).
    async fn with_placement<T>(
        &self,
        keyspace: &str,
        deadline: Instant,
        refreshed: &mut bool,
        f: impl Fn(&Arc<CompiledMap>, &Placement) -> T,
    ) -> Result<T, RouterError> {
        loop {
            let map = self.maps.wait(deadline).await?;
            match map.placement(keyspace) {
                Ok(placement) => return Ok(f(&map, placement)),
                Err(MapError::UnknownKeyspace(_)) if !*refreshed => {
                    *refreshed = true;
                    let asked = Instant::now();
                    // Boxed for the reason given in `refresh_map_from`.
                    let refresh = self.maps.refresh_after(&self.pool, &self.metrics, asked);
                    let _ = tokio::time::timeout_at(deadline, Box::pin(refresh)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs `op` against the group of `key`, the one item of a single-key request, and returns
    /// its answer. While the group says the routing was out of date, the key is located again
    /// with the newer map and `op` runs again, until the deadline: [`Router::per_group`] for
    /// one item, without the splitting, joining and reassembling of a batch, whose vectors and
    /// moves of large futures cost a single-key request more than its routing.
    async fn route_one<T, F, Fut>(
        &self,
        keyspace: &str,
        key: &[u8],
        deadline: Instant,
        mut op: F,
    ) -> Result<T, RouterError>
    where
        F: FnMut(GroupId, u64) -> Fut,
        Fut: Future<Output = Result<T, RouterError>>,
    {
        let mut refreshed = false;
        let mut rerouting = Rerouting::default();
        loop {
            let (epoch, group) = self
                .locate(keyspace, key, deadline, &mut refreshed)
                .await
                .map_err(|e| rerouting.explain(e))?;
            match op(group, epoch).await {
                Ok(answer) => return Ok(answer),
                Err(e @ RouterError::Remap { .. }) => {
                    // Boxed: rare, and its wait would enlarge every request's future.
                    Box::pin(self.after_remap(e, epoch, &mut rerouting, deadline)).await?
                }
                Err(e) => return Err(rerouting.explain(e)),
            }
        }
    }

    /// Runs `op` once per group over the items of a request (`keys[i]` is item `i`'s key), the
    /// groups in parallel, and returns the answers in item order. `op` gets the group, the epoch
    /// of the map it was located with, and the positions of the group's items; it answers one
    /// result per position. Items whose group says the routing was out of date are located
    /// again with the newer map and sent again, until the deadline; the other groups' answers
    /// are kept.
    pub(crate) async fn per_group<T, F, Fut>(
        &self,
        keyspace: &str,
        keys: &[Bytes],
        deadline: Instant,
        op: F,
    ) -> Result<Vec<T>, RouterError>
    where
        F: Fn(GroupId, u64, Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<T>, RouterError>>,
    {
        let mut done: Vec<(Vec<usize>, Vec<T>)> = Vec::new();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut refreshed = false;
        let mut rerouting = Rerouting::default();
        loop {
            let map = self
                .map_for(keyspace, deadline, &mut refreshed)
                .await
                .map_err(|e| rerouting.explain(e))?;
            let epoch = map.map.epoch;
            let placement = map.placement(keyspace)?;
            let groups = split_by_group(&pending, |&i| {
                Ok::<_, RouterError>(placement.locate(&keys[i]))
            })?;
            let runs = groups.into_iter().map(|(group, within)| {
                let positions: Vec<usize> = within.iter().map(|&j| pending[j]).collect();
                // Mapped rather than awaited in an `async` block, which would hold the group's
                // future twice.
                op(group, epoch, positions.clone()).map(move |result| (positions, result))
            });
            let mut again = Vec::new();
            let mut remap = None;
            for (positions, result) in join_all(runs).await {
                match result {
                    Ok(answers) => done.push((positions, answers)),
                    Err(e @ RouterError::Remap { .. }) => {
                        again.extend(positions);
                        remap = Some(e);
                    }
                    Err(e) => return Err(rerouting.explain(e)),
                }
            }
            match remap {
                None => {
                    return reassemble(keys.len(), done)
                        .map_err(|reason| RouterError::BadResponse { group: 0, reason })
                }
                Some(e) => {
                    again.sort_unstable();
                    pending = again;
                    self.after_remap(e, epoch, &mut rerouting, deadline).await?;
                }
            }
        }
    }

    /// Reads `keys` (all in `group`) with one node Read; one answer per key.
    async fn read(
        &self,
        group: GroupId,
        epoch: u64,
        keys: Vec<Bytes>,
        mode: ReadMode,
        deadline: Instant,
    ) -> Result<Vec<GetResponse>, RouterError> {
        let response = self
            .read_node(group, epoch, mode, keys.len(), deadline, || keys.clone())
            .await?;
        let (served_by, applied_index) = (response.served_by, response.applied_index);
        Ok(response
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
                ..Default::default()
            })
            .collect())
    }

    /// Reads one key (in `group`) with one node Read: [`Router::read`] of one key, without its
    /// vectors of keys and answers.
    async fn read_one(
        &self,
        group: GroupId,
        epoch: u64,
        key: &Bytes,
        mode: ReadMode,
        deadline: Instant,
    ) -> Result<GetResponse, RouterError> {
        let response = self
            .read_node(group, epoch, mode, 1, deadline, || vec![key.clone()])
            .await?;
        let r = single(response.results)?;
        Ok(GetResponse {
            found: r.found,
            key: key.clone(),
            value: r.value,
            version: r.version,
            group_id: group,
            served_by: response.served_by,
            applied_index: response.applied_index,
            ..Default::default()
        })
    }

    /// Runs one node Read of `count` keys in `group`: at its leader, or at any replica for an
    /// eventual read. Each attempt sends the keys `keys` gives.
    async fn read_node(
        &self,
        group: GroupId,
        epoch: u64,
        mode: ReadMode,
        count: usize,
        deadline: Instant,
        keys: impl Fn() -> Vec<Bytes>,
    ) -> Result<ReadResponse, RouterError> {
        let eventual = mode.eventual();
        // Built afresh for each attempt from its parts: the message is handed over to the
        // node's call stream, so an attempt needs its own, and a whole request kept only to be
        // cloned would cost one more allocation per request.
        let rpc = |conn: Arc<NodeConn>, budget| {
            let request = ReadRequest {
                group_id: group,
                epoch,
                consistency: mode.consistency,
                keys: keys(),
                min_applied_index: if eventual { mode.min_applied_index } else { 0 },
                max_staleness_ms: if eventual { mode.max_staleness_ms } else { 0 },
            };
            async move { conn.calls.read(request, budget).await }
        };
        let response: ReadResponse = if eventual {
            self.call_any(group, epoch, mode.max_staleness_ms, deadline, rpc)
                .await?
        } else {
            self.call(group, epoch, deadline, rpc).await?
        };
        if response.results.len() != count {
            return Err(RouterError::BadResponse {
                group,
                reason: format!("{} read results for {count} keys", response.results.len()),
            });
        }
        Ok(response)
    }

    /// Applies `ops` (all in `group`) with one node Write. `request_id` names this write to the
    /// group, so that the retries below (and the client's) apply it at most once.
    async fn write(
        &self,
        group: GroupId,
        epoch: u64,
        ops: Vec<WriteOp>,
        consistency: i32,
        deadline: Instant,
        request_id: Bytes,
    ) -> Result<Vec<WriteResult>, RouterError> {
        let count = ops.len();
        self.write_node(group, epoch, count, deadline, || WriteRequest {
            group_id: group,
            epoch,
            consistency,
            ops: ops.clone(),
            request_id: request_id.clone(),
        })
        .await
    }

    /// Runs one node Write of `count` operations in `group`; each attempt sends the request
    /// `request` builds (see [`Router::read_node`]).
    async fn write_node(
        &self,
        group: GroupId,
        epoch: u64,
        count: usize,
        deadline: Instant,
        request: impl Fn() -> WriteRequest,
    ) -> Result<Vec<WriteResult>, RouterError> {
        let response: WriteResponse = self
            .call(group, epoch, deadline, |conn: Arc<NodeConn>, budget| {
                let request = request();
                async move { conn.calls.write(request, budget).await }
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
        let mut answer = self
            .route_one(&req.keyspace, &req.key, deadline, |group, epoch| {
                let mode = ReadMode::new(
                    req.consistency,
                    req.session.as_ref(),
                    group,
                    req.max_staleness_ms,
                );
                self.read_one(group, epoch, &req.key, mode, deadline)
            })
            .await?;
        // The request's own token, moved rather than copied (see `session::start`).
        let mut token = req.session.unwrap_or_default();
        if answer.found {
            session::observe(&mut token, answer.group_id, answer.version);
        }
        answer.session = Some(token);
        Ok(answer)
    }

    /// Applies one write operation on `key`, routed again if the map moved; fails with
    /// [`RouterError::ConditionFailed`] when its expected version did not match.
    #[allow(clippy::too_many_arguments)]
    async fn write_one(
        &self,
        keyspace: &str,
        key: &[u8],
        op: WriteOp,
        consistency: i32,
        expected: Option<u64>,
        deadline: Instant,
        request_id: &Bytes,
    ) -> Result<(GroupId, WriteResult), RouterError> {
        let base = base_request_id(request_id)?;
        let op = &op;
        let (group, result) = self
            .route_one(keyspace, key, deadline, |group, epoch| {
                // The id `per_group` gives the part holding a request's only item, so that a
                // single-key write is named as a one-key batch is.
                let id = sub_request_id(&base, group, &[0]);
                async move {
                    let results = self
                        .write_node(group, epoch, 1, deadline, || WriteRequest {
                            group_id: group,
                            epoch,
                            consistency,
                            ops: vec![op.clone()],
                            request_id: id.clone(),
                        })
                        .await?;
                    Ok((group, single(results)?))
                }
            })
            .await?;
        if result.condition_failed {
            return Err(RouterError::ConditionFailed {
                expected: expected.unwrap_or_default(),
                current: result.previous_version,
            });
        }
        Ok((group, result))
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
        let op = WriteOp {
            op: Some(write_op::Op::Put(PutOp {
                key: req.key.clone(),
                value: req.value,
                expected_version: req.expected_version,
            })),
        };
        let (group, result) = self
            .write_one(
                &req.keyspace,
                &req.key,
                op,
                req.consistency,
                req.expected_version,
                deadline,
                &req.request_id,
            )
            .await?;
        let mut token = SessionToken::default();
        session::observe(&mut token, group, result.version);
        Ok(PutResponse {
            version: result.version,
            group_id: group,
            session: Some(token),
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
        let op = WriteOp {
            op: Some(write_op::Op::Delete(DeleteOp {
                key: req.key.clone(),
                expected_version: req.expected_version,
            })),
        };
        let (group, result) = self
            .write_one(
                &req.keyspace,
                &req.key,
                op,
                req.consistency,
                req.expected_version,
                deadline,
                &req.request_id,
            )
            .await?;
        let mut token = SessionToken::default();
        session::observe(&mut token, group, result.version);
        Ok(DeleteResponse {
            existed: result.existed,
            version: result.version,
            group_id: group,
            session: Some(token),
        })
    }

    /// One group's part of a scan, with `limit`.
    async fn scan_group(
        &self,
        group: GroupId,
        epoch: u64,
        req: &ScanRequest,
        limit: u32,
        deadline: Instant,
    ) -> Result<GroupScan, RouterError> {
        let mode = ReadMode::new(
            req.consistency,
            req.session.as_ref(),
            group,
            req.max_staleness_ms,
        );
        let eventual = mode.eventual();
        let request = NodeScanRequest {
            group_id: group,
            epoch,
            consistency: req.consistency,
            start: req.start.clone(),
            end: req.end.clone(),
            limit,
            keys_only: req.keys_only,
            min_applied_index: if eventual { mode.min_applied_index } else { 0 },
            max_staleness_ms: if eventual { mode.max_staleness_ms } else { 0 },
        };
        let rpc = |conn: Arc<NodeConn>, budget| {
            let mut client = conn.client.clone();
            let request = timed(request.clone(), budget);
            async move { client.scan(request).await }
        };
        let response = if eventual {
            self.call_any(group, epoch, mode.max_staleness_ms, deadline, rpc)
                .await?
        } else {
            self.call(group, epoch, deadline, rpc).await?
        };
        Ok(GroupScan {
            kvs: response.kvs,
            more: response.more,
        })
    }

    /// Scans `[start, end)` across every group that may hold keys of it, in key order. A range
    /// keyspace's groups are visited one after another in key order, stopping once the limit
    /// is reached; other keyspaces' groups are scanned in parallel and merged. Should a group
    /// say the routing was out of date, the scan starts again with the newer map.
    pub async fn scan(
        &self,
        req: ScanRequest,
        deadline: Instant,
    ) -> Result<ScanResponse, RouterError> {
        self.limits
            .check_range(&req.start, &req.end)
            .map_err(RouterError::InvalidRange)?;
        let limit = scan_limit(req.limit);
        let req = &req;
        let mut refreshed = false;
        let mut rerouting = Rerouting::default();
        loop {
            let map = self
                .map_for(&req.keyspace, deadline, &mut refreshed)
                .await
                .map_err(|e| rerouting.explain(e))?;
            let epoch = map.map.epoch;
            let placement = map.placement(&req.keyspace)?;
            let groups = placement.groups_for_scan(&req.start, &req.end);
            let result = if placement.ordered_scan() {
                ordered_scan(&groups, limit as usize, MAX_SCAN_BYTES, |group, left| {
                    self.scan_group(group, epoch, req, left, deadline)
                })
                .await
            } else {
                let scans = groups
                    .iter()
                    .map(|&group| self.scan_group(group, epoch, req, limit, deadline));
                try_join_all(scans)
                    .await
                    .map(|parts| merge_scans(parts, limit as usize, MAX_SCAN_BYTES))
            };
            match result {
                Ok((kvs, more)) => {
                    let mut token = session::start(req.session.as_ref());
                    for kv in &kvs {
                        session::observe(&mut token, placement.locate(&kv.key), kv.version);
                    }
                    return Ok(ScanResponse {
                        kvs,
                        more,
                        session: Some(token),
                    });
                }
                Err(e) => self.after_remap(e, epoch, &mut rerouting, deadline).await?,
            }
        }
    }

    /// Reads many keys: one node Read per group, in parallel; answers in request order.
    pub async fn batch_get(
        &self,
        req: BatchGetRequest,
        deadline: Instant,
    ) -> Result<BatchGetResponse, RouterError> {
        check_batch(req.keys.len())?;
        for key in &req.keys {
            self.limits
                .check_key(key)
                .map_err(RouterError::InvalidKey)?;
        }
        let results = self
            .per_group(
                &req.keyspace,
                &req.keys,
                deadline,
                |group, epoch, positions| {
                    let keys = positions.iter().map(|&i| req.keys[i].clone()).collect();
                    let mode = ReadMode::new(
                        req.consistency,
                        req.session.as_ref(),
                        group,
                        req.max_staleness_ms,
                    );
                    self.read(group, epoch, keys, mode, deadline)
                },
            )
            .await?;
        // Each group's part is bounded by its node; together they may still be too much.
        let bytes: usize = results.iter().map(|r| r.value.len()).sum();
        if bytes > kv_proto::MAX_READ_BYTES {
            return Err(RouterError::ReadTooLarge {
                max: kv_proto::MAX_READ_BYTES,
            });
        }
        let mut token = session::start(req.session.as_ref());
        for r in results.iter().filter(|r| r.found) {
            session::observe(&mut token, r.group_id, r.version);
        }
        Ok(BatchGetResponse {
            results,
            session: Some(token),
        })
    }

    /// Writes many keys: one atomic node Write per group, in parallel; versions in request order.
    pub async fn batch_put(
        &self,
        req: BatchPutRequest,
        deadline: Instant,
    ) -> Result<BatchPutResponse, RouterError> {
        check_batch(req.kvs.len())?;
        for kv in &req.kvs {
            self.limits
                .check_key(&kv.key)
                .map_err(RouterError::InvalidKey)?;
            self.limits
                .check_value(&kv.value)
                .map_err(RouterError::InvalidValue)?;
        }
        let keys: Vec<Bytes> = req.kvs.iter().map(|kv| kv.key.clone()).collect();
        let base = base_request_id(&req.request_id)?;
        let versions = self
            .per_group(&req.keyspace, &keys, deadline, |group, epoch, positions| {
                let id = sub_request_id(&base, group, &positions);
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
                let write = self.write(group, epoch, ops, req.consistency, deadline, id);
                async move {
                    Ok(write
                        .await?
                        .into_iter()
                        .map(|r| (group, r.version))
                        .collect())
                }
            })
            .await?;
        let mut token = SessionToken::default();
        for (group, version) in &versions {
            session::observe(&mut token, *group, *version);
        }
        Ok(BatchPutResponse {
            versions: versions.into_iter().map(|(_, v)| v).collect(),
            session: Some(token),
        })
    }
}

/// The one answer of a single-key request.
fn single<T>(answers: Vec<T>) -> Result<T, RouterError> {
    answers
        .into_iter()
        .next()
        .ok_or_else(|| RouterError::BadResponse {
            group: 0,
            reason: "no answer for the key".to_string(),
        })
}

/// Longest request id a client may send.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// The client's request id, or a fresh one when it sent none (which then covers only the
/// router's own retries).
fn base_request_id(client_id: &Bytes) -> Result<Bytes, RouterError> {
    if client_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(RouterError::InvalidRequestId(client_id.len()));
    }
    if client_id.is_empty() {
        return Ok(Bytes::from(rand::random::<[u8; 16]>().to_vec()));
    }
    Ok(client_id.clone())
}

/// The id of the part of a request that goes to `group`: a batch split over several groups is
/// several writes, and after a map change the keys that moved form a new part with other
/// positions, so both name the id.
fn sub_request_id(base: &Bytes, group: GroupId, positions: &[usize]) -> Bytes {
    let mut id = Vec::with_capacity(base.len() + 20);
    id.extend_from_slice(base);
    id.extend_from_slice(&group.to_be_bytes());
    id.extend_from_slice(&(positions.first().copied().unwrap_or(0) as u64).to_be_bytes());
    id.extend_from_slice(&(positions.len() as u32).to_be_bytes());
    Bytes::from(id)
}

/// Refuses a batch of more than [`kv_proto::MAX_BATCH_KEYS`] keys.
fn check_batch(count: usize) -> Result<(), RouterError> {
    if count > kv_proto::MAX_BATCH_KEYS {
        return Err(RouterError::TooManyKeys {
            count,
            max: kv_proto::MAX_BATCH_KEYS,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use kv_proto::kv::KeyValue;
    use shardmap::LimitError;
    use tonic::Code;

    use super::*;
    use crate::fake_node::FakeCluster;

    /// A router with the cluster's current map and a background refresher (slow polling, so
    /// that only explicit refreshes bring new maps), but no watcher.
    pub(crate) async fn router_for(cluster: &FakeCluster) -> Router {
        let maps = Arc::new(MapCache::new(cluster.addrs.clone()));
        maps.install(CompiledMap::new(cluster.current_map()).unwrap());
        let pool = Arc::new(NodePool::default());
        let metrics = Arc::new(Metrics::default());
        tokio::spawn(maps.clone().run_refresher(
            pool.clone(),
            metrics.clone(),
            Duration::from_secs(600),
            tokio_util::sync::CancellationToken::new(),
        ));
        Router::new(maps, pool, metrics, Limits::default())
    }

    fn hash_spec(name: &str, shards: u32) -> shardmap::KeyspaceSpec {
        shardmap::KeyspaceSpec {
            name: name.into(),
            strategy: shardmap::StrategyKind::Hash,
            shards,
            split_points: vec![],
            vnodes: 0,
            fallback: None,
            separator: vec![],
            replication: 0,
        }
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
            ..Default::default()
        }
    }

    fn get(key: &str) -> GetRequest {
        GetRequest {
            keyspace: String::new(),
            key: Bytes::copy_from_slice(key.as_bytes()),
            consistency: 0,
            ..Default::default()
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
    async fn eventual_reads_prefer_followers_and_skip_lagging_ones() {
        let cluster = FakeCluster::start(3, 1).await;
        cluster.set_leader(2);
        let router = router_for(&cluster).await;
        let put = router.put(put("k", "v", None), soon()).await.unwrap();
        let token = put.session.clone().unwrap();
        assert_eq!(token.versions.get(&put.group_id), Some(&put.version));
        let eventual = |session: Option<SessionToken>| GetRequest {
            consistency: Consistency::Eventual as i32,
            session,
            ..get("k")
        };
        // Followers (1 and 3) in rotation; the known leader is not asked.
        for _ in 0..4 {
            let got = router.get(eventual(None), soon()).await.unwrap();
            assert!(got.found);
            assert_ne!(got.served_by, 2);
        }
        let served = cluster.shared.eventual_reads.lock().unwrap().clone();
        assert!(served.contains(&1) && served.contains(&3), "{served:?}");
        // Both followers lag behind the session: the leader serves, and the answer's token
        // keeps the session's versions.
        *cluster.shared.lagging.lock().unwrap() = vec![1, 3];
        let mut session = token.clone();
        session.versions.insert(999, 7);
        let got = router.get(eventual(Some(session)), soon()).await.unwrap();
        assert_eq!(got.served_by, 2);
        let back = got.session.unwrap();
        assert_eq!(back.versions.get(&999), Some(&7));
        assert_eq!(back.versions.get(&put.group_id), Some(&put.version));
        // Every replica lags: unavailable at the deadline, with the LAGGING code.
        *cluster.shared.lagging.lock().unwrap() = vec![1, 2, 3];
        let err = router
            .get(
                eventual(Some(token)),
                Instant::now() + Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        let status = crate::error::to_status(err);
        assert_eq!(status.code(), Code::Unavailable);
        let code = status.metadata().get(kv_proto::meta::ERROR_CODE).unwrap();
        assert_eq!(code.to_str().unwrap(), kv_proto::codes::LAGGING);
    }

    #[tokio::test]
    async fn an_eventual_read_no_replica_is_fresh_enough_for_asks_each_once() {
        let cluster = FakeCluster::start(3, 1).await;
        cluster.set_leader(2);
        let router = router_for(&cluster).await;
        router.put(put("k", "v", None), soon()).await.unwrap();
        let bounded = || GetRequest {
            consistency: Consistency::Eventual as i32,
            max_staleness_ms: 1,
            ..get("k")
        };
        // One replica too stale: the others serve.
        *cluster.shared.stale.lock().unwrap() = vec![1];
        for _ in 0..4 {
            let got = router.get(bounded(), soon()).await.unwrap();
            assert!(got.found);
            assert_ne!(got.served_by, 1);
        }
        // Every replica too stale: each is asked once, and the answer names the bound.
        *cluster.shared.stale.lock().unwrap() = vec![1, 2, 3];
        let before = cluster.shared.calls.load(Ordering::Relaxed);
        let err = router.get(bounded(), soon()).await.unwrap_err();
        let asked = cluster.shared.calls.load(Ordering::Relaxed) - before;
        assert_eq!(asked, 3, "{err}");
        let status = crate::error::to_status(err);
        assert_eq!(status.code(), Code::Unavailable);
        let code = status.metadata().get(kv_proto::meta::ERROR_CODE).unwrap();
        assert_eq!(code.to_str().unwrap(), kv_proto::codes::STALE_REPLICA);
        assert!(
            status.message().contains("max staleness of 1 ms"),
            "{}",
            status.message()
        );
        // Without a bound the same replicas serve.
        let unbounded = GetRequest {
            max_staleness_ms: 0,
            ..bounded()
        };
        assert!(router.get(unbounded, soon()).await.unwrap().found);
    }

    #[tokio::test]
    async fn responses_carry_the_versions_seen_in_session_tokens() {
        let cluster = FakeCluster::start(3, 4).await;
        cluster.set_leader(1);
        let router = router_for(&cluster).await;
        let req = BatchPutRequest {
            kvs: (0..20)
                .map(|i| KeyValue {
                    key: Bytes::from(format!("s{i:02}")),
                    value: Bytes::from_static(b"x"),
                    version: 0,
                })
                .collect(),
            ..Default::default()
        };
        let written = router.batch_put(req, soon()).await.unwrap();
        let token = written.session.unwrap();
        assert!(token.versions.len() > 1, "{token:?}");
        let scan = router.scan(ScanRequest::default(), soon()).await.unwrap();
        assert_eq!(scan.session.unwrap(), token);
        let batch = BatchGetRequest {
            keys: vec![Bytes::from_static(b"s03"), Bytes::from_static(b"absent")],
            ..Default::default()
        };
        let got = router.batch_get(batch, soon()).await.unwrap();
        let seen = got.session.unwrap();
        assert_eq!(seen.versions.len(), 1);
        assert_eq!(
            seen.versions.get(&got.results[0].group_id),
            Some(&got.results[0].version)
        );
        let del = DeleteRequest {
            key: Bytes::from_static(b"s03"),
            ..Default::default()
        };
        let deleted = router.delete(del, soon()).await.unwrap();
        assert_eq!(
            deleted.session.unwrap().versions.get(&deleted.group_id),
            Some(&deleted.version)
        );
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
            ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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

    fn put_in(keyspace: &str, key: &str, value: &str) -> PutRequest {
        PutRequest {
            keyspace: keyspace.into(),
            ..put(key, value, None)
        }
    }

    #[tokio::test]
    async fn data_requests_carry_the_map_epoch_and_reroute_after_stale_epoch() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(2);
        cluster.change_map(&shardmap::MapChange::CreateKeyspace(
            shardmap::KeyspaceSpec {
                strategy: shardmap::StrategyKind::Directory,
                fallback: Some(shardmap::StrategyKind::Hash),
                ..hash_spec("t", 3)
            },
        ));
        let router = router_for(&cluster).await;
        let old = router.maps.epoch();
        let groups = cluster.current_map().keyspaces["t"].groups.clone();
        let fallback = router
            .maps
            .current()
            .unwrap()
            .locate("t", b"tenant-a/1")
            .unwrap();
        let target = *groups.iter().find(|g| **g != fallback).unwrap();
        // The directory moves (through another router): this router's map is now stale.
        cluster.change_map(&shardmap::MapChange::SetDirectory {
            keyspace: "t".into(),
            directory: b"tenant-a".to_vec(),
            group: target,
        });
        let put = router
            .put(put_in("t", "tenant-a/1", "v"), soon())
            .await
            .unwrap();
        assert_eq!(put.group_id, target);
        assert!(router.maps.epoch() > old);
        assert_eq!(
            cluster.keys_of(target),
            vec![Bytes::from_static(b"tenant-a/1")]
        );
        assert!(cluster.keys_of(fallback).is_empty());
        let mut get = get("tenant-a/1");
        get.keyspace = "t".into();
        assert!(router.get(get, soon()).await.unwrap().found);
    }

    #[tokio::test]
    async fn batches_reroute_only_the_keys_that_moved() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(1);
        cluster.change_map(&shardmap::MapChange::CreateKeyspace(
            shardmap::KeyspaceSpec {
                strategy: shardmap::StrategyKind::Directory,
                fallback: Some(shardmap::StrategyKind::Hash),
                ..hash_spec("t", 2)
            },
        ));
        let router = router_for(&cluster).await;
        let groups = cluster.current_map().keyspaces["t"].groups.clone();
        let fallback = router
            .maps
            .current()
            .unwrap()
            .locate("t", b"moved/1")
            .unwrap();
        let target = *groups.iter().find(|g| **g != fallback).unwrap();
        cluster.change_map(&shardmap::MapChange::SetDirectory {
            keyspace: "t".into(),
            directory: b"moved".to_vec(),
            group: target,
        });
        let keys = ["moved/1", "other/1", "other/2", "moved/2"];
        let req = BatchPutRequest {
            keyspace: "t".into(),
            kvs: keys
                .iter()
                .map(|k| KeyValue {
                    key: Bytes::copy_from_slice(k.as_bytes()),
                    value: Bytes::from_static(b"x"),
                    version: 0,
                })
                .collect(),
            consistency: 0,
            ..Default::default()
        };
        let versions = router.batch_put(req, soon()).await.unwrap().versions;
        assert_eq!(versions.len(), 4);
        assert!(versions.iter().all(|v| *v > 0));
        let map = CompiledMap::new(cluster.current_map()).unwrap();
        for k in keys {
            let g = map.locate("t", k.as_bytes()).unwrap();
            assert!(
                cluster
                    .keys_of(g)
                    .contains(&Bytes::copy_from_slice(k.as_bytes())),
                "{k}"
            );
        }
        let req = BatchGetRequest {
            keyspace: "t".into(),
            keys: keys
                .iter()
                .map(|k| Bytes::copy_from_slice(k.as_bytes()))
                .collect(),
            consistency: 0,
            ..Default::default()
        };
        let results = router.batch_get(req, soon()).await.unwrap().results;
        assert!(results.iter().all(|r| r.found));
        assert_eq!(results[0].group_id, target);
        assert_eq!(results[3].group_id, target);
    }

    #[tokio::test]
    async fn a_recreated_keyspace_is_routed_to_its_new_groups() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(3);
        cluster.change_map(&shardmap::MapChange::CreateKeyspace(hash_spec("x", 2)));
        let router = router_for(&cluster).await;
        cluster.change_map(&shardmap::MapChange::DropKeyspace { name: "x".into() });
        cluster.change_map(&shardmap::MapChange::CreateKeyspace(hash_spec("x", 2)));
        let new_groups = cluster.current_map().keyspaces["x"].groups.clone();
        let put = router.put(put_in("x", "k", "v"), soon()).await.unwrap();
        assert!(new_groups.contains(&put.group_id), "{put:?} {new_groups:?}");
    }

    #[tokio::test]
    async fn unknown_keyspaces_are_read_again_once_before_being_refused() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(1);
        let router = router_for(&cluster).await;
        // Created through another router a moment ago.
        cluster.change_map(&shardmap::MapChange::CreateKeyspace(hash_spec("fresh", 2)));
        router.put(put_in("fresh", "k", "v"), soon()).await.unwrap();

        let err = router
            .put(put_in("never", "k", "v"), soon())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RouterError::UnknownKeyspace(n) if n == "never"),
            "{err:?}"
        );
        let status = crate::error::to_status(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("never"), "{}", status.message());
    }

    #[tokio::test]
    async fn a_node_that_keeps_saying_wrong_group_ends_in_unavailable() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(1);
        // This router's map (same epoch as the nodes') puts keys in the wrong hash groups.
        let mut forged = cluster.current_map();
        let ks = forged.keyspaces.get_mut("default").unwrap();
        ks.strategy = shardmap::Strategy::Hash { vnodes: 3 };
        let maps = Arc::new(MapCache::new(cluster.addrs.clone()));
        maps.install(CompiledMap::new(forged).unwrap());
        let router = Router::new(
            maps,
            Arc::new(NodePool::default()),
            Arc::new(Metrics::default()),
            Limits::default(),
        );
        let real = CompiledMap::new(cluster.current_map()).unwrap();
        let forged = router.maps.current().unwrap();
        let key = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| real.locate("", k.as_bytes()) != forged.locate("", k.as_bytes()))
            .unwrap();
        let err = router
            .put(
                put(&key, "v", None),
                Instant::now() + Duration::from_millis(400),
            )
            .await
            .unwrap_err();
        let status = crate::error::to_status(err);
        assert_eq!(status.code(), Code::Unavailable);
        let code = status.metadata().get(kv_proto::meta::ERROR_CODE).unwrap();
        assert_eq!(code.to_str().unwrap(), kv_proto::codes::WRONG_GROUP);
    }

    #[tokio::test]
    async fn range_scans_visit_groups_in_order_and_stop_at_the_limit() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(2);
        cluster.change_map(&shardmap::MapChange::CreateKeyspace(
            shardmap::KeyspaceSpec {
                strategy: shardmap::StrategyKind::Range,
                split_points: vec![b"g".to_vec(), b"p".to_vec()],
                ..hash_spec("r", 0)
            },
        ));
        let router = router_for(&cluster).await;
        let groups = cluster.current_map().keyspaces["r"].groups.clone();
        for k in ["z", "a", "q", "h", "b", "i"] {
            router.put(put_in("r", k, k), soon()).await.unwrap();
        }
        let scan = |limit: u32, start: &'static [u8]| ScanRequest {
            keyspace: "r".into(),
            start: Bytes::from_static(start),
            limit,
            ..Default::default()
        };
        let keys = |page: &ScanResponse| -> Vec<String> {
            page.kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
                .collect()
        };

        cluster.shared.scans.lock().unwrap().clear();
        let page = router.scan(scan(2, b""), soon()).await.unwrap();
        assert_eq!(keys(&page), vec!["a", "b"]);
        assert!(page.more);
        assert_eq!(*cluster.shared.scans.lock().unwrap(), vec![groups[0]]);

        cluster.shared.scans.lock().unwrap().clear();
        let page = router.scan(scan(3, b""), soon()).await.unwrap();
        assert_eq!(keys(&page), vec!["a", "b", "h"]);
        assert!(page.more);
        assert_eq!(
            *cluster.shared.scans.lock().unwrap(),
            vec![groups[0], groups[1]]
        );

        cluster.shared.scans.lock().unwrap().clear();
        let page = router.scan(scan(0, b""), soon()).await.unwrap();
        assert_eq!(keys(&page), vec!["a", "b", "h", "i", "q", "z"]);
        assert!(!page.more);
        assert_eq!(*cluster.shared.scans.lock().unwrap(), groups);

        // A scan starting in the second range does not touch the first group.
        cluster.shared.scans.lock().unwrap().clear();
        let page = router.scan(scan(10, b"h"), soon()).await.unwrap();
        assert_eq!(keys(&page), vec!["h", "i", "q", "z"]);
        assert_eq!(*cluster.shared.scans.lock().unwrap(), groups[1..].to_vec());
    }
}
