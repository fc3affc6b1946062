//! A group's state machine on sled: the user data tree and its applied state, implementing
//! openraft's `RaftStateMachine`, with snapshots built from and installed into the data tree.

use foldhash::{HashMap, HashMapExt};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::request_ids::{AgingClock, Checkpoint, Outcome, RequestIds};
use super::{read_err, ser, sto_err, FileLog, Flusher};
use crate::keys;
use crate::types::{
    fenced_results, is_fenced, Dedup, Entry, Fence, FenceChange, FenceOutcome, GroupId, LogId,
    MapChangeRefused, Op, OpResult, Request, Response, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig, DEDUP_WINDOW_MS,
};

/// Most request-id records freed per `apply` call, beyond twice its entries: bounded so that
/// the first write after an idle spell longer than the window does not pay for all of them.
const FORGET_PER_APPLY: usize = 256;

/// What a snapshot holds: the applied state and every key with its stored value.
#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    cluster_map: Option<serde_bytes::ByteBuf>,
    kvs: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    /// The group's fences: a replica restored from a snapshot refuses what the others refuse.
    fences: Vec<Fence>,
    /// The request ids still remembered, with their aging clock, so that a replica restored
    /// from a snapshot also answers retries instead of applying them twice, and forgets them
    /// when the others do: a [`Checkpoint`], encoded, as it is also stored on its own.
    request_ids: serde_bytes::ByteBuf,
}

/// A snapshot as kept on disk, so it survives restarts and can be sent to followers.
#[derive(Serialize, Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The parts of a group's state that readers share with the state machine.
#[derive(Clone)]
pub struct GroupData {
    pub data: sled::Tree,
    sm: sled::Tree,
    pub(super) dedup: sled::Tree,
    applied: Arc<AtomicU64>,
    /// Bumped whenever the stored cluster map changes (meta group), so the node can reload it.
    map_changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Held for writing while an `apply` call writes its effects, and for reading by readers,
    /// so that no reader sees an entry half applied (apply does not use a sled transaction).
    visible: Arc<RwLock<()>>,
    /// The fences as applied (see [`Fence`]), so the node can refuse a fenced write before
    /// proposing it; apply decides with its own view.
    fences: Arc<RwLock<Arc<Vec<Fence>>>>,
}

impl GroupData {
    /// The index of the last entry applied to the data tree.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Holds off `apply` while alive: take it around every read of the data tree, so that a
    /// read sees each entry wholly or not at all.
    pub fn read_view(&self) -> RwLockReadGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere leaves nothing inconsistent behind it.
        self.visible.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A key's stored (version, value). Callers reading several keys that must agree hold a
    /// [`GroupData::read_view`] around all of them.
    pub fn get(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, sled::Error> {
        Ok(self.data.get(key)?.and_then(|raw| {
            keys::decode_value(&raw).map(|(version, value)| (version, value.to_vec()))
        }))
    }

    /// The fences as of the last applied entry.
    pub fn fences(&self) -> Arc<Vec<Fence>> {
        self.fences
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The first of `keys` a fence covers, as of the last applied entry.
    pub fn fenced<'k>(&self, mut keys: impl Iterator<Item = &'k [u8]>) -> Option<&'k [u8]> {
        let fences = self.fences();
        if fences.is_empty() {
            return None;
        }
        keys.find(|k| fences.iter().any(|f| f.covers(k)))
    }

    fn set_fences(&self, fences: Vec<Fence>) {
        *self.fences.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fences);
    }

    /// Notified whenever the stored cluster map changes.
    pub fn watch_map(&self) -> tokio::sync::watch::Receiver<u64> {
        self.map_changed.subscribe()
    }

    /// The cluster map stored by this (meta) group, as JSON.
    pub fn cluster_map(&self) -> Result<Option<sled::IVec>, sled::Error> {
        self.sm.get(keys::CLUSTER_MAP)
    }
}

/// One group's state machine.
pub struct StateMachine {
    group: GroupId,
    shared: GroupData,
    /// [`keys::snapshot_tree`].
    snapshots: sled::Tree,
    flusher: Flusher,
    snapshot_seq: u64,
    /// The request ids of the window and their results (see [`super::request_ids`]).
    remembered: RequestIds,
    /// Decisions of an `apply` call that a crash interrupted, by log index (see [`Decided`]).
    replay: HashMap<u64, Decided>,
    /// The fences as applied: apply's own copy, so that deciding a write takes no lock.
    fences: Arc<Vec<Fence>>,
    aging: AgingClock,
}

/// What an `apply` call decided for one entry. The decisions of a whole call are stored (one
/// sled insert) before any of its effects, and the applied marker after them all. Apply uses no
/// sled transaction (each costs sled two buffer writes), so a crash can leave some effects on
/// disk and the marker behind them; openraft then applies those entries again, and each takes
/// its decision from here rather than deciding again against half-written state (a
/// conditional delete that already happened would otherwise fail its own condition).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
struct Decided {
    log_id: LogId,
    response: Response,
    /// Per write of the entry (see [`writes_of`]): whether its ops took effect, rather than
    /// being answered from the request-id table.
    applied: Vec<bool>,
    /// The cluster map to store (meta group).
    map: Option<serde_bytes::ByteBuf>,
}

/// The in-progress view of one `apply` call: what its earlier decisions did, before any of it
/// is written.
#[derive(Default)]
struct Pending<'a> {
    /// Keys written by earlier decisions: their version, `None` where deleted.
    versions: HashMap<&'a [u8], Option<u64>>,
    /// Request ids applied by earlier decisions, with their results.
    fresh: Fresh,
    /// The cluster map as earlier decisions left it.
    map: Option<Vec<u8>>,
    /// The fences as earlier decisions left them.
    fences: Option<Vec<Fence>>,
}

/// Request ids applied by entries of one `apply` call, not yet in [`StateMachine::remembered`].
type Fresh = HashMap<Vec<u8>, Vec<OpResult>>;

/// Moves a snapshot stored by an earlier version from the `sm` tree to its own
/// ([`keys::snapshot_tree`]). Copied before it is removed, and sled recovers a prefix of its
/// log, so a crash in between leaves it in both places, and the next open finishes the move.
fn move_snapshot_out_of(sm: &sled::Tree, snapshots: &sled::Tree) -> Result<(), StorageError> {
    let werr = |e: sled::Error| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
    if let Some(old) = sm.get(keys::SNAPSHOT).map_err(werr)? {
        if snapshots.get(keys::SNAPSHOT).map_err(werr)?.is_none() {
            snapshots.insert(keys::SNAPSHOT, old).map_err(werr)?;
        }
        sm.remove(keys::SNAPSHOT).map_err(werr)?;
    }
    Ok(())
}

/// The fences as stored.
fn load_fences(sm: &sled::Tree) -> Result<Vec<Fence>, StorageError> {
    match sm
        .get(keys::FENCES)
        .map_err(|e| read_err(ErrorSubject::StateMachine, e))?
    {
        Some(raw) => {
            bincode::deserialize(&raw).map_err(|e| read_err(ErrorSubject::StateMachine, e))
        }
        None => Ok(Vec::new()),
    }
}

