//! The cluster map cache: loads the map from any node, keeps it fresh, and hands out the
//! compiled map to every request.
//!
//! The current map lives in a `tokio::sync::watch` channel holding `Option<Arc<CompiledMap>>`:
//! readers clone the `Arc` out (the channel's internal read lock is held for that clone only,
//! never across an `.await`), a refresh swaps in a new `Arc` without blocking readers for
//! longer than that, and requests that arrive before the first map can wait for it. This is the
//! "ArcSwap" pattern with waiting built in.
//!
//! Three ways a new map arrives:
//!
//! - the **watcher** follows `WatchClusterMap` on one node at a time (the map's nodes first,
//!   then the `--nodes` seeds); when the stream ends or fails it moves on to another node with
//!   backoff, resuming from the cached epoch. This is what brings a change to every router
//!   within a second;
//! - the **refresher** re-reads the map every `--map-refresh-interval` (a slow fallback should
//!   the watch stall), and soon after a request reports an error suggesting the map moved
//!   (unknown group, a leader the map does not know). Until the first map is loaded it retries
//!   with backoff. It starts at a different node each time so that one lagging node cannot
//!   keep the router on an old map;
//! - requests that must not wait read it themselves: [`MapCache::refresh_from`] (the node that
//!   answered `STALE_EPOCH` or `WRONG_GROUP` knows a newer map) and [`MapCache::refresh_after`]
//!   (an unknown keyspace may have just been created through another router; concurrent
//!   callers share one read).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_proto::node::{GetClusterMapRequest, WatchClusterMapRequest};
use shardmap::{ClusterMap, CompiledMap};
use tokio::sync::{watch, Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::RouterError;
use crate::metrics::Metrics;
use crate::pool::NodePool;

/// How long one `GetClusterMap` call may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Backoff between rounds while no map is loaded: from the first value, doubling to the second.
const LOAD_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
/// Least time between two refreshes asked for by requests, so a burst of errors costs one read.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(50);
/// Backoff between watch streams (after a stream ends or cannot be opened): from the first
/// value, doubling to the second; back to the first once a stream delivers a map.
const WATCH_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// The shared, refreshable cluster map.
#[derive(Debug)]
pub struct MapCache {
    current: watch::Sender<Option<Arc<CompiledMap>>>,
    seeds: Vec<String>,
    refresh: Notify,
    rotation: AtomicUsize,
    /// Held while a request-driven read runs: when the read started and the epoch it found.
    last_read: Mutex<Option<(Instant, u64)>>,
}

impl MapCache {
    /// An empty cache that will load from `seeds` (`HOST:PORT` each).
    pub fn new(seeds: Vec<String>) -> MapCache {
        MapCache {
            current: watch::Sender::new(None),
            seeds,
            refresh: Notify::new(),
            rotation: AtomicUsize::new(0),
            last_read: Mutex::new(None),
        }
    }

    /// The map in use, if one is loaded.
    pub fn current(&self) -> Option<Arc<CompiledMap>> {
        self.current.borrow().clone()
    }

    /// The map in use, waiting for the first one until `deadline`.
    pub async fn wait(&self, deadline: Instant) -> Result<Arc<CompiledMap>, RouterError> {
        if let Some(map) = self.current() {
            return Ok(map);
        }
        // Boxed: every request passes here but only those before the first map wait, and the
        // wait's timer and channel would make every request's future (which is moved and
        // copied whole) larger.
        Box::pin(self.wait_first(deadline)).await
    }

    /// [`MapCache::wait`] when no map is loaded yet.
    async fn wait_first(&self, deadline: Instant) -> Result<Arc<CompiledMap>, RouterError> {
        let mut rx = self.current.subscribe();
        let waited = tokio::time::timeout_at(deadline, async {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|m| m.clone())
        })
        .await;
        match waited {
            Ok(Some(map)) => Ok(map),
            _ => Err(RouterError::NotReady),
        }
    }

    /// The epoch of the map in use (0: none).
    pub fn epoch(&self) -> u64 {
        self.current.borrow().as_ref().map_or(0, |m| m.map.epoch)
    }

    /// Waits until a map newer than `epoch` is installed, or `until`; returns whether one was.
    pub async fn wait_newer(&self, epoch: u64, until: Instant) -> bool {
        let mut rx = self.current.subscribe();
        let newer = |m: &Option<Arc<CompiledMap>>| m.as_ref().is_some_and(|m| m.map.epoch > epoch);
        let waited = tokio::time::timeout_at(until, async { rx.wait_for(newer).await.is_ok() });
        waited.await.unwrap_or(false)
    }

    /// Asks the background task to re-read the map now.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Installs `map` if it is newer than the one in use; returns whether it was installed.
    pub fn install(&self, map: CompiledMap) -> bool {
        let map = Arc::new(map);
        self.current.send_if_modified(|current| match current {
            Some(cur) if cur.map.epoch >= map.map.epoch => false,
            _ => {
                *current = Some(map);
                true
            }
        })
    }

    /// The addresses to ask, in this round's order: the map's nodes, then the seeds it lacks.
    fn candidates(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self
            .current()
            .map(|m| m.map.nodes.values().map(|n| n.addr.clone()).collect())
            .unwrap_or_default();
        for seed in &self.seeds {
            if !addrs.contains(seed) {
                addrs.push(seed.clone());
            }
        }
        if !addrs.is_empty() {
            let start = self.rotation.fetch_add(1, Ordering::Relaxed) % addrs.len();
            addrs.rotate_left(start);
        }
        addrs
    }

    /// Compiles and installs a map read from `addr` if it is newer; returns its epoch.
    fn accept(&self, map: ClusterMap, addr: &str, metrics: &Metrics) -> Result<u64, String> {
        let compiled = CompiledMap::new(map)
            .map_err(|e| format!("{addr} sent a map that does not compile: {e}"))?;
        let epoch = compiled.map.epoch;
        self.offer(compiled, addr, metrics);
        Ok(epoch)
    }

    /// Installs a compiled map from `source` if it is newer, counting and logging it; returns
    /// whether it was installed.
    pub fn offer(&self, map: CompiledMap, source: &str, metrics: &Metrics) -> bool {
        let epoch = map.map.epoch;
        let installed = self.install(map);
        if installed {
            metrics.map_updates.fetch_add(1, Ordering::Relaxed);
            metrics.map_epoch.fetch_max(epoch, Ordering::Relaxed);
            tracing::info!(epoch, from = %source, "cluster map loaded");
        }
        installed
    }

    /// Decodes and installs a map as sent by a node (`map_json` of `GetClusterMapResponse`,
    /// `ProposeMapChangeResponse`); returns its epoch.
    pub fn accept_json(&self, json: &[u8], addr: &str, metrics: &Metrics) -> Result<u64, String> {
        let map: ClusterMap = serde_json::from_slice(json)
            .map_err(|e| format!("{addr} sent an undecodable cluster map: {e}"))?;
        self.accept(map, addr, metrics)
    }

    /// Reads the map from `addr` (a node that just told us our map is out of date) and installs
    /// it if newer; on failure asks the background task to look elsewhere.
    pub async fn refresh_from(&self, pool: &NodePool, metrics: &Metrics, addr: &str) {
        let result = match fetch(pool, addr).await {
            Ok(map) => self.accept(map, addr, metrics),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            metrics.map_fetch_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(node = %addr, error = %e, "cluster map fetch failed");
            self.request_refresh();
        }
    }

    /// Reads the map now unless a read that started after `asked` has already finished: a
    /// burst of callers (say, requests naming a keyspace created a moment ago through another
    /// router) costs one read. Returns the epoch in use afterwards.
    pub async fn refresh_after(&self, pool: &NodePool, metrics: &Metrics, asked: Instant) -> u64 {
        let mut last = self.last_read.lock().await;
        if matches!(*last, Some((started, _)) if started >= asked) {
            return self.epoch();
        }
        let started = Instant::now();
        match self.refresh_once(pool, metrics).await {
            Ok(epoch) => *last = Some((started, epoch)),
            Err(e) => tracing::debug!(error = %e, "cluster map refresh failed"),
        }
        self.epoch()
    }

    /// Reads the map from the first node that answers and installs it if newer. Returns the
    /// epoch read, or the errors met when no node answered.
    pub async fn refresh_once(&self, pool: &NodePool, metrics: &Metrics) -> Result<u64, String> {
        let mut errors = Vec::new();
        for addr in self.candidates() {
            match fetch(pool, &addr).await {
                Ok(map) => return self.accept(map, &addr, metrics),
                Err(e) => {
                    metrics.map_fetch_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(node = %addr, error = %e, "cluster map fetch failed");
                    errors.push(format!("{addr}: {e}"));
                }
            }
        }
        if errors.is_empty() {
            errors.push("no node addresses".to_string());
        }
        Err(errors.join("; "))
    }

    /// Keeps the map fresh until `shutdown`: loads it with backoff, then refreshes it every
    /// `interval` and whenever [`MapCache::request_refresh`] is called.
    pub async fn run_refresher(
        self: Arc<Self>,
        pool: Arc<NodePool>,
        metrics: Arc<Metrics>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut backoff = LOAD_BACKOFF.0;
        let mut failures: u64 = 0;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.refresh_once(&pool, &metrics) => r,
            };
            match result {
                Ok(_) => {
                    failures = 0;
                    backoff = LOAD_BACKOFF.0;
                }
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        let loaded = self.current().is_some();
                        tracing::warn!(failures, loaded, error = %e, "could not read the cluster map");
                    }
                }
            }
            let wait = if self.current().is_none() {
                let d = backoff;
                backoff = (backoff * 2).min(LOAD_BACKOFF.1);
                d
            } else {
                interval
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.refresh.notified() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(MIN_REFRESH_GAP) => {}
                    }
                }
            }
        }
    }
}

