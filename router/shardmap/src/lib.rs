//! The cluster map and key placement, with no I/O.
//!
//! One implementation shared by every process that needs to know where a key lives: the router
//! routes with it, a node checks with it that a key belongs to its group, the client library and
//! `kvctl` explain placement with it. Keeping it in one crate means they can never disagree.
//!
//! - [`ClusterMap`]: the versioned document the meta group stores (nodes, groups, keyspaces).
//! - [`Placement`]: a keyspace's strategy compiled for lookups (the hash ring is built once).
//! - [`ring`], [`range`], [`directory`]: the three strategies.
//! - [`change`]: the changes an operator can make to the map, validated and applied purely.
//! - [`auth`]: users, roles, grants and tokens, and who may do what.
//! - [`Limits`]: the size limits on keys and values that routers and nodes both enforce.

pub mod auth;
pub mod change;
pub mod directory;
pub mod range;
pub mod ring;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use auth::{Access, AuthChange, AuthConfig, AuthIndex, Grant, Permissions, Token, TokenEntry};
pub use change::{KeyspaceSpec, MapChange, StrategyKind};
pub use directory::{directory_of, prefix_end, DirectoryPlacement};
pub use range::RangePlacement;
pub use ring::HashPlacement;

/// A storage node's id, as given in `--initial-cluster`.
pub type NodeId = u64;
/// A shard group's id. Group [`META_GROUP`] holds the cluster map.
pub type GroupId = u64;

/// The meta group, which stores the cluster map.
pub const META_GROUP: GroupId = 0;
/// The keyspace used when a request names none.
pub const DEFAULT_KEYSPACE: &str = "default";
/// Virtual nodes per group on a hash ring unless a keyspace says otherwise. 256 keeps every
/// group's share within a few percent of fair for 8 groups (see tech notes).
pub const DEFAULT_VNODES: u32 = 256;
/// Replicas per group unless a keyspace says otherwise.
pub const DEFAULT_REPLICATION: usize = 3;

/// Errors from building or querying the map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("unknown keyspace {0:?}")]
    UnknownKeyspace(String),
    #[error("keyspace {0:?} has no shard groups")]
    NoGroups(String),
    #[error("invalid cluster: {0}")]
    InvalidCluster(String),
    #[error("unknown shard group {0}")]
    UnknownGroup(GroupId),
    #[error("{0}")]
    Invalid(String),
    #[error("keyspace {0:?} already exists")]
    KeyspaceExists(String),
}

/// A storage node as the map knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// `HOST:PORT` of the node's gRPC server (Raft and data).
    pub addr: String,
}

/// A shard group: a Raft group with its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub id: GroupId,
    /// The keyspace whose keys this group holds; empty for the meta group.
    pub keyspace: String,
    /// Node ids of the voting replicas.
    pub replicas: Vec<NodeId>,
}

/// How a keyspace maps keys to its groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    /// Consistent hashing over the keyspace's groups, `vnodes` tokens per group.
    Hash { vnodes: u32 },
    /// Sorted split keys: group `i` holds `[split_points[i-1], split_points[i])`.
    Range { split_points: Vec<Vec<u8>> },
    /// A table from directory (key prefix before `separator`) to group; other keys follow
    /// `fallback` (hash or range over the keyspace's groups).
    Directory {
        separator: Vec<u8>,
        fallback: Box<Strategy>,
        entries: Vec<DirectoryEntry>,
    },
}

impl Strategy {
    /// The strategy's name as operators type it.
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::Hash { .. } => StrategyKind::Hash,
            Strategy::Range { .. } => StrategyKind::Range,
            Strategy::Directory { .. } => StrategyKind::Directory,
        }
    }
}

/// One row of a directory table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub directory: Vec<u8>,
    pub group: GroupId,
}

/// A named set of keys with its own placement strategy and groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyspace {
    pub name: String,
    pub strategy: Strategy,
    /// The groups, in the order the strategy refers to them.
    pub groups: Vec<GroupId>,
    pub replication: usize,
    /// The map epoch at which this keyspace's key-to-group mapping last changed. A node rejects
    /// requests routed with an older map epoch than this.
    #[serde(default)]
    pub epoch: u64,
}

