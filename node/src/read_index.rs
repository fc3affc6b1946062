//! Shared read-index rounds: concurrent strong reads of a group confirm leadership together.
//!
//! A strong read needs a read-index round (`ensure_linearizable`: a heartbeat to every follower
//! and a quorum of answers) that starts after the read arrived. Running one round per read costs
//! a heartbeat fan-out per read. Here reads that arrive while a round is running join the *next*
//! round, which starts only once the running one ends, so every read is covered by a round that
//! started after it arrived, and at most two rounds per group exist at a time: one running, one
//! gathering readers.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// One group's rounds.
pub struct ReadIndexRounds<E> {
    /// The round gathering readers, not started yet. `None`: the next reader opens one.
    // std Mutex: held only to look at or swap the option, never across an await.
    gathering: Mutex<Option<broadcast::Sender<Result<(), E>>>>,
    /// Held by the running round, so the gathering one starts after it.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl<E: Clone + Send + 'static> Default for ReadIndexRounds<E> {
    fn default() -> Self {
        ReadIndexRounds {
            gathering: Mutex::new(None),
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

impl<E: Clone + Send + 'static> ReadIndexRounds<E> {
    /// Waits for a round that started after this call, running `round` when this caller opens
    /// it. `round` runs in its own task, so a reader that goes away (a cancelled request) does
    /// not strand the readers that joined it; if the round dies without an answer (a panic),
    /// its readers get `lost()`.
    pub async fn confirm<F, Fut>(
        self: &Arc<Self>,
        round: F,
        lost: impl FnOnce() -> E,
    ) -> Result<(), E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let mut rx = {
            let mut gathering = self.gathering.lock().unwrap_or_else(|p| p.into_inner());
            match &*gathering {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = broadcast::channel(1);
                    *gathering = Some(tx);
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _running = me.running.clone().lock_owned().await;
                        // From here on, new readers open the next round.
                        let tx = me
                            .gathering
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take();
                        let result = round().await;
                        if let Some(tx) = tx {
                            let _ = tx.send(result);
                        }
                    });
                    rx
                }
            }
        };
        // One message per channel, so a receiver can neither lag nor miss it; a closed channel
        // means the round ended without sending.
        rx.recv().await.unwrap_or_else(|_| Err(lost()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_reads_share_rounds() {
        let rounds: Arc<ReadIndexRounds<String>> = Arc::default();
        let ran = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (rounds, ran) = (rounds.clone(), ran.clone());
            tasks.push(tokio::spawn(async move {
                rounds
                    .confirm(
                        move || async move {
                            ran.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok(())
                        },
                        || "lost".to_string(),
                    )
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(()));
        }
        let n = ran.load(Ordering::SeqCst);
        assert!((1..100).contains(&n), "100 reads ran {n} rounds");
    }

    #[tokio::test]
    async fn a_round_started_before_a_read_does_not_answer_it() {
        let rounds: Arc<ReadIndexRounds<String>> = Arc::default();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let rounds = rounds.clone();
            tokio::spawn(async move {
                rounds
                    .confirm(
                        move || async move {
                            let _ = release_rx.await;
                            Err("first round".to_string())
                        },
                        || "lost".to_string(),
                    )
                    .await
            })
        };
        // Let the first round start, then read: this read must get the second round's answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = {
            let rounds = rounds.clone();
            tokio::spawn(async move {
                rounds
                    .confirm(
                        || async { Err("second round".to_string()) },
                        || "lost".to_string(),
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = release_tx.send(());
        assert_eq!(first.await.unwrap(), Err("first round".to_string()));
        assert_eq!(second.await.unwrap(), Err("second round".to_string()));
    }
}