impl MapCache {
    /// Follows `WatchClusterMap` until `shutdown`: one node at a time, moving to another (with
    /// backoff) whenever a stream cannot be opened, ends or fails, and resuming each new stream
    /// from the epoch in use.
    pub async fn run_watcher(
        self: Arc<Self>,
        pool: Arc<NodePool>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = WATCH_BACKOFF.0;
        let mut failures: u64 = 0;
        loop {
            let candidates = self.candidates();
            for addr in candidates {
                let WatchEnd { delivered, error } = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.watch_one(&pool, &metrics, &addr) => r,
                };
                if delivered > 0 {
                    backoff = WATCH_BACKOFF.0;
                    failures = 0;
                } else {
                    failures += 1;
                }
                match error {
                    Some(e) if failures.is_power_of_two() => {
                        tracing::warn!(node = %addr, failures, error = %e, "cluster map watch failed")
                    }
                    Some(e) => {
                        tracing::debug!(node = %addr, error = %e, "cluster map watch failed")
                    }
                    None => tracing::debug!(node = %addr, "cluster map watch ended"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(WATCH_BACKOFF.1);
            }
            if self.candidates().is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(WATCH_BACKOFF.1) => {}
                }
            }
        }
    }

    /// One watch stream on `addr`, until it ends or fails.
    async fn watch_one(&self, pool: &NodePool, metrics: &Metrics, addr: &str) -> WatchEnd {
        let mut end = WatchEnd {
            delivered: 0,
            error: None,
        };
        let mut client = match pool.client(addr) {
            Ok(c) => c,
            Err(e) => {
                end.error = Some(e.to_string());
                return end;
            }
        };
        let request = WatchClusterMapRequest {
            from_epoch: self.epoch(),
        };
        let opened = tokio::time::timeout(FETCH_TIMEOUT, client.watch_cluster_map(request)).await;
        let mut stream = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(s)) => {
                end.error = Some(format!("{:?}: {}", s.code(), s.message()));
                return end;
            }
            Err(_) => {
                end.error = Some("timed out opening the stream".to_string());
                return end;
            }
        };
        tracing::debug!(node = %addr, "watching the cluster map");
        loop {
            match stream.message().await {
                Ok(Some(update)) => match self.accept_json(&update.map_json, addr, metrics) {
                    Ok(_) => end.delivered += 1,
                    Err(e) => {
                        metrics.map_fetch_errors.fetch_add(1, Ordering::Relaxed);
                        end.error = Some(e);
                        return end;
                    }
                },
                Ok(None) => return end,
                Err(s) => {
                    end.error = Some(format!("{:?}: {}", s.code(), s.message()));
                    return end;
                }
            }
        }
    }
}

