//! Runs openraft's storage test suite against the file log with the state machine, and tests
//! the state machine over a real log and sled: request ids across restarts, crashes during
//! apply, fences.

use std::path::Path;

use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::types::{Entry, Response, TypeConfig};

/// A group's log in `dir`, as a node opens it.
fn log_in(dir: &Path, group: u64, db: &sled::Db, flusher: &Flusher) -> FileLog {
    let dir = dir.join(format!("log{group}"));
    FileLog::open(db, &dir, group, flusher.clone(), DurableAcks::new(1)).expect("log")
}

struct FileBuilder;

impl StoreBuilder<TypeConfig, FileLog, StateMachine, tempfile::TempDir> for FileBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, FileLog, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path().join("db")).expect("open sled");
        let flusher = Flusher::start(db.clone()).expect("flusher");
        let log = log_in(dir.path(), 7, &db, &flusher);
        let sm = StateMachine::open(&db, 7, flusher, &log)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_file_log() -> Result<(), StorageError> {
    Suite::test_all(FileBuilder)
}

/// One replica's storage of group 7 as a node runs it: entries go to the log, then to the
/// state machine, and a restart opens both again from disk.
struct Replica {
    dir: tempfile::TempDir,
    db: sled::Db,
    flusher: Flusher,
    log: FileLog,
    sm: StateMachine,
    /// The last index in the log.
    logged: u64,
}

impl Replica {
    fn new() -> Replica {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path().join("db")).expect("sled");
        let flusher = Flusher::start(db.clone()).expect("flusher");
        Replica::open(dir, db, flusher, 0)
    }

    /// Opens the log and the state machine of `dir` as a node does.
    fn open(dir: tempfile::TempDir, db: sled::Db, flusher: Flusher, logged: u64) -> Replica {
        let log = log_in(dir.path(), 7, &db, &flusher);
        let sm = StateMachine::open(&db, 7, flusher.clone(), &log).expect("opens");
        Replica {
            dir,
            db,
            flusher,
            log,
            sm,
            logged,
        }
    }

    /// Appends the entries the log lacks, then applies them all.
    async fn apply(&mut self, entries: impl IntoIterator<Item = Entry>) -> Vec<Response> {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let new: Vec<Entry> = entries
            .iter()
            .filter(|e| e.log_id.index > self.logged)
            .cloned()
            .collect();
        if let Some(last) = new.last() {
            self.logged = last.log_id.index;
            self.log.append_now(new).expect("appends");
        }
        self.sm.apply(entries).await.expect("applies")
    }

    /// Closes the log and the state machine and opens them again.
    fn restart(self) -> Replica {
        let Replica {
            dir,
            db,
            flusher,
            log,
            sm,
            logged,
        } = self;
        drop((sm, log));
        Replica::open(dir, db, flusher, logged)
    }
}

