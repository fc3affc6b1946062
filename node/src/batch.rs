//! Gathering concurrent requests of one group into shared rounds: strong writes into shared
//! Raft entries, strong reads into shared read-index rounds.
//!
//! A group lets a fixed number of rounds run at once and, while they all do, gathers the
//! requests that arrive into the next round, which starts as soon as a slot frees. A request is
//! only ever answered by a round that started after it arrived, which is what a read index
//! needs to stay linearizable.
//!
//! - **Writes.** Every Raft entry costs a log append on each replica, a replication round and an
//!   apply transaction, whatever it carries; on these machines that per-entry cost, not the
//!   bytes, is what limits write throughput. A round is one
//!   [`crate::types::Request::Writes`] entry; each write keeps its own request id and results,
//!   and a round's failure (not the leader, no quorum) is every member's. A key's version is the
//!   log index of the entry that wrote it, so two writes of one key must never share an entry:
//!   both would get the same version, and a compare-and-swap on it could succeed against the
//!   other write's value (the linearizability checker caught exactly that). A write touching a
//!   key already in the gathering round is handed back to be proposed alone.
//! - **Strong reads.** `ensure_linearizable` sends a heartbeat to every follower per call; reads
//!   that share a round share that fan-out.

use std::future::Future;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Semaphore};

/// Write rounds (entries) in flight per group. More overlap Raft rounds; fewer make bigger
/// entries. Rounds here are bound by CPU (log append, sync, replication and apply per entry),
/// not by waiting, so overlap buys nothing: 1 beat 2 at 4, 32 and 256 clients, in throughput
/// and in p99 (docs/benchmarks.md), as 2 had beaten 4 and 8.
pub const WRITES_IN_FLIGHT: usize = 1;
/// Read-index rounds in flight per group: one running, the next gathering.
pub const READS_IN_FLIGHT: usize = 1;

type Waiter<R, E> = oneshot::Sender<Result<R, E>>;
/// The writes of a batch not proposed yet, each with the one waiting for its result, and the
/// fingerprints ([`Batches::fingerprint`]) of the keys they touch.
struct Gathered<W, R, E> {
    writes: Vec<(W, Waiter<R, E>)>,
    keys: foldhash::HashSet<u64>,
    bytes: usize,
}

/// What [`Batches::submit`] did with a request.
pub enum Submitted<W, R, E> {
    /// The write went into a batch; this is its result.
    Done(Result<R, E>),
    /// The gathering batch already touches one of its keys, or has no room left for its
    /// bytes: propose it on its own.
    Conflict(W),
}

/// One group's rounds of one kind.
pub struct Batches<W, R, E> {
    /// The batch gathering writes, not proposed yet. `None`: the next write opens one.
    // std Mutex: held only to push to or take the batch, never across an await.
    gathering: Mutex<Option<Gathered<W, R, E>>>,
    slots: Arc<Semaphore>,
    keyed: foldhash::fast::RandomState,
    /// A batch stops gathering at this many bytes (what [`Batches::submit`] is told each
    /// write weighs), so that gathered writes stay under the Raft entry limit.
    max_bytes: usize,
}

impl<W, R, E> Batches<W, R, E> {
    /// Rounds of which at most `in_flight` run at once, of any size.
    pub fn new(in_flight: usize) -> Self {
        Self::with_byte_budget(in_flight, usize::MAX)
    }

    /// Rounds of which at most `in_flight` run at once, each gathering at most `max_bytes`
    /// (a single write larger than that still gets a round of its own).
    pub fn with_byte_budget(in_flight: usize, max_bytes: usize) -> Self {
        Batches {
            gathering: Mutex::new(None),
            slots: Arc::new(Semaphore::new(in_flight)),
            keyed: foldhash::fast::RandomState::default(),
            max_bytes,
        }
    }

