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

#[cfg(test)]
mod tests {
    //! Golden vectors of the group's `raft` tree. If one fails you changed a persisted format:
    //! existing data dirs would be misread, and a misread vote can break Raft's safety.

    use openraft::CommittedLeaderId;

    use super::*;
    use crate::types::golden::{assert_bincode, hex, unhex, CHANGED};

    fn meta() -> (tempfile::TempDir, sled::Db, RaftMeta) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path()).expect("open sled");
        let flusher = Flusher::start(db.clone()).expect("flusher");
        let meta = RaftMeta::open(&db, 3, flusher).expect("raft meta");
        (dir, db, meta)
    }

    // Vote = leader_id (term u64, node u64) then committed (bool).
    const VOTE: &str = "0500000000000000 0200000000000000 01";
    // LogId = leader_id (term u64, node u64) then index (u64).
    const PURGED: &str = "0400000000000000 0100000000000000 6300000000000000";

    #[test]
    fn golden_vote() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(&Vote::new_committed(5, 2), VOTE);
        assert_bincode(&Vote::new(5, 2), "0500000000000000 0200000000000000 00");
    }

    #[test]
    fn golden_purged() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        assert_bincode(
            &Some(LogId::new(CommittedLeaderId::new(4, 1), 99)),
            &format!("01 {PURGED}"),
        );
        assert_bincode(&LogId::new(CommittedLeaderId::new(4, 1), 99), PURGED);
    }

    #[tokio::test]
    async fn golden_raft_tree_records() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        let (_dir, db, meta) = meta();
        meta.save_vote(&Vote::new_committed(5, 2)).await.unwrap();
        meta.save_purged(&LogId::new(CommittedLeaderId::new(4, 1), 99))
            .await
            .unwrap();
        let tree = db.open_tree("g3.raft").unwrap();
        let raw = |key: &[u8]| hex(&tree.get(key).unwrap().expect("stored"));
        assert_eq!(raw(b"vote"), hex(&unhex(VOTE)), "vote record: {CHANGED}");
        assert_eq!(
            raw(b"purged"),
            hex(&unhex(PURGED)),
            "purge marker: {CHANGED}"
        );
        // And records written by an earlier build read back.
        tree.insert(b"vote", unhex("0700000000000000 0300000000000000 00"))
            .unwrap();
        assert_eq!(meta.vote().unwrap(), Some(Vote::new(7, 3)), "{CHANGED}");
        assert_eq!(
            meta.purged().unwrap(),
            Some(LogId::new(CommittedLeaderId::new(4, 1), 99)),
            "{CHANGED}"
        );
    }
}
