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
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use shardmap::{ClusterMap, CompiledMap, Limits, META_GROUP};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::NodeError;
use crate::keys;
use crate::network::{GroupNetwork, PeerPool};
use crate::storage::{Flusher, GroupData, LogStore, StateMachine};
use crate::types::{GroupId, NodeId, Raft, Request, Response};

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
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 200,
            election_timeout_ms: 1_000,
            snapshot_logs: 10_000,
            max_logs_kept: 1_000,
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
}

/// A hosted group.
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub data: GroupData,
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
    pub flusher: Flusher,
    db: sled::Db,
    node_tree: sled::Tree,
    tuning: RaftTuning,
    pool: PeerPool,
    /// Serializes group starts and stops.
    reconciling: tokio::sync::Mutex<()>,
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
            .path(config.data_dir.join("db"))
            .cache_capacity(config.cache_capacity_bytes)
            .open()?;
        let flusher = Flusher::start(db.clone()).map_err(|e| NodeError::Storage(e.to_string()))?;
        let node_tree = db.open_tree(keys::NODE_TREE)?;
        let stored = load_or_store_config(&node_tree, &config)?;
        flusher
            .wait_durable()
            .await
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let bootstrap =
            ClusterMap::bootstrap(&stored.initial_cluster, stored.shards, stored.replication)
                .map_err(|e| NodeError::BadRequest(e.to_string()))?;
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
            flusher,
            db,
            node_tree,
            tuning: config.raft,
            pool: PeerPool::default(),
            reconciling: tokio::sync::Mutex::new(()),
        });
        node.reconcile().await?;
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
            if let Err(e) = self.reconcile().await {
                tracing::error!(error = %e, "starting or stopping groups for the new map");
            }
        }
    }

    /// Starts the groups the map places here and stops those it no longer lists.
    async fn reconcile(&self) -> Result<(), NodeError> {
        let _guard = self.reconciling.lock().await;
        let map = self.map();
        let wanted = map.compiled.map.groups_on(self.id);
        let running: Vec<GroupId> = self.groups().iter().map(|g| g.id).collect();
        for g in &wanted {
            if !running.contains(g) {
                self.start_group(*g, &map.compiled.map).await?;
            }
        }
        for g in running {
            if !map.compiled.map.groups.contains_key(&g) {
                self.drop_group(g).await;
            }
        }
        Ok(())
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
        for tree in [
            keys::log_tree(id),
            keys::raft_tree(id),
            keys::data_tree(id),
            keys::sm_tree(id),
        ] {
            if let Err(e) = self.db.drop_tree(tree.as_bytes()) {
                tracing::warn!(group = id, tree, error = %e, "dropping tree");
            }
        }
        tracing::info!(group = id, "stopped and removed a dropped shard group");
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
        let log = LogStore::open(&self.db, group, self.flusher.clone())?;
        let sm = StateMachine::open(&self.db, group, self.flusher.clone())
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let data = sm.data();
        let network = GroupNetwork {
            group,
            pool: self.pool.clone(),
        };
        let raft = Raft::new(self.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| NodeError::Fatal(e.to_string()))?;
        let replicas = map
            .replicas(group)
            .map_err(|e| NodeError::BadRequest(e.to_string()))?
            .to_vec();
        // The first replica in the map initializes a new group, and so usually leads it first;
        // the map rotates first replicas, which spreads leaders over the nodes. A replica whose
        // data dir was wiped must not re-initialize a group that already runs: it asks first.
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Fatal(e.to_string()))?;
        if !initialized
            && replicas.first() == Some(&self.id)
            && !self.peers_run_group(group, &replicas, map).await
        {
            let members: BTreeMap<NodeId, BasicNode> = replicas
                .iter()
                .filter_map(|id| map.node_addr(*id).map(|a| (*id, BasicNode::new(a))))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(group, "initialized shard group"),
                Err(e) => tracing::warn!(group, error = %e, "initialize"),
            }
        }
        let handle = Arc::new(Group {
            id: group,
            raft,
            data,
        });
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, handle);
        Ok(())
    }

    /// Whether any peer already runs `group` with a leader or a term above zero.
    async fn peers_run_group(&self, group: GroupId, replicas: &[NodeId], map: &ClusterMap) -> bool {
        for peer in replicas.iter().filter(|p| **p != self.id) {
            let Some(addr) = map.node_addr(*peer) else {
                continue;
            };
            let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
                continue;
            };
            let ep = ep
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(1));
            let Ok(ch) = ep.connect().await else {
                continue;
            };
            if let Ok(resp) = NodeClient::new(ch)
                .group_status(GroupStatusRequest {})
                .await
            {
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
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or(NodeError::UnknownGroup(id))
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

    /// Whether the node can serve: every group it hosts has a leader.
    pub fn ready(&self) -> bool {
        self.groups()
            .iter()
            .all(|g| g.raft.metrics().borrow().current_leader.is_some())
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
    /// and it has applied up to the read index.
    pub async fn linearizable(&self, group: &Group) -> Result<(), NodeError> {
        let res = tokio::time::timeout(self.request_timeout, group.raft.ensure_linearizable())
            .await
            .map_err(|_| NodeError::NoQuorum {
                group: group.id,
                reason: format!("leadership not confirmed within {:?}", self.request_timeout),
            })?;
        match res {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(NodeError::NotLeader {
                    group: group.id,
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                })
            }
            Err(RaftError::APIError(e)) => Err(NodeError::NoQuorum {
                group: group.id,
                reason: e.to_string(),
            }),
            Err(RaftError::Fatal(e)) => Err(NodeError::Fatal(e.to_string())),
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
    let stored = StoredConfig {
        id: config.id,
        initial_cluster: config.initial_cluster.clone(),
        shards: config.shards,
        replication: config.replication,
    };
    let raw = serde_json::to_vec(&stored).map_err(|e| NodeError::Storage(e.to_string()))?;
    tree.insert(keys::NODE_CONFIG, raw)?;
    Ok(stored)
}