/// How a watch stream ended: how many maps it delivered, and the error, if it failed.
struct WatchEnd {
    delivered: u64,
    error: Option<String>,
}

/// One `GetClusterMap` call.
async fn fetch(pool: &NodePool, addr: &str) -> Result<ClusterMap, String> {
    let mut client = pool.client(addr).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(GetClusterMapRequest {});
    request.set_timeout(FETCH_TIMEOUT);
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.get_cluster_map(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let map: ClusterMap = serde_json::from_slice(&response.map_json)
        .map_err(|e| format!("undecodable cluster map: {e}"))?;
    if response.epoch != 0 && response.epoch != map.epoch {
        tracing::debug!(node = %addr, response = response.epoch, map = map.epoch, "epoch fields differ");
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(epoch: u64) -> CompiledMap {
        let nodes: Vec<_> = (1..=3)
            .map(|i| (i, format!("127.0.0.1:{}", 7000 + i)))
            .collect();
        let mut m = ClusterMap::bootstrap(&nodes, 2, 3).unwrap();
        m.epoch = epoch;
        CompiledMap::new(m).unwrap()
    }

    #[tokio::test]
    async fn installs_only_newer_maps() {
        let cache = MapCache::new(vec!["127.0.0.1:1".into()]);
        assert!(cache.current().is_none());
        assert!(cache.install(map(2)));
        assert!(!cache.install(map(2)));
        assert!(!cache.install(map(1)));
        assert!(cache.install(map(3)));
        assert_eq!(cache.current().unwrap().map.epoch, 3);
    }

    #[tokio::test]
    async fn wait_returns_not_ready_at_the_deadline_and_the_map_once_loaded() {
        let cache = Arc::new(MapCache::new(vec![]));
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(matches!(
            cache.wait(deadline).await,
            Err(RouterError::NotReady)
        ));
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.wait(Instant::now() + Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        cache.install(map(1));
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.map.epoch, 1);
    }

    #[test]
    fn candidates_put_map_nodes_first_then_missing_seeds() {
        let cache = MapCache::new(vec!["seed:1".into(), "127.0.0.1:7001".into()]);
        assert_eq!(cache.candidates().len(), 2);
        cache.install(map(1));
        let mut c = cache.candidates();
        c.sort();
        assert_eq!(
            c,
            vec![
                "127.0.0.1:7001",
                "127.0.0.1:7002",
                "127.0.0.1:7003",
                "seed:1"
            ]
        );
    }

    #[tokio::test]
    async fn the_watcher_follows_changes_and_moves_on_when_its_node_stops() {
        use crate::fake_node::FakeCluster;
        use shardmap::{KeyspaceSpec, MapChange, StrategyKind};

        let cluster = FakeCluster::start(3, 2).await;
        let spec = |name: &str| {
            MapChange::CreateKeyspace(KeyspaceSpec {
                name: name.into(),
                strategy: StrategyKind::Hash,
                shards: 1,
                split_points: vec![],
                vnodes: 0,
                fallback: None,
                separator: vec![],
                replication: 0,
            })
        };
        // Seeds only: the first map comes from the watch.
        let cache = Arc::new(MapCache::new(cluster.addrs.clone()));
        let stop = CancellationToken::new();
        let pool = Arc::new(NodePool::default());
        let metrics = Arc::new(Metrics::default());
        let watcher = tokio::spawn(cache.clone().run_watcher(
            pool.clone(),
            metrics.clone(),
            stop.clone(),
        ));
        let first = cache
            .wait(Instant::now() + Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(first.map.epoch, 1);

        for round in 0..3 {
            let epoch = cluster.change_map(&spec(&format!("k{round}"))).epoch;
            let started = Instant::now();
            assert!(
                cache
                    .wait_newer(epoch - 1, started + Duration::from_secs(3))
                    .await,
                "round {round}: epoch {epoch} never arrived"
            );
            if round == 0 {
                assert!(started.elapsed() < Duration::from_millis(500));
            }
            assert_eq!(cache.epoch(), epoch);
            // Whichever node the watch is on, stop one: the next change must still arrive.
            cluster.stop_node(round + 1);
            if round == 2 {
                break;
            }
        }
        assert!(metrics.map_updates.load(Ordering::Relaxed) >= 4);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), watcher)
            .await
            .unwrap()
            .unwrap();
    }
}