    /// What [`Batches::submit`] compares keys by. Two keys with one fingerprint only send a
    /// write to an entry of its own, which is always safe; copying every key into a set was
    /// an allocation per write on the hottest path.
    pub fn fingerprint(&self, key: &[u8]) -> u64 {
        self.keyed.hash_one(key)
    }
}

impl<W, R, E> Batches<W, R, E>
where
    W: Send + 'static,
    R: Send + 'static,
    E: Clone + Send + 'static,
{
    /// Adds `write` (touching `keys`, weighing `bytes`) to the gathering batch and waits for
    /// its result, or hands it back when the batch already touches one of its keys or would
    /// grow past the byte budget. The caller that opens a
    /// batch supplies `propose`, which runs in its own task (a cancelled request must not
    /// strand the others) once a slot is free, with every write gathered until then, and must
    /// return one result per write, in order. A batch that dies without answering (a panic)
    /// answers `lost()`.
    pub async fn submit<F, Fut>(
        self: &Arc<Self>,
        write: W,
        keys: Vec<u64>,
        bytes: usize,
        propose: F,
        lost: impl FnOnce() -> E,
    ) -> Submitted<W, R, E>
    where
        F: FnOnce(Vec<W>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, E>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let opened = {
            let mut gathering = self.gathering.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *gathering {
                Some(batch) => {
                    let full = batch.bytes.saturating_add(bytes) > self.max_bytes;
                    if full || keys.iter().any(|k| batch.keys.contains(k)) {
                        return Submitted::Conflict(write);
                    }
                    batch.bytes += bytes;
                    batch.keys.extend(keys);
                    batch.writes.push((write, tx));
                    false
                }
                None => {
                    *gathering = Some(Gathered {
                        writes: vec![(write, tx)],
                        keys: keys.into_iter().collect(),
                        bytes,
                    });
                    true
                }
            }
        };
        if opened {
            let me = self.clone();
            tokio::spawn(async move {
                let Ok(_slot) = me.slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(batch) = me
                    .gathering
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                else {
                    return;
                };
                let (writes, waiters): (Vec<W>, Vec<Waiter<R, E>>) =
                    batch.writes.into_iter().unzip();
                match propose(writes).await {
                    Ok(results) => {
                        for (waiter, result) in waiters.into_iter().zip(results) {
                            let _ = waiter.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        for waiter in waiters {
                            let _ = waiter.send(Err(e.clone()));
                        }
                    }
                }
            });
        }
        Submitted::Done(rx.await.unwrap_or_else(|_| Err(lost())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_writes_share_batches_and_get_their_own_results() {
        let batches: Arc<Batches<u32, u32, String>> = Arc::new(Batches::new(WRITES_IN_FLIGHT));
        let proposals = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let (batches, proposals) = (batches.clone(), proposals.clone());
            tasks.push(tokio::spawn(async move {
                let got = batches
                    .submit(
                        i,
                        vec![batches.fingerprint(&i.to_be_bytes())],
                        0,
                        move |writes: Vec<u32>| async move {
                            proposals.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            Ok(writes.into_iter().map(|w| w * 2).collect())
                        },
                        || "lost".to_string(),
                    )
                    .await;
                let Submitted::Done(got) = got else {
                    panic!("distinct keys never conflict");
                };
                assert_eq!(got, Ok(i * 2));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = proposals.load(Ordering::SeqCst);
        assert!((1..200).contains(&n), "200 writes took {n} proposals");
    }

    #[tokio::test]
    async fn a_write_that_would_overflow_the_byte_budget_is_handed_back() {
        let batches: Arc<Batches<u32, u32, String>> =
            Arc::new(Batches::with_byte_budget(WRITES_IN_FLIGHT, 100));
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let first = {
            let batches = batches.clone();
            tokio::spawn(async move {
                batches
                    .submit(
                        1,
                        vec![batches.fingerprint(b"a")],
                        60,
                        |w| async move {
                            let _ = release_rx.await;
                            Ok(w)
                        },
                        || "lost".into(),
                    )
                    .await
            })
        };
        // The first write's round holds the only slot; the next ones gather behind it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = {
            let batches = batches.clone();
            tokio::spawn(async move {
                batches
                    .submit(
                        2,
                        vec![batches.fingerprint(b"b")],
                        60,
                        |w| async move { Ok(w) },
                        || "lost".into(),
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let third = batches
            .submit(
                3,
                vec![batches.fingerprint(b"c")],
                60,
                |w| async move { Ok(w) },
                || "lost".into(),
            )
            .await;
        assert!(
            matches!(third, Submitted::Conflict(3)),
            "120 bytes do not fit a 100-byte round"
        );
        let _ = release_tx.send(());
        assert!(matches!(first.await.unwrap(), Submitted::Done(Ok(1))));
        assert!(matches!(second.await.unwrap(), Submitted::Done(Ok(2))));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_member() {
        let batches: Arc<Batches<u32, u32, String>> = Arc::new(Batches::new(WRITES_IN_FLIGHT));
        let got = batches
            .submit(
                1,
                vec![batches.fingerprint(b"k")],
                0,
                |_| async { Err("no quorum".to_string()) },
                || "lost".to_string(),
            )
            .await;
        assert!(matches!(got, Submitted::Done(Err(e)) if e == "no quorum"));
    }

    #[tokio::test]
    async fn a_second_write_of_a_key_in_the_gathering_batch_is_handed_back() {
        let batches: Arc<Batches<u32, u32, String>> = Arc::new(Batches::new(WRITES_IN_FLIGHT));
        // Hold every slot, so the first batch keeps gathering.
        let _slots: Vec<_> = (0..WRITES_IN_FLIGHT)
            .map(|_| batches.slots.clone().try_acquire_owned().unwrap())
            .collect();
        let first = {
            let batches = batches.clone();
            tokio::spawn(async move {
                let _ = batches
                    .submit(
                        1,
                        vec![batches.fingerprint(b"k")],
                        0,
                        |w| async move { Ok(w) },
                        || "lost".into(),
                    )
                    .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = batches
            .submit(
                2,
                vec![batches.fingerprint(b"k")],
                0,
                |w| async move { Ok(w) },
                || "lost".into(),
            )
            .await;
        assert!(matches!(second, Submitted::Conflict(2)));
        let other_key = batches.submit(
            3,
            vec![batches.fingerprint(b"j")],
            0,
            |w| async move { Ok(w) },
            || "lost".into(),
        );
        // A different key joins the gathering batch (and waits with it).
        assert!(tokio::time::timeout(Duration::from_millis(50), other_key)
            .await
            .is_err());
        first.abort();
    }

    /// The property reads rely on: a request that arrives while a round runs is answered by the
    /// next round, never by the running one.
    #[tokio::test]
    async fn a_round_started_before_a_request_does_not_answer_it() {
        let rounds: Arc<Batches<(), &'static str, String>> =
            Arc::new(Batches::new(READS_IN_FLIGHT));
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let rounds = rounds.clone();
            tokio::spawn(async move {
                rounds
                    .submit(
                        (),
                        Vec::new(),
                        0,
                        move |w: Vec<()>| async move {
                            let _ = release_rx.await;
                            Ok(vec!["first round"; w.len()])
                        },
                        || "lost".to_string(),
                    )
                    .await
            })
        };
        // Let the first round start, then submit: this one must get the second round's answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = {
            let rounds = rounds.clone();
            tokio::spawn(async move {
                rounds
                    .submit(
                        (),
                        Vec::new(),
                        0,
                        |w: Vec<()>| async move { Ok(vec!["second round"; w.len()]) },
                        || "lost".to_string(),
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = release_tx.send(());
        assert!(matches!(
            first.await.unwrap(),
            Submitted::Done(Ok("first round"))
        ));
        assert!(matches!(
            second.await.unwrap(),
            Submitted::Done(Ok("second round"))
        ));
    }
}
