//! The changes an operator can make to the cluster map, validated and applied without I/O.
//!
//! The meta group's state machine applies each [`MapChange`] with [`ClusterMap::apply`]: every
//! replica computes the same new map (same group ids, same placement) from the same log, and
//! changes are serialized by Raft, so two operators can never interleave half-applied edits.
//! A change that fails validation changes nothing.
//!
//! What a pure function cannot check (whether a directory or keyspace still holds data) the
//! caller checks before proposing: moving keys away from their data needs migration, which is
//! not built yet, so such changes are refused there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::AuthChange;
use crate::{
    ClusterMap, DirectoryEntry, GroupId, GroupInfo, Keyspace, MapError, NodeId, Strategy,
    DEFAULT_KEYSPACE, DEFAULT_VNODES,
};

/// Most groups one keyspace may create at once.
pub const MAX_SHARDS: u32 = 1024;

/// Most group replicas a node holds. Each is a Raft instance with its own tasks, heartbeats,
/// log files, entry cache and sled trees (about a megabyte of memory each, and their
/// heartbeats alone cost CPU at a thousand), so more keyspaces must not grow a node without
/// bound: more groups need more nodes.
pub const MAX_REPLICAS_PER_NODE: usize = 256;
/// Longest keyspace name.
pub const MAX_NAME_LEN: usize = 64;

/// The three strategies by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    Hash,
    Range,
    Directory,
}

impl std::str::FromStr for StrategyKind {
    type Err = MapError;
    fn from_str(s: &str) -> Result<Self, MapError> {
        match s {
            "hash" => Ok(StrategyKind::Hash),
            "range" => Ok(StrategyKind::Range),
            "directory" => Ok(StrategyKind::Directory),
            other => Err(MapError::Invalid(format!(
                "unknown strategy {other:?}: expected hash, range or directory"
            ))),
        }
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StrategyKind::Hash => "hash",
            StrategyKind::Range => "range",
            StrategyKind::Directory => "directory",
        })
    }
}

/// What `keyspace create` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceSpec {
    pub name: String,
    pub strategy: StrategyKind,
    /// Hash (or directory with a hash fallback): the number of groups.
    pub shards: u32,
    /// Range (or directory with a range fallback): sorted, distinct split keys.
    pub split_points: Vec<Vec<u8>>,
    /// Hash: tokens per group; 0 means [`DEFAULT_VNODES`].
    pub vnodes: u32,
    /// Directory: the strategy for keys whose directory is not in the table.
    pub fallback: Option<StrategyKind>,
    /// Directory: what ends a key's directory; empty means `/`.
    pub separator: Vec<u8>,
    /// Replicas per group: 1, 3 or 5; 0 means 3.
    pub replication: usize,
}

/// A change to the cluster map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapChange {
    CreateKeyspace(KeyspaceSpec),
    /// Removes the keyspace and its groups. The caller has checked it is empty or was told to
    /// force.
    DropKeyspace {
        name: String,
    },
    /// Maps a directory to a group of a directory keyspace. The caller has checked that the
    /// directory holds no data where it maps now.
    SetDirectory {
        keyspace: String,
        directory: Vec<u8>,
        group: GroupId,
    },
    RemoveDirectory {
        keyspace: String,
        directory: Vec<u8>,
    },
    /// A change to users, roles, grants or tokens (the map's `auth` section).
    Auth(AuthChange),
}

fn invalid(msg: impl Into<String>) -> MapError {
    MapError::Invalid(msg.into())
}

