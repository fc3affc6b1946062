//! Keyspace and directory administration, behind the `kv.v1.Admin` service.
//!
//! Reads (list, describe, directory lookups, locate) answer from the cached map, reading it
//! again first when it lacks the keyspace asked about. Changes go to the meta group's leader as
//! a `shardmap::MapChange` through `ProposeMapChange`, over the same retry loop as data
//! requests ([`Router::call`] on group 0), and the map it answers with is installed at once, so
//! the next request through this router already sees the change.
//!
//! Before proposing, a change is checked against the cached map with the rules the meta group
//! applies ([`shardmap::ClusterMap::apply`]), so a bad request fails fast and with the same
//! message. What a pure function cannot check is decided where the data is: a keyspace to
//! drop, and a directory to move or remove, must hold no keys where the change would strand
//! them. Each group concerned raises a fence on those keys in its own Raft log and answers
//! whether it held any at that position; from the fence on it refuses writes to them with
//! `STALE_EPOCH`, so every write is either counted by the check or retried by its router under
//! the new map, never lost in between. The change is proposed with the checked map's epoch as
//! `expected_epoch` (a moved map: everything again), a refused change lifts its fences, and a
//! committed one has the keys' new owners lift older fences on them. A change interrupted
//! after its fences leaves those keys refusing writes until it is run again.
//! `docs/consistency.md` ("Admin changes") has the argument.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::try_join_all;
use kv_proto::kv::{
    self as pb, CreateKeyspaceResponse, DescribeKeyspaceResponse, DropKeyspaceResponse,
    GetDirectoryResponse, KeyspaceInfo, ListDirectoryResponse, ListKeyspacesResponse,
    LocateResponse, RemoveDirectoryResponse, SetDirectoryResponse, ShardGroup,
};
use kv_proto::node::{FenceRequest, ProposeMapChangeRequest};
use shardmap::{
    keyspace_name, prefix_end, ClusterMap, CompiledMap, GroupId, KeyspaceSpec, MapChange, MapError,
    NodeId, Placement, Strategy, StrategyKind, META_GROUP,
};
use tokio::time::Instant;

use crate::error::RouterError;
use crate::pool::NodeConn;
use crate::routing::{timed, Rerouting, Router};

/// The `shardmap` spec for a `CreateKeyspace` request: strategy and fallback parsed by name.
pub fn spec_from_proto(spec: &pb::KeyspaceSpec) -> Result<KeyspaceSpec, MapError> {
    let strategy: StrategyKind = spec.strategy.parse()?;
    let fallback = match spec.fallback.as_str() {
        "" => None,
        name => Some(name.parse::<StrategyKind>().map_err(|_| {
            MapError::Invalid(format!(
                "unknown fallback strategy {name:?}: expected hash or range"
            ))
        })?),
    };
    Ok(KeyspaceSpec {
        name: spec.name.clone(),
        strategy,
        shards: spec.shards,
        split_points: spec.split_points.iter().map(|p| p.to_vec()).collect(),
        vnodes: spec.vnodes,
        fallback,
        separator: spec.separator.to_vec(),
        replication: spec.replication as usize,
    })
}

/// What the Admin API shows of one keyspace under `map`. `leader` gives a group's leader as
/// the router knows it (`None`: unknown, shown as 0).
pub fn keyspace_info(
    map: &CompiledMap,
    name: &str,
    leader: impl Fn(GroupId) -> Option<NodeId>,
) -> Result<KeyspaceInfo, MapError> {
    let name = keyspace_name(name);
    let ks = map
        .map
        .keyspaces
        .get(name)
        .ok_or_else(|| MapError::UnknownKeyspace(name.to_string()))?;
    let placement = map.placement(name)?;
    let mut info = KeyspaceInfo {
        name: ks.name.clone(),
        strategy: ks.strategy.kind().to_string(),
        replication: u32::try_from(ks.replication).unwrap_or(u32::MAX),
        epoch: ks.epoch,
        ..Default::default()
    };
    // A directory keyspace's groups are laid out by its fallback.
    let (base, base_placement) = match (&ks.strategy, placement) {
        (
            Strategy::Directory {
                separator,
                fallback,
                entries,
            },
            Placement::Directory(d),
        ) => {
            info.fallback = fallback.kind().to_string();
            info.separator = Bytes::from(separator.clone());
            info.directory = entries
                .iter()
                .map(|e| pb::DirectoryEntry {
                    directory: Bytes::from(e.directory.clone()),
                    group_id: e.group,
                })
                .collect();
            (&**fallback, d.fallback())
        }
        (strategy, placement) => (strategy, placement),
    };
    if let Strategy::Hash { vnodes } = base {
        info.vnodes = *vnodes;
    }
    let ranges: HashMap<GroupId, (Vec<u8>, Vec<u8>)> = match base_placement {
        Placement::Range(r) => r
            .ranges()
            .into_iter()
            .map(|(g, s, e)| (g, (s, e)))
            .collect(),
        _ => HashMap::new(),
    };
    let shares: HashMap<GroupId, f64> = match base_placement {
        Placement::Hash(h) => h.shares().into_iter().collect(),
        _ => HashMap::new(),
    };
    info.groups = ks
        .groups
        .iter()
        .map(|&id| {
            let replicas = map
                .map
                .groups
                .get(&id)
                .map(|g| g.replicas.clone())
                .unwrap_or_default();
            let leader = leader(id).filter(|l| replicas.contains(l)).unwrap_or(0);
            let (range_start, range_end) = ranges.get(&id).cloned().unwrap_or_default();
            ShardGroup {
                id,
                replicas,
                leader,
                range_start: Bytes::from(range_start),
                range_end: Bytes::from(range_end),
                ring_share_percent: shares.get(&id).copied().unwrap_or(0.0),
            }
        })
        .collect();
    Ok(info)
}

/// A range of keys `[start, end)` of a group (`end` empty: unbounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    start: Bytes,
    end: Bytes,
}

impl KeyRange {
    fn all() -> KeyRange {
        KeyRange {
            start: Bytes::new(),
            end: Bytes::new(),
        }
    }

    /// The keys under `directory` in a directory keyspace with `separator`.
    fn directory(directory: &[u8], separator: &[u8]) -> KeyRange {
        let mut prefix = directory.to_vec();
        prefix.extend_from_slice(separator);
        let end = prefix_end(&prefix);
        KeyRange {
            start: Bytes::from(prefix),
            end: Bytes::from(end),
        }
    }
}

/// What a change takes away from groups, for [`Router::change_checked`].
pub(crate) struct Fencing {
    /// The groups that must hold no key in `range` for the change to go ahead.
    fence: Vec<GroupId>,
    range: KeyRange,
    /// The groups that own `range` (some of it) before the change.
    owners_before: Vec<GroupId>,
    /// The groups that own `range` once the change is made.
    owners_after: Vec<GroupId>,
    /// The refusal when `group` holds keys in `range`.
    refuse: Box<dyn Fn(GroupId) -> RouterError + Send + Sync>,
}