/// The request-id table as of the last checkpoint, if one was stored.
fn load_checkpoint(snapshots: &sled::Tree) -> Result<Option<Checkpoint>, StorageError> {
    let rerr = |e| read_err(ErrorSubject::StateMachine, e);
    match snapshots.get(keys::REQUEST_IDS).map_err(rerr)? {
        Some(raw) => bincode::deserialize(&raw)
            .map(Some)
            .map_err(|e| read_err(ErrorSubject::StateMachine, e)),
        None => Ok(None),
    }
}

/// The results of the writes the log cannot tell, by log index then request id.
type Exceptions = HashMap<u64, HashMap<Vec<u8>, Vec<OpResult>>>;

/// The dedup tree's records after log index `after`.
fn load_exceptions(dedup: &sled::Tree, after: u64) -> Result<Exceptions, StorageError> {
    let mut exceptions: Exceptions = HashMap::new();
    for item in dedup.scan_prefix(b"e") {
        let (key, raw) = item.map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
        let index = key
            .get(9..17)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| {
                let short = std::io::Error::other("request-id record with a short key");
                read_err(ErrorSubject::StateMachine, short)
            })?;
        if index <= after {
            continue;
        }
        let pairs: Vec<(serde_bytes::ByteBuf, Vec<OpResult>)> =
            bincode::deserialize(&raw).map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
        let at = exceptions.entry(index).or_default();
        for (id, results) in pairs {
            at.insert(id.into_vec(), results);
        }
    }
    Ok(exceptions)
}

/// Entries read at a time when rebuilding the request-id table from the log: as many as
/// openraft sends in one AppendEntries, so memory stays within what replication holds.
const REBUILD_CHUNK: u64 = 64;

impl StateMachine {
    /// Opens the group's state machine, rebuilding its request-id table from the last
    /// checkpoint and the entries of `log` after it.
    pub fn open(
        db: &sled::Db,
        group: GroupId,
        flusher: Flusher,
        log: &FileLog,
    ) -> Result<StateMachine, StorageError> {
        let open = |name: String| {
            db.open_tree(name)
                .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
        };
        let data = open(keys::data_tree(group))?;
        let sm = open(keys::sm_tree(group))?;
        let dedup = open(keys::dedup_tree(group))?;
        let snapshots = open(keys::snapshot_tree(group))?;
        move_snapshot_out_of(&sm, &snapshots)?;
        let mut me = StateMachine {
            group,
            snapshots,
            shared: GroupData {
                data,
                sm,
                dedup,
                applied: Arc::new(AtomicU64::new(0)),
                map_changed: Arc::new(tokio::sync::watch::channel(0).0),
                visible: Arc::default(),
                fences: Arc::default(),
            },
            flusher,
            snapshot_seq: 0,
            remembered: RequestIds::default(),
            replay: HashMap::new(),
            fences: Arc::default(),
            aging: AgingClock::default(),
        };
        // A crash in the middle of installing a snapshot leaves the marker: finish the job
        // from the stored snapshot before anyone reads the half-written data tree.
        if me
            .shared
            .sm
            .get(keys::INSTALLING)
            .map_err(|e| read_err(ErrorSubject::StateMachine, e))?
            .is_some()
        {
            if let Some(stored) = me.stored_snapshot()? {
                tracing::warn!(group, "resuming an interrupted snapshot install");
                me.install_body(&stored.data)?;
            }
        }
        let fences = load_fences(&me.shared.sm)?;
        me.fences = Arc::new(fences.clone());
        me.shared.set_fences(fences);
        let (applied, _) = me.read_applied()?;
        let applied = applied.map_or(0, |l| l.index);
        me.shared.applied.store(applied, Ordering::Release);
        me.rebuild_request_ids(log, applied)?;
        if let Some(raw) = me
            .shared
            .sm
            .get(keys::JOURNAL)
            .map_err(|e| read_err(ErrorSubject::StateMachine, e))?
        {
            let decided: Vec<Decided> =
                bincode::deserialize(&raw).map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
            me.replay = decided
                .into_iter()
                .filter(|d| d.log_id.index > applied)
                .map(|d| (d.log_id.index, d))
                .collect();
            if !me.replay.is_empty() {
                tracing::info!(
                    group,
                    entries = me.replay.len(),
                    "replaying the decisions of an interrupted apply"
                );
            }
        }
        Ok(me)
    }

    pub fn data(&self) -> GroupData {
        self.shared.clone()
    }

    /// Rebuilds the request-id table as `apply` left it at `applied`: the checkpoint, then
    /// every entry of the log after it, each write remembered as `decide_write` would have,
    /// with the dedup tree's records for the writes whose results the log cannot tell.
    fn rebuild_request_ids(&mut self, log: &FileLog, applied: u64) -> Result<(), StorageError> {
        let checkpoint = load_checkpoint(&self.snapshots)?.unwrap_or_default();
        let exceptions = load_exceptions(&self.shared.dedup, checkpoint.applied)?;
        self.remembered = RequestIds::from_vec(checkpoint.ids);
        self.aging = checkpoint.aging;
        let mut next = checkpoint.applied + 1;
        while next <= applied {
            let end = applied.min(next + REBUILD_CHUNK - 1) + 1;
            let entries = log.read_now(next, end)?;
            // Openraft purges the log only up to a snapshot, and the checkpoint is stored
            // before its snapshot: a gap means a bug or a damaged data dir. The ids of the gap
            // are lost (a retry of one may apply twice); the group still serves.
            let resumes = entries.first().map_or(end, |e| e.log_id.index);
            if resumes != next {
                tracing::error!(
                    group = self.group,
                    from = next,
                    to = resumes - 1,
                    "request ids of entries missing from the log are forgotten"
                );
            }
            if entries.is_empty() {
                break;
            }
            for e in &entries {
                self.remember_from_log(e, &exceptions);
            }
            next = entries.last().map_or(end, |e| e.log_id.index + 1);
        }
        tracing::debug!(
            group = self.group,
            ids = self.remembered.len(),
            "request-id table rebuilt"
        );
        Ok(())
    }

    /// Remembers the request ids `e` applied, as `apply` did.
    fn remember_from_log(&mut self, e: &Entry, exceptions: &Exceptions) {
        let Some((at_ms, _)) = request_ids(&e.payload) else {
            return;
        };
        let index = e.log_id.index;
        let age = self.aging.observe(e.log_id.leader_id.term, at_ms);
        let told = exceptions.get(&index);
        for (ops, request) in writes_of(&e.payload) {
            let Some(r) = request else { continue };
            if self.remembered.lookup(&r.id, age).is_some() {
                // Answered from the table, not applied.
                continue;
            }
            let outcome = match told.and_then(|t| t.get(&r.id)) {
                // Refused by a fence: not applied, so not remembered.
                Some(results) if is_fenced(ops.len(), results) => continue,
                Some(results) => Outcome::Results(results.clone()),
                None => Outcome::Puts {
                    index,
                    n: u32::try_from(ops.len()).unwrap_or(u32::MAX),
                },
            };
            self.remembered.remember(&r.id, age, outcome);
        }
    }

    fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let sm = &self.shared.sm;
        let get = |key: &[u8]| {
            sm.get(key)
                .map_err(|e| read_err(ErrorSubject::StateMachine, e))
        };
        let applied = match get(keys::APPLIED)? {
            Some(raw) => {
                bincode::deserialize(&raw).map_err(|e| read_err(ErrorSubject::StateMachine, e))?
            }
            None => None,
        };
        let membership = match get(keys::MEMBERSHIP)? {
            Some(raw) => {
                bincode::deserialize(&raw).map_err(|e| read_err(ErrorSubject::StateMachine, e))?
            }
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Forgets request ids that left the window by the aging clock `now`: at most `most`
    /// records and ids at a time. Forgetting is idempotent, and lookups check the window
    /// themselves, so what is left for later (or half done by a crash) does no harm. One
    /// remove at a time, not a batch (a sled batch costs two buffer writes).
    fn forget_request_ids(&mut self, now: u64, most: usize) -> Result<(), StorageError> {
        let werr = |e: sled::Error| sto_err(ErrorSubject::StateMachine, ErrorVerb::Write, e);
        self.remembered.forget_expired(now, most);
        let end = keys::dedup_entry_key(now.saturating_sub(DEDUP_WINDOW_MS), 0);
        let expired: Vec<sled::IVec> = self
            .shared
            .dedup
            .range(&b"e"[..]..&end[..])
            .keys()
            .take(most)
            .collect::<Result<_, _>>()
            .map_err(werr)?;
        for key in expired {
            self.shared.dedup.remove(key).map_err(werr)?;
        }
        Ok(())
    }

    /// Stores `checkpoint` (encoded) as the table to rebuild from at the next open.
    fn store_checkpoint(snapshots: &sled::Tree, checkpoint: &[u8]) -> Result<(), StorageError> {
        snapshots
            .insert(keys::REQUEST_IDS, checkpoint)
            .map(|_| ())
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let raw = self
            .snapshots
            .get(keys::SNAPSHOT)
            .map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
        raw.map(|r| bincode::deserialize(&r))
            .transpose()
            .map_err(|e| read_err(ErrorSubject::StateMachine, e))
    }

    /// Replaces the data tree and applied state with a snapshot's. Not atomic in sled, hence
    /// the `installing` marker, set before and cleared after, with the snapshot stored first.
    fn install_body(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let werr = |e: sled::Error| sto_err(ErrorSubject::StateMachine, ErrorVerb::Write, e);
        // Readers wait rather than see the data tree emptied and refilled.
        let visible = self.shared.visible.clone();
        let _writing = visible.write().unwrap_or_else(|p| p.into_inner());
        let body: SnapshotBody =
            bincode::deserialize(data).map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
        let checkpoint: Checkpoint = bincode::deserialize(&body.request_ids)
            .map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
        let sm = &self.shared.sm;
        sm.insert(keys::INSTALLING, &b"1"[..]).map_err(werr)?;
        self.shared.data.clear().map_err(werr)?;
        let mut batch = sled::Batch::default();
        for (k, v) in body.kvs {
            batch.insert(k.into_vec(), v.into_vec());
        }
        self.shared.data.apply_batch(batch).map_err(werr)?;
        // The snapshot's table is complete: the records of the state it replaces go, and the
        // table is stored as the checkpoint to rebuild from, before the applied marker moves.
        self.shared.dedup.clear().map_err(werr)?;
        Self::store_checkpoint(&self.snapshots, &body.request_ids)?;
        sm.insert(keys::APPLIED, ser(&body.last_applied)?)
            .map_err(werr)?;
        sm.insert(keys::MEMBERSHIP, ser(&body.membership)?)
            .map_err(werr)?;
        match body.cluster_map {
            Some(m) => sm.insert(keys::CLUSTER_MAP, m.into_vec()).map(|_| ()),
            None => sm.remove(keys::CLUSTER_MAP).map(|_| ()),
        }
        .map_err(werr)?;
        sm.insert(keys::FENCES, ser(&body.fences)?).map_err(werr)?;
        self.fences = Arc::new(body.fences.clone());
        self.shared.set_fences(body.fences);
        self.aging = checkpoint.aging;
        self.remembered = RequestIds::from_vec(checkpoint.ids);
        sm.remove(keys::JOURNAL).map_err(werr)?;
        self.replay.clear();
        sm.remove(keys::INSTALLING).map_err(werr)?;
        self.shared
            .applied
            .store(body.last_applied.map_or(0, |l| l.index), Ordering::Release);
        self.shared.map_changed.send_modify(|v| *v += 1);
        Ok(())
    }
}

/// Applies a map change to the stored map (JSON): the new (epoch, JSON), or why not.
fn change_map(
    current: Option<&[u8]>,
    change_json: &[u8],
    expected_epoch: u64,
) -> Result<(u64, Vec<u8>), MapChangeRefused> {
    let current: shardmap::ClusterMap = current
        .and_then(|raw| serde_json::from_slice(raw).ok())
        .ok_or(MapChangeRefused::NoMap)?;
    if expected_epoch != 0 && expected_epoch != current.epoch {
        return Err(MapChangeRefused::StaleEpoch {
            current: current.epoch,
        });
    }
    let change: shardmap::MapChange = serde_json::from_slice(change_json)
        .map_err(|e| MapChangeRefused::Invalid(format!("undecodable map change: {e}")))?;
    let next = current.apply(&change).map_err(|e| match e {
        shardmap::MapError::UnknownKeyspace(k) => MapChangeRefused::UnknownKeyspace(k),
        shardmap::MapError::KeyspaceExists(k) => MapChangeRefused::KeyspaceExists(k),
        other => MapChangeRefused::Invalid(other.to_string()),
    })?;
    // Refuse a map that routers could not compile, rather than store it.
    shardmap::CompiledMap::new(next.clone())
        .map_err(|e| MapChangeRefused::Invalid(e.to_string()))?;
    let json = serde_json::to_vec(&next).map_err(|e| MapChangeRefused::Invalid(e.to_string()))?;
    Ok((next.epoch, json))
}

/// The writes an entry carries, each with its request id: one for `Write` and `TrackedWrite`,
/// one per sub-write for `Writes`, none for anything else.
fn writes_of(payload: &EntryPayload<TypeConfig>) -> Vec<(&[Op], Option<&Dedup>)> {
    match payload {
        EntryPayload::Normal(
            Request::Write { ops, dedup } | Request::TrackedWrite { ops, dedup, .. },
        ) => vec![(ops.as_slice(), dedup.as_ref())],
        EntryPayload::Normal(Request::Writes { writes }) => writes
            .iter()
            .map(|w| (w.ops.as_slice(), w.dedup.as_ref()))
            .collect(),
        _ => Vec::new(),
    }
}

/// The results a write response holds, one list per write (the shape of [`writes_of`]).
fn write_results(response: &Response) -> Vec<&Vec<OpResult>> {
    match response {
        Response::Write(results) => vec![results],
        Response::Writes(all) => all.iter().collect(),
        _ => Vec::new(),
    }
}

/// The writes of an entry whose ops took effect under decision `d` (not answered from the
/// request-id table), each with its request id and its ops' results.
fn applied_writes<'e, 'd>(
    e: &'e Entry,
    d: &'d Decided,
) -> impl Iterator<Item = (&'e [Op], Option<&'e Dedup>, &'d Vec<OpResult>)> + use<'e, 'd> {
    writes_of(&e.payload)
        .into_iter()
        .zip(write_results(&d.response))
        .zip(&d.applied)
        .filter(|(_, applied)| **applied)
        .map(|(((ops, request), results), _)| (ops, request, results))
}

/// The (request id, results) pairs of entry `e` under decision `d` that rebuilding the table
/// from the log needs a record of: applied writes whose results do not follow from the entry,
/// and writes a fence refused (empty results). Writes answered from the table need none.
fn told_by_record<'e, 'd>(e: &'e Entry, d: &'d Decided) -> Vec<(&'e [u8], &'d [OpResult])> {
    writes_of(&e.payload)
        .into_iter()
        .zip(write_results(&d.response))
        .zip(&d.applied)
        .filter_map(|(((ops, request), results), applied)| {
            let r = request?;
            let needed = if *applied {
                !Outcome::follows_from_the_log(ops, e.log_id.index, results)
            } else {
                is_fenced(ops.len(), results)
            };
            needed.then_some((r.id.as_slice(), results.as_slice()))
        })
        .collect()
}

/// The request ids an entry carries, with the latest of their clocks: recorded once per entry
/// under one age key, so that they are forgotten together.
fn request_ids(payload: &EntryPayload<TypeConfig>) -> Option<(u64, Vec<&[u8]>)> {
    let dedups: Vec<&Dedup> = writes_of(payload)
        .into_iter()
        .filter_map(|(_, d)| d)
        .collect();
    let at = dedups.iter().map(|d| d.at_ms).max()?;
    Some((at, dedups.iter().map(|d| d.id.as_slice()).collect()))
}

impl StateMachine {
    /// A key's version as the call's earlier decisions left it.
    fn version_of(&self, pending: &Pending, key: &[u8]) -> Result<Option<u64>, StorageError> {
        if let Some(v) = pending.versions.get(key) {
            return Ok(*v);
        }
        let raw = self
            .shared
            .data
            .get(key)
            .map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
        Ok(raw.as_deref().and_then(keys::decode_value).map(|(v, _)| v))
    }