pub(crate) fn check_name(name: &str) -> Result<(), MapError> {
    if name.is_empty() {
        return Err(invalid("keyspace name must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "keyspace name is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(invalid(format!(
            "keyspace name {name:?} may hold only letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

fn check_split_points(points: &[Vec<u8>]) -> Result<(), MapError> {
    if points.iter().any(|p| p.is_empty()) {
        return Err(invalid("split points must not be empty keys"));
    }
    for w in points.windows(2) {
        if w[0] == w[1] {
            return Err(invalid(format!(
                "duplicate split point {:?}",
                String::from_utf8_lossy(&w[0])
            )));
        }
        if w[0] > w[1] {
            return Err(invalid(format!(
                "split points must be sorted: {:?} comes after {:?}",
                String::from_utf8_lossy(&w[1]),
                String::from_utf8_lossy(&w[0])
            )));
        }
    }
    Ok(())
}

/// Builds a (non-directory) strategy and its group count from a spec.
fn base_strategy(kind: StrategyKind, spec: &KeyspaceSpec) -> Result<(Strategy, u32), MapError> {
    match kind {
        StrategyKind::Hash => {
            if spec.shards == 0 {
                return Err(invalid("--shards must be at least 1"));
            }
            if spec.shards > MAX_SHARDS {
                return Err(invalid(format!("--shards must be at most {MAX_SHARDS}")));
            }
            if !spec.split_points.is_empty() {
                return Err(invalid("split points apply to range keyspaces, not hash"));
            }
            let vnodes = if spec.vnodes == 0 {
                DEFAULT_VNODES
            } else {
                spec.vnodes
            };
            if vnodes > 4096 {
                return Err(invalid("--vnodes must be at most 4096"));
            }
            Ok((Strategy::Hash { vnodes }, spec.shards))
        }
        StrategyKind::Range => {
            check_split_points(&spec.split_points)?;
            if spec.shards != 0 && spec.shards as usize != spec.split_points.len() + 1 {
                return Err(invalid(format!(
                    "{} split points make {} ranges; do not also give --shards {}",
                    spec.split_points.len(),
                    spec.split_points.len() + 1,
                    spec.shards
                )));
            }
            let groups = spec.split_points.len() as u32 + 1;
            if groups > MAX_SHARDS {
                return Err(invalid(format!("at most {} split points", MAX_SHARDS - 1)));
            }
            Ok((
                Strategy::Range {
                    split_points: spec.split_points.clone(),
                },
                groups,
            ))
        }
        StrategyKind::Directory => Err(invalid(
            "a directory keyspace's fallback must be hash or range",
        )),
    }
}

impl ClusterMap {
    /// Refuses a map that puts more than [`MAX_REPLICAS_PER_NODE`] replicas on a node.
    fn check_replicas_per_node(&self) -> Result<(), MapError> {
        let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
        for g in self.groups.values() {
            for n in &g.replicas {
                *per_node.entry(*n).or_default() += 1;
            }
        }
        match per_node.into_iter().find(|(_, n)| *n > MAX_REPLICAS_PER_NODE) {
            Some((node, n)) => Err(invalid(format!(
                "node {node} would hold {n} group replicas, more than the {MAX_REPLICAS_PER_NODE} a node may: use fewer shards, or drop keyspaces"
            ))),
            None => Ok(()),
        }
    }

    /// The map after `change`, with the epoch raised; or why the change is refused.
    pub fn apply(&self, change: &MapChange) -> Result<ClusterMap, MapError> {
        let mut next = self.clone();
        next.epoch = self.epoch + 1;
        match change {
            MapChange::CreateKeyspace(spec) => {
                next.create_keyspace(spec)?;
                next.check_replicas_per_node()?;
            }
            MapChange::DropKeyspace { name } => {
                if name == DEFAULT_KEYSPACE {
                    return Err(invalid("the default keyspace cannot be dropped"));
                }
                let ks = next
                    .keyspaces
                    .remove(name)
                    .ok_or_else(|| MapError::UnknownKeyspace(name.clone()))?;
                for g in ks.groups {
                    next.groups.remove(&g);
                }
            }
            MapChange::SetDirectory {
                keyspace,
                directory,
                group,
            } => {
                let epoch = next.epoch;
                let ks = next.directory_keyspace(keyspace)?;
                if !ks.groups.contains(group) {
                    return Err(invalid(format!(
                        "group {group} is not a group of keyspace {keyspace:?} (its groups: {:?})",
                        ks.groups
                    )));
                }
                let Strategy::Directory {
                    separator, entries, ..
                } = &mut ks.strategy
                else {
                    return Err(invalid("not a directory keyspace"));
                };
                check_directory(directory, separator)?;
                match entries.iter_mut().find(|e| &e.directory == directory) {
                    Some(e) if e.group == *group => {
                        return Err(invalid("the directory already maps to that group"))
                    }
                    Some(e) => e.group = *group,
                    None => {
                        entries.push(DirectoryEntry {
                            directory: directory.clone(),
                            group: *group,
                        });
                        entries.sort_by(|a, b| a.directory.cmp(&b.directory));
                    }
                }
                ks.epoch = epoch;
            }
            MapChange::RemoveDirectory {
                keyspace,
                directory,
            } => {
                let epoch = next.epoch;
                let ks = next.directory_keyspace(keyspace)?;
                let Strategy::Directory { entries, .. } = &mut ks.strategy else {
                    return Err(invalid("not a directory keyspace"));
                };
                let before = entries.len();
                entries.retain(|e| &e.directory != directory);
                if entries.len() == before {
                    return Err(invalid(format!(
                        "directory {:?} is not in keyspace {keyspace:?}",
                        String::from_utf8_lossy(directory)
                    )));
                }
                ks.epoch = epoch;
            }
            MapChange::Auth(change) => {
                next.auth = self.auth.apply(change)?;
            }
        }
        Ok(next)
    }

    fn directory_keyspace(&mut self, name: &str) -> Result<&mut Keyspace, MapError> {
        let ks = self
            .keyspaces
            .get_mut(name)
            .ok_or_else(|| MapError::UnknownKeyspace(name.to_string()))?;
        if ks.strategy.kind() != StrategyKind::Directory {
            return Err(invalid(format!(
                "keyspace {name:?} uses {} sharding, not directory",
                ks.strategy.kind()
            )));
        }
        Ok(ks)
    }

    fn create_keyspace(&mut self, spec: &KeyspaceSpec) -> Result<(), MapError> {
        check_name(&spec.name)?;
        if self.keyspaces.contains_key(&spec.name) {
            return Err(MapError::KeyspaceExists(spec.name.clone()));
        }
        let replication = if spec.replication == 0 {
            3
        } else {
            spec.replication
        };
        if ![1, 3, 5].contains(&replication) {
            return Err(invalid(format!(
                "replication factor {replication} is not 1, 3 or 5"
            )));
        }
        if replication > self.nodes.len() {
            return Err(invalid(format!(
                "replication factor {replication} is above the number of nodes ({})",
                self.nodes.len()
            )));
        }
        let (strategy, count) = match spec.strategy {
            StrategyKind::Directory => {
                let fallback = spec
                    .fallback
                    .ok_or_else(|| invalid("a directory keyspace needs --fallback hash|range"))?;
                let (fb, count) = base_strategy(fallback, spec)?;
                let separator = if spec.separator.is_empty() {
                    b"/".to_vec()
                } else {
                    spec.separator.clone()
                };
                (
                    Strategy::Directory {
                        separator,
                        fallback: Box::new(fb),
                        entries: Vec::new(),
                    },
                    count,
                )
            }
            kind => {
                if spec.fallback.is_some() {
                    return Err(invalid("--fallback applies to directory keyspaces only"));
                }
                base_strategy(kind, spec)?
            }
        };
        let first_id = self.allocate_group_id();
        let ids: Vec<GroupId> = (first_id..first_id + count as u64).collect();
        self.next_group_id = first_id + count as u64;
        for &id in &ids {
            let replicas = self.place_replicas(replication);
            self.groups.insert(
                id,
                GroupInfo {
                    id,
                    keyspace: spec.name.clone(),
                    replicas,
                },
            );
        }
        self.keyspaces.insert(
            spec.name.clone(),
            Keyspace {
                name: spec.name.clone(),
                strategy,
                groups: ids,
                replication,
                epoch: self.epoch,
            },
        );
        Ok(())
    }

    /// Picks `n` distinct nodes for a new group: those holding the fewest replicas, and first
    /// (the replica that starts the group and usually leads it) the one leading the fewest.
    fn place_replicas(&self, n: usize) -> Vec<NodeId> {
        let mut load: BTreeMap<NodeId, (usize, usize)> =
            self.nodes.keys().map(|id| (*id, (0, 0))).collect();
        for g in self.groups.values() {
            for (i, r) in g.replicas.iter().enumerate() {
                if let Some(l) = load.get_mut(r) {
                    l.0 += 1;
                    if i == 0 {
                        l.1 += 1;
                    }
                }
            }
        }
        let mut by_replicas: Vec<(usize, usize, NodeId)> =
            load.iter().map(|(id, (r, l))| (*r, *l, *id)).collect();
        by_replicas.sort_unstable();
        let mut chosen: Vec<(usize, usize, NodeId)> = by_replicas.into_iter().take(n).collect();
        // The chosen node leading the fewest groups goes first.
        chosen.sort_unstable_by_key(|(r, l, id)| (*l, *r, *id));
        chosen.into_iter().map(|(_, _, id)| id).collect()
    }
}

fn check_directory(dir: &[u8], separator: &[u8]) -> Result<(), MapError> {
    if dir.is_empty() {
        return Err(invalid("directory must not be empty"));
    }
    if dir.windows(separator.len()).any(|w| w == separator) {
        return Err(invalid("a directory must not contain the separator"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Access, Grant, TokenEntry};
    use crate::{CompiledMap, META_GROUP};

    fn golden_token() -> TokenEntry {
        TokenEntry {
            id: "0011223344556677".into(),
            sha256: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
            created_ms: 5,
            expires_at_ms: Some(9),
        }
    }

    fn map(nodes: u64) -> ClusterMap {
        let n: Vec<_> = (1..=nodes).map(|i| (i, format!("h{i}:1"))).collect();
        ClusterMap::bootstrap(&n, 4, 3).unwrap()
    }

    #[test]
    fn golden_map_change_json() {
        // If this fails you changed a persisted format; existing data dirs would be misread
        // (changes are stored as this JSON in the meta group's Raft log and applied again on
        // replay).
        const CHANGED: &str = "you changed a persisted format; existing data dirs would be misread";
        let vectors = [
            (
                MapChange::CreateKeyspace(KeyspaceSpec {
                    name: "d".into(),
                    strategy: StrategyKind::Directory,
                    shards: 2,
                    split_points: vec![b"m".to_vec()],
                    vnodes: 16,
                    fallback: Some(StrategyKind::Range),
                    separator: b"/".to_vec(),
                    replication: 3,
                }),
                concat!(
                    r#"{"CreateKeyspace":{"name":"d","strategy":"directory","shards":2,"#,
                    r#""split_points":[[109]],"vnodes":16,"fallback":"range","separator":[47],"#,
                    r#""replication":3}}"#
                ),
            ),
            (
                MapChange::DropKeyspace { name: "d".into() },
                r#"{"DropKeyspace":{"name":"d"}}"#,
            ),
            (
                MapChange::SetDirectory {
                    keyspace: "d".into(),
                    directory: b"t".to_vec(),
                    group: 3,
                },
                r#"{"SetDirectory":{"keyspace":"d","directory":[116],"group":3}}"#,
            ),
            (
                MapChange::RemoveDirectory {
                    keyspace: "d".into(),
                    directory: b"t".to_vec(),
                },
                r#"{"RemoveDirectory":{"keyspace":"d","directory":[116]}}"#,
            ),
            (
                MapChange::Auth(AuthChange::CreateUser {
                    name: "bob".into(),
                    roles: vec!["reader".into()],
                    token: Some(golden_token()),
                }),
                concat!(
                    r#"{"Auth":{"CreateUser":{"name":"bob","roles":["reader"],"token":"#,
                    r#"{"id":"0011223344556677","sha256":"#,
                    r#""00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","#,
                    r#""created_ms":5,"expires_at_ms":9}}}}"#
                ),
            ),
            (
                MapChange::Auth(AuthChange::DeleteUser { name: "bob".into() }),
                r#"{"Auth":{"DeleteUser":{"name":"bob"}}}"#,
            ),
            (
                MapChange::Auth(AuthChange::SetUserRoles {
                    name: "bob".into(),
                    roles: vec![],
                }),
                r#"{"Auth":{"SetUserRoles":{"name":"bob","roles":[]}}}"#,
            ),
            (
                MapChange::Auth(AuthChange::IssueToken {
                    user: "bob".into(),
                    token: TokenEntry {
                        expires_at_ms: None,
                        ..golden_token()
                    },
                }),
                concat!(
                    r#"{"Auth":{"IssueToken":{"user":"bob","token":{"id":"0011223344556677","#,
                    r#""sha256":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","#,
                    r#""created_ms":5,"expires_at_ms":null}}}}"#
                ),
            ),
            (
                MapChange::Auth(AuthChange::RevokeToken {
                    id: "0011223344556677".into(),
                }),
                r#"{"Auth":{"RevokeToken":{"id":"0011223344556677"}}}"#,
            ),
            (
                MapChange::Auth(AuthChange::CreateRole {
                    name: "reader".into(),
                    admin: false,
                }),
                r#"{"Auth":{"CreateRole":{"name":"reader","admin":false}}}"#,
            ),
            (
                MapChange::Auth(AuthChange::DeleteRole {
                    name: "reader".into(),
                }),
                r#"{"Auth":{"DeleteRole":{"name":"reader"}}}"#,
            ),
            (
                MapChange::Auth(AuthChange::Grant {
                    role: "reader".into(),
                    grant: Grant {
                        keyspace: "d".into(),
                        prefix: b"t/".to_vec(),
                        access: Access::ReadWrite,
                    },
                }),
                concat!(
                    r#"{"Auth":{"Grant":{"role":"reader","grant":{"keyspace":"d","#,
                    r#""prefix":[116,47],"access":"read_write"}}}}"#
                ),
            ),
            (
                MapChange::Auth(AuthChange::RevokeGrant {
                    role: "reader".into(),
                    keyspace: "d".into(),
                    prefix: vec![],
                }),
                r#"{"Auth":{"RevokeGrant":{"role":"reader","keyspace":"d","prefix":[]}}}"#,
            ),
            (
                MapChange::Auth(AuthChange::SetEnabled { enabled: true }),
                r#"{"Auth":{"SetEnabled":{"enabled":true}}}"#,
            ),
        ];
        for (change, json) in vectors {
            assert_eq!(serde_json::to_string(&change).unwrap(), json, "{CHANGED}");
            let back: MapChange = serde_json::from_str(json).unwrap();
            assert_eq!(back, change, "{CHANGED}");
        }
        for (kind, json) in [
            (StrategyKind::Hash, r#""hash""#),
            (StrategyKind::Range, r#""range""#),
            (StrategyKind::Directory, r#""directory""#),
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), json, "{CHANGED}");
        }
    }

    fn spec(name: &str, strategy: StrategyKind) -> KeyspaceSpec {
        KeyspaceSpec {
            name: name.into(),
            strategy,
            shards: 0,
            split_points: vec![],
            vnodes: 0,
            fallback: None,
            separator: vec![],
            replication: 0,
        }
    }

    #[test]
    fn create_hash_keyspace_adds_groups_and_raises_epoch() {
        let m = map(3);
        let next = m
            .apply(&MapChange::CreateKeyspace(KeyspaceSpec {
                shards: 8,
                ..spec("users", StrategyKind::Hash)
            }))
            .unwrap();
        assert_eq!(next.epoch, m.epoch + 1);
        let ks = &next.keyspaces["users"];
        assert_eq!(ks.groups, (5..13).collect::<Vec<_>>());
        assert_eq!(ks.epoch, next.epoch);
        assert!(CompiledMap::new(next.clone()).is_ok());
        // Leaders (first replicas) stay spread: every node leads 4 of the 12 data groups.
        let mut leads = BTreeMap::new();
        for g in next.groups.values().filter(|g| g.id != META_GROUP) {
            *leads.entry(g.replicas[0]).or_insert(0) += 1;
        }
        assert!(leads.values().all(|&c| c == 4), "{leads:?}");
    }

    #[test]
    fn replicas_spread_over_five_nodes() {
        let mut m = map(5);
        for i in 0..4 {
            m = m
                .apply(&MapChange::CreateKeyspace(KeyspaceSpec {
                    shards: 5,
                    replication: 3,
                    ..spec(&format!("k{i}"), StrategyKind::Hash)
                }))
                .unwrap();
        }
        let mut per_node = BTreeMap::new();
        for g in m.groups.values() {
            let mut r = g.replicas.clone();
            r.sort_unstable();
            r.dedup();
            assert_eq!(r.len(), g.replicas.len(), "replicas must be distinct");
            for n in &g.replicas {
                *per_node.entry(*n).or_insert(0) += 1;
            }
        }
        let (min, max) = (
            per_node.values().min().unwrap(),
            per_node.values().max().unwrap(),
        );
        assert!(max - min <= 2, "{per_node:?}");
    }

    #[test]
    fn keyspaces_stop_at_the_replicas_a_node_may_hold() {
        // Three nodes hold every replica: two keyspaces of 100 fit, a third does not.
        let mut m = map(3);
        for i in 0..2 {
            m = m
                .apply(&MapChange::CreateKeyspace(KeyspaceSpec {
                    shards: 100,
                    ..spec(&format!("k{i}"), StrategyKind::Hash)
                }))
                .unwrap();
        }
        let err = m
            .apply(&MapChange::CreateKeyspace(KeyspaceSpec {
                shards: 100,
                ..spec("k2", StrategyKind::Hash)
            }))
            .unwrap_err();
        assert!(err.to_string().contains("more than the 256"), "{err}");
        assert!(!m.keyspaces.contains_key("k2"));
    }

    #[test]
    fn range_keyspace_validation() {
        let m = map(3);
        let ok = KeyspaceSpec {
            split_points: vec![b"g".to_vec(), b"p".to_vec()],
            ..spec("r", StrategyKind::Range)
        };
        let next = m.apply(&MapChange::CreateKeyspace(ok.clone())).unwrap();
        assert_eq!(next.keyspaces["r"].groups.len(), 3);
        for bad in [
            vec![b"p".to_vec(), b"g".to_vec()],
            vec![b"g".to_vec(), b"g".to_vec()],
            vec![Vec::new()],
        ] {
            let e = m.apply(&MapChange::CreateKeyspace(KeyspaceSpec {
                split_points: bad,
                ..ok.clone()
            }));
            assert!(matches!(e, Err(MapError::Invalid(_))), "{e:?}");
        }
    }

    #[test]
    fn bad_creates_change_nothing() {
        let m = map(3);
        let cases = [
            KeyspaceSpec {
                shards: 0,
                ..spec("a", StrategyKind::Hash)
            },
            KeyspaceSpec {
                shards: 2,
                replication: 5,
                ..spec("a", StrategyKind::Hash)
            },
            KeyspaceSpec {
                shards: 2,
                replication: 2,
                ..spec("a", StrategyKind::Hash)
            },
            KeyspaceSpec {
                shards: 2,
                ..spec("", StrategyKind::Hash)
            },
            KeyspaceSpec {
                shards: 2,
                ..spec("bad name", StrategyKind::Hash)
            },
            KeyspaceSpec {
                shards: 2,
                ..spec("default", StrategyKind::Hash)
            },
            KeyspaceSpec {
                shards: 2,
                ..spec("d", StrategyKind::Directory)
            },
        ];
        for c in cases {
            assert!(
                m.apply(&MapChange::CreateKeyspace(c.clone())).is_err(),
                "{c:?}"
            );
        }
        assert!("consistent".parse::<StrategyKind>().is_err());
    }

    #[test]
    fn directory_entries() {
        let m = map(3)
            .apply(&MapChange::CreateKeyspace(KeyspaceSpec {
                shards: 3,
                fallback: Some(StrategyKind::Hash),
                ..spec("t", StrategyKind::Directory)
            }))
            .unwrap();
        let groups = m.keyspaces["t"].groups.clone();
        let set = MapChange::SetDirectory {
            keyspace: "t".into(),
            directory: b"tenant-a".to_vec(),
            group: groups[1],
        };
        let m2 = m.apply(&set).unwrap();
        let c = CompiledMap::new(m2.clone()).unwrap();
        assert_eq!(c.locate("t", b"tenant-a/1").unwrap(), groups[1]);
        assert!(c.owns(groups[1], b"tenant-a/zzz").unwrap());
        assert_eq!(m2.keyspaces["t"].epoch, m2.epoch);
        // Missing group, wrong keyspace kind, separator inside the directory.
        for bad in [
            MapChange::SetDirectory {
                keyspace: "t".into(),
                directory: b"x".to_vec(),
                group: 999,
            },
            MapChange::SetDirectory {
                keyspace: "t".into(),
                directory: b"x".to_vec(),
                group: 1,
            },
            MapChange::SetDirectory {
                keyspace: "default".into(),
                directory: b"x".to_vec(),
                group: 1,
            },
            MapChange::SetDirectory {
                keyspace: "t".into(),
                directory: b"a/b".to_vec(),
                group: groups[0],
            },
            MapChange::RemoveDirectory {
                keyspace: "t".into(),
                directory: b"nope".to_vec(),
            },
        ] {
            assert!(m2.apply(&bad).is_err(), "{bad:?}");
        }
        let m3 = m2
            .apply(&MapChange::RemoveDirectory {
                keyspace: "t".into(),
                directory: b"tenant-a".to_vec(),
            })
            .unwrap();
        assert!(
            matches!(&m3.keyspaces["t"].strategy, Strategy::Directory { entries, .. } if entries.is_empty())
        );
    }

    #[test]
    fn drop_removes_groups() {
        let m = map(3)
            .apply(&MapChange::CreateKeyspace(KeyspaceSpec {
                shards: 2,
                ..spec("x", StrategyKind::Hash)
            }))
            .unwrap();
        let dropped = m
            .apply(&MapChange::DropKeyspace { name: "x".into() })
            .unwrap();
        assert_eq!(dropped.groups.len(), 5);
        assert!(!dropped.keyspaces.contains_key("x"));
        assert!(m
            .apply(&MapChange::DropKeyspace {
                name: "default".into()
            })
            .is_err());
        assert!(m
            .apply(&MapChange::DropKeyspace {
                name: "nope".into()
            })
            .is_err());
        // Group ids are never reused, not even those of the newest dropped keyspace: a node that
        // missed the drop still holds their logs.
        let again = dropped
            .apply(&MapChange::CreateKeyspace(KeyspaceSpec {
                shards: 1,
                ..spec("y", StrategyKind::Hash)
            }))
            .unwrap();
        assert_eq!(again.keyspaces["y"].groups, vec![7]);
    }
}
