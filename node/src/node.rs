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
use kv_proto::node::GroupStatusRequest;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use shardmap::{ClusterMap, Limits, META_GROUP};
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
            heartbeat_ms: 100,
            election_timeout_ms: 600,
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

/// A running node.
pub struct Node {
    pub id: NodeId,
    pub limits: Limits,
    pub request_timeout: Duration,
    /// The bootstrap map: which groups exist and where, until the meta group says otherwise.
    pub initial_map: ClusterMap,
    // std RwLock: the map of groups is read on every request and never held across an await.
    groups: RwLock<HashMap<GroupId, Arc<Group>>>,
    pub flusher: Flusher,
    db: sled::Db,
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
        let stored = load_or_store_config(&db, &config)?;
        flusher
            .wait_durable()
            .await
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let initial_map =
            ClusterMap::bootstrap(&stored.initial_cluster, stored.shards, stored.replication)
                .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let node = Arc::new(Node {
            id: stored.id,
            limits: config.limits,
            request_timeout: config.request_timeout,
            initial_map,
            groups: RwLock::new(HashMap::new()),
            flusher,
            db,
        });
        let pool = PeerPool::default();
        for group in node.initial_map.groups_on(node.id) {
            node.start_group(group, &config.raft, &pool).await?;
        }
        tokio::spawn(node.clone().store_initial_map(pool, shutdown));
        Ok(node)
    }

    async fn start_group(
        &self,
        group: GroupId,
        tuning: &RaftTuning,
        pool: &PeerPool,
    ) -> Result<(), NodeError> {
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
            pool: pool.clone(),
        };
        let raft = Raft::new(self.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| NodeError::Fatal(e.to_string()))?;
        let replicas = self
            .initial_map
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
            && !self.peers_run_group(group, &replicas).await
        {
            let members: BTreeMap<NodeId, BasicNode> = replicas
                .iter()
                .filter_map(|id| {
                    self.initial_map
                        .node_addr(*id)
                        .map(|a| (*id, BasicNode::new(a)))
                })
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
    async fn peers_run_group(&self, group: GroupId, replicas: &[NodeId]) -> bool {
        for peer in replicas.iter().filter(|p| **p != self.id) {
            let Some(addr) = self.initial_map.node_addr(*peer) else {
                continue;
            };
            let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
                continue;
            };
            let ep = ep
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(1));
            let Ok(ch) = ep.connect().await else { continue };
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

    /// Proposes the bootstrap map to the meta group until it is stored.
    async fn store_initial_map(self: Arc<Self>, _pool: PeerPool, shutdown: CancellationToken) {
        let Some(meta) = self.group(META_GROUP).ok() else {
            return;
        };
        let Ok(json) = serde_json::to_vec(&self.initial_map) else {
            return;
        };
        loop {
            if matches!(meta.data.cluster_map(), Ok(Some(_))) {
                return;
            }
            let leader = meta.raft.metrics().borrow().current_leader;
            if leader == Some(self.id) {
                let req = Request::SetClusterMap {
                    epoch: self.initial_map.epoch,
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

    /// The cluster map as JSON with its epoch: the meta group's if this node hosts it, else the
    /// bootstrap map (identical until maps can change; watching the meta group comes next).
    pub fn cluster_map(&self) -> Result<(u64, Vec<u8>), NodeError> {
        match self.group(META_GROUP) {
            Ok(meta) => {
                let raw = meta.data.cluster_map()?.ok_or(NodeError::MapNotReady)?;
                let map: ClusterMap = serde_json::from_slice(&raw)
                    .map_err(|e| NodeError::Storage(format!("stored cluster map: {e}")))?;
                Ok((map.epoch, raw.to_vec()))
            }
            Err(_) => {
                let json = serde_json::to_vec(&self.initial_map)
                    .map_err(|e| NodeError::Storage(e.to_string()))?;
                Ok((self.initial_map.epoch, json))
            }
        }
    }

    /// Whether the node can serve: its map is known and every group it hosts has a leader.
    pub fn ready(&self) -> bool {
        self.cluster_map().is_ok()
            && self
                .groups()
                .iter()
                .all(|g| g.raft.metrics().borrow().current_leader.is_some())
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

fn load_or_store_config(db: &sled::Db, config: &NodeConfig) -> Result<StoredConfig, NodeError> {
    let tree = db.open_tree(keys::NODE_TREE)?;
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
