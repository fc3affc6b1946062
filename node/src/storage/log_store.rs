//! A group's Raft log and vote on sled, implementing openraft's `RaftLogStorage`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId};

use super::raft_meta::RaftMeta;
use super::{read_err, sto_err, DurableAcks, Flusher};
use crate::keys;
use crate::types::{Entry, GroupId, LogId, StorageError, TypeConfig, Vote};

/// One group's log store. Clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    log: sled::Tree,
    meta: RaftMeta,
    flusher: Flusher,
    acks: DurableAcks,
}

impl LogStore {
    pub fn open(
        db: &sled::Db,
        group: GroupId,
        flusher: Flusher,
        acks: DurableAcks,
    ) -> Result<LogStore, sled::Error> {
        Ok(LogStore {
            group,
            log: db.open_tree(keys::log_tree(group))?,
            meta: RaftMeta::open(db, group, flusher.clone())?,
            flusher,
            acks,
        })
    }

    async fn durable(&self, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        self.flusher
            .wait_durable()
            .await
            .map_err(|e| sto_err(subject, ErrorVerb::Write, e))
    }

    fn decode_entry(raw: &[u8]) -> Result<Entry, StorageError> {
        bincode::deserialize(raw).map_err(|e| read_err(ErrorSubject::Logs, e))
    }

    /// The index of the first entry still in the log, for status reports.
    pub fn group(&self) -> GroupId {
        self.group
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(keys::log_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(keys::log_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(keys::log_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(keys::log_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.log.range((start, end)) {
            let (_, v) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            out.push(Self::decode_entry(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.meta.purged()?;
        let last = self
            .log
            .last()
            .map_err(|e| read_err(ErrorSubject::Logs, e))?
            .map(|(_, v)| Self::decode_entry(&v).map(|e| *e.get_log_id()))
            .transpose()?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.meta.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta.vote()
    }

    // save_committed / read_committed keep openraft's defaults (not persisted): writing the
    // commit index cost a sled insert per entry on every replica, and losing it only means a
    // restarted replica applies committed entries after it hears from the leader.

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut tracked = Vec::new();
        for entry in entries {
            let raw = bincode::serialize(&entry)
                .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.insert(&keys::log_key(entry.get_log_id().index), raw);
            tracked.extend(self.acks.tracked(&entry));
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // The callback fires only once the group-commit flush covering this batch is done;
        // eventual writes this node proposed are acknowledged at the same moment.
        self.flusher
            .on_durable(self.acks.append_completion(self.group, tracked, callback));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(keys::log_key(log_id.index)..) {
            let (k, _) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        // Rare, and a conflicting suffix must not come back after a crash: flush now.
        self.durable(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purged marker first: a crash between the two steps leaves extra entries, which
        // is harmless, never a hole.
        self.meta.save_purged(&log_id).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=keys::log_key(log_id.index)) {
            let (k, _) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }
}