/// The versioned cluster map held by the meta group. Every change raises `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub epoch: u64,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub groups: BTreeMap<GroupId, GroupInfo>,
    pub keyspaces: BTreeMap<String, Keyspace>,
    /// The id the next new group gets. Ids are never reused: a node that missed a drop may
    /// still hold the old group's log, and a new group under the same id would adopt it.
    /// Maps written before this field existed read it as 0, meaning "above every group".
    #[serde(default)]
    pub next_group_id: GroupId,
    /// Users, roles and grants. Not written while auth was never used, so such maps keep the
    /// JSON they had before this field existed; maps without it read as "auth off".
    #[serde(default, skip_serializing_if = "AuthConfig::is_off")]
    pub auth: AuthConfig,
}

impl ClusterMap {
    /// The id for the next new group.
    pub fn allocate_group_id(&self) -> GroupId {
        let above_existing = self.groups.keys().next_back().map_or(1, |g| g + 1);
        self.next_group_id.max(above_existing)
    }

    /// The map a new cluster starts with: the meta group on the first three nodes (by id) and
    /// `shards` data groups for the default hash keyspace, `replication` replicas each, placed
    /// round robin so that every node holds about the same number of replicas.
    ///
    /// Deterministic: every member computes the same map from the same `--initial-cluster`.
    pub fn bootstrap(
        nodes: &[(NodeId, String)],
        shards: u32,
        replication: usize,
    ) -> Result<ClusterMap, MapError> {
        if nodes.is_empty() {
            return Err(MapError::InvalidCluster("no nodes".into()));
        }
        if shards == 0 {
            return Err(MapError::InvalidCluster(
                "--shards must be at least 1".into(),
            ));
        }
        let mut ids: Vec<NodeId> = nodes.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(MapError::InvalidCluster("duplicate node id".into()));
        }
        if ids.contains(&0) {
            return Err(MapError::InvalidCluster("node id 0 is reserved".into()));
        }
        if replication == 0 || replication > ids.len() {
            return Err(MapError::InvalidCluster(format!(
                "replication factor {replication} needs between 1 and {} nodes",
                ids.len()
            )));
        }
        let node_map = nodes
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    NodeInfo {
                        id: *id,
                        addr: addr.clone(),
                    },
                )
            })
            .collect();
        let mut groups = BTreeMap::new();
        let meta_replicas = ids.iter().copied().take(DEFAULT_REPLICATION).collect();
        groups.insert(
            META_GROUP,
            GroupInfo {
                id: META_GROUP,
                keyspace: String::new(),
                replicas: meta_replicas,
            },
        );
        let mut data_groups = Vec::new();
        for i in 0..shards as usize {
            let id = i as GroupId + 1;
            let replicas = (0..replication).map(|j| ids[(i + j) % ids.len()]).collect();
            groups.insert(
                id,
                GroupInfo {
                    id,
                    keyspace: DEFAULT_KEYSPACE.to_string(),
                    replicas,
                },
            );
            data_groups.push(id);
        }
        let mut keyspaces = BTreeMap::new();
        keyspaces.insert(
            DEFAULT_KEYSPACE.to_string(),
            Keyspace {
                name: DEFAULT_KEYSPACE.to_string(),
                strategy: Strategy::Hash {
                    vnodes: DEFAULT_VNODES,
                },
                groups: data_groups,
                replication,
                epoch: 1,
            },
        );
        Ok(ClusterMap {
            epoch: 1,
            nodes: node_map,
            groups,
            keyspaces,
            next_group_id: shards as GroupId + 1,
            auth: AuthConfig::default(),
        })
    }

    /// The groups whose replicas include `node`.
    pub fn groups_on(&self, node: NodeId) -> Vec<GroupId> {
        self.groups
            .values()
            .filter(|g| g.replicas.contains(&node))
            .map(|g| g.id)
            .collect()
    }

    /// The address of a node.
    pub fn node_addr(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.addr.as_str())
    }

    /// A group's replicas.
    pub fn replicas(&self, group: GroupId) -> Result<&[NodeId], MapError> {
        self.groups
            .get(&group)
            .map(|g| g.replicas.as_slice())
            .ok_or(MapError::UnknownGroup(group))
    }
}

