//! The node runtime: its configuration, the groups it hosts and how they start.
//!
//! A node is one sled database, one flusher, one peer pool, and one openraft `Raft` per hosted
//! group. Which groups it hosts comes from the bootstrap cluster map, computed the same way on
//! every member from the configuration stored on first start.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kv_proto::node::node_client::NodeClient;
use kv_proto::node::{GroupStatusRequest, WatchClusterMapRequest};
use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use shardmap::{AuthConfig, ClusterMap, CompiledMap, Limits, Token, TokenEntry, META_GROUP};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batches, Submitted, READS_IN_FLIGHT, WRITES_IN_FLIGHT};
use crate::error::NodeError;
use crate::freshness::{within_staleness, Freshness};
use crate::keys;
use crate::network::{GroupNetwork, PeerPool};
use crate::read_index::{read_index_round, RestoredLeadership};
use crate::storage::{DurableAcks, FileLog, Flusher, GroupData, StateMachine};
use crate::types::{
    is_fenced, Dedup, FenceChange, FenceOutcome, GroupId, NodeId, Op, OpResult, Raft, Request,
    Response, SubWrite, MAX_FENCES,
};

/// The longest an eventual read waits for its replica to catch up with the session token
/// before refusing with `LAGGING` (the router then tries another replica).
pub const MAX_CATCH_UP_WAIT: Duration = Duration::from_millis(500);

/// Everything `kvnode` is started with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// `(id, HOST:PORT)` of every initial member; only read on first start.
    pub initial_cluster: Vec<(NodeId, String)>,
    pub shards: u32,
    pub replication: usize,
    pub limits: Limits,
    pub raft: RaftTuning,
    /// sled's page cache.
    pub cache_capacity_bytes: u64,
    /// How long a data request may wait for Raft (quorum, leadership) before `UNAVAILABLE`.
    pub request_timeout: Duration,
    /// Size at which a group's log segment file is closed ([`crate::storage::SEGMENT_BYTES`]).
    pub log_segment_bytes: u64,
    /// A file holding the first admin's access token (`kvt_...`). Read on a new cluster's
    /// first start only: the cluster then starts with auth on and user `admin` holding role
    /// `admin` with that token's hash. `None`: auth stays off.
    pub bootstrap_admin_token_file: Option<PathBuf>,
    /// Serve and dial mutual TLS with these certificates (plaintext when `None`).
    pub tls: Option<Arc<kv_proto::tls::TlsCerts>>,
}

/// Per-group Raft settings.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot, so slightly lagging followers need no snapshot.
    pub max_logs_kept: u64,
    /// Bytes of entries per AppendEntries message ([`crate::network::fit_entries`]).
    pub append_bytes: usize,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 200,
            election_timeout_ms: 1_000,
            snapshot_logs: 10_000,
            max_logs_kept: 1_000,
            append_bytes: crate::network::DEFAULT_APPEND_BYTES,
        }
    }
}

/// What the first start writes to the data dir; later starts read it and ignore the flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredConfig {
    id: NodeId,
    initial_cluster: Vec<(NodeId, String)>,
    shards: u32,
    replication: usize,
    /// The hash of the bootstrap admin token, when the first start was given one. Absent in
    /// data dirs from before auth, and not written when `None`, so those read unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bootstrap_admin: Option<TokenEntry>,
}

impl StoredConfig {
    /// The map a new cluster starts with: the placement of `--initial-cluster`, with auth on
    /// when a bootstrap admin token was given.
    fn bootstrap_map(&self) -> Result<ClusterMap, NodeError> {
        let mut map = ClusterMap::bootstrap(&self.initial_cluster, self.shards, self.replication)
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        if let Some(token) = &self.bootstrap_admin {
            map.auth = AuthConfig::bootstrap(token.clone());
        }
        Ok(map)
    }
}

