//! Keyspaces in tests: the router's `Admin` service over raw gRPC (so that tests see exact
//! status codes), the cluster map as the nodes hold it, and per-group reads straight from a
//! group's leader (to check where keys really are, not only where a router says they are).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use kv_proto::kv::admin_client::AdminClient;
use kv_proto::kv::{
    Consistency, CreateKeyspaceRequest, CreateKeyspaceResponse, DescribeKeyspaceRequest, KeyValue,
    KeyspaceInfo, KeyspaceSpec, ListKeyspacesRequest, LocateRequest,
};
use kv_proto::node::{GetClusterMapRequest, NodeScanRequest};
use kvclient::Bytes;
use shardmap::{ClusterMap, CompiledMap, GroupId};
use tonic::transport::Channel;
use tonic::Status;

use crate::cluster::{Cluster, READY_TIMEOUT};
use crate::node::{node_client, RPC_TIMEOUT};
use crate::wait::wait_until;

/// Keys per `Locate` call: well under the message size limits.
pub const LOCATE_CHUNK: usize = 5_000;

/// A raw `Admin` client of the router at `endpoint` (`http://HOST:PORT`), 30 s per call.
pub async fn admin_client(endpoint: &str) -> anyhow::Result<AdminClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to router at {endpoint}"))?;
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(kv_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(kv_proto::MAX_MESSAGE_BYTES))
}

/// A hash keyspace spec.
pub fn hash_spec(name: &str, shards: u32, replication: u32) -> KeyspaceSpec {
    KeyspaceSpec {
        name: name.into(),
        strategy: "hash".into(),
        shards,
        replication,
        ..Default::default()
    }
}

/// A range keyspace spec.
pub fn range_spec(name: &str, split_points: &[&str], replication: u32) -> KeyspaceSpec {
    KeyspaceSpec {
        name: name.into(),
        strategy: "range".into(),
        split_points: split_points
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect(),
        replication,
        ..Default::default()
    }
}

/// A directory keyspace spec with a hash fallback over `shards` groups.
pub fn directory_spec(name: &str, shards: u32, replication: u32) -> KeyspaceSpec {
    KeyspaceSpec {
        name: name.into(),
        strategy: "directory".into(),
        fallback: "hash".into(),
        shards,
        replication,
        ..Default::default()
    }
}

/// Creates a keyspace; the error carries the status.
pub async fn create_keyspace(
    admin: &mut AdminClient<Channel>,
    spec: KeyspaceSpec,
) -> Result<CreateKeyspaceResponse, Status> {
    admin
        .create_keyspace(CreateKeyspaceRequest { spec: Some(spec) })
        .await
        .map(|r| r.into_inner())
}

/// Describes a keyspace.
pub async fn describe(
    admin: &mut AdminClient<Channel>,
    name: &str,
) -> Result<KeyspaceInfo, Status> {
    let resp = admin
        .describe_keyspace(DescribeKeyspaceRequest { name: name.into() })
        .await?
        .into_inner();
    resp.keyspace
        .ok_or_else(|| Status::internal(format!("DescribeKeyspace of {name} without a keyspace")))
}

/// Every keyspace and the router's epoch, with the routers' leader guesses cleared (they
/// change without a map change), sorted by name: a value to compare before and after a
/// refused request.
pub async fn keyspaces_snapshot(
    admin: &mut AdminClient<Channel>,
) -> Result<(u64, Vec<KeyspaceInfo>), Status> {
    let resp = admin
        .list_keyspaces(ListKeyspacesRequest {})
        .await?
        .into_inner();
    let mut keyspaces = resp.keyspaces;
    for ks in &mut keyspaces {
        for g in &mut ks.groups {
            g.leader = 0;
        }
    }
    keyspaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((resp.epoch, keyspaces))
}

/// The group of each key in `keyspace` according to the router behind `admin`, in `keys`
/// order, `LOCATE_CHUNK` keys per call; and the highest epoch the router answered with.
pub async fn locate(
    admin: &mut AdminClient<Channel>,
    keyspace: &str,
    keys: &[Bytes],
) -> Result<(Vec<GroupId>, u64), Status> {
    let mut groups = Vec::with_capacity(keys.len());
    let mut epoch = 0;
    for part in keys.chunks(LOCATE_CHUNK) {
        let resp = admin
            .locate(LocateRequest {
                keyspace: keyspace.into(),
                keys: part.to_vec(),
            })
            .await?
            .into_inner();
        if resp.group_ids.len() != part.len() {
            return Err(Status::internal(format!(
                "Locate of {} keys answered {} group ids",
                part.len(),
                resp.group_ids.len()
            )));
        }
        groups.extend(resp.group_ids);
        epoch = epoch.max(resp.epoch);
    }
    Ok((groups, epoch))
}

/// Polls `Locate` of one key until it answers (the router may not know a new keyspace yet)
/// and returns the group.
pub async fn wait_locate(
    admin: &AdminClient<Channel>,
    keyspace: &str,
    key: &[u8],
    timeout: Duration,
) -> anyhow::Result<GroupId> {
    let what = format!(
        "the router locates {:?} in keyspace {keyspace}",
        String::from_utf8_lossy(key)
    );
    wait_until(timeout, &what, || {
        let mut admin = admin.clone();
        let keys = [Bytes::copy_from_slice(key)];
        async move {
            let (groups, _) = locate(&mut admin, keyspace, &keys).await.ok()?;
            groups.first().copied()
        }
    })
    .await
}