/// Resolves a keyspace name, mapping the empty name to [`DEFAULT_KEYSPACE`].
pub fn keyspace_name(name: &str) -> &str {
    if name.is_empty() {
        DEFAULT_KEYSPACE
    } else {
        name
    }
}

/// A keyspace's strategy, compiled once per map version for fast lookups.
#[derive(Debug, Clone)]
pub enum Placement {
    Hash(HashPlacement),
    Range(RangePlacement),
    Directory(DirectoryPlacement),
}

impl Placement {
    /// Compiles a keyspace's placement.
    pub fn new(ks: &Keyspace) -> Result<Placement, MapError> {
        if ks.groups.is_empty() {
            return Err(MapError::NoGroups(ks.name.clone()));
        }
        Placement::compile(&ks.strategy, &ks.groups)
    }

    fn compile(strategy: &Strategy, groups: &[GroupId]) -> Result<Placement, MapError> {
        Ok(match strategy {
            Strategy::Hash { vnodes } => Placement::Hash(HashPlacement::new(groups, *vnodes)),
            Strategy::Range { split_points } => {
                if split_points.len() + 1 != groups.len() {
                    return Err(MapError::Invalid(format!(
                        "{} split points need {} groups, not {}",
                        split_points.len(),
                        split_points.len() + 1,
                        groups.len()
                    )));
                }
                Placement::Range(RangePlacement::new(split_points, groups))
            }
            Strategy::Directory {
                separator,
                fallback,
                entries,
            } => Placement::Directory(DirectoryPlacement::new(
                separator,
                entries.iter().map(|e| (e.directory.clone(), e.group)),
                Placement::compile(fallback, groups)?,
                groups,
            )),
        })
    }

    /// The group that holds `key`.
    pub fn locate(&self, key: &[u8]) -> GroupId {
        match self {
            Placement::Hash(h) => h.locate(key),
            Placement::Range(r) => r.locate(key),
            Placement::Directory(d) => d.locate(key),
        }
    }

    /// The groups a scan of `[start, end)` must visit, in the order it must visit them. For a
    /// range keyspace that is the overlapping ranges in key order, so a scan can stop at its
    /// limit without reading later groups; for hash and directory keyspaces, every group.
    pub fn groups_for_scan(&self, start: &[u8], end: &[u8]) -> Vec<GroupId> {
        match self {
            Placement::Hash(h) => h.groups().to_vec(),
            Placement::Range(r) => r.groups_for_scan(start, end),
            Placement::Directory(d) => d.groups_for_scan(start, end),
        }
    }

    /// Whether the groups from [`Self::groups_for_scan`] hold disjoint, increasing key ranges,
    /// so that results can be concatenated and a scan can stop early.
    pub fn ordered_scan(&self) -> bool {
        matches!(self, Placement::Range(_))
    }
}

/// A cluster map with every keyspace's placement compiled: what routers keep in memory.
#[derive(Debug, Clone)]
pub struct CompiledMap {
    pub map: ClusterMap,
    placements: BTreeMap<String, Placement>,
}

impl CompiledMap {
    pub fn new(map: ClusterMap) -> Result<CompiledMap, MapError> {
        let placements = map
            .keyspaces
            .values()
            .map(|ks| Ok((ks.name.clone(), Placement::new(ks)?)))
            .collect::<Result<_, MapError>>()?;
        Ok(CompiledMap { map, placements })
    }

    /// The placement of a keyspace (the empty name means the default keyspace).
    pub fn placement(&self, keyspace: &str) -> Result<&Placement, MapError> {
        let name = keyspace_name(keyspace);
        self.placements
            .get(name)
            .ok_or_else(|| MapError::UnknownKeyspace(name.to_string()))
    }