/// Reads the bootstrap admin token file: one `kvt_...` token, surrounding whitespace ignored.
/// Refuses an unreadable, empty or malformed file, since starting with auth off instead would
/// leave a cluster meant to be closed open to anyone.
fn read_bootstrap_token(path: &std::path::Path) -> Result<TokenEntry, NodeError> {
    let refuse = |why: String| {
        NodeError::BadRequest(format!(
            "--bootstrap-admin-token-file {}: {why}",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(path).map_err(|e| refuse(e.to_string()))?;
    if text.trim().is_empty() {
        return Err(refuse(
            "the file is empty; write a token made by `kvctl auth token-new` into it".into(),
        ));
    }
    let token = Token::parse(&text)
        .map_err(|e| refuse(format!("{e} (make one with `kvctl auth token-new`)")))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(token.entry(now_ms, None))
}

/// A hosted group.
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub data: GroupData,
    /// When this replica last heard from its leader, or (leading) from a quorum.
    pub freshness: Arc<Freshness>,
    /// The read floor of a leadership restored at startup ([`RestoredLeadership`]).
    pub restored: Arc<RestoredLeadership>,
    /// Read-index rounds shared by concurrent strong reads.
    pub reads: Arc<Batches<(), (), NodeError>>,
    /// Strong writes gathered into shared Raft entries.
    pub writes: Arc<Batches<SubWrite, Vec<OpResult>, NodeError>>,
}

/// The node's current cluster map, compiled, with its JSON form for serving.
pub struct MapState {
    pub compiled: CompiledMap,
    pub json: Vec<u8>,
}

impl MapState {
    fn new(map: ClusterMap) -> Result<MapState, NodeError> {
        let json = serde_json::to_vec(&map).map_err(|e| NodeError::Storage(e.to_string()))?;
        let compiled = CompiledMap::new(map).map_err(|e| NodeError::Storage(e.to_string()))?;
        Ok(MapState { compiled, json })
    }

    pub fn epoch(&self) -> u64 {
        self.compiled.map.epoch
    }
}

/// A running node.
pub struct Node {
    pub id: NodeId,
    pub limits: Limits,
    pub request_timeout: Duration,
    /// The newest cluster map this node knows. Meta replicas follow their own state machine;
    /// other nodes watch a meta replica. Groups are started and stopped to match it.
    map: watch::Sender<Arc<MapState>>,
    // std RwLock: the map of groups is read on every request and never held across an await.
    groups: RwLock<HashMap<GroupId, Arc<Group>>>,
    /// Groups placed here that failed to start, with why. Fenced off until the node restarts
    /// (starting again would meet the same corrupt file), so that one bad group neither stops
    /// the node nor hides among the healthy ones: requests for it get
    /// [`NodeError::GroupFailed`], and `/ready` and `/metrics` name it.
    failed: RwLock<BTreeMap<GroupId, String>>,
    /// Why the node is stopping after a group's Raft core stopped (see [`crate::supervise`]).
    storage_failure: RwLock<Option<String>>,
    pub flusher: Flusher,
    /// Eventual writes waiting for their entry to be durable in this (leader's) log.
    acks: DurableAcks,
    db: sled::Db,
    node_tree: sled::Tree,
    data_dir: PathBuf,
    log_segment_bytes: u64,
    tuning: RaftTuning,
    pool: PeerPool,
    /// Serializes group starts and stops.
    reconciling: tokio::sync::Mutex<()>,
    /// Raft messages refused before openraft saw them ([`crate::raft_guard`]).
    pub raft_refused: crate::raft_guard::Refused,
    /// This node's certificates, when it serves and dials TLS.
    pub tls: Option<Arc<kv_proto::tls::TlsCerts>>,
    /// Calls refused for their caller's certificate role ([`crate::peer_roles`]).
    pub roles_refused: Arc<crate::peer_roles::Refused>,
}

impl Node {
    /// Opens the data dir and starts every hosted group.
    pub async fn start(
        config: NodeConfig,
        shutdown: CancellationToken,
    ) -> Result<Arc<Node>, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            NodeError::Storage(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let db = sled::Config::new()
            .path(keys::db_dir(&config.data_dir))
            .cache_capacity(config.cache_capacity_bytes)
            .open()?;
        let flusher = Flusher::start_with_fsync(db.clone(), &keys::db_dir(&config.data_dir))
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let node_tree = db.open_tree(keys::NODE_TREE)?;
        let stored = load_or_store_config(&node_tree, &config)?;
        flusher
            .wait_durable()
            .await
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let bootstrap = stored.bootstrap_map()?;
        // The last map this node saw, if newer than the bootstrap one: a restart starts the
        // groups created since without waiting for the meta group.
        let mut map = bootstrap.clone();
        if let Some(raw) = node_tree.get(keys::NODE_MAP)? {
            if let Ok(last) = serde_json::from_slice::<ClusterMap>(&raw) {
                if last.epoch > map.epoch {
                    map = last;
                }
            }
        }
        let node = Arc::new(Node {
            id: stored.id,
            limits: config.limits,
            request_timeout: config.request_timeout,
            map: watch::channel(Arc::new(MapState::new(map)?)).0,
            groups: RwLock::new(HashMap::new()),
            failed: RwLock::new(BTreeMap::new()),
            storage_failure: RwLock::new(None),
            flusher,
            acks: DurableAcks::new(stored.id),
            db,
            node_tree,
            data_dir: config.data_dir.clone(),
            log_segment_bytes: config.log_segment_bytes,
            pool: PeerPool::new(config.raft.append_bytes, config.tls.clone()),
            tuning: config.raft,
            reconciling: tokio::sync::Mutex::new(()),
            raft_refused: Default::default(),
            tls: config.tls,
            roles_refused: Default::default(),
        });
        node.reconcile().await;
        if let Ok(meta) = node.group(META_GROUP) {
            node.load_meta_map(&meta);
            tokio::spawn(node.clone().store_initial_map(bootstrap, shutdown.clone()));
            tokio::spawn(node.clone().follow_local_meta(meta, shutdown.clone()));
        } else {
            tokio::spawn(node.clone().follow_remote_meta(shutdown.clone()));
        }
        tokio::spawn(node.clone().reconcile_on_change(shutdown));
        Ok(node)
    }

    /// The current map.
    pub fn map(&self) -> Arc<MapState> {
        self.map.borrow().clone()
    }

    /// A receiver that sees every new map.
    pub fn subscribe_map(&self) -> watch::Receiver<Arc<MapState>> {
        self.map.subscribe()
    }

    /// Installs `json` as the current map if it is newer; remembers it in the data dir.
    fn publish_map(&self, json: &[u8]) -> Result<bool, NodeError> {
        let map: ClusterMap = serde_json::from_slice(json)
            .map_err(|e| NodeError::Storage(format!("cluster map: {e}")))?;
        if map.epoch <= self.map.borrow().epoch() {
            return Ok(false);
        }
        let epoch = map.epoch;
        let state = Arc::new(MapState::new(map)?);
        self.node_tree.insert(keys::NODE_MAP, json)?;
        self.map.send_if_modified(|cur| {
            if state.epoch() > cur.epoch() {
                *cur = state;
                true
            } else {
                false
            }
        });
        tracing::info!(epoch, "cluster map updated");
        Ok(true)
    }

    fn load_meta_map(&self, meta: &Group) {
        match meta.data.cluster_map() {
            Ok(Some(raw)) => {
                if let Err(e) = self.publish_map(&raw) {
                    tracing::warn!(error = %e, "loading the meta group's map");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the meta group's map"),
        }
    }

    /// Meta replicas: publish every map their state machine applies.
    async fn follow_local_meta(self: Arc<Self>, meta: Arc<Group>, shutdown: CancellationToken) {
        let mut changes = meta.data.watch_map();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            self.load_meta_map(&meta);
        }
    }

    /// Other nodes: watch the map from a meta replica, moving to another on failure.
    async fn follow_remote_meta(self: Arc<Self>, shutdown: CancellationToken) {
        let mut attempt = 0usize;
        loop {
            let addrs: Vec<String> = {
                let m = self.map();
                m.compiled
                    .map
                    .replicas(META_GROUP)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|id| m.compiled.map.node_addr(*id).map(str::to_string))
                    .collect()
            };
            if let Some(addr) = addrs.get(attempt % addrs.len().max(1)) {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    res = self.watch_from(addr) => {
                        if let Err(e) = res {
                            tracing::debug!(addr, error = %e, "map watch ended");
                        }
                    }
                }
            }
            attempt += 1;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }

    async fn watch_from(&self, addr: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let channel = self.pool.channel(addr)?;
        let mut client =
            NodeClient::new(channel).max_decoding_message_size(kv_proto::MAX_MESSAGE_BYTES);
        let from_epoch = self.map.borrow().epoch();
        let mut stream = client
            .watch_cluster_map(WatchClusterMapRequest { from_epoch })
            .await?
            .into_inner();
        while let Some(msg) = stream.message().await? {
            self.publish_map(&msg.map_json)?;
        }
        Ok(())
    }

    async fn reconcile_on_change(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.subscribe_map();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            self.reconcile().await;
        }
    }

    /// Starts the groups the map places here and stops those it no longer lists. A group that
    /// fails to start is recorded as failed ([`Node::failed_groups`]) and the others go on.
    async fn reconcile(&self) {
        let _guard = self.reconciling.lock().await;
        let map = self.map();
        let wanted = map.compiled.map.groups_on(self.id);
        let running: Vec<GroupId> = self.groups().iter().map(|g| g.id).collect();
        let failed: Vec<GroupId> = self.failed_groups().into_iter().map(|(g, _)| g).collect();
        for &g in &wanted {
            if running.contains(&g) || failed.contains(&g) {
                continue;
            }
            if let Err(e) = self.start_group(g, &map.compiled.map).await {
                tracing::error!(
                    group = g,
                    error = %e,
                    "shard group failed to start: fenced off on this node until it restarts; \
                     its other replicas and this node's other groups keep serving"
                );
                self.failed
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(g, e.to_string());
            }
        }
        for g in running {
            if !map.compiled.map.groups.contains_key(&g) {
                self.drop_group(g).await;
            }
        }
        for g in failed {
            if !map.compiled.map.groups.contains_key(&g) {
                self.failed
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&g);
                self.remove_group_files(g);
                tracing::info!(
                    group = g,
                    "removed the files of a dropped, failed shard group"
                );
            }
        }
    }

    /// Records why the node is stopping (see [`crate::supervise`]): from then on it is not
    /// ready.
    pub fn record_storage_failure(&self, why: String) {
        let mut failure = self
            .storage_failure
            .write()
            .unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(why);
    }

    /// Why the node is stopping, if a group's Raft core stopped.
    pub fn storage_failure(&self) -> Option<String> {
        self.storage_failure
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The groups placed here that failed to start, with why, by group id.
    pub fn failed_groups(&self) -> Vec<(GroupId, String)> {
        self.failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(g, why)| (*g, why.clone()))
            .collect()
    }

    async fn drop_group(&self, id: GroupId) {
        let Some(group) = self
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        else {
            return;
        };
        if let Err(e) = group.raft.shutdown().await {
            tracing::warn!(group = id, error = %e, "raft shutdown");
        }
        self.remove_group_files(id);
        tracing::info!(group = id, "stopped and removed a dropped shard group");
    }

    /// Deletes a group's trees and log files.
    fn remove_group_files(&self, id: GroupId) {
        for tree in [
            keys::raft_tree(id),
            keys::data_tree(id),
            keys::sm_tree(id),
            keys::snapshot_tree(id),
            keys::dedup_tree(id),
        ] {
            if let Err(e) = self.db.drop_tree(tree.as_bytes()) {
                tracing::warn!(group = id, tree, error = %e, "dropping tree");
            }
        }
        if let Err(e) = FileLog::remove_dir(&keys::log_dir(&self.data_dir, id)) {
            tracing::warn!(group = id, error = %e, "removing the log files");
        }
    }

    async fn start_group(&self, group: GroupId, map: &ClusterMap) -> Result<(), NodeError> {
        let tuning = &self.tuning;
        let raft_config = openraft::Config {
            cluster_name: format!("kv-group-{group}"),
            heartbeat_interval: tuning.heartbeat_ms,
            election_timeout_min: tuning.election_timeout_ms,
            election_timeout_max: tuning.election_timeout_ms * 2,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_logs),
            max_in_snapshot_log_to_keep: tuning.max_logs_kept,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::BadRequest(format!("raft config: {e}")))?;
        let replicas = map
            .replicas(group)
            .map_err(|e| NodeError::BadRequest(e.to_string()))?
            .to_vec();
        let (flusher, acks) = (self.flusher.clone(), self.acks.clone());
        let dir = keys::log_dir(&self.data_dir, group);
        // Opening reads the whole log and rebuilds the request-id table: disk-bound work that
        // must not hold up the worker's other tasks.
        let (mut log, sm) = crate::storage::off_worker(|| {
            let log = FileLog::open(&self.db, &dir, group, flusher, acks)?
                .with_segment_bytes(self.log_segment_bytes);
            let sm = StateMachine::open(&self.db, group, self.flusher.clone(), &log)?;
            Ok::<_, crate::types::StorageError>((log, sm))
        })
        .map_err(|e| NodeError::Storage(e.to_string()))?;
        let data = sm.data();
        let network = GroupNetwork {
            group,
            pool: self.pool.clone(),
        };
        let raft_config = Arc::new(raft_config);
        let storage = |e: crate::types::StorageError| NodeError::Storage(e.to_string());
        let vote = log.read_vote().await.map_err(storage)?;
        let last = log.get_log_state().await.map_err(storage)?.last_log_id;
        let restored =
            RestoredLeadership::at_startup(self.id, vote.as_ref(), last.map(|l| l.index));
        let raft = Raft::new(self.id, raft_config, network, log, sm)
            .await
            .map_err(|e| NodeError::Fatal(e.to_string()))?;
        // Every replica of a new group may initialize it with the same membership, which
        // openraft documents as safe. The first replica listed does so at once and so usually
        // leads first (the map rotates first replicas, spreading leaders); the others wait a few
        // election timeouts, so a group whose first replica is down still forms. A replica whose
        // data dir was wiped must not re-initialize a group that already runs: it asks first.
        let initialized = match raft.is_initialized().await {
            Ok(initialized) => initialized,
            Err(e) => {
                // Not handed out yet: stop it rather than leave it running unreachable.
                let _ = raft.shutdown().await;
                return Err(NodeError::Fatal(e.to_string()));
            }
        };
        if !initialized {
            let delay = if replicas.first() == Some(&self.id) {
                Duration::ZERO
            } else {
                Duration::from_millis(self.tuning.election_timeout_ms * 4)
            };
            tokio::spawn(initialize_group(
                raft.clone(),
                self.pool.clone(),
                self.id,
                group,
                replicas,
                map.clone(),
                delay,
            ));
        }
        let freshness = Arc::new(Freshness::default());
        tokio::spawn(track_quorum_acks(raft.metrics(), freshness.clone()));
        let handle = Arc::new(Group {
            id: group,
            raft,
            data,
            freshness,
            restored: Arc::new(restored),
            reads: Arc::new(Batches::new(READS_IN_FLIGHT)),
            writes: Arc::new(Batches::with_byte_budget(
                WRITES_IN_FLIGHT,
                self.limits.max_write_bytes,
            )),
        });
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, handle);
        Ok(())
    }

    /// Proposes the bootstrap map to the meta group until one is stored.
    async fn store_initial_map(
        self: Arc<Self>,
        bootstrap: ClusterMap,
        shutdown: CancellationToken,
    ) {
        let Ok(meta) = self.group(META_GROUP) else {
            return;
        };
        let Ok(json) = serde_json::to_vec(&bootstrap) else {
            return;
        };
        loop {
            if matches!(meta.data.cluster_map(), Ok(Some(_))) {
                return;
            }
            let leader = meta.raft.metrics().borrow().current_leader;
            if leader == Some(self.id) {
                let req = Request::SetClusterMap {
                    epoch: bootstrap.epoch,
                    map_json: json.clone(),
                };
                match meta.raft.client_write(req).await {
                    Ok(r) => tracing::info!(response = %r.data, "stored the bootstrap cluster map"),
                    Err(e) => tracing::warn!(error = %e, "storing the bootstrap cluster map"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    pub fn group(&self, id: GroupId) -> Result<Arc<Group>, NodeError> {
        if let Some(g) = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(g.clone());
        }
        match self
            .failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            Some(reason) => Err(NodeError::GroupFailed {
                group: id,
                reason: reason.clone(),
            }),
            None => Err(NodeError::UnknownGroup(id)),
        }
    }

    pub fn groups(&self) -> Vec<Arc<Group>> {
        let mut v: Vec<_> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|g| g.id);
        v
    }

    /// Whether the node can serve: no group placed here failed, and every group it hosts has a
    /// leader. Otherwise why not, one line per group.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut why: Vec<String> = self
            .failed_groups()
            .into_iter()
            .map(|(g, reason)| format!("shard group {g} failed: {reason}"))
            .collect();
        if let Some(failure) = self.storage_failure() {
            why.insert(0, format!("stopping: {failure}"));
        }
        for g in self.groups() {
            if g.raft.metrics().borrow().current_leader.is_none() {
                why.push(format!("shard group {} has no leader", g.id));
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    /// Checks that a data request was routed with a current map and that its keys belong to
    /// the group. A router ahead of this node is given a moment for the node's map to catch up.
    pub async fn check_routing<'k>(
        &self,
        group: GroupId,
        epoch: u64,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Result<(), NodeError> {
        if group == META_GROUP {
            return Err(NodeError::BadRequest(
                "group 0 is the meta group and holds no user keys".into(),
            ));
        }
        if epoch > self.map.borrow().epoch() {
            let mut rx = self.subscribe_map();
            let _ =
                tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|m| m.epoch() >= epoch))
                    .await;
        }
        let map = self.map();
        let key_set_epoch = map.compiled.key_set_epoch(group).unwrap_or(0);
        if epoch != 0 && epoch < key_set_epoch {
            return Err(NodeError::StaleEpoch {
                group,
                request: epoch,
                current: map.epoch(),
            });
        }
        for key in keys {
            match map.compiled.owns(group, key) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(NodeError::WrongGroup {
                        group,
                        epoch: map.epoch(),
                    })
                }
                // A group missing from this node's map: dropped, or created after it.
                Err(_) => return Err(NodeError::UnknownGroup(group)),
            }
        }
        Ok(())
    }

    /// Proposes a write to a group and waits until it is committed and applied.
    pub async fn write(&self, group: &Group, req: Request) -> Result<Response, NodeError> {
        let res = tokio::time::timeout(self.request_timeout, group.raft.client_write(req))
            .await
            .map_err(|_| NodeError::NoQuorum {
                group: group.id,
                reason: format!("write not committed within {:?}", self.request_timeout),
            })?;
        match res {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(NodeError::NotLeader {
                    group: group.id,
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                })
            }
            Err(RaftError::APIError(e)) => Err(NodeError::BadRequest(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(NodeError::Fatal(e.to_string())),
        }
    }

    /// A strong write: committed by a quorum and applied, sharing its Raft entry with the
    /// strong writes that reached this leader at the same time ([`Batches`]).
    pub async fn write_strong(
        self: &Arc<Self>,
        group: &Arc<Group>,
        write: SubWrite,
    ) -> Result<Vec<OpResult>, NodeError> {
        let (node, g) = (self.clone(), group.clone());
        let id = group.id;
        let keys = write
            .ops
            .iter()
            .map(|op| group.writes.fingerprint(op.key()))
            .collect();
        let bytes = write.ops.iter().map(Op::bytes).sum();
        let count = write.ops.len();
        let submitted = group
            .writes
            .submit(
                write,
                keys,
                bytes,
                move |writes| async move { node.propose_writes(&g, writes).await },
                move || NodeError::Fatal(format!("a write batch of group {id} died")),
            )
            .await;
        let results = match submitted {
            Submitted::Done(result) => result?,
            // Another write of the same key is gathering: an entry of its own keeps the two
            // versions apart.
            Submitted::Conflict(write) => {
                let mut results = self.propose_writes(group, vec![write]).await?;
                results
                    .pop()
                    .ok_or_else(|| NodeError::Storage("a write entry returned no results".into()))?
            }
        };
        if is_fenced(count, &results) {
            return Err(self.fenced_error(group, None));
        }
        Ok(results)
    }

    /// The answer to a write refused by a fence of `group`, naming the fenced key if known.
    pub fn fenced_error(&self, group: &Group, key: Option<&[u8]>) -> NodeError {
        NodeError::Fenced {
            group: group.id,
            key: key.map_or_else(
                || "of the write".to_string(),
                |k| String::from_utf8_lossy(k).into_owned(),
            ),
        }
    }

    /// Raises or lifts a fence through `group`'s log (see [`crate::types::Fence`]).
    pub async fn fence(
        &self,
        group: &Group,
        change: FenceChange,
    ) -> Result<FenceOutcome, NodeError> {
        match self.write(group, Request::Fence(change)).await? {
            Response::Fenced(o) if o.full => Err(NodeError::TooManyFences {
                group: group.id,
                max: MAX_FENCES,
            }),
            Response::Fenced(o) => Ok(o),
            other => Err(NodeError::Storage(format!(
                "unexpected apply result {other} for a fence"
            ))),
        }
    }

    async fn propose_writes(
        &self,
        group: &Group,
        writes: Vec<SubWrite>,
    ) -> Result<Vec<Vec<OpResult>>, NodeError> {
        let count = writes.len();
        match self.write(group, Request::Writes { writes }).await? {
            Response::Writes(results) if results.len() == count => Ok(results),
            other => Err(NodeError::Storage(format!(
                "unexpected apply result {other} for {count} writes"
            ))),
        }
    }

    /// Proposes an eventual write: answers once the entry is durable in this leader's own log,
    /// without waiting for a quorum or for apply. The versions are the entry's log index;
    /// `existed` and `previous_version` are not known yet and reported as false and 0. The
    /// write is lost if this leader fails before replicating it. Not for conditional writes,
    /// whose outcome is only known at apply.
    pub async fn write_eventual(
        &self,
        group: &Group,
        ops: Vec<Op>,
        dedup: Option<Dedup>,
    ) -> Result<Vec<OpResult>, NodeError> {
        let count = ops.len();
        let mut pending = self.acks.register(group.id);
        let req = Request::TrackedWrite {
            origin: self.id,
            seq: pending.seq,
            ops,
            dedup,
        };
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut applied = tokio::time::timeout_at(deadline, group.raft.client_write_ff(req))
            .await
            .map_err(|_| NodeError::NoQuorum {
                group: group.id,
                reason: format!("write not accepted within {:?}", self.request_timeout),
            })?
            .map_err(|e| NodeError::Fatal(e.to_string()))?;
        let mut apply_open = true;
        loop {
            tokio::select! {
                biased;
                index = &mut pending.durable => {
                    let version = index.map_err(|_| NodeError::Storage(
                        "the log store dropped an eventual write's acknowledgement".into(),
                    ))?;
                    return Ok(vec![
                        OpResult {
                            version,
                            existed: false,
                            condition_failed: false,
                            previous_version: 0,
                        };
                        count
                    ]);
                }
                res = &mut applied, if apply_open => match res {
                    // Committed and applied before the durable acknowledgement was seen.
                    Ok(Ok(r)) => match r.data {
                        Response::Write(results) if is_fenced(count, &results) => {
                            return Err(self.fenced_error(group, None));
                        }
                        Response::Write(results) => return Ok(results),
                        other => {
                            return Err(NodeError::Storage(format!(
                                "unexpected apply result {other}"
                            )))
                        }
                    },
                    Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                        return Err(NodeError::NotLeader {
                            group: group.id,
                            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                        })
                    }
                    Ok(Err(e)) => return Err(NodeError::BadRequest(e.to_string())),
                    // Raft dropped the responder (shutting down, say): the entry may still
                    // become durable.
                    Err(_) => apply_open = false,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(NodeError::NoQuorum {
                        group: group.id,
                        reason: format!("write not durable within {:?}", self.request_timeout),
                    });
                }
            }
        }
    }

    /// Checks that this replica may serve an eventual read: it has applied at least
    /// `min_applied_index` (waiting up to [`MAX_CATCH_UP_WAIT`], or `budget` if shorter, for it
    /// to catch up), and, when `max_staleness_ms` is set, it heard from its leader (a leader:
    /// from a quorum) within that many milliseconds.
    pub async fn eventual_read_allowed(
        &self,
        group: &Group,
        min_applied_index: u64,
        max_staleness_ms: u32,
        budget: Option<Duration>,
    ) -> Result<(), NodeError> {
        if max_staleness_ms > 0 {
            let is_leader = group.raft.metrics().borrow().state == openraft::ServerState::Leader;
            let age = group.freshness.age(is_leader, std::time::Instant::now());
            if !within_staleness(age, max_staleness_ms) {
                return Err(NodeError::StaleReplica {
                    group: group.id,
                    age,
                    max_staleness_ms,
                });
            }
        }
        if min_applied_index > group.data.applied_index() {
            let wait = budget.map_or(MAX_CATCH_UP_WAIT, |b| b.min(MAX_CATCH_UP_WAIT));
            let _ = group
                .raft
                .wait(Some(wait))
                .applied_index_at_least(Some(min_applied_index), "session token")
                .await;
            let applied = group.data.applied_index();
            if applied < min_applied_index {
                return Err(NodeError::Lagging {
                    group: group.id,
                    applied,
                    wanted: min_applied_index,
                });
            }
        }
        Ok(())
    }

    /// Applies a map change through the meta group and waits until this node serves the map.
    pub async fn change_map(
        &self,
        change_json: Vec<u8>,
        expected_epoch: u64,
    ) -> Result<Arc<MapState>, NodeError> {
        let meta = self.group(META_GROUP).map_err(|_| NodeError::NotLeader {
            group: META_GROUP,
            leader: None,
        })?;
        let epoch = match self
            .write(
                &meta,
                Request::ChangeMap {
                    change_json,
                    expected_epoch,
                },
            )
            .await?
        {
            Response::MapChanged(Ok(epoch)) => epoch,
            Response::MapChanged(Err(refused)) => return Err(NodeError::MapChange(refused)),
            other => {
                return Err(NodeError::Storage(format!(
                    "unexpected apply result {other}"
                )))
            }
        };
        let mut rx = self.subscribe_map();
        let _ =
            tokio::time::timeout(self.request_timeout, rx.wait_for(|m| m.epoch() >= epoch)).await;
        Ok(self.map())
    }

    /// Waits until a read on this replica is linearizable: it is the leader, a quorum agrees,
    /// and it has applied up to the read index. Concurrent reads share a round that started
    /// after each of them arrived ([`Batches`]).
    pub async fn linearizable(&self, group: &Group) -> Result<(), NodeError> {
        let (raft, id, timeout) = (group.raft.clone(), group.id, self.request_timeout);
        let restored = group.restored.clone();
        let submitted = group
            .reads
            .submit(
                (),
                Vec::new(),
                0,
                move |reads| async move {
                    read_index_round(&raft, id, &restored, timeout).await?;
                    Ok(vec![(); reads.len()])
                },
                move || NodeError::Fatal(format!("the read-index round of group {id} died")),
            )
            .await;
        match submitted {
            Submitted::Done(result) => result,
            // Reads name no keys, so they never conflict; a round of its own would still do.
            Submitted::Conflict(()) => {
                read_index_round(&group.raft, id, &group.restored, self.request_timeout).await
            }
        }
    }

    /// Stops every group and flushes the database.
    pub async fn shutdown(&self) {
        for g in self.groups() {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = g.id, error = %e, "raft shutdown");
            }
        }
        if let Err(e) = self.flusher.wait_durable().await {
            tracing::warn!(error = %e, "final flush");
        }
    }
}