/// The first position where two mappings of the same keys differ, for assertion messages.
pub fn first_difference(keys: &[Bytes], a: &[GroupId], b: &[GroupId]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("lengths differ: {} vs {}", a.len(), b.len()));
    }
    let diffs = a.iter().zip(b).filter(|(x, y)| x != y).count();
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    Some(format!(
        "{diffs} of {} keys differ; first at {i}: key {:?} -> {} vs {}",
        a.len(),
        String::from_utf8_lossy(&keys[i]),
        a[i],
        b[i]
    ))
}

/// Keys per group.
pub fn counts(groups: &[GroupId]) -> BTreeMap<GroupId, usize> {
    let mut counts = BTreeMap::new();
    for g in groups {
        *counts.entry(*g).or_insert(0) += 1;
    }
    counts
}

impl Cluster {
    /// A raw `Admin` client of the first router.
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        admin_client(&self.router_endpoint()).await
    }

    /// A raw `Admin` client of router `i` (0-based, in start order).
    pub async fn admin_of(&self, i: usize) -> anyhow::Result<AdminClient<Channel>> {
        let router = self
            .routers()
            .get(i)
            .with_context(|| format!("the cluster has no router {i}"))?;
        admin_client(&router.endpoint()).await
    }

    /// The cluster map with the highest epoch among the answering nodes (`GetClusterMap`).
    pub async fn cluster_map(&self) -> anyhow::Result<ClusterMap> {
        let queries = self.nodes().iter().map(|n| async move {
            let mut client = node_client(n.addr()).await.ok()?;
            let resp = client
                .get_cluster_map(GetClusterMapRequest {})
                .await
                .ok()?
                .into_inner();
            serde_json::from_slice::<ClusterMap>(&resp.map_json).ok()
        });
        futures::future::join_all(queries)
            .await
            .into_iter()
            .flatten()
            .max_by_key(|m| m.epoch)
            .context("no node answered GetClusterMap with a readable map")
    }

    /// The nodes' cluster map once it has reached `epoch`, compiled as routers compile it.
    pub async fn compiled_map(&self, epoch: u64) -> anyhow::Result<CompiledMap> {
        let what = format!("a node serves a cluster map of epoch >= {epoch}");
        let map = wait_until(READY_TIMEOUT, &what, || async move {
            self.cluster_map().await.ok().filter(|m| m.epoch >= epoch)
        })
        .await?;
        CompiledMap::new(map).context("compiling the nodes' cluster map")
    }

    /// Every key (and value) group `group` holds, read with strong scans straight from the
    /// group's leader (node `Scan` with `epoch: 0`, which skips the epoch check), page by page.
    /// Retries while the group has no confirmed leader, up to [`READY_TIMEOUT`].
    pub async fn scan_group(&self, group: GroupId) -> anyhow::Result<Vec<KeyValue>> {
        let what = format!(
            "a strong scan of group {group} on its leader {}",
            self.diag()
        );
        wait_until(READY_TIMEOUT, &what, || async move {
            let leader = self.leader_of(group).await?;
            match self.scan_group_on(leader, group).await {
                Ok(kvs) => Some(kvs),
                Err(e) => {
                    eprintln!("scan of group {group} on node{leader}: {e:#}; retrying");
                    None
                }
            }
        })
        .await
    }

    /// All of group `group`'s keys as node `node` serves them (strong: `node` must lead).
    pub async fn scan_group_on(&self, node: u64, group: GroupId) -> anyhow::Result<Vec<KeyValue>> {
        let mut client = node_client(self.node(node).addr()).await?;
        let mut out: Vec<KeyValue> = Vec::new();
        let mut start = Bytes::new();
        loop {
            let resp = client
                .scan(NodeScanRequest {
                    group_id: group,
                    epoch: 0,
                    consistency: Consistency::Strong as i32,
                    start: start.clone(),
                    end: Bytes::new(),
                    limit: 5_000,
                    keys_only: false,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("Scan of group {group} on node{node}"))?
                .into_inner();
            let more = resp.more;
            out.extend(resp.kvs);
            match (more, out.last()) {
                (true, Some(last)) => {
                    let mut next = last.key.to_vec();
                    next.push(0);
                    start = Bytes::from(next);
                }
                _ => return Ok(out),
            }
        }
    }

    /// SIGKILLs every router and node, starts the nodes again on their data, waits until they
    /// are ready, then starts the routers again and waits for them.
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        for router in self.routers_mut() {
            router.kill()?;
        }
        self.kill_nodes()?;
        for node in self.nodes_mut() {
            node.start()?;
        }
        self.wait_nodes_ready(READY_TIMEOUT).await?;
        for router in self.routers_mut() {
            router.start()?;
        }
        self.wait_routers_ready(READY_TIMEOUT).await
    }
}