    /// Decides one write: its earlier results where its request id was applied before,
    /// otherwise each op's outcome against the current versions.
    fn decide_write<'a>(
        &self,
        pending: &mut Pending<'a>,
        ops: &'a [Op],
        request: Option<&Dedup>,
        index: u64,
        age: Option<u64>,
    ) -> Result<(Vec<OpResult>, bool), StorageError> {
        if let Some(r) = request {
            if let Some(first) = pending.fresh.get(&r.id) {
                return Ok((first.clone(), false));
            }
            if let Some(first) = age.and_then(|now| self.remembered.lookup(&r.id, now)) {
                return Ok((first, false));
            }
        }
        let fences = match &pending.fences {
            Some(f) => f.as_slice(),
            None => &self.fences,
        };
        if !fences.is_empty()
            && ops
                .iter()
                .any(|op| fences.iter().any(|f| f.covers(op.key())))
        {
            return Ok((fenced_results(), false));
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            if let Op::Put {
                key,
                expected_version: None,
                ..
            } = op
            {
                // Nothing reports what an unconditional put replaced (a put's answer carries
                // only its new version), so it costs no read: existed and previous version
                // stay false and 0, as for an eventual write.
                pending.versions.insert(key.as_slice(), Some(index));
                results.push(OpResult {
                    version: index,
                    existed: false,
                    condition_failed: false,
                    previous_version: 0,
                });
                continue;
            }
            let current = self.version_of(pending, op.key())?;
            let previous_version = current.unwrap_or(0);
            let expected = match op {
                Op::Put {
                    expected_version, ..
                }
                | Op::Delete {
                    expected_version, ..
                } => *expected_version,
            };
            if expected.is_some_and(|e| e != previous_version) {
                results.push(OpResult {
                    version: 0,
                    existed: current.is_some(),
                    condition_failed: true,
                    previous_version,
                });
                continue;
            }
            let after = match op {
                Op::Put { .. } => Some(index),
                Op::Delete { .. } => None,
            };
            pending.versions.insert(op.key(), after);
            results.push(OpResult {
                version: index,
                existed: current.is_some(),
                condition_failed: false,
                previous_version,
            });
        }
        if let Some(r) = request {
            pending.fresh.insert(r.id.clone(), results.clone());
        }
        Ok((results, true))
    }