/// Follows a group's metrics and records, while it leads, when a quorum last acknowledged it.
/// Ends when the group's Raft stops.
async fn track_quorum_acks(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    freshness: Arc<Freshness>,
) {
    while metrics.changed().await.is_ok() {
        let (leading, since_ack) = {
            let m = metrics.borrow_and_update();
            (
                m.state == openraft::ServerState::Leader,
                m.millis_since_quorum_ack,
            )
        };
        if leading {
            let at = since_ack
                .and_then(|ms| std::time::Instant::now().checked_sub(Duration::from_millis(ms)));
            freshness.quorum_acked(at);
        }
    }
}

/// Initializes a group that has no state yet, after `delay`, unless it got state meanwhile (from
/// a peer that initialized first) or a peer already runs it.
async fn initialize_group(
    raft: Raft,
    pool: PeerPool,
    me: NodeId,
    group: GroupId,
    replicas: Vec<NodeId>,
    map: ClusterMap,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    if raft.is_initialized().await.unwrap_or(true)
        || peers_run_group(&pool, me, group, &replicas, &map).await
    {
        return;
    }
    let members: BTreeMap<NodeId, BasicNode> = replicas
        .iter()
        .filter_map(|id| map.node_addr(*id).map(|a| (*id, BasicNode::new(a))))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(group, "initialized shard group"),
        Err(e) => tracing::debug!(group, error = %e, "initialize"),
    }
}