/// Names a change proposed against map `epoch` in the fences it raises: the same for the same
/// change at the same epoch, so a change run again after an interruption lifts, when it is
/// refused, the fences its first run left. FNV-1a, stable across builds.
fn fence_tag(change: &MapChange, epoch: u64) -> u64 {
    let json = serde_json::to_vec(change).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.iter().chain(&epoch.to_le_bytes()) {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash | 1
}

/// A directory as shown in messages.
fn show(directory: &[u8]) -> String {
    String::from_utf8_lossy(directory).into_owned()
}

/// Turns "unknown keyspace" from the data path (`INVALID_ARGUMENT`) into the admin answer
/// (`NOT_FOUND`).
fn admin_error(err: RouterError) -> RouterError {
    match err {
        RouterError::UnknownKeyspace(name) => RouterError::Admin(MapError::UnknownKeyspace(name)),
        RouterError::Map(e) => RouterError::Admin(e),
        other => other,
    }
}

impl Router {
    /// Proposes `change` to the meta group's leader and installs the map it answers with.
    /// Refusals come back as [`RouterError::MapChangeRefused`] with the meta group's status;
    /// a stale `expected_epoch` as [`RouterError::Remap`] (the newer map already read).
    async fn propose(
        &self,
        change: &MapChange,
        expected_epoch: u64,
        deadline: Instant,
    ) -> Result<Arc<CompiledMap>, RouterError> {
        let change_json = Bytes::from(serde_json::to_vec(change).map_err(|e| {
            RouterError::Admin(MapError::Invalid(format!("cannot encode the change: {e}")))
        })?);
        let request = ProposeMapChangeRequest {
            change_json,
            expected_epoch,
        };
        let response = self
            .call(META_GROUP, 0, deadline, |conn: Arc<NodeConn>, budget| {
                let mut client = conn.client.clone();
                let request = timed(request.clone(), budget);
                async move { client.propose_map_change(request).await }
            })
            .await
            .map_err(|e| match e {
                RouterError::Node {
                    code,
                    message,
                    error_code,
                    ..
                } => RouterError::MapChangeRefused {
                    code,
                    message,
                    error_code,
                },
                other => other,
            })?;
        let bad = |reason: String| RouterError::BadResponse {
            group: META_GROUP,
            reason,
        };
        if response.map_json.is_empty() {
            // No map in the answer: read it (the watch may well have brought it already).
            if self.maps.epoch() < response.epoch {
                let asked = Instant::now();
                let _ = tokio::time::timeout_at(
                    deadline,
                    self.maps.refresh_after(&self.pool, &self.metrics, asked),
                )
                .await;
            }
            return match self.maps.current() {
                Some(map) if map.map.epoch >= response.epoch => Ok(map),
                _ => Err(bad(format!(
                    "the change was applied at epoch {} but no node has that map yet",
                    response.epoch
                ))),
            };
        }
        let map: ClusterMap = serde_json::from_slice(&response.map_json)
            .map_err(|e| bad(format!("undecodable cluster map: {e}")))?;
        let map = CompiledMap::new(map).map_err(|e| bad(format!("uncompilable map: {e}")))?;
        self.maps
            .offer(map.clone(), "the meta group", &self.metrics);
        Ok(Arc::new(map))
    }

    /// The map in use, checked to accept `change` by the meta group's rules; when it does not,
    /// the map is read again once (per request, `refreshed`) before the change is refused,
    /// since the refusal may come from a stale map.
    async fn checked(
        &self,
        change: &MapChange,
        deadline: Instant,
        refreshed: &mut bool,
    ) -> Result<Arc<CompiledMap>, RouterError> {
        loop {
            let map = self.maps.wait(deadline).await?;
            match map.map.apply(change) {
                Ok(_) => return Ok(map),
                Err(_) if !*refreshed => {
                    *refreshed = true;
                    let asked = Instant::now();
                    let _ = tokio::time::timeout_at(
                        deadline,
                        self.maps.refresh_after(&self.pool, &self.metrics, asked),
                    )
                    .await;
                }
                Err(e) => return Err(RouterError::Admin(e)),
            }
        }
    }

    /// A map that has keyspace `name` (read again once if the cached one lacks it).
    async fn map_with(
        &self,
        name: &str,
        deadline: Instant,
    ) -> Result<Arc<CompiledMap>, RouterError> {
        let mut refreshed = false;
        self.map_for(name, deadline, &mut refreshed)
            .await
            .map_err(admin_error)
    }

    /// Raises a fence on `[start, end)` in each of `groups`, for a change proposed against
    /// map `epoch` and named by `tag`; the first group (in their order) whose range held a key
    /// at its fence's log position.
    async fn raise_fences(
        &self,
        groups: &[GroupId],
        epoch: u64,
        tag: u64,
        range: &KeyRange,
        deadline: Instant,
    ) -> Result<Option<GroupId>, RouterError> {
        let raised = try_join_all(groups.iter().map(|&group| async move {
            let response = self
                .fence_call(group, epoch, true, epoch, tag, range, deadline)
                .await?;
            Ok::<_, RouterError>((group, response.holds_keys))
        }))
        .await?;
        Ok(raised.into_iter().find(|(_, holds)| *holds).map(|(g, _)| g))
    }

    /// Lifts, in each of `groups`, the fences within the range raised against maps older than
    /// `older_than`, and those tagged `tag` (non-zero).
    async fn lift_fences(
        &self,
        groups: &[GroupId],
        epoch: u64,
        older_than: u64,
        tag: u64,
        range: &KeyRange,
        deadline: Instant,
    ) -> Result<(), (GroupId, RouterError)> {
        try_join_all(groups.iter().map(|&group| async move {
            self.fence_call(group, epoch, false, older_than, tag, range, deadline)
                .await
                .map_err(|e| (group, e))
        }))
        .await
        .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    async fn fence_call(
        &self,
        group: GroupId,
        epoch: u64,
        raise: bool,
        fence_epoch: u64,
        tag: u64,
        range: &KeyRange,
        deadline: Instant,
    ) -> Result<kv_proto::node::FenceResponse, RouterError> {
        let request = FenceRequest {
            group_id: group,
            epoch,
            start: range.start.clone(),
            end: range.end.clone(),
            raise,
            fence_epoch,
            tag,
        };
        self.call(group, epoch, deadline, |conn: Arc<NodeConn>, budget| {
            let mut client = conn.client.clone();
            let request = timed(request.clone(), budget);
            async move { client.fence(request).await }
        })
        .await
    }

    /// Runs a change. `check` looks at the map (returning the refusal, if any) and says which
    /// keys the change takes away from which groups ([`Fencing`]); those groups fence the keys
    /// off in their own logs and report whether they held any, so no write slips in between
    /// the check and the change. Then the change is proposed with the map's epoch, and the
    /// groups that own the keys afterwards drop older fences on them. All of it is done again
    /// if the map moves in between.
    pub(crate) async fn change_checked<C, Fut>(
        &self,
        change: &MapChange,
        deadline: Instant,
        check: C,
    ) -> Result<Arc<CompiledMap>, RouterError>
    where
        C: Fn(Arc<CompiledMap>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Fencing>, RouterError>>,
    {
        let mut refreshed = false;
        let mut rerouting = Rerouting::default();
        loop {
            let map = self
                .checked(change, deadline, &mut refreshed)
                .await
                .map_err(|e| rerouting.explain(e))?;
            let epoch = map.map.epoch;
            let result = match check(map).await {
                Ok(fencing) => self.fenced_change(change, epoch, fencing, deadline).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(map) => return Ok(map),
                Err(e) => self.after_remap(e, epoch, &mut rerouting, deadline).await?,
            }
        }
    }

    /// One attempt of [`Router::change_checked`] under the map at `epoch`.
    async fn fenced_change(
        &self,
        change: &MapChange,
        epoch: u64,
        fencing: Option<Fencing>,
        deadline: Instant,
    ) -> Result<Arc<CompiledMap>, RouterError> {
        let Some(fencing) = fencing else {
            return self.propose(change, epoch, deadline).await;
        };
        let tag = fence_tag(change, epoch);
        if let Some(group) = self
            .raise_fences(&fencing.fence, epoch, tag, &fencing.range, deadline)
            .await?
        {
            // Refused: the change will not be made at this epoch, so its fences go, and on the
            // keys' owners also those of changes against older maps, which committed
            // elsewhere or never will. Elsewhere older fences stay: they keep routers with an
            // old map from writing to a group the keys left. A fence that cannot be lifted now
            // is lifted by the next change of these keys.
            let (owners, others): (Vec<GroupId>, Vec<GroupId>) = fencing
                .fence
                .iter()
                .partition(|g| fencing.owners_before.contains(g));
            let lifted = futures::future::join(
                self.lift_fences(&owners, epoch, epoch, tag, &fencing.range, deadline),
                self.lift_fences(&others, epoch, 0, tag, &fencing.range, deadline),
            )
            .await;
            if let Err((g, e)) = lifted.0.and(lifted.1) {
                tracing::warn!(group = g, error = %e, "could not lift the fence of a refused change");
            }
            return Err((fencing.refuse)(group));
        }
        // An error here leaves the fences up: the change may have committed, and then they are
        // what keeps late writes out of groups that no longer own the keys.
        let map = self.propose(change, epoch, deadline).await?;
        self.finish_fencing(&map, &fencing.owners_after, &fencing.range, deadline)
            .await?;
        Ok(map)
    }

    /// After a change committed in `map`: the groups that own `range` now drop the fences on
    /// it raised against older maps (their changes committed or never will).
    async fn finish_fencing(
        &self,
        map: &CompiledMap,
        owners: &[GroupId],
        range: &KeyRange,
        deadline: Instant,
    ) -> Result<(), RouterError> {
        let epoch = map.map.epoch;
        self.lift_fences(owners, epoch, epoch, 0, range, deadline)
            .await
            .map_err(|(group, e)| RouterError::Unfinished {
                epoch,
                group,
                reason: e.to_string(),
            })
    }

    pub async fn create_keyspace(
        &self,
        req: pb::CreateKeyspaceRequest,
        deadline: Instant,
    ) -> Result<CreateKeyspaceResponse, RouterError> {
        let spec = req
            .spec
            .ok_or_else(|| RouterError::Admin(MapError::Invalid("no keyspace spec".into())))?;
        let spec = spec_from_proto(&spec).map_err(RouterError::Admin)?;
        let name = spec.name.clone();
        let change = MapChange::CreateKeyspace(spec);
        let map = self
            .change_checked(&change, deadline, |_| async { Ok(None) })
            .await?;
        let keyspace =
            keyspace_info(&map, &name, |g| self.leaders.known(g)).map_err(RouterError::Admin)?;
        Ok(CreateKeyspaceResponse {
            keyspace: Some(keyspace),
            epoch: map.map.epoch,
        })
    }

    pub async fn drop_keyspace(
        &self,
        req: pb::DropKeyspaceRequest,
        deadline: Instant,
    ) -> Result<DropKeyspaceResponse, RouterError> {
        let name = keyspace_name(&req.name).to_string();
        let change = MapChange::DropKeyspace { name: name.clone() };
        let map = self
            .change_checked(&change, deadline, |map| {
                let name = name.clone();
                async move {
                    if req.force {
                        return Ok(None);
                    }
                    let groups = map.map.keyspaces[&name].groups.clone();
                    Ok(Some(Fencing {
                        fence: groups.clone(),
                        range: KeyRange::all(),
                        owners_before: groups,
                        owners_after: Vec::new(),
                        refuse: Box::new(move |group| RouterError::KeyspaceNotEmpty {
                            keyspace: name.clone(),
                            group,
                        }),
                    }))
                }
            })
            .await?;
        Ok(DropKeyspaceResponse {
            epoch: map.map.epoch,
        })
    }

    pub async fn set_directory(
        &self,
        req: pb::SetDirectoryRequest,
        deadline: Instant,
    ) -> Result<SetDirectoryResponse, RouterError> {
        let keyspace = keyspace_name(&req.keyspace).to_string();
        let change = MapChange::SetDirectory {
            keyspace: keyspace.clone(),
            directory: req.directory.to_vec(),
            group: req.group_id,
        };
        // Run again after a change that committed but left the new owner fenced: finish it.
        let current = self.map_with(&keyspace, deadline).await?;
        if let Placement::Directory(d) = current.placement(&keyspace)? {
            if d.group_of_directory(&req.directory) == Some((req.group_id, true)) {
                let range = KeyRange::directory(&req.directory, d.separator());
                self.finish_fencing(&current, &[req.group_id], &range, deadline)
                    .await?;
                return Ok(SetDirectoryResponse {
                    epoch: current.map.epoch,
                });
            }
        }
        let map = self
            .change_checked(&change, deadline, |map| {
                let keyspace = keyspace.clone();
                let directory = req.directory.clone();
                async move {
                    let Placement::Directory(d) = map.placement(&keyspace)? else {
                        return Ok(None); // `checked` refused other strategies already
                    };
                    // Every other group, not only the directory's owners: keys stranded
                    // elsewhere by an older bug would vanish from view for good.
                    let others: Vec<GroupId> = map.map.keyspaces[&keyspace]
                        .groups
                        .iter()
                        .copied()
                        .filter(|g| *g != req.group_id)
                        .collect();
                    let range = KeyRange::directory(&directory, d.separator());
                    let owners_before = match d.group_of_directory(&directory) {
                        Some((g, true)) => vec![g],
                        _ => d.fallback().groups_for_scan(&range.start, &range.end),
                    };
                    let shown = show(&directory);
                    Ok(Some(Fencing {
                        fence: others,
                        range,
                        owners_before,
                        owners_after: vec![req.group_id],
                        refuse: Box::new(move |group| RouterError::DirectoryNotEmpty {
                            directory: shown.clone(),
                            group,
                            action: "moving it",
                        }),
                    }))
                }
            })
            .await?;
        Ok(SetDirectoryResponse {
            epoch: map.map.epoch,
        })
    }

    pub async fn remove_directory(
        &self,
        req: pb::RemoveDirectoryRequest,
        deadline: Instant,
    ) -> Result<RemoveDirectoryResponse, RouterError> {
        let keyspace = keyspace_name(&req.keyspace).to_string();
        let change = MapChange::RemoveDirectory {
            keyspace: keyspace.clone(),
            directory: req.directory.to_vec(),
        };
        // Run again after a removal that committed but left the fallback's groups fenced:
        // finish it, then answer as for any missing entry.
        let current = self.map_with(&keyspace, deadline).await?;
        if let Placement::Directory(d) = current.placement(&keyspace)? {
            if d.group_of_directory(&req.directory)
                .is_none_or(|(_, entry)| !entry)
            {
                let range = KeyRange::directory(&req.directory, d.separator());
                let owners = d.fallback().groups_for_scan(&range.start, &range.end);
                self.finish_fencing(&current, &owners, &range, deadline)
                    .await?;
            }
        }
        let map = self
            .change_checked(&change, deadline, |map| {
                let keyspace = keyspace.clone();
                let directory = req.directory.clone();
                async move {
                    let Placement::Directory(d) = map.placement(&keyspace)? else {
                        return Ok(None);
                    };
                    let Some((group, true)) = d.group_of_directory(&directory) else {
                        return Ok(None); // no entry: `checked` refused it already
                    };
                    let range = KeyRange::directory(&directory, d.separator());
                    let owners_after = d.fallback().groups_for_scan(&range.start, &range.end);
                    // Keys can stay only if the fallback puts the whole directory in the same
                    // group (a range fallback whose range holds the prefix).
                    if owners_after == [group] && matches!(d.fallback(), Placement::Range(_)) {
                        return Ok(None);
                    }
                    let shown = show(&directory);
                    Ok(Some(Fencing {
                        fence: vec![group],
                        range,
                        owners_before: vec![group],
                        owners_after,
                        refuse: Box::new(move |group| RouterError::DirectoryNotEmpty {
                            directory: shown.clone(),
                            group,
                            action: "removing its entry",
                        }),
                    }))
                }
            })
            .await?;
        Ok(RemoveDirectoryResponse {
            epoch: map.map.epoch,
        })
    }

    pub async fn list_keyspaces(
        &self,
        _req: pb::ListKeyspacesRequest,
        deadline: Instant,
    ) -> Result<ListKeyspacesResponse, RouterError> {
        let map = self.maps.wait(deadline).await?;
        let keyspaces = map
            .map
            .keyspaces
            .keys()
            .map(|name| keyspace_info(&map, name, |g| self.leaders.known(g)))
            .collect::<Result<_, _>>()
            .map_err(RouterError::Admin)?;
        Ok(ListKeyspacesResponse {
            keyspaces,
            epoch: map.map.epoch,
        })
    }

    pub async fn describe_keyspace(
        &self,
        req: pb::DescribeKeyspaceRequest,
        deadline: Instant,
    ) -> Result<DescribeKeyspaceResponse, RouterError> {
        let map = self.map_with(&req.name, deadline).await?;
        let keyspace = keyspace_info(&map, &req.name, |g| self.leaders.known(g))
            .map_err(RouterError::Admin)?;
        Ok(DescribeKeyspaceResponse {
            keyspace: Some(keyspace),
            epoch: map.map.epoch,
        })
    }

    /// A directory keyspace's compiled placement, refusing other strategies.
    fn directory_placement<'m>(
        map: &'m CompiledMap,
        keyspace: &str,
    ) -> Result<&'m shardmap::DirectoryPlacement, RouterError> {
        match map.placement(keyspace).map_err(RouterError::Admin)? {
            Placement::Directory(d) => Ok(d),
            other => {
                let kind = match other {
                    Placement::Hash(_) => StrategyKind::Hash,
                    _ => StrategyKind::Range,
                };
                Err(RouterError::Admin(MapError::Invalid(format!(
                    "keyspace {:?} uses {kind} sharding, not directory",
                    keyspace_name(keyspace)
                ))))
            }
        }
    }

    pub async fn get_directory(
        &self,
        req: pb::GetDirectoryRequest,
        deadline: Instant,
    ) -> Result<GetDirectoryResponse, RouterError> {
        if req.directory.is_empty() {
            return Err(RouterError::Admin(MapError::Invalid(
                "directory must not be empty".into(),
            )));
        }
        let map = self.map_with(&req.keyspace, deadline).await?;
        let d = Self::directory_placement(&map, &req.keyspace)?;
        let (group_id, found) = d.group_of_directory(&req.directory).unwrap_or((0, false));
        Ok(GetDirectoryResponse { found, group_id })
    }

    pub async fn list_directory(
        &self,
        req: pb::ListDirectoryRequest,
        deadline: Instant,
    ) -> Result<ListDirectoryResponse, RouterError> {
        let map = self.map_with(&req.keyspace, deadline).await?;
        Self::directory_placement(&map, &req.keyspace)?;
        let info = keyspace_info(&map, &req.keyspace, |_| None).map_err(RouterError::Admin)?;
        Ok(ListDirectoryResponse {
            entries: info.directory,
        })
    }

    pub async fn locate_keys(
        &self,
        req: pb::LocateRequest,
        deadline: Instant,
    ) -> Result<LocateResponse, RouterError> {
        for key in &req.keys {
            self.limits
                .check_key(key)
                .map_err(RouterError::InvalidKey)?;
        }
        let map = self.map_with(&req.keyspace, deadline).await?;
        let placement = map.placement(&req.keyspace).map_err(RouterError::Admin)?;
        Ok(LocateResponse {
            group_ids: req.keys.iter().map(|k| placement.locate(k)).collect(),
            epoch: map.map.epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ClusterMap {
        let nodes: Vec<_> = (1..=3)
            .map(|i| (i, format!("127.0.0.1:{}", 7000 + i)))
            .collect();
        ClusterMap::bootstrap(&nodes, 4, 3).unwrap()
    }

    fn spec(name: &str, strategy: &str) -> pb::KeyspaceSpec {
        pb::KeyspaceSpec {
            name: name.into(),
            strategy: strategy.into(),
            ..Default::default()
        }
    }

    fn create(map: ClusterMap, spec: pb::KeyspaceSpec) -> ClusterMap {
        map.apply(&MapChange::CreateKeyspace(spec_from_proto(&spec).unwrap()))
            .unwrap()
    }

    #[test]
    fn specs_parse_strategies_by_name() {
        let s = spec_from_proto(&pb::KeyspaceSpec {
            shards: 3,
            fallback: "range".into(),
            separator: Bytes::from_static(b"::"),
            split_points: vec![Bytes::from_static(b"m")],
            replication: 1,
            ..spec("t", "directory")
        })
        .unwrap();
        assert_eq!(s.strategy, StrategyKind::Directory);
        assert_eq!(s.fallback, Some(StrategyKind::Range));
        assert_eq!(s.separator, b"::".to_vec());
        assert_eq!(s.split_points, vec![b"m".to_vec()]);
        assert_eq!(s.replication, 1);

        let err = spec_from_proto(&spec("t", "consistent")).unwrap_err();
        assert!(err.to_string().contains("\"consistent\""), "{err}");
        let err = spec_from_proto(&pb::KeyspaceSpec {
            fallback: "modulo".into(),
            ..spec("t", "directory")
        })
        .unwrap_err();
        assert!(err.to_string().contains("\"modulo\""), "{err}");
    }

    #[test]
    fn hash_keyspace_info_has_shares_and_known_leaders() {
        let map = CompiledMap::new(create(
            base(),
            pb::KeyspaceSpec {
                shards: 4,
                vnodes: 64,
                ..spec("h", "hash")
            },
        ))
        .unwrap();
        let groups = map.map.keyspaces["h"].groups.clone();
        let leader_of = map.map.groups[&groups[0]].replicas[1];
        let info = keyspace_info(&map, "h", |g| (g == groups[0]).then_some(leader_of)).unwrap();
        assert_eq!(info.name, "h");
        assert_eq!(info.strategy, "hash");
        assert_eq!(info.vnodes, 64);
        assert_eq!(info.replication, 3);
        assert_eq!(info.epoch, map.map.epoch);
        assert_eq!(info.fallback, "");
        assert_eq!(info.groups.iter().map(|g| g.id).collect::<Vec<_>>(), groups);
        assert_eq!(info.groups[0].leader, leader_of);
        assert_eq!(info.groups[1].leader, 0);
        assert_eq!(info.groups[0].replicas.len(), 3);
        let total: f64 = info.groups.iter().map(|g| g.ring_share_percent).sum();
        assert!((total - 100.0).abs() < 0.01, "{total}");
        assert!(info.groups.iter().all(|g| g.ring_share_percent > 5.0));
        assert!(info.groups.iter().all(|g| g.range_start.is_empty()));

        // The empty name is the default keyspace; a leader that is not a replica is hidden.
        let info = keyspace_info(&map, "", |_| Some(99)).unwrap();
        assert_eq!(info.name, "default");
        assert!(info.groups.iter().all(|g| g.leader == 0));
        assert_eq!(
            keyspace_info(&map, "nope", |_| None).unwrap_err(),
            MapError::UnknownKeyspace("nope".into())
        );
    }

    #[test]
    fn range_keyspace_info_has_ranges_in_order() {
        let map = CompiledMap::new(create(
            base(),
            pb::KeyspaceSpec {
                split_points: vec![Bytes::from_static(b"g"), Bytes::from_static(b"p")],
                ..spec("r", "range")
            },
        ))
        .unwrap();
        let info = keyspace_info(&map, "r", |_| None).unwrap();
        assert_eq!(info.strategy, "range");
        assert_eq!(info.vnodes, 0);
        let bounds: Vec<(&[u8], &[u8])> = info
            .groups
            .iter()
            .map(|g| (g.range_start.as_ref(), g.range_end.as_ref()))
            .collect();
        assert_eq!(
            bounds,
            vec![(&b""[..], &b"g"[..]), (b"g", b"p"), (b"p", b"")]
        );
        assert!(info.groups.iter().all(|g| g.ring_share_percent == 0.0));
    }

    #[test]
    fn directory_keyspace_info_shows_entries_and_the_fallback_layout() {
        let m = create(
            base(),
            pb::KeyspaceSpec {
                shards: 2,
                fallback: "hash".into(),
                ..spec("t", "directory")
            },
        );
        let groups = m.keyspaces["t"].groups.clone();
        let m = m
            .apply(&MapChange::SetDirectory {
                keyspace: "t".into(),
                directory: b"tenant-a".to_vec(),
                group: groups[1],
            })
            .unwrap();
        let map = CompiledMap::new(m).unwrap();
        let info = keyspace_info(&map, "t", |_| None).unwrap();
        assert_eq!(info.strategy, "directory");
        assert_eq!(info.fallback, "hash");
        assert_eq!(info.separator, Bytes::from_static(b"/"));
        assert_eq!(info.vnodes, shardmap::DEFAULT_VNODES);
        assert_eq!(info.epoch, map.map.epoch);
        assert_eq!(
            info.directory,
            vec![pb::DirectoryEntry {
                directory: Bytes::from_static(b"tenant-a"),
                group_id: groups[1],
            }]
        );
        let total: f64 = info.groups.iter().map(|g| g.ring_share_percent).sum();
        assert!((total - 100.0).abs() < 0.01, "{total}");

        let m = create(
            map.map.clone(),
            pb::KeyspaceSpec {
                split_points: vec![Bytes::from_static(b"m")],
                fallback: "range".into(),
                ..spec("u", "directory")
            },
        );
        let map = CompiledMap::new(m).unwrap();
        let info = keyspace_info(&map, "u", |_| None).unwrap();
        assert_eq!(info.fallback, "range");
        assert_eq!(info.groups[0].range_end, Bytes::from_static(b"m"));
        assert_eq!(info.groups[1].range_start, Bytes::from_static(b"m"));
    }

    #[test]
    fn directory_ranges_cover_the_prefix() {
        let range = KeyRange::directory(b"tenant-a", b"/");
        assert_eq!(range.start, Bytes::from_static(b"tenant-a/"));
        assert_eq!(range.end, Bytes::from_static(b"tenant-a0"));
    }

    mod flows {
        use std::sync::atomic::Ordering;
        use std::time::Duration;

        use kv_proto::codes;
        use kv_proto::kv::{GetRequest, PutRequest};
        use tonic::Code;

        use super::*;
        use crate::error::to_status;
        use crate::fake_node::FakeCluster;
        use crate::routing::tests::router_for;

        fn soon() -> Instant {
            Instant::now() + Duration::from_secs(5)
        }

        fn code_of(err: RouterError) -> (Code, String, String) {
            let status = to_status(err);
            let code = status
                .metadata()
                .get(kv_proto::meta::ERROR_CODE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (status.code(), code, status.message().to_string())
        }

        fn create_req(spec: pb::KeyspaceSpec) -> pb::CreateKeyspaceRequest {
            pb::CreateKeyspaceRequest { spec: Some(spec) }
        }

        async fn put(router: &Router, keyspace: &str, key: &str) -> u64 {
            router
                .put(
                    PutRequest {
                        keyspace: keyspace.into(),
                        key: Bytes::copy_from_slice(key.as_bytes()),
                        value: Bytes::from_static(b"v"),
                        ..Default::default()
                    },
                    soon(),
                )
                .await
                .unwrap()
                .group_id
        }

        #[tokio::test]
        async fn create_describe_list_and_use_a_keyspace() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(3);
            let router = router_for(&cluster).await;
            let created = router
                .create_keyspace(
                    create_req(pb::KeyspaceSpec {
                        shards: 3,
                        ..spec("orders", "hash")
                    }),
                    soon(),
                )
                .await
                .unwrap();
            let info = created.keyspace.unwrap();
            assert_eq!(info.name, "orders");
            assert_eq!(info.groups.len(), 3);
            assert_eq!(created.epoch, cluster.current_map().epoch);
            // Installed at once: usable and described without waiting for a refresh.
            assert_eq!(router.maps.epoch(), created.epoch);
            let group = put(&router, "orders", "o1").await;
            let described = router
                .describe_keyspace(
                    pb::DescribeKeyspaceRequest {
                        name: "orders".into(),
                    },
                    soon(),
                )
                .await
                .unwrap()
                .keyspace
                .unwrap();
            let g = described.groups.iter().find(|g| g.id == group).unwrap();
            assert_eq!(g.leader, 3, "the leader seen by the router");
            let listed = router
                .list_keyspaces(pb::ListKeyspacesRequest {}, soon())
                .await
                .unwrap();
            let names: Vec<_> = listed.keyspaces.iter().map(|k| k.name.as_str()).collect();
            assert_eq!(names, vec!["default", "orders"]);
            let located = router
                .locate_keys(
                    pb::LocateRequest {
                        keyspace: "orders".into(),
                        keys: vec![Bytes::from_static(b"o1")],
                    },
                    soon(),
                )
                .await
                .unwrap();
            assert_eq!(located.group_ids, vec![group]);

            // Again: refused, with the meta group's code.
            let err = router
                .create_keyspace(
                    create_req(pb::KeyspaceSpec {
                        shards: 3,
                        ..spec("orders", "hash")
                    }),
                    soon(),
                )
                .await
                .unwrap_err();
            let (code, error_code, _) = code_of(err);
            assert_eq!(code, Code::AlreadyExists);
            assert_eq!(error_code, codes::KEYSPACE_EXISTS);

            let err = router
                .describe_keyspace(
                    pb::DescribeKeyspaceRequest {
                        name: "nope".into(),
                    },
                    soon(),
                )
                .await
                .unwrap_err();
            let (code, error_code, message) = code_of(err);
            assert_eq!(code, Code::InvalidArgument);
            assert_eq!(error_code, codes::UNKNOWN_KEYSPACE);
            assert!(message.contains("nope"), "{message}");
        }

        #[tokio::test]
        async fn bad_specs_are_refused_before_proposing() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(1);
            let router = router_for(&cluster).await;
            for (bad, needle) in [
                (spec("k", "consistent"), "consistent"),
                (
                    pb::KeyspaceSpec {
                        split_points: vec![Bytes::from_static(b"p"), Bytes::from_static(b"g")],
                        ..spec("k", "range")
                    },
                    "sorted",
                ),
                (
                    pb::KeyspaceSpec {
                        shards: 2,
                        ..spec("bad name", "hash")
                    },
                    "bad name",
                ),
            ] {
                let err = router
                    .create_keyspace(create_req(bad), soon())
                    .await
                    .unwrap_err();
                let (code, error_code, message) = code_of(err);
                assert_eq!(code, Code::InvalidArgument, "{message}");
                assert_eq!(error_code, codes::INVALID_MAP_CHANGE);
                assert!(message.contains(needle), "{message}");
            }
            assert_eq!(cluster.shared.proposals.load(Ordering::Relaxed), 0);
        }

        #[tokio::test]
        async fn a_change_made_through_another_router_is_seen_before_refusing() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(2);
            let router = router_for(&cluster).await;
            let other = router_for(&cluster).await;
            other
                .create_keyspace(
                    create_req(pb::KeyspaceSpec {
                        shards: 1,
                        ..spec("shared", "hash")
                    }),
                    soon(),
                )
                .await
                .unwrap();
            // `router` has not seen it yet, but finds it.
            router
                .describe_keyspace(
                    pb::DescribeKeyspaceRequest {
                        name: "shared".into(),
                    },
                    soon(),
                )
                .await
                .unwrap();
            let dropped = router
                .drop_keyspace(
                    pb::DropKeyspaceRequest {
                        name: "shared".into(),
                        force: false,
                    },
                    soon(),
                )
                .await
                .unwrap();
            assert!(!cluster.current_map().keyspaces.contains_key("shared"));
            assert_eq!(dropped.epoch, cluster.current_map().epoch);
        }

        #[tokio::test]
        async fn dropping_a_keyspace_with_data_needs_force() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(1);
            let router = router_for(&cluster).await;
            router
                .create_keyspace(
                    create_req(pb::KeyspaceSpec {
                        shards: 2,
                        ..spec("logs", "hash")
                    }),
                    soon(),
                )
                .await
                .unwrap();
            let group = put(&router, "logs", "line-1").await;
            let drop = |force| pb::DropKeyspaceRequest {
                name: "logs".into(),
                force,
            };
            let err = router.drop_keyspace(drop(false), soon()).await.unwrap_err();
            let (code, error_code, message) = code_of(err);
            assert_eq!(code, Code::FailedPrecondition);
            assert_eq!(error_code, codes::KEYSPACE_NOT_EMPTY);
            assert_eq!(
                message,
                format!("keyspace logs holds data in group {group}; use --force to drop it anyway")
            );
            assert!(cluster.current_map().keyspaces.contains_key("logs"));

            router.drop_keyspace(drop(true), soon()).await.unwrap();
            assert!(!cluster.current_map().keyspaces.contains_key("logs"));
            let err = router
                .get(
                    GetRequest {
                        keyspace: "logs".into(),
                        key: Bytes::from_static(b"line-1"),
                        consistency: 0,
                        ..Default::default()
                    },
                    soon(),
                )
                .await
                .unwrap_err();
            assert!(matches!(err, RouterError::UnknownKeyspace(_)), "{err:?}");

            // The default keyspace cannot be dropped (refused before any scan).
            let err = router
                .drop_keyspace(
                    pb::DropKeyspaceRequest {
                        name: "default".into(),
                        force: false,
                    },
                    soon(),
                )
                .await
                .unwrap_err();
            assert_eq!(code_of(err).0, Code::InvalidArgument);
        }

        #[tokio::test]
        async fn a_change_checked_under_a_stale_map_is_checked_again() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(1);
            let router = router_for(&cluster).await;
            router
                .create_keyspace(
                    create_req(pb::KeyspaceSpec {
                        shards: 2,
                        ..spec("a", "hash")
                    }),
                    soon(),
                )
                .await
                .unwrap();
            // An unrelated change this router has not seen.
            cluster.change_map(&MapChange::CreateKeyspace(
                spec_from_proto(&pb::KeyspaceSpec {
                    shards: 1,
                    ..spec("b", "hash")
                })
                .unwrap(),
            ));
            let before = cluster.shared.proposals.load(Ordering::Relaxed);
            router
                .drop_keyspace(
                    pb::DropKeyspaceRequest {
                        name: "a".into(),
                        force: false,
                    },
                    soon(),
                )
                .await
                .unwrap();
            // The first proposal was stale (STALE_EPOCH), the second went through.
            assert_eq!(cluster.shared.proposals.load(Ordering::Relaxed) - before, 2);
            let map = cluster.current_map();
            assert!(!map.keyspaces.contains_key("a"));
            assert!(map.keyspaces.contains_key("b"));
        }

        #[tokio::test]
        async fn directories_move_only_without_data_elsewhere() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(2);
            let router = router_for(&cluster).await;
            let info = router
                .create_keyspace(
                    create_req(pb::KeyspaceSpec {
                        shards: 3,
                        fallback: "hash".into(),
                        ..spec("t", "directory")
                    }),
                    soon(),
                )
                .await
                .unwrap()
                .keyspace
                .unwrap();
            let groups: Vec<GroupId> = info.groups.iter().map(|g| g.id).collect();
            let home = put(&router, "t", "tenant-a/1").await;
            let elsewhere = *groups.iter().find(|g| **g != home).unwrap();
            let set = |group| pb::SetDirectoryRequest {
                keyspace: "t".into(),
                directory: Bytes::from_static(b"tenant-a"),
                group_id: group,
            };

            let err = router
                .set_directory(set(elsewhere), soon())
                .await
                .unwrap_err();
            let (code, error_code, message) = code_of(err);
            assert_eq!(code, Code::FailedPrecondition);
            assert_eq!(error_code, codes::DIRECTORY_NOT_EMPTY);
            assert_eq!(message, format!("directory tenant-a has data in group {home}; moving it needs data migration, which is not supported yet"));

            let err = router.set_directory(set(999), soon()).await.unwrap_err();
            let (code, _, message) = code_of(err);
            assert_eq!(code, Code::InvalidArgument);
            assert!(message.contains("999"), "{message}");

            // Pinning it where its keys already are is fine.
            let epoch = router.set_directory(set(home), soon()).await.unwrap().epoch;
            assert_eq!(epoch, cluster.current_map().epoch);
            let got = router
                .get_directory(
                    pb::GetDirectoryRequest {
                        keyspace: "t".into(),
                        directory: Bytes::from_static(b"tenant-a"),
                    },
                    soon(),
                )
                .await
                .unwrap();
            assert!(got.found);
            assert_eq!(got.group_id, home);
            let unlisted = router
                .get_directory(
                    pb::GetDirectoryRequest {
                        keyspace: "t".into(),
                        directory: Bytes::from_static(b"tenant-b"),
                    },
                    soon(),
                )
                .await
                .unwrap();
            assert_eq!((unlisted.found, unlisted.group_id), (false, 0));
            let listed = router
                .list_directory(
                    pb::ListDirectoryRequest {
                        keyspace: "t".into(),
                    },
                    soon(),
                )
                .await
                .unwrap();
            assert_eq!(listed.entries.len(), 1);
            assert_eq!(listed.entries[0].group_id, home);

            // A new directory with no keys can go anywhere, and its keys follow.
            router
                .set_directory(
                    pb::SetDirectoryRequest {
                        keyspace: "t".into(),
                        directory: Bytes::from_static(b"tenant-c"),
                        group_id: elsewhere,
                    },
                    soon(),
                )
                .await
                .unwrap();
            assert_eq!(put(&router, "t", "tenant-c/1").await, elsewhere);

            // Removing an entry would hand its keys to the hash fallback: refused while it
            // holds keys.
            let remove = pb::RemoveDirectoryRequest {
                keyspace: "t".into(),
                directory: Bytes::from_static(b"tenant-c"),
            };
            let err = router
                .remove_directory(remove.clone(), soon())
                .await
                .unwrap_err();
            let (code, error_code, message) = code_of(err);
            assert_eq!(code, Code::FailedPrecondition);
            assert_eq!(error_code, codes::DIRECTORY_NOT_EMPTY);
            assert!(message.contains("removing its entry"), "{message}");
            router
                .delete(
                    kv_proto::kv::DeleteRequest {
                        keyspace: "t".into(),
                        key: Bytes::from_static(b"tenant-c/1"),
                        ..Default::default()
                    },
                    soon(),
                )
                .await
                .unwrap();
            router.remove_directory(remove, soon()).await.unwrap();

            // Directory operations on a hash keyspace name the strategy.
            let err = router
                .list_directory(
                    pb::ListDirectoryRequest {
                        keyspace: "default".into(),
                    },
                    soon(),
                )
                .await
                .unwrap_err();
            let (code, _, message) = code_of(err);
            assert_eq!(code, Code::InvalidArgument);
            assert!(message.contains("hash"), "{message}");
        }

        #[tokio::test]
        async fn an_entry_may_go_when_the_range_fallback_keeps_its_keys_in_place() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(1);
            let router = router_for(&cluster).await;
            let info = router
                .create_keyspace(
                    create_req(pb::KeyspaceSpec {
                        split_points: vec![Bytes::from_static(b"m")],
                        fallback: "range".into(),
                        ..spec("u", "directory")
                    }),
                    soon(),
                )
                .await
                .unwrap()
                .keyspace
                .unwrap();
            let (low, high) = (info.groups[0].id, info.groups[1].id);
            // "apple/" falls in the first range: the fallback already gives it one group.
            let get = |dir: &'static [u8]| pb::GetDirectoryRequest {
                keyspace: "u".into(),
                directory: Bytes::from_static(dir),
            };
            let got = router.get_directory(get(b"apple"), soon()).await.unwrap();
            assert_eq!((got.found, got.group_id), (false, low));
            cluster.insert(low, b"apple/1", b"x");
            let set = |group| pb::SetDirectoryRequest {
                keyspace: "u".into(),
                directory: Bytes::from_static(b"apple"),
                group_id: group,
            };
            let err = router.set_directory(set(high), soon()).await.unwrap_err();
            assert_eq!(code_of(err).1, codes::DIRECTORY_NOT_EMPTY);
            router.set_directory(set(low), soon()).await.unwrap();
            // Removing the entry leaves the keys where the fallback puts them: allowed.
            router
                .remove_directory(
                    pb::RemoveDirectoryRequest {
                        keyspace: "u".into(),
                        directory: Bytes::from_static(b"apple"),
                    },
                    soon(),
                )
                .await
                .unwrap();
            let map = cluster.current_map();
            assert!(matches!(
                &map.keyspaces["u"].strategy,
                Strategy::Directory { entries, .. } if entries.is_empty()
            ));
        }

        #[tokio::test]
        async fn refusals_from_the_meta_group_pass_through_unchanged() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(1);
            let router = router_for(&cluster).await;
            let change = MapChange::DropKeyspace {
                name: "ghost".into(),
            };
            let err = router.propose(&change, 0, soon()).await.unwrap_err();
            let (code, error_code, message) = code_of(err);
            assert_eq!(code, Code::InvalidArgument);
            assert_eq!(error_code, codes::UNKNOWN_KEYSPACE);
            assert_eq!(message, "unknown keyspace \"ghost\"");
        }

        #[tokio::test]
        async fn fences_stay_on_the_keys_a_group_gave_away_and_nowhere_else() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(2);
            let router = router_for(&cluster).await;
            let info = router
                .create_keyspace(
                    create_req(pb::KeyspaceSpec {
                        shards: 3,
                        fallback: "hash".into(),
                        ..spec("t", "directory")
                    }),
                    soon(),
                )
                .await
                .unwrap()
                .keyspace
                .unwrap();
            let groups: Vec<GroupId> = info.groups.iter().map(|g| g.id).collect();
            let fenced = || {
                let mut g: Vec<GroupId> = cluster
                    .shared
                    .fences
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|f| f.group)
                    .collect();
                g.sort();
                g
            };
            let set = |dir: &'static str, group| pb::SetDirectoryRequest {
                keyspace: "t".into(),
                directory: Bytes::from_static(dir.as_bytes()),
                group_id: group,
            };

            // Refused: the fences it raised are gone, and writes go on.
            let home = put(&router, "t", "tenant-a/1").await;
            let elsewhere = *groups.iter().find(|g| **g != home).unwrap();
            router
                .set_directory(set("tenant-a", elsewhere), soon())
                .await
                .unwrap_err();
            assert_eq!(fenced(), Vec::<GroupId>::new());
            put(&router, "t", "tenant-a/2").await;

            // Made: every group but the new owner keeps refusing the directory's keys, which
            // now go to the new owner.
            router
                .set_directory(set("tenant-b", groups[0]), soon())
                .await
                .unwrap();
            assert_eq!(fenced(), groups[1..].to_vec());
            assert_eq!(put(&router, "t", "tenant-b/1").await, groups[0]);

            // Moved again while empty: the new owner's old fence is lifted, the old owner fenced.
            router
                .remove_directory(
                    pb::RemoveDirectoryRequest {
                        keyspace: "t".into(),
                        directory: Bytes::from_static(b"tenant-b"),
                    },
                    soon(),
                )
                .await
                .unwrap_err(); // tenant-b/1 is in groups[0], and the hash fallback spreads keys
            router
                .set_directory(set("tenant-c", groups[1]), soon())
                .await
                .unwrap();
            router
                .set_directory(set("tenant-c", groups[2]), soon())
                .await
                .unwrap();
            let c_fences: Vec<GroupId> = cluster
                .shared
                .fences
                .lock()
                .unwrap()
                .iter()
                .filter(|f| f.start.starts_with(b"tenant-c"))
                .map(|f| f.group)
                .collect();
            assert!(!c_fences.contains(&groups[2]), "{c_fences:?}");
            assert!(c_fences.contains(&groups[1]), "{c_fences:?}");
            assert_eq!(put(&router, "t", "tenant-c/1").await, groups[2]);

            // Run again after it committed: nothing changes, and it succeeds.
            let epoch = cluster.current_map().epoch;
            let again = router
                .set_directory(set("tenant-c", groups[2]), soon())
                .await
                .unwrap();
            assert_eq!(again.epoch, epoch);
        }

        #[tokio::test]
        async fn a_change_cut_off_after_its_fences_keeps_them_until_it_is_run_again() {
            let cluster = FakeCluster::start(3, 2).await;
            cluster.set_leader(2);
            let router = router_for(&cluster).await;
            let info = router
                .create_keyspace(
                    create_req(pb::KeyspaceSpec {
                        shards: 2,
                        fallback: "hash".into(),
                        ..spec("t", "directory")
                    }),
                    soon(),
                )
                .await
                .unwrap()
                .keyspace
                .unwrap();
            let (a, b) = (info.groups[0].id, info.groups[1].id);
            let set = |group| pb::SetDirectoryRequest {
                keyspace: "t".into(),
                directory: Bytes::from_static(b"tenant-a"),
                group_id: group,
            };
            router.set_directory(set(a), soon()).await.unwrap();
            assert_eq!(put(&router, "t", "tenant-a/1").await, a);
            router
                .delete(
                    pb::DeleteRequest {
                        keyspace: "t".into(),
                        key: Bytes::from_static(b"tenant-a/1"),
                        ..Default::default()
                    },
                    soon(),
                )
                .await
                .unwrap();

            // The meta group cannot commit: the move to b fails after a fenced a off.
            cluster.shared.refuse_proposals.store(1, Ordering::Relaxed);
            let short = || Instant::now() + Duration::from_millis(500);
            router.set_directory(set(b), short()).await.unwrap_err();
            assert_eq!(cluster.current_map().epoch, router.maps.epoch());
            // Its keys refuse writes meanwhile: the change may have committed, for all the
            // router knows.
            let err = router
                .put(
                    PutRequest {
                        keyspace: "t".into(),
                        key: Bytes::from_static(b"tenant-a/2"),
                        value: Bytes::from_static(b"v"),
                        ..Default::default()
                    },
                    short(),
                )
                .await
                .unwrap_err();
            let (code, _, message) = code_of(err);
            assert_eq!(code, Code::Unavailable, "{message}");
            assert!(cluster.keys_of(a).is_empty());

            // Run again: it completes, and the keys go to b.
            cluster.shared.refuse_proposals.store(0, Ordering::Relaxed);
            router.set_directory(set(b), soon()).await.unwrap();
            assert_eq!(put(&router, "t", "tenant-a/2").await, b);
        }
    }
}