    /// Decides what an entry does, without writing anything.
    fn decide<'a>(
        &self,
        pending: &mut Pending<'a>,
        e: &'a Entry,
        age: Option<u64>,
    ) -> Result<Decided, StorageError> {
        let index = e.log_id.index;
        let mut decided = Decided {
            log_id: e.log_id,
            response: Response::None,
            applied: Vec::new(),
            map: None,
        };
        let current_map = |pending: &Pending| -> Result<Option<Vec<u8>>, StorageError> {
            match &pending.map {
                Some(m) => Ok(Some(m.clone())),
                None => Ok(self
                    .shared
                    .cluster_map()
                    .map_err(|e| read_err(ErrorSubject::StateMachine, e))?
                    .map(|m| m.to_vec())),
            }
        };
        match &e.payload {
            EntryPayload::Blank | EntryPayload::Membership(_) => {}
            EntryPayload::Normal(Request::Writes { writes }) => {
                let mut all = Vec::with_capacity(writes.len());
                for w in writes {
                    let (results, applied) =
                        self.decide_write(pending, &w.ops, w.dedup.as_ref(), index, age)?;
                    all.push(results);
                    decided.applied.push(applied);
                }
                decided.response = Response::Writes(all);
            }
            EntryPayload::Normal(
                Request::Write { ops, dedup } | Request::TrackedWrite { ops, dedup, .. },
            ) => {
                let (results, applied) =
                    self.decide_write(pending, ops, dedup.as_ref(), index, age)?;
                decided.applied.push(applied);
                decided.response = Response::Write(results);
            }
            EntryPayload::Normal(Request::ChangeMap {
                change_json,
                expected_epoch,
            }) => {
                let current = current_map(pending)?;
                let outcome = change_map(current.as_deref(), change_json, *expected_epoch);
                if let Ok((_, json)) = &outcome {
                    decided.map = Some(serde_bytes::ByteBuf::from(json.clone()));
                }
                decided.response = Response::MapChanged(outcome.map(|(epoch, _)| epoch));
            }
            EntryPayload::Normal(Request::Fence(change)) => {
                let current = match &pending.fences {
                    Some(f) => f.clone(),
                    None => self.fences.to_vec(),
                };
                let outcome = match change.apply(&current) {
                    Some(fences) => {
                        let holds_keys = match change {
                            FenceChange::Raise(f) => self.holds_keys(pending, &f.start, &f.end)?,
                            FenceChange::Lift { .. } => false,
                        };
                        pending.fences = Some(fences.clone());
                        FenceOutcome {
                            fences,
                            holds_keys,
                            full: false,
                        }
                    }
                    None => FenceOutcome {
                        fences: current,
                        holds_keys: false,
                        full: true,
                    },
                };
                decided.response = Response::Fenced(outcome);
            }
            EntryPayload::Normal(Request::SetClusterMap { epoch, map_json }) => {
                let current = current_map(pending)?
                    .and_then(|raw| serde_json::from_slice::<shardmap::ClusterMap>(&raw).ok())
                    .map_or(0, |m| m.epoch);
                let stored = *epoch > current;
                if stored {
                    decided.map = Some(serde_bytes::ByteBuf::from(map_json.clone()));
                }
                decided.response = Response::ClusterMap { stored };
            }
        }
        Ok(decided)
    }

    /// Takes a replayed decision into the call's view, as deciding it would have.
    fn note_replayed<'a>(pending: &mut Pending<'a>, e: &'a Entry, d: &Decided) {
        let index = e.log_id.index;
        for (ops, request, results) in applied_writes(e, d) {
            if let Some(r) = request {
                pending.fresh.insert(r.id.clone(), results.clone());
            }
            for (op, result) in ops.iter().zip(results) {
                if !result.condition_failed {
                    let after = matches!(op, Op::Put { .. }).then_some(index);
                    pending.versions.insert(op.key(), after);
                }
            }
        }
        if let Some(m) = &d.map {
            pending.map = Some(m.to_vec());
        }
        if let Response::Fenced(o) = &d.response {
            pending.fences = Some(o.fences.clone());
        }
    }

    /// Whether `[start, end)` holds a key as the call's earlier decisions left the data.
    fn holds_keys(
        &self,
        pending: &Pending,
        start: &[u8],
        end: &[u8],
    ) -> Result<bool, StorageError> {
        let inside = |k: &[u8]| k >= start && (end.is_empty() || k < end);
        if pending
            .versions
            .iter()
            .any(|(k, v)| v.is_some() && inside(k))
        {
            return Ok(true);
        }
        let range = if end.is_empty() {
            self.shared.data.range(start..)
        } else {
            self.shared.data.range(start..end)
        };
        for item in range {
            let (k, _) = item.map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
            // Deleted by an earlier decision of this call: look further.
            if !matches!(pending.versions.get(&k[..]), Some(None)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes what an entry's decision does: data, its request-id record, the cluster map.
    fn write_effects(&self, e: &Entry, d: &Decided, age: Option<u64>) -> Result<(), StorageError> {
        let werr = |e: sled::Error| sto_err(ErrorSubject::Apply(d.log_id), ErrorVerb::Write, e);
        let index = e.log_id.index;
        for (ops, _, results) in applied_writes(e, d) {
            for (op, result) in ops.iter().zip(results) {
                if result.condition_failed {
                    continue;
                }
                match op {
                    Op::Put { key, value, .. } => self
                        .shared
                        .data
                        .insert(key.as_slice(), keys::encode_value(index, value))
                        .map(|_| ()),
                    Op::Delete { key, .. } => self.shared.data.remove(key.as_slice()).map(|_| ()),
                }
                .map_err(werr)?;
            }
        }
        // The request ids whose results the log cannot tell, in one record for the entry;
        // most entries (unconditional puts) need none (see `rebuild_request_ids`).
        if let Some(at) = age {
            let told = told_by_record(e, d);
            if !told.is_empty() {
                self.shared
                    .dedup
                    .insert(&keys::dedup_entry_key(at, index)[..], ser(&told)?)
                    .map_err(werr)?;
            }
        }
        if let Some(m) = &d.map {
            self.shared
                .sm
                .insert(keys::CLUSTER_MAP, m.as_slice())
                .map_err(werr)?;
        }
        if let Response::Fenced(o) = &d.response {
            if !o.full {
                self.shared
                    .sm
                    .insert(keys::FENCES, ser(&o.fences)?)
                    .map_err(werr)?;
            }
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let werr = |e: sled::Error| sto_err(ErrorSubject::Apply(last), ErrorVerb::Write, e);
        // Every entry with request ids moves the aging clock, batch entries included: a group
        // that only sees batches must forget too, or its table grows without end.
        let mut aging = self.aging;
        let ages: Vec<Option<u64>> = entries
            .iter()
            .map(|e| {
                request_ids(&e.payload).map(|(at, _)| aging.observe(e.log_id.leader_id.term, at))
            })
            .collect();
        // 1. Decide every entry, writing nothing.
        let mut pending = Pending::default();
        let mut decided = Vec::with_capacity(entries.len());
        for (e, age) in entries.iter().zip(&ages) {
            let replayed = self
                .replay
                .remove(&e.log_id.index)
                .filter(|d| d.log_id == e.log_id);
            let d = match replayed {
                Some(d) => {
                    Self::note_replayed(&mut pending, e, &d);
                    d
                }
                None => self.decide(&mut pending, e, *age)?,
            };
            decided.push(d);
        }
        let mut membership_raw = None;
        for e in &entries {
            if let EntryPayload::Membership(m) = &e.payload {
                membership_raw = Some(ser(&StoredMembership::new(Some(e.log_id), m.clone()))?);
            }
        }
        let has_effects = decided.iter().any(|d| {
            d.map.is_some()
                || d.applied.iter().any(|a| *a)
                || matches!(d.response, Response::Fenced(_))
        });
        {
            let _writing = self
                .shared
                .visible
                .write()
                .unwrap_or_else(|p| p.into_inner());
            // 2. The decisions, before any effect; 3. the effects; 4. the marker. sled recovers
            // a prefix of its log, so after a crash the marker is never ahead of the effects,
            // and any effect on disk has its decision on disk.
            if has_effects || !self.replay.is_empty() {
                // Decisions still waiting to be replayed go along: this record replaces the
                // one they came from, and a second crash must not lose them.
                let mut journal: Vec<&Decided> = decided.iter().collect();
                let mut waiting: Vec<&Decided> = self.replay.values().collect();
                waiting.sort_by_key(|d| d.log_id.index);
                journal.extend(waiting);
                self.shared
                    .sm
                    .insert(keys::JOURNAL, ser(&journal)?)
                    .map_err(werr)?;
            }
            for ((e, d), age) in entries.iter().zip(&decided).zip(&ages) {
                self.write_effects(e, d, *age)?;
            }
            if let Some(m) = &membership_raw {
                self.shared
                    .sm
                    .insert(keys::MEMBERSHIP, m.as_slice())
                    .map_err(werr)?;
            }
            self.shared
                .sm
                .insert(keys::APPLIED, ser(&Some(last))?)
                .map_err(werr)?;
            self.shared.applied.store(last.index, Ordering::Release);
        }
        for ((e, d), age) in entries.iter().zip(&decided).zip(&ages) {
            let Some(age) = *age else { continue };
            for (ops, request, results) in applied_writes(e, d) {
                if let Some(r) = request {
                    let outcome = Outcome::of(ops, e.log_id.index, results);
                    self.remembered.remember(&r.id, age, outcome);
                }
            }
        }
        if let Some(fences) = pending.fences {
            self.fences = Arc::new(fences.clone());
            self.shared.set_fences(fences);
        }
        let moved = ages.iter().any(Option::is_some);
        self.aging = aging;
        if moved {
            let most = FORGET_PER_APPLY.max(2 * entries.len());
            self.forget_request_ids(aging.now, most)?;
        }
        if decided.iter().any(|d| d.map.is_some()) {
            self.shared.map_changed.send_modify(|v| *v += 1);
        }
        Ok(decided.into_iter().map(|d| d.response).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Openraft calls this between applies and then builds in the background: copy the state
        // now so the snapshot is exactly the state at `last_applied`. This costs memory in
        // proportion to the group's data; a streaming snapshot of a sled checkpoint would not.
        self.snapshot_seq += 1;
        let copy = (|| -> Result<SnapshotBody, StorageError> {
            let (last_applied, membership) = self.read_applied()?;
            let cluster_map = self
                .shared
                .cluster_map()
                .map_err(|e| read_err(ErrorSubject::StateMachine, e))?
                .map(|v| serde_bytes::ByteBuf::from(v.to_vec()));
            let mut kvs = Vec::new();
            for item in self.shared.data.iter() {
                let (k, v) = item.map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
                kvs.push((
                    serde_bytes::ByteBuf::from(k.to_vec()),
                    serde_bytes::ByteBuf::from(v.to_vec()),
                ));
            }
            let request_ids = self
                .remembered
                .checkpoint_bytes(last_applied.map_or(0, |l| l.index), self.aging)
                .map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
            Ok(SnapshotBody {
                request_ids: serde_bytes::ByteBuf::from(request_ids),
                last_applied,
                membership,
                cluster_map,
                kvs,
                fences: self.fences.to_vec(),
            })
        })();
        SnapshotBuilder {
            group: self.group,
            body: copy,
            snapshots: self.snapshots.clone(),
            flusher: self.flusher.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.snapshots
            .insert(keys::SNAPSHOT, ser(&stored)?)
            .map_err(|e| {
                sto_err(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                    e,
                )
            })?;
        self.install_body(&stored.data)?;
        self.flusher.wait_durable().await.map_err(|e| {
            sto_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        })?;
        tracing::info!(group = self.group, snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.stored_snapshot()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Serializes a snapshot copied by [`StateMachine::get_snapshot_builder`] and stores it.
pub struct SnapshotBuilder {
    group: GroupId,
    body: Result<SnapshotBody, StorageError>,
    snapshots: sled::Tree,
    flusher: Flusher,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let body = std::mem::replace(
            &mut self.body,
            Err(read_err(
                ErrorSubject::Snapshot(None),
                std::io::Error::other("snapshot builder used twice"),
            )),
        )?;
        let data = ser(&body)?;
        let snapshot_id = match body.last_applied {
            Some(l) => format!(
                "{}-{}-{}-{}",
                self.group, l.leader_id.term, l.index, self.seq
            ),
            None => format!("{}-0-0-{}", self.group, self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: body.last_applied,
            last_membership: body.membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };
        let werr = |e: &dyn std::fmt::Display| {
            sto_err(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                std::io::Error::other(e.to_string()),
            )
        };
        // The checkpoint first: sled recovers a prefix of its writes, so a stored snapshot
        // always has a checkpoint at least as new, and openraft purges the log only up to the
        // snapshot, so the log still holds every entry after the checkpoint.
        StateMachine::store_checkpoint(&self.snapshots, &body.request_ids)?;
        self.snapshots
            .insert(keys::SNAPSHOT, ser(&stored)?)
            .map_err(|e| werr(&e))?;
        self.flusher.wait_durable().await.map_err(|e| werr(&e))?;
        tracing::info!(group = self.group, snapshot = %stored.meta.snapshot_id, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

/// The state machine's persisted-format decoders, for the fuzz targets in `tests/fuzz` (not an
/// API): each reads bytes with the type and the bincode call that opening a group or
/// installing a snapshot uses, and answers the value encoded again, so that a target can check
/// that decoding never panics and that decoding and encoding agree.
#[doc(hidden)]
pub mod fuzzing {
    use serde::de::DeserializeOwned;

    use super::*;

    /// A record of the `sm`, `dedup` and `snap` trees (see [`crate::keys`]), or a snapshot.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Record {
        /// `journal`: the decisions of the latest `apply` call.
        Journal,
        /// `applied`: the last applied log id.
        Applied,
        /// `membership`.
        Membership,
        /// `fences`.
        Fences,
        /// A `dedup` tree record: an entry's (id, results) pairs.
        Exceptions,
        /// `request_ids`: the request-id checkpoint, rebuilt into the table as opening a group
        /// does and encoded from the table again as the next snapshot does.
        Checkpoint,
        /// `snapshot`: a stored snapshot, its meta and body bytes.
        StoredSnapshot,
        /// A snapshot body as installed (what a leader sends), with the checkpoint inside it
        /// decoded and rebuilt as installing does, and every stored value split.
        SnapshotBody,
    }

    pub const RECORDS: [Record; 8] = [
        Record::Journal,
        Record::Applied,
        Record::Membership,
        Record::Fences,
        Record::Exceptions,
        Record::Checkpoint,
        Record::StoredSnapshot,
        Record::SnapshotBody,
    ];

    fn again<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> bincode::Result<Vec<u8>> {
        bincode::serialize(&bincode::deserialize::<T>(bytes)?)
    }

    /// Decodes `bytes` as `record`, and answers the decoded value encoded again.
    pub fn decode(record: Record, bytes: &[u8]) -> bincode::Result<Vec<u8>> {
        match record {
            Record::Journal => again::<Vec<Decided>>(bytes),
            Record::Applied => again::<Option<LogId>>(bytes),
            Record::Membership => again::<StoredMembership>(bytes),
            Record::Fences => again::<Vec<Fence>>(bytes),
            Record::Exceptions => again::<Vec<(serde_bytes::ByteBuf, Vec<OpResult>)>>(bytes),
            Record::Checkpoint => {
                let checkpoint: Checkpoint = bincode::deserialize(bytes)?;
                RequestIds::from_vec(checkpoint.ids)
                    .checkpoint_bytes(checkpoint.applied, checkpoint.aging)
            }
            Record::StoredSnapshot => again::<StoredSnapshot>(bytes),
            Record::SnapshotBody => {
                let body: SnapshotBody = bincode::deserialize(bytes)?;
                let checkpoint: Checkpoint = bincode::deserialize(&body.request_ids)?;
                RequestIds::from_vec(checkpoint.ids);
                for (_, value) in &body.kvs {
                    // Readers split each value; a short one is an error there, never a panic.
                    let _ = keys::decode_value(value);
                }
                bincode::serialize(&body)
            }
        }
    }

    /// Applies a map change (JSON, as a `ChangeMap` entry carries it) to the stored map (JSON),
    /// as `apply` does on every replica of the meta group.
    pub fn change_map(
        current: Option<&[u8]>,
        change_json: &[u8],
        expected_epoch: u64,
    ) -> Result<(u64, Vec<u8>), MapChangeRefused> {
        super::change_map(current, change_json, expected_epoch)
    }
}

#[cfg(test)]
mod tests {
    //! Golden vectors of what the state machine stores in sled: the apply journal, the applied
    //! marker and membership, the request-id records and the snapshot. If one fails you changed
    //! a persisted format: existing data dirs would be misread (and snapshots sent between
    //! nodes of different builds too).

    use std::collections::BTreeMap;

    use openraft::storage::RaftStateMachine;
    use openraft::{BasicNode, CommittedLeaderId, Membership, RaftSnapshotBuilder};
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::storage::request_ids::Remembered;
    use crate::types::golden::{assert_bincode, hex, unhex, CHANGED};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn membership() -> StoredMembership {
        StoredMembership::new(
            Some(log_id(1, 0)),
            Membership::new(
                vec![[1].into()],
                BTreeMap::from([(1, BasicNode::new("a:1"))]),
            ),
        )
    }

    fn result(version: u64) -> OpResult {
        OpResult {
            version,
            existed: false,
            condition_failed: false,
            previous_version: 0,
        }
    }

    // LogId: term u64, leader node u64, index u64.
    const LOG_ID_1_1: &str = "0100000000000000 0100000000000000 0100000000000000";
    // StoredMembership = log_id Option<LogId>, then Membership = configs (list of voter sets)
    // and nodes (id to BasicNode { addr }).
    const MEMBERSHIP: &str = "01 0100000000000000 0100000000000000 0000000000000000
                              0100000000000000 0100000000000000 0100000000000000
                              0100000000000000 0100000000000000 0300000000000000 613a31";
    // OpResult = version u64, existed bool, condition_failed bool, previous_version u64.
    const RESULT_1: &str = "0100000000000000 00 00 0000000000000000";

    /// The journal record of applying `put(k = v)` at (term 1, index 1) with request id `r1`:
    /// a list of `Decided` = log_id, response, applied (list of bool), map (option of bytes).
    fn journal_of_one_put() -> String {
        format!(
            "0100000000000000
             {LOG_ID_1_1} 01000000 0100000000000000 {RESULT_1} 0100000000000000 01 00"
        )
    }

    #[test]
    fn golden_journal() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        let decided = vec![
            Decided {
                log_id: log_id(1, 1),
                response: Response::Write(vec![result(1)]),
                applied: vec![true],
                map: None,
            },
            Decided {
                log_id: log_id(1, 2),
                response: Response::ClusterMap { stored: true },
                applied: Vec::new(),
                map: Some(ByteBuf::from(b"{}".to_vec())),
            },
        ];
        assert_bincode(
            &decided,
            &format!(
                "0200000000000000
                 {LOG_ID_1_1} 01000000 0100000000000000 {RESULT_1} 0100000000000000 01 00
                 0100000000000000 0100000000000000 0200000000000000 02000000 01
                 0000000000000000 01 0200000000000000 7b7d"
            ),
        );
    }

    #[test]
    fn golden_applied_marker_and_membership() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(&Some(log_id(1, 1)), &format!("01 {LOG_ID_1_1}"));
        assert_bincode(&None::<LogId>, "00");
        assert_bincode(&membership(), MEMBERSHIP);
    }

    const RESULT_2: &str = "0200000000000000 00 00 0000000000000000";

    /// The `e` record of request id `r2` answered with `RESULT_2`: the entry's (id, results)
    /// pairs.
    fn request_id_record() -> String {
        format!("0100000000000000 0200000000000000 7232 0100000000000000 {RESULT_2}")
    }

    fn aging() -> AgingClock {
        AgingClock {
            term: 1,
            term_start_ms: 1000,
            clock_at_term_start: 1000,
            now: 1000,
        }
    }

    /// The table after a plain put with id `r1` at index 1 and a conditional one with `r2`.
    fn checkpoint() -> Checkpoint {
        Checkpoint {
            applied: 2,
            aging: aging(),
            ids: vec![
                Remembered {
                    id: b"r1".to_vec(),
                    at: 1000,
                    outcome: Outcome::Puts { index: 1, n: 1 },
                },
                Remembered {
                    id: b"r2".to_vec(),
                    at: 1000,
                    outcome: Outcome::Results(vec![result(2)]),
                },
            ],
        }
    }

    /// `checkpoint()` encoded: applied, the aging clock (term, term_start_ms,
    /// clock_at_term_start, now), then the ids, each its bytes, its clock and its outcome (a
    /// u32 variant: 0 `Puts` with index u64 and n u32, 1 `Results` with the list).
    const CHECKPOINT: &str = "0200000000000000
        0100000000000000 e803000000000000 e803000000000000 e803000000000000
        0200000000000000
        0200000000000000 7231 e803000000000000 00000000 0100000000000000 01000000
        0200000000000000 7232 e803000000000000 01000000 0100000000000000
        0200000000000000 00 00 0000000000000000";

    #[test]
    fn golden_request_id_records() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &vec![(ByteBuf::from(b"r2".to_vec()), vec![result(2)])],
            &request_id_record(),
        );
        assert_bincode(&checkpoint(), CHECKPOINT);
    }

    /// An input on which the fuzz target `state_machine_record` (tests/fuzz) failed its round
    /// trip: a checkpoint listing id `r1` at clocks 3, 5 and 3, which encoded again declared
    /// one id and listed two. Now the older record is ignored and the checkpoint round trips.
    #[test]
    fn a_checkpoint_whose_clock_goes_back_round_trips() {
        let one =
            |at: &str| format!("0200000000000000 7231 {at} 00000000 0100000000000000 01000000");
        let t3 = "0300000000000000";
        let input = unhex(&format!(
            "0200000000000000
             0100000000000000 e803000000000000 e803000000000000 e803000000000000
             0300000000000000 {} {} {}",
            one(t3),
            one("0500000000000000"),
            one(t3)
        ));
        let once = fuzzing::decode(fuzzing::Record::Checkpoint, &input).expect("decodes");
        let twice = fuzzing::decode(fuzzing::Record::Checkpoint, &once).expect("decodes again");
        assert_eq!(hex(&twice), hex(&once));
        let checkpoint: Checkpoint = bincode::deserialize(&once).unwrap();
        assert_eq!(checkpoint.ids.len(), 1);
        assert_eq!(checkpoint.ids[0].at, 5);
    }

    fn snapshot_body() -> SnapshotBody {
        SnapshotBody {
            last_applied: Some(log_id(1, 1)),
            membership: membership(),
            cluster_map: Some(ByteBuf::from(b"{}".to_vec())),
            kvs: vec![(
                ByteBuf::from(b"k".to_vec()),
                ByteBuf::from(keys::encode_value(1, b"v")),
            )],
            fences: vec![Fence {
                start: b"a".to_vec(),
                end: Vec::new(),
                epoch: 2,
                tag: 3,
            }],
            request_ids: ByteBuf::from(unhex(CHECKPOINT)),
        }
    }

    /// `snapshot_body()` encoded: last_applied, membership, cluster_map (option of bytes), kvs
    /// (a list of (bytes, bytes)); a stored value is its version (u64 big-endian) then its
    /// bytes; then fences (start, end, epoch, tag); then the request-id checkpoint, encoded,
    /// as bytes.
    fn snapshot_body_hex() -> String {
        format!(
            "01 {LOG_ID_1_1}
             {MEMBERSHIP}
             01 0200000000000000 7b7d
             0100000000000000 0100000000000000 6b 0900000000000000 0000000000000001 76
             0100000000000000 0100000000000000 61 0000000000000000
             0200000000000000 0300000000000000
             {:016x} {CHECKPOINT}",
            (unhex(CHECKPOINT).len() as u64).swap_bytes()
        )
    }

    #[test]
    fn golden_snapshot_body() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(&snapshot_body(), &snapshot_body_hex());
    }

    #[test]
    fn golden_stored_snapshot() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(log_id(1, 1)),
                last_membership: membership(),
                snapshot_id: "7-1-1-1".into(),
            },
            data: b"body".to_vec(),
        };
        // meta = last_log_id, last_membership, snapshot_id (string); then data (bytes).
        assert_bincode(
            &stored,
            &format!(
                "01 {LOG_ID_1_1} {MEMBERSHIP} 0700000000000000 372d312d312d31
                 0400000000000000 626f6479"
            ),
        );
    }

    /// Group 7's state machine over a log in `dir`.
    fn open(dir: &tempfile::TempDir, db: &sled::Db) -> StateMachine {
        let flusher = Flusher::start(db.clone()).expect("flusher");
        let log = FileLog::open(
            db,
            &dir.path().join("log"),
            7,
            flusher.clone(),
            super::super::DurableAcks::new(1),
        )
        .expect("log");
        StateMachine::open(db, 7, flusher, &log).expect("opens")
    }

    /// What `apply` and the snapshot builder write is the golden bytes, under the keys that
    /// `keys` names: the vectors above are what the node really stores.
    #[tokio::test]
    async fn golden_records_as_the_state_machine_writes_them() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path().join("db")).expect("sled");
        let mut sm = open(&dir, &db);
        let put = |index, key: &[u8], expected_version, id: &[u8]| Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(Request::Write {
                ops: vec![Op::Put {
                    key: key.to_vec(),
                    value: b"v".to_vec(),
                    expected_version,
                }],
                dedup: Some(Dedup {
                    id: id.to_vec(),
                    at_ms: 1000,
                }),
            }),
        };
        sm.apply([put(1, b"k", None, b"r1")])
            .await
            .expect("applies");
        let tree = |name: String| db.open_tree(name).expect("tree");
        let raw = |t: &sled::Tree, key: &[u8]| hex(&t.get(key).expect("reads").expect("stored"));
        let sm_tree = tree(keys::sm_tree(7));
        assert_eq!(
            raw(&sm_tree, keys::JOURNAL),
            hex(&unhex(&journal_of_one_put())),
            "journal: {CHANGED}"
        );
        assert_eq!(
            raw(&sm_tree, keys::APPLIED),
            hex(&unhex(&format!("01 {LOG_ID_1_1}"))),
            "applied marker: {CHANGED}"
        );
        let dedup = tree(keys::dedup_tree(7));
        assert!(dedup.is_empty(), "a plain put needs no request-id record");
        sm.apply([put(2, b"c", Some(0), b"r2")])
            .await
            .expect("applies");
        assert_eq!(
            raw(&dedup, &keys::dedup_entry_key(1000, 2)),
            hex(&unhex(&request_id_record())),
            "request-id record: {CHANGED}"
        );

        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("builds");
        let body: SnapshotBody =
            bincode::deserialize(&snapshot.snapshot.into_inner()).expect("the snapshot decodes");
        let expected = SnapshotBody {
            last_applied: Some(log_id(1, 2)),
            membership: StoredMembership::default(),
            cluster_map: None,
            kvs: vec![
                (
                    ByteBuf::from(b"c".to_vec()),
                    ByteBuf::from(keys::encode_value(2, b"v")),
                ),
                (
                    ByteBuf::from(b"k".to_vec()),
                    ByteBuf::from(keys::encode_value(1, b"v")),
                ),
            ],
            fences: Vec::new(),
            request_ids: ByteBuf::from(unhex(CHECKPOINT)),
        };
        assert_eq!(body, expected, "snapshot body: {CHANGED}");
        assert_eq!(
            raw(&tree(keys::snapshot_tree(7)), keys::REQUEST_IDS),
            hex(&unhex(CHECKPOINT)),
            "request-id checkpoint: {CHANGED}"
        );
    }

    /// A snapshot stored by an earlier build, caught half installed, is finished from the
    /// golden bytes at the next open: its keys are readable and its request ids answered.
    #[tokio::test]
    async fn golden_snapshot_installs_from_its_bytes() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path().join("db")).expect("sled");
        let body = unhex(&snapshot_body_hex());
        let stored = format!(
            "01 {LOG_ID_1_1} {MEMBERSHIP} 0700000000000000 372d312d312d31
             {:016x} {}",
            (body.len() as u64).swap_bytes(),
            hex(&body)
        );
        let snapshots = db.open_tree(keys::snapshot_tree(7)).expect("tree");
        snapshots
            .insert(keys::SNAPSHOT, unhex(&stored))
            .expect("insert");
        let sm_tree = db.open_tree(keys::sm_tree(7)).expect("tree");
        sm_tree.insert(keys::INSTALLING, &b"1"[..]).expect("insert");
        let mut sm = open(&dir, &db);
        let data = sm.data();
        assert_eq!(
            data.get(b"k").expect("reads"),
            Some((1, b"v".to_vec())),
            "{CHANGED}"
        );
        assert_eq!(data.applied_index(), 1, "{CHANGED}");
        assert_eq!(
            data.cluster_map().expect("reads").as_deref(),
            Some(&b"{}"[..]),
            "{CHANGED}"
        );
        // A retry of request r1 gets its first answer back instead of applying again.
        let retry = Entry {
            log_id: log_id(1, 2),
            payload: EntryPayload::Normal(Request::Write {
                ops: vec![Op::Delete {
                    key: b"k".to_vec(),
                    expected_version: None,
                }],
                dedup: Some(Dedup {
                    id: b"r1".to_vec(),
                    at_ms: 1001,
                }),
            }),
        };
        let answers = sm.apply([retry]).await.expect("applies");
        assert_eq!(answers, vec![Response::Write(vec![result(1)])], "{CHANGED}");
        assert_eq!(
            data.get(b"k").expect("reads"),
            Some((1, b"v".to_vec())),
            "{CHANGED}"
        );
    }
}