    /// The group that holds `key` in `keyspace`.
    pub fn locate(&self, keyspace: &str, key: &[u8]) -> Result<GroupId, MapError> {
        Ok(self.placement(keyspace)?.locate(key))
    }

    /// Whether `key` belongs to `group` under this map: what a node checks before applying.
    /// Errors when the group is unknown or holds no keyspace (the meta group).
    pub fn owns(&self, group: GroupId, key: &[u8]) -> Result<bool, MapError> {
        let info = self
            .map
            .groups
            .get(&group)
            .ok_or(MapError::UnknownGroup(group))?;
        let placement = self
            .placements
            .get(&info.keyspace)
            .ok_or_else(|| MapError::UnknownKeyspace(info.keyspace.clone()))?;
        Ok(placement.locate(key) == group)
    }

    /// The epoch at which the key set of `group`'s keyspace last changed.
    pub fn key_set_epoch(&self, group: GroupId) -> Option<u64> {
        let info = self.map.groups.get(&group)?;
        self.map.keyspaces.get(&info.keyspace).map(|k| k.epoch)
    }
}

/// Size limits on keys and values. Routers check them first so that bad requests fail fast;
/// nodes check them again because they are the last line before disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Keys and values of one write to one group, which is one Raft entry: every replica holds
    /// it in memory while it replicates and applies, so it is bounded like a message.
    pub max_write_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            max_write_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Why a key, value or range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key is {len} bytes, over the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, over the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    #[error(
        "a write of {len} bytes to one shard group is over the limit of {max} bytes (keys and \
         values of one write, applied as one Raft entry): split the batch"
    )]
    WriteTooLarge { len: usize, max: usize },
    #[error("scan start is after scan end")]
    StartAfterEnd,
}

