//! A group's state machine on sled: the user data tree and its applied state, implementing
//! openraft's `RaftStateMachine`, with snapshots built from and installed into the data tree.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::{read_err, ser, sto_err, Flusher};
use crate::keys;
use crate::types::{
    Dedup, Entry, GroupId, LogId, MapChangeRefused, Op, OpResult, Request, Response, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig, DEDUP_WINDOW_MS,
};

/// What a snapshot holds: the applied state and every key with its stored value.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    cluster_map: Option<serde_bytes::ByteBuf>,
    kvs: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    /// The request ids still remembered, so that a replica restored from a snapshot also
    /// answers retries instead of applying them twice.
    dedup: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}

/// A snapshot as kept on disk, so it survives restarts and can be sent to followers.
#[derive(Serialize, Deserialize)]
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
}

impl GroupData {
    /// The index of the last entry applied to the data tree.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// A key's stored (version, value).
    pub fn get(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, sled::Error> {
        Ok(self.data.get(key)?.and_then(|raw| {
            keys::decode_value(&raw).map(|(version, value)| (version, value.to_vec()))
        }))
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
    flusher: Flusher,
    snapshot_seq: u64,
    /// The request ids of the window and their results: the dedup tree's content, in memory
    /// so that applying a write costs no sled lookup or insert per id (see [`keys::dedup_tree`]).
    remembered: HashMap<Vec<u8>, Vec<OpResult>>,
}

/// Request ids applied by entries of one `apply` call, not yet in [`StateMachine::remembered`].
type Fresh = HashMap<Vec<u8>, Vec<OpResult>>;

/// The request-id table as stored: every entry record, and the legacy per-id records.
fn load_remembered(dedup: &sled::Tree) -> Result<HashMap<Vec<u8>, Vec<OpResult>>, StorageError> {
    let rerr = |e: sled::Error| read_err(ErrorSubject::StateMachine, e);
    let mut remembered = HashMap::new();
    for item in dedup.scan_prefix(b"e") {
        let (_, raw) = item.map_err(rerr)?;
        let pairs: Vec<(serde_bytes::ByteBuf, Vec<OpResult>)> =
            bincode::deserialize(&raw).map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
        for (id, results) in pairs {
            remembered.insert(id.into_vec(), results);
        }
    }
    for item in dedup.scan_prefix(b"r") {
        let (key, raw) = item.map_err(rerr)?;
        let (_, results): (u64, Vec<OpResult>) =
            bincode::deserialize(&raw).map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
        remembered.insert(key[1..].to_vec(), results);
    }
    Ok(remembered)
}

impl StateMachine {
    pub fn open(
        db: &sled::Db,
        group: GroupId,
        flusher: Flusher,
    ) -> Result<StateMachine, StorageError> {
        let open = |name: String| {
            db.open_tree(name)
                .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
        };
        let data = open(keys::data_tree(group))?;
        let sm = open(keys::sm_tree(group))?;
        let dedup = open(keys::dedup_tree(group))?;
        let mut me = StateMachine {
            group,
            shared: GroupData {
                data,
                sm,
                dedup,
                applied: Arc::new(AtomicU64::new(0)),
                map_changed: Arc::new(tokio::sync::watch::channel(0).0),
            },
            flusher,
            snapshot_seq: 0,
            remembered: HashMap::new(),
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
        me.remembered = load_remembered(&me.shared.dedup)?;
        let (applied, _) = me.read_applied()?;
        me.shared
            .applied
            .store(applied.map_or(0, |l| l.index), Ordering::Release);
        Ok(me)
    }

    pub fn data(&self) -> GroupData {
        self.shared.clone()
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

    /// Forgets request ids older than `cutoff_ms` (the log's clock). Outside the apply
    /// transaction: forgetting is idempotent, and an id only matters within the window.
    fn forget_request_ids_before(&mut self, cutoff_ms: u64) -> Result<(), StorageError> {
        let werr = |e: sled::Error| sto_err(ErrorSubject::StateMachine, ErrorVerb::Write, e);
        let derr = |e: bincode::Error| read_err(ErrorSubject::StateMachine, e);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let end = keys::dedup_entry_key(cutoff_ms, 0);
        for item in self.shared.dedup.range(&b"e"[..]..&end[..]) {
            let (entry_key, raw) = item.map_err(werr)?;
            let pairs: Vec<(serde_bytes::ByteBuf, Vec<OpResult>)> =
                bincode::deserialize(&raw).map_err(derr)?;
            for (id, _) in pairs {
                self.remembered.remove(id.as_slice());
            }
            batch.remove(entry_key);
            n += 1;
        }
        // Records of earlier versions.
        let end = keys::dedup_age_key(cutoff_ms, 0);
        for item in self.shared.dedup.range(&b"t"[..]..&end[..]) {
            let (age_key, raw) = item.map_err(werr)?;
            let ids: Vec<serde_bytes::ByteBuf> = bincode::deserialize(&raw).map_err(derr)?;
            for id in ids {
                self.remembered.remove(id.as_slice());
                batch.remove(keys::dedup_result_key(&id));
            }
            batch.remove(age_key);
            n += 1;
        }
        if n > 0 {
            self.shared.dedup.apply_batch(batch).map_err(werr)?;
        }
        Ok(())
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let raw = self
            .shared
            .sm
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
        let body: SnapshotBody =
            bincode::deserialize(data).map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
        let sm = &self.shared.sm;
        sm.insert(keys::INSTALLING, &b"1"[..]).map_err(werr)?;
        self.shared.data.clear().map_err(werr)?;
        let mut batch = sled::Batch::default();
        for (k, v) in body.kvs {
            batch.insert(k.into_vec(), v.into_vec());
        }
        self.shared.data.apply_batch(batch).map_err(werr)?;
        self.shared.dedup.clear().map_err(werr)?;
        let mut batch = sled::Batch::default();
        for (k, v) in body.dedup {
            batch.insert(k.into_vec(), v.into_vec());
        }
        self.shared.dedup.apply_batch(batch).map_err(werr)?;
        self.remembered = load_remembered(&self.shared.dedup)?;
        sm.insert(keys::APPLIED, ser(&body.last_applied)?)
            .map_err(werr)?;
        sm.insert(keys::MEMBERSHIP, ser(&body.membership)?)
            .map_err(werr)?;
        match body.cluster_map {
            Some(m) => sm.insert(keys::CLUSTER_MAP, m.into_vec()).map(|_| ()),
            None => sm.remove(keys::CLUSTER_MAP).map(|_| ()),
        }
        .map_err(werr)?;
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

/// Applies a write's ops unless its request id was applied before, in which case the first
/// result is returned again and nothing changes. A newly applied id goes into `fresh`.
fn apply_write(
    data: &TransactionalTree,
    remembered: &HashMap<Vec<u8>, Vec<OpResult>>,
    fresh: &mut Fresh,
    ops: &[Op],
    request: Option<&Dedup>,
    index: u64,
) -> Result<Vec<OpResult>, ConflictableTransactionError<()>> {
    if let Some(r) = request {
        if let Some(first) = fresh.get(&r.id).or_else(|| remembered.get(&r.id)) {
            return Ok(first.clone());
        }
    }
    let results = ops
        .iter()
        .map(|op| apply_op(data, op, index))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(r) = request {
        fresh.insert(r.id.clone(), results.clone());
    }
    Ok(results)
}

/// The request ids an entry carries, with the latest of their clocks: recorded once per entry
/// under one age key, so that they are forgotten together.
fn request_ids(payload: &EntryPayload<TypeConfig>) -> Option<(u64, Vec<&[u8]>)> {
    let dedups: Vec<&Dedup> = match payload {
        EntryPayload::Normal(
            Request::Write { dedup: Some(d), .. } | Request::TrackedWrite { dedup: Some(d), .. },
        ) => vec![d],
        EntryPayload::Normal(Request::Writes { writes }) => {
            writes.iter().filter_map(|w| w.dedup.as_ref()).collect()
        }
        _ => Vec::new(),
    };
    let at = dedups.iter().map(|d| d.at_ms).max()?;
    Some((at, dedups.iter().map(|d| d.id.as_slice()).collect()))
}

/// Applies one op inside the apply transaction. An unconditional op learns the key's previous
/// version from the insert or remove itself: one sled operation instead of two.
fn apply_op(
    data: &TransactionalTree,
    op: &Op,
    index: u64,
) -> Result<OpResult, ConflictableTransactionError<()>> {
    let version_of = |v: Option<sled::IVec>| -> (bool, u64) {
        let previous = v
            .as_deref()
            .and_then(keys::decode_value)
            .map_or(0, |(v, _)| v);
        (v.is_some(), previous)
    };
    let expected = match op {
        Op::Put {
            expected_version, ..
        }
        | Op::Delete {
            expected_version, ..
        } => *expected_version,
    };
    if let Some(expected) = expected {
        let (existed, previous_version) = version_of(data.get(op.key())?);
        if expected != previous_version {
            return Ok(OpResult {
                version: 0,
                existed,
                condition_failed: true,
                previous_version,
            });
        }
    }
    let replaced = match op {
        Op::Put { key, value, .. } => {
            data.insert(key.as_slice(), keys::encode_value(index, value))?
        }
        Op::Delete { key, .. } => data.remove(key.as_slice())?,
    };
    let (existed, previous_version) = version_of(replaced);
    Ok(OpResult {
        version: index,
        existed,
        condition_failed: false,
        previous_version,
    })
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
        let applied_raw = ser(&Some(last))?;
        let mut membership_raw = None;
        for e in &entries {
            if let EntryPayload::Membership(m) = &e.payload {
                membership_raw = Some(ser(&StoredMembership::new(Some(e.log_id), m.clone()))?);
            }
        }
        // Data and the applied marker change in one transaction, so a crash never leaves them
        // disagreeing. The closure may run more than once on conflict: it must not have effects
        // outside the transaction.
        let remembered = &self.remembered;
        let result: Result<(Vec<Response>, Fresh), TransactionError<()>> =
            (&self.shared.data, &self.shared.sm, &self.shared.dedup).transaction(
                |(data, sm, dedup)| {
                    let mut responses = Vec::with_capacity(entries.len());
                    let mut fresh = Fresh::new();
                    for e in &entries {
                        let before = fresh.len();
                        let resp = match &e.payload {
                            EntryPayload::Blank | EntryPayload::Membership(_) => Response::None,
                            EntryPayload::Normal(Request::Writes { writes }) => Response::Writes(
                                writes
                                    .iter()
                                    .map(|w| {
                                        apply_write(
                                            data,
                                            remembered,
                                            &mut fresh,
                                            &w.ops,
                                            w.dedup.as_ref(),
                                            e.log_id.index,
                                        )
                                    })
                                    .collect::<Result<_, _>>()?,
                            ),
                            EntryPayload::Normal(
                                Request::Write { ops, dedup: d }
                                | Request::TrackedWrite { ops, dedup: d, .. },
                            ) => Response::Write(apply_write(
                                data,
                                remembered,
                                &mut fresh,
                                ops,
                                d.as_ref(),
                                e.log_id.index,
                            )?),
                            EntryPayload::Normal(Request::ChangeMap {
                                change_json,
                                expected_epoch,
                            }) => {
                                let current = sm.get(keys::CLUSTER_MAP)?;
                                let outcome =
                                    change_map(current.as_deref(), change_json, *expected_epoch);
                                if let Ok((_, json)) = &outcome {
                                    sm.insert(keys::CLUSTER_MAP, json.as_slice())?;
                                }
                                Response::MapChanged(outcome.map(|(epoch, _)| epoch))
                            }
                            EntryPayload::Normal(Request::SetClusterMap { epoch, map_json }) => {
                                let current = sm
                                    .get(keys::CLUSTER_MAP)?
                                    .and_then(|raw| {
                                        serde_json::from_slice::<shardmap::ClusterMap>(&raw).ok()
                                    })
                                    .map_or(0, |m| m.epoch);
                                let stored = *epoch > current;
                                if stored {
                                    sm.insert(keys::CLUSTER_MAP, map_json.as_slice())?;
                                }
                                Response::ClusterMap { stored }
                            }
                        };
                        // The ids this entry applied, with their results, in one record.
                        if fresh.len() > before {
                            if let Some((at, ids)) = request_ids(&e.payload) {
                                let pairs: Vec<(&[u8], &Vec<OpResult>)> = ids
                                    .into_iter()
                                    .filter_map(|id| fresh.get(id).map(|r| (id, r)))
                                    .collect();
                                let raw = bincode::serialize(&pairs)
                                    .map_err(|_| ConflictableTransactionError::Abort(()))?;
                                dedup
                                    .insert(&keys::dedup_entry_key(at, e.log_id.index)[..], raw)?;
                            }
                        }
                        responses.push(resp);
                    }
                    sm.insert(keys::APPLIED, applied_raw.as_slice())?;
                    if let Some(m) = &membership_raw {
                        sm.insert(keys::MEMBERSHIP, m.as_slice())?;
                    }
                    Ok((responses, fresh))
                },
            );
        let (responses, fresh) = result.map_err(|e| {
            sto_err(
                ErrorSubject::Apply(last),
                ErrorVerb::Write,
                std::io::Error::other(format!("{e:?}")),
            )
        })?;
        self.remembered.extend(fresh);
        self.shared.applied.store(last.index, Ordering::Release);
        // Every entry with request ids moves the log's clock, batch entries included: a group
        // that only sees batches must forget too, or its table grows without end.
        if let Some(now) = entries
            .iter()
            .rev()
            .find_map(|e| request_ids(&e.payload).map(|(at, _)| at))
        {
            self.forget_request_ids_before(now.saturating_sub(DEDUP_WINDOW_MS))?;
        }
        if responses.iter().any(|r| {
            matches!(
                r,
                Response::ClusterMap { stored: true } | Response::MapChanged(Ok(_))
            )
        }) {
            self.shared.map_changed.send_modify(|v| *v += 1);
        }
        Ok(responses)
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
            let mut dedup = Vec::new();
            for item in self.shared.dedup.iter() {
                let (k, v) = item.map_err(|e| read_err(ErrorSubject::StateMachine, e))?;
                dedup.push((
                    serde_bytes::ByteBuf::from(k.to_vec()),
                    serde_bytes::ByteBuf::from(v.to_vec()),
                ));
            }
            Ok(SnapshotBody {
                last_applied,
                membership,
                cluster_map,
                kvs,
                dedup,
            })
        })();
        SnapshotBuilder {
            group: self.group,
            body: copy,
            sm: self.shared.sm.clone(),
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
        self.shared
            .sm
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
    sm: sled::Tree,
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
        self.sm
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