/// Whether any peer already runs `group` with a leader or a term above zero.
async fn peers_run_group(
    pool: &PeerPool,
    me: NodeId,
    group: GroupId,
    replicas: &[NodeId],
    map: &ClusterMap,
) -> bool {
    for peer in replicas.iter().filter(|p| **p != me) {
        let Some(addr) = map.node_addr(*peer) else {
            continue;
        };
        let Ok(channel) = pool.channel(addr) else {
            continue;
        };
        let mut request = tonic::Request::new(GroupStatusRequest {});
        request.set_timeout(Duration::from_secs(1));
        let answer = tokio::time::timeout(
            Duration::from_millis(1_500),
            NodeClient::new(channel).group_status(request),
        )
        .await;
        if let Ok(Ok(resp)) = answer {
            if resp
                .into_inner()
                .groups
                .iter()
                .any(|g| g.group_id == group && (g.term > 0 || g.leader != 0))
            {
                tracing::info!(
                    group,
                    peer,
                    "peer already runs this group: joining, not initializing"
                );
                return true;
            }
        }
    }
    false
}

fn load_or_store_config(tree: &sled::Tree, config: &NodeConfig) -> Result<StoredConfig, NodeError> {
    if let Some(raw) = tree.get(keys::NODE_CONFIG)? {
        let stored: StoredConfig = serde_json::from_slice(&raw)
            .map_err(|e| NodeError::Storage(format!("stored node config: {e}")))?;
        if stored.id != config.id {
            return Err(NodeError::BadRequest(format!(
                "data dir {} belongs to node {}, not node {}",
                config.data_dir.display(),
                stored.id,
                config.id
            )));
        }
        let flags = StoredConfig {
            id: config.id,
            initial_cluster: config.initial_cluster.clone(),
            shards: config.shards,
            replication: config.replication,
            // The token file is read on first start only: it may be gone by now.
            bootstrap_admin: stored.bootstrap_admin.clone(),
        };
        if flags != stored && !config.initial_cluster.is_empty() {
            tracing::warn!(
                "flags differ from the configuration stored at first start; using the stored one"
            );
        }
        return Ok(stored);
    }
    if !config
        .initial_cluster
        .iter()
        .any(|(id, _)| *id == config.id)
    {
        return Err(NodeError::BadRequest(format!(
            "--initial-cluster does not name this node (--id {})",
            config.id
        )));
    }
    // Validate before storing, so a bad first start leaves nothing behind.
    ClusterMap::bootstrap(&config.initial_cluster, config.shards, config.replication)
        .map_err(|e| NodeError::BadRequest(e.to_string()))?;
    let bootstrap_admin = match &config.bootstrap_admin_token_file {
        Some(path) => Some(read_bootstrap_token(path)?),
        None => None,
    };
    let stored = StoredConfig {
        id: config.id,
        initial_cluster: config.initial_cluster.clone(),
        shards: config.shards,
        replication: config.replication,
        bootstrap_admin,
    };
    let raw = serde_json::to_vec(&stored).map_err(|e| NodeError::Storage(e.to_string()))?;
    tree.insert(keys::NODE_CONFIG, raw)?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_stored_config_json() {
        // If this fails you changed a persisted format; existing data dirs would be misread
        // (a node restarted on its data dir reads this record, not its flags).
        const CHANGED: &str = "you changed a persisted format; existing data dirs would be misread";
        let config = StoredConfig {
            id: 2,
            initial_cluster: vec![(1, "a:1".into()), (2, "b:2".into())],
            shards: 4,
            replication: 3,
            bootstrap_admin: None,
        };
        let golden =
            r#"{"id":2,"initial_cluster":[[1,"a:1"],[2,"b:2"]],"shards":4,"replication":3}"#;
        assert_eq!(serde_json::to_string(&config).unwrap(), golden, "{CHANGED}");
        let back: StoredConfig = serde_json::from_str(golden).unwrap();
        assert_eq!(back, config, "{CHANGED}");
        // With a bootstrap admin token's hash (first started with --bootstrap-admin-token-file).
        let with_admin = StoredConfig {
            bootstrap_admin: Some(TokenEntry {
                id: "0011223344556677".into(),
                sha256: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
                created_ms: 5,
                expires_at_ms: None,
            }),
            ..config
        };
        let golden = concat!(
            r#"{"id":2,"initial_cluster":[[1,"a:1"],[2,"b:2"]],"shards":4,"replication":3,"#,
            r#""bootstrap_admin":{"id":"0011223344556677","#,
            r#""sha256":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","#,
            r#""created_ms":5,"expires_at_ms":null}}"#
        );
        assert_eq!(
            serde_json::to_string(&with_admin).unwrap(),
            golden,
            "{CHANGED}"
        );
        let back: StoredConfig = serde_json::from_str(golden).unwrap();
        assert_eq!(back, with_admin, "{CHANGED}");
        let three = StoredConfig {
            initial_cluster: vec![(1, "a:1".into()), (2, "b:2".into()), (3, "c:3".into())],
            ..back
        };
        assert!(three.bootstrap_map().unwrap().auth.enabled);
    }

    #[test]
    fn bootstrap_token_files_must_hold_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        for (text, expect) in [
            ("", "empty"),
            ("  \n", "empty"),
            ("hunter2\n", "kvt_"),
            ("kvt_00_11\n", "kvt_"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = read_bootstrap_token(&path).unwrap_err().to_string();
            assert!(
                e.contains(expect) && e.contains("--bootstrap-admin-token-file"),
                "{text:?}: {e}"
            );
        }
        assert!(read_bootstrap_token(&dir.path().join("missing")).is_err());
        let token = Token::parse(&format!("kvt_0011223344556677_{}", "ab".repeat(32))).unwrap();
        std::fs::write(&path, format!("{}\n", token.reveal())).unwrap();
        let entry = read_bootstrap_token(&path).unwrap();
        assert_eq!(entry.id, token.id());
        assert!(!entry.sha256.is_empty() && !token.reveal().contains(&entry.sha256));
    }
}