impl Limits {
    pub fn check_key(&self, key: &[u8]) -> Result<(), LimitError> {
        if key.is_empty() {
            return Err(LimitError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(LimitError::KeyTooLarge {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    pub fn check_value(&self, value: &[u8]) -> Result<(), LimitError> {
        if value.len() > self.max_value_bytes {
            return Err(LimitError::ValueTooLarge {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// The keys and values of one write to one group, `len` bytes in all.
    pub fn check_write_bytes(&self, len: usize) -> Result<(), LimitError> {
        if len > self.max_write_bytes {
            return Err(LimitError::WriteTooLarge {
                len,
                max: self.max_write_bytes,
            });
        }
        Ok(())
    }

    /// A scan range `[start, end)`; an empty `end` means unbounded.
    pub fn check_range(&self, start: &[u8], end: &[u8]) -> Result<(), LimitError> {
        if !end.is_empty() && start > end {
            return Err(LimitError::StartAfterEnd);
        }
        if start.len() > self.max_key_bytes {
            return Err(LimitError::KeyTooLarge {
                len: start.len(),
                max: self.max_key_bytes,
            });
        }
        if end.len() > self.max_key_bytes {
            return Err(LimitError::KeyTooLarge {
                len: end.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Vec<(NodeId, String)> {
        (1..=3)
            .map(|i| (i, format!("127.0.0.1:{}", 7000 + i)))
            .collect()
    }

    #[test]
    fn bootstrap_places_meta_and_data_groups() {
        let map = ClusterMap::bootstrap(&three(), 4, 3).unwrap();
        assert_eq!(map.epoch, 1);
        assert_eq!(map.groups.len(), 5);
        assert_eq!(map.replicas(META_GROUP).unwrap(), &[1, 2, 3]);
        for g in 1..=4 {
            let mut r = map.replicas(g).unwrap().to_vec();
            r.sort_unstable();
            assert_eq!(r, vec![1, 2, 3]);
        }
        assert_eq!(map.keyspaces[DEFAULT_KEYSPACE].groups, vec![1, 2, 3, 4]);
    }

    #[test]
    fn bootstrap_spreads_replicas_over_more_nodes() {
        let nodes: Vec<_> = (1..=5).map(|i| (i, format!("h{i}:1"))).collect();
        let map = ClusterMap::bootstrap(&nodes, 10, 3).unwrap();
        for n in 1..=5 {
            let data = map.groups_on(n).into_iter().filter(|g| *g != 0).count();
            assert_eq!(data, 6, "node {n}");
        }
    }

    #[test]
    fn bootstrap_rejects_bad_clusters() {
        assert!(ClusterMap::bootstrap(&[], 4, 3).is_err());
        assert!(ClusterMap::bootstrap(&three(), 0, 3).is_err());
        assert!(ClusterMap::bootstrap(&three(), 4, 4).is_err());
        let dup = vec![(1, "a:1".to_string()), (1, "b:1".to_string())];
        assert!(ClusterMap::bootstrap(&dup, 4, 1).is_err());
    }

    #[test]
    fn map_round_trips_through_json() {
        let map = ClusterMap::bootstrap(&three(), 4, 3).unwrap();
        let json = serde_json::to_vec(&map).unwrap();
        let back: ClusterMap = serde_json::from_slice(&json).unwrap();
        assert_eq!(map, back);
    }

    /// A map with a keyspace of every strategy.
    fn golden_map() -> ClusterMap {
        let group = |id: GroupId, keyspace: &str| {
            (
                id,
                GroupInfo {
                    id,
                    keyspace: keyspace.into(),
                    replicas: vec![1],
                },
            )
        };
        let keyspace = |name: &str, strategy: Strategy, groups: Vec<GroupId>| {
            (
                name.to_string(),
                Keyspace {
                    name: name.into(),
                    strategy,
                    groups,
                    replication: 1,
                    epoch: 2,
                },
            )
        };
        ClusterMap {
            epoch: 3,
            nodes: BTreeMap::from([(
                1,
                NodeInfo {
                    id: 1,
                    addr: "a:1".into(),
                },
            )]),
            groups: BTreeMap::from([group(0, ""), group(1, "h"), group(2, "r"), group(3, "d")]),
            keyspaces: BTreeMap::from([
                keyspace("h", Strategy::Hash { vnodes: 16 }, vec![1]),
                keyspace(
                    "r",
                    Strategy::Range {
                        split_points: vec![b"m".to_vec()],
                    },
                    vec![2, 1],
                ),
                keyspace(
                    "d",
                    Strategy::Directory {
                        separator: b"/".to_vec(),
                        fallback: Box::new(Strategy::Hash { vnodes: 16 }),
                        entries: vec![DirectoryEntry {
                            directory: b"t".to_vec(),
                            group: 3,
                        }],
                    },
                    vec![3],
                ),
            ]),
            next_group_id: 4,
            auth: AuthConfig::default(),
        }
    }

    // The map as the meta group and every node's data dir store it.
    const GOLDEN_MAP_JSON: &str = concat!(
        r#"{"epoch":3,"nodes":{"1":{"id":1,"addr":"a:1"}},"#,
        r#""groups":{"0":{"id":0,"keyspace":"","replicas":[1]},"#,
        r#""1":{"id":1,"keyspace":"h","replicas":[1]},"#,
        r#""2":{"id":2,"keyspace":"r","replicas":[1]},"#,
        r#""3":{"id":3,"keyspace":"d","replicas":[1]}},"#,
        r#""keyspaces":{"d":{"name":"d","strategy":{"kind":"directory","separator":[47],"#,
        r#""fallback":{"kind":"hash","vnodes":16},"entries":[{"directory":[116],"group":3}]},"#,
        r#""groups":[3],"replication":1,"epoch":2},"#,
        r#""h":{"name":"h","strategy":{"kind":"hash","vnodes":16},"groups":[1],"#,
        r#""replication":1,"epoch":2},"#,
        r#""r":{"name":"r","strategy":{"kind":"range","split_points":[[109]]},"groups":[2,1],"#,
        r#""replication":1,"epoch":2}},"next_group_id":4}"#,
    );

    #[test]
    fn golden_cluster_map_json() {
        // If this fails you changed a persisted format; existing data dirs would be misread
        // (the meta group's stored map and every node's last seen map are this JSON).
        const CHANGED: &str = "you changed a persisted format; existing data dirs would be misread";
        let json = serde_json::to_string(&golden_map()).unwrap();
        assert_eq!(json, GOLDEN_MAP_JSON, "{CHANGED}");
        let back: ClusterMap = serde_json::from_str(GOLDEN_MAP_JSON).unwrap();
        assert_eq!(back, golden_map(), "{CHANGED}");
        // Maps from before `next_group_id` and keyspace epochs existed still read, as 0.
        let old = r#"{"epoch":1,"nodes":{},"groups":{},"keyspaces":{"h":{"name":"h","#.to_string()
            + r#""strategy":{"kind":"hash","vnodes":16},"groups":[],"replication":3}}}"#;
        let old: ClusterMap = serde_json::from_str(&old).unwrap();
        assert_eq!(old.next_group_id, 0, "{CHANGED}");
        assert_eq!(old.keyspaces["h"].epoch, 0, "{CHANGED}");
    }

    #[test]
    fn golden_auth_section_json() {
        // The map's auth section, as the meta group stores it: if this fails, stored users,
        // roles and token hashes would be misread.
        const CHANGED: &str = "you changed a persisted format; existing data dirs would be misread";
        let mut map = golden_map();
        map.auth = AuthConfig::bootstrap(TokenEntry {
            id: "0011223344556677".into(),
            sha256: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
            created_ms: 5,
            expires_at_ms: None,
        });
        map.auth.roles.insert(
            "reader".into(),
            auth::Role {
                admin: false,
                grants: vec![Grant {
                    keyspace: "h".into(),
                    prefix: b"t/".to_vec(),
                    access: Access::Read,
                }],
            },
        );
        let json = serde_json::to_string(&map).unwrap();
        let auth = concat!(
            r#","auth":{"enabled":true,"users":{"admin":{"roles":["admin"],"tokens":[{"#,
            r#""id":"0011223344556677","#,
            r#""sha256":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","#,
            r#""created_ms":5,"expires_at_ms":null}]}},"roles":{"admin":{"admin":true,"#,
            r#""grants":[]},"reader":{"admin":false,"grants":[{"keyspace":"h","#,
            r#""prefix":[116,47],"access":"read"}]}}}}"#
        );
        let golden = format!("{}{auth}", &GOLDEN_MAP_JSON[..GOLDEN_MAP_JSON.len() - 1]);
        assert_eq!(json, golden, "{CHANGED}");
        let back: ClusterMap = serde_json::from_str(&golden).unwrap();
        assert_eq!(back, map, "{CHANGED}");
        // A map without the section (every map before auth) reads as auth off.
        let old: ClusterMap = serde_json::from_str(GOLDEN_MAP_JSON).unwrap();
        assert!(old.auth.is_off() && !old.auth.enabled, "{CHANGED}");
    }

    #[test]
    fn unknown_keyspace_is_an_error() {
        let map = CompiledMap::new(ClusterMap::bootstrap(&three(), 4, 3).unwrap()).unwrap();
        assert_eq!(
            map.locate("nope", b"k"),
            Err(MapError::UnknownKeyspace("nope".into()))
        );
        assert!(map.locate("", b"k").is_ok());
    }

    #[test]
    fn limits() {
        let l = Limits::default();
        assert_eq!(l.check_key(b""), Err(LimitError::EmptyKey));
        assert!(l.check_key(&vec![1; 4096]).is_ok());
        assert!(matches!(
            l.check_key(&vec![1; 4097]),
            Err(LimitError::KeyTooLarge { .. })
        ));
        assert!(l.check_value(&vec![1; 1 << 20]).is_ok());
        assert!(l.check_value(&vec![1; (1 << 20) + 1]).is_err());
        assert_eq!(l.check_range(b"b", b"a"), Err(LimitError::StartAfterEnd));
        assert!(l.check_range(b"b", b"").is_ok());
        assert!(l.check_range(b"a", b"a").is_ok());
    }
}