mod dedup {
    use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder};
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::{Dedup, Fence, FenceChange, LogId, Op, Request, DEDUP_WINDOW_MS};

    fn put(index: u64, value: &str, id: Option<&str>, at_ms: u64) -> Entry {
        write(
            index,
            vec![Op::Put {
                key: b"k".to_vec(),
                value: value.as_bytes().to_vec(),
                expected_version: None,
            }],
            id,
            at_ms,
        )
    }

    fn write(index: u64, ops: Vec<Op>, id: Option<&str>, at_ms: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::Write {
                ops,
                dedup: id.map(|id| Dedup {
                    id: id.as_bytes().to_vec(),
                    at_ms,
                }),
            }),
        }
    }

    /// A batch entry at `index` of one put per `(key, request id, at_ms)`.
    fn batch(index: u64, writes: &[(&str, &str, u64)]) -> Entry {
        let writes = writes
            .iter()
            .map(|&(key, id, at_ms)| crate::types::SubWrite {
                ops: vec![Op::Put {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                    expected_version: None,
                }],
                dedup: Some(Dedup {
                    id: id.as_bytes().to_vec(),
                    at_ms,
                }),
            })
            .collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::Writes { writes }),
        }
    }

    fn version(r: &Response) -> u64 {
        match r {
            Response::Write(results) => results[0].version,
            other => panic!("{other:?}"),
        }
    }

    /// `put` at `index` of `term`.
    fn put_in_term(term: u64, index: u64, value: &str, id: &str, at_ms: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            ..put(index, value, Some(id), at_ms)
        }
    }

    #[tokio::test]
    async fn a_new_leader_whose_clock_runs_ahead_does_not_make_replicas_forget() {
        let mut r = Replica::new();
        let t0 = 1_000_000;
        r.apply([put_in_term(1, 1, "a", "r1", t0)]).await;
        // Term 2's leader is ten minutes ahead of term 1's: only its progress within the term
        // counts, so r1 is still remembered, and its retry answered, not applied again.
        let ahead = t0 + 10 * 60 * 1000;
        r.apply([put_in_term(2, 2, "b", "r2", ahead)]).await;
        let out = r.apply([put_in_term(2, 3, "a", "r1", ahead + 1)]).await;
        assert_eq!(version(&out[0]), 1, "r1 was applied again");
        // Restarted, the replica ages alike.
        let mut r = r.restart();
        let out = r.apply([put_in_term(2, 4, "a", "r1", ahead + 2)]).await;
        assert_eq!(version(&out[0]), 1, "r1 was applied again after a restart");
        // The window still passes, by the term's own clock.
        let later = ahead + DEDUP_WINDOW_MS + 1000;
        r.apply([put_in_term(2, 5, "c", "r3", later)]).await;
        let out = r.apply([put_in_term(2, 6, "a", "r1", later + 1)]).await;
        assert_eq!(version(&out[0]), 6, "r1 was remembered past the window");
    }

    #[tokio::test]
    async fn a_retried_request_id_is_answered_not_applied_again() {
        let mut r = Replica::new();
        let data = r.sm.data();
        let t0 = 1_000_000;
        let out = r.apply([put(1, "a", Some("req-1"), t0)]).await;
        assert_eq!(version(&out[0]), 1);
        let out = r.apply([put(2, "b", Some("req-2"), t0 + 1)]).await;
        assert_eq!(version(&out[0]), 2);
        // The retry of req-1 arrives after req-2: it must not bring "a" back.
        let out = r.apply([put(3, "a", Some("req-1"), t0 + 2)]).await;
        assert_eq!(version(&out[0]), 1, "the first result is returned again");
        assert_eq!(data.get(b"k").unwrap(), Some((2, b"b".to_vec())));
        // Writes without an id are never deduplicated.
        r.apply([put(4, "c", None, 0)]).await;
        r.apply([put(5, "c", None, 0)]).await;
        assert_eq!(data.get(b"k").unwrap(), Some((5, b"c".to_vec())));
        // Past the window, the id is forgotten.
        r.apply([put(6, "d", Some("req-3"), t0 + DEDUP_WINDOW_MS + 10)])
            .await;
        let out = r
            .apply([put(7, "a", Some("req-1"), t0 + DEDUP_WINDOW_MS + 11)])
            .await;
        assert_eq!(version(&out[0]), 7);
    }

    #[tokio::test]
    async fn every_write_of_a_batch_entry_is_remembered_and_forgotten() {
        let mut r = Replica::new();
        r.apply([batch(1, &[("a", "id-a", 1_000), ("b", "id-b", 1_000)])])
            .await;
        r.apply([batch(2, &[("c", "id-c", 1_001)])]).await;
        for (i, id) in [(3, "id-a"), (4, "id-b")] {
            let out = r.apply([put(i, "x", Some(id), 1_002)]).await;
            assert_eq!(version(&out[0]), 1, "{id} is answered from the table");
        }
        let mut r = r.restart();
        let out = r.apply([put(5, "x", Some("id-c"), 1_003)]).await;
        assert_eq!(version(&out[0]), 2, "id-c is answered after a restart");
        let out = r
            .apply([put(6, "x", Some("id-a"), 1_000 + DEDUP_WINDOW_MS + 3)])
            .await;
        assert_eq!(version(&out[0]), 6, "id-a was forgotten past the window");
    }

    /// What a retry is answered after a restart, for every kind of write: plain puts from the
    /// log alone, conditional writes and deletes from their records, and a write a fence
    /// refused stays unapplied, so its retry applies once the fence is gone.
    #[tokio::test]
    async fn every_kind_of_write_is_answered_alike_after_a_restart() {
        let mut r = Replica::new();
        let t = 5_000;
        let cas = |index, expected| {
            write(
                index,
                vec![Op::Put {
                    key: b"c".to_vec(),
                    value: b"v".to_vec(),
                    expected_version: Some(expected),
                }],
                Some("cas"),
                t,
            )
        };
        let delete = write(
            3,
            vec![Op::Delete {
                key: b"k".to_vec(),
                expected_version: None,
            }],
            Some("del"),
            t,
        );
        let fence = Fence {
            start: b"f".to_vec(),
            end: b"g".to_vec(),
            epoch: 2,
            tag: 9,
        };
        let raise = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 5),
            payload: EntryPayload::Normal(Request::Fence(FenceChange::Raise(fence))),
        };
        let fenced_put = |index| {
            write(
                index,
                vec![Op::Put {
                    key: b"f1".to_vec(),
                    value: b"v".to_vec(),
                    expected_version: None,
                }],
                Some("fenced"),
                t,
            )
        };
        let mut first = Vec::new();
        first.extend(r.apply([put(1, "a", Some("plain"), t)]).await);
        first.extend(r.apply([cas(2, 0)]).await);
        first.extend(r.apply([delete.clone()]).await);
        first.extend(r.apply([cas(4, 0)]).await);
        r.apply([raise]).await;
        let refused = r.apply([fenced_put(6)]).await;
        assert_eq!(refused, vec![Response::Write(Vec::new())], "fenced");
        // Only the writes the log cannot tell have records: the CAS, the delete, the fenced
        // put (the retried CAS at 4 was answered from the table).
        let dedup = r.db.open_tree(crate::keys::dedup_tree(7)).unwrap();
        assert_eq!(dedup.len(), 3, "records");

        let mut r = r.restart();
        let mut again = Vec::new();
        again.extend(r.apply([put(7, "b", Some("plain"), t + 1)]).await);
        again.extend(r.apply([cas(8, 0)]).await);
        let retried_delete = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 9),
            ..delete
        };
        again.extend(r.apply([retried_delete]).await);
        again.extend(r.apply([cas(10, 0)]).await);
        assert_eq!(again, first, "answered as the first time");
        let lift = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 11),
            payload: EntryPayload::Normal(Request::Fence(FenceChange::Lift {
                start: b"f".to_vec(),
                end: b"g".to_vec(),
                older_than: 3,
                tag: 9,
            })),
        };
        r.apply([lift]).await;
        let out = r.apply([fenced_put(12)]).await;
        assert_eq!(
            version(&out[0]),
            12,
            "the refused write applies on its retry"
        );
    }

    /// The checkpoint a snapshot stores, with the log after it, rebuilds the table, also once
    /// the log before the snapshot is purged; a replica that installs the snapshot answers
    /// the same retries, before and after a restart.
    #[tokio::test]
    async fn retries_are_answered_from_the_checkpoint_and_the_log_after_it() {
        let mut r = Replica::new();
        r.apply([put(1, "a", Some("before"), 1_000)]).await;
        let snapshot =
            r.sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        let last = snapshot.meta.last_log_id.expect("applied");
        r.log.purge(last).await.unwrap();
        r.apply([put(2, "b", Some("after"), 1_001)]).await;
        let mut r = r.restart();
        let out = r.apply([put(3, "x", Some("before"), 1_002)]).await;
        assert_eq!(version(&out[0]), 1, "from the checkpoint");
        let out = r.apply([put(4, "x", Some("after"), 1_002)]).await;
        assert_eq!(version(&out[0]), 2, "from the log");

        let mut other = Replica::new();
        other
            .sm
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        other.logged = last.index;
        let out = other.apply([put(2, "x", Some("before"), 1_003)]).await;
        assert_eq!(version(&out[0]), 1, "from the installed snapshot");
        let mut other = other.restart();
        let out = other.apply([put(3, "x", Some("before"), 1_004)]).await;
        assert_eq!(
            version(&out[0]),
            1,
            "from the installed snapshot, restarted"
        );
    }
}

