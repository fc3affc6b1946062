//! The cluster map cache: loads the map from any node, keeps it fresh, and hands out the
//! compiled map to every request.
//!
//! The current map lives in a `tokio::sync::watch` channel holding `Option<Arc<CompiledMap>>`:
//! readers clone the `Arc` out (the channel's internal read lock is held for that clone only,
//! never across an `.await`), a refresh swaps in a new `Arc` without blocking readers for
//! longer than that, and requests that arrive before the first map can wait for it. This is the
//! "ArcSwap" pattern with waiting built in.
//!
//! A background task re-reads the map every `--map-refresh-interval`, and at once when a
//! request reports an error suggesting the map moved (unknown group, stale epoch, a leader the
//! map does not know). Until the first map is loaded it retries with backoff. It asks the
//! nodes of the map it has first, then the `--nodes` seeds, starting at a different node each
//! time so that one lagging node cannot keep the router on an old map.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_proto::node::GetClusterMapRequest;
use shardmap::{ClusterMap, CompiledMap};
use tokio::sync::{watch, Notify};
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

/// The shared, refreshable cluster map.
#[derive(Debug)]
pub struct MapCache {
    current: watch::Sender<Option<Arc<CompiledMap>>>,
    seeds: Vec<String>,
    refresh: Notify,
    rotation: AtomicUsize,
}

impl MapCache {
    /// An empty cache that will load from `seeds` (`HOST:PORT` each).
    pub fn new(seeds: Vec<String>) -> MapCache {
        MapCache {
            current: watch::Sender::new(None),
            seeds,
            refresh: Notify::new(),
            rotation: AtomicUsize::new(0),
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

    /// Reads the map from the first node that answers and installs it if newer. Returns the
    /// epoch read, or the errors met when no node answered.
    pub async fn refresh_once(&self, pool: &NodePool, metrics: &Metrics) -> Result<u64, String> {
        let mut errors = Vec::new();
        for addr in self.candidates() {
            match fetch(pool, &addr).await {
                Ok(map) => {
                    let epoch = map.epoch;
                    let compiled = CompiledMap::new(map)
                        .map_err(|e| format!("{addr} sent a map that does not compile: {e}"))?;
                    if self.install(compiled) {
                        metrics.map_updates.fetch_add(1, Ordering::Relaxed);
                        metrics.map_epoch.store(epoch, Ordering::Relaxed);
                        tracing::info!(epoch, from = %addr, "cluster map loaded");
                    }
                    return Ok(epoch);
                }
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
}
