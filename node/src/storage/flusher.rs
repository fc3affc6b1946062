//! Group commit: one thread flushes the sled database for every group on the node.
//!
//! Raft may only be told an append is done once it is durable, and a sled `flush` makes the
//! whole database durable at once. So writers insert their entries, hand a completion to this
//! thread, and the thread flushes once for everything queued so far and then completes each
//! waiter in order. Throughput is then bounded by how much one flush can carry, not by the
//! disk's fsync rate. One thread, not concurrent `flush_async` calls: seven or more of those at
//! once deadlock sled 0.34.7 (see tech notes).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

type Completion = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub flushes: AtomicU64,
    pub waiters: AtomicU64,
}

/// A handle on the flusher thread. Cloning is cheap; the thread stops when the last handle is
/// dropped.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<Completion>,
    pub stats: Arc<FlushStats>,
}

impl Flusher {
    pub fn start(db: sled::Db) -> io::Result<Flusher> {
        let (tx, rx) = mpsc::channel::<Completion>();
        let stats = Arc::new(FlushStats::default());
        let thread_stats = stats.clone();
        thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run(db, rx, &thread_stats))?;
        Ok(Flusher { tx, stats })
    }

    /// Calls `done` once everything written to the database before this call is durable.
    pub fn on_durable(&self, done: impl FnOnce(io::Result<()>) + Send + 'static) {
        if let Err(mpsc::SendError(done)) = self.tx.send(Box::new(done)) {
            done(Err(io::Error::other("the flusher has stopped")));
        }
    }

    /// Waits until everything written before this call is durable.
    pub async fn wait_durable(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_durable(move |res| {
            let _ = tx.send(res);
        });
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the flusher dropped a waiter")))
    }
}

fn run(db: sled::Db, rx: mpsc::Receiver<Completion>, stats: &FlushStats) {
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        // Everything in `batch` was written before it was queued, so one flush covers it all.
        let res = db.flush().map(|_| ());
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats
            .waiters
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for done in batch.drain(..) {
            done(match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_waiters_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let f = Flusher::start(db.clone()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let f = f.clone();
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.insert(i.to_be_bytes(), &b"v"[..]).unwrap();
                f.wait_durable().await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(f.stats.waiters.load(Ordering::Relaxed), 200);
        assert!(f.stats.flushes.load(Ordering::Relaxed) <= 200);
    }
}