/// apply writes no sled transaction: a crash can leave effects on disk with the applied marker
/// behind them. These tests put a state machine in that state and apply the entries again, as
/// openraft does after a restart.
mod replay {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::keys;
    use crate::types::{Dedup, Entry, LogId, Op, Request, Response, SubWrite};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn write(index: u64, ops: Vec<Op>, id: Option<&str>) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Request::Write {
                ops,
                dedup: id.map(|id| Dedup {
                    id: id.as_bytes().to_vec(),
                    at_ms: 1_000,
                }),
            }),
        }
    }

    fn put(key: &str, value: &str, expected_version: Option<u64>) -> Op {
        Op::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            expected_version,
        }
    }

    /// Entries 2..=4 after `k` = "a" at version 1: a conditional delete of `k`, a create of
    /// `j` (must not exist), and a batch of two puts with request ids.
    fn later_entries() -> Vec<Entry> {
        let del = Op::Delete {
            key: b"k".to_vec(),
            expected_version: Some(1),
        };
        let sub = |key: &str, id: &str| SubWrite {
            ops: vec![put(key, "v", None)],
            dedup: Some(Dedup {
                id: id.as_bytes().to_vec(),
                at_ms: 1_000,
            }),
        };
        vec![
            write(2, vec![del], Some("del")),
            write(3, vec![put("j", "x", Some(0))], None),
            Entry {
                log_id: log_id(4),
                payload: EntryPayload::Normal(Request::Writes {
                    writes: vec![sub("m", "id-m"), sub("n", "id-n")],
                }),
            },
        ]
    }

    /// A new state machine (group 1) that applied one put of `k` as entry 1.
    async fn applied_one_write() -> (tempfile::TempDir, sled::Db, Flusher, StateMachine) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let flusher = Flusher::start(db.clone()).unwrap();
        let log = log_in(dir.path(), 1, &db, &flusher);
        let mut sm = StateMachine::open(&db, 1, flusher.clone(), &log).unwrap();
        sm.apply([write(1, vec![put("k", "a", None)], None)])
            .await
            .unwrap();
        (dir, db, flusher, sm)
    }

    /// A state machine that applied entry 1, then [`later_entries`] in one call, and crashed
    /// with the applied marker still at entry 1: the database, and the first answers.
    async fn crashed_after_later_entries() -> (tempfile::TempDir, sled::Db, Flusher, Vec<Response>)
    {
        let (dir, db, flusher, mut sm) = applied_one_write().await;
        let first: Vec<Response> = sm.apply(later_entries()).await.unwrap();
        assert!(
            matches!(&first[0], Response::Write(r) if !r[0].condition_failed),
            "{first:?}"
        );
        drop(sm);
        let sm_tree = db.open_tree(keys::sm_tree(1)).unwrap();
        sm_tree
            .insert(keys::APPLIED, bincode::serialize(&Some(log_id(1))).unwrap())
            .unwrap();
        (dir, db, flusher, first)
    }

    async fn crash_after_effects(undo: impl FnOnce(&sled::Db)) {
        let (dir, db, flusher, first) = crashed_after_later_entries().await;
        // Maybe some effects never reached the disk either.
        undo(&db);

        let mut sm = StateMachine::open(
            &db,
            1,
            flusher.clone(),
            &log_in(dir.path(), 1, &db, &flusher),
        )
        .unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1)));
        let again = sm.apply(later_entries()).await.unwrap();
        assert_eq!(
            again, first,
            "applied again, every entry answers as the first time"
        );
        let data = sm.data();
        assert_eq!(data.get(b"k").unwrap(), None);
        assert_eq!(data.get(b"j").unwrap(), Some((3, b"x".to_vec())));
        assert_eq!(data.get(b"m").unwrap(), Some((4, b"v".to_vec())));
        assert_eq!(data.get(b"n").unwrap(), Some((4, b"v".to_vec())));
        assert_eq!(data.applied_index(), 4);
    }

    #[tokio::test]
    async fn entries_whose_effects_all_reached_disk_are_answered_as_before() {
        crash_after_effects(|_| {}).await;
    }

    #[tokio::test]
    async fn a_second_crash_during_the_replay_loses_no_decision() {
        let (dir, db, flusher, first) = crashed_after_later_entries().await;
        // The replay applies entry 2 alone, then the node crashes again.
        let mut sm = StateMachine::open(
            &db,
            1,
            flusher.clone(),
            &log_in(dir.path(), 1, &db, &flusher),
        )
        .unwrap();
        let mut entries = later_entries();
        let rest = entries.split_off(1);
        let again = sm.apply(entries).await.unwrap();
        assert_eq!(again[..], first[..1]);
        drop(sm);
        let mut sm = StateMachine::open(
            &db,
            1,
            flusher.clone(),
            &log_in(dir.path(), 1, &db, &flusher),
        )
        .unwrap();
        let again = sm.apply(rest).await.unwrap();
        assert_eq!(
            again[..],
            first[1..],
            "entries 3 and 4 answer as the first time"
        );
        assert_eq!(sm.data().get(b"j").unwrap(), Some((3, b"x".to_vec())));
    }

    #[tokio::test]
    async fn entries_whose_effects_partly_reached_disk_are_finished() {
        crash_after_effects(|db| {
            // The delete of k and the put of n never reached the disk.
            let data = db.open_tree(keys::data_tree(1)).unwrap();
            data.insert(b"k", keys::encode_value(1, b"a")).unwrap();
            data.remove(b"n").unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn a_snapshot_stored_by_an_earlier_version_is_moved_to_its_own_tree() {
        use openraft::storage::RaftSnapshotBuilder;
        let (dir, db, flusher, mut sm) = applied_one_write().await;
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        drop(sm);
        // Where earlier versions kept it.
        let (sm_tree, snaps) = (
            db.open_tree(keys::sm_tree(1)).unwrap(),
            db.open_tree(keys::snapshot_tree(1)).unwrap(),
        );
        let raw = snaps.remove(keys::SNAPSHOT).unwrap().unwrap();
        sm_tree.insert(keys::SNAPSHOT, raw).unwrap();
        let mut sm = StateMachine::open(
            &db,
            1,
            flusher.clone(),
            &log_in(dir.path(), 1, &db, &flusher),
        )
        .unwrap();
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("the snapshot");
        assert_eq!(current.meta, built.meta);
        assert!(sm_tree.get(keys::SNAPSHOT).unwrap().is_none());
        assert!(snaps.get(keys::SNAPSHOT).unwrap().is_some());
    }
}

mod fences {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::{Entry, Fence, FenceChange, LogId, Op, Request, Response, SubWrite};

    fn entry(index: u64, request: Request) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(request),
        }
    }

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            expected_version: None,
        }
    }

    fn raise(start: &str, end: &str, tag: u64) -> Request {
        Request::Fence(FenceChange::Raise(Fence {
            start: start.into(),
            end: end.into(),
            epoch: 5,
            tag,
        }))
    }

    fn writes(keys: &[&str]) -> Request {
        Request::Writes {
            writes: keys
                .iter()
                .map(|k| SubWrite {
                    ops: vec![put(k)],
                    dedup: None,
                })
                .collect(),
        }
    }

    fn holds_keys(r: &Response) -> bool {
        match r {
            Response::Fenced(o) => o.holds_keys,
            other => panic!("not a fence outcome: {other}"),
        }
    }

    /// Which writes of a `Writes` response a fence refused.
    fn refused(r: &Response) -> Vec<bool> {
        match r {
            Response::Writes(all) => all.iter().map(|w| w.is_empty()).collect(),
            other => panic!("not a writes outcome: {other}"),
        }
    }

    fn open(dir: &tempfile::TempDir, db: &sled::Db) -> StateMachine {
        let flusher = Flusher::start(db.clone()).expect("flusher");
        StateMachine::open(db, 7, flusher.clone(), &log_in(dir.path(), 7, db, &flusher))
            .expect("opens")
    }

    #[tokio::test]
    async fn a_fence_counts_what_came_before_it_and_refuses_what_comes_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path()).expect("sled");
        let mut sm = open(&dir, &db);
        // One apply call: a write to d/ decided just before the fence is counted by it, one
        // just after is refused; a key outside the range is not touched.
        let out = sm
            .apply([
                entry(1, writes(&["d/1"])),
                entry(2, raise("d/", "d0", 11)),
                entry(3, writes(&["d/2", "e/1"])),
                entry(4, raise("e/", "e0", 12)),
                entry(5, raise("f/", "f0", 13)),
            ])
            .await
            .expect("applies");
        assert!(holds_keys(&out[1]), "d/1 came before the fence");
        assert_eq!(refused(&out[2]), vec![true, false]);
        assert!(holds_keys(&out[3]), "e/1 came before the fence");
        assert!(!holds_keys(&out[4]));
        assert_eq!(
            sm.data().get(b"d/2").expect("reads"),
            None,
            "a refused write took effect"
        );
        assert_eq!(
            sm.data().fenced([&b"d/9"[..]].into_iter()),
            Some(&b"d/9"[..])
        );

        // Lifted by its tag: writes go in again. The other fences stay, through a restart.
        let out = sm
            .apply([
                entry(
                    6,
                    Request::Fence(FenceChange::Lift {
                        start: b"d/".to_vec(),
                        end: b"d0".to_vec(),
                        older_than: 0,
                        tag: 11,
                    }),
                ),
                entry(7, writes(&["d/3", "e/2"])),
            ])
            .await
            .expect("applies");
        assert_eq!(refused(&out[1]), vec![false, true]);
        drop(sm);
        let mut sm = open(&dir, &db);
        let out = sm
            .apply([entry(8, writes(&["d/4", "e/3", "f/1"]))])
            .await
            .expect("applies");
        assert_eq!(refused(&out[0]), vec![false, true, true]);

        // A replica restored from a snapshot refuses the same writes.
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("builds");
        let dir2 = tempfile::tempdir().expect("temp dir");
        let db2 = sled::open(dir2.path()).expect("sled");
        let mut other = open(&dir2, &db2);
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("installs");
        let out = other
            .apply([entry(9, writes(&["d/5", "e/4"]))])
            .await
            .expect("applies");
        assert_eq!(refused(&out[0]), vec![false, true]);
    }

    #[tokio::test]
    async fn a_deleted_key_does_not_count_and_a_retry_of_an_earlier_write_is_answered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path()).expect("sled");
        let mut sm = open(&dir, &db);
        let id = crate::types::Dedup {
            id: b"r1".to_vec(),
            at_ms: 1,
        };
        let first = Request::Write {
            ops: vec![put("d/1")],
            dedup: Some(id.clone()),
        };
        sm.apply([entry(1, first.clone())]).await.expect("applies");
        let out = sm
            .apply([
                entry(
                    2,
                    Request::Write {
                        ops: vec![Op::Delete {
                            key: b"d/1".to_vec(),
                            expected_version: None,
                        }],
                        dedup: None,
                    },
                ),
                entry(3, raise("d/", "d0", 11)),
                // The retry of a write applied before the fence: its first answer, not a
                // refusal.
                entry(4, first),
            ])
            .await
            .expect("applies");
        assert!(
            !holds_keys(&out[1]),
            "the only key was deleted before the fence"
        );
        match &out[2] {
            Response::Write(results) => assert_eq!(results[0].version, 1),
            other => panic!("not a write outcome: {other}"),
        }
    }
}
