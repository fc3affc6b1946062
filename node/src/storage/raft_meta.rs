//! A group's Raft metadata on sled (the vote and the purge marker), shared by both log
//! engines: whichever holds the entries, these stay in the group's `raft` tree.

use openraft::{ErrorSubject, ErrorVerb};

use super::{sto_err, Flusher};
use crate::keys;
use crate::types::{GroupId, LogId, StorageError, Vote};

#[derive(Clone)]
pub(super) struct RaftMeta {
    tree: sled::Tree,
    flusher: Flusher,
}

impl RaftMeta {
    pub(super) fn open(
        db: &sled::Db,
        group: GroupId,
        flusher: Flusher,
    ) -> Result<RaftMeta, sled::Error> {
        Ok(RaftMeta {
            tree: db.open_tree(keys::raft_tree(group))?,
            flusher,
        })
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        let raw = self
            .tree
            .get(key)
            .map_err(|e| sto_err(subject.clone(), ErrorVerb::Read, e))?;
        raw.map(|v| bincode::deserialize(&v))
            .transpose()
            .map_err(|e| sto_err(subject, ErrorVerb::Read, e))
    }

    /// Writes `value` under `key` and waits until the database is durable.
    async fn put_durably<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StorageError> {
        let raw =
            bincode::serialize(value).map_err(|e| sto_err(subject.clone(), ErrorVerb::Write, e))?;
        self.tree
            .insert(key, raw)
            .map_err(|e| sto_err(subject.clone(), ErrorVerb::Write, e))?;
        self.flusher
            .wait_durable()
            .await
            .map_err(|e| sto_err(subject, ErrorVerb::Write, e))
    }

    pub(super) fn vote(&self) -> Result<Option<Vote>, StorageError> {
        self.get(keys::VOTE, ErrorSubject::Vote)
    }

    /// Raft's safety rests on a vote never being forgotten once granted: durable on return.
    pub(super) async fn save_vote(&self, vote: &Vote) -> Result<(), StorageError> {
        self.put_durably(keys::VOTE, vote, ErrorSubject::Vote).await
    }

    pub(super) fn purged(&self) -> Result<Option<LogId>, StorageError> {
        self.get(keys::PURGED, ErrorSubject::Store)
    }

    /// Records that entries up to `log_id` are going, durably, and with them the state
    /// machine (it is not flushed on its own), which must not need them after a crash.
    pub(super) async fn save_purged(&self, log_id: &LogId) -> Result<(), StorageError> {
        self.put_durably(keys::PURGED, log_id, ErrorSubject::Store)
            .await
    }
}
