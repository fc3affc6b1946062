//! Runs openraft's storage test suite against the sled log store and state machine.

use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::types::TypeConfig;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path()).expect("open sled");
        let flusher = Flusher::start(db.clone()).expect("flusher");
        let log = LogStore::open(&db, 7, flusher.clone(), DurableAcks::new(1)).expect("log store");
        let sm = StateMachine::open(&db, 7, flusher)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}
